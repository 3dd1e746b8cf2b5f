"""Transfer fine-tuning of (pruned) models: dense, sparse, freeze and regrow, with checked invariants.

`run_finetune(ref, config)` trains a sequence-classification head (and the whole model) on a classification
task, enforces the mode's mask rules (`jdna.finetune.masking`), checks the mode's invariant at the end (a
violation is an error), evaluates the task's evaluation pool, and writes

- a ``finetuned`` artifact (all parameters + the keep-masks for sparse/freeze) whose parent is the input, and
- an ``eval`` record (``runs/eval/<id[:20]>.json``) whose ``transfer`` names the mode,

and returns the stdout record. Interrupted runs leave a checkpoint beside the output and resume from it.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdna.artifact import (
    Artifact,
    artifact_id,
    cached_artifact,
    default_output_path,
    pack_mask,
    parent_reference,
    read_artifact,
    versions,
    write_artifact,
)
from jdna.errors import JdnaError, unknown_name_error
from jdna.finetune.checkpoint import checkpoint_dir, remove_checkpoint
from jdna.finetune.data import Encoded, Schedule, encode_items, is_regression
from jdna.finetune.evaluate import Evaluation, evaluate
from jdna.finetune.loop import Interrupted, TrainSettings, loss_summary, stop_on_signals, train
from jdna.finetune.masking import MaskEnforcer, chain_masks, dense_ref, mask_source, zero_statistics
from jdna.io import write_json_atomic
from jdna.models import ModelRef, canonical_parameters, default_device, load_model, resolve
from jdna.paths import runs_dir
from jdna.progress import Reporter
from jdna.tasks import Item, Task, load_task, parse_spec, subsample_train
from jdna.tasks.base import hash_rank

__all__ = [
    "MODES",
    "FinetuneConfig",
    "Interrupted",
    "MaskEnforcer",
    "finetune_record",
    "load_classification_task",
    "plan",
    "run_finetune",
]

MODES = ("dense", "sparse", "freeze", "regrow")
MODE_HELP = {
    "dense": "the unpruned model (the chain without its pruning steps), trained normally",
    "sparse": "pruned weights stay exactly zero (gradients, weights and Adam moments masked)",
    "freeze": "pruned positions keep their pretrained values and never change",
    "regrow": "pruned weights start at zero and are trainable",
}
ENCODER_LR = 5e-5
CAUSAL_LM_LR = 1e-4
NEEDS_MASK = ("sparse", "freeze")


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run. `lr=None` means 5e-5 for encoders, 1e-4 for causal LMs.

    Without `train_fraction` and `train_examples` the whole train pool is used.
    """

    task: str = ""
    mode: str = "sparse"
    train_fraction: float | None = None
    train_examples: int | None = None
    epochs: int = 3
    lr: float | None = None
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    warmup: float = 0.06
    weight_decay: float = 0.01
    seed: int = 0
    eval_limit: int | None = 1000
    checkpoint_every: int = 100


def plan(config: FinetuneConfig) -> FinetuneConfig:
    """Validate the flags (no model, no data touched); returns the config. Bad values raise JdnaError."""
    if not config.task:
        raise JdnaError("no task given: pass --task, e.g. --task bigbench:vitaminc_fact_verification")
    if config.mode not in MODES:
        raise unknown_name_error("mode", config.mode, MODES)
    if config.train_fraction is not None and config.train_examples is not None:
        raise JdnaError("give --train-fraction or --train-examples, not both")
    if config.train_fraction is not None and not 0.0 < config.train_fraction <= 1.0:
        raise JdnaError(f"--train-fraction {config.train_fraction} is outside (0, 1]: use e.g. 0.1")
    if config.train_examples is not None and config.train_examples < 1:
        raise JdnaError(f"--train-examples {config.train_examples} is below 1: use at least 1")
    checks = [
        (config.epochs >= 1, f"--epochs {config.epochs} is below 1"),
        (config.lr is None or config.lr > 0, f"--lr {config.lr} must be positive"),
        (config.batch_size >= 1, f"--batch-size {config.batch_size} is below 1"),
        (config.grad_accum >= 1, f"--grad-accum {config.grad_accum} is below 1"),
        (config.max_length >= 2, f"--max-length {config.max_length} is below 2"),
        (0.0 <= config.warmup < 1.0, f"--warmup {config.warmup} is outside [0, 1) (a fraction of the steps)"),
        (config.weight_decay >= 0.0, f"--weight-decay {config.weight_decay} is negative"),
        (config.eval_limit is None or config.eval_limit >= 1, f"--eval-limit {config.eval_limit} is below 1"),
        (config.checkpoint_every >= 1, f"--checkpoint-every {config.checkpoint_every} is below 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise JdnaError(message)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise JdnaError(
            f"finetune runs in one process (WORLD_SIZE={world}): multi-process training is not supported yet; "
            "run `jdna finetune` without accelerate launch/torchrun (one GPU is used automatically)"
        )
    return config


def check_model(ref: ModelRef, config: FinetuneConfig) -> None:
    """Checks that need the model reference but not its weights: masks for sparse/freeze."""
    if config.mode in NEEDS_MASK and mask_source(ref) is None:
        raise JdnaError(
            f"mode {config.mode} needs a pruned model: pipe `jdna prune` output or use --mode dense"
        )


def load_classification_task(spec: str) -> Task:
    """Load `spec` as a classification task (BIG-bench fixed-label tasks are converted), else a clear error."""
    source = parse_spec(spec)[0]
    options = {"as_kind": "classification"} if source == "bigbench" else {}
    try:
        task = load_task(spec, **options)
    except JdnaError as error:
        if source != "bigbench":
            raise
        raise JdnaError(
            f"task {spec} cannot be fine-tuned with a classification head ({error}); training multiple-choice "
            "or QA tasks on a causal LM's answer tokens is not supported yet"
        ) from None
    if task.kind != "classification":
        raise JdnaError(
            f"task {spec} is a {task.kind} task, but finetune trains a sequence-classification head and needs "
            "a classification task (e.g. bigbench:vitaminc_fact_verification, sst2, or a file: task with "
            f"labels); training {task.kind} tasks on a causal LM's answer tokens is not supported yet"
        )
    if not task.train_items:
        raise JdnaError(f"task {spec} has no training items to fine-tune on")
    if not task.items:
        raise JdnaError(f"task {spec} has no evaluation items")
    return task


def training_items(task: Task, config: FinetuneConfig) -> list[Item]:
    """The seeded, label-stratified training subset the config asks for."""
    pool = task.train_items
    if config.train_examples is not None:
        if config.train_examples > len(pool):
            raise JdnaError(
                f"--train-examples {config.train_examples} but the training pool of {task.name} has only "
                f"{len(pool)} items: use --train-examples {len(pool)} or fewer"
            )
        return subsample_train(pool, n=config.train_examples, seed=config.seed)
    if config.train_fraction is not None and config.train_fraction < 1.0:
        return subsample_train(pool, fraction=config.train_fraction, seed=config.seed)
    return list(pool)


def evaluation_items(task: Task, limit: int | None) -> list[Item]:
    """The evaluation pool, or a seeded hash-ranked subset of `limit` items kept in task order."""
    if limit is None or limit >= len(task.items):
        return list(task.items)
    chosen = {item.id for item in hash_rank(task.items, 0, "eval-limit")[:limit]}
    return [item for item in task.items if item.id in chosen]


def head_for(task: Task) -> dict[str, Any]:
    """The sequence-classification head a task needs (regression: one output, MSE)."""
    if is_regression(task):
        return {"type": "sequence_classification", "num_labels": 1, "labels": None, "problem_type": "regression"}
    labels = list(task.labels or [])
    return {
        "type": "sequence_classification",
        "num_labels": len(labels),
        "labels": labels,
        "problem_type": "single_label_classification",
    }


def operation_params(config: FinetuneConfig, family: str, n_train: int) -> dict[str, Any]:
    """The step's parameters as recorded (and hashed into the id): defaults resolved."""
    params = asdict(config)
    params.pop("checkpoint_every")
    params["lr"] = config.lr if config.lr is not None else (CAUSAL_LM_LR if family == "causal_lm" else ENCODER_LR)
    params["train_examples_used"] = n_train
    return params


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and weight-loading progress bar for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def finetune_record(artifact: Artifact, cached: bool) -> dict[str, Any]:
    """The stdout record of a fine-tuned artifact (docs/records.md, "finetune stdout record")."""
    from jdna.pruning import artifact_record

    header = artifact.header
    stats = header.get("stats", {})
    params = header["operation"].get("params", {})
    record = artifact_record(artifact, cached)
    for key in ("method", "scope", "pattern", "bits", "granularity", "rank_ratio", "target_sparsity",
                "prunable_params", "pruned_params", "model_sparsity"):
        record.pop(key, None)  # training parameters share some names with compression ones; keep the record lean
    record.update(task=header.get("task"), mode=header.get("mode"), train_examples=stats.get("train_examples"))
    if "train_loss_last" in stats:
        record["train_loss_last"] = stats["train_loss_last"]
    record["lr"] = params.get("lr")
    record["epochs"] = params.get("epochs")
    evaluation = header.get("eval", {})
    record["primary_metric"] = evaluation.get("primary_metric")
    record["metrics"] = evaluation.get("metrics")
    record["invariants"] = header.get("invariants")
    record["eval_record"] = evaluation.get("path")
    return record


def eval_knobs(config: FinetuneConfig, n_train: int) -> dict[str, Any]:
    """The eval record's knobs for a fine-tuning run (the evaluation pool is the task's "test" items)."""
    return {
        "shots": 0,
        "options": None,
        "context_tokens": None,
        "train_fraction": config.train_fraction,
        "train_examples": n_train,
        "limit": config.eval_limit,
        "split": "test",
        "seed": config.seed,
    }


def eval_location(artifact_identity: str, config: FinetuneConfig, n_train: int) -> tuple[str, Path]:
    """(id, path) of the eval record written for the fine-tuned artifact `artifact_identity`."""
    knobs = eval_knobs(config, n_train)
    identity = artifact_id(artifact_identity, "eval", {"task": config.task, "knobs": knobs})
    return identity, runs_dir() / "eval" / f"{identity[:20]}.json"


def _eval_record(
    ref: ModelRef,
    artifact_path: Path,
    artifact_header: dict[str, Any],
    task: Task,
    config: FinetuneConfig,
    n_train: int,
    items: list[Item],
    evaluation: Evaluation,
) -> tuple[Path, dict[str, Any]]:
    """The eval record (docs/records.md) of the validation pass, and where it goes."""
    knobs = eval_knobs(config, n_train)
    identity, path = eval_location(artifact_header["id"], config, n_train)
    finetuned_ref = ModelRef(base=ref.base, chain=[*ref.chain, read_artifact(artifact_path)])
    record = {
        "kind": "eval",
        "path": str(path),
        "id": identity,
        "cached": False,
        "task": config.task,
        "task_kind": task.kind,
        "knobs": knobs,
        "primary_metric": evaluation.primary_metric,
        "metrics": evaluation.metrics,
        "higher_is_better": True,
        "n": len(items),
        "model": {
            "name": str(artifact_path),
            "id": artifact_header["id"],
            "base": ref.base.name,
            "base_sha256": ref.base.sha256,
            "lineage": finetuned_ref.lineage(),
            "compression": ref.compression(),
        },
        "transfer": {"mode": config.mode, "train_examples": n_train, "artifact": str(artifact_path)},
        "per_item": {"ids": [item.id for item in items], "values": evaluation.per_item},
        "timing": {
            "seconds": round(evaluation.seconds, 3),
            "items_per_second": round(len(items) / evaluation.seconds, 2) if evaluation.seconds > 0 else None,
        },
        "versions": versions(),
    }
    return path, record


def run_finetune(
    ref: ModelRef,
    config: FinetuneConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Fine-tune the model `ref` names on `config.task` and write a finetuned artifact; returns its record."""
    reporter = reporter or Reporter()
    plan(config)
    check_model(ref, config)
    task = load_classification_task(config.task)
    train_items = training_items(task, config)
    eval_items = evaluation_items(task, config.eval_limit)
    params = operation_params(config, ref.base.family, len(train_items))
    identity = artifact_id(ref.identity, "finetune", params)
    path = Path(output) if output else default_output_path("finetuned", identity)
    existing = cached_artifact(path, identity, output is not None, force)
    if existing is not None:
        eval_path = existing.header.get("eval", {}).get("path")
        # The record points at the validation result; without it the step is redone, not half-served.
        if eval_path and Path(eval_path).is_file():
            reporter.log(f"cache hit: {path}")
            return finetune_record(existing, cached=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = default_device()
    head = head_for(task)
    seed_everything(config.seed)
    source = dense_ref(ref) if config.mode in ("dense", "freeze") else ref
    reporter.log(f"loading {source.display_name} with a {head['num_labels']}-output classification head")
    with quiet_transformers():  # the "classifier weights newly initialised" report is expected here
        model, tokenizer = load_model(source, head=head, device=device)
    if head.get("labels"):
        model.config.id2label = dict(enumerate(head["labels"]))
        model.config.label2id = {label: i for i, label in enumerate(head["labels"])}
    masks = chain_masks(ref) if config.mode in NEEDS_MASK else {}
    enforcer = MaskEnforcer.build(model, masks, config.mode)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    regression = head["problem_type"] == "regression"
    train_data: Encoded = encode_items(train_items, tokenizer, config.max_length, regression)
    eval_data = encode_items(eval_items, tokenizer, config.max_length, regression)
    schedule = Schedule(len(train_data), config.batch_size, config.grad_accum, config.epochs, config.seed)
    reporter.log(
        f"mode {config.mode}: {MODE_HELP[config.mode]}; {len(train_data)} training examples, "
        f"{schedule.total_steps} steps of {config.batch_size * config.grad_accum}, lr {params['lr']:g}, "
        f"on {device.type}"
    )
    settings = TrainSettings(
        lr=params["lr"],
        weight_decay=config.weight_decay,
        warmup=config.warmup,
        checkpoint_every=config.checkpoint_every,
    )
    ckpt = checkpoint_dir(path)
    if force:
        remove_checkpoint(ckpt)
    seed_everything(config.seed + 1)
    with stop_on_signals() as stop:
        outcome, optimizer = train(
            model, train_data, schedule, enforcer, settings, pad_id, device, ckpt, identity, reporter, stop
        )
    invariants = enforcer.check(optimizer)
    if not invariants["passed"]:
        raise JdnaError(
            f"invariant violated after fine-tuning ({invariants['checked']}): {invariants.get('violations')} "
            f"weights and {invariants.get('optimizer_state_violations')} optimizer entries moved at pruned "
            f"positions (first: {invariants.get('first_violation')}); nothing was written"
        )
    if invariants["checked"]:
        reporter.log(f"invariant {invariants['checked']} holds at {invariants['positions']} pruned positions")
    del optimizer
    evaluation = evaluate(model, task, eval_data, pad_id, device, seed=config.seed, reporter=reporter)
    primary = evaluation.metrics.get(evaluation.primary_metric, {}).get("value")
    reporter.log(f"validation {evaluation.primary_metric} = {primary} on {len(eval_items)} items")

    params_by_name = canonical_parameters(model)
    measured_names = list(masks) if masks else _prunable_names(model)
    stats: dict[str, Any] = {
        **zero_statistics(model, measured_names),
        "train_examples": len(train_data),
        "eval_items": len(eval_items),
        "steps": outcome.steps,
        "resumed_from_step": outcome.resumed_from,
        "train_loss": loss_summary(outcome.losses, schedule.steps_per_epoch),
        "train_loss_last": round(sum(outcome.losses[-20:]) / max(1, len(outcome.losses[-20:])), 5),
        "examples_per_second": round(outcome.examples_per_second, 2),
        "train_seconds": round(outcome.seconds, 3),
    }
    stats["bits_per_weight"] = 16.0
    if config.mode == "sparse":
        # Only sparse transfer stays compressed (freeze keeps pretrained values at pruned positions): the same
        # mask as the pruned parent, so its figure (N:M overhead included), else an unstructured bitmap's.
        source_artifact = mask_source(ref)
        parent_bits = source_artifact.header.get("stats", {}).get("bits_per_weight") if source_artifact else None
        kept = sum(int(k.sum()) for k in masks.values())
        density = kept / max(1, sum(k.numel() for k in masks.values()))
        stats["bits_per_weight"] = parent_bits if parent_bits is not None else 16.0 * density + 1.0
    stats["compression_ratio"] = 16.0 / stats["bits_per_weight"]

    eval_path = eval_location(identity, config, len(train_data))[1]
    tensors = {f"weight.{name}": param.detach() for name, param in params_by_name.items()}
    if masks:
        tensors.update({f"mask.{name}": pack_mask(keep) for name, keep in masks.items()})
    stats["seconds"] = round(time.perf_counter() - started, 3)
    header = {
        "kind": "finetuned",
        "id": identity,
        "base": ref.base.reference(),
        "parent": parent_reference(ref.top) if ref.top else None,
        "operation": {"name": "finetune", "params": params},
        "head": head,
        "task": config.task,
        "mode": config.mode,
        "invariants": invariants,
        "stats": stats,
        "eval": {
            "path": str(eval_path),
            "primary_metric": evaluation.primary_metric,
            "metrics": evaluation.metrics,
            "n": len(eval_items),
        },
    }
    if masks:
        header["masks"] = {name: list(keep.shape) for name, keep in masks.items()}
    write_artifact(path, header, tensors)
    eval_path, eval_record = _eval_record(
        ref, path, header, task, config, len(train_data), eval_items, evaluation
    )
    eval_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(eval_path, eval_record)
    remove_checkpoint(ckpt)
    return finetune_record(read_artifact(path), cached=False)


def _prunable_names(model: torch.nn.Module) -> list[str]:
    from jdna.prunable import prunable_matrices

    return [matrix.name for matrix in prunable_matrices(model)]


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelRef:
    """`jdna.models.resolve`, re-exported so callers need one import."""
    return resolve(spec, allow_pickle=allow_pickle)
