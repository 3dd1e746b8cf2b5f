"""jdna quantize: round-to-nearest or GPTQ weight quantization, stored as packed integer codes."""

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
from jdna.quantization.quantize_step import run_quantize
from jdna.quantization.run import QUANT_METHODS, QuantizeConfig, plan_quantize


def quantize(
    model: ModelArgument = None,
    bits: Annotated[int | None, typer.Option("--bits", "-b", help="Code width, 2 to 8.")] = None,
    method: Annotated[str, typer.Option(help=f"One of: {', '.join(QUANT_METHODS)}.")] = "rtn",
    granularity: Annotated[
        str,
        typer.Option(help="tensor | channel (one scale per output row) | group (per row and --group-size inputs)."),
    ] = "channel",
    group_size: Annotated[
        int, typer.Option(help="Input columns sharing a scale with --granularity group; must divide them.")
    ] = 128,
    symmetric: Annotated[
        bool, typer.Option("--sym/--asym", help="Grid centred on zero (no zero-point) or min-max with one.")
    ] = True,
    include: Annotated[
        list[str] | None, typer.Option(help="Also quantize parameters matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Never quantize parameters matching this glob (repeatable).")
    ] = None,
    calib: Annotated[
        str | None,
        typer.Option(
            help="GPTQ: calibration text: a .txt or .jsonl ('text') file, c4 (the hub) or bigbench (offline Wikipedia "
            "paragraphs from BIG-bench, docs/methods.md); default c4 if the hub is reachable, else bigbench."
        ),
    ] = None,
    calib_samples: Annotated[int, typer.Option(help="GPTQ: calibration windows.")] = 128,
    calib_seqlen: Annotated[
        int, typer.Option(help="GPTQ: tokens per calibration window (capped at the model's context).")
    ] = 512,
    seed: Annotated[int, typer.Option(help="GPTQ: seed for calibration sampling.")] = 0,
    block_size: Annotated[int, typer.Option(help="GPTQ: columns per lazy-update block.")] = 128,
    damp: Annotated[
        float, typer.Option(help="GPTQ: Hessian dampening as a fraction of its mean diagonal.")
    ] = 0.01,
    act_order: Annotated[
        bool, typer.Option("--act-order", help="GPTQ: visit columns by decreasing Hessian diagonal.")
    ] = False,
    output: ArtifactOutput = None,
    force: ForceRecompute = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Quantize a model's transformer-block weight matrices and write a quantized artifact (packed codes).

    A pruned MODEL keeps its mask: pruned weights stay exactly zero. Evaluation dequantizes the codes
    (simulated quantization).
    """
    config = QuantizeConfig(
        bits=bits,
        method=method,
        granularity=granularity,
        group_size=group_size,
        symmetric=symmetric,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        calib=calib,
        calib_samples=calib_samples,
        calib_seqlen=calib_seqlen,
        seed=seed,
        block_size=block_size,
        damp=damp,
        act_order=act_order,
    )
    plan_quantize(config)  # validate the flags before touching any model or file
    out = output_path(output)
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    placement = placement_for(ref, device, dtype, device_map)
    record = run_quantize(ref, config, out, CliReporter("quantize"), force=force, placement=placement)
    emit(record)
