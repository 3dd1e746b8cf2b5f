"""The run store (./runs or $JDNA_RUNS): list what is in it, and find what nothing refers to.

Every step writes one file under the store: an artifact (`<kind>/<id>.safetensors`, whose header names its
parent) or a record (`<kind>/<id>.json`, whose `model.lineage` names the artifacts it evaluated). `scan` reads
them all; `garbage` says which files can go: leftovers of interrupted atomic writes, and artifacts that no
record and no other artifact refers to (by path, file name or id). Records are results and are never garbage;
neither is anything a lineage names, nor a resumable fine-tuning checkpoint directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jdna.errors import JdnaError

ARTIFACT_SUFFIX = ".safetensors"
RECORD_SUFFIX = ".json"
# atomic_path's temporary names: ".<final name>.<random>.tmp" beside the final file.
_TEMPORARY = re.compile(r"^\..+\.tmp$")
# A leftover younger than this may be a write in progress in another process.
PARTIAL_MIN_AGE_S = 3600.0


@dataclass
class Run:
    """One file of the run store, with what `jdna runs` shows and what it refers to."""

    path: Path
    kind: str
    id: str | None = None
    created: str | None = None
    size: int = 0
    task: str | None = None
    model: str | None = None
    metric: str | None = None
    value: float | None = None
    references: set[str] = field(default_factory=set)

    def row(self) -> dict[str, Any]:
        """The JSON form (`jdna runs --json`)."""
        return {
            "kind": self.kind,
            "id": self.id,
            "path": str(self.path),
            "created": self.created,
            "bytes": self.size,
            "task": self.task,
            "model": self.model,
            "metric": self.metric,
            "value": self.value,
        }


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _modified(path: Path) -> str:
    stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def _read_artifact_run(path: Path) -> Run:
    from jdna.artifact import read_artifact  # torch and safetensors: only when an artifact is there to read

    run = Run(path=path, kind="unreadable", created=_modified(path), size=path.stat().st_size)
    try:
        artifact = read_artifact(path)
    except JdnaError:
        return run
    header = artifact.header
    run.kind, run.id = artifact.kind, artifact.id
    run.created = header.get("created") or run.created
    run.model = (header.get("base") or {}).get("name")
    run.task = header.get("task")
    # The artifact's own id is not a reference; everything else it names (parent, eval record) is.
    run.references = {s for s in _strings({k: v for k, v in header.items() if k != "id"}) if s != artifact.id}
    return run


def _read_record_run(path: Path) -> Run:
    run = Run(path=path, kind="unreadable", created=_modified(path), size=path.stat().st_size)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return run
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return run
    run.kind = record["kind"]
    run.id = record.get("id") if isinstance(record.get("id"), str) else None
    task = record.get("task")
    run.task = task if isinstance(task, str) else None
    model = record.get("model")
    if isinstance(model, dict):
        run.model = model.get("name")
    primary = record.get("primary_metric")
    metrics = record.get("metrics")
    if isinstance(primary, str) and isinstance(metrics, dict) and isinstance(metrics.get(primary), dict):
        run.metric, run.value = primary, metrics[primary].get("value")
    run.references = {s for s in _strings({k: v for k, v in record.items() if k not in ("id", "path")})}
    return run


def scan(root: Path) -> list[Run]:
    """Every artifact, record and write leftover under `root`, oldest first. A missing store is empty."""
    if not root.exists():
        return []
    if not root.is_dir():
        raise JdnaError(f"run store '{root}' is not a directory: set JDNA_RUNS to a directory")
    runs: list[Run] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.endswith(".ckpt") for part in path.relative_to(root).parts[:-1]):
            continue  # resumable fine-tuning checkpoints are not runs
        if _TEMPORARY.match(path.name):
            runs.append(Run(path=path, kind="partial", created=_modified(path), size=path.stat().st_size))
        elif path.suffix == ARTIFACT_SUFFIX:
            runs.append(_read_artifact_run(path))
        elif path.suffix == RECORD_SUFFIX:
            runs.append(_read_record_run(path))
    return sorted(runs, key=lambda run: (run.created or "", str(run.path)))


def select(runs: list[Run], kind: str | None = None, task: str | None = None) -> list[Run]:
    """Runs of one kind (eval, pruned, ...) and/or one task (exact spec, or a prefix ending in ':')."""
    chosen = runs
    if kind is not None:
        chosen = [run for run in chosen if run.kind == kind]
    if task is not None:
        chosen = [run for run in chosen if run.task == task or (run.task or "").startswith(task.rstrip(":") + ":")]
    return chosen


def _is_referenced(run: Run, references: set[str]) -> bool:
    names = {str(run.path), str(run.path.resolve()), run.path.name}
    return bool(names & references) or (run.id is not None and run.id in references)


def garbage(runs: list[Run]) -> list[Run]:
    """What `jdna runs gc` removes: write leftovers an hour old, and artifacts nothing in `runs` refers to.

    Records (eval, difficulty, lmc, ...) are never garbage, nor unreadable files (they may be someone
    else's), nor anything named by any other file's header or record, whether or not that file is garbage.
    """
    references: set[str] = set()
    for run in runs:
        references |= run.references
    out = []
    for run in runs:
        if run.kind == "partial":
            if time.time() - run.path.stat().st_mtime >= PARTIAL_MIN_AGE_S:
                out.append(run)
        elif run.path.suffix == ARTIFACT_SUFFIX and run.kind != "unreadable" and not _is_referenced(run, references):
            out.append(run)
    return out


def remove(runs: list[Run]) -> int:
    """Delete the files of `runs`; returns the bytes freed."""
    freed = 0
    for run in runs:
        try:
            run.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise JdnaError(f"cannot remove '{run.path}': {error.strerror or error}") from error
        freed += run.size
    return freed
