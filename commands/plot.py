"""jdna plot: the study's figures (PNG/SVG/PDF) from result records, or a text chart in the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from jdna.analysis import BaselineTable, load_records, parse_axis
from jdna.analysis.plots import KIND_NAMES, analysis_of, auto_kind, build_chart, kind_number, render, text_chart
from jdna.analysis.stats import MIN_TREND
from jdna.commands.common import console, emit
from jdna.errors import JdnaError, check_seed
from jdna.outputs import check_target, claim_output, input_files
from jdna.paths import expand

FORMATS = ("png", "svg", "pdf")


def plot(
    records: Annotated[
        list[str] | None,
        typer.Argument(help="Eval, lmc or difficulty record files, globs or directories, or '-'/nothing for stdin."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Figure file: .png, .svg or .pdf. Without it, a text chart on stderr."),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="auto, or 1/sparsity (normalised performance vs sparsity per difficulty level), 2/methods "
            "(pruning vs quantization vs low-rank on bits per weight), 3/transfer (transfer settings side by "
            "side), 4/lmc (LMC curves), 5/spearman (ρ per level with its interval), 6/trend (slope of the drop "
            "per difficulty step per level, with its interval and verdict)."
        ),
    ] = "auto",
    axis: Annotated[
        list[str] | None,
        typer.Option("--axis", help="Difficulty axis NAME[:harder=lower|higher], as for jdna difficulty."),
    ] = None,
    baselines: Annotated[
        str | None, typer.Option(help="Human baselines table (.csv/.json) for across-task difficulty.")
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for bands and intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    min_trend: Annotated[
        float, typer.Option(help="Smallest trend worth detecting (drop per difficulty step), as for jdna difficulty.")
    ] = MIN_TREND,
    gap_normalise: Annotated[
        str, typer.Option(help="Across-task difficulty: gap ÷ dense score ('dense') or ÷ human score ('human').")
    ] = "dense",
    dpi: Annotated[int, typer.Option(help="Resolution of PNG output.")] = 200,
    title: Annotated[str | None, typer.Option(help="Figure title (default: none, as papers caption figures).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing -o file.")] = False,
) -> None:
    """Draw one of the study's figures from result records (PNG/SVG/PDF, or a text chart without -o).

    Labels and legends come from the records; colours are the colour-blind-safe Okabe–Ito palette.
    """
    number = None if kind == "auto" else kind_number(kind)
    out = expand(output) if output else None
    if out is not None:
        suffix = out.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise JdnaError(f"-o '{output}': the figure file must end in .png, .svg or .pdf")
        if out.is_dir() or not out.parent.is_dir():
            raise JdnaError(f"-o '{output}': give a file in an existing directory")
        check_target(out, "-o")
    if dpi < 50 or dpi > 1200:
        raise JdnaError(f"--dpi {dpi} is outside 50–1200")
    check_seed(seed)
    loaded = load_records(records or [], stdin=sys.stdin, kinds=("eval", "lmc", "difficulty"))
    claim = claim_output(out, replace=force, protected=input_files(records, loaded)) if out is not None else None
    number = number or auto_kind(loaded)
    if number == 4:
        analysis = None
    else:
        axes = [parse_axis(a) for a in axis] if axis else None
        analysis = analysis_of(loaded, axes=axes, baselines=BaselineTable.load(baselines), n_resamples=resamples,
                               seed=seed, min_trend=min_trend, gap_normalise=gap_normalise)
    chart = build_chart(number, loaded, analysis)
    chart.title = title
    record = {"kind": "plot", "path": None, "plot_kind": KIND_NAMES[number], "panels": len(chart.panels),
              "n_records": len(loaded)}
    if out is None:
        console.print(text_chart(chart), markup=False, highlight=False, soft_wrap=True)
    else:
        figure = render(chart)
        # The figure's size is fixed (no tight bbox) so that a figure's pixel size is predictable from its
        # panel count; constrained layout keeps the labels inside it.
        assert claim is not None
        with claim.write() as tmp:  # a failed write leaves the previous figure as it was
            figure.savefig(tmp, dpi=dpi, format=out.suffix.lower().lstrip("."),
                           metadata={"Software": None} if out.suffix.lower() == ".png" else None)
        width, height = figure.get_size_inches()
        record.update({"path": str(out), "format": out.suffix.lower().lstrip("."),
                       "width_in": float(width), "height_in": float(height)})
        if out.suffix.lower() == ".png":
            record.update({"width_px": round(width * dpi), "height_px": round(height * dpi)})
        console.print(f"[dim]jdna plot:[/dim] wrote {out} ({KIND_NAMES[number]}, {len(chart.panels)} panel(s))")
    emit(record)
