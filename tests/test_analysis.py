"""jdna difficulty: record loading, normalisation, difficulty axes, the statistics and the CLI.

Records are synthesised following docs/records.md, with per-item 0/1 values whose correct items are nested
(a worse model gets a subset of the better one's items right), as pruning a model typically behaves.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jdna.analysis import analyse, kendall_tau_b, load_records, parse_axis, spearman_rho
from jdna.analysis.baselines import BaselineTable, human_gap, read_baselines, shipped_baselines
from jdna.analysis.difficulty import chance_of, match_dense, normalise
from jdna.analysis.stats import Point, holm, item_draws, trend, upper_tail, violations
from jdna.errors import JdnaError
from jdna.io import canonical_json, sha256_text
from tests.cli import run

TASK = "bigbench:logical_deduction/five_objects"


def eval_record(
    task: str = TASK,
    *,
    acc: float,
    n: int = 200,
    kind: str | None = None,
    method: str = "magnitude",
    level: float = 0.0,
    shots: int | None = 0,
    options: int | None = None,
    seed: int = 0,
    train_examples: int | None = None,
    mode: str | None = None,
    base: str = "smollm2-135m",
    model_seed: int = 0,
    metric: str = "acc",
) -> dict[str, Any]:
    """An eval record as `jdna eval` writes it (full file form, with per_item)."""
    if kind is None:
        compression: dict[str, Any] = {"method": "dense", "sparsity": 0.0, "bits_per_weight": 16.0}
    elif kind == "pruned":
        compression = {"kind": "pruned", "method": method, "sparsity": level, "bits_per_weight": 16 * (1 - level) + 1,
                       "target_sparsity": level}
    else:  # quantized / lowrank sit on the bits-per-weight axis
        compression = {"kind": kind, "method": method, "sparsity": 0.0, "bits_per_weight": level,
                       "target_sparsity": None}
    correct = int(round(acc * n))
    order = np.random.default_rng(0).permutation(n)
    values = np.zeros(n)
    values[order[:correct]] = 1.0
    knobs = {"shots": shots, "options": options, "context_tokens": None, "train_fraction": None,
             "train_examples": None, "limit": None, "split": "test", "seed": seed}
    transfer = None
    if mode is not None:
        transfer = {"mode": mode, "train_examples": train_examples, "artifact": "runs/finetuned/x.safetensors"}
    model_id = sha256_text(canonical_json([base, compression, model_seed, mode]))
    body = {
        "task": task, "task_kind": "multiple_choice", "knobs": knobs, "primary_metric": metric,
        "metrics": {metric: {"value": correct / n, "ci95": [max(0.0, correct / n - 0.1), min(1.0, correct / n + 0.1)]}},
        "higher_is_better": True, "n": n,
        "model": {"name": f"runs/{kind or 'dense'}/{model_id[:20]}.safetensors", "id": model_id, "base": base,
                  "base_sha256": "0" * 64, "lineage": [], "compression": compression},
        "transfer": transfer,
    }
    record_id = sha256_text(canonical_json(body))
    return {
        "kind": "eval", "path": f"runs/eval/{record_id[:20]}.json", "id": record_id, "cached": False, **body,
        "per_item": {"ids": [f"{task}/{i}" for i in range(n)], "values": values.tolist()},
        "timing": {"seconds": 1.0, "items_per_second": float(n)},
        "versions": {"jdna": "0.1.0", "torch": "2", "transformers": "4"},
    }


SHOTS = (5, 3, 1, 0)  # easiest → hardest (fewer shots = harder)
DENSE_BY_SHOTS = {5: 0.80, 3: 0.75, 1: 0.70, 0: 0.65}


def monotone_drop(level: float, rank: int) -> float:
    """Normalised drop that grows with sparsity and with difficulty rank (0 = easiest)."""
    return level * (0.1 + 0.25 * rank)


def sweep(seeds: int = 2, kinds: tuple[str, ...] = ("pruned",), shuffle: bool = False) -> list[dict[str, Any]]:
    """A small study: one task, four shot counts, dense + compressed at several levels, `seeds` knob seeds."""
    records = []
    ranks = list(range(len(SHOTS)))
    if shuffle:
        ranks = [2, 0, 3, 1]
    for seed in range(seeds):
        for shots in SHOTS:
            dense = DENSE_BY_SHOTS[shots] + 0.01 * seed
            records.append(eval_record(acc=dense, shots=shots, seed=seed))
            rank = ranks[SHOTS.index(shots)]
            if "pruned" in kinds:
                for level in (0.2, 0.5, 0.7):
                    acc = dense * (1 - monotone_drop(level, rank))
                    records.append(eval_record(acc=acc, kind="pruned", level=level, shots=shots, seed=seed))
            for kind, method in (("quantized", "gptq"), ("lowrank", "svd")):
                if kind in kinds:
                    for bits in (8.0, 4.0, 3.0):
                        acc = dense * (1 - monotone_drop((16 - bits) / 20, rank) * (0.5 if kind == "quantized" else 1))
                        records.append(eval_record(acc=acc, kind=kind, method=method, level=bits, shots=shots,
                                                   seed=seed))
    return records


def transfer_sweep() -> list[dict[str, Any]]:
    """Fine-tuned records: four transfer settings × three training-set sizes × two sparsities."""
    records = []
    for examples, dense in ((2000, 0.90), (500, 0.85), (100, 0.75)):
        records.append(eval_record("sst2", acc=dense, shots=None, mode="dense", train_examples=examples))
        rank = {2000: 0, 500: 1, 100: 2}[examples]
        for mode, factor in (("freeze", 0.3), ("sparse", 1.0), ("regrow", 0.6), ("dense", 0.1)):
            for level in (0.3, 0.6):
                acc = dense * (1 - factor * monotone_drop(level, rank))
                records.append(eval_record("sst2", acc=acc, kind="pruned", level=level, shots=None, mode=mode,
                                           train_examples=examples))
    return records


def write_records(directory: Path, records: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for record in records:
        (directory / Path(record["path"]).name).write_text(json.dumps(record))
    return directory


# ---------------------------------------------------------------------------------------------------
# Statistics by hand


def test_rank_correlations_of_monotone_reversed_and_tied_sets() -> None:
    assert spearman_rho([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Shuffled: y = (2, 4, 1, 3). Spearman: d = (-1,-2,2,1), 1 - 6·10/(4·15) = 0.0; Kendall: C = 3, D = 3 → 0.
    assert spearman_rho([1, 2, 3, 4], [2, 4, 1, 3]) == pytest.approx(0.0)
    assert kendall_tau_b([1, 2, 3, 4], [2, 4, 1, 3]) == pytest.approx(0.0)
    # Ties: x = (1,2,2,3), y = (1,2,3,4). Pairs: 5 concordant, 0 discordant, one tie in x only:
    # τ-b = 5 / sqrt((6 - 1)·6) = 0.9129 (scipy.stats.kendalltau agrees).
    assert kendall_tau_b([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    # Spearman with ties = Pearson of average ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4) = 0.9487.
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(kendall_tau_b([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman_rho([1, 2, 3], [5, 5, 5]))


def test_violations_holm_and_tail_probabilities() -> None:
    assert violations([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4]) == []
    assert violations([0, 1, 2], [0.1, 0.3, 0.2]) == [(1, 2)]
    assert violations([0, 1, 1], [0.1, 0.3, 0.2]) == []  # equally hard: no order to violate
    # Holm by hand: sorted p = .01, .02, .04 → 3·.01, max(.03, 2·.02), max(.04, 1·.04); NaN is not a test.
    assert holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx([0.04, 0.03, math.nan, 0.04], nan_ok=True)
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    # Pure item noise is a normal tail; pure seed noise a Student t tail (t_{0.975} of 1, 2 and 4 df).
    assert upper_tail(1.959964, 1.0, 0.0, 0) == pytest.approx(0.025, abs=1e-6)
    assert upper_tail(2 * 1.644854, 4.0, 0.0, 0) == pytest.approx(0.05, abs=1e-6)
    for df, quantile in ((1, 12.7062), (2, 4.30265), (4, 2.77645)):
        assert upper_tail(quantile, 0.0, 1.0, df) == pytest.approx(0.025, abs=2e-4)
    # Both: wider than either part alone.
    assert upper_tail(2.0, 1.0, 0.0, 0) < upper_tail(2.0, 0.5, 0.5, 3) < upper_tail(2.0, 0.0, 1.0, 3)


def test_trend_slope_interval_and_power_by_hand() -> None:
    rng = np.random.default_rng(0)
    estimates = np.array([0.95, 0.90, 0.88, 0.80])
    sd, b = 0.01, 20000
    points = [Point(float(v), v + sd * rng.standard_normal(b), [float(v)], items=400) for v in estimates]
    t = trend(points, b, np.random.default_rng(1), min_trend=0.03)
    drops = 1 - estimates
    assert t.slope == pytest.approx(np.polyfit(np.arange(4), drops, 1)[0])  # least-squares slope on rank
    # Independent point noise: var(slope) = sd² Σ w², w = (r − r̄)/Σ(r − r̄)² = (−1.5, −.5, .5, 1.5)/5.
    se = sd * math.sqrt((1.5**2 * 2 + 0.5**2 * 2) / 25)
    assert t.power["slope_se"] == pytest.approx(se, rel=0.03)
    assert t.p_increase == pytest.approx(0.5 * math.erfc(t.slope / se / math.sqrt(2)), rel=0.2)
    assert t.slope_ci[0] == pytest.approx(t.slope - 1.96 * se, abs=3e-4)
    mde = (1.959964 + 0.841621) * t.power["slope_se"]
    assert t.power["min_detectable_trend"] == pytest.approx(mde)
    # Item noise shrinks as 1/items: the items that bring the detectable trend down to 0.03.
    assert t.power["items_needed"] == math.ceil(400 * (mde / 0.03) ** 2)
    assert t.power["underpowered"] == (mde > 0.03)
    # The pair (0.90 → 0.88) is in order; reverse it and that pair carries the evidence.
    assert t.p_reversed[1] > 0.5
    # Ties are rounded before ranking: float noise does not make a violation or change ρ.
    tied = trend([Point(0.9, None, [0.9, 0.91]), Point(0.8, None, [0.8, 0.81]),
                  Point(0.8 + 1e-13, None, [0.8, 0.81]), Point(0.7, None, [0.7, 0.71])], 100, rng)
    assert tied.violations == [] and tied.rho == pytest.approx(spearman_rho([0, 1, 2, 3], [1, 2, 2, 3]))


def test_few_seeds_keep_coverage() -> None:
    """Seed noise only, 2 seeds per level: the t-based seed term keeps the slope interval's coverage near 95%
    (resampling 2 seeds with replacement would give a far narrower interval) and false trends rare."""
    rng = np.random.default_rng(0)
    covered = monotone = 0
    runs = 200
    for run_index in range(runs):
        points = []
        for _ in range(4):
            replicates = list(0.9 + 0.03 * rng.standard_normal(2))
            points.append(Point(float(np.mean(replicates)), None, replicates))
        t = trend(points, 400, np.random.default_rng(run_index))
        covered += t.slope_ci[0] <= 0.0 <= t.slope_ci[1]
        monotone += t.p_increase <= 0.025
    assert 0.92 <= covered / runs <= 0.98 and monotone / runs <= 0.05


def test_item_draws_are_paired_and_seeded_by_content() -> None:
    from jdna.analysis.stats import item_data

    a = eval_record(acc=0.8, n=50)
    b = eval_record(acc=0.6, n=50, kind="pruned", level=0.5)
    a["per_item"]["ids"].reverse(), a["per_item"]["values"].reverse()  # same items, other order
    da, db = item_data(a, 0.8), item_data(b, 0.6)
    draws = item_draws([da, db], 200, seed=1)
    assert draws.shape == (2, 200)
    # b's correct items are a subset of a's, so with shared draws b never beats a.
    assert (draws[1] <= draws[0]).all() and draws[0].std() > 0
    # The draw depends on the item ids and the seed only: alone or in company, in any order.
    assert np.array_equal(item_draws([db], 200, seed=1)[0], draws[1])
    assert not np.array_equal(item_draws([db], 200, seed=2)[0], draws[1])
    # Restricting to common items keeps each item's value.
    sub = db.subset(db.ids[:10])
    assert sub.ids == db.ids[:10] and np.array_equal(sub.values, db.values[:10])


def test_corpus_metrics_are_rescored_from_predictions() -> None:
    from jdna.analysis.stats import item_data
    from jdna.metrics import matthews_corrcoef

    rng = np.random.default_rng(3)
    golds = rng.integers(0, 2, 100)
    predictions = np.where(rng.random(100) < 0.8, golds, 1 - golds)
    mcc = matthews_corrcoef(predictions, golds)
    record = eval_record("cola", acc=0.5, n=100, shots=None, metric="matthews")
    record["task_kind"] = "classification"
    record["metrics"] = {"matthews": {"value": mcc, "ci95": None}}
    record["per_item"].update(values=(predictions == golds).astype(float).tolist(),
                              predictions=predictions.tolist(), golds=golds.tolist())
    data = item_data(record, mcc)
    assert data is not None
    samples = item_draws([data], 300, 0)[0]
    assert samples.std() > 0 and np.quantile(samples, 0.025) < mcc < np.quantile(samples, 0.975)
    record["per_item"].pop("predictions")  # values are correctness, not MCC: not resampled
    assert item_data(record, mcc) is None


def test_normalisation_directions() -> None:
    assert normalise(0.4, 0.8, True) == pytest.approx(0.5)
    assert normalise(20.0, 10.0, False) == pytest.approx(0.5)  # perplexity doubled: half as good
    with pytest.raises(JdnaError, match="dense model scores 0"):
        normalise(0.4, 0.0, True)


def test_perplexity_records_normalise_inverted_and_bootstrap_over_tokens() -> None:
    def ppl_record(level: float, context: int | None, scale: float) -> dict[str, Any]:
        record = eval_record("file:notes.txt", acc=0.5, n=40, kind="pruned" if level else None, level=level,
                             shots=None)
        nll = [scale * (1.0 + 0.1 * (i % 7)) for i in range(40)]
        tokens = [10 + i % 3 for i in range(40)]
        value = math.exp(sum(nll) / sum(tokens))
        record.update(primary_metric="perplexity", higher_is_better=False, task_kind="perplexity",
                      metrics={"perplexity": {"value": value, "ci95": None}})
        record["knobs"]["context_tokens"] = context
        record["id"] = sha256_text(canonical_json([level, context]))
        record["per_item"] = {"ids": record["per_item"]["ids"], "nll": nll, "tokens": tokens}
        return record

    records = []
    for context, harder in ((None, 0), (256, 1), (64, 2)):
        records.append(ppl_record(0.0, context, 3.0))
        records.append(ppl_record(0.5, context, 3.0 * (1.05 + 0.05 * harder)))
    result = analyse(records, n_resamples=100)
    level = result.groups[0]["levels"][0]
    assert level["labels"] == ["all", "256", "64"]  # null context = full context = easiest
    assert all(0 < v < 1 for v in level["normalised"])  # perplexity rose: dense/compressed < 1
    assert level["spearman"]["value"] == pytest.approx(1.0) and not result.notes


# ---------------------------------------------------------------------------------------------------
# The analysis


def test_perfectly_monotone_sweep_is_monotone_at_every_level() -> None:
    result = analyse(sweep(), n_resamples=200)
    assert any("2–4 seeds" in note and "5 or more seeds" in note for note in result.notes)
    (group,) = result.groups
    assert group["task"] == TASK and group["compression_kind"] == "pruned" and group["axis"] == "shots:harder=lower"
    assert [lv["level"] for lv in group["levels"]] == [0.2, 0.5, 0.7]
    for level in group["levels"]:
        assert level["difficulties"] == [5, 3, 1, 0]  # easiest → hardest
        assert level["seeds"] == [2, 2, 2, 2]
        assert level["spearman"]["value"] == pytest.approx(1.0)
        assert level["kendall"]["value"] == pytest.approx(1.0)
        assert level["violations"] == []
        assert level["verdict"] == "monotone"
        assert level["spearman"]["ci95"][0] > 0
        expected = [1 - monotone_drop(level["level"], r) for r in range(4)]
        assert level["normalised"] == pytest.approx(expected, abs=0.01)
        assert all(lo <= v <= hi for v, (lo, hi) in zip(level["normalised"], level["normalised_ci95"]))


def test_shuffled_sweep_is_not_monotone_and_lists_violations() -> None:
    result = analyse(sweep(shuffle=True), n_resamples=200)
    level = result.groups[0]["levels"][-1]
    assert level["spearman"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert level["verdict"] == "not monotone"
    # Ranks by shots 5,3,1,0 are 2,0,3,1: e.g. 5 shots (easiest) lost more than 3 shots.
    assert [5, 3] in level["violations"] and [1, 0] in level["violations"]


def test_methods_are_grouped_apart() -> None:
    result = analyse(sweep(seeds=1, kinds=("pruned", "quantized", "lowrank")), n_resamples=100)
    kinds = [(g["compression_kind"], g["method"], g["level_axis"]) for g in result.groups]
    assert kinds == [("pruned", "magnitude", "sparsity"), ("quantized", "gptq", "bits_per_weight"),
                     ("lowrank", "svd", "bits_per_weight")]
    assert [lv["level"] for lv in result.groups[1]["levels"]] == [3.0, 4.0, 8.0]


def test_missing_dense_baseline_is_named() -> None:
    records = [r for r in sweep(seeds=1) if not (r["model"]["compression"]["method"] == "dense"
                                                 and r["knobs"]["shots"] == 3)]
    with pytest.raises(JdnaError, match=r'no dense baseline for task .*five_objects with knobs .*"shots":3') as info:
        analyse(records, n_resamples=10)
    assert "jdna eval smollm2-135m" in str(info.value) and "--shots 3" in str(info.value)


def test_axis_override_flips_direction() -> None:
    result = analyse(sweep(seeds=1), axes=[parse_axis("shots:harder=higher")], n_resamples=100)
    level = result.groups[0]["levels"][0]
    assert level["difficulties"] == [0, 1, 3, 5]
    assert level["spearman"]["value"] == pytest.approx(-1.0)
    assert level["verdict"] == "not monotone"
    with pytest.raises(JdnaError, match="harder=lower"):
        parse_axis("shots:harder=sideways")
    with pytest.raises(JdnaError, match="did you mean 'shots'"):
        parse_axis("shot")
    assert parse_axis("my_knob:harder=higher").name == "my_knob"


def test_two_varying_knobs_need_an_axis() -> None:
    records = sweep(seeds=1) + [eval_record(acc=0.7, options=3), eval_record(acc=0.6, options=3, kind="pruned",
                                                                              level=0.5)]
    with pytest.raises(JdnaError, match="shots and options both vary"):
        analyse(records, n_resamples=10)
    result = analyse(records, axes=[parse_axis("options")], n_resamples=10)
    assert {g["axis"] for g in result.groups} == {"options:harder=higher"}


def test_across_tasks_uses_the_human_gap() -> None:
    records = []
    for task, dense in (("sst2", 0.90), ("rte", 0.60), ("cola", 0.30)):
        metric = "matthews" if task == "cola" else "accuracy"
        records.append(eval_record(task, acc=dense, shots=None, metric=metric))
        rank = {"sst2": 0, "rte": 1, "cola": 2}[task]
        records.append(eval_record(task, acc=dense * (1 - monotone_drop(0.5, rank)), kind="pruned", level=0.5,
                                   shots=None, metric=metric))
    result = analyse(records, n_resamples=100)
    (group,) = result.groups
    level = group["levels"][0]
    assert group["axis"] == "gap:harder=higher" and level["labels"] == ["sst2", "rte", "cola"]
    assert level["difficulties"][0] == pytest.approx((0.978 - 0.90) / 0.90)
    assert level["spearman"]["value"] == pytest.approx(1.0)
    assert "Nangia & Bowman" in group["baselines"]["rte"]
    # A task without a published baseline needs a user table.
    records += [eval_record(TASK, acc=0.5, shots=None), eval_record(TASK, acc=0.3, kind="pruned", level=0.5,
                                                                    shots=None)]
    with pytest.raises(JdnaError, match="no human baseline for .*five_objects.*--baselines"):
        analyse(records, n_resamples=10)


def test_baseline_tables() -> None:
    shipped = {(b.task, b.metric): b for b in shipped_baselines()}
    assert shipped[("cola", "matthews")].human == pytest.approx(0.664)
    assert shipped[("commonsense_qa", "acc")].human == pytest.approx(0.889)
    assert shipped[("mmlu", "acc")].human == pytest.approx(0.898)
    assert all(b.citation for b in shipped.values())
    table = BaselineTable.load()
    assert table.get("sst2", "acc_norm").human == pytest.approx(0.978)  # accuracy aliases
    assert human_gap(0.9, 0.6) == pytest.approx(0.5)


def test_user_baselines_csv_and_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("task,metric,human,citation\nbigbench:strategyqa,acc,0.8,my notes\n")
    assert read_baselines(csv_file)[0].human == 0.8
    json_file = tmp_path / "b.json"
    json_file.write_text(json.dumps({"sst2": {"accuracy": 0.5}}))
    assert BaselineTable.load(json_file).get("sst2", "acc").human == 0.5  # user rows override
    bad = tmp_path / "bad.csv"
    bad.write_text("task,metric,human\nsst2,accuracy,97.8\n")
    with pytest.raises(JdnaError, match="fractions"):
        read_baselines(bad)


def test_irreversibility_compares_with_dense_transfer() -> None:
    result = analyse(transfer_sweep(), n_resamples=50)
    modes = {g["transfer"] for g in result.groups}
    assert modes == {"dense", "freeze", "sparse", "regrow"}
    sparse = [r for r in result.irreversibility if r["mode"] == "sparse" and r["level"] == 0.6]
    assert [r["difficulty"] for r in sorted(sparse, key=lambda r: -r["difficulty"])] == [2000, 500, 100]
    gaps = {r["difficulty"]: r["gap"] for r in sparse}
    assert 0 < gaps[2000] < gaps[500] < gaps[100]
    group = next(g for g in result.groups if g["transfer"] == "sparse")
    assert group["axis"] == "train_examples:harder=lower" and group["levels"][0]["verdict"] == "monotone"


def test_irreversibility_verdicts_with_intervals() -> None:
    records = []
    for examples, dense in ((2000, 0.90), (500, 0.85)):
        records.append(eval_record("sst2", acc=dense, n=1000, shots=None, mode="dense", train_examples=examples))
        # Sparse transfer loses 20% at both sizes; dense transfer of the pruned model gives the same answers.
        records.append(eval_record("sst2", acc=dense * 0.8, n=1000, kind="pruned", level=0.5, shots=None,
                                   mode="sparse", train_examples=examples))
        records.append(eval_record("sst2", acc=dense, n=1000, kind="pruned", level=0.5, shots=None, mode="dense",
                                   train_examples=examples))
    rows = analyse(records, n_resamples=200).irreversibility
    verdicts = {(r["mode"], r["difficulty"]): r["verdict"] for r in rows}
    assert verdicts == {("sparse", 2000): "irreversible", ("sparse", 500): "irreversible",
                        ("dense", 2000): "recovered", ("dense", 500): "recovered"}
    sparse = next(r for r in rows if r["mode"] == "sparse" and r["difficulty"] == 2000)
    assert sparse["drop"] == pytest.approx(0.2, abs=1e-3) and sparse["drop_ci95"][0] > 0.1
    assert sparse["gap"] == pytest.approx(0.9 - 0.72, abs=1e-3)
    # Without per-item values there is no interval, so no verdict.
    for record in records:
        record.pop("per_item")
    assert {r["verdict"] for r in analyse(records, n_resamples=50).irreversibility} == {"inconclusive"}


def test_monotone_in_both_directions() -> None:
    """Across difficulty per level, and across sparsity per difficulty level (Fig. 7's two claims)."""
    records = []
    for shots, dense in DENSE_BY_SHOTS.items():
        rank = SHOTS.index(shots)
        records.append(eval_record(acc=dense, n=1000, shots=shots))
        for level in (0.2, 0.5, 0.7):
            # Hardest level (0 shots): the drop *falls* with sparsity; elsewhere it rises.
            drop = (0.8 - level) * 0.4 if shots == 0 else monotone_drop(level, rank)
            records.append(eval_record(acc=dense * (1 - drop), n=1000, kind="pruned", level=level, shots=shots))
    (group,) = analyse(records, n_resamples=300).groups
    across = {cell["label"]: cell for cell in group["across_compression"]}
    assert [across[label]["levels"] for label in ("5", "0")] == [[0.2, 0.5, 0.7]] * 2
    assert {label: across[label]["verdict"] for label in across} == {
        "5": "monotone", "3": "monotone", "1": "monotone", "0": "not monotone"}
    assert across["0"]["slope"]["value"] < 0
    assert "falls significantly" in across["0"]["reason"] or "lost significantly less" in across["0"]["reason"]
    # Across difficulty: at s=0.2 the hardest level still lost most (0.24 > 0.12); at s=0.7 it lost least.
    assert [lv["verdict"] for lv in group["levels"]] == ["monotone", "not monotone", "not monotone"]


def test_gap_axis_is_per_base_model_and_can_be_human_normalised() -> None:
    records = []
    for base, scale in (("smollm2-135m", 1.0), ("other-1b", 0.5)):
        for task, dense in (("sst2", 0.90), ("rte", 0.60), ("cola", 0.30)):
            metric = "matthews" if task == "cola" else "accuracy"
            rank = {"sst2": 0, "rte": 1, "cola": 2}[task]
            records.append(eval_record(task, acc=dense * scale, shots=None, metric=metric, base=base))
            records.append(eval_record(task, acc=dense * scale * (1 - monotone_drop(0.5, rank)), kind="pruned",
                                       level=0.5, shots=None, metric=metric, base=base))
    groups = {g["base"]: g for g in analyse(records, n_resamples=50).groups}
    assert set(groups) == {"smollm2-135m", "other-1b"}
    big, small = groups["smollm2-135m"]["levels"][0], groups["other-1b"]["levels"][0]
    assert big["difficulties"][0] == pytest.approx((0.978 - 0.90) / 0.90)  # sst2, its own dense score
    assert small["difficulties"][0] == pytest.approx((0.978 - 0.45) / 0.45)
    human = analyse(records, n_resamples=50, gap_normalise="human").groups
    assert human[0]["gap_normalise"] == "human"
    assert {g["base"]: g["levels"][0]["difficulties"][0] for g in human}["other-1b"] == pytest.approx(
        (0.978 - 0.45) / 0.978)
    with pytest.raises(JdnaError, match="gap-normalise"):
        analyse(records, n_resamples=10, gap_normalise="people")


def test_externally_pruned_model_pairs_with_its_dense_parent() -> None:
    dense = eval_record("sst2", acc=0.9, shots=None, base="roberta-base")
    external = eval_record("sst2", acc=0.72, shots=None, base="someone/roberta-base-pruned")
    external["model"] |= {"dense_parent": "roberta-base", "compression": {"sparsity": 0.5}}
    external["id"] = "external"
    (entry,) = match_dense([dense, external])
    assert entry.dense_index == 0 and entry.compression.method == "external" and entry.compression.level == 0.5
    assert entry.normalised == pytest.approx(0.8)
    # Named by the dense record's model name instead of its base, it still pairs.
    external["model"]["dense_parent"] = dense["model"]["name"]
    assert match_dense([dense, external])[0].dense_index == 0
    # As eval writes it ({"name", "id", "source"}, jdna/sparsity.py): the id is the dense record's model.id.
    dense["model"]["id"] = "sha-of-the-dense-weights"
    external["model"]["dense_parent"] = {"name": "elsewhere", "id": "sha-of-the-dense-weights", "source": "local"}
    assert match_dense([dense, external])[0].dense_index == 0
    external["model"]["dense_parent"] = "roberta-large"
    with pytest.raises(JdnaError, match="no dense baseline .* on base roberta-large"):
        match_dense([dense, external])


def options_records(keep: float = 0.7, n: int = 1000, dense_acc: tuple[float, ...] = (0.85, 0.7, 0.6, 0.5)
                    ) -> list[dict[str, Any]]:
    """Options 2–5: pruned keeps `keep` of the dense model's above-chance skill at every option count."""
    records = []
    for options, dense in zip((2, 3, 4, 5), dense_acc):
        chance = 1 / options
        records.append(eval_record(acc=dense, n=n, options=options, shots=None))
        records.append(eval_record(acc=chance + keep * (dense - chance), n=n, options=options, shots=None,
                                   kind="pruned", level=0.5))
    return records


def test_options_axis_is_chance_corrected() -> None:
    (group,) = analyse(options_records(), n_resamples=200).groups
    level = group["levels"][0]
    assert group["scale"] == "chance-corrected" and level["chance"] == pytest.approx([1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert level["normalised"] == pytest.approx([0.7] * 4, abs=0.002)
    # The raw ratio falls with options (the chance floor), which read as a trend is the floor case.
    raw = level["normalised_raw"]
    assert raw == sorted(raw, reverse=True) and raw[0] - raw[-1] > 0.05
    assert level["verdict"] != "monotone"
    # A dense model at chance has no skill to lose: flagged and left out, which here leaves 3 levels.
    records = options_records(dense_acc=(0.85, 0.7, 0.6, 0.21))
    level = analyse(records, n_resamples=100).groups[0]["levels"][0]
    assert level["near_chance"] == [False, False, False, True]
    assert level["reversed_pairs"] and len(level["reversed_pairs"]) == 2


def classification_record(acc: float, golds: list[int], **kwargs: Any) -> dict[str, Any]:
    """A fine-tuning validation record as jdna writes it: classification, accuracy, golds per item."""
    record = eval_record("sst2", acc=acc, n=len(golds), shots=None, metric="accuracy", **kwargs)
    record["task_kind"] = "classification"
    record["per_item"]["golds"] = golds
    return record


def test_classification_majority_floor_flags_levels_where_dense_learned_nothing() -> None:
    # 60% of the validation items carry label 1: a classifier that always answers 1 scores 0.6.
    golds = [1] * 600 + [0] * 400
    assert chance_of(classification_record(0.6, golds)) == pytest.approx(0.6)
    without_golds = classification_record(0.6, golds)
    del without_golds["per_item"]["golds"]
    assert chance_of(without_golds) is None
    records = []
    for examples, dense in ((2000, 0.90), (1000, 0.85), (500, 0.80), (100, 0.61)):
        records.append(classification_record(dense, golds, mode="dense", train_examples=examples))
        records.append(classification_record(dense * 0.9, golds, kind="pruned", level=0.5, mode="sparse",
                                             train_examples=examples))
    (group,) = analyse(records, n_resamples=100).groups
    level = group["levels"][0]
    assert level["chance"] == pytest.approx([0.6] * 4)
    assert level["near_chance"] == [False, False, False, True]  # 0.61 is within 2 SE (~0.03) of the floor 0.6
    assert group["scale"] == "raw"  # the floor does not move along this axis: the raw ratio stays primary


def test_irreversibility_at_the_majority_floor_is_not_recovery() -> None:
    """Dense and pruned transfer both at the majority class would read as 'recovered': it must not."""
    golds = [1] * 600 + [0] * 400
    records = []
    for examples, dense, pruned in ((2000, 0.90, 0.70), (100, 0.60, 0.60)):
        records.append(classification_record(dense, golds, mode="dense", train_examples=examples))
        records.append(classification_record(pruned, golds, kind="pruned", level=0.5, mode="sparse",
                                             train_examples=examples))
    rows = {row["difficulty"]: row for row in analyse(records, n_resamples=200).irreversibility
            if row["mode"] == "sparse"}
    assert rows[2000]["verdict"] == "irreversible" and not rows[2000]["near_chance"]
    assert rows[100]["near_chance"] and rows[100]["verdict"] == "inconclusive"
    assert "chance" in rows[100]["reason"]
    # Without golds the floor is unknown, and the same numbers are called recovered (as before).
    for record in records:
        del record["per_item"]["golds"]
    rows = {row["difficulty"]: row for row in analyse(records, n_resamples=200).irreversibility
            if row["mode"] == "sparse"}
    assert rows[100]["verdict"] == "recovered"


def _simulator() -> Any:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "bench" / "simulate_verdicts.py"
    spec = importlib.util.spec_from_file_location("simulate_verdicts", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_verdict_rule_error_rates_on_simulated_studies() -> None:
    """Known effects (bench/simulate_verdicts.py, small here): errors in both directions stay under 5%."""
    sim = _simulator()
    null = sim.run(sim.Scenario("null", (0.1, 0.1, 0.1, 0.1), 100), datasets=80, resamples=200)
    assert null["monotone"] <= 0.05 and null["not monotone"] <= 0.05
    clear = sim.run(sim.Scenario("clear", (0.0, 0.1, 0.2, 0.3), 200), datasets=20, resamples=200)
    assert clear["monotone"] >= 0.9 and clear["not monotone"] == 0
    floor = sim.run(sim.Scenario("floor", (0.3,) * 4, 1000, dense=(0.85, 0.7, 0.6, 0.5), options=(2, 3, 4, 5)),
                    datasets=20, resamples=200)
    assert floor["monotone"] <= 0.05


def test_results_do_not_depend_on_record_order() -> None:
    records = sweep(seeds=3, kinds=("pruned", "quantized"))
    import random

    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    first = analyse(records, n_resamples=100).record()
    second = analyse(shuffled, n_resamples=100).record()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_pairs_on_common_items_with_a_note() -> None:
    records = sweep(seeds=1)
    full = analyse(records, n_resamples=200)
    dense = next(r for r in records if r["model"]["compression"]["method"] == "dense" and r["knobs"]["shots"] == 5)
    dense["per_item"]["ids"] = dense["per_item"]["ids"][1:]
    dense["per_item"]["values"] = dense["per_item"]["values"][1:]
    dense["metrics"]["acc"]["value"] = float(np.mean(dense["per_item"]["values"]))
    narrowed = analyse(records, n_resamples=200)
    assert any("different item sets" in note and "paired on the items both hold" in note for note in narrowed.notes)
    before, after = full.groups[0]["levels"][0], narrowed.groups[0]["levels"][0]
    assert after["items"][0] == 199 and before["items"][0] == 200
    # Still paired: the interval does not balloon as it would with independent draws.
    width = [lv["normalised_ci95"][0][1] - lv["normalised_ci95"][0][0] for lv in (before, after)]
    assert width[1] < 1.3 * width[0]


# ---------------------------------------------------------------------------------------------------
# Loading


def test_load_from_dirs_globs_files_and_summaries(tmp_path: Path) -> None:
    records = sweep(seeds=1)
    directory = write_records(tmp_path / "runs" / "eval", records)
    (directory / "artifact.json").write_text(json.dumps({"kind": "pruned", "path": "x.safetensors"}))
    assert len(load_records([str(directory)])) == len(records)
    assert len(load_records([str(directory / "*.json")])) == len(records)
    one = sorted(directory.glob("*.json"))[0]
    with pytest.raises(JdnaError, match="'pruned' record"):
        load_records([str(directory / "artifact.json")])
    # A stdout summary (no per_item) is swapped for its full file.
    full = json.loads(one.read_text())
    summary = {k: v for k, v in full.items() if k != "per_item"} | {"path": str(one)}
    import io

    loaded = load_records(["-"], stdin=io.StringIO(json.dumps(summary) + "\n"))
    assert "per_item" in loaded[0]
    # The same record from a file and stdin counts once.
    assert len(load_records(["-", str(one)], stdin=io.StringIO(json.dumps(summary) + "\n"))) == 1
    with pytest.raises(JdnaError, match="does not exist"):
        load_records([str(tmp_path / "nope.json")])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"kind": "eval", "task": "x", "primary_metric": "acc", "metrics": {}}))
    with pytest.raises(JdnaError, match="no value for its primary metric 'acc'"):
        load_records([str(broken)])


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_difficulty_writes_record_and_table(tmp_path: Path) -> None:
    directory = write_records(tmp_path / "runs" / "eval", sweep())
    result = run("difficulty", str(directory), "--resamples", "200")
    assert result.code == 0, result.stderr
    record = result.record
    assert record["kind"] == "difficulty" and Path(record["path"]).is_file()
    assert "groups" not in record or record["groups"]  # summary may be compact, the file is complete
    full = json.loads(Path(record["path"]).read_text())
    assert full["rule"] == record["rule"] and full["groups"][0]["levels"][0]["verdict"] == "monotone"
    assert "monotone" in result.stderr and "ρ" in result.stderr and "verdict" in result.stderr.lower()
    assert full["rule"].split(":")[0] in result.stderr
    # Power: the detectable trend and the items that would reach --min-trend, flagged when short of it.
    power = full["groups"][0]["levels"][0]["power"]
    assert power["underpowered"] and power["items"] == 200 and power["items_needed"] > 200
    assert f"underpowered (needs {power['items_needed']} items)" in result.stderr
    assert "across compression" in result.stderr and full["groups"][0]["across_compression"]
    relaxed = run("difficulty", str(directory), "--resamples", "200", "--min-trend", "0.5", "-o",
                  str(tmp_path / "relaxed.json"))
    assert relaxed.code == 0 and "underpowered" not in relaxed.stderr.split("power:")[0]
    # Piping the eval summaries works the same, and -o chooses the file.
    lines = "".join(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "per_item"}
                               | {"path": str(p)}) + "\n" for p in sorted(directory.glob("*.json")))
    out = tmp_path / "d.json"
    piped = run("difficulty", "-o", str(out), "--resamples", "200", stdin=lines)
    assert piped.code == 0, piped.stderr
    assert json.loads(out.read_text())["groups"] == full["groups"]


def test_cli_difficulty_bad_input_exits_2(tmp_path: Path) -> None:
    only_compressed = [r for r in sweep(seeds=1) if r["model"]["compression"]["method"] != "dense"]
    directory = write_records(tmp_path / "a", only_compressed)
    result = run("difficulty", str(directory))
    assert result.code == 2 and "no dense baseline for task" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    mixed = [eval_record("sst2", acc=0.9, shots=None), eval_record("sst2", acc=0.8, kind="pruned", level=0.5,
                                                                    shots=None),
             eval_record(TASK, acc=0.5, shots=None), eval_record(TASK, acc=0.4, kind="pruned", level=0.5,
                                                                 shots=None)]
    result = run("difficulty", str(write_records(tmp_path / "b", mixed)))
    assert result.code == 2 and "different tasks" in result.stderr and "--baselines" in result.stderr
    result = run("difficulty", str(tmp_path / "missing"))
    assert result.code == 2 and "does not exist" in result.stderr
    result = run("difficulty", str(directory), "--axis", "nonsense")
    assert result.code == 2 and "unknown difficulty axis" in result.stderr
    result = run("difficulty", str(write_records(tmp_path / "c", sweep(seeds=1))), "--gap-normalise", "humans")
    assert result.code == 2 and "did you mean 'human'" in result.stderr


# ---------------------------------------------------------------------------------------------------
# BIG-bench human baselines (shipped rows and the script that extracts them)


def _extract_script() -> Any:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "extract_bigbench_human.py"
    spec = importlib.util.spec_from_file_location("extract_bigbench_human", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bigbench_pickle(table: dict[str, Any]) -> bytes:
    """A pickle naming the globals BIG-bench's numpy 1.x wrote (numpy.core.multiarray.scalar, numpy.dtype)."""
    import pickle

    data = pickle.dumps(table, protocol=3)  # GLOBAL opcodes: newline-terminated names, safe to rename
    data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
    assert b"numpy.core.multiarray\nscalar" in data and b"_core" not in data
    return data


HUMAN_EVAL = {
    "average": {"alpha": {"multiple_choice_grade": np.float64(62.5), "bleu": np.float64(3.0)},
                "beta": {"exact_str_match": np.float64(12.25), "normalized_aggregate_score": np.float64(9.0)}},
    "expert": {"alpha": {"multiple_choice_grade": np.float64(90.0)},
               "beta": {"exact_str_match": np.float64(40.0)}},
}


def test_shipped_bigbench_baselines_are_cited_fractions() -> None:
    rows = [b for b in shipped_baselines() if b.task.startswith("bigbench:")]
    assert len(rows) >= 100
    assert {b.metric for b in rows} == {"acc", "exact_match"}
    assert all(0.0 <= b.human <= 1.0 for b in rows)
    assert all("Srivastava et al. (2022)" in b.citation and "task_human_eval.pkl" in b.citation for b in rows)
    assert all("expert (max) rater" in b.note or b.note.endswith("no expert") for b in rows)
    assert len({(b.task, b.metric) for b in rows}) == len(rows)
    table = BaselineTable.load()
    assert table.get("bigbench:general_knowledge", "acc").human == pytest.approx(0.8345)
    assert table.get("bigbench:hyperbaton", "acc_norm").human == pytest.approx(0.7474)  # accuracy aliases
    assert table.get("bigbench:disfl_qa", "exact_match").human == pytest.approx(0.2083)
    assert "31.08%" in table.get("bigbench:abstract_narrative_understanding", "acc").note
    # The GLUE/CSQA/MMLU rows are still there, and BIG-bench rows carry jdna's record names.
    assert table.get("mmlu", "acc").human == pytest.approx(0.898)
    assert table.get("general_knowledge", "acc") is None


def test_across_bigbench_tasks_uses_shipped_human_raters() -> None:
    records = []
    for task, dense in (("bigbench:general_knowledge", 0.60), ("bigbench:hyperbaton", 0.50)):
        records += [eval_record(task, acc=dense, shots=None),
                    eval_record(task, acc=dense * 0.9, kind="pruned", level=0.5, shots=None)]
    (group,) = analyse(records, n_resamples=50).groups
    level = group["levels"][0]
    assert group["axis"] == "gap:harder=higher"
    # Easiest first: general_knowledge's gap (0.8345 − 0.6)/0.6 = 0.391 < hyperbaton's (0.7474 − 0.5)/0.5 = 0.495.
    assert level["labels"] == ["bigbench:general_knowledge", "bigbench:hyperbaton"]
    assert level["difficulties"] == pytest.approx([(0.8345 - 0.6) / 0.6, (0.7474 - 0.5) / 0.5])
    assert "Beyond the Imitation Game" in group["baselines"]["bigbench:hyperbaton"]


def test_extract_bigbench_human_rows_from_restricted_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv
    import io
    import tarfile

    extract = _extract_script()
    table = extract.load_human_eval(_bigbench_pickle(HUMAN_EVAL))
    assert table["average"]["alpha"]["multiple_choice_grade"] == 62.5
    assert type(table["expert"]["beta"]["exact_str_match"]) is float
    rows = extract.rows(table)
    assert [(r["task"], r["metric"], r["human"]) for r in rows] == [
        ("bigbench:alpha", "acc", "0.6250"), ("bigbench:beta", "exact_match", "0.1225")]
    assert "expert (max) rater 90.00% = 0.9000" in rows[0]["note"]
    assert extract.rows(table, lambda name, kind: name == "beta") == rows[1:]

    # From an sdist tarball, as `python scripts/extract_bigbench_human.py --sdist ... --all` reads it.
    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    payload = _bigbench_pickle(HUMAN_EVAL)
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/task_human_eval.pkl")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert extract.main(["--sdist", str(sdist), "--all"]) == 0
    printed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["task"], r["metric"], float(r["human"])) for r in printed] == [
        ("bigbench:alpha", "acc", 0.625), ("bigbench:beta", "exact_match", 0.1225)]
    csv_file = tmp_path / "rows.csv"  # the printed rows are a valid jdna baseline table
    csv_file.write_text("task,metric,human,citation,note\n" + "".join(
        f'{r["task"]},{r["metric"]},{r["human"]},"{r["citation"].replace(chr(34), chr(34) * 2)}",x\n' for r in printed))
    assert BaselineTable.load(csv_file).get("bigbench:alpha", "acc_norm").human == 0.625


@pytest.mark.parametrize(
    "payload, named",
    [
        # protocol 3: GLOBAL 'os system', then ('echo',) and REDUCE -- os.system('echo') if it were resolved
        (b"\x80\x03cos\nsystem\nX\x04\x00\x00\x00echo\x85R.", "os.system"),
        # protocol 4: STACK_GLOBAL builtins.eval applied to '1'
        (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.", "builtins.eval"),
        # an allowed module with another name
        (b"\x80\x03cnumpy.core.multiarray\n_reconstruct\n.", "numpy.core.multiarray._reconstruct"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(
    payload: bytes, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins
    import io
    import os
    import pickle
    import pickletools

    extract = _extract_script()
    called: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    monkeypatch.setattr(builtins, "eval", lambda *a: called.append(a))
    pickletools.dis(payload, out=io.StringIO())  # well-formed pickle bytes, so only find_class can refuse them
    with pytest.raises(pickle.UnpicklingError, match=named.replace(".", r"\.")):
        extract.load_human_eval(payload)
    assert called == []
