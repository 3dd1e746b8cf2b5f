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
# Multiple-choice accuracies, whose chance level is 1/options.
ACCURACY_METRICS = ("acc", "acc_norm", "accuracy")
# A difficulty level whose dense score is within this many standard errors of chance has no skill to lose.
NEAR_CHANCE_SE = 2.0
# Appendix B: the human–LLM gap divided by the dense model's score (default) or by the human score.
GAP_NORMALISE = ("dense", "human")
# After fine-tuning, a setting within this share of dense transfer (upper CI bound of the drop) has recovered.
RECOVERY_MARGIN = 0.02


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
    "context_fraction": Axis("context_fraction", "lower", 1.0),
    "options": Axis("options", "higher"),
    "gap": Axis("gap", "higher"),
}
WITHIN_TASK_AXES = ("train_examples", "train_fraction", "shots", "context_tokens", "context_fraction", "options")


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
    """A compressed record with its dense reference and normalised performance.

    `value`/`dense_value` are measured on the items both records share (their own values when the item sets
    agree); `value_draws`/`dense_draws` are the paired item bootstrap of those values (None: not resampled).
    """

    index: int  # into the analysis' record list
    dense_index: int
    record: Record
    compression: Compression
    knobs: dict[str, Any]
    mode: str | None
    value: float
    dense_value: float
    normalised: float
    value_draws: np.ndarray | None = None
    dense_draws: np.ndarray | None = None
    items: int = 0
    chance: float | None = None  # the metric's chance level (multiple-choice accuracy), when known

    @property
    def higher_is_better(self) -> bool:
        return bool(self.record.get("higher_is_better", True))

    def normalised_on(self, scale: str) -> tuple[float, np.ndarray | None]:
        """Normalised performance and its draws: "raw" (compressed/dense) or "chance-corrected"
        ((compressed − chance)/(dense − chance): the share of the dense model's above-chance skill kept)."""
        c, d = self.value, self.dense_value
        cd = self.value_draws if self.value_draws is not None else None
        dd = self.dense_draws if self.dense_draws is not None else None
        if cd is None and dd is None:
            draws_c = draws_d = None
        else:
            n = len(cd if cd is not None else dd)  # type: ignore[arg-type]
            draws_c = cd if cd is not None else np.full(n, c)
            draws_d = dd if dd is not None else np.full(n, d)
        if scale == "chance-corrected":
            assert self.chance is not None
            c, d = c - self.chance, d - self.chance
            if draws_c is not None:
                draws_c, draws_d = draws_c - self.chance, draws_d - self.chance
        if not self.higher_is_better:
            c, d, draws_c, draws_d = d, c, draws_d, draws_c
        value = c / d if d != 0 else math.nan
        if draws_c is None:
            return value, None
        with np.errstate(divide="ignore", invalid="ignore"):
            return value, draws_c / draws_d

    def dense_se(self) -> float:
        """Standard error of the dense value: its bootstrap, else the binomial one for an accuracy."""
        if self.dense_draws is not None and self.dense_draws.size > 1:
            return float(np.std(self.dense_draws, ddof=1))
        n = self.items or int(self.record.get("n") or 0)
        d = self.dense_value
        return math.sqrt(max(d * (1 - d), 0.0) / n) if n and 0 <= d <= 1 else 0.0


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
    """The base model a record is compared within: its `dense_parent` (a model pruned outside jdna names the
    dense model it came from), else the lineage's base."""
    model = record.get("model") or {}
    parent = model.get("dense_parent")
    if isinstance(parent, dict):  # {"name", "id", "source"}: its id is what the dense model's records carry as model.id
        parent = parent.get("id") or parent.get("name")
    return str(parent or model.get("base") or model.get("base_sha256") or model.get("name") or "?")


def _identities(record: Record) -> list[str]:
    """Every string a dense record's model can be named by, so a `dense_parent` can point at any of them."""
    model = record.get("model") or {}
    names = [model.get(k) for k in ("base", "base_sha256", "name", "id")]
    return sorted({str(n) for n in names if n}) or ["?"]


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
            knobs = effective_knobs(record)
            for name in _identities(record):
                reference = dict(record, model={**(record.get("model") or {}), "base": name, "dense_parent": None})
                references[_reference_key(reference, knobs)].append(index)
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


def _content_key(record: Record) -> str:
    """A record's identity, so results never depend on the order records arrive in."""
    key = record.get("id")
    if isinstance(key, str) and key:
        return key
    return canonical_json({k: v for k, v in record.items() if k != "_source"}) if record else ""


def chance_of(record: Record) -> float | None:
    """The accuracy a model earns without skill: for multiple choice the mean of 1/options over its items
    (`per_item.n_options`, else 1/`knobs.options`); for classification the majority-class rate of its items
    (`per_item.golds`: always answering the most frequent label). None when the record does not say, or the
    primary metric is not an accuracy."""
    if record.get("primary_metric") not in ACCURACY_METRICS:
        return None
    if record.get("task_kind") == "classification":
        return majority_rate(record)
    if record.get("task_kind") != "multiple_choice":
        return None
    per_item = record.get("per_item")
    counts = per_item.get("n_options") if isinstance(per_item, dict) else None
    if isinstance(counts, list) and counts and all(isinstance(c, int) and c > 0 for c in counts):
        return float(np.mean([1.0 / c for c in counts]))
    options = (record.get("knobs") or {}).get("options")
    if isinstance(options, int) and not isinstance(options, bool) and options >= 2:
        return 1.0 / options
    return None


def majority_rate(record: Record) -> float | None:
    """The share of a classification record's items whose gold is its most frequent label (None without golds)."""
    per_item = record.get("per_item")
    golds = per_item.get("golds") if isinstance(per_item, dict) else None
    if not isinstance(golds, list) or not golds or not all(isinstance(g, int) and not isinstance(g, bool)
                                                           for g in golds):
        return None
    return float(np.bincount(np.asarray(golds) - min(golds)).max() / len(golds))


def pair_items(records: Sequence[Record], entries: Sequence[Entry], n_resamples: int, seed: int) -> list[str]:
    """Measure every compressed/dense pair on the items both hold, with a shared bootstrap draw; return notes.

    Records on the same item set share one draw (seeded by those ids), so pairs and difficulty levels scored
    on the same questions stay paired; a pair whose sets differ is restricted to their intersection.
    """
    values = [primary_value(r) for r in records]
    datas: dict[int, stats.ItemData | None] = {}

    def data(i: int) -> stats.ItemData | None:
        if i not in datas:
            datas[i] = stats.item_data(records[i], values[i])
        return datas[i]

    plans: list[tuple[tuple[str, ...] | None, tuple[str, ...] | None]] = []
    narrowed: list[int] = []
    for entry in entries:
        dc, dd = data(entry.index), data(entry.dense_index)
        if dc is not None and dd is not None and dc.ids != dd.ids:
            common = tuple(sorted(set(dc.ids) & set(dd.ids)))
            if common:
                narrowed.append(len(dc.ids) + len(dd.ids) - 2 * len(common))
                plans.append((common, common))
                continue
        plans.append((dc.ids if dc is not None else None, dd.ids if dd is not None else None))
    members: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for entry, (kc, kd) in zip(entries, plans):
        if kc is not None:
            members[kc].add(entry.index)
        if kd is not None:
            members[kd].add(entry.dense_index)
    measured: dict[tuple[int, tuple[str, ...]], tuple[float, np.ndarray]] = {}
    for ids in sorted(members):
        indexes = sorted(members[ids])
        subsets = [data(i) if data(i).ids == ids else data(i).subset(ids) for i in indexes]  # type: ignore[union-attr]
        draws = stats.item_draws(subsets, n_resamples, seed)
        full = np.arange(len(ids))[None]
        for i, subset, row in zip(indexes, subsets, draws):
            own = data(i).ids == ids  # type: ignore[union-attr]
            measured[(i, ids)] = (values[i] if own else float(subset.statistic(full)[0]), row)
    for entry, (kc, kd) in zip(entries, plans):
        if kc is not None:
            entry.value, entry.value_draws = measured[(entry.index, kc)]
        if kd is not None:
            entry.dense_value, entry.dense_draws = measured[(entry.dense_index, kd)]
        entry.items = len(kc or kd or ()) or int(entry.record.get("n") or 0)
        entry.chance = chance_of(entry.record)
        try:
            entry.normalised = normalise(entry.value, entry.dense_value, entry.higher_is_better)
        except JdnaError as error:
            raise JdnaError(f"{error} (task {entry.record['task']}, knobs {canonical_json(entry.knobs)})") from None
    notes = []
    fixed = sorted({i for e in entries for i in (e.index, e.dense_index) if data(i) is None})
    if fixed:
        notes.append(
            f"{len(fixed)} of {len(records)} records have no usable per-item values (a summary line whose file "
            "is missing, or a metric that is not a mean over items): their items are not resampled"
        )
    if narrowed:
        notes.append(
            f"{len(narrowed)} compressed/dense pair(s) were scored on different item sets: each is paired on the "
            f"items both hold ({sum(narrowed)} item score(s) left out in all)"
        )
    return notes


def analyse(
    records: Sequence[Record],
    axes: Sequence[Axis] | None = None,
    baselines: BaselineTable | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    min_trend: float = stats.MIN_TREND,
    gap_normalise: str = "dense",
    recovery_margin: float = RECOVERY_MARGIN,
) -> Analysis:
    """Group eval records, normalise them by their dense baselines and test monotonicity in both directions."""
    if n_resamples < 2:
        raise JdnaError(f"--resamples {n_resamples}: use at least 2 (1000 for a paper)")
    if not min_trend > 0:
        raise JdnaError(f"--min-trend {min_trend}: give the smallest trend worth detecting, e.g. 0.03")
    if gap_normalise not in GAP_NORMALISE:
        raise unknown_name_error("--gap-normalise", gap_normalise, GAP_NORMALISE)
    baselines = baselines or BaselineTable.load()
    # Content order, so the same records in any order give the same result, bit for bit.
    records = sorted(records, key=_content_key)
    entries = match_dense(records)
    chosen = choose_axes(entries, records, axes, baselines)
    notes = pair_items(records, entries, n_resamples, seed)

    # Human–LLM gap per (task, base model): each base model has its own dense score on each task.
    gaps: dict[tuple[str, str], tuple[float, str]] = {}
    if any(a.name == "gap" for a in chosen.values()):
        dense_by: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        for e in entries:
            dense_by[(e.record["task"], _base(e.record))][e.dense_index] = primary_value(records[e.dense_index])
        for (task, base), dense in sorted(dense_by.items()):
            metric = next(e.record["primary_metric"] for e in entries if e.record["task"] == task)
            baseline = baselines.get(task, metric)
            if baseline is None:
                raise JdnaError(f"no human baseline for task {task} ({metric}): add it with --baselines FILE")
            mean_dense = float(np.mean([dense[i] for i in sorted(dense)]))
            gaps[(task, base)] = (human_gap(baseline.human, mean_dense, by=gap_normalise), baseline.citation)

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

    groups: list[dict[str, Any]] = []
    level_tests: list[tuple[dict[str, Any], stats.Trend, str | None, list[str]]] = []
    compression_tests: list[tuple[dict[str, Any], stats.Trend, str | None, list[str]]] = []
    few_seeds = False
    for key in sorted(grouped, key=lambda k: _group_order(meta[k])):
        info = meta[key]
        axis: Axis = info["axis"]
        group_entries = grouped[key]
        scale = _scale(axis, group_entries)
        cells = _cells(group_entries, axis, gaps, info["base"], scale)
        few_seeds |= any(1 < len(c.entries) < stats.FEW_SEEDS for row in cells.values() for c in row.values())
        levels = []
        for level in sorted(cells):
            row = cells[level]
            order = sorted(row, key=lambda k: row[k].score)
            body, test = _test(order, row, axis, n_resamples, seed, [key, level], min_trend, "difficulty")
            body = {"level": level,
                    "bits_per_weight": _json_value(float(np.mean([e.compression.bits_per_weight
                                                                  for c in row.values() for e in c.entries]))),
                    **body}
            levels.append(body)
            level_tests.append((body, *test))
        across_compression = []
        compressed_first = 1.0 if group_entries[0].compression.axis == "sparsity" else -1.0
        point_keys = sorted({k for row in cells.values() for k in row},
                            key=lambda k: next(row[k].score for row in cells.values() if k in row))
        for point in point_keys:
            row = {f"{level!r}": cells[level][point] for level in cells if point in cells[level]}
            level_of = {f"{level!r}": level for level in cells if point in cells[level]}
            order = sorted(row, key=lambda k: compressed_first * level_of[k])
            labels = [f"{level_of[k]:g}" for k in order]
            body, test = _test(order, row, axis, n_resamples, seed, [key, point], min_trend, "compression",
                               labels=labels)
            first = next(iter(row.values()))
            body = {"difficulty": first.difficulty, "label": first.label, "levels": [level_of[k] for k in order],
                    **body}
            across_compression.append(body)
            compression_tests.append((body, *test))
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
            "scale": scale,
            "levels": levels,
            "across_compression": across_compression,
        }
        if axis.name == "gap":
            group["gap_normalise"] = gap_normalise
            group["baselines"] = {t: gaps[(t, info["base"])][1] for t in group["tasks"]}
        groups.append(group)

    for tests in (level_tests, compression_tests):
        stats.decide([t for _, t, _, _ in tests], [u for _, _, u, _ in tests], labels=[n for *_, n in tests])
        for body, t, _, _ in tests:
            body.update(verdict=t.verdict, reason=t.reason, p_adjusted=t.adjusted)
    if any(g["scale"] == "chance-corrected" for g in groups):
        notes.append("on the options axis chance moves (1/options), so normalised performance is chance-corrected: "
                     "(compressed − chance)/(dense − chance); the raw ratio is in normalised_raw")
    if any(any(lv["near_chance"]) for g in groups for lv in g["levels"]):
        notes.append("difficulty levels where the dense model is within 2 standard errors of chance are flagged "
                     "(near_chance) and left out of the verdicts: there is no skill there to lose (chance: 1/options "
                     "for multiple choice, the majority-class rate of the evaluated items for classification)")
    if few_seeds:
        notes.append(f"some points have 2–{stats.FEW_SEEDS - 1} seeds: seed variance is estimated with few degrees "
                     f"of freedom (t-based, pooled over a test's points), so intervals are wide; "
                     f"{stats.FEW_SEEDS} or more seeds are advised")
    irreversibility = _irreversibility(entries, chosen, gaps, n_resamples, seed, recovery_margin)
    return Analysis(
        rule=stats.RULE,
        axis=sorted({a.spec() for a in chosen.values()}),
        groups=groups,
        irreversibility=irreversibility,
        notes=notes,
    )


@dataclass
class Cell:
    """The records of one group at one compression level and one difficulty level (its seed replicates)."""

    entries: list[Entry]
    score: float  # difficulty score (larger = harder)
    difficulty: Any
    label: str
    scale: str

    def point(self) -> stats.Point:
        """The mean over seeds of normalised performance, its item draws and the per-seed values."""
        values, draws = [], []
        for entry in self.entries:
            value, row = entry.normalised_on(self.scale)
            values.append(value)
            draws.append(row)
        resampled = [d for d in draws if d is not None]
        mean_draws = None
        if resampled:
            n = len(resampled[0])
            mean_draws = np.mean([d if d is not None else np.full(n, v) for v, d in zip(values, draws)], axis=0)
        items = int(np.median([e.items for e in self.entries])) if self.entries else 0
        return stats.Point(float(np.mean(values)), mean_draws, values, items)

    def near_chance(self) -> bool:
        """Whether the dense model is within 2 standard errors of chance here (None chance: not flagged)."""
        if any(e.chance is None for e in self.entries):
            return False
        margin = float(np.mean([e.dense_value - e.chance for e in self.entries]))  # type: ignore[operator]
        return margin < NEAR_CHANCE_SE * float(np.mean([e.dense_se() for e in self.entries]))

    def raw(self) -> float:
        return float(np.mean([e.normalised for e in self.entries]))


def _scale(axis: Axis, entries: Sequence[Entry]) -> str:
    """Chance-corrected where chance moves with difficulty (the options axis) and is known for every record."""
    if axis.name == "options" and all(e.chance is not None and e.higher_is_better for e in entries):
        return "chance-corrected"
    return "raw"


def _cells(entries: Sequence[Entry], axis: Axis, gaps: dict[tuple[str, str], tuple[float, str]], base: str,
           scale: str) -> dict[float, dict[str, Cell]]:
    """level → difficulty key → the cell's seed replicates (content-sorted)."""
    cells: dict[float, dict[str, Cell]] = defaultdict(dict)
    for entry in sorted(entries, key=lambda e: _content_key(e.record)):
        raw = _point_key(entry, axis)
        key = canonical_json(raw)
        row = cells[entry.compression.level]
        if key not in row:
            score = _point_score(raw, axis, gaps, base)
            difficulty = raw if axis.name != "gap" else _json_value(gaps[(raw, base)][0])
            row[key] = Cell([], score, difficulty, _label(axis, raw), scale)
        row[key].entries.append(entry)
    return dict(cells)


def _test(order: list[str], row: dict[str, Cell], axis: Axis, n_resamples: int, seed: int, where: list[Any],
          min_trend: float, direction: str, labels: list[str] | None = None
          ) -> tuple[dict[str, Any], tuple[stats.Trend, str | None, list[str]]]:
    """The body of one test (points in `order`), its Trend, the reason it cannot be tested (or None), and the
    names of the points it tests."""
    cells = [row[k] for k in order]
    labels = labels or [c.label for c in cells]
    points = [c.point() for c in cells]
    flagged = [c.near_chance() for c in cells]
    used = [i for i, f in enumerate(flagged) if not f]
    rng = stats.content_rng(seed, "seeds", direction, canonical_json(where))
    t = stats.trend([points[i] for i in used], n_resamples, rng, min_trend)
    usable = None
    what = "difficulty levels" if direction == "difficulty" else "compression levels"
    if len(used) < stats.MIN_LEVELS:
        usable = f"fewer than {stats.MIN_LEVELS} {what}"
        if len(used) < len(cells):
            usable += f" once {', '.join(labels[i] for i in range(len(cells)) if flagged[i])} (dense near chance) " \
                      "are left out"
    elif t.draws is None:
        usable = "no interval: one seed and no per-item values"
    elif not math.isfinite(t.slope):
        usable = "the normalised performance is undefined at some level"
    intervals: list[list[float] | None] = []
    for i, point in enumerate(points):
        if i in used and t.draws is not None:
            intervals.append(stats.interval(t.draws[:, used.index(i)]))
        else:
            intervals.append(stats.interval(point.draws) if point.draws is not None else None)
    used_labels = [labels[i] for i in used]
    body: dict[str, Any] = {
        "difficulties": [c.difficulty for c in cells],
        "labels": labels,
        "scale": cells[0].scale,
        "normalised": [_json_value(p.estimate) for p in points],
        "normalised_ci95": intervals,
        "seeds": [len(c.entries) for c in cells],
        "items": [p.items for p in points],
        "chance": [c.entries[0].chance for c in cells],
        "near_chance": flagged,
        "slope": {"value": _json_value(t.slope), "ci95": t.slope_ci, "p_increase": _json_value(t.p_increase),
                  "p_decrease": _json_value(t.p_decrease)},
        "reversed_pairs": [{"easier": used_labels[j], "harder": used_labels[j + 1], "p": _json_value(p)}
                           for j, p in enumerate(t.p_reversed)],
        "spearman": t.spearman,
        "kendall": t.kendall,
        "violations": [[used_labels[i], used_labels[j]] if direction == "compression" or axis.name == "gap"
                       else [cells[used[i]].difficulty, cells[used[j]].difficulty] for i, j in t.violations],
        "power": t.power,
    }
    if direction != "difficulty":
        body.pop("difficulties")  # the test's points are compression levels (its `levels`)
    if cells[0].scale == "chance-corrected":
        body["normalised_raw"] = [c.raw() for c in cells]
    return body, (t, usable, used_labels)


def _group_order(info: dict[str, Any]) -> tuple:
    transfer = info["transfer"] or ""
    rank = TRANSFER_ORDER.index(transfer) if transfer in TRANSFER_ORDER else len(TRANSFER_ORDER)
    return (info["task"] or "", KIND_ORDER.get(info["compression_kind"], 9), info["method"], rank, transfer,
            info["base"], canonical_json(info["knobs"]))


def _point_key(entry: Entry, axis: Axis) -> Any:
    return entry.record["task"] if axis.name == "gap" else entry.knobs.get(axis.name)


def _point_score(raw: Any, axis: Axis, gaps: dict[tuple[str, str], tuple[float, str]], base: str) -> float:
    return gaps[(raw, base)][0] if axis.name == "gap" else axis.score(raw)


def _irreversibility_order(entry: Entry, chosen: dict[str, Axis], gaps: dict[tuple[str, str], tuple[float, str]]
                           ) -> tuple:
    """Task, then setting in the study's order, method, level, and difficulty easiest → hardest."""
    mode = entry.mode or ""
    axis = chosen[entry.record["task"]]
    rank = TRANSFER_ORDER.index(mode) if mode in TRANSFER_ORDER else len(TRANSFER_ORDER)
    return (entry.record["task"], rank, mode,
            KIND_ORDER.get(entry.compression.kind, 9), entry.compression.method, entry.compression.level,
            _base(entry.record), _point_score(_point_key(entry, axis), axis, gaps, _base(entry.record)))


def _irreversibility(
    entries: Sequence[Entry], chosen: dict[str, Axis], gaps: dict[tuple[str, str], tuple[float, str]],
    n_resamples: int, seed: int, margin: float,
) -> list[dict[str, Any]]:
    """After fine-tuning: each transfer setting of a compressed model against dense transfer, per difficulty level.

    `gap` is the metric lost relative to dense transfer (positive = the compressed transfer is worse, for
    either metric direction); `drop` = 1 − normalised is the same comparison as a share, with its paired
    bootstrap interval (item draws plus a t-based seed term). Verdict, Holm-corrected over all rows:
    'irreversible' if the drop is significantly > 0; 'recovered' if it is significantly below `margin` (the
    setting is within that share of dense transfer); otherwise 'inconclusive'. A level where dense transfer is
    near chance (`Cell.near_chance`: a classifier at its majority class) is 'inconclusive' and left out of Holm.
    """
    cells: dict[str, list[Entry]] = defaultdict(list)
    for entry in sorted(entries, key=lambda e: _content_key(e.record)):
        if entry.mode is None:
            continue
        axis = chosen[entry.record["task"]]
        key = canonical_json([entry.record["task"], entry.mode, entry.compression.kind, entry.compression.method,
                              entry.compression.level, _base(entry.record), _point_key(entry, axis)])
        cells[key].append(entry)
    rows = []
    worse, recovered = [], []
    for key in sorted(cells, key=lambda k: _irreversibility_order(cells[k][0], chosen, gaps)):
        group = cells[key]
        first = group[0]
        axis = chosen[first.record["task"]]
        raw = _point_key(first, axis)
        base = _base(first.record)
        value = float(np.mean([e.value for e in group]))
        dense = float(np.mean([e.dense_value for e in group]))
        sign = 1.0 if first.higher_is_better else -1.0
        cell = Cell(group, 0.0, raw, "", "raw")
        point = cell.point()
        floor = cell.near_chance()
        drop = 1.0 - point.estimate
        var_item = float(np.var(point.draws[np.isfinite(point.draws)], ddof=1)) if point.draws is not None else 0.0
        df = len(group) - 1
        s2 = float(np.var(point.replicates, ddof=1)) if df > 0 else 0.0
        var_seed = s2 / len(group)
        ci = None
        if point.draws is not None or s2 > 0:
            rng = stats.content_rng(seed, "irreversibility", key)
            draws = point.draws if point.draws is not None else np.full(n_resamples, point.estimate)
            if s2 > 0:
                draws = draws + math.sqrt(var_seed) * rng.standard_t(df, n_resamples)
            ci = stats.interval(1.0 - draws)
        if ci is None or floor:  # nothing to test against, or no skill to lose (dense transfer near chance)
            worse.append(math.nan), recovered.append(math.nan)
        else:
            worse.append(stats.upper_tail(drop, var_item, var_seed, df))
            recovered.append(stats.upper_tail(margin - drop, var_item, var_seed, df))
        rows.append({
            "task": first.record["task"],
            "mode": first.mode,
            "compression_kind": first.compression.kind,
            "method": first.compression.method,
            "level": first.compression.level,
            "base": base,
            "axis": axis.name,
            "difficulty": raw if axis.name != "gap" else _json_value(gaps[(raw, base)][0]),
            "label": _label(axis, raw),
            "metric": first.record["primary_metric"],
            "transfer": value,
            "dense_transfer": dense,
            "gap": sign * (dense - value),
            "normalised": point.estimate,
            "drop": drop,
            "drop_ci95": ci,
            "seeds": len(group),
            "near_chance": floor,
        })
    adjusted_worse, adjusted_recovered = stats.holm(worse), stats.holm(recovered)
    level = stats.ALPHA / 2
    for row, p_worse, p_recovered in zip(rows, adjusted_worse, adjusted_recovered):
        row["p_adjusted"] = {"irreversible": _json_value(p_worse), "recovered": _json_value(p_recovered)}
        if row["near_chance"]:
            # Both at the floor would read as "recovered": the level says nothing about recovery.
            row["verdict"] = "inconclusive"
            row["reason"] = "dense transfer is within 2 standard errors of chance here"
        elif math.isfinite(p_worse) and p_worse <= level:
            row["verdict"] = "irreversible"
        elif math.isfinite(p_recovered) and p_recovered <= level:
            row["verdict"] = "recovered"
        else:
            row["verdict"] = "inconclusive"
    return rows
