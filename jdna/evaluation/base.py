"""What every task kind's evaluator shares: the config, the prepared items, the outcome, and the registry.

An evaluator (one module per task kind, registered in `EVALUATORS` by kind name) gets an `EvalContext`
whose items have already been through the model-independent knobs (split, limit, options, shots), and
returns an `Outcome`: metrics with bootstrap intervals, per-item values and per-item samples. Everything
that can be checked without a model is checked before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from jdna.errors import JdnaError
from jdna.metrics import bootstrap_ci
from jdna.models import ModelRef
from jdna.progress import Reporter
from jdna.registry import Registry
from jdna.tasks import KIND_KNOBS as TASK_KIND_KNOBS
from jdna.tasks import KNOB_SPECS, Item, Task, draw_shots, knob_flag, knob_of

# Bumped whenever a change to prompting, scoring or metrics could change a result: part of every eval's
# content address, so old records are not served as cache hits for a different protocol.
EVAL_PROTOCOL_VERSION = 1

SPLITS = ("test", "train")
# How --limit picks items: "sample" (a seeded sample, nested in N) or "first" (file order, as lm-eval's --limit).
LIMIT_MODES = ("sample", "first")
TRANSFER_MODES = ("sparse", "dense", "freeze", "regrow")
BOOTSTRAP_RESAMPLES = 1000

@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides an evaluation. All but `batch_size` and `log_samples` enter its content address.

    `shots` defaults to 0; the other knobs default to None, meaning "not applied". `as_kind` is passed to
    the task loader (BIG-bench: load a fixed-label multiple-choice task as classification).
    """

    task: str
    shots: int = 0
    options: int | None = None
    context_tokens: int | None = None
    context_fraction: float | None = None
    train_fraction: float | None = None
    train_examples: int | None = None
    limit: int | float | None = None  # N items, or a fraction 0 < x < 1 of the pool (rounded up, as lm-eval)
    limit_mode: str = "sample"
    split: str = "test"
    seed: int = 0
    batch_size: int | None = None
    max_new_tokens: int = 32
    transfer_mode: str | None = None
    as_kind: str | None = None
    log_samples: Path | None = None

    @property
    def context_knob(self) -> bool:
        """Whether the evidence window is set (by tokens or by fraction): then unanswerable items are excluded."""
        return self.context_tokens is not None or self.context_fraction is not None

    def knobs(self) -> dict[str, Any]:
        """The knob block of the result record (docs/records.md)."""
        return {
            "shots": self.shots,
            "options": self.options,
            "context_tokens": self.context_tokens,
            "context_fraction": self.context_fraction,
            "train_fraction": self.train_fraction,
            "train_examples": self.train_examples,
            "limit": self.limit,
            "limit_mode": self.limit_mode if self.limit is not None else None,
            "split": self.split,
            "seed": self.seed,
        }


# The knob settings, in EvalConfig's field order (the order knob errors are reported in); the knob vocabulary
# is jdna.tasks' (`KNOB_SPECS`): a setting is at once an EvalConfig field, a record `knobs` key and a flag.
KNOB_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EvalConfig) if any(f.name in knob.settings for knob in KNOB_SPECS)
)
# The settings each task kind takes (jdna.tasks.KIND_KNOBS); any other setting given is an error.
KIND_KNOBS: dict[str, tuple[str, ...]] = {
    kind: tuple(setting for setting in KNOB_SETTINGS if knob_of(setting).name in knobs)
    for kind, knobs in TASK_KIND_KNOBS.items()
}
KNOB_FLAGS = {setting: knob_flag(setting) for setting in KNOB_SETTINGS}


@dataclass
class Prepared:
    """The task after the model-independent knobs: the items to evaluate and each item's demonstrations.

    `excluded` says how many items of the pool were left out before scoring and why (the context knob
    drops items whose evidence document holds no answer); None when nothing was excluded by rule.
    """

    task: Task
    items: list[Item]
    shots: dict[str, list[Item]]
    shot_pool: str | None  # "group" (same subject/subtask), "task", or None without shots
    excluded: dict[str, Any] | None = None


@dataclass
class EvalContext:
    ref: ModelRef
    config: EvalConfig
    prepared: Prepared
    reporter: Reporter
    device: torch.device
    dtype: torch.dtype
    # A model already in memory (jdna finetune validating what it trained): load_lm returns it, loads nothing.
    model: Any = None
    tokenizer: Any = None
    # accelerate's placement (--device-map), and the data-parallel group whose processes share the scoring
    # (a jdna.distributed.Dist; None or world size 1: one process). See jdna/evaluation/parallel.py.
    device_map: str | None = None
    dist: Any = None
    # The fine-tuning step a classification task without a head needs (see `Transfer`); None: not available.
    transfer: Transfer | None = None
    # Models already loaded by an earlier task of the same run (`jdna eval --tasks a,b`): see `ModelCache`.
    models: ModelCache | None = None


@dataclass
class Outcome:
    """What an evaluator measured. `per_item` has at least `ids` and `values` (see docs/records.md)."""

    metrics: dict[str, dict[str, Any]]
    per_item: dict[str, Any]
    samples: list[dict[str, Any]]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    transfer: dict[str, Any] | None = None
    model_ref: ModelRef | None = None  # the model actually scored, when it differs (auto fine-tuning)
    # Per-item values of each metric that is a mean over items (for lm-eval's standard errors).
    item_values: dict[str, list[float]] = field(default_factory=dict)


class Transfer(Protocol):
    """The transfer (fine-tuning) step a classification task needs when the model has no head for it.

    Evaluation sits below fine-tuning in jdna's layers, so it never imports it: the command layer passes one
    in (`jdna.finetune.EvalTransfer` for `jdna eval`). `mode` is the transfer mode (sparse, dense, ...).
    """

    def check(self, ref: ModelRef, config: EvalConfig, mode: str) -> None:
        """The fine-tuning flags and model checks, before any weights are loaded; raise JdnaError."""

    def run(self, ref: ModelRef, config: EvalConfig, mode: str, reporter: Reporter) -> dict[str, Any]:
        """Fine-tune `ref` for `config.task`; returns the finetuned artifact's stdout record."""


class Evaluator(Protocol):
    higher_is_better: bool

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig, transfer: Transfer | None = None) -> None:
        """Model-dependent checks that need no weights (model family, heads); raise JdnaError. `transfer` is
        the fine-tuning step a classification task without a head runs first (None: not available)."""

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        """Kind-specific parameters that enter the content address."""

    def run(self, ctx: EvalContext) -> Outcome:
        """Load the model, score the items, compute metrics."""


EVALUATORS: Registry[Evaluator] = Registry("task kind")


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def needs_causal_lm(ref: ModelRef, kind: str) -> None:
    if ref.base.family != "causal_lm":
        raise JdnaError(
            f"{kind} tasks score text with a causal language model, but '{ref.base.name}' is an encoder: "
            "use a causal LM (e.g. smollm2-135m) or a classification task"
        )


def draw_all_shots(
    task: Task, items: Sequence[Item], k: int, seed: int, exclude_ids: Sequence[str]
) -> tuple[dict[str, list[Item]], str | None]:
    """Each item's k demonstrations: one seeded set per group when every item has a group (MMLU subjects,
    BIG-bench subtasks: the original protocols keep demonstrations in the question's subject), else one
    seeded set for the whole task. Shared sets let the scorer run the demonstrations once."""
    if k == 0:
        return {item.id: [] for item in items}, None
    train_groups = Counter(item.group for item in task.train_items)
    grouped = all(item.group is not None and train_groups[item.group] > 0 for item in items)
    drawn: dict[str | None, list[Item]] = {}
    out: dict[str, list[Item]] = {}
    for item in items:
        group = item.group if grouped else None
        if group not in drawn:
            drawn[group] = draw_shots(task.train_items, k, seed, exclude_ids, group=group)
        out[item.id] = drawn[group]
    return out, "group" if grouped else "task"


def interval(values: Sequence[float] | np.ndarray, seed: int) -> list[float]:
    low, high = bootstrap_ci(np.asarray(values, dtype=np.float64), n_resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    return [round(low, 6), round(high, 6)]


def metric_entry(value: float, ci: Sequence[float]) -> dict[str, Any]:
    return {"value": round(float(value), 6), "ci95": [round(float(c), 6) for c in ci]}


class ModelCache:
    """The model the last task loaded, kept for the next task of the same run, so that `jdna eval --tasks a,b`
    loads it once. One entry: a task needing another model (a fine-tuned head) replaces it."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._loaded: tuple[Any, Any] | None = None

    def get(self, key: tuple[Any, ...]) -> tuple[Any, Any] | None:
        return self._loaded if self._key == key else None

    def put(self, key: tuple[Any, ...], loaded: tuple[Any, Any]) -> None:
        self._key, self._loaded = key, loaded

    def clear(self) -> None:
        self._key, self._loaded = None, None


def load_model_for(
    ctx: EvalContext, ref: ModelRef, message: str, device_map: str | None = None
) -> tuple[Any, Any, float]:
    """`ref` as a transformers model on the context's device and dtype, and the seconds loading took; taken from
    the run's `ModelCache` when an earlier task loaded it. `message` is logged when it is loaded now."""
    import time

    from jdna.models import load_model

    key = (ref.identity, str(ctx.device), str(ctx.dtype), device_map)
    if ctx.models is not None:
        cached = ctx.models.get(key)
        if cached is not None:
            ctx.reporter.log(f"reusing {ref.display_name}, loaded for the previous task")
            return (*cached, 0.0)
        ctx.models.clear()  # the old model goes before the next one loads
    ctx.reporter.log(message)
    started = time.perf_counter()
    model, tokenizer = load_model(ref, device=ctx.device, dtype=ctx.dtype, device_map=device_map)
    if ctx.models is not None:
        ctx.models.put(key, (model, tokenizer))
    return model, tokenizer, time.perf_counter() - started


def load_lm(ctx: EvalContext) -> tuple[Any, Any, float]:
    """The causal LM and tokenizer on the context's device and dtype, and the seconds it took."""
    if ctx.model is not None:
        return ctx.model, ctx.tokenizer, 0.0
    dtype = str(ctx.dtype).replace("torch.", "")
    return load_model_for(ctx, ctx.ref, f"loading {ctx.ref.display_name} ({ctx.device.type}, {dtype})", ctx.device_map)
