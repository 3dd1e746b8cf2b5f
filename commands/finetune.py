"""jdna finetune: dense / sparse / freeze / regrow transfer of a (pruned) model to a classification, multiple-choice
or QA task (classification: a sequence-classification head; multiple choice and QA: a causal LM's answer tokens)."""

from __future__ import annotations

from typing import Annotated

import typer

from jdna.commands.common import (
    AllowPickle,
    ArtifactOutput,
    CliReporter,
    DeviceOption,
    DtypeOption,
    ModelArgument,
    emit,
    model_from_stdin,
    output_path,
    placement_for,
)
from jdna.distributed import data_parallel, launched_rank
from jdna.finetune import MODES, FinetuneConfig, check_model, plan, run_finetune
from jdna.models import resolve
from jdna.progress import Reporter


def finetune(
    model: ModelArgument = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="Classification task (e.g. bigbench:vitaminc_fact_verification, sst2), a multiple-choice task "
            "(an encoder gets a multiple-choice head, e.g. commonsense_qa), or, for a causal LM, a multiple-choice "
            "or QA task (e.g. bigbench:general_knowledge, mmlu, bigbench:qa_wikidata); or file:PATH."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help=f"One of: {', '.join(MODES)}. dense: the unpruned model; sparse: pruned weights stay exactly "
            "zero; freeze: pruned positions keep their pretrained values; regrow: pruned weights start at "
            "zero and train."
        ),
    ] = "sparse",
    train_fraction: Annotated[
        float | None, typer.Option(help="Fraction of the train pool to use, in (0, 1] (seeded; stratified by label).")
    ] = None,
    train_examples: Annotated[
        int | None,
        typer.Option(help="Number of training examples (seeded; stratified by label, or by gold letter for MMLU)."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training examples.")] = 3,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (default 5e-5 for encoders, 1e-4 for causal LMs).")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Examples per micro-batch, in total: under torchrun/accelerate launch with N processes each "
            "trains on B/N of them, so the run is the same as on one process."
        ),
    ] = 16,
    grad_accum: Annotated[
        int, typer.Option(help="Micro-batches per optimizer step (a step trains on batch-size x grad-accum examples).")
    ] = 1,
    max_length: Annotated[
        int,
        typer.Option(help="Tokens per example; longer ones are cut (MC/QA: the prompt from the left, not the answer)."),
    ] = 128,
    warmup: Annotated[float, typer.Option(help="Linear warmup, as a fraction of the optimizer steps.")] = 0.06,
    weight_decay: Annotated[float, typer.Option(help="AdamW decoupled weight decay (not on 1-D params).")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed for the head, data subset and order, and dropout.")] = 0,
    eval_limit: Annotated[
        int | None,
        typer.Option(help="Evaluate at most this many validation items (seeded subset); 0 for all."),
    ] = 1000,
    checkpoint_every: Annotated[
        int, typer.Option(help="Write a resumable checkpoint every N optimizer steps (and on Ctrl-C/SIGTERM).")
    ] = 100,
    output: ArtifactOutput = None,
    force: Annotated[
        bool, typer.Option(help="Retrain even if the content-addressed artifact exists; drop any checkpoint.")
    ] = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Fine-tune a (pruned) model on a task; check the mode's invariant; evaluate the validation items.

    Classification tasks train a sequence-classification head; multiple-choice tasks on an encoder a
    multiple-choice head (a score per question-option pair). Multiple-choice and QA tasks train a causal
    LM on the answer tokens: the prompt `jdna eval` scores plus the gold answer, with the loss on the answer
    only; validation uses `jdna eval`'s evaluator (log-likelihood accuracy, EM/F1) on the items
    `jdna eval --limit N` picks. Training items come from the task's train pool, which never overlaps the
    validation items (tasks without a train split, e.g. BIG-bench, carve one by seeded hash).

    Writes a finetuned artifact (weights + masks) and an eval record of the validation pool. An interrupted
    run (Ctrl-C, SIGTERM) leaves a checkpoint beside the output; the same command resumes from it.

    Data-parallel on several GPUs: `torchrun --nproc_per_node N -m jdna finetune ...` or `accelerate launch
    --multi_gpu --num_processes N -m jdna finetune ...` (NCCL, one GPU per process; gloo on CPU). --batch-size
    stays the global micro-batch (each process trains on B/N of it), so N processes run the same training as
    one; rank 0 alone validates, writes and prints the record.
    """
    config = FinetuneConfig(
        task=task or "",
        mode=mode,
        train_fraction=train_fraction,
        train_examples=train_examples,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        warmup=warmup,
        weight_decay=weight_decay,
        seed=seed,
        eval_limit=None if eval_limit == 0 else eval_limit,
        checkpoint_every=checkpoint_every,
    )
    plan(config)  # validate the flags before touching any model or file
    out = output_path(output)
    main = launched_rank() == 0  # under a launcher only rank 0 logs and prints; the others stay quiet
    reporter = CliReporter("finetune") if main else Reporter()
    with data_parallel() as dist:
        # The launched processes share stdin: rank 0 reads a piped record and passes the model on.
        spec = dist.broadcast_object(model_from_stdin(model) if main else None) if dist.enabled else model
        ref = resolve(model_from_stdin(spec), allow_pickle=allow_pickle)
        check_model(ref, config)
        placement = placement_for(ref, device, dtype)
        record = run_finetune(ref, config, out, reporter, force=force, placement=placement)
    if main:
        emit(record)
