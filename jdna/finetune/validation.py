"""Fine-tuning's validation pass and the eval record it writes.

Classification heads are validated by `jdna.finetune.evaluate` on the task's evaluation pool; a causal LM's
answer tokens and an encoder's multiple-choice head by the scorer `jdna eval` itself runs (its evaluator,
or `run_head`), on the items `jdna eval --task T --limit N --seed S` scores, with the model still in memory.
The record is built by `jdna.evaluation.records` (the one eval-record builder and id recipe), with the
fine-tuned artifact as its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdna.evaluation import EVALUATORS
from jdna.evaluation.base import EvalConfig, EvalContext, Outcome, Prepared
from jdna.evaluation.multiple_choice import run_head
from jdna.evaluation.records import build_record, default_record_path, eval_identity
from jdna.finetune.config import FinetuneConfig
from jdna.finetune.evaluate import Evaluation
from jdna.models import ModelRef
from jdna.progress import Reporter
from jdna.tasks import Item, Task


def eval_knobs(config: FinetuneConfig, n_train: int) -> dict[str, Any]:
    """The eval record's knobs for a fine-tuning run (the evaluation pool is the task's "test" items).

    Record-visible and part of the id, so their names and values stay as they were (no `context_fraction`)."""
    return {
        "shots": 0,
        "options": None,
        "context_tokens": None,
        "train_fraction": config.train_fraction,
        "train_examples": n_train,
        "limit": config.eval_limit,
        "limit_mode": "sample" if config.eval_limit is not None else None,  # as `jdna eval --limit N` picks
        "split": "test",
        "seed": config.seed,
    }


def eval_location(artifact_identity: str, config: FinetuneConfig, n_train: int) -> tuple[str, Path]:
    """(id, path) of the eval record written for the fine-tuned artifact `artifact_identity`."""
    identity = eval_identity(artifact_identity, {"task": config.task, "knobs": eval_knobs(config, n_train)})
    return identity, default_record_path(identity)


@dataclass
class Validation:
    """The validation pass, whichever evaluator ran it: metrics, per-item values (eval record layout)."""

    task_kind: str
    primary_metric: str
    metrics: dict[str, dict[str, Any]]
    per_item: dict[str, Any]
    n: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_classification(cls, task: Task, items: list[Item], evaluation: Evaluation) -> Validation:
        # Predictions and golds as `jdna eval`'s classifier records them: the analysis needs the golds for the
        # majority-class floor and both for a paired bootstrap of a corpus metric (MCC, F1).
        per_item = {
            "ids": [item.id for item in items],
            "values": evaluation.per_item,
            "predictions": np.asarray(evaluation.predictions).tolist(),
            "golds": np.asarray(evaluation.golds).tolist(),
        }
        return cls(task.kind, evaluation.primary_metric, evaluation.metrics, per_item, len(items), evaluation.seconds)


def validation_record(
    ref: ModelRef,
    finetuned: ModelRef,
    artifact_path: Path,
    artifact_identity: str,
    config: FinetuneConfig,
    n_train: int,
    validation: Validation,
    transfer_extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The eval record (docs/records.md) of the validation pass, and where it goes. `ref` is the model that was
    fine-tuned, `finetuned` the model the artifact makes."""
    identity, path = eval_location(artifact_identity, config, n_train)
    seconds = validation.seconds
    record = build_record(
        identity=identity,
        path=path,
        task=config.task,
        task_kind=validation.task_kind,
        knobs=eval_knobs(config, n_train),
        primary_metric=validation.primary_metric,
        metrics=validation.metrics,
        higher_is_better=True,
        n=validation.n,
        model={
            "name": str(artifact_path),
            "id": artifact_identity,
            "base": ref.base.name,
            "base_sha256": ref.base.sha256,
            "lineage": finetuned.lineage(),
            "compression": ref.compression(),
        },
        transfer={
            "mode": config.mode,
            "train_examples": n_train,
            "artifact": str(artifact_path),
            **(transfer_extra or {}),
        },
        extra=validation.extra,
        per_item=validation.per_item,
        timing={
            "seconds": round(seconds, 3),
            "items_per_second": round(validation.n / seconds, 2) if seconds > 0 else None,
        },
    )
    return path, record


def validate_with_evaluator(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Prepared,
    eval_config: EvalConfig,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
) -> Validation:
    """`jdna eval`'s own evaluator (multiple choice or generation) on the prepared items, model in memory."""
    evaluator = EVALUATORS.get(prepared.task.kind)
    return _validate_in_memory(model, tokenizer, prepared, eval_config, ref, device, reporter, evaluator.run, None)


def validate_mc_head(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Prepared,
    eval_config: EvalConfig,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
    head: dict[str, Any],
) -> Validation:
    """The multiple-choice head's validation: the scorer `jdna eval` runs on the artifact, model in memory."""
    max_length = int(head["max_length"])
    return _validate_in_memory(
        model, tokenizer, prepared, eval_config, ref, device, reporter, lambda ctx: run_head(ctx, max_length), "acc"
    )


def _validate_in_memory(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Prepared,
    eval_config: EvalConfig,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
    scorer: Callable[[EvalContext], Outcome],
    primary_metric: str | None,
) -> Validation:
    """Run one of eval's scorers on the model in memory and keep what a finetuned record shows."""
    dtype = next(model.parameters()).dtype
    ctx = EvalContext(
        ref=ref, config=eval_config, prepared=prepared, reporter=reporter, device=device, dtype=dtype,
        model=model, tokenizer=tokenizer,
    )
    outcome = scorer(ctx)
    extra = {k: v for k, v in outcome.extra.items() if k != "load_seconds"}
    extra.update(device=device.type, dtype=str(dtype).replace("torch.", ""))
    return Validation(
        task_kind=prepared.task.kind,
        primary_metric=primary_metric or next(iter(outcome.metrics)),
        metrics=outcome.metrics,
        per_item=outcome.per_item,
        n=len(prepared.items),
        seconds=outcome.seconds,
        extra=extra,
    )
