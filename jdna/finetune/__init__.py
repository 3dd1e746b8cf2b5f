"""Transfer fine-tuning of (pruned) models: dense, sparse, freeze and regrow, with checked invariants.

`run_finetune(ref, config)` trains the whole model on a task, enforces the mode's mask rules
(`jdna.finetune.masking`), checks the mode's invariant at the end (a violation is an error), evaluates the
task's evaluation pool, and writes

- a ``finetuned`` artifact (all parameters + the keep-masks for sparse/freeze) whose parent is the input, and
- an ``eval`` record (``runs/eval/<id[:20]>.json``) whose ``transfer`` names the mode,

and returns the stdout record. Interrupted runs leave a checkpoint beside the output and resume from it.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) the processes train data-parallel
(`jdna.finetune.distributed`): ``--batch-size`` stays the global micro-batch, each process trains on its shard of
it, gradients are summed, and the run is the same training as on one process (same steps, same content
address). After training every process checks the mode's invariant and the replicas are compared by sha256;
then rank 0 alone validates, writes the artifact and the eval record, and returns the record, which the other
processes receive once it is written.

What is trained depends on the task (`load_finetune_task`):

- classification tasks (and BIG-bench multiple-choice tasks whose every example offers the same options,
  loaded as classification) train a sequence-classification head, on an encoder or a causal LM;
- multiple-choice tasks on an encoder train a multiple-choice head (`jdna.finetune.multiple_choice`,
  transformers' AutoModelForMultipleChoice: a score per (question, option) pair, softmax over the options),
  validated by the scorer `jdna eval` uses for such artifacts;
- multiple-choice and QA (generation) tasks on a causal LM train its own head on the answer tokens
  (`jdna.finetune.lm`): the prompt `jdna eval` scores plus the gold answer, loss on the answer only. The
  validation pass is `jdna eval`'s own evaluator (log-likelihood accuracy, EM/F1) on the items `jdna eval
  --task T --limit N --seed S` would score, with the model still in memory.

Training data is the task's train pool, evaluation its evaluation pool; the two are disjoint by construction
(sources without a train split, such as BIG-bench, carve one by a seeded hash: `jdna.tasks.carve_split`), so
validation items are never trained on. The record says how the split was made (`split`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdna.artifact import (
    Artifact,
    artifact_id,
    cached_artifact,
    claim_artifact_output,
    default_output_path,
    pack_mask,
    parent_reference,
    read_artifact,
    versions,
    write_artifact,
)
from jdna.errors import JdnaError, unknown_name_error
from jdna.finetune import multiple_choice as mc_head
from jdna.finetune.checkpoint import checkpoint_dir, remove_checkpoint
from jdna.finetune.data import Schedule, TrainData, encode_items, is_regression
from jdna.finetune.distributed import (
    Dist,
    data_parallel,
    launched_world_size,
    parameters_digest,
    single_process_note,
)
from jdna.finetune.evaluate import Evaluation, evaluate
from jdna.finetune.lm import LM_HEAD, LM_PROTOCOL, OBJECTIVE, adds_bos, check_lm_model, encode_lm_items, load_tokenizer
from jdna.finetune.lm import training_pool_items as lm_training_items
from jdna.finetune.loop import Interrupted, TrainSettings, loss_summary, stop_on_signals, train
from jdna.finetune.masking import (
    MaskEnforcer,
    chain_masks,
    dense_ref,
    mask_source,
    require_masks,
    zero_statistics,
)
from jdna.io import sha256_text, write_json_atomic
from jdna.models import ModelRef, canonical_parameters, head_of, load_model, resolve
from jdna.outputs import model_inputs
from jdna.paths import runs_dir
from jdna.placement import Placement, resolve_placement
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
    "load_finetune_task",
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
        (config.lr is None or 0 < config.lr <= 1, f"--lr {config.lr} is outside (0, 1]: use e.g. 5e-5"),
        (config.batch_size >= 1, f"--batch-size {config.batch_size} is below 1"),
        (config.grad_accum >= 1, f"--grad-accum {config.grad_accum} is below 1"),
        (config.max_length >= 2, f"--max-length {config.max_length} is below 2"),
        (0.0 <= config.warmup < 1.0, f"--warmup {config.warmup} is outside [0, 1) (a fraction of the steps)"),
        (0.0 <= config.weight_decay <= 1.0, f"--weight-decay {config.weight_decay} is outside [0, 1]: use e.g. 0.01"),
        (config.seed >= 0, f"--seed {config.seed} is negative: use 0 or more"),
        (config.eval_limit is None or config.eval_limit >= 1, f"--eval-limit {config.eval_limit} is below 1"),
        (config.checkpoint_every >= 1, f"--checkpoint-every {config.checkpoint_every} is below 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise JdnaError(message)
    world = launched_world_size()
    if world > config.batch_size:
        raise JdnaError(
            f"--batch-size {config.batch_size} is smaller than the {world} processes launched: --batch-size is the "
            f"micro-batch over all processes, so use --batch-size {world} or more (or fewer processes)"
        )
    return config


def check_model(ref: ModelRef, config: FinetuneConfig) -> None:
    """Checks that need the model reference but not its weights: masks for sparse/freeze."""
    if config.mode in NEEDS_MASK:
        require_masks(ref, config.mode)


def _check_pools(task: Task, spec: str) -> Task:
    if not task.train_items:
        raise JdnaError(f"task {spec} has no training items to fine-tune on")
    if not task.items:
        raise JdnaError(f"task {spec} has no evaluation items")
    return task


def load_finetune_task(spec: str) -> Task:
    """The task as finetune trains it: classification if it is one (BIG-bench multiple-choice tasks with one
    fixed option set are converted, as before), else as loaded (multiple choice, generation)."""
    if parse_spec(spec)[0] == "bigbench":
        try:
            return _check_pools(load_task(spec, as_kind="classification"), spec)
        except JdnaError:
            pass  # not a fixed-label task: trained on a causal LM's answer tokens, or an error below
    task = load_task(spec)
    if task.kind == "perplexity":
        raise JdnaError(
            f"task {spec} is a perplexity task, which has nothing to fine-tune towards: use a classification, "
            "multiple-choice or QA task"
        )
    return _check_pools(task, spec)


def load_classification_task(spec: str) -> Task:
    """Load `spec` as a classification task (BIG-bench fixed-label tasks are converted), else a clear error."""
    task = load_finetune_task(spec)
    if task.kind != "classification":
        raise JdnaError(
            f"task {spec} is a {task.kind} task, not a classification task (e.g. bigbench:vitaminc_fact_verification, "
            "sst2, or a file: task with labels): it is fine-tuned on a causal LM's answer tokens, not with a "
            "classification head"
        )
    return task


def training_items(task: Task, config: FinetuneConfig) -> list[Item]:
    """The seeded training subset the config asks for: label-stratified for classification (multiple choice:
    see `jdna.finetune.lm.training_pool_items`)."""
    pool = task.train_items
    if config.train_examples is not None and config.train_examples > len(pool):
        carved = ""
        if "carved" in task.provenance:
            carved = " (carved from a task without a train split; the other items are validation items)"
        raise JdnaError(
            f"--train-examples {config.train_examples} but the training pool of {task.name} has only "
            f"{len(pool)} items{carved}: use --train-examples {len(pool)} or fewer"
        )
    if task.kind != "classification":
        return lm_training_items(task, config.train_examples, config.train_fraction, config.seed)
    if config.train_examples is not None:
        return subsample_train(pool, n=config.train_examples, seed=config.seed)
    if config.train_fraction is not None and config.train_fraction < 1.0:
        return subsample_train(pool, fraction=config.train_fraction, seed=config.seed)
    return list(pool)


def split_summary(task: Task, train: list[Item], evaluated: list[Item]) -> dict[str, Any]:
    """How the task's pools were made and which items were used: counts, the loader's provenance, and
    sha256 digests of the sorted ids (the eval record lists the evaluated ids and the trained ones)."""
    trained, validated = {item.id for item in train}, {item.id for item in evaluated}
    overlap = trained & validated
    if overlap:  # the pools are disjoint by construction; this guards the guarantee, not the user's input
        raise JdnaError(f"item '{sorted(overlap)[0]}' of {task.name} is in both the training and validation sets")
    return {
        "train_pool": len(task.train_items),
        "validation_pool": len(task.items),
        "train_used": len(train),
        "validation_used": len(evaluated),
        "provenance": task.provenance,
        "train_ids_sha256": sha256_text("\n".join(sorted(trained))),
        "validation_ids_sha256": sha256_text("\n".join(sorted(validated))),
    }


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


def operation_params(
    config: FinetuneConfig, family: str, n_train: int, objective: str = "classification"
) -> dict[str, Any]:
    """The step's parameters as recorded (and hashed into the id): defaults resolved."""
    params = asdict(config)
    params.pop("checkpoint_every")
    params["lr"] = config.lr if config.lr is not None else (CAUSAL_LM_LR if family == "causal_lm" else ENCODER_LR)
    params["train_examples_used"] = n_train
    if objective != "classification":  # (classification ids stay as they were)
        params["objective"] = objective
        if objective == OBJECTIVE:
            params["lm_protocol"] = LM_PROTOCOL
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
    record["objective"] = header.get("objective", "classification")
    if "train_loss_last" in stats:
        record["train_loss_last"] = stats["train_loss_last"]
    record["lr"] = params.get("lr")
    record["epochs"] = params.get("epochs")
    evaluation = header.get("eval", {})
    record["primary_metric"] = evaluation.get("primary_metric")
    record["metrics"] = evaluation.get("metrics")
    record["invariants"] = header.get("invariants")
    record["world_size"] = (header.get("training") or {}).get("world_size", 1)
    if isinstance(header.get("split"), dict):
        record["split"] = {k: v for k, v in header["split"].items() if not k.endswith("_sha256")}
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
        "limit_mode": "sample" if config.eval_limit is not None else None,  # as `jdna eval --limit N` picks
        "split": "test",
        "seed": config.seed,
    }


def eval_location(artifact_identity: str, config: FinetuneConfig, n_train: int) -> tuple[str, Path]:
    """(id, path) of the eval record written for the fine-tuned artifact `artifact_identity`."""
    knobs = eval_knobs(config, n_train)
    identity = artifact_id(artifact_identity, "eval", {"task": config.task, "knobs": knobs})
    return identity, runs_dir() / "eval" / f"{identity[:20]}.json"


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
        per_item = {"ids": [item.id for item in items], "values": evaluation.per_item}
        return cls(task.kind, evaluation.primary_metric, evaluation.metrics, per_item, len(items), evaluation.seconds)


def _eval_record(
    ref: ModelRef,
    artifact_path: Path,
    artifact_header: dict[str, Any],
    config: FinetuneConfig,
    n_train: int,
    validation: Validation,
    transfer_extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The eval record (docs/records.md) of the validation pass, and where it goes."""
    knobs = eval_knobs(config, n_train)
    identity, path = eval_location(artifact_header["id"], config, n_train)
    finetuned_ref = ModelRef(base=ref.base, chain=[*ref.chain, read_artifact(artifact_path)])
    seconds = validation.seconds
    record = {
        "kind": "eval",
        "path": str(path),
        "id": identity,
        "cached": False,
        "task": config.task,
        "task_kind": validation.task_kind,
        "knobs": knobs,
        "primary_metric": validation.primary_metric,
        "metrics": validation.metrics,
        "higher_is_better": True,
        "n": validation.n,
        "model": {
            "name": str(artifact_path),
            "id": artifact_header["id"],
            "base": ref.base.name,
            "base_sha256": ref.base.sha256,
            "lineage": finetuned_ref.lineage(),
            "compression": ref.compression(),
        },
        "transfer": {
            "mode": config.mode,
            "train_examples": n_train,
            "artifact": str(artifact_path),
            **(transfer_extra or {}),
        },
        **validation.extra,
        "per_item": validation.per_item,
        "timing": {
            "seconds": round(seconds, 3),
            "items_per_second": round(validation.n / seconds, 2) if seconds > 0 else None,
        },
        "versions": versions(),
    }
    return path, record


def _validate_lm(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Any,
    eval_config: Any,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
) -> Validation:
    """`jdna eval`'s own evaluator (multiple choice or generation) on the prepared items, model in memory."""
    from jdna.evaluation import EVALUATORS

    evaluator = EVALUATORS.get(prepared.task.kind)
    return _validate_in_memory(model, tokenizer, prepared, eval_config, ref, device, reporter, evaluator.run, None)


def _validate_mc_head(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Any,
    eval_config: Any,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
    head: dict[str, Any],
) -> Validation:
    """The multiple-choice head's validation: the scorer `jdna eval` runs on the artifact, model in memory."""
    from jdna.evaluation.multiple_choice import run_head

    max_length = int(head["max_length"])
    return _validate_in_memory(
        model, tokenizer, prepared, eval_config, ref, device, reporter, lambda ctx: run_head(ctx, max_length), "acc"
    )


def _validate_in_memory(
    model: torch.nn.Module,
    tokenizer: Any,
    prepared: Any,
    eval_config: Any,
    ref: ModelRef,
    device: torch.device,
    reporter: Reporter,
    scorer: Any,
    primary_metric: str | None,
) -> Validation:
    """Run one of eval's scorers on the model in memory and keep what a finetuned record shows."""
    from jdna.evaluation.base import EvalContext

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
    plan(config)
    check_model(ref, config)
    task = load_finetune_task(config.task)
    objective = "classification" if task.kind == "classification" else OBJECTIVE
    if task.kind == "multiple_choice" and ref.base.family != "causal_lm":
        objective = mc_head.OBJECTIVE
    prepared = eval_config = None
    if objective == "classification":
        eval_items = evaluation_items(task, config.eval_limit)
    else:
        from jdna.evaluation import prepare
        from jdna.evaluation.base import EvalConfig

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
    placement = placement or resolve_placement("auto", "auto", ref.base.config)
    if dist.enabled and dist.device is not None:  # the launcher's device per process wins
        placement = replace(placement, device=dist.device)
    compute = placement.id_params(device_matters=True)
    if compute:
        params["compute"] = compute
    identity = artifact_id(ref.identity, "finetune", params)
    path = Path(output) if output else default_output_path("finetuned", identity)
    existing = cached_artifact(path, identity, output is not None, force)
    if existing is not None:
        eval_path = existing.header.get("eval", {}).get("path")
        # The record points at the validation result; without it the step is redone, not half-served.
        if eval_path and Path(eval_path).is_file():
            reporter.log(f"cache hit: {path}")
            return finetune_record(existing, cached=True)
    claim = claim_artifact_output(path, identity, output is not None, force, model_inputs(ref))
    started = time.perf_counter()
    device = placement.device
    head = head_for(task) if objective == "classification" else dict(LM_HEAD)
    if objective == mc_head.OBJECTIVE:
        head = mc_head.head_spec(config.max_length)
    seed_everything(config.seed)
    source = dense_ref(ref) if config.mode in ("dense", "freeze") else ref
    if objective == "classification":
        reporter.log(f"loading {source.display_name} with a {head['num_labels']}-output classification head")
    elif objective == mc_head.OBJECTIVE:
        reporter.log(f"loading {source.display_name} with a multiple-choice head (a score per question-option pair)")
    else:  # data errors (an answer longer than --max-length) surface before the model loads
        lm_data = encode_lm_items(train_items, task, load_tokenizer(ref), config.max_length, adds_bos(ref))
        reporter.log(f"loading {source.display_name} as a causal LM, trained on its {task.kind} answer tokens")
    with quiet_transformers():  # the "classifier weights newly initialised" report is expected here
        model, tokenizer = load_model(source, head=head, device=device, dtype=placement.dtype)
    if head.get("labels"):
        model.config.id2label = dict(enumerate(head["labels"]))
        model.config.label2id = {label: i for i, label in enumerate(head["labels"])}
    masks = chain_masks(ref) if config.mode in NEEDS_MASK else {}
    enforcer = MaskEnforcer.build(model, masks, config.mode)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    regression = head.get("problem_type") == "regression"
    if objective == "classification":
        train_data: TrainData = encode_items(train_items, tokenizer, config.max_length, regression)
        eval_data = encode_items(eval_items, tokenizer, config.max_length, regression)
    elif objective == mc_head.OBJECTIVE:
        train_data = mc_head.encode_items(train_items, tokenizer, config.max_length)
    else:
        train_data = lm_data
    schedule = Schedule(len(train_data), config.batch_size, config.grad_accum, config.epochs, config.seed)
    reporter.log(
        f"mode {config.mode}: {MODE_HELP[config.mode]}; {len(train_data)} training examples, "
        f"{schedule.total_steps} steps of {config.batch_size * config.grad_accum}, lr {params['lr']:g}, "
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
    if objective == OBJECTIVE and lm_data.truncated:
        reporter.log(
            f"{lm_data.truncated} of {len(lm_data)} training prompts were cut from the left to fit --max-length "
            f"{config.max_length} (answers are never cut)"
        )
    settings = TrainSettings(
        lr=params["lr"],
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
            replicas_identical=_check_replicas(model, invariants, dist),
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
    if not dist.is_main:  # rank 0 validates and writes; the others wait here for its record
        return dist.broadcast_object(None)
    if objective == "classification":
        evaluation = evaluate(model, task, eval_data, pad_id, device, seed=config.seed, reporter=reporter)
        validation = Validation.of_classification(task, eval_items, evaluation)
    elif objective == mc_head.OBJECTIVE:
        validation = _validate_mc_head(model, tokenizer, prepared, eval_config, source, device, reporter, head)
    else:
        validation = _validate_lm(model, tokenizer, prepared, eval_config, source, device, reporter)
    primary = validation.metrics.get(validation.primary_metric, {}).get("value")
    reporter.log(f"validation {validation.primary_metric} = {primary} on {len(eval_items)} items")

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
    if objective == OBJECTIVE:
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
        "objective": objective,
        "split": split,
        "invariants": invariants,
        "training": training,
        "stats": stats,
        "compute": placement.record(),
        "eval": {
            "path": str(eval_path),
            "primary_metric": validation.primary_metric,
            "metrics": validation.metrics,
            "n": len(eval_items),
        },
    }
    if masks:
        header["masks"] = {name: list(keep.shape) for name, keep in masks.items()}
    write_artifact(path, header, tensors, claim)
    transfer_extra = {
        "objective": objective,
        "train_ids": [item.id for item in train_items],
        "split": {k: v for k, v in split.items() if not k.endswith("_sha256")},
    }
    eval_path, eval_record = _eval_record(
        ref, path, header, config, len(train_data), validation, transfer_extra
    )
    eval_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(eval_path, eval_record)
    remove_checkpoint(ckpt)
    return dist.broadcast_object(finetune_record(read_artifact(path), cached=False))


def _check_replicas(model: torch.nn.Module, invariants: dict[str, Any], dist: Dist) -> bool:
    """Every process's invariant and parameter digest, compared: a failed invariant or a replica whose parameters
    differ from rank 0's is an error on every process (nothing is written)."""
    views = dist.all_gather_object((bool(invariants["passed"]), parameters_digest(model)))
    if not invariants["passed"]:
        return False  # this process's own violation is reported in full by the caller
    failed = [rank for rank, (passed, _) in enumerate(views) if not passed]
    if failed:
        raise JdnaError(
            f"invariant violated after fine-tuning ({invariants['checked']}) on process(es) {failed}; nothing was "
            "written"
        )
    differing = [rank for rank, (_, digest) in enumerate(views) if digest != views[0][1]]
    if differing:
        raise JdnaError(
            f"after data-parallel fine-tuning the parameters of process(es) {differing} differ from rank 0's "
            f"(sha256 {views[differing[0]][1][:12]} vs {views[0][1][:12]}): the replicas diverged; nothing was written"
        )
    return True


def _prunable_names(model: torch.nn.Module) -> list[str]:
    from jdna.prunable import prunable_matrices

    return [matrix.name for matrix in prunable_matrices(model)]


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelRef:
    """`jdna.models.resolve`, re-exported so callers need one import."""
    return resolve(spec, allow_pickle=allow_pickle)
