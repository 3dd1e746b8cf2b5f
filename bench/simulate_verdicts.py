"""Calibrate `jdna difficulty`'s verdict rule: how often it says "monotone" / "not monotone" / "inconclusive"
on synthetic studies whose true effect is known, and whether its slope interval covers the truth.

Each dataset is a set of eval records built as `jdna eval` writes them (per-item 0/1 values, so the analysis
runs its real paired item bootstrap) and analysed end to end by `jdna.analysis.analyse`:

* one task, K difficulty levels scored on the same item ids, a dense and a pruned record per level;
* dense accuracy per level, and a true normalised drop per level (the effect); the pruned model is correct
  on an item with a probability that depends on whether the dense model was (pruning flips some answers
  both ways), tuned so that its expected accuracy is dense × (1 − drop);
* seeds: S replicates per level, each re-drawing the items' outcomes and adding a seed effect N(0, σ_seed)
  to the drop (what different option/shot draws or pruning masks do);
* options scenarios use chance-corrected drops: accuracies are chance + skill × (1 − chance).

    python bench/simulate_verdicts.py                  # the tables in docs/analysis.md (a few minutes)
    python bench/simulate_verdicts.py --datasets 1000  # tighter rates

The rates are printed as a Markdown table. Not a test (tests/test_analysis.py runs small versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jdna.analysis import analyse  # noqa: E402
from jdna.io import canonical_json, sha256_text  # noqa: E402

TASK = "bigbench:simulated"


@dataclass
class Scenario:
    name: str
    drops: tuple[float, ...]  # true normalised drop per difficulty level, easiest → hardest
    items: int
    seeds: int = 1
    seed_sd: float = 0.0
    dense: tuple[float, ...] = (0.80, 0.75, 0.70, 0.65)
    options: tuple[int, ...] | None = None  # the options axis: drops are shares of above-chance skill
    levels: int = 1  # compression levels, each with the same true drops (a family Holm corrects over)
    repeat: int = 1  # datasets × this: the error rates of no-effect scenarios need more of them to be precise

    @property
    def true_slope(self) -> float:
        ranks = np.arange(len(self.drops), dtype=float)
        weights = (ranks - ranks.mean()) / ((ranks - ranks.mean()) ** 2).sum()
        return float(weights @ np.asarray(self.drops))


def _record(acc_values: np.ndarray, *, level: float | None, knobs: dict[str, Any], salt: str) -> dict[str, Any]:
    n = len(acc_values)
    if level is None:
        compression: dict[str, Any] = {"method": "dense", "sparsity": 0.0, "bits_per_weight": 16.0}
    else:
        compression = {"kind": "pruned", "method": "magnitude", "sparsity": level, "bits_per_weight": 9.0,
                       "target_sparsity": level}
    body = {"task": TASK, "task_kind": "multiple_choice", "knobs": knobs, "primary_metric": "acc",
            "metrics": {"acc": {"value": float(acc_values.mean()), "ci95": None}}, "higher_is_better": True,
            "n": n, "model": {"name": f"m{level}", "id": f"m{level}", "base": "sim", "compression": compression}}
    record_id = sha256_text(canonical_json([body, salt]))
    return {"kind": "eval", "path": f"runs/eval/{record_id[:20]}.json", "id": record_id, **body,
            "per_item": {"ids": [f"q{i}" for i in range(n)], "values": acc_values.tolist()}}


def dataset(scenario: Scenario, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Eval records of one simulated study."""
    records = []
    flip_up = 0.1  # P(pruned right | dense wrong): pruning changes answers both ways
    for seed in range(scenario.seeds):
        for k, drop in enumerate(scenario.drops):
            shift = rng.normal(0.0, scenario.seed_sd) if scenario.seed_sd else 0.0
            if scenario.options is not None:
                options = scenario.options[k]
                chance = 1.0 / options
                dense_p = scenario.dense[k]
                pruned_p = chance + (1 - drop - shift) * (dense_p - chance)
                knobs = {"options": options, "seed": seed}
            else:
                dense_p = scenario.dense[k]
                pruned_p = dense_p * (1 - drop - shift)
                knobs = {"shots": 5 - k, "seed": seed}
            dense = (rng.random(scenario.items) < dense_p).astype(float)
            keep = float(np.clip((pruned_p - (1 - dense_p) * flip_up) / dense_p, 0.0, 1.0))
            pruned = np.where(dense == 1, rng.random(scenario.items) < keep,
                              rng.random(scenario.items) < flip_up).astype(float)
            salt = f"{rng.integers(1 << 62)}"
            records.append(_record(dense, level=None, knobs=knobs, salt=salt))
            for level in range(scenario.levels):
                if level:  # further levels: fresh pruned outcomes with the same true drops
                    pruned = np.where(dense == 1, rng.random(scenario.items) < keep,
                                      rng.random(scenario.items) < flip_up).astype(float)
                records.append(_record(pruned, level=0.5 + 0.1 * level, knobs=knobs, salt=salt))
    return records


def run(scenario: Scenario, datasets: int, resamples: int, seed: int = 0) -> dict[str, float]:
    """Verdict rates (any level of a dataset, for multi-level families), slope-interval coverage."""
    rng = np.random.default_rng(seed)
    counts = {"monotone": 0, "not monotone": 0, "inconclusive": 0}
    covered = underpowered = 0
    for _ in range(datasets):
        analysis = analyse(dataset(scenario, rng), n_resamples=resamples)
        verdicts = [lv["verdict"] for g in analysis.groups for lv in g["levels"]]
        for name in ("monotone", "not monotone"):
            counts[name] += name in verdicts
        counts["inconclusive"] += all(v == "inconclusive" for v in verdicts)
        level = analysis.groups[0]["levels"][0]
        ci = level["slope"]["ci95"]
        covered += bool(ci and ci[0] <= scenario.true_slope <= ci[1])
        underpowered += bool(level["power"]["underpowered"])
    return {"monotone": counts["monotone"] / datasets, "not monotone": counts["not monotone"] / datasets,
            "inconclusive": counts["inconclusive"] / datasets, "coverage": covered / datasets,
            "underpowered": underpowered / datasets}


def scenarios() -> list[Scenario]:
    null, small, large = (0.1, 0.1, 0.1, 0.1), (0.0, 0.03, 0.06, 0.09), (0.0, 0.1, 0.2, 0.3)
    options_dense = (0.85, 0.70, 0.60, 0.50)
    return [
        Scenario("no effect, n=56", null, 56, repeat=3),
        Scenario("no effect, n=200", null, 200, repeat=3),
        Scenario("no effect, n=1000", null, 1000, repeat=3),
        Scenario("no effect, 5 levels (Holm), n=200", null, 200, levels=5),
        Scenario("no effect, 3 seeds (σ=0.03), n=200", null, 200, seeds=3, seed_sd=0.03),
        Scenario("trend 0.03/level, n=56", small, 56),
        Scenario("trend 0.03/level, n=200", small, 200),
        Scenario("trend 0.03/level, n=1000", small, 1000),
        Scenario("trend 0.03/level, n=2000", small, 2000),
        Scenario("trend 0.03/level, 3 seeds (σ=0.03), n=1000", small, 1000, seeds=3, seed_sd=0.03),
        Scenario("trend 0.03/level, 2 seeds (σ=0.05), n=1000", small, 1000, seeds=2, seed_sd=0.05),
        Scenario("trend 0.1/level, n=56", large, 56),
        Scenario("reversed trend 0.03/level, n=1000", small[::-1], 1000),
        Scenario("options 2–5, keeps 70% of above-chance skill, n=1000", (0.3,) * 4, 1000,
                 dense=options_dense, options=(2, 3, 4, 5), repeat=2),
        Scenario("options 2–5, above-chance drop 0.03/level, n=1000", small, 1000, dense=options_dense,
                 options=(2, 3, 4, 5)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=200, help="simulated studies per scenario")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples per analysis")
    parser.add_argument("--only", default=None, help="run scenarios whose name contains this text")
    args = parser.parse_args(argv)
    print(f"{args.datasets} datasets per scenario, {args.resamples} bootstrap resamples each\n")
    print("| scenario | datasets | true slope | monotone | not monotone | inconclusive | slope CI coverage | "
          "underpowered |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    started = time.perf_counter()
    for scenario in scenarios():
        if args.only and args.only not in scenario.name:
            continue
        datasets = args.datasets * scenario.repeat
        rates = run(scenario, datasets, args.resamples)
        print(f"| {scenario.name} | {datasets} | {scenario.true_slope:+.3f} | {rates['monotone']:.1%} | "
              f"{rates['not monotone']:.1%} | {rates['inconclusive']:.1%} | {rates['coverage']:.1%} | "
              f"{rates['underpowered']:.0%} |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
