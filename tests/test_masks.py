"""Which pruning masks a model still obeys: per matrix, the newest step that touched it decides.

The bug this pins (issue #12): prune -> lowrank -> finetune --mode sparse re-applied the pruned parent's mask to
the dense low-rank factors, so the fine-tuned model silently had 30-70% zeros per matrix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from jdna.masks import effective_masks
from jdna.models import resolve
from tests.cli import run
from tests.conftest import WORDS, model_parameters, prune_record

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--eval-limit", "8", "--train-examples", "16"]


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("task") / "toy.jsonl"
    rows = []
    for split, count in (("train", 24), ("test", 12)):
        for i in range(count):
            label = ["cat", "dog"][i % 2]
            words = [rng.choice(WORDS) for _ in range(5)] + [label]
            rows.append({"id": f"{split}{i}", "text": " ".join(words), "label": label, "split": split})
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _step(*args: str) -> dict:
    result = run(*args)
    assert result.code == 0, result.stderr
    return result.record


def _pruned_names(path: str) -> list[str]:
    return sorted(effective_masks(resolve(path).chain))


def test_lowrank_ends_the_mask_of_every_matrix_it_factorizes(tiny_bert: Path) -> None:
    pruned = prune_record(tiny_bert)
    names = _pruned_names(pruned["path"])
    assert len(names) == 12  # 6 matrices per BERT block, 2 blocks
    lowrank = _step("lowrank", pruned["path"], "--rank-ratio", "0.5")
    assert effective_masks(resolve(lowrank["path"]).chain) == {}
    shown = _step("info", lowrank["path"])["effective_masks"]
    assert shown == {"matrices": 0, "sparsity": 0.0, "ended_by": {"kind": "lowrank", "path": lowrank["path"]}}
    assert _step("info", pruned["path"])["effective_masks"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    # Factorizing only the attention matrices leaves the feed-forward masks in force, untouched.
    partial = _step("lowrank", pruned["path"], "--rank-ratio", "0.5", "--exclude", "*intermediate*", "-o", "partial.st")
    held = effective_masks(resolve(partial["path"]).chain)
    before = effective_masks(resolve(pruned["path"]).chain)
    factorized = set(resolve(partial["path"]).top.header["lowrank"])
    assert len(factorized) == 10 and set(held) == set(before) - factorized
    for name, keep in held.items():
        assert torch.equal(keep, before[name])


def test_quantize_carries_the_mask_and_a_dense_requantization_ends_it(tiny_bert: Path) -> None:
    pruned = prune_record(tiny_bert)
    before = effective_masks(resolve(pruned["path"]).chain)
    quantized = _step("quantize", pruned["path"], "--bits", "8")
    after = effective_masks(resolve(quantized["path"]).chain)
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    # Low-rank then quantized: the quantization starts from dense factors, so no mask holds.
    lowrank = _step("lowrank", pruned["path"], "--rank-ratio", "0.5")
    requantized = _step("quantize", lowrank["path"], "--bits", "8")
    assert effective_masks(resolve(requantized["path"]).chain) == {}


@pytest.mark.parametrize("mode", ["sparse", "freeze"])
def test_masked_finetune_of_a_lowrank_child_refuses(tiny_bert: Path, task_file: Path, mode: str) -> None:
    pruned = prune_record(tiny_bert)
    lowrank = _step("lowrank", pruned["path"], "--rank-ratio", "0.5")
    result = run("finetune", lowrank["path"], "--task", f"file:{task_file}", "--mode", mode, *FAST)
    assert result.code == 2, result.stderr
    assert f"mode {mode} needs a pruning mask" in result.stderr and "lowrank" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_regrow_finetune_of_a_lowrank_child_keeps_the_factors_dense(tiny_bert: Path, task_file: Path) -> None:
    """regrow trains the model as loaded (the low-rank factors' product) without a mask: no zeros appear."""
    pruned = prune_record(tiny_bert)
    lowrank = _step("lowrank", pruned["path"], "--rank-ratio", "0.5")
    tuned = _step("finetune", lowrank["path"], "--task", f"file:{task_file}", "--mode", "regrow", *FAST)
    weights = model_parameters(tuned["path"])
    for name in effective_masks(resolve(pruned["path"]).chain):
        assert float((weights[name] == 0).float().mean()) < 0.01, name
    assert effective_masks(resolve(tuned["path"]).chain) == {}


def test_sparse_finetune_of_a_quantized_pruned_model_keeps_its_zeros(tiny_bert: Path, task_file: Path) -> None:
    pruned = prune_record(tiny_bert)
    quantized = _step("quantize", pruned["path"], "--bits", "8")
    masks = effective_masks(resolve(quantized["path"]).chain)
    tuned = _step("finetune", quantized["path"], "--task", f"file:{task_file}", "--mode", "sparse", *FAST)
    assert tuned["invariants"]["passed"]
    weights = model_parameters(tuned["path"])
    dense_before = model_parameters(quantized["path"])
    for name, keep in masks.items():
        assert torch.all(weights[name][~keep] == 0), name
        assert float((~keep).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert sum(int((weights[n] != dense_before[n]).sum()) for n in masks) > 0
    held = effective_masks(resolve(tuned["path"]).chain)
    assert set(held) == set(masks) and all(torch.equal(held[n], masks[n]) for n in masks)


def test_freeze_finetune_of_a_quantized_pruned_model_restores_pretrained_values(
    tiny_bert: Path, task_file: Path
) -> None:
    pruned = prune_record(tiny_bert)
    quantized = _step("quantize", pruned["path"], "--bits", "8")
    masks = effective_masks(resolve(quantized["path"]).chain)
    tuned = _step("finetune", quantized["path"], "--task", f"file:{task_file}", "--mode", "freeze", *FAST)
    assert tuned["invariants"]["passed"]
    weights = model_parameters(tuned["path"])
    dense = model_parameters(str(tiny_bert))
    for name, keep in masks.items():
        assert torch.equal(weights[name][~keep], dense[name][~keep]), name
