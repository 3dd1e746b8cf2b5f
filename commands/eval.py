"""jdna eval: score a model on a task with difficulty knobs and write a content-addressed result record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from jdna.commands.common import (
    AllowPickle,
    CliReporter,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    ModelArgument,
    emit,
    model_from_stdin,
    placement_for,
)
from jdna.distributed import data_parallel, launched_rank
from jdna.errors import JdnaError
from jdna.evaluation import EvalConfig, auto_dtype, parse_limit, prepare, run_evals, summary, validate
from jdna.finetune import EvalTransfer
from jdna.models import resolve
from jdna.outputs import check_target
from jdna.paths import expand
from jdna.progress import Reporter
from jdna.tasks import default_shots


def _record_path(output: str | None) -> Path | None:
    if output is None:
        return None
    path = expand(output)
    if path.is_dir():
        raise JdnaError(f"-o '{output}' is a directory: give a file path ending in .json")
    if not path.parent.is_dir():
        raise JdnaError(f"output directory '{path.parent}' does not exist: create it or choose another -o path")
    return check_target(path, "-o")


def complete_task(incomplete: str) -> list[str]:
    """Shell completion of --task: the built-in task names and the spec prefixes."""
    from jdna.tasks import list_tasks

    names = [row["name"] for row in list_tasks()] + ["file:", "lmeval:", "bigbench:", "hub:"]
    return [name for name in names if name.startswith(incomplete)]


def task_specs(task: str | None, tasks: str | None) -> list[str]:
    """--task and/or --tasks a,b,c, in order, without repeats."""
    specs = ([task] if task else []) + [spec.strip() for spec in (tasks or "").split(",") if spec.strip()]
    if not specs:
        raise JdnaError("no task given: pass --task NAME or --tasks A,B (see 'jdna tasks')")
    return list(dict.fromkeys(specs))


def samples_path(log_samples: str | None, spec: str, n_tasks: int) -> Path | None:
    """Where --log-samples writes for `spec`: the path itself, or PATH.<task>.jsonl when several tasks run."""
    if not log_samples:
        return None
    path = expand(log_samples)
    if n_tasks == 1:
        return path
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")
    return path.with_name(f"{path.stem}.{safe}{path.suffix or '.jsonl'}")


def eval_command(
    model: ModelArgument = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            "-t",
            help="Task spec: see 'jdna tasks' (e.g. mmlu, file:PATH, lmeval:PATH.yaml).",
            autocompletion=complete_task,
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Several task specs, comma-separated (as lm-eval): one record, one line each."),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots",
            "--num-fewshot",
            help="Demonstrations per prompt, drawn (seeded) from the task's train pool (default 0; an lm-eval "
            "YAML's num_fewshot).",
        ),
    ] = None,
    options: Annotated[
        int | None, typer.Option(help="Multiple choice: keep the gold answer plus N-1 seeded distractors.")
    ] = None,
    context_tokens: Annotated[
        int | None,
        typer.Option(
            help="Generation with a context document: a window of N model tokens holding the answer; 0 = closed book."
        ),
    ] = None,
    context_fraction: Annotated[
        float | None,
        typer.Option(
            help="Generation with a context document: a window of F (0 < F <= 1) of its tokens holding the answer."
        ),
    ] = None,
    train_fraction: Annotated[
        float | None, typer.Option(help="Classification: fraction of the training pool used to fine-tune.")
    ] = None,
    train_examples: Annotated[
        int | None, typer.Option(help="Classification: number of training examples used to fine-tune.")
    ] = None,
    limit: Annotated[
        str | None,
        typer.Option(help="Evaluate N items, or a fraction 0<x<1 of them (rounded up); which ones: --limit-mode."),
    ] = None,
    limit_mode: Annotated[
        str,
        typer.Option(
            help="sample (default): a seeded sample, nested in N, because a task's first N items are often one "
            "subject (MMLU's are all abstract_algebra); first: the first N in file order, as lm-eval's --limit."
        ),
    ] = "sample",
    split: Annotated[str, typer.Option(help="test (the evaluation pool) or train.")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of every knob's sampling and of the bootstrap.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option(help="Requests per forward pass (default: sized from memory). Never changes results.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Generation: most tokens generated per answer.")] = 32,
    transfer_mode: Annotated[
        str | None,
        typer.Option(
            help="Classification without a head: sparse | dense | freeze | regrow (default: sparse if masked)."
        ),
    ] = None,
    as_kind: Annotated[
        str | None, typer.Option(help="BIG-bench: load the task as this kind (e.g. classification).")
    ] = None,
    log_samples: Annotated[
        str | None,
        typer.Option(
            help="Write per-item full prompts, choices, scores, predictions as JSON lines (with --tasks: one file "
            "per task, PATH.<task>.jsonl)."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Record path (default: content-addressed under ./runs/eval/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute even if the content-addressed record exists.")] = False,
    allow_pickle: AllowPickle = False,
    dense_parent: Annotated[
        str | None,
        typer.Option(
            help="The dense model MODEL was pruned from (path, HF id or demo name), recorded as model.dense_parent "
            "so 'jdna difficulty' can normalise a model pruned outside jdna. Automatic for jdna exports."
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Evaluate a model on a task (multiple choice, generation, perplexity, classification) with difficulty knobs.

    Prints one JSON line per task: the result record without per-item values; the full record is at its "path".
    Each record also holds an lm-eval-shaped "results" block (results[TASK]["acc,none"], "acc_stderr,none").
    """
    specs = task_specs(task, tasks)
    configs = [
        EvalConfig(
            task=spec,
            shots=shots if shots is not None else default_shots(spec),
            options=options,
            context_tokens=context_tokens,
            context_fraction=context_fraction,
            train_fraction=train_fraction,
            train_examples=train_examples,
            limit=parse_limit(limit),
            limit_mode=limit_mode,
            split=split,
            seed=seed,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            transfer_mode=transfer_mode,
            as_kind=as_kind,
            log_samples=samples_path(log_samples, spec, len(specs)),
        )
        for spec in specs
    ]
    for config in configs:
        validate(config)  # flags first: nothing is read or loaded for a bad flag
    out = _record_path(output)
    for config in configs:
        prepare(config)  # task data and knobs (pool sizes, option counts) before any model
    main = launched_rank() == 0  # under torchrun / accelerate launch only rank 0 logs and prints
    with data_parallel() as dist:
        # The launched processes share stdin: rank 0 reads a piped record and passes the model on.
        spec = dist.broadcast_object(model_from_stdin(model) if main else None) if dist.enabled else model
        ref = resolve(model_from_stdin(spec), allow_pickle=allow_pickle)
        from jdna.sparsity import record_dense_parent, reference_of

        if dense_parent is not None:
            ref.dense_parent = reference_of(resolve(dense_parent, allow_pickle=allow_pickle))
        placement = placement_for(ref, device, dtype, device_map, auto_dtype=auto_dtype)
        reporter = CliReporter("eval") if main else Reporter()
        # A classification task on a model without a head fine-tunes it first: evaluation gets that step from
        # here, as it sits below fine-tuning and never imports it.
        transfer = EvalTransfer()
        for record in run_evals(ref, configs, out, reporter, force=force, placement=placement, transfer=transfer):
            if not main:
                continue
            if ref.dense_parent is not None:
                record = record_dense_parent(record, ref.dense_parent)  # also labels a cached record
            emit(summary(record))
