"""Normalised performance, task difficulty, and the per-level hypothesis statistics over eval records.

Normalisation. Each compressed record is divided by the dense record of the same base model, task and knobs
(seed included: knob seeds choose the options/shots, so only the same draw is comparable), and, after
fine-tuning, the same amount of training data under dense transfer. For higher-is-better metrics the
normalised performance is compressed / dense; for lower-is-better ones (perplexity) it is dense / compressed,
so in both cases 1 means no loss and lower means worse, and the drop 1 − normalised is positive when
compression hurts.

Difficulty. Within a task it comes from the knob that varies between records, with the study's directions:
less training data, fewer shots and fewer context tokens are harder; more options are harder. A knob left at
null means "unrestricted" (all training data, all context, all options; no shots). Across tasks it is the
normalised human–LLM gap (human − dense)/dense from a baseline table. `--axis NAME[:harder=lower|higher]`
picks the axis and may flip its direction.

Groups. Records are grouped by task (within-task axes), compression kind and method (so pruning,
quantization and low-rank are never pooled), transfer setting, base model, and any other knob that varies;
each group is analysed per compression level (target sparsity, or bits per weight for quantization and
low-rank).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jdna.analysis import stats
from jdna.analysis.baselines import BaselineTable, human_gap
from jdna.analysis.records import Compression, Record, compression_of, primary_value, transfer_mode
from jdna.errors import JdnaError, unknown_name_error
from jdna.io import canonical_json

# Knobs that never define difficulty: the seed is a replicate, `limit`/`split` say which items were scored.
_NOT_DIFFICULTY = ("seed",)
KIND_ORDER = {"pruned": 0, "quantized": 1, "lowrank": 2, "dense": 3}
# The study's transfer settings in the order its figures show them (Figs 8–9).
TRANSFER_ORDER = ("dense", "freeze", "sparse", "regrow")


@dataclass(frozen=True)
class Axis:
    """A difficulty axis: a knob (or "gap") and which direction is harder."""

    name: str
    harder: str  # "lower" | "higher"
    none_value: float = math.inf  # what a null knob means, on the knob's own scale

    def value(self, raw: Any) -> float:
        return self.none_value if raw is None else float(raw)

    def score(self, raw: Any) -> float:
        """Difficulty score: larger = harder."""
        value = self.value(raw)
        return value if self.harder == "higher" else -value

    def spec(self) -> str:
        return f"{self.name}:harder={self.harder}"


# The study's directions (Yin et al. 2024): less data, fewer shots, shorter context harder; more options harder.
AXES: dict[str, Axis] = {
    "train_examples": Axis("train_examples", "lower"),
    "train_fraction": Axis("train_fraction", "lower", 1.0),
    "shots": Axis("shots", "lower", 0.0),
    "context_tokens": Axis("context_tokens", "lower"),
    "options": Axis("options", "higher"),
    "gap": Axis("gap", "higher"),
}
WITHIN_TASK_AXES = ("train_examples", "train_fraction", "shots", "context_tokens", "options")


def parse_axis(text: str) -> Axis:
    """`NAME` or `NAME:harder=lower|higher`; any other knob name needs its direction."""
    name, _, rest = text.partition(":")
    name = name.strip()
    harder = None
    if rest:
        key, _, direction = rest.partition("=")
        if key.strip() != "harder" or direction.strip() not in ("lower", "higher"):
            raise JdnaError(f"--axis '{text}': write NAME or NAME:harder=lower|higher")
        harder = direction.strip()
    if name in AXES:
        base = AXES[name]
        return Axis(name, harder or base.harder, base.none_value)
    if not name:
        raise JdnaError("--axis needs a knob name, e.g. --axis shots or --axis my_knob:harder=higher")
    if harder is None:
        error = unknown_name_error("difficulty axis", name, AXES)
        raise JdnaError(f"{error} (or give another knob's direction: --axis {name}:harder=lower|higher)")
    return Axis(name, harder)


@dataclass
class Entry:
    """A compressed record with its dense reference and normalised performance."""

    index: int  # into the analysis' record list
    dense_index: int
    record: Record
    compression: Compression
    knobs: dict[str, Any]
    mode: str | None
    value: float
    dense_value: float
    normalised: float


@dataclass
class Analysis:
    """The result of `analyse`: the difficulty record's body plus what plots need."""

    rule: str
    axis: list[str]
    groups: list[dict[str, Any]]
    irreversibility: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {
            "kind": "difficulty",
            "rule": self.rule,
            "axis": self.axis,
            "groups": self.groups,
            "irreversibility": self.irreversibility,
            "notes": self.notes,
        }


def effective_knobs(record: Record) -> dict[str, Any]:
    """The record's knobs, with a fine-tuned record's training-set size standing in for `train_examples`."""
    knobs = dict(record.get("knobs") or {})
    transfer = record.get("transfer")
    if isinstance(transfer, dict) and knobs.get("train_examples") is None and transfer.get("train_examples"):
        knobs["train_examples"] = transfer["train_examples"]
    return knobs


def _base(record: Record) -> str:
    model = record.get("model") or {}
    return str(model.get("base") or model.get("base_sha256") or model.get("name") or "?")


def _reference_key(record: Record, knobs: dict[str, Any]) -> str:
    # Transfer mode is left out on purpose: a sparse-transfer record is compared with dense transfer.
    return canonical_json([_base(record), record["task"], record["primary_metric"], knobs,
                           record.get("transfer") is not None])


def is_reference(record: Record) -> bool:
    """Whether a record is a dense baseline: a dense model, evaluated as-is or after dense transfer."""
    return compression_of(record).is_dense and transfer_mode(record) in (None, "dense")


def normalise(value: float, dense: float, higher_is_better: bool) -> float:
    """compressed/dense (higher is better) or dense/compressed (lower is better): 1 = no loss."""
    numerator, denominator = (value, dense) if higher_is_better else (dense, value)
    if denominator == 0:
        raise JdnaError("normalised performance is undefined: the dense model scores 0" if higher_is_better
                        else "normalised performance is undefined: the compressed model's metric is 0")
    return numerator / denominator


def _knob_text(knobs: dict[str, Any]) -> str:
    shown = {k: v for k, v in knobs.items() if v is not None and k not in ("limit", "limit_mode", "split")}
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(shown.items()))


def match_dense(records: Sequence[Record]) -> list[Entry]:
    """Pair every non-reference record with its dense baseline; raise naming the first one missing."""
    references: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if is_reference(record):
            references[_reference_key(record, effective_knobs(record))].append(index)
    entries: list[Entry] = []
    missing: list[str] = []
    for index, record in enumerate(records):
        if is_reference(record):
            continue
        knobs = effective_knobs(record)
        found = references.get(_reference_key(record, knobs))
        if not found:
            what = "after dense transfer " if record.get("transfer") is not None else ""
            missing.append(
                f"task {record['task']} with knobs {canonical_json(knobs)} {what}on base {_base(record)} "
                f"(needed by {record.get('path') or record.get('_source') or 'a record'}): evaluate the dense "
                f"model the same way, e.g. jdna eval {_base(record)} --task {record['task']} {_knob_text(knobs)}"
            )
            continue
        dense_index = found[0]
        dense = records[dense_index]
        value, dense_value = primary_value(record), primary_value(dense)
        higher = bool(record.get("higher_is_better", True))
        try:
            norm = normalise(value, dense_value, higher)
        except JdnaError as error:
            raise JdnaError(f"{error} (task {record['task']}, knobs {canonical_json(knobs)})") from None
        entries.append(Entry(index, dense_index, record, compression_of(record), knobs, transfer_mode(record),
                             value, dense_value, norm))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise JdnaError(f"no dense baseline for {missing[0]}{more}")
    if not entries:
        raise JdnaError("only dense records given: add records of compressed models to compare with them")
    return entries


def _varying(entries: Sequence[Entry], references: Sequence[Record], name: str) -> bool:
    values = {canonical_json(e.knobs.get(name)) for e in entries}
    values |= {canonical_json(effective_knobs(r).get(name)) for r in references}
    return len(values) > 1


def choose_axes(
    entries: Sequence[Entry], records: Sequence[Record], axes: Sequence[Axis] | None, baselines: BaselineTable
) -> dict[str, Axis]:
    """The difficulty axis of each task: the one (given or default) knob that varies within it, or "gap"."""
    tasks = sorted({e.record["task"] for e in entries})
    candidates = list(axes) if axes else [AXES[n] for n in WITHIN_TASK_AXES]
    if any(a.name == "gap" for a in candidates):
        if len(candidates) > 1:
            raise JdnaError("--axis gap (across tasks) cannot be combined with within-task axes")
        return {task: candidates[0] for task in tasks}
    chosen: dict[str, Axis] = {}
    for task in tasks:
        own = [e for e in entries if e.record["task"] == task]
        refs = [r for r in records if r["task"] == task and is_reference(r)]
        varying = [a for a in candidates if _varying(own, refs, a.name)]
        if len(varying) > 1 and not axes:
            names = " and ".join(a.name for a in varying)
            raise JdnaError(
                f"task {task}: knobs {names} both vary, so difficulty is ambiguous: pick one with --axis NAME "
                "(records are then grouped by the others)"
            )
        if varying:
            chosen[task] = varying[0]
    if chosen:
        return {task: chosen.get(task, candidates[0]) for task in tasks}
    if axes:
        raise JdnaError(f"--axis {', '.join(a.name for a in axes)}: that knob does not vary in the records")
    if len(tasks) > 1:
        uncovered = [t for t in tasks if not any(baselines.get(t, e.record["primary_metric"]) for e in entries
                                                  if e.record["task"] == t)]
        if uncovered:
            raise JdnaError(
                f"records of {len(tasks)} different tasks and no difficulty knob varies within a task, so "
                f"difficulty must come from the human–LLM gap, but there is no human baseline for "
                f"{', '.join(uncovered)}: pass --baselines FILE (csv/json with task,metric,human), or give "
                "records of one task whose knobs vary"
            )
        return {task: AXES["gap"] for task in tasks}
    raise JdnaError(
        f"all records of task {tasks[0]} have the same knobs: there is only one difficulty level; vary "
        f"{', '.join(WITHIN_TASK_AXES)} (or add records of other tasks with --baselines)"
    )


def _label(axis: Axis, raw: Any) -> str:
    if axis.name == "gap":
        return str(raw)
    return "all" if raw is None else f"{raw:g}" if isinstance(raw, float) else str(raw)


def _json_value(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def analyse(
    records: Sequence[Record],
    axes: Sequence[Axis] | None = None,
    baselines: BaselineTable | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Analysis:
    """Group eval records, normalise them by their dense baselines and test monotonicity per level."""
    if n_resamples < 1:
        raise JdnaError(f"--resamples {n_resamples}: use at least 1 (1000 for a paper)")
    baselines = baselines or BaselineTable.load()
    records = list(records)
    entries = match_dense(records)
    chosen = choose_axes(entries, records, axes, baselines)
    values = [primary_value(r) for r in records]
    samples, resampled = stats.resample_records(records, values, n_resamples, seed)
    notes = []
    fixed = [i for i, ok in enumerate(resampled) if not ok]
    if fixed:
        notes.append(
            f"{len(fixed)} of {len(records)} records have no usable per-item values (a summary line whose file "
            "is missing, or a metric that is not a mean over items): their items are not resampled"
        )

    # Dense score per (task, metric, base, knobs, transfer) for the human–LLM gap.
    gaps: dict[str, tuple[float, str]] = {}
    if any(a.name == "gap" for a in chosen.values()):
        for task in chosen:
            metric = next(e.record["primary_metric"] for e in entries if e.record["task"] == task)
            baseline = baselines.get(task, metric)
            if baseline is None:
                raise JdnaError(f"no human baseline for task {task} ({metric}): add it with --baselines FILE")
            dense_values = [e.dense_value for e in entries if e.record["task"] == task]
            gaps[task] = (human_gap(baseline.human, float(np.mean(dense_values))), baseline.citation)

    grouped: dict[str, list[Entry]] = defaultdict(list)
    meta: dict[str, dict[str, Any]] = {}
    for entry in entries:
        task = entry.record["task"]
        axis = chosen[task]
        fixed_knobs = {k: v for k, v in entry.knobs.items() if k not in (axis.name, *_NOT_DIFFICULTY)}
        across = axis.name == "gap"
        key_parts = {
            "task": None if across else task,
            "compression_kind": entry.compression.kind,
            "method": entry.compression.method,
            "transfer": entry.mode,
            "base": _base(entry.record),
            "knobs": {} if across else fixed_knobs,
            "metric": None if across else entry.record["primary_metric"],
        }
        key = canonical_json(key_parts)
        grouped[key].append(entry)
        meta[key] = {**key_parts, "axis": axis}

    groups = []
    for key in sorted(grouped, key=lambda k: _group_order(meta[k])):
        info = meta[key]
        axis: Axis = info["axis"]
        group_entries = grouped[key]
        levels = []
        for level in sorted({e.compression.level for e in group_entries}):
            at_level = [e for e in group_entries if e.compression.level == level]
            levels.append(_level(level, at_level, axis, gaps, samples, seed))
        group = {
            "task": info["task"],
            "tasks": sorted({e.record["task"] for e in group_entries}),
            "compression_kind": info["compression_kind"],
            "method": info["method"],
            "transfer": info["transfer"],
            "base": info["base"],
            "knobs": info["knobs"],
            "metric": info["metric"],
            "axis": axis.spec(),
            "level_axis": group_entries[0].compression.axis,
            "levels": levels,
        }
        if axis.name == "gap":
            group["baselines"] = {t: gaps[t][1] for t in group["tasks"]}
        groups.append(group)

    return Analysis(
        rule=stats.RULE,
        axis=sorted({a.spec() for a in chosen.values()}),
        groups=groups,
        irreversibility=_irreversibility(entries, chosen, gaps),
        notes=notes,
    )


def _group_order(info: dict[str, Any]) -> tuple:
    transfer = info["transfer"] or ""
    rank = TRANSFER_ORDER.index(transfer) if transfer in TRANSFER_ORDER else len(TRANSFER_ORDER)
    return (info["task"] or "", KIND_ORDER.get(info["compression_kind"], 9), info["method"], rank, transfer,
            info["base"], canonical_json(info["knobs"]))


def _point_key(entry: Entry, axis: Axis) -> Any:
    return entry.record["task"] if axis.name == "gap" else entry.knobs.get(axis.name)


def _point_score(raw: Any, axis: Axis, gaps: dict[str, tuple[float, str]]) -> float:
    return gaps[raw][0] if axis.name == "gap" else axis.score(raw)


def _level(
    level: float,
    entries: Sequence[Entry],
    axis: Axis,
    gaps: dict[str, tuple[float, str]],
    samples: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """Statistics of one compression level: points ordered easiest → hardest."""
    points: dict[str, list[Entry]] = defaultdict(list)
    raws: dict[str, Any] = {}
    for entry in entries:
        raw = _point_key(entry, axis)
        points[canonical_json(raw)].append(entry)
        raws[canonical_json(raw)] = raw
    order = sorted(points, key=lambda k: _point_score(raws[k], axis, gaps))
    scores = np.array([_point_score(raws[k], axis, gaps) for k in order])
    normalised = np.array([np.mean([e.normalised for e in points[k]]) for k in order])
    drops = 1.0 - normalised

    point_samples = []
    for k in order:
        rows = []
        for e in points[k]:
            c, d = samples[e.index], samples[e.dense_index]
            with np.errstate(divide="ignore", invalid="ignore"):
                rows.append(c / d if e.record.get("higher_is_better", True) else d / c)
        point_samples.append(np.stack(rows))
    boot = stats.resample_points(point_samples, seed)  # resamples × points of normalised performance
    varied = bool(np.ptp(boot, axis=0).any()) if boot.size else False
    spearman, kendall = stats.correlations(scores, drops, 1.0 - boot if varied else None)
    rho = spearman["value"] if spearman["value"] is not None else math.nan
    pairs = stats.violations(list(scores), list(drops))
    labels = [_label(axis, raws[k]) for k in order]
    difficulties = [raws[k] if axis.name != "gap" else _json_value(gaps[raws[k]][0]) for k in order]
    return {
        "level": level,
        "bits_per_weight": _json_value(float(np.mean([e.compression.bits_per_weight for e in entries]))),
        "difficulties": difficulties,
        "labels": labels,
        "normalised": [float(v) for v in normalised],
        "normalised_ci95": [stats.interval(boot[:, p]) if varied else None for p in range(len(order))],
        "seeds": [len(points[k]) for k in order],
        "spearman": spearman,
        "kendall": kendall,
        "violations": [[difficulties[i] if axis.name != "gap" else labels[i],
                        difficulties[j] if axis.name != "gap" else labels[j]] for i, j in pairs],
        "verdict": stats.verdict(len(order), rho, spearman["ci95"]),
    }


def _irreversibility_order(entry: Entry, chosen: dict[str, Axis], gaps: dict[str, tuple[float, str]]) -> tuple:
    """Task, then setting in the study's order, method, level, and difficulty easiest → hardest."""
    mode = entry.mode or ""
    axis = chosen[entry.record["task"]]
    rank = TRANSFER_ORDER.index(mode) if mode in TRANSFER_ORDER else len(TRANSFER_ORDER)
    return (entry.record["task"], rank, mode,
            KIND_ORDER.get(entry.compression.kind, 9), entry.compression.method, entry.compression.level,
            _point_score(_point_key(entry, axis), axis, gaps))


def _irreversibility(
    entries: Sequence[Entry], chosen: dict[str, Axis], gaps: dict[str, tuple[float, str]]
) -> list[dict[str, Any]]:
    """After fine-tuning: each non-dense transfer setting against dense transfer, per difficulty level.

    `gap` is the metric lost relative to dense transfer (positive = the compressed transfer is worse, for
    either metric direction); `normalised` is the same comparison as a ratio.
    """
    cells: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.mode is None:
            continue
        axis = chosen[entry.record["task"]]
        key = canonical_json([entry.record["task"], entry.mode, entry.compression.kind, entry.compression.method,
                              entry.compression.level, _point_key(entry, axis)])
        cells[key].append(entry)
    rows = []
    for key in sorted(cells, key=lambda k: _irreversibility_order(cells[k][0], chosen, gaps)):
        group = cells[key]
        first = group[0]
        axis = chosen[first.record["task"]]
        raw = _point_key(first, axis)
        value = float(np.mean([e.value for e in group]))
        dense = float(np.mean([e.dense_value for e in group]))
        sign = 1.0 if first.record.get("higher_is_better", True) else -1.0
        rows.append({
            "task": first.record["task"],
            "mode": first.mode,
            "compression_kind": first.compression.kind,
            "method": first.compression.method,
            "level": first.compression.level,
            "axis": axis.name,
            "difficulty": raw if axis.name != "gap" else _json_value(gaps[raw][0]),
            "label": _label(axis, raw),
            "metric": first.record["primary_metric"],
            "transfer": value,
            "dense_transfer": dense,
            "gap": sign * (dense - value),
            "normalised": float(np.mean([e.normalised for e in group])),
            "seeds": len(group),
        })
    return rows
