"""Linear mode connectivity: endpoints reproduce the models exactly; a model with itself has no barrier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from jdna.lmc import alpha_grid, barrier, frankle_barrier, make_scorer
from jdna.models import default_device, load_model, resolve
from tests.cli import run
from tests.conftest import build_tiny_bert


@pytest.fixture()
def mc_task(tmp_path: Path) -> Path:
    rows = [
        {"question": "the cat is", "choices": ["red", "blue", "green"], "gold": i % 3} for i in range(6)
    ] + [{"question": "one two", "choices": ["three", "four"], "gold": 0, "split": "train"}]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_barrier_hand_computed() -> None:
    alphas = [0.0, 0.5, 1.0]
    assert barrier([1.0, 0.5, 1.0], alphas, higher_is_better=True) == pytest.approx(0.5)
    assert barrier([1.0, 2.0, 3.0], alphas, higher_is_better=False) == pytest.approx(0.0)
    assert barrier([1.0, 3.0, 1.0], alphas, higher_is_better=False) == pytest.approx(2.0)
    assert barrier([0.8, 0.9, 0.6], alphas, higher_is_better=True) == pytest.approx(0.0)
    assert alpha_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_frankle_barrier_hand_computed() -> None:
    # Loss 1.0 -> 2.5 -> 3.0: the chord gap is 0.5 (2.5 against 2.0), Frankle's is 3.0 - 2.0 = 1.0, since the
    # sup over the path includes the worse endpoint.
    assert frankle_barrier([1.0, 2.5, 3.0], higher_is_better=False) == pytest.approx(1.0)
    assert barrier([1.0, 2.5, 3.0], [0.0, 0.5, 1.0], higher_is_better=False) == pytest.approx(0.5)
    # Accuracy 0.9 -> 0.4 -> 0.7: error 0.1, 0.6, 0.3; sup 0.6 minus mean 0.2 = 0.4.
    assert frankle_barrier([0.9, 0.4, 0.7], higher_is_better=True) == pytest.approx(0.4)
    # A flat path has no barrier; a monotone one has half the endpoints' difference.
    assert frankle_barrier([0.5, 0.5, 0.5, 0.5], higher_is_better=True) == pytest.approx(0.0)
    assert frankle_barrier([0.8, 0.7, 0.6], higher_is_better=True) == pytest.approx(0.1)


def test_endpoints_reproduce_models_and_self_has_no_barrier(tiny_llama: Path, mc_task: Path) -> None:
    pruned = run("prune", str(tiny_llama), "-s", "0.5").record
    result = run("lmc", str(tiny_llama), pruned["path"], "--task", f"file:{mc_task}", "--points", "3")
    assert result.code == 0, result.stderr
    record = result.record
    assert record["kind"] == "lmc" and record["alphas"] == [0.0, 0.5, 1.0]
    for spec, index in ((str(tiny_llama), 0), (pruned["path"], -1)):
        ref = resolve(spec)
        model, tokenizer = load_model(ref, dtype=torch.float32)
        scorer = make_scorer(f"file:{mc_task}", ref, tokenizer, None, 0, default_device())
        loss, metric = scorer.score(model)
        assert record["loss"][index] == pytest.approx(loss, abs=1e-6)
        assert record["metric"][index] == pytest.approx(metric, abs=1e-6)
    # Frankle's barrier from the record's own curve, by hand: worst point minus the endpoints' mean.
    losses, accuracies = record["loss"], record["metric"]
    assert record["barrier_loss"] == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2, abs=1e-6)
    errors = [1 - a for a in accuracies]
    assert record["barrier_metric"] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2, abs=1e-6)
    chord = max(loss - ((1 - a) * losses[0] + a * losses[-1]) for a, loss in zip(record["alphas"], losses))
    assert record["chord_barrier_loss"] == pytest.approx(max(0.0, chord), abs=1e-6)
    same = run("lmc", str(tiny_llama), str(tiny_llama), "--task", f"file:{mc_task}", "--points", "4").record
    assert same["barrier_loss"] == pytest.approx(0.0, abs=1e-6)
    assert same["barrier_metric"] == pytest.approx(0.0, abs=1e-6)
    assert len(set(same["loss"])) == 1


def test_mismatched_architectures_exit_2(tiny_llama: Path, tiny_bert: Path, mc_task: Path, tmp_path: Path) -> None:
    other = build_tiny_bert(tmp_path / "other-bert")
    result = run("lmc", str(tiny_llama), str(other), "--task", f"file:{mc_task}")
    assert result.code == 2 and "differ" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = run("lmc", str(tiny_llama), str(tiny_llama), "--task", f"file:{mc_task}", "--points", "1")
    assert bad.code == 2 and "at least 2" in bad.stderr
    shutil.rmtree(other)
