"""The fine-tuning step: plan the run, train, check the mode's invariant, validate, write the artifact and the
validation record. Identity, cache, output claim, header and atomic write are the step runner's (jdna.steps).

`run_finetune` is the step; its phases are functions of their own so each can be read alone:
`plan_run` (the task, the objective, the items and the parameters that make the content address), `train_model`
(load, mask, train, check invariants and replicas), `measure` (the artifact's stats) and `write_outputs` (the
artifact, then the eval record of the validation pass).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdna import steps
from jdna.artifact import Artifact, pack_mask
from jdna.distributed import Dist, data_parallel, single_process_note
from jdna.errors import JdnaError
from jdna.evaluation import prepare
from jdna.evaluation.base import EvalConfig, Prepared
from jdna.evaluation.classifier import encode_items
from jdna.evaluation.mc_head import OBJECTIVE as MC_HEAD_OBJECTIVE
from jdna.evaluation.mc_head import encode_items as mc_encode_items
from jdna.evaluation.mc_head import head_spec as mc_head_spec
from jdna.finetune.checkpoint import checkpoint_dir, remove_checkpoint
from jdna.finetune.config import MODE_HELP, NEEDS_MASK, FinetuneConfig, check_model, operation_params, plan
from jdna.finetune.data import Schedule, TrainData
from jdna.finetune.distributed import check_replicas
from jdna.finetune.evaluate import evaluate
from jdna.finetune.items import evaluation_items, head_for, load_finetune_task, split_summary, training_items
from jdna.finetune.lm import LM_HEAD, OBJECTIVE, LMEncoded, adds_bos, check_lm_model, encode_lm_items, load_tokenizer
from jdna.finetune.loop import TrainOutcome, TrainSettings, loss_summary, stop_on_signals, train
from jdna.finetune.masking import MaskEnforcer, dense_ref, mask_source, zero_statistics
from jdna.finetune.validation import (
    Validation,
    eval_location,
    validate_mc_head,
    validate_with_evaluator,
    validation_record,
)
from jdna.io import write_json_atomic
from jdna.kinds import record as kind_record
from jdna.masks import effective_masks
from jdna.models import ModelRef, canonical_parameters, head_of, load_model, resolve
from jdna.outputs import Claim
from jdna.placement import Placement, resolve_placement
from jdna.progress import Reporter
from jdna.steps import Target
from jdna.tasks import Item, Task


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
    """The stdout record of a fine-tuned artifact (docs/records.md, "finetune stdout record"): the finetuned
    kind's record (jdna.kinds.finetuned declares its fields)."""
    return kind_record(artifact, cached)


@dataclass
class RunPlan:
    """What a run will do, decided before any weights load: the task as trained, the objective, the training
    and validation items, and the parameters that enter the content address."""

    task: Task
    objective: str  # "classification", jdna.finetune.lm.OBJECTIVE or the multiple-choice head's
    train_items: list[Item]
    eval_items: list[Item]
    split: dict[str, Any]
    params: dict[str, Any]
    # The items (and prompts) `jdna eval --task T --limit N --seed S` scores, for the objectives validated by
    # eval's own scorers (None for classification).
    prepared: Prepared | None = None
    eval_config: EvalConfig | None = None


def plan_run(ref: ModelRef, config: FinetuneConfig) -> RunPlan:
    """Validate flags and model, load the task and pick the items; no weights are loaded."""
    plan(config)
    check_model(ref, config)
    task = load_finetune_task(config.task)
    objective = "classification" if task.kind == "classification" else OBJECTIVE
    if task.kind == "multiple_choice" and ref.base.family != "causal_lm":
        objective = MC_HEAD_OBJECTIVE
    prepared = eval_config = None
    if objective == "classification":
        eval_items = evaluation_items(task, config.eval_limit)
    else:
        if objective == OBJECTIVE:
            check_lm_model(ref, config.task, task.kind)
        elif head_of(ref) is not None:
            raise JdnaError(
                f"'{ref.display_name}' already carries a {head_of(ref)['type']} head: fine-tune the model it was "
                "made from (the base or pruned artifact) instead"
            )
        # The items (and prompts) `jdna eval --task T --limit N --seed S` scores: the validation pool.
        eval_config = EvalConfig(task=config.task, limit=config.eval_limit, seed=config.seed)
        prepared = prepare(eval_config)
        task, eval_items = prepared.task, prepared.items
    train_items = training_items(task, config)
    split = split_summary(task, train_items, eval_items)
    params = operation_params(config, ref.base.family, len(train_items), objective)
    if task.inputs:  # the task files' bytes: editing one trains afresh instead of serving a stale artifact
        params["task_inputs"] = task.inputs
    return RunPlan(task, objective, train_items, eval_items, split, params, prepared, eval_config)


def head_of_run(run: RunPlan, config: FinetuneConfig) -> dict[str, Any]:
    """The head the trained model carries (and its artifact header records)."""
    if run.objective == "classification":
        return head_for(run.task)
    if run.objective == MC_HEAD_OBJECTIVE:
        return mc_head_spec(config.max_length)
    return dict(LM_HEAD)


@dataclass
class Trained:
    """A trained model and what training measured."""

    model: torch.nn.Module
    tokenizer: Any
    head: dict[str, Any]
    masks: dict[str, torch.Tensor]
    train_data: TrainData
    schedule: Schedule
    outcome: TrainOutcome
    invariants: dict[str, Any]
    training: dict[str, Any]
    source: ModelRef  # the model training started from (dense and freeze: the chain without its pruning)
    pad_id: int
    eval_data: Any = None  # the classification validation items, tokenised as training tokenised


def train_model(
    ref: ModelRef,
    config: FinetuneConfig,
    run: RunPlan,
    identity: str,
    path: Path,
    placement: Placement,
    reporter: Reporter,
    force: bool,
    dist: Dist,
) -> Trained:
    """Load the model with its head, enforce the mode's masks, train (resuming a checkpoint beside `path`), and
    check the mode's invariant on every process (a violation, or diverged replicas, is an error)."""
    device = placement.device
    task, objective = run.task, run.objective
    head = head_of_run(run, config)
    seed_everything(config.seed)
    source = dense_ref(ref) if config.mode in ("dense", "freeze") else ref
    lm_data: LMEncoded | None = None
    if objective == "classification":
        reporter.log(f"loading {source.display_name} with a {head['num_labels']}-output classification head")
    elif objective == MC_HEAD_OBJECTIVE:
        reporter.log(f"loading {source.display_name} with a multiple-choice head (a score per question-option pair)")
    else:  # data errors (an answer longer than --max-length) surface before the model loads
        lm_data = encode_lm_items(run.train_items, task, load_tokenizer(ref), config.max_length, adds_bos(ref))
        reporter.log(f"loading {source.display_name} as a causal LM, trained on its {task.kind} answer tokens")
    with quiet_transformers():  # the "classifier weights newly initialised" report is expected here
        model, tokenizer = load_model(source, head=head, device=device, dtype=placement.dtype)
    if head.get("labels"):
        model.config.id2label = dict(enumerate(head["labels"]))
        model.config.label2id = {label: i for i, label in enumerate(head["labels"])}
    masks = effective_masks(ref.chain) if config.mode in NEEDS_MASK else {}
    enforcer = MaskEnforcer.build(model, masks, config.mode)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    regression = head.get("problem_type") == "regression"
    eval_data = None
    train_data: TrainData
    if objective == "classification":
        train_data = encode_items(run.train_items, tokenizer, config.max_length, regression)
        eval_data = encode_items(run.eval_items, tokenizer, config.max_length, regression)
    elif objective == MC_HEAD_OBJECTIVE:
        train_data = mc_encode_items(run.train_items, tokenizer, config.max_length)
    else:
        assert lm_data is not None
        train_data = lm_data
    schedule = Schedule(len(train_data), config.batch_size, config.grad_accum, config.epochs, config.seed)
    reporter.log(
        f"mode {config.mode}: {MODE_HELP[config.mode]}; {len(train_data)} training examples, "
        f"{schedule.total_steps} steps of {config.batch_size * config.grad_accum}, lr {run.params['lr']:g}, "
        f"on {device.type}"
    )
    note = single_process_note()
    if note:
        reporter.log(note)
    if dist.enabled:
        reporter.log(
            f"data-parallel over {dist.world_size} processes ({dist.backend}): each takes "
            f"{dist.shard_size(config.batch_size)} examples of every {config.batch_size}-example micro-batch, "
            "gradients summed"
        )
    if lm_data is not None and lm_data.truncated:
        reporter.log(
            f"{lm_data.truncated} of {len(lm_data)} training prompts were cut from the left to fit --max-length "
            f"{config.max_length} (answers are never cut)"
        )
    settings = TrainSettings(
        lr=run.params["lr"],
        weight_decay=config.weight_decay,
        warmup=config.warmup,
        checkpoint_every=config.checkpoint_every,
    )
    ckpt = checkpoint_dir(path)
    if force:
        if dist.is_main:
            remove_checkpoint(ckpt)
        dist.barrier()  # no process looks for a checkpoint before rank 0 has removed it
    # Dropout draws its own stream on every process (rank 0's is the single-process one).
    seed_everything(config.seed + 1 + 1_000_003 * dist.rank)
    with stop_on_signals() as stop:
        outcome, optimizer = train(
            model, train_data, schedule, enforcer, settings, pad_id, device, ckpt, identity, reporter, stop, dist
        )
    invariants = enforcer.check(optimizer)
    training: dict[str, Any] = dist.summary()
    if dist.enabled:
        training.update(
            micro_batch=config.batch_size,
            micro_batch_per_process=dist.shard_size(config.batch_size),
            replicas_identical=check_replicas(model, invariants, dist),
        )
        reporter.log(f"the {dist.world_size} replicas hold bit-identical parameters (sha256 compared)")
    if not invariants["passed"]:
        raise JdnaError(
            f"invariant violated after fine-tuning ({invariants['checked']}): {invariants.get('violations')} "
            f"weights and {invariants.get('optimizer_state_violations')} optimizer entries moved at pruned "
            f"positions (first: {invariants.get('first_violation')}); nothing was written"
        )
    if invariants["checked"]:
        reporter.log(f"invariant {invariants['checked']} holds at {invariants['positions']} pruned positions")
    del optimizer
    return Trained(
        model, tokenizer, head, masks, train_data, schedule, outcome, invariants, training, source, pad_id, eval_data
    )


def validate(
    run: RunPlan, trained: Trained, config: FinetuneConfig, device: torch.device, reporter: Reporter
) -> Validation:
    """The validation pass of the trained model on the run's validation items."""
    if run.objective == "classification":
        evaluation = evaluate(
            trained.model, run.task, trained.eval_data, trained.pad_id, device, seed=config.seed, reporter=reporter
        )
        validation = Validation.of_classification(run.task, run.eval_items, evaluation)
    else:
        assert run.prepared is not None and run.eval_config is not None
        if run.objective == MC_HEAD_OBJECTIVE:
            validation = validate_mc_head(
                trained.model, trained.tokenizer, run.prepared, run.eval_config, trained.source, device, reporter,
                trained.head,
            )
        else:
            validation = validate_with_evaluator(
                trained.model, trained.tokenizer, run.prepared, run.eval_config, trained.source, device, reporter
            )
    primary = validation.metrics.get(validation.primary_metric, {}).get("value")
    reporter.log(f"validation {validation.primary_metric} = {primary} on {len(run.eval_items)} items")
    return validation


def measure(ref: ModelRef, config: FinetuneConfig, run: RunPlan, trained: Trained) -> dict[str, Any]:
    """The artifact's `stats`: zeros, training figures, and the bits per weight of what is stored."""
    model, masks, outcome = trained.model, trained.masks, trained.outcome
    measured_names = list(masks) if masks else _prunable_names(model)
    stats: dict[str, Any] = {
        **zero_statistics(model, measured_names),
        "train_examples": len(trained.train_data),
        "eval_items": len(run.eval_items),
        "steps": outcome.steps,
        "resumed_from_step": outcome.resumed_from,
        "train_loss": loss_summary(outcome.losses, trained.schedule.steps_per_epoch),
        "train_loss_last": round(sum(outcome.losses[-20:]) / max(1, len(outcome.losses[-20:])), 5),
        "examples_per_second": round(outcome.examples_per_second, 2),
        "train_seconds": round(outcome.seconds, 3),
    }
    if run.objective == OBJECTIVE:
        lm_data = trained.train_data
        assert isinstance(lm_data, LMEncoded)
        answer_tokens = lm_data.units(range(len(lm_data)))
        stats.update(
            answer_tokens=answer_tokens,
            answer_tokens_mean=round(answer_tokens / max(1, len(lm_data)), 3),
            sequence_tokens_max=max((len(x) for x in lm_data.input_ids), default=0),
            truncated_prompts=lm_data.truncated,
        )
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
    return stats


def write_outputs(
    ref: ModelRef,
    config: FinetuneConfig,
    run: RunPlan,
    trained: Trained,
    validation: Validation,
    stats: dict[str, Any],
    target: Target,
    claimed: Claim,
    placement: Placement,
) -> Artifact:
    """Write the finetuned artifact (all parameters, the masks it enforced) through the step runner's `header`
    and `write`, then its validation record; returns the artifact as read back."""
    n_train = len(trained.train_data)
    eval_path = eval_location(target.id, config, n_train)[1]
    tensors = {f"weight.{name}": param.detach() for name, param in canonical_parameters(trained.model).items()}
    if trained.masks:
        tensors.update({f"mask.{name}": pack_mask(keep) for name, keep in trained.masks.items()})
    fields: dict[str, Any] = {
        "head": trained.head,
        "task": config.task,
        "mode": config.mode,
        "objective": run.objective,
        "split": run.split,
        "invariants": trained.invariants,
        "training": trained.training,
        "stats": stats,
        "eval": {
            "path": str(eval_path),
            "primary_metric": validation.primary_metric,
            "metrics": validation.metrics,
            "n": len(run.eval_items),
        },
    }
    if trained.masks:
        fields["masks"] = {name: list(keep.shape) for name, keep in trained.masks.items()}
    artifact = steps.write(target, steps.header(target, ref, placement, **fields), tensors, claimed)
    transfer_extra = {
        "objective": run.objective,
        "train_ids": [item.id for item in run.train_items],
        "split": {k: v for k, v in run.split.items() if not k.endswith("_sha256")},
    }
    finetuned = ModelRef(base=ref.base, chain=[*ref.chain, artifact])
    eval_path, eval_record = validation_record(
        ref, finetuned, target.path, target.id, config, n_train, validation, transfer_extra
    )
    eval_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(eval_path, eval_record)
    return artifact


def _validation_record_exists(artifact: Artifact) -> bool:
    """A cached artifact is served only while the validation record it names exists; else the step is redone,
    not half-served."""
    eval_path = artifact.header.get("eval", {}).get("path")
    return bool(eval_path) and Path(eval_path).is_file()


def run_finetune(
    ref: ModelRef,
    config: FinetuneConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Fine-tune the model `ref` names on `config.task` and write a finetuned artifact; returns its record.

    Under a launcher every process calls this with the same arguments and gets the same record (rank 0 writes).
    `placement` (default: the GPU when visible, else the CPU, in the checkpoint's dtype) sets the device and
    the dtype the weights are loaded and trained in; under a launcher each process uses its own device.
    """
    with data_parallel() as dist:
        return _run_finetune(ref, config, output, reporter or Reporter(), force, dist, placement)


def _run_finetune(
    ref: ModelRef,
    config: FinetuneConfig,
    output: Path | None,
    reporter: Reporter,
    force: bool,
    dist: Dist,
    placement: Placement | None = None,
) -> dict[str, Any]:
    run = plan_run(ref, config)
    params = run.params
    placement = placement or resolve_placement("auto", "auto", ref.base.config)
    if dist.enabled and dist.device is not None:  # the launcher's device per process wins
        placement = replace(placement, device=dist.device)
    compute = placement.id_params(device_matters=True)
    if compute:
        params["compute"] = compute
    # The step runner's parts (jdna.steps): fine-tuning calls them itself, as its head is chosen from the task,
    # only rank 0 writes, a validation record goes beside the artifact and training resumes from checkpoints.
    target = steps.address(ref, "finetuned", "finetune", params, output)
    existing = steps.find_cached(target, force, reporter, reusable=_validation_record_exists)
    if existing is not None:
        return finetune_record(existing, cached=True)
    claimed = steps.claim(target, force, ref)
    started = time.perf_counter()
    trained = train_model(ref, config, run, target.id, target.path, placement, reporter, force, dist)
    if not dist.is_main:  # rank 0 validates and writes; the others wait here for its record
        return dist.broadcast_object(None)
    validation = validate(run, trained, config, placement.device, reporter)
    stats = measure(ref, config, run, trained)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    artifact = write_outputs(ref, config, run, trained, validation, stats, target, claimed, placement)
    remove_checkpoint(checkpoint_dir(target.path))
    return dist.broadcast_object(finetune_record(artifact, cached=False))


def _prunable_names(model: torch.nn.Module) -> list[str]:
    from jdna.prunable import prunable_matrices

    return [matrix.name for matrix in prunable_matrices(model)]


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelRef:
    """`jdna.models.resolve`, re-exported so callers need one import."""
    return resolve(spec, allow_pickle=allow_pickle)
