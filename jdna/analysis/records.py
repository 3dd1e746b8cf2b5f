"""Load and check result records (docs/records.md) from files, globs, directories or JSON lines on stdin.

Records travel in two forms: the full JSON file (with `per_item`, needed to bootstrap over items) and the
one-line stdout summary whose `path` names that file. A summary is replaced by its file whenever the file
can be read, so `jdna eval … | jdna difficulty` bootstraps over items just like `jdna difficulty runs/eval`.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from jdna.errors import JdnaError

Record = dict[str, Any]

ANALYSED_KINDS = ("eval", "lmc", "difficulty")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Compression:
    """Where a model sits on the compression axis.

    `kind` is "dense", "pruned", "quantized" or "lowrank". `level` is the x of the study's curves: the
    target sparsity for pruning (exact, unlike the measured one which depends on the prunable set), and
    bits per weight for quantization and low-rank (whose "sparsity" has no meaning); 0.0 for dense.
    """

    kind: str
    method: str
    level: float
    sparsity: float
    bits_per_weight: float

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    @property
    def axis(self) -> str:
        return "sparsity" if self.kind in ("pruned", "dense") else "bits_per_weight"


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def compression_of(record: Record) -> Compression:
    """The compression of an eval record's model; a missing compression or method "dense" means dense.

    A model pruned outside jdna names its dense model in `model.dense_parent`; it is never a dense baseline,
    and when its compression block says nothing more it counts as pruning by method "external", at its
    measured sparsity.
    """
    model = record.get("model") or {}
    comp = model.get("compression") or {}
    method = str(comp.get("method") or "dense")
    kind = str(comp.get("kind") or ("dense" if method == "dense" else "pruned"))
    sparsity = _number(comp.get("sparsity"), 0.0)
    bits = _number(comp.get("bits_per_weight"), 16.0)
    if model.get("dense_parent") and (method == "dense" or kind == "dense"):
        method, kind = "external", "pruned"
    if method == "dense" or kind == "dense":
        return Compression("dense", "dense", 0.0, 0.0, 16.0)
    if kind == "pruned":
        # Rounded so that the measured sparsity of equal targets (0.49999…) lands on one level.
        level = round(_number(comp.get("target_sparsity"), sparsity), 6)
    else:
        level = round(bits, 6)
    return Compression(kind, method, level, sparsity, bits)


def primary_value(record: Record) -> float:
    """The value of an eval record's primary metric."""
    return float(record["metrics"][record["primary_metric"]]["value"])


def transfer_mode(record: Record) -> str | None:
    """The fine-tuning setting of a record (dense / freeze / sparse / regrow …), None without fine-tuning."""
    transfer = record.get("transfer")
    if isinstance(transfer, dict):
        mode = transfer.get("mode")
        return str(mode) if mode is not None else None
    return None


def _where(record: Record) -> str:
    for key in ("_source", "path"):
        if isinstance(record.get(key), str) and record[key]:
            return record[key]
    return "<stdin>"


def validate(record: Record) -> Record:
    """Check the fields the analyses read; raise one line naming the record and the missing field."""
    kind = record.get("kind")
    where = _where(record)
    if kind == "eval":
        for field in ("task", "primary_metric", "metrics"):
            if field not in record:
                raise JdnaError(f"eval record {where} has no '{field}': is it a jdna eval record (docs/records.md)?")
        if not isinstance(record.get("knobs", {}), dict):
            raise JdnaError(f"eval record {where}: 'knobs' must be an object")
        metric = record["primary_metric"]
        if not isinstance(metric, str) or not isinstance(record["task"], str):
            raise JdnaError(f"eval record {where}: 'task' and 'primary_metric' must be names (strings)")
        model = record.get("model")
        if model is not None and not (isinstance(model, dict) and isinstance(model.get("compression") or {}, dict)):
            raise JdnaError(f"eval record {where}: 'model' and its 'compression' must be objects")
        entry = record["metrics"].get(metric) if isinstance(record["metrics"], dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), int | float):
            raise JdnaError(f"eval record {where} has no value for its primary metric '{metric}'")
        if not math.isfinite(float(entry["value"])):
            raise JdnaError(f"eval record {where}: primary metric '{metric}' is not finite")
        record.setdefault("knobs", {})
        record.setdefault("higher_is_better", metric != "perplexity")
    elif kind == "lmc":
        for field in ("task", "alphas", "loss"):
            if field not in record:
                raise JdnaError(f"lmc record {where} has no '{field}': is it a jdna lmc record (docs/records.md)?")
        if len(record["alphas"]) != len(record["loss"]) or not record["alphas"]:
            raise JdnaError(f"lmc record {where}: 'alphas' and 'loss' must be non-empty and of equal length")
    elif kind == "difficulty":
        if not isinstance(record.get("groups"), list):
            raise JdnaError(f"difficulty record {where} has no 'groups' list")
    return record


def _read_json_file(path: Path) -> list[Record]:
    """Records in a file: one JSON object, a JSON list of objects, or JSON lines."""
    try:
        text = path.read_text()
    except OSError as error:
        raise JdnaError(f"cannot read '{path}': {error.strerror or error}") from error
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise JdnaError(f"'{path}' line {number} is not JSON: {error.msg}") from error
    records = []
    for item in items:
        if not isinstance(item, dict):
            raise JdnaError(f"'{path}' holds a JSON {type(item).__name__}, not a jdna record object")
        item.setdefault("_source", str(path))
        records.append(item)
    return records


def _expand_summary(record: Record) -> Record:
    """Swap a stdout summary for the full record file its `path` names, when that file exists."""
    if record.get("kind") != "eval" or "per_item" in record:
        return record
    path = record.get("path")
    if isinstance(path, str) and path.endswith(".json") and Path(os.path.expanduser(path)).is_file():
        full = _read_json_file(Path(os.path.expanduser(path)))
        if len(full) == 1 and full[0].get("kind") == record.get("kind"):
            return full[0]
    return record


def _paths_for(source: str) -> tuple[list[Path], bool]:
    """Files named by a source, and whether it was a directory or glob (whose stray files are skipped)."""
    if any(ch in _GLOB_CHARS for ch in source):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix in (".json", ".jsonl")]
        if not files:
            raise JdnaError(f"'{source}' matches no .json/.jsonl files")
        return files, True
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
        if not files:
            raise JdnaError(f"directory '{source}' holds no .json/.jsonl record files")
        return files, True
    if path.is_file():
        return [path], False
    raise JdnaError(f"'{source}' does not exist: give record files, globs or directories, or pipe records")


def read_stdin_records(stream: TextIO) -> list[Record]:
    """Records from JSON lines (a bare path per line also works) on stdin."""
    records: list[Record] = []
    for number, line in enumerate(stream.read().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if not line.startswith("{"):
            files, _ = _paths_for(line)
            for file in files:
                records.extend(_read_json_file(file))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise JdnaError(f"stdin line {number} is not a JSON record: {error.msg}") from error
        if not isinstance(record, dict):
            raise JdnaError(f"stdin line {number} is not a JSON object")
        records.append(record)
    return records


def load_records(
    sources: Sequence[str],
    stdin: TextIO | None = None,
    kinds: Iterable[str] = ("eval",),
) -> list[Record]:
    """Records of the wanted kinds from files, globs, directories and (for "-" or no sources) stdin.

    Files named explicitly must hold wanted kinds; files found through a directory or glob that hold other
    kinds (artifacts' JSON, other analyses) are skipped, so `runs/` can be passed whole. Summaries are
    expanded to their full files, and a record seen twice (as a file and on stdin) counts once.
    """
    wanted = tuple(kinds)
    gathered: list[tuple[Record, bool]] = []
    names = list(sources)
    if not names or "-" in names:
        if stdin is None or (not names and stdin.isatty()):
            raise JdnaError("no records given: pass record files, globs or directories, or pipe records on stdin")
        gathered.extend((r, False) for r in read_stdin_records(stdin))
        names = [n for n in names if n != "-"]
    for source in names:
        files, lenient = _paths_for(source)
        for file in files:
            gathered.extend((r, lenient) for r in _read_json_file(file))
    records: list[Record] = []
    seen: set[str] = set()
    for record, lenient in gathered:
        if record.get("kind") == "finetuned" and "eval" in wanted and isinstance(record.get("eval_record"), str):
            # A finetune line stands for the validation result it wrote, so finetune pipes feed analyses.
            evaluated = Path(os.path.expanduser(record["eval_record"]))
            if evaluated.is_file():
                record = _read_json_file(evaluated)[0]
        kind = record.get("kind")
        if kind not in wanted:
            if lenient:
                continue
            raise JdnaError(
                f"{_where(record)} is a '{kind}' record; this command reads {' / '.join(wanted)} records"
            )
        record = validate(_expand_summary(record))
        key = str(record.get("id") or record.get("path") or "") or json.dumps(record, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        records.append(record)
    if not records:
        raise JdnaError(f"no {' / '.join(wanted)} records found in the input")
    return records
