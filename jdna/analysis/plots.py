"""The study's figures from records: matplotlib Figures for papers, and compact text charts for terminals.

Every kind is built in two steps: the records become a `Chart` (panels of labelled series, with optional
interval bands), which is then rendered either as a matplotlib Figure or as text. Keeping the data step
separate means the terminal chart and the paper figure always show the same numbers.

Kinds:
1. `sparsity`  normalised performance vs sparsity, one line per difficulty level (Figs 1–6);
2. `methods`   pruning vs quantization vs low-rank on the bits-per-weight axis (Fig. 7);
3. `transfer`  the transfer settings side by side (Figs 8–9);
4. `lmc`       linear-mode-connectivity curves, one per task (Fig. 10);
5. `spearman`  Spearman ρ per compression level with its 95% interval;
6. `trend`     the slope of the drop over difficulty per compression level, with its 95% interval and verdict.

Every point that is a metric carries its bootstrap 95% interval: bands along lines over sparsity, error bars
where points are few (bits per weight, ρ, slopes). LMC curves are drawn as measured (lmc records hold no
per-point interval).

Figures use `matplotlib.figure.Figure` directly (no pyplot), so nothing touches a GUI backend or global
state, and the Okabe–Ito palette (distinguishable with common colour-vision deficiencies), with markers and
line styles that also survive greyscale printing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from jdna.analysis.baselines import BaselineTable
from jdna.analysis.difficulty import Analysis, Axis, analyse
from jdna.analysis.stats import SHAPE_RHO
from jdna.errors import JdnaError, unknown_name_error

# Okabe & Ito (2008), ordered so that the first colours are the most distinct on white; yellow goes last.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
TEXT_MARKS = "ox+*#@%&"

KINDS = {"sparsity": 1, "methods": 2, "transfer": 3, "lmc": 4, "spearman": 5, "trend": 6}
KIND_NAMES = {number: name for name, number in KINDS.items()}
TRANSFER_ORDER = ("dense", "freeze", "sparse", "regrow")
TRANSFER_TITLES = {
    "dense": "Dense transfer",
    "freeze": "Dense transfer, small weights frozen",
    "sparse": "Sparse transfer",
    "regrow": "Sparse-to-dense transfer",
}
KIND_LABELS = {"pruned": "pruning", "quantized": "quantization", "lowrank": "low-rank"}

# Panel size in inches: about one column of a two-column paper per panel.
PANEL_WIDTH, PANEL_HEIGHT = 3.3, 2.6
_RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
}


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    lo: list[float] | None = None  # band / error bar, same length as y
    hi: list[float] | None = None
    style: int = 0  # colour, marker and line-style index
    errorbars: bool = False  # draw intervals as error bars (sparse points) rather than a band


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    legend_title: str | None = None
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    invert_x: bool = False
    ylim: tuple[float, float] | None = None


@dataclass
class Chart:
    kind: str
    panels: list[Panel]
    title: str | None = None
    sharey: bool = False  # panels compared side by side share the y axis, labelled once per row


def kind_number(kind: str) -> int:
    """1–6 from a number or a name; unknown kinds raise with the valid ones."""
    if kind.isdigit() and int(kind) in KIND_NAMES:
        return int(kind)
    if kind in KINDS:
        return KINDS[kind]
    raise unknown_name_error("plot kind", kind, [*KINDS, *map(str, KIND_NAMES), "auto"])


def auto_kind(records: Sequence[dict[str, Any]]) -> int:
    """The figure records call for: LMC curves, ρ per level from difficulty records, transfer settings when
    records were fine-tuned, methods on the bits axis when compression kinds are mixed, else sparsity."""
    kinds = {r.get("kind") for r in records}
    if "lmc" in kinds:
        return 4
    if kinds == {"difficulty"}:
        return 5
    transfers = {(r.get("transfer") or {}).get("mode") for r in records if r.get("kind") == "eval"}
    if transfers - {None}:
        return 3
    compressions = {((r.get("model") or {}).get("compression") or {}).get("kind") for r in records}
    if len(compressions - {None, "dense"}) > 1:
        return 2
    return 1


# ---------------------------------------------------------------------------------------------------
# Records → charts


def _axis_title(axis_spec: str) -> str:
    name, _, direction = axis_spec.partition(":harder=")
    if name == "gap":
        return "task (human–LLM gap)"
    words = {"lower": "fewer = harder", "higher": "more = harder"}
    if name in ("train_examples", "train_fraction"):
        words = {"lower": "less = harder", "higher": "more = harder"}
    return f"{name.replace('_', ' ')} ({words.get(direction, direction)})"


def _metric_label(group: dict[str, Any]) -> str:
    metric = group.get("metric")
    return f"Normalised {metric}" if metric else "Normalised performance"


def _ratio_label(group: dict[str, Any]) -> str:
    if group.get("scale") == "chance-corrected":
        return " (above-chance share kept)"
    return " (compressed / dense)"


def _group_title(group: dict[str, Any], with_method: bool = True) -> str:
    task = group["task"] or "across tasks"
    task = task.removeprefix("bigbench:")
    if not with_method:
        return task
    method = f"{KIND_LABELS.get(group['compression_kind'], group['compression_kind'])} ({group['method']})"
    return f"{task}\n{method}"


def _points(group: dict[str, Any]) -> list[str]:
    """Difficulty labels of a group, easiest → hardest, over all its levels."""
    order: list[str] = []
    for level in group["levels"]:
        for label in level["labels"]:
            if label not in order:
                order.append(label)
    return order


def _difficulty_series(group: dict[str, Any], x_of: Any, dense_x: float | None) -> list[Series]:
    """One series per difficulty level of a group: normalised performance against `x_of(level)`, starting at
    the dense model (normalised 1) when `dense_x` is given; bands = the bootstrap 95% intervals."""
    series = []
    for style, label in enumerate(_points(group)):
        xs, ys, lo, hi = [], [], [], []
        banded = flagged = False
        if dense_x is not None:
            xs.append(dense_x), ys.append(1.0), lo.append(1.0), hi.append(1.0)
        for level in group["levels"]:
            if label not in level["labels"]:
                continue
            p = level["labels"].index(label)
            y = level["normalised"][p]
            xs.append(x_of(level)), ys.append(math.nan if y is None else y)
            ci = level["normalised_ci95"][p]
            # Near chance the ratio's interval is unbounded and says nothing: such points are named, not banded.
            if level.get("near_chance") and level["near_chance"][p]:
                flagged, ci = True, None
            banded |= bool(ci)
            lo.append(ci[0] if ci else ys[-1])
            hi.append(ci[1] if ci else ys[-1])
        name = label + (" (dense near chance)" if flagged else "")
        series.append(Series(name.removeprefix("bigbench:"), xs, ys, lo if banded else None, hi if banded else None,
                             style))
    return series


def sparsity_chart(analysis: Analysis | dict[str, Any]) -> Chart:
    """Kind 1: normalised performance vs sparsity, one line per difficulty level, a panel per group."""
    groups = [g for g in _groups(analysis) if g["level_axis"] == "sparsity"]
    if not groups:
        raise JdnaError("no pruned records to plot against sparsity: use --kind methods for quantization/low-rank")
    panels = []
    for group in groups:
        title = _group_title(group)
        if group.get("transfer"):
            title += f", {group['transfer']} transfer"
        panels.append(Panel(title, "Sparsity", _metric_label(group) + _ratio_label(group),
                            _difficulty_series(group, lambda lv: lv["level"], 0.0),
                            legend_title=_axis_title(group["axis"])))
    return Chart("sparsity", panels)


# How each method's bits are counted (docs/methods.md, "The compression axis"), on the figure itself.
BITS_AXIS_LABEL = (
    "Bits per weight (16 = dense)\npruned: 16-bit kept values + 1-bit mask\nquantized: codes + fp16 scales"
    "\nlow-rank: fp16 factors"
)


def methods_chart(analysis: Analysis | dict[str, Any]) -> Chart:
    """Kind 2: every compression method on the bits-per-weight axis, a panel per task and difficulty level."""
    groups = [g for g in _groups(analysis) if not g.get("transfer")]
    if not groups:
        raise JdnaError("no compressed eval records (without fine-tuning) to plot on the bits-per-weight axis")
    # Panels: (task, difficulty label); series: (kind, method).
    panels: dict[tuple[str, str], Panel] = {}
    styles: dict[tuple[str, str], int] = {}
    for group in groups:
        method = (group["compression_kind"], group["method"])
        styles.setdefault(method, len(styles))
        for label in _points(group):
            key = (group["task"] or "across tasks", label)
            if key not in panels:
                axis_name = group["axis"].split(":")[0]
                where = label if axis_name == "gap" else f"{axis_name.replace('_', ' ')} = {label}"
                title = f"{_group_title(group, with_method=False)}\n{where}"
                panels[key] = Panel(title, BITS_AXIS_LABEL, _metric_label(group) + _ratio_label(group),
                                    legend_title="method", invert_x=True)
            xs, ys, lo, hi = [16.0], [1.0], [1.0], [1.0]
            for level in sorted(group["levels"], key=lambda lv: -(lv["bits_per_weight"] or 0)):
                if label in level["labels"] and level["bits_per_weight"] is not None:
                    p = level["labels"].index(label)
                    y = level["normalised"][p]
                    if y is None:  # undefined (e.g. a dense model exactly at chance): nothing to draw
                        continue
                    ci = level["normalised_ci95"][p] or [y, y]
                    xs.append(level["bits_per_weight"]), ys.append(y), lo.append(ci[0]), hi.append(ci[1])
            name = f"{KIND_LABELS.get(method[0], method[0])} ({method[1]})"
            panels[key].series.append(Series(name, xs, ys, lo, hi, style=styles[method], errorbars=True))
    return Chart("methods", list(panels.values()))


def transfer_chart(analysis: Analysis | dict[str, Any]) -> Chart:
    """Kind 3: the transfer settings side by side (a row per task), normalised by dense transfer."""
    groups = [g for g in _groups(analysis) if g.get("transfer")]
    if not groups:
        raise JdnaError("no fine-tuned records (with transfer.mode) to compare transfer settings: use --kind sparsity")
    modes = sorted({g["transfer"] for g in groups},
                   key=lambda m: (TRANSFER_ORDER.index(m) if m in TRANSFER_ORDER else 9, m))
    tasks = sorted({g["task"] or "across tasks" for g in groups})
    panels = []
    for task in tasks:
        for mode in modes:
            chosen = [g for g in groups if (g["task"] or "across tasks") == task and g["transfer"] == mode]
            title = TRANSFER_TITLES.get(mode, f"{mode} transfer")
            if len(tasks) > 1:
                title = f"{task.removeprefix('bigbench:')}\n{title}"
            metric = _metric_label(chosen[0]) if chosen else "Normalised performance"
            panel = Panel(title, "Sparsity", f"{metric} (÷ dense transfer)")
            for group in chosen:
                panel.series.extend(_difficulty_series(group, lambda lv: lv["level"], 0.0))
                panel.legend_title = _axis_title(group["axis"])
            panels.append(panel)
    return Chart("transfer", panels, sharey=True)


def lmc_chart(records: Sequence[dict[str, Any]]) -> Chart:
    """Kind 4: loss (and metric) along the linear path between two fine-tuned models, one line per task.

    Lines are ordered by barrier height, so an easy task's flat curve and a hard task's bump sit side by side.
    """
    lmc = sorted((r for r in records if r.get("kind") == "lmc"), key=lambda r: (r.get("barrier_loss") or 0.0))
    if not lmc:
        raise JdnaError("no lmc records to plot: pass the output of jdna lmc")
    loss = Panel("Loss along the interpolation path", "Interpolation coefficient α", "Loss", legend_title="task")
    metric_name = next((r.get("metric_name") for r in lmc if r.get("metric")), None)
    metric = Panel(f"{str(metric_name).capitalize()} along the interpolation path", "Interpolation coefficient α",
                   str(metric_name), legend_title="task") if metric_name else None
    repeated = len({r["task"] for r in lmc}) < len(lmc)
    for style, record in enumerate(lmc):
        task = str(record["task"]).removeprefix("bigbench:")
        if repeated:  # several pairs of one task: say which models each curve joins
            task += f", {_stem(record.get('model_a'))} ↔ {_stem(record.get('model_b'))}"
        barrier = record.get("barrier_loss")
        label = f"{task} (barrier {barrier:.3f})" if isinstance(barrier, int | float) else task
        loss.series.append(Series(label, list(record["alphas"]), list(record["loss"]), style=style))
        if metric is not None and record.get("metric"):
            barrier_m = record.get("barrier_metric")
            label_m = f"{task} (barrier {barrier_m:.3f})" if isinstance(barrier_m, int | float) else task
            metric.series.append(Series(label_m, list(record["alphas"]), list(record["metric"]), style=style))
    return Chart("lmc", [loss] + ([metric] if metric else []))


def _stem(model: Any) -> str:
    text = str((model or {}).get("path") or (model or {}).get("name") or "?") if isinstance(model, dict) else str(model)
    return text.rsplit("/", 1)[-1].removesuffix(".safetensors")[:20]


def spearman_chart(analysis: Analysis | dict[str, Any]) -> Chart:
    """Kind 5: Spearman ρ(difficulty, drop) per compression level with its 95% interval, a line per group."""
    groups = _groups(analysis)
    panels: dict[str, Panel] = {}
    # One task: name it in the title and keep the legend to methods, so labels fit inside the panel.
    tasks = {g["task"] or "across tasks" for g in groups}
    single = next(iter(tasks)).removeprefix("bigbench:") if len(tasks) == 1 else None
    for style, group in enumerate(groups):
        axis = group["level_axis"]
        if axis not in panels:
            xlabel = "Sparsity" if axis == "sparsity" else "Bits per weight"
            title = "Spearman ρ between difficulty and drop" + (f"\n{single}" if single else "")
            panels[axis] = Panel(title, xlabel, "Spearman ρ (95% CI)",
                                 legend_title="method" if single else "group",
                                 hlines=[(0.0, "ρ = 0"), (SHAPE_RHO, "shape guard")],
                                 invert_x=axis != "sparsity", ylim=(-1.05, 1.1))
        xs, ys, lo, hi = [], [], [], []
        for level in group["levels"]:
            rho = level["spearman"]["value"]
            if rho is None:
                continue
            ci = level["spearman"]["ci95"] or [rho, rho]
            xs.append(level["level"]), ys.append(rho), lo.append(ci[0]), hi.append(ci[1])
        name = _group_title(group).replace("\n", ", ")
        if single:
            name = _group_title(group).split("\n", 1)[1]
        if group.get("transfer"):
            name += f", {group['transfer']} transfer"
        panels[axis].series.append(Series(name, xs, ys, lo, hi, style=style, errorbars=True))
    if not panels:
        raise JdnaError("no groups to plot")
    return Chart("spearman", list(panels.values()))


VERDICT_MARKS = {"monotone": "▲", "not monotone": "▼", "inconclusive": "?"}


def trend_chart(analysis: Analysis | dict[str, Any]) -> Chart:
    """Kind 6: the slope of normalised drop on difficulty rank per compression level (the statistic the verdict
    tests), with its 95% interval; the legend says each level's verdict (▲ monotone, ▼ not monotone,
    ? inconclusive) and a line marks the smallest trend worth detecting."""
    groups = _groups(analysis)
    panels: dict[str, Panel] = {}
    for style, group in enumerate(groups):
        axis = group["level_axis"]
        if axis not in panels:
            xlabel = "Sparsity" if axis == "sparsity" else "Bits per weight"
            min_trend = next((lv["power"]["min_trend"] for lv in group["levels"] if lv.get("power")), None)
            hlines = [(0.0, "no trend")] + ([(min_trend, "min. trend")] if min_trend else [])
            panels[axis] = Panel("Drop per difficulty step", xlabel, "Slope of drop (95% CI)",
                                 legend_title="group: verdicts by level", hlines=hlines, invert_x=axis != "sparsity")
        xs, ys, lo, hi, marks = [], [], [], [], []
        for level in group["levels"]:
            slope = (level.get("slope") or {}).get("value")
            if slope is None:
                continue
            ci = level["slope"]["ci95"] or [slope, slope]
            xs.append(level["level"]), ys.append(slope), lo.append(ci[0]), hi.append(ci[1])
            marks.append(VERDICT_MARKS.get(level.get("verdict", ""), "?"))
        name = _group_title(group).replace("\n", ", ") + ("" if not group.get("transfer")
                                                          else f", {group['transfer']} transfer")
        panels[axis].series.append(Series(f"{name}: {''.join(marks)}", xs, ys, lo, hi, style=style, errorbars=True))
    if not panels:
        raise JdnaError("no groups to plot")
    return Chart("trend", list(panels.values()))


def _groups(analysis: Analysis | dict[str, Any]) -> list[dict[str, Any]]:
    return analysis.groups if isinstance(analysis, Analysis) else list(analysis.get("groups", []))


def build_chart(kind: int, records: Sequence[dict[str, Any]], analysis: Analysis | dict[str, Any] | None) -> Chart:
    """The chart of a kind: LMC from lmc records, the others from an analysis (or a difficulty record)."""
    if kind == 4:
        return lmc_chart(records)
    if analysis is None:
        raise JdnaError(f"--kind {KIND_NAMES[kind]} needs eval or difficulty records")
    return {1: sparsity_chart, 2: methods_chart, 3: transfer_chart, 5: spearman_chart, 6: trend_chart}[kind](analysis)


# ---------------------------------------------------------------------------------------------------
# Charts → matplotlib


def figure_size(n_panels: int) -> tuple[float, float, int, int]:
    """(width, height) in inches and the (rows, cols) grid for a number of panels."""
    cols = min(n_panels, 4 if n_panels == 4 else 3)
    rows = math.ceil(n_panels / cols)
    return PANEL_WIDTH * cols, PANEL_HEIGHT * rows + 0.1, rows, cols


def render(chart: Chart) -> Figure:
    """A matplotlib Figure of the chart: a grid of panels, each with labelled axes and a legend."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        width, height, rows, cols = figure_size(len(chart.panels))
        figure = Figure(figsize=(width, height), layout="constrained")
        axes = figure.subplots(rows, cols, squeeze=False, sharey="row" if chart.sharey else False)
        first_labels = [s.label for s in chart.panels[0].series]
        for index, panel in enumerate(chart.panels):
            ax = axes[index // cols][index % cols]
            _draw_panel(ax, panel)
            if chart.sharey and index % cols:
                ax.set_ylabel("")
            # A legend repeated in every panel only adds clutter; show it again only when the lines differ.
            if panel.series and (index == 0 or [s.label for s in panel.series] != first_labels):
                ax.legend(title=panel.legend_title, frameon=False, loc="best")
        for index in range(len(chart.panels), rows * cols):
            axes[index // cols][index % cols].set_visible(False)
        if chart.title:
            figure.suptitle(chart.title)
    return figure


def _fit_axis_label(label: str, width: int = 38) -> str:
    """A long y label broken before its parenthesis: a panel is shorter than the label otherwise is."""
    if len(label) > width and " (" in label:
        head, _, tail = label.partition(" (")
        return f"{head}\n({tail}"
    return label


def _draw_panel(ax: Any, panel: Panel) -> None:
    for y, label in panel.hlines:
        ax.axhline(y, color="0.55", linewidth=0.8, linestyle=":" if y else "-", zorder=0)
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=6.5,
                    color="0.4")
    for series in panel.series:
        color = OKABE_ITO[series.style % len(OKABE_ITO)]
        marker = MARKERS[series.style % len(MARKERS)]
        linestyle = LINESTYLES[(series.style // len(OKABE_ITO)) % len(LINESTYLES)]
        if series.errorbars and series.lo is not None and series.hi is not None:
            # A percentile interval of a ratio can, with few items, sit just beside its point estimate; the bar
            # then stops at the point instead of failing to draw.
            below = [max(0.0, y - lo) for y, lo in zip(series.y, series.lo)]
            above = [max(0.0, hi - y) for y, hi in zip(series.y, series.hi)]
            ax.errorbar(series.x, series.y, yerr=[below, above], color=color, marker=marker, linestyle=linestyle,
                        capsize=2.5, label=series.label)
        else:
            ax.plot(series.x, series.y, color=color, marker=marker, linestyle=linestyle, label=series.label)
            if series.lo is not None and series.hi is not None:
                ax.fill_between(series.x, series.lo, series.hi, color=color, alpha=0.18, linewidth=0)
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(_fit_axis_label(panel.ylabel))
    if panel.invert_x:
        ax.invert_xaxis()
    if panel.ylim:
        ax.set_ylim(*panel.ylim)
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)


# ---------------------------------------------------------------------------------------------------
# Charts → text


def text_chart(chart: Chart, width: int = 56, height: int = 12) -> str:
    """A compact terminal rendering: each panel as a character grid with a legend of marks."""
    blocks = [text_panel(panel, width, height) for panel in chart.panels]
    return "\n\n".join(blocks)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def text_panel(panel: Panel, width: int = 56, height: int = 12) -> str:
    points = [(x, y) for s in panel.series for x, y in zip(s.x, s.y) if math.isfinite(y)]
    lines = [panel.title.replace("\n", " — ")]
    if not points:
        return "\n".join(lines + ["  (no data)"])
    xs, ys = [p[0] for p in points], [p[1] for p in points] + [y for y, _ in panel.hlines]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]

    def col(x: float) -> int:
        position = (x - x0) / (x1 - x0)
        if panel.invert_x:
            position = 1 - position
        return min(width - 1, max(0, round(position * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, max(0, round((y1 - y) / (y1 - y0) * (height - 1))))

    for y, _ in panel.hlines:
        for c in range(width):
            grid[row(y)][c] = "-"
    for series in panel.series:
        mark = TEXT_MARKS[series.style % len(TEXT_MARKS)]
        pairs = [(x, y) for x, y in zip(series.x, series.y) if math.isfinite(y)]
        pairs.sort(key=lambda p: col(p[0]))
        for (xa, ya), (xb, yb) in zip(pairs, pairs[1:]):
            ca, cb = col(xa), col(xb)
            for c in range(ca + 1, cb):
                y = ya + (yb - ya) * (c - ca) / (cb - ca)
                if grid[row(y)][c] in (" ", "-"):
                    grid[row(y)][c] = "."
        for x, y in pairs:
            grid[row(y)][col(x)] = mark
    label_width = max(len(_fmt(y1)), len(_fmt(y0)))
    for r, cells in enumerate(grid):
        label = _fmt(y1) if r == 0 else _fmt(y0) if r == height - 1 else ""
        lines.append(f"{label:>{label_width}} |{''.join(cells)}")
    left, right = (x1, x0) if panel.invert_x else (x0, x1)
    lines.append(" " * label_width + " +" + "-" * width)
    axis = f"{_fmt(left)}{panel.xlabel:^{max(0, width - len(_fmt(left)) - len(_fmt(right)))}}{_fmt(right)}"
    lines.append(" " * (label_width + 2) + axis)
    lines.append(f"y: {panel.ylabel}" + (f"   lines: {panel.legend_title}" if panel.legend_title else ""))
    for series in panel.series:
        lines.append(f"  {TEXT_MARKS[series.style % len(TEXT_MARKS)]} {series.label}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# One function per kind: records → Figure


def analysis_of(
    records: Sequence[dict[str, Any]],
    axes: Sequence[Axis] | None = None,
    baselines: BaselineTable | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    **options: Any,
) -> Analysis | dict[str, Any] | None:
    """What kinds 1, 2, 3 and 5 draw from: the analysis of eval records, or the groups of difficulty
    records (which already hold it); None when there are neither."""
    evals = [r for r in records if r.get("kind") == "eval"]
    done = [r for r in records if r.get("kind") == "difficulty"]
    if evals and done:
        raise JdnaError("got both eval and difficulty records: plot one or the other")
    if evals:
        return analyse(evals, axes=axes, baselines=baselines, n_resamples=n_resamples, seed=seed, **options)
    if done:
        return {"groups": [g for r in done for g in r["groups"]]}
    return None


def plot_records(kind: int | str, records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """The Figure of a kind (number, name or "auto") from records; `analysis_options` go to `analyse`."""
    number = auto_kind(records) if kind == "auto" else kind if isinstance(kind, int) else kind_number(kind)
    analysis = None if number == 4 else analysis_of(records, **analysis_options)
    return render(build_chart(number, records, analysis))


def plot_sparsity(records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """Kind 1 (Figs 1–6): normalised performance vs sparsity, one line per difficulty level."""
    return plot_records(1, records, **analysis_options)


def plot_methods(records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """Kind 2 (Fig. 7): pruning vs quantization vs low-rank on the bits-per-weight axis."""
    return plot_records(2, records, **analysis_options)


def plot_transfer(records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """Kind 3 (Figs 8–9): the transfer settings side by side."""
    return plot_records(3, records, **analysis_options)


def plot_lmc(records: Sequence[dict[str, Any]]) -> Figure:
    """Kind 4 (Fig. 10): LMC curves of easy and hard tasks."""
    return plot_records(4, records)


def plot_spearman(records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """Kind 5: Spearman ρ per compression level with its 95% interval."""
    return plot_records(5, records, **analysis_options)


def plot_trend(records: Sequence[dict[str, Any]], **analysis_options: Any) -> Figure:
    """Kind 6: the slope of the drop over difficulty per compression level, with its interval and verdict."""
    return plot_records(6, records, **analysis_options)
