"""Evaluation: run a model on a task with difficulty knobs and write a content-addressed result record.

`run_eval(ref, EvalConfig(task=..., shots=..., options=...))` loads the task, applies the knobs that need no
model (split, limit, options, shots) and checks everything it can before loading a model, then hands the
items to the evaluator registered for the task's kind (`EVALUATORS`: multiple_choice, generation,
perplexity, classification). The record follows docs/records.md; it is written atomically to `output` or to
`runs/eval/<id[:20]>.json`, where `id` = `records.eval_identity(model identity, params)` and params are the task,
its kind, every knob, the protocol version and the sha256 of every file the task was read from (not the batch
size, which does not change predictions). Each record also carries lm-eval's `results` shape.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from jdna.distributed import data_parallel
from jdna.errors import JdnaError, unknown_name_error
from jdna.evaluation import classification, generation, multiple_choice, perplexity  # noqa: F401  (registration)
from jdna.evaluation.base import (
    EVAL_PROTOCOL_VERSION,
    EVALUATORS,
    KIND_KNOBS,
    KNOB_FLAGS,
    KNOB_SETTINGS,
    LIMIT_MODES,
    SPLITS,
    TRANSFER_MODES,
    EvalConfig,
    EvalContext,
    ModelCache,
    Outcome,
    Prepared,
    Transfer,
    draw_all_shots,
)
from jdna.evaluation.lmeval_results import results_block
from jdna.evaluation.records import build_record, default_record_path, eval_identity, model_block
from jdna.io import write_json_atomic, write_text_atomic
from jdna.models import ModelRef
from jdna.outputs import Claim, check_target, claim_output, claim_record, model_inputs
from jdna.paths import expand
from jdna.placement import Placement, resolve_placement
from jdna.progress import Reporter
from jdna.tasks import Item, Task, load_task, parse_spec, restrict_options, split_answerable
from jdna.tasks.base import current_inputs, hash_rank
from jdna.tasks.jsonl import duplicate_choice_items

__all__ = [
    "EVALUATORS",
    "EVAL_PROTOCOL_VERSION",
    "LIMIT_MODES",
    "EvalConfig",
    "ModelCache",
    "Transfer",
    "build_record",
    "eval_identity",
    "parse_limit",
    "prepare",
    "run_evals",
    "run_eval",
    "summary",
    "validate",
]


def validate(config: EvalConfig) -> None:
    """Check the flags alone (no task data, no model): ranges, names, files. Raises JdnaError."""
    if not config.task or not config.task.strip():
        raise JdnaError("no task given: pass --task NAME (see 'jdna tasks')")
    source, name, _ = parse_spec(config.task)  # unknown names fail here with the nearest valid one
    if source == "file" and not expand(name).is_file():
        raise JdnaError(f"task file {name} not found: pass file:PATH with the path of a .jsonl task file")
    if source == "lmeval" and not expand(name).is_file():
        raise JdnaError(f"lm-eval task file {name} not found: pass lmeval:PATH with the path of a task .yaml")
    if config.shots < 0:
        raise JdnaError(f"--shots {config.shots} is negative: use 0 or more")
    if config.options is not None and config.options < 2:
        raise JdnaError(f"--options {config.options} leaves nothing to choose between: use at least 2")
    if config.context_tokens is not None and config.context_tokens < 0:
        raise JdnaError(f"--context-tokens {config.context_tokens} is negative: use 0 (closed book) or more")
    if config.context_fraction is not None and not 0.0 < config.context_fraction <= 1.0:
        raise JdnaError(
            f"--context-fraction {config.context_fraction} is outside (0, 1]: use e.g. 0.25 "
            "(closed book is --context-tokens 0)"
        )
    if config.context_tokens is not None and config.context_fraction is not None:
        raise JdnaError("give --context-tokens or --context-fraction, not both")
    if config.train_fraction is not None and not 0.0 < config.train_fraction <= 1.0:
        raise JdnaError(f"--train-fraction {config.train_fraction} is outside (0, 1]: use e.g. 0.1")
    if config.train_examples is not None and config.train_examples < 1:
        raise JdnaError(f"--train-examples {config.train_examples} is below 1: use at least 1")
    if config.train_fraction is not None and config.train_examples is not None:
        raise JdnaError("give --train-fraction or --train-examples, not both")
    check_limit(config.limit)
    if config.limit_mode not in LIMIT_MODES:
        raise unknown_name_error("--limit-mode", config.limit_mode, LIMIT_MODES)
    if config.split not in SPLITS:
        raise JdnaError(f"unknown --split '{config.split}': use {' or '.join(SPLITS)}")
    if config.batch_size is not None and config.batch_size < 1:
        raise JdnaError(f"--batch-size {config.batch_size} is below 1: use at least 1, or leave it out (auto)")
    if config.max_new_tokens < 1:
        raise JdnaError(f"--max-new-tokens {config.max_new_tokens} is below 1: use e.g. 32")
    if config.transfer_mode is not None and config.transfer_mode not in TRANSFER_MODES:
        raise unknown_name_error("transfer mode", config.transfer_mode, TRANSFER_MODES)
    if config.log_samples is not None:
        parent = expand(config.log_samples).parent
        if not parent.is_dir():
            raise JdnaError(f"--log-samples directory '{parent}' does not exist: create it or choose another path")
        check_target(expand(config.log_samples), "--log-samples")
    if config.seed < 0:
        raise JdnaError(f"--seed {config.seed} is negative: use 0 or more")


def check_limit(limit: int | float | None) -> None:
    """--limit is a whole number of items (1 or more) or a fraction strictly between 0 and 1."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit):
        raise JdnaError(f"--limit {limit!r} is not a number: use a count such as 20 or a fraction such as 0.1")
    if 0 < limit < 1:
        return
    if limit < 1:
        raise JdnaError(f"--limit {limit} is below 1: use at least 1, a fraction such as 0.1, or leave it out")
    if limit != int(limit):
        raise JdnaError(f"--limit {limit} is neither a whole number of items nor a fraction below 1: use e.g. 20")


def parse_limit(text: str | None) -> int | float | None:
    """The --limit flag's value: "20" -> 20 items, "0.1" -> a tenth of the pool (as lm-eval's --limit)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise JdnaError(f"--limit '{text}' is not a number: use a count such as 20 or a fraction such as 0.1") from None
    if value <= 0:
        raise JdnaError(f"--limit {text} is below 1: use at least 1, a fraction such as 0.1, or leave it out")
    limit: int | float = int(value) if math.isfinite(value) and value >= 1 and value == int(value) else value
    check_limit(limit)
    return limit


def limited(items: list[Item], limit: int | float | None, mode: str, seed: int) -> list[Item]:
    """The items --limit keeps: the first N (lm-eval's choice) or a seeded sample nested in N, in pool order."""
    if limit is None:
        return items
    count = math.ceil(len(items) * limit) if limit < 1 else int(limit)
    if count >= len(items):
        return items
    if mode == "first":
        return items[:count]
    # A seeded sample (the first N of MMLU would all be one subject); nested in N.
    chosen = {item.id for item in hash_rank(items, seed, "limit")[:count]}
    return [item for item in items if item.id in chosen]


def _check_knobs(task: Task, config: EvalConfig) -> None:
    allowed = KIND_KNOBS[task.kind]
    given = {setting: getattr(config, setting) for setting in KNOB_SETTINGS}
    given["shots"] = config.shots or None  # 0 shots is the default, not a knob given
    for knob, value in given.items():
        if value is not None and knob not in allowed:
            takes = ", ".join(KNOB_FLAGS[k] for k in allowed) or "no difficulty knobs"
            raise JdnaError(
                f"{KNOB_FLAGS[knob]} does not apply to {config.task}, a {task.kind} task (it takes {takes}): "
                f"drop {KNOB_FLAGS[knob]}"
            )
    if config.context_knob and not any(item.context for item in task.items + task.train_items):
        flag = KNOB_FLAGS["context_tokens" if config.context_tokens is not None else "context_fraction"]
        raise JdnaError(f"{flag} needs context documents, but {config.task} has none: drop it")


NO_ANSWER_IN_DOCUMENT = (
    "no answer alias occurs in the item's evidence document, so no context window could hold it "
    "(excluded at every level of the context knob)"
)

_LAST_PREPARED: list[tuple[EvalConfig, Prepared]] = []
_PREPARED_KEPT = 8


def prepare(config: EvalConfig) -> Prepared:
    """Load the task and apply every model-independent knob; all knob errors surface here, before any model.

    The last result is remembered, so a caller that prepares to validate and then calls run_eval with the
    same config loads the task once; it is reused only while the files it was read from hash the same.
    """
    for seen, prepared in _LAST_PREPARED:
        if seen == config and _inputs_unchanged(prepared.task):
            return prepared
    prepared = _prepare(config)
    # A few, so that `jdna eval --tasks a,b` prepares every task up front and runs each without reloading it.
    _LAST_PREPARED[:] = [*_LAST_PREPARED[-(_PREPARED_KEPT - 1) :], (config, prepared)]
    return prepared


def _inputs_unchanged(task: Task) -> bool:
    return current_inputs(task) == task.inputs


def _prepare(config: EvalConfig) -> Prepared:
    validate(config)
    options = {"as_kind": config.as_kind} if config.as_kind else {}
    task = load_task(config.task, **options)
    if task.kind not in EVALUATORS:
        raise JdnaError(f"task {config.task} has kind '{task.kind}', which jdna eval cannot score")
    _check_knobs(task, config)
    pool = task.items if config.split == "test" else task.train_items
    if not pool:
        raise JdnaError(f"task {config.task} has no items in its {config.split} split: use --split test")
    items = list(pool)
    excluded = None
    if config.context_knob:
        # Before --limit, so a limited run scores N answerable items, the same ones at every context level.
        items, dropped = split_answerable(items)
        excluded = {"count": len(dropped), "of": len(pool), "reason": NO_ANSWER_IN_DOCUMENT}
        if not items:
            raise JdnaError(f"no item of {config.task} has an answer in its evidence document: drop the context knob")
    items = limited(items, config.limit, config.limit_mode, config.seed)
    if config.options is not None:
        items = restrict_options(items, config.options, config.seed)
    shots, shot_pool = draw_all_shots(task, items, config.shots, config.seed, [item.id for item in pool])
    return Prepared(task=task, items=items, shots=shots, shot_pool=shot_pool, excluded=excluded)


def eval_params(ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
    """Everything that decides the result, hence the content address (batch size excluded)."""
    evaluator = EVALUATORS.get(prepared.task.kind)
    knobs = config.knobs()
    if knobs["context_fraction"] is None:
        # Keeps the content address of records made before this knob existed.
        del knobs["context_fraction"]
    return {
        "protocol": EVAL_PROTOCOL_VERSION,
        "task": config.task,
        "as_kind": config.as_kind,
        "kind": prepared.task.kind,
        "knobs": knobs,
        "shot_pool": prepared.shot_pool,
        "inputs": prepared.task.inputs,
        **evaluator.id_params(ref, prepared, config),
    }


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The stdout line: the record without its bulky per-item data."""
    return {key: value for key, value in record.items() if key != "per_item"}


def _read_cached(path: Path, identity: str) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("kind") == "eval" and record.get("id") == identity:
        return record
    return None


def auto_dtype(device: torch.device, stored: torch.dtype) -> torch.dtype:
    """What ``jdna eval --dtype auto`` scores in: the checkpoint's dtype, except bfloat16 for a float32
    checkpoint on CUDA (as eval always did there) and float32 for a float16 checkpoint on the CPU (CPU
    half-precision kernels are slow and lossy). A float32 checkpoint on the CPU scores in float32, as before."""
    if device.type == "cuda":
        return torch.bfloat16 if stored == torch.float32 else stored
    return torch.float32 if stored == torch.float16 else stored


def default_placement(ref: ModelRef) -> Placement:
    """eval's placement without flags: ``--device auto --dtype auto``."""
    return resolve_placement("auto", "auto", ref.base.config, auto_dtype=auto_dtype)


def _task_files(spec: str) -> list[Path]:
    """The task file a file:PATH spec reads: an output must never replace it."""
    prefix, sep, rest = spec.strip().partition(":")
    return [expand(rest)] if sep and prefix == "file" and rest else []


def _write_samples(path: Path, outcome: Outcome, record: dict[str, Any], claim: Claim | None = None) -> None:
    lines = [json.dumps({"task": record["task"], "eval_id": record["id"], **sample}) for sample in outcome.samples]
    write_text_atomic(expand(path), "\n".join(lines) + ("\n" if lines else ""), claim)


def run_eval(
    ref: ModelRef,
    config: EvalConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
    transfer: Transfer | None = None,
    models: ModelCache | None = None,
) -> dict[str, Any]:
    """Evaluate the model `ref` names on `config.task`; returns the full record (see docs/records.md).

    A record already at the content-addressed path (or `output`) with the same id is returned with
    `"cached": true` instead of re-running, unless `force` or `config.log_samples` (samples are not kept
    in the record, so they are recomputed).

    `placement` (default `default_placement`) sets device, dtype and device map; a dtype other than float32
    and a CUDA device enter the content address. Under ``torchrun``/``accelerate launch`` every process calls
    this, the scoring is split between them (jdna/evaluation/parallel.py), every process returns the same
    record and rank 0 alone writes it.

    `transfer` is the fine-tuning step a classification task runs first when the model has no head for it (the
    command layer passes `jdna.finetune.EvalTransfer`); `models` keeps a loaded model for the next task.
    """
    with data_parallel() as dist:
        return _run_eval(
            ref, config, output, reporter or Reporter(), force, placement or default_placement(ref), dist,
            transfer, models,
        )


def _run_eval(
    ref: ModelRef,
    config: EvalConfig,
    output: Path | None,
    reporter: Reporter,
    force: bool,
    placement: Placement,
    dist: Any,
    transfer: Transfer | None = None,
    models: ModelCache | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    prepared = prepare(config)
    evaluator = EVALUATORS.get(prepared.task.kind)
    evaluator.check(ref, prepared, config, transfer)
    if dist.enabled and dist.device is not None:  # the launcher's device per process wins
        placement = replace(placement, device=dist.device, device_map=None)
    params = eval_params(ref, prepared, config)
    compute = placement.id_params(device_matters=True)
    if compute:
        params["compute"] = compute
    identity = eval_identity(ref.identity, params)
    path = Path(output) if output else default_record_path(identity)
    cached = _read_cached(path, identity) if path.exists() and not force else None
    if dist.enabled:  # every process takes rank 0's decision, so none waits in a collective alone
        cached = dist.broadcast_object(cached)
    if cached is not None and config.log_samples is None:
        reporter.log(f"cache hit: {path}")
        return {**cached, "path": str(path), "cached": True}
    if cached is not None:
        reporter.log("recomputing the cached result to write --log-samples")
    claim: Claim | None = None
    samples_claim: Claim | None = None
    if dist.is_main:  # only rank 0 writes, so only it claims the outputs
        protected = [*model_inputs(ref), *_task_files(config.task)]
        claim = claim_record(path, identity, output is not None, force, protected)
        if config.log_samples is not None:
            samples = expand(config.log_samples)
            if os.path.abspath(samples) == os.path.abspath(path):
                raise JdnaError(f"--log-samples and -o name the same file '{samples}': give each its own path")
            samples_claim = claim_output(samples, flag="--log-samples", replace=force, protected=[*protected, path])

    device, dtype = placement.device, placement.dtype
    n = len(prepared.items)
    knob_text = ", ".join(f"{k}={v}" for k, v in config.knobs().items() if v not in (None, 0) or k == "seed")
    reporter.log(f"{config.task} ({prepared.task.kind}), {n} items; {knob_text}")
    repeated = duplicate_choice_items(prepared.items)
    if repeated:
        reporter.log(
            f"warning: {len(repeated)} item(s) list one option text twice (first: id {repeated[0][:40]!r}); "
            "where the repeat is the gold answer, no prediction can be right"
        )
    if dist.enabled:
        reporter.log(f"data-parallel over {dist.world_size} processes ({dist.backend}): each scores a shard")
    # Before the model is loaded: measuring a plain checkpoint's zeros reads its weights file, and with the model
    # held (for the next --tasks task) that read would double the peak memory.
    model_fields = model_block(ref)
    ctx = EvalContext(
        ref=ref, config=config, prepared=prepared, reporter=reporter, device=device, dtype=dtype,
        device_map=placement.device_map, dist=dist, transfer=transfer, models=models,
    )
    outcome = evaluator.run(ctx)
    total = time.perf_counter() - started
    record = build_record(
        identity=identity,
        path=path,
        task=config.task,
        task_kind=prepared.task.kind,
        knobs=config.knobs(),
        primary_metric=next(iter(outcome.metrics)),
        metrics=outcome.metrics,
        higher_is_better=evaluator.higher_is_better,
        n=n,
        excluded=prepared.excluded,
        model=model_fields,
        transfer=outcome.transfer,
        protocol={
            "version": EVAL_PROTOCOL_VERSION,
            "shot_pool": prepared.shot_pool,
            "task_source": prepared.task.source,
            "provenance": prepared.task.provenance,
            **{
                k: v
                for k, v in params.items()
                if k not in ("protocol", "task", "kind", "knobs", "shot_pool", "compute")
            },
        },
        extra={
            **outcome.extra,
            **placement.record(),
            **({"world_size": dist.world_size} if dist.enabled else {}),
        },
        per_item=outcome.per_item,
        timing={
            "seconds": round(total, 3),
            "scoring_seconds": round(outcome.seconds, 3),
            "items_per_second": round(n / outcome.seconds, 3) if outcome.seconds > 0 else None,
        },
    )
    pool = prepared.task.items if config.split == "test" else prepared.task.train_items
    task_key = prepared.task.name if prepared.task.source == "lmeval" else config.task
    record.update(results_block(task_key, outcome.metrics, outcome.item_values, config.shots, n, len(pool)))
    if "load_seconds" in record:
        record["timing"]["load_seconds"] = record.pop("load_seconds")
    if not dist.is_main:
        return record
    # The samples first: if they cannot be written, no record claims a run whose samples were asked for.
    if config.log_samples is not None:
        _write_samples(Path(config.log_samples), outcome, record, samples_claim)
    try:
        write_json_atomic(path, record, claim)
    except JdnaError:
        if samples_claim is not None and samples_claim.before is None:
            expand(config.log_samples).unlink(missing_ok=True)
        raise
    if config.log_samples is not None:
        reporter.log(f"wrote {len(outcome.samples)} samples to {config.log_samples}")
    primary = record["primary_metric"]
    entry = outcome.metrics[primary]
    reporter.log(
        f"{primary} = {entry['value']:.4f} (95% CI {entry['ci95'][0]:.4f}–{entry['ci95'][1]:.4f}), n = {n}, "
        f"{record['timing']['seconds']:.1f} s"
    )
    return record


def run_evals(
    ref: ModelRef,
    configs: list[EvalConfig],
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
    transfer: Transfer | None = None,
) -> Iterator[dict[str, Any]]:
    """`run_eval` for each config in turn (`jdna eval --tasks a,b`), yielding each record as it is done.

    Every task is prepared first, so a bad task or knob fails before the first model is loaded. `output`
    names one record file, so it takes a single config. The model is loaded once, by the first task that
    scores it, and reused by the next ones.
    """
    if output is not None and len(configs) > 1:
        raise JdnaError("-o names one record file, but several tasks were given: drop -o (records go to runs/eval/)")
    for config in configs:
        prepare(config)
    models = ModelCache()  # the model is loaded by the first task that needs it and reused by the others
    for index, config in enumerate(configs, 1):
        if reporter is not None and len(configs) > 1:
            reporter.log(f"task {index}/{len(configs)}: {config.task}")
        yield run_eval(
            ref, config, output, reporter, force=force, placement=placement, transfer=transfer, models=models
        )
