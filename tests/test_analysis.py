"""jdna difficulty: record loading, normalisation, difficulty axes, the statistics and the CLI.

Records are synthesised following docs/records.md, with per-item 0/1 values whose correct items are nested
(a worse model gets a subset of the better one's items right), as pruning a model typically behaves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jdna.analysis import analyse, kendall_tau_b, load_records, parse_axis, spearman_rho, verdict
from jdna.analysis.baselines import BaselineTable, human_gap, read_baselines, shipped_baselines
from jdna.analysis.difficulty import normalise
from jdna.analysis.stats import resample_points, resample_records, violations
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


def test_violations_and_verdict_rule() -> None:
    assert violations([0, 1, 2, 3], [0.1, 0.2, 0.3, 0.4]) == []
    assert violations([0, 1, 2], [0.1, 0.3, 0.2]) == [(1, 2)]
    assert violations([0, 1, 1], [0.1, 0.3, 0.2]) == []  # equally hard: no order to violate
    assert verdict(4, 1.0, [0.6, 1.0]) == "monotone"
    assert verdict(4, 0.9, [-0.2, 1.0]) == "inconclusive"
    assert verdict(4, -0.4, [-1.0, 0.9]) == "not monotone"
    assert verdict(4, 0.4, [0.1, 0.6]) == "not monotone"
    assert verdict(2, 1.0, [1.0, 1.0]) == "inconclusive"  # fewer than 3 difficulty levels
    assert verdict(4, 1.0, None) == "inconclusive"  # no interval
    assert verdict(4, math.nan, [0.1, 0.2]) == "inconclusive"


def test_item_bootstrap_shares_items_and_seed_bootstrap_mixes() -> None:
    a = eval_record(acc=0.8, n=50)
    b = eval_record(acc=0.6, n=50, kind="pruned", level=0.5)
    a["per_item"]["ids"].reverse(), a["per_item"]["values"].reverse()  # same items, other order
    samples, ok = resample_records([a, b], [0.8, 0.6], 200, seed=1)
    assert ok == [True, True] and samples.shape == (2, 200)
    # b's correct items are a subset of a's, so with shared draws b never beats a.
    assert (samples[1] <= samples[0]).all() and samples[0].std() > 0
    fixed, ok = resample_records([{"primary_metric": "acc"}], [0.5], 10)
    assert ok == [False] and (fixed == 0.5).all()
    boot = resample_points([np.array([[1.0] * 5, [3.0] * 5])], seed=0)
    assert boot.shape == (5, 1) and set(boot[:, 0]) <= {1.0, 2.0, 3.0}


def test_corpus_metrics_are_rescored_from_predictions() -> None:
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
    samples, ok = resample_records([record], [mcc], 300)
    assert ok == [True] and samples.std() > 0
    assert np.quantile(samples, 0.025) < mcc < np.quantile(samples, 0.975)
    record["per_item"].pop("predictions")  # values are correctness, not MCC: not resampled
    assert resample_records([record], [mcc], 10)[1] == [False]


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
