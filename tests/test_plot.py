"""jdna plot: every kind renders from fixture records to a non-empty image of the expected size and labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest

from jdna.analysis import analyse
from jdna.analysis.plots import (
    OKABE_ITO,
    auto_kind,
    figure_size,
    plot_lmc,
    plot_methods,
    plot_sparsity,
    plot_spearman,
    plot_transfer,
    plot_trend,
    sparsity_chart,
    text_chart,
)
from jdna.errors import JdnaError
from tests.cli import run
from tests.test_analysis import sweep, transfer_sweep, write_records


def lmc_records() -> list[dict[str, Any]]:
    alphas = [i / 10 for i in range(11)]
    records = []
    for task, bump in (("sst2", 0.02), ("bigbench:logical_deduction/five_objects", 0.4)):
        loss = [0.3 + bump * 4 * a * (1 - a) for a in alphas]
        records.append({"kind": "lmc", "path": f"runs/lmc/{task[:4]}.json", "task": task, "model_a": "a",
                        "model_b": "b", "alphas": alphas, "loss": loss, "metric": [0.9 - x / 3 for x in loss],
                        "metric_name": "accuracy", "barrier_loss": bump, "barrier_metric": bump / 3, "n": 100})
    return records


def labels(figure: Any) -> list[tuple[str, str]]:
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in figure.axes if ax.get_visible()]


def test_each_kind_returns_a_labelled_figure() -> None:
    pruned = sweep(seeds=2)
    figure = plot_sparsity(pruned, n_resamples=100)
    (ax,) = figure.axes
    assert ax.get_xlabel() == "Sparsity" and ax.get_ylabel().startswith("Normalised acc")
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "shots (fewer = harder)"
    assert [t.get_text() for t in legend.get_texts()] == ["5", "3", "1", "0"]
    assert ax.lines[0].get_color().upper() == OKABE_ITO[0]
    assert ax.collections, "bootstrap intervals are drawn as bands"
    # The band is the level's interval: its vertices at s=0.5 span the difficulty level's normalised_ci95.
    analysis = analyse(pruned, n_resamples=100)
    ci = analysis.groups[0]["levels"][1]["normalised_ci95"][0]
    band = ax.collections[0].get_paths()[0].vertices
    at = band[np.isclose(band[:, 0], 0.5)][:, 1]
    assert min(at) == pytest.approx(ci[0]) and max(at) == pytest.approx(ci[1])
    assert plot_sparsity(sweep(seeds=1), n_resamples=50).axes[0].collections  # one seed: item intervals
    no_items = sweep(seeds=1)
    for record in no_items:
        record.pop("per_item")
    assert not plot_sparsity(no_items, n_resamples=50).axes[0].collections  # nothing resampled: no band

    mixed = sweep(seeds=1, kinds=("pruned", "quantized", "lowrank"))
    figure = plot_methods(mixed, n_resamples=50)
    assert len(figure.axes) == 4 and all(x.startswith("Bits per weight") for x, _ in labels(figure))
    texts = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert texts == ["pruning (magnitude)", "quantization (gptq)", "low-rank (svd)"]
    assert figure.axes[0].xaxis_inverted()
    assert figure.axes[0].containers, "methods: error bars at each bits-per-weight point"

    figure = plot_transfer(transfer_sweep(), n_resamples=50)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["Dense transfer", "Dense transfer, small weights frozen", "Sparse transfer",
                      "Sparse-to-dense transfer"]
    assert figure.axes[0].get_ylabel().endswith("(÷ dense transfer)") and figure.axes[1].get_ylabel() == ""

    figure = plot_lmc(lmc_records())
    assert labels(figure) == [("Interpolation coefficient α", "Loss"), ("Interpolation coefficient α", "accuracy")]
    assert "barrier 0.400" in figure.axes[0].get_legend().get_texts()[1].get_text()

    figure = plot_spearman(mixed, n_resamples=50)
    assert labels(figure) == [("Sparsity", "Spearman ρ (95% CI)"), ("Bits per weight", "Spearman ρ (95% CI)")]

    figure = plot_trend(pruned, n_resamples=100)
    (ax,) = figure.axes
    assert ax.get_ylabel() == "Slope of drop (95% CI)" and ax.containers
    assert ax.get_legend().get_texts()[0].get_text().endswith(": ▲▲▲")  # monotone at all three levels


@pytest.mark.parametrize(
    ("kind", "fixture", "panels"),
    [("sparsity", "pruned", 1), ("methods", "mixed", 4), ("transfer", "transfer", 4), ("lmc", "lmc", 2),
     ("spearman", "mixed", 2), ("trend", "mixed", 2)],
)
def test_cli_renders_png_of_expected_size(tmp_path: Path, kind: str, fixture: str, panels: int) -> None:
    records = {"pruned": lambda: sweep(seeds=2), "mixed": lambda: sweep(seeds=1, kinds=("pruned", "quantized",
                                                                                        "lowrank")),
               "transfer": transfer_sweep, "lmc": lmc_records}[fixture]()
    directory = write_records(tmp_path / "runs", records)
    out = tmp_path / f"{kind}.png"
    result = run("plot", str(directory), "-o", str(out), "--kind", kind, "--resamples", "100", "--dpi", "100")
    assert result.code == 0, result.stderr
    record = result.record
    assert record["kind"] == "plot" and record["plot_kind"] == kind and record["panels"] == panels
    image = mpimg.imread(out)
    width, height, _, _ = figure_size(panels)
    assert image.shape[:2] == (round(height * 100), round(width * 100)) == (record["height_px"], record["width_px"])
    assert image.std() > 0.05  # not blank


def test_svg_and_pdf_and_explicit_kind_numbers(tmp_path: Path) -> None:
    directory = write_records(tmp_path / "runs", sweep(seeds=1))
    for suffix, magic in (("svg", b"<?xml"), ("pdf", b"%PDF")):
        out = tmp_path / f"fig.{suffix}"
        result = run("plot", str(directory), "-o", str(out), "--kind", "1", "--resamples", "20")
        assert result.code == 0, result.stderr
        assert out.read_bytes().startswith(magic) and out.stat().st_size > 1000


def test_plot_from_a_difficulty_record(tmp_path: Path) -> None:
    directory = write_records(tmp_path / "runs", sweep(seeds=1, kinds=("pruned", "quantized")))
    difficulty = run("difficulty", str(directory), "--resamples", "50").record
    assert auto_kind([difficulty]) == 5
    out = tmp_path / "rho.png"
    result = run("plot", "-o", str(out), stdin=json.dumps(difficulty) + "\n")
    assert result.code == 0, result.stderr
    assert result.record["plot_kind"] == "spearman"
    result = run("plot", difficulty["path"], "--kind", "methods", "-o", str(tmp_path / "m.png"))
    assert result.code == 0, result.stderr


def test_auto_kind_picks_from_records() -> None:
    assert auto_kind(sweep(seeds=1)) == 1
    assert auto_kind(sweep(seeds=1, kinds=("pruned", "quantized"))) == 2
    assert auto_kind(transfer_sweep()) == 3
    assert auto_kind(lmc_records()) == 4


def test_text_chart_without_output(tmp_path: Path) -> None:
    chart = sparsity_chart(analyse(sweep(seeds=1), n_resamples=20))
    text = text_chart(chart)
    assert "Sparsity" in text and "shots (fewer = harder)" in text and "o 5" in text
    directory = write_records(tmp_path / "runs", sweep(seeds=1))
    result = run("plot", str(directory), "--resamples", "20")
    assert result.code == 0 and result.record["path"] is None
    assert "|" in result.stderr and "Sparsity" in result.stderr


def test_bad_plot_input_exits_2(tmp_path: Path) -> None:
    directory = write_records(tmp_path / "runs", sweep(seeds=1))
    result = run("plot", str(directory), "--kind", "violin", "-o", str(tmp_path / "x.png"))
    assert result.code == 2 and "unknown plot kind 'violin'" in result.stderr
    result = run("plot", str(directory), "-o", str(tmp_path / "x.jpg"))
    assert result.code == 2 and ".png, .svg or .pdf" in result.stderr
    result = run("plot", str(directory), "--kind", "transfer", "-o", str(tmp_path / "x.png"))
    assert result.code == 2 and "no fine-tuned records" in result.stderr
    no_dense = write_records(tmp_path / "nd", [r for r in sweep(seeds=1)
                                               if r["model"]["compression"]["method"] != "dense"])
    result = run("plot", str(no_dense), "-o", str(tmp_path / "x.png"))
    assert result.code == 2 and "no dense baseline" in result.stderr
    with pytest.raises(JdnaError, match="no lmc records"):
        plot_lmc(sweep(seeds=1))


def test_long_y_labels_break_before_their_parenthesis() -> None:
    from jdna.analysis.plots import _fit_axis_label

    assert _fit_axis_label("Normalised performance (compressed / dense)") == (
        "Normalised performance\n(compressed / dense)"
    )
    assert _fit_axis_label("Normalised acc (compressed / dense)") == "Normalised acc (compressed / dense)"
    assert _fit_axis_label("A label far longer than any panel is tall, without brackets") == (
        "A label far longer than any panel is tall, without brackets"
    )


def test_options_plots_are_chance_corrected_and_name_near_chance_levels() -> None:
    from tests.test_analysis import options_records

    figure = plot_sparsity(options_records(dense_acc=(0.85, 0.7, 0.6, 0.21)), n_resamples=50)
    (ax,) = figure.axes
    assert "above-chance share kept" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["2", "3", "4", "5 (dense near chance)"]
    assert len(ax.collections) == 3  # no band where the interval is meaningless
    # A dense model exactly at chance leaves the chance-corrected value undefined: every kind still draws.
    at_chance = options_records(dense_acc=(0.5, 0.7, 0.6, 0.5))
    for record in options_records(dense_acc=(0.5, 0.7, 0.6, 0.5)):
        if record["model"]["compression"]["method"] != "dense":
            record["model"]["compression"] = {"kind": "quantized", "method": "rtn", "bits_per_weight": 4.0}
            record["id"] += "-q"
            at_chance.append(record)
    for draw in (plot_sparsity, plot_methods, plot_spearman, plot_trend):
        assert draw(at_chance, n_resamples=20).axes
