"""jdna lmc: linear mode connectivity between two fine-tuned (or any two same-architecture) models."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from tabulate import tabulate

from jdna.commands.common import CliReporter, DeviceOption, DtypeOption, console, emit, output_path, placement_for
from jdna.errors import check_seed
from jdna.lmc import alpha_grid, run_lmc
from jdna.models import resolve


def lmc(
    model_a: Annotated[str, typer.Argument(help="First endpoint (α = 0): artifact path or model name.")],
    model_b: Annotated[str, typer.Argument(help="Second endpoint (α = 1): artifact path or model name.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task to evaluate along the path (see `jdna tasks`).")],
    points: Annotated[int, typer.Option(help="Points on the α grid, endpoints included.")] = 11,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most this many items (seeded subset).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for item subsets.")] = 0,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Record path (default: runs/lmc/).")] = None,
    force: Annotated[bool, typer.Option(help="Recompute even if the record exists.")] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
) -> None:
    """Evaluate θ(α) = (1−α)θ_A + αθ_B on a grid and report loss, metric and the barrier height."""
    alpha_grid(points)
    check_seed(seed)
    out = output_path(output)
    ref_a, ref_b = resolve(model_a), resolve(model_b)
    placement = placement_for(ref_a, device, dtype, auto_dtype=lambda _device, _stored: torch.float32)
    record = run_lmc(ref_a, ref_b, task, points=points, limit=limit, seed=seed, output=out,
                     reporter=CliReporter("lmc"), force=force, placement=placement)
    rows = list(zip(record["alphas"], record["loss"], record["metric"]))
    console.print(tabulate(rows, headers=["alpha", "loss", record["metric_name"]], floatfmt=".4f"))
    console.print(f"barrier: loss {record['barrier_loss']:.4f}, {record['metric_name']} {record['barrier_metric']:.4f}")
    emit(record)
