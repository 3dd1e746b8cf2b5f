"""jdna eval: score a model on a task with difficulty knobs and write a content-addressed result record."""

from __future__ import annotations

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
from jdna.errors import JdnaError
from jdna.evaluation import EvalConfig, auto_dtype, prepare, run_eval, summary, validate
from jdna.finetune.distributed import data_parallel, launched_rank
from jdna.models import resolve
from jdna.paths import expand
from jdna.progress import Reporter


def _record_path(output: str | None) -> Path | None:
    if output is None:
        return None
    path = expand(output)
    if path.is_dir():
        raise JdnaError(f"-o '{output}' is a directory: give a file path ending in .json")
    if not path.parent.is_dir():
        raise JdnaError(f"output directory '{path.parent}' does not exist: create it or choose another -o path")
    return path


def eval_command(
    model: ModelArgument = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Task spec: see 'jdna tasks' (e.g. mmlu, file:PATH).")
    ] = None,
    shots: Annotated[
        int, typer.Option(help="Demonstrations per prompt, drawn (seeded) from the task's train pool.")
    ] = 0,
    options: Annotated[
        int | None, typer.Option(help="Multiple choice: keep the gold answer plus N-1 seeded distractors.")
    ] = None,
    context_tokens: Annotated[
        int | None,
        typer.Option(
            help="Generation with a context document: a window of N model tokens holding the answer; 0 = closed book."
        ),
    ] = None,
    train_fraction: Annotated[
        float | None, typer.Option(help="Classification: fraction of the training pool used to fine-tune.")
    ] = None,
    train_examples: Annotated[
        int | None, typer.Option(help="Classification: number of training examples used to fine-tune.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of N items.")] = None,
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
        str | None, typer.Option(help="Write per-item prompts (hash), choices, scores, predictions as JSON lines.")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Record path (default: content-addressed under ./runs/eval/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute even if the content-addressed record exists.")] = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Evaluate a model on a task (multiple choice, generation, perplexity, classification) with difficulty knobs.

    Prints one JSON line: the result record without per-item values; the full record is at its "path".
    """
    if task is None:
        raise JdnaError("no task given: pass --task NAME (see 'jdna tasks')")
    config = EvalConfig(
        task=task,
        shots=shots,
        options=options,
        context_tokens=context_tokens,
        train_fraction=train_fraction,
        train_examples=train_examples,
        limit=limit,
        split=split,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        transfer_mode=transfer_mode,
        as_kind=as_kind,
        log_samples=expand(log_samples) if log_samples else None,
    )
    validate(config)  # flags first: nothing is read or loaded for a bad flag
    out = _record_path(output)
    prepare(config)  # task data and knobs (pool sizes, option counts) before any model
    main = launched_rank() == 0  # under torchrun / accelerate launch only rank 0 logs and prints
    with data_parallel() as dist:
        # The launched processes share stdin: rank 0 reads a piped record and passes the model on.
        spec = dist.broadcast_object(model_from_stdin(model) if main else None) if dist.enabled else model
        ref = resolve(model_from_stdin(spec), allow_pickle=allow_pickle)
        placement = placement_for(ref, device, dtype, device_map, auto_dtype=auto_dtype)
        reporter = CliReporter("eval") if main else Reporter()
        record = run_eval(ref, config, out, reporter, force=force, placement=placement)
    if main:
        emit(summary(record))
