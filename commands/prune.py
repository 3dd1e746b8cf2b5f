"""jdna prune: magnitude, random, large-magnitude, Wanda and SparseGPT pruning, with OWL and N:M."""

from __future__ import annotations

from typing import Annotated

import typer

from jdna.commands.common import (
    AllowPickle,
    ArtifactOutput,
    CliReporter,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    ForceRecompute,
    ModelArgument,
    emit,
    model_from_stdin,
    output_path,
    placement_for,
)
from jdna.models import resolve
from jdna.pruning import METHODS, PruneConfig, plan_prune, run_prune
from jdna.pruning.base import default_scopes, method_names


def prune(
    model: ModelArgument = None,
    sparsity: Annotated[
        float | None,
        typer.Option("--sparsity", "-s", help="Fraction of prunable weights to remove, in [0, 1)."),
    ] = None,
    bits_per_weight: Annotated[
        float | None,
        typer.Option(
            help="Instead of --sparsity: the sparsity whose storage is B bits per weight, counting 16-bit kept "
            "values and a 1-bit mask per weight (s = 1 - (B - 1)/16; 8 -> 0.5625, 4 -> 0.8125).",
        ),
    ] = None,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(METHODS.names())}.")] = "magnitude",
    scope: Annotated[
        str | None,
        typer.Option(
            help=f"global | layer | row (default: {default_scopes()})."
        ),
    ] = None,
    pattern: Annotated[
        str, typer.Option(help="unstructured, or N:M (N kept of every M consecutive inputs), e.g. 2:4.")
    ] = "unstructured",
    owl: Annotated[
        bool,
        typer.Option(
            "--owl",
            help=f"Outlier-weighted layerwise sparsity ({', '.join(method_names(lambda m: m.supports_owl))}); needs "
            "calibration text unless --owl-metric weight.",
        ),
    ] = False,
    owl_metric: Annotated[
        str,
        typer.Option(
            help="OWL: outlier ratios from 'wanda' = |W|·‖X‖ on the dense model (the reference OWL code, for every "
            "method) or 'weight' = |W| alone (no calibration data)."
        ),
    ] = "wanda",
    owl_lambda: Annotated[float, typer.Option(help="OWL: per-block sparsity spread (±lambda).")] = 0.08,
    owl_m: Annotated[
        float, typer.Option(help="OWL: outlier threshold as a multiple of the block's mean score.")
    ] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed for random pruning and calibration sampling.")] = 0,
    include: Annotated[
        list[str] | None, typer.Option(help="Also prune parameters matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Never prune parameters matching this glob (repeatable).")
    ] = None,
    calib: Annotated[
        str | None,
        typer.Option(
            help="Calibration text: a .txt or .jsonl ('text') file, c4 (the hub) or bigbench (offline Wikipedia "
            "paragraphs from BIG-bench, docs/methods.md); default c4 if the hub is reachable, else bigbench."
        ),
    ] = None,
    calib_samples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    calib_seqlen: Annotated[
        int, typer.Option(help="Tokens per calibration window (capped at the model's context).")
    ] = 512,
    block_size: Annotated[int, typer.Option(help="SparseGPT: columns per lazy-update block.")] = 128,
    damp: Annotated[
        float, typer.Option(help="SparseGPT: Hessian dampening as a fraction of its mean diagonal.")
    ] = 0.01,
    output: ArtifactOutput = None,
    force: ForceRecompute = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Prune a model's transformer-block weight matrices and write a pruned artifact (masks over the base)."""
    config = PruneConfig(
        method=method,
        sparsity=sparsity,
        scope=scope,
        pattern=pattern,
        owl=owl,
        owl_lambda=owl_lambda,
        owl_m=owl_m,
        owl_metric=owl_metric,
        seed=seed,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        calib=calib,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen,
        block_size=block_size,
        damp=damp,
        bits_per_weight=bits_per_weight,
    )
    plan_prune(config)  # validate the flags before touching any model or file
    out = output_path(output)
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    placement = placement_for(ref, device, dtype, device_map)
    record = run_prune(ref, config, out, CliReporter("prune"), force=force, placement=placement)
    emit(record)
