"""A miniature study through the real Makefile: tiny model, hand-made task, ≥ 3 difficulty levels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _make_command(tmp_path: Path, *settings: str) -> tuple[list[str], dict[str, str], Path]:
    """The real Makefile with its install and data steps stamped done, runs and results under `tmp_path`;
    "{results}" in a setting becomes the results folder."""
    stamp = tmp_path / "bigbench-present"
    stamp.write_text("")
    results = tmp_path / "results"
    jdna = Path(sys.executable).parent / "jdna"
    env = {**os.environ, "JDNA_RUNS": str(tmp_path / "runs"), "JDNA_HOME": str(tmp_path / "home")}
    args = ["make", "-C", str(REPO), "--no-print-directory", f"R={results}", f"JDNA={jdna}", f"STAMP={stamp}",
            f"BIGBENCH_STAMP={stamp}", *(setting.replace("{results}", str(results)) for setting in settings)]
    return args, env, results


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_setting2_and_quantization_targets_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    task = tmp_path / "mc.jsonl"
    rows = [
        {"question": f"the {w} is", "choices": ["red", "blue", "green", "cat", "dog"], "gold": i % 5}
        for i, w in enumerate(["cat", "dog", "river", "king", "queen", "city", "game", "story"])
    ]
    task.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    args, env, results = _make_command(
        tmp_path,
        f"LM={tiny_llama}", f"S2_MODEL={tiny_llama}", f"Q_MODEL={tiny_llama}", f"S2_TASK=file:{task}",
        "SPARSITIES=0.5", "S2_OPTIONS=2 3 5", "LIMIT=8", "Q_BITS=4",
        "{results}/setting2/difficulty.json", "{results}/setting2/figure.png",
        "{results}/quantization/difficulty.json", "{results}/quantization/figure.png",
    )
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (results / "setting2" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 2 and all(r["kind"] == "eval" for r in records)
    difficulty = json.loads((results / "setting2" / "difficulty.json").read_text())
    levels = [level["level"] for group in difficulty["groups"] for level in group["levels"]]
    assert sorted(levels) == [0.5]
    table = (results / "setting2" / "table.txt").read_text()
    assert "s=0.5" in table and "rule:" in table
    assert (results / "setting2" / "figure.png").stat().st_size > 10_000
    quantization = json.loads((results / "quantization" / "difficulty.json").read_text())
    kinds = {group.get("compression_kind") for group in quantization["groups"]}
    assert {"pruned", "quantized", "lowrank"} <= kinds
    # One compression axis: at the Q_BITS level, every method stores about that many bits per weight.
    bits = {}
    for line in (results / "quantization" / "records.jsonl").read_text().splitlines():
        compression = json.loads(line)["model"]["compression"]
        if compression.get("kind"):
            bits.setdefault(compression["kind"], []).append(compression["bits_per_weight"])
    for kind in ("pruned", "quantized", "lowrank"):
        levels = sorted(set(bits[kind]))
        assert len(levels) == 1 and abs(levels[0] - 4) < 0.55, (kind, levels)
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "jdna" not in again.stdout + again.stderr  # nothing redone


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_transfer_target_compares_the_modes_level_by_level(tiny_bert: Path, tmp_path: Path) -> None:
    words = ["good", "bad", "fine", "poor"]
    rows = [
        {"text": f"it was {words[i % 4]} and {words[(i * 3) % 4]}", "label": ["pos", "neg"][i % 2],
         "split": "train" if i < 24 else "test"}
        for i in range(32)
    ]
    task = tmp_path / "cls.jsonl"
    task.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    args, env, results = _make_command(
        tmp_path,
        f"T_MODEL={tiny_bert}", f"T_TASK=file:{task}", "T_TRAIN=8 16", "T_MODES=dense sparse freeze",
        "SPARSITIES=0.5", "T_FLAGS=--epochs 1 --batch-size 4 --max-length 16 --eval-limit 8",
        "{results}/transfer/difficulty.json", "{results}/transfer/figure.png",
    )
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (results / "transfer" / "records.jsonl").read_text().splitlines()]
    assert sorted((r["mode"], r["train_examples"]) for r in records) == [
        ("dense", 8), ("dense", 16), ("freeze", 8), ("freeze", 16), ("sparse", 8), ("sparse", 16)
    ]
    table = (results / "transfer" / "table.txt").read_text()
    assert "sparse transfer" in table and "freeze transfer" in table and "train_examples 16" in table
    assert (results / "transfer" / "figure.png").stat().st_size > 10_000


def _dry_run(tmp_path: Path, *settings: str) -> str:
    args, env, _ = _make_command(tmp_path, "-n", *settings)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_paper_scale_runs_the_papers_protocol(tmp_path: Path) -> None:
    grid = "for s in 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9; do"
    setting1 = _dry_run(tmp_path, "S1_MODEL=roberta-base", "setting1")
    assert "--lr 2e-5 --weight-decay 0 --warmup 0 --eval-limit 0 --batch-size 32 --max-length 128" in setting1
    assert "--lr 2e-4" not in setting1 and "--eval-limit 500" not in setting1 and grid in setting1
    assert "for n in 0.1 0.25 0.5 0.75 1.0" in setting1 and "--axis train_fraction" in setting1
    transfer = _dry_run(tmp_path, "T_MODEL=roberta-base", "T_TASK=commonsense_qa", "transfer")
    assert grid in transfer and "for mode in sparse freeze regrow" in transfer and "--mode dense" in transfer
    assert "--lr 2e-5" in transfer and "--lr 2e-4" not in transfer
    large = _dry_run(tmp_path, "S5_KIND=finetune", "S5_MODEL=roberta-large", "setting5")
    assert "--batch-size 16 --max-length 512" in large and "--train-fraction" not in large
    assert "for mode in sparse freeze regrow" in large
    closed = _dry_run(tmp_path, "S6_MODEL=org/some-7b", "S6_TASKS=trivia_qa commonsense_qa", "setting6")
    assert "for t in trivia_qa_nocontext commonsense_qa" in closed and "--limit" not in closed
    # CPU scale keeps its defaults; PAPER=1 switches a demo model to paper scale; SEEDS loops everywhere.
    cpu = _dry_run(tmp_path, "SEEDS=1 2", "setting3", "setting4", "lmc")
    assert "--context-fraction $f" in cpu and "for f in 0.1 0.25 0.5 1.0" in cpu and "--context-tokens" not in cpu
    assert cpu.count("for seed in 1 2; do") == 3 and "--limit 200" in cpu and grid not in cpu
    assert grid in _dry_run(tmp_path, "PAPER=1", "setting4")
    assert grid not in _dry_run(tmp_path, "PAPER=0", "S4_MODEL=org/some-7b", "setting4")


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_settings_1_and_2_split_by_seed_and_merge_in_seed_order(tmp_path: Path) -> None:
    """`make -jN` spreads seeds over jobs: one recipe per seed, merged in SEEDS order (not finishing order)."""
    for setting in ("setting1", "setting2"):
        plan = _dry_run(tmp_path, "SEEDS=2 0 1", setting)
        runs = [line for line in plan.splitlines() if line.startswith("seed=")]
        assert [line.split(";")[0] for line in runs] == ["seed=2", "seed=0", "seed=1"], setting
        merge = next(line for line in plan.splitlines() if line.startswith("cat "))
        files = [word.rsplit("/", 1)[-1] for word in merge.split(">")[0].split()[1:]]
        assert files == ["seed-2.jsonl", "seed-0.jsonl", "seed-1.jsonl"], setting
