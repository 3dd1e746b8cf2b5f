"""jdna lowrank: truncated-SVD factorization of each weight matrix (the low-rank baseline)."""

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
from jdna.quantization.lowrank_step import run_lowrank
from jdna.quantization.run import LowRankConfig, plan_lowrank


def lowrank(
    model: ModelArgument = None,
    rank_ratio: Annotated[
        float | None,
        typer.Option("--rank-ratio", "-r", help="Rank kept as a fraction of min(rows, cols), in (0, 1]."),
    ] = None,
    energy: Annotated[
        float | None,
        typer.Option(help="Instead: smallest rank keeping this fraction of Σσ² per matrix, in (0, 1]."),
    ] = None,
    bits_per_weight: Annotated[
        float | None,
        typer.Option(
            help="Instead: per matrix, the rank whose float16 factors store closest to B bits per original weight "
            "(r = round(B·rows·cols / (16·(rows+cols)))).",
        ),
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Also factorize parameters matching this glob (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Never factorize parameters matching this glob (repeatable).")
    ] = None,
    output: ArtifactOutput = None,
    force: ForceRecompute = False,
    allow_pickle: AllowPickle = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Replace each transformer-block weight matrix W by U_r S_r V_rᵀ and write a lowrank artifact (factors)."""
    config = LowRankConfig(
        rank_ratio=rank_ratio,
        energy=energy,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        bits_per_weight=bits_per_weight,
    )
    plan_lowrank(config)  # validate the flags before touching any model or file
    out = output_path(output)
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    placement = placement_for(ref, device, dtype, device_map)
    record = run_lowrank(ref, config, out, CliReporter("lowrank"), force=force, placement=placement)
    emit(record)
