"""jdna finetune: each mode's invariant, masked Adam state, subsampling, resume, bad input, records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from jdna.artifact import read_artifact
from jdna.finetune import FinetuneConfig, Interrupted, load_classification_task, run_finetune, training_items
from jdna.finetune.data import Schedule
from jdna.finetune.masking import MaskEnforcer, dense_ref
from jdna.masks import effective_masks
from jdna.models import canonical_parameters, load_model, resolve
from tests.cli import run
from tests.conftest import WORDS, InterruptAt, model_parameters, prune_record

LABELS = ["cat", "dog", "red"]
FAST = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--eval-limit", "20"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-label classification task: 60 train rows (unbalanced 30/20/10) and 30 test rows."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("task") / "toy.jsonl"
    rows = []
    counts = {"train": [30, 20, 10], "test": [10, 10, 10]}
    for split, per_label in counts.items():
        for label, count in enumerate(per_label):
            for _ in range(count):
                words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))] + [LABELS[label]] * 2
                rng.shuffle(words)
                row = {"id": f"{split}{len(rows)}", "text": " ".join(words), "label": LABELS[label], "split": split}
                rows.append(row)
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_llama"])
def test_mode_invariants(which: str, request: pytest.FixtureRequest, task_file: Path) -> None:
    model_dir = request.getfixturevalue(which)
    pruned = prune_record(model_dir)
    masks = effective_masks(resolve(pruned["path"]).chain)
    dense_model, _ = load_model(resolve(str(model_dir)))
    dense = {name: p.detach().clone() for name, p in canonical_parameters(dense_model).items()}
    records = {}
    for mode in ("sparse", "freeze", "regrow", "dense"):
        result = run("finetune", pruned["path"], "--task", f"file:{task_file}", "--mode", mode, *FAST)
        assert result.code == 0, result.stderr
        record = result.record
        records[mode] = record
        assert record["kind"] == "finetuned" and record["mode"] == mode and record["objective"] == "classification"
        assert record["split"] == {**record["split"], "train_pool": 60, "validation_pool": 30, "train_used": 60,
                                   "validation_used": 20}
        weights = model_parameters(record["path"])
        changed = sum(int((weights[n] != dense[n]).sum()) for n in masks)
        assert changed > 0, f"{mode}: training changed nothing"
        if mode == "sparse":
            assert record["invariants"]["checked"] == "exact_zeros" and record["invariants"]["passed"]
            assert record["invariants"]["optimizer_state_violations"] == 0
            for name, keep in masks.items():
                assert torch.all(weights[name][~keep] == 0), name
            assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
            assert read_artifact(Path(record["path"])).tensor_names.count(f"mask.{next(iter(masks))}") == 1
        elif mode == "freeze":
            assert record["invariants"]["checked"] == "frozen_values" and record["invariants"]["passed"]
            for name, keep in masks.items():
                got, want = weights[name][~keep], dense[name][~keep]
                assert torch.equal(got.view(torch.int32), want.view(torch.int32)), name
            kept_changed = sum(int((weights[n][k] != dense[n][k]).sum()) for n, k in masks.items())
            assert kept_changed > 0
        elif mode == "regrow":
            assert record["invariants"]["checked"] is None
            regrown = sum(int((weights[n][~k] != 0).sum()) for n, k in masks.items())
            assert regrown > 0, "regrow: pruned positions never became nonzero"
        else:
            assert record["sparsity"] < 0.01  # started from the dense parent
        evaluation = json.loads(Path(record["eval_record"]).read_text())
        assert evaluation["kind"] == "eval" and evaluation["transfer"]["mode"] == mode
        assert evaluation["model"]["compression"]["sparsity"] == pytest.approx(0.5)
        assert len(evaluation["per_item"]["values"]) == evaluation["n"] == 20
        per_item = evaluation["per_item"]
        # Predictions and golds per item (the analysis's majority-class floor), consistent with the values.
        assert [float(p == g) for p, g in zip(per_item["predictions"], per_item["golds"])] == per_item["values"]
        assert all(isinstance(g, int) for g in per_item["golds"])
        assert set(evaluation["metrics"]) >= {"accuracy", "f1"}
        assert record["metrics"]["accuracy"]["value"] == evaluation["metrics"]["accuracy"]["value"]
    # The fine-tuned artifact pipes into info and back into finetune's own cache.
    info = run("info", "--summary", stdin=json.dumps(records["sparse"]))
    assert info.code == 0, info.stderr
    assert info.record["lineage"][-1]["kind"] == "finetuned"
    assert info.record["invariants"] == records["sparse"]["invariants"] and info.record["mode"] == "sparse"
    assert "invariant check (exact_zeros): passed" in info.stderr
    assert info.record["eval"]["metrics"]["accuracy"] == records["sparse"]["metrics"]["accuracy"]
    again = run("finetune", pruned["path"], "--task", f"file:{task_file}", "--mode", "sparse", *FAST)
    assert again.code == 0 and again.record["cached"] is True
    assert again.record["id"] == records["sparse"]["id"]


def test_adam_state_is_masked() -> None:
    """Moments that are nonzero at pruned positions (e.g. from earlier dense steps) are zeroed after a step."""
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    keep = torch.rand(8, 8) > 0.5
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):  # dense steps first: moments everywhere
        optimizer.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        optimizer.step()
    state = optimizer.state[layer.weight]
    assert bool((state["exp_avg"][~keep] != 0).any())
    enforcer = MaskEnforcer.build(layer, {"weight": keep}, "sparse")
    assert enforcer.check(optimizer)["passed"] is False  # stale moments are a violation
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 8)).pow(2).sum().backward()
        enforcer.mask_gradients()
        optimizer.step()
        enforcer.after_step(optimizer)
    assert torch.all(layer.weight[~keep] == 0)
    assert torch.all(state["exp_avg"][~keep] == 0) and torch.all(state["exp_avg_sq"][~keep] == 0)
    assert bool((state["exp_avg"][keep] != 0).any())
    result = enforcer.check(optimizer)
    assert result == {**result, "passed": True, "violations": 0, "optimizer_state_violations": 0}


def test_freeze_survives_weight_decay() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 6)
    keep = torch.rand(6, 6) > 0.5
    with torch.no_grad():  # a pretrained -0.0 at a pruned position must survive bit for bit
        first = torch.nonzero(~keep)[0]
        layer.weight[first[0], first[1]] = -0.0
    original = layer.weight.detach().clone()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-1, weight_decay=0.5)
    enforcer = MaskEnforcer.build(layer, {"weight": keep}, "freeze")
    assert enforcer.entries[0].exact
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(4, 6)).sum().backward()
        enforcer.mask_gradients()
        optimizer.step()
        enforcer.after_step(optimizer)
    assert torch.equal(layer.weight[~keep].view(torch.int32), original[~keep].view(torch.int32))
    assert not torch.equal(layer.weight[keep], original[keep])
    assert enforcer.check(optimizer)["passed"]


def test_stratified_subsampling(task_file: Path) -> None:
    task = load_classification_task(f"file:{task_file}")
    subset = training_items(task, FinetuneConfig(task="x", train_examples=12, seed=3))
    counts = [sum(item.label == i for item in subset) for i in range(3)]
    assert len(subset) == 12 and counts == [6, 4, 2]
    half = training_items(task, FinetuneConfig(task="x", train_fraction=0.5, seed=3))
    assert len(half) == 30 and [sum(item.label == i for item in half) for i in range(3)] == [15, 10, 5]
    assert {item.id for item in subset} <= {item.id for item in half}
    other = training_items(task, FinetuneConfig(task="x", train_examples=12, seed=4))
    assert {item.id for item in other} != {item.id for item in subset}
    assert len(training_items(task, FinetuneConfig(task="x"))) == 60
    schedule = Schedule(n_examples=12, batch_size=5, grad_accum=2, epochs=2, seed=0)
    assert schedule.steps_per_epoch == 2 and schedule.total_steps == 4
    assert sorted(i for b in schedule.step_batches(0) + schedule.step_batches(1) for i in b) == list(range(12))


def test_resume_after_interrupt_equals_uninterrupted(tiny_bert: Path, task_file: Path, tmp_path: Path) -> None:
    ref = resolve(prune_record(tiny_bert)["path"])
    config = FinetuneConfig(
        task=f"file:{task_file}", mode="sparse", epochs=2, batch_size=8, lr=1e-3, eval_limit=20, checkpoint_every=3
    )
    straight = run_finetune(ref, config, tmp_path / "straight.safetensors")
    resumed_path = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupted):
        run_finetune(ref, config, resumed_path, reporter=InterruptAt(5))
    checkpoint = tmp_path / "resumed.safetensors.ckpt"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 5
    assert not resumed_path.exists()
    resumed = run_finetune(ref, config, resumed_path)
    assert not checkpoint.exists()
    a, b = read_artifact(Path(straight["path"])), read_artifact(resumed_path)
    assert b.header["stats"]["resumed_from_step"] == 5
    assert a.header["tensors_sha256"] == b.header["tensors_sha256"]
    assert a.header["stats"]["train_loss"] == b.header["stats"]["train_loss"]
    assert straight["metrics"] == resumed["metrics"]


def test_dense_ref_and_masks(tiny_llama: Path) -> None:
    ref = resolve(prune_record(tiny_llama)["path"])
    assert dense_ref(ref).chain == [] and len(effective_masks(ref.chain)) > 0
    assert effective_masks(resolve(str(tiny_llama)).chain) == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "sparsest"], "unknown mode 'sparsest'"),
        (["--mode", "dense", "--train-fraction", "1.5"], "outside (0, 1]"),
        (["--mode", "dense", "--train-fraction", "0"], "outside (0, 1]"),
        (["--mode", "dense", "--train-examples", "10", "--train-fraction", "0.5"], "not both"),
        (["--mode", "dense", "--train-examples", "1000"], "has only 60 items"),
        (["--mode", "sparse"], "mode sparse needs a pruned model"),
        (["--mode", "freeze"], "mode freeze needs a pruned model"),
    ],
)
def test_bad_input_exits_2(tiny_bert: Path, task_file: Path, args: list[str], needle: str) -> None:
    result = run("finetune", str(tiny_bert), "--task", f"file:{task_file}", *args)
    assert result.code == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_non_classification_task_exits_2(tiny_bert: Path, tmp_path: Path) -> None:
    # Multiple choice trains a multiple-choice head on an encoder (tests/test_finetune_mc.py); QA cannot.
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n".join(json.dumps({"question": f"q {i}?", "answers": ["a"]}) for i in range(10)) + "\n")
    result = run("finetune", str(tiny_bert), "--task", f"file:{qa_file}", "--mode", "dense")
    assert result.code == 2
    assert "generation task" in result.stderr and "encoder with no LM head" in result.stderr
    assert "classification task" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run("finetune", str(tiny_bert), "--mode", "dense")
    assert missing.code == 2 and "--task" in missing.stderr
