"""A model pruned outside jdna: its zeros are measured, reported by info/eval, and paired with its dense parent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from jdna.models import resolve
from jdna.sparsity import detect_sparsity, measure_directory
from tests.cli import run
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

PRUNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _prune_elsewhere(source: Path, target: Path, n_m: bool) -> dict[str, int]:
    """Zero weights with plain transformers, as an outside script would: the two smallest of every 4 inputs
    (2:4) or the first half of the rows (unstructured). Returns the zeros per matrix, counted element by element."""
    from transformers import LlamaForCausalLM

    shutil.copytree(source, target)
    model = LlamaForCausalLM.from_pretrained(str(source))
    zeros: dict[str, int] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not any(f"{p}.weight" in name for p in PRUNABLE):
                continue
            w = param.data
            if n_m:
                groups = w.reshape(w.shape[0], -1, 4)
                smallest = groups.abs().argsort(dim=-1)[..., :2]
                groups.scatter_(-1, smallest, 0.0)
            else:
                w[: w.shape[0] // 2] = 0.0
            zeros[name.removeprefix("model.")] = sum(1 for value in w.flatten().tolist() if value == 0.0)
    model.save_pretrained(str(target), safe_serialization=True)
    return zeros


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("elsewhere")
    dense = build_tiny_llama(root / "dense")
    _prune_elsewhere(dense, root / "two-four", n_m=True)
    _prune_elsewhere(dense, root / "columns", n_m=False)
    return {"dense": dense, "two-four": root / "two-four", "columns": root / "columns"}


def test_measured_zeros_match_an_element_count(elsewhere: dict[str, Path], tmp_path: Path) -> None:
    expected = _prune_elsewhere(elsewhere["dense"], tmp_path / "again", n_m=True)
    report = measure_directory(tmp_path / "again", "causal_lm")
    assert {m.name: m.zeros for m in report.matrices} == expected
    assert report.pattern == "2:4" and report.externally_pruned
    assert report.sparsity == pytest.approx(sum(expected.values()) / report.numel)
    columns = detect_sparsity(resolve(str(elsewhere["columns"])).base)
    assert columns.pattern == "unstructured" and columns.sparsity == pytest.approx(0.5)
    dense = detect_sparsity(resolve(str(elsewhere["dense"])).base)
    assert not dense.externally_pruned and dense.pattern == "unstructured" and dense.zeros == 0


def test_info_reports_an_externally_pruned_directory(elsewhere: dict[str, Path]) -> None:
    result = run("info", str(elsewhere["two-four"]))
    assert result.code == 0, result.stderr
    record = result.record
    assert record["externally_pruned"] is True
    assert record["detected_sparsity"]["pattern"] == "2:4"
    assert record["per_matrix_sparsity"]["layers.0.mlp.up_proj.weight"] == pytest.approx(0.5)
    assert record["compression"]["method"] == "external" and record["compression"]["sparsity"] == pytest.approx(0.5)
    assert "externally pruned" in result.stderr
    dense = run("info", str(elsewhere["dense"])).record
    assert dense["externally_pruned"] is False and dense["compression"]["method"] == "dense"


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mc") / "mc.jsonl"
    rows = [{"question": f"the {w} is", "choices": ["red", "blue", "green"], "gold": i % 3}
            for i, w in enumerate(["cat", "dog", "river", "city", "king", "queen"])]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_records_the_measured_pruning_and_the_dense_parent(
    elsewhere: dict[str, Path], mc_task: Path
) -> None:
    task = ("--task", f"file:{mc_task}")
    dense = run("eval", str(elsewhere["dense"]), *task).record
    assert dense["model"]["dense_parent"] is None and dense["model"]["compression"]["method"] == "dense"

    first = run("eval", str(elsewhere["two-four"]), *task)
    assert first.code == 0, first.stderr
    model = first.record["model"]
    assert model["compression"]["kind"] == "pruned" and model["compression"]["method"] == "external"
    assert model["compression"]["pattern"] == "2:4" and model["detected_sparsity"]["externally_pruned"]
    assert model["detected_sparsity"]["per_matrix"]["layers.1.self_attn.o_proj.weight"] == pytest.approx(0.5)
    assert model["dense_parent"] is None

    # Naming the parent afterwards labels the cached record (no re-run) with the id of the dense records.
    labelled = run("eval", str(elsewhere["two-four"]), *task, "--dense-parent", str(elsewhere["dense"])).record
    assert labelled["cached"] is True
    assert labelled["model"]["dense_parent"]["id"] == dense["model"]["id"]
    stored = json.loads(Path(labelled["path"]).read_text())
    assert stored["model"]["dense_parent"]["id"] == dense["model"]["id"]


def test_eval_of_a_jdna_export_finds_its_dense_parent_itself(tiny_llama: Path, mc_task: Path, tmp_path: Path) -> None:
    pruned = run("prune", str(tiny_llama), "--sparsity", "0.5")
    exported = run("export", "-o", str(tmp_path / "hf"), stdin=pruned.stdout)
    assert exported.code == 0, exported.stderr
    record = run("eval", "--task", f"file:{mc_task}", stdin=exported.stdout).record  # an export's record pipes
    model = record["model"]
    assert model["dense_parent"]["id"] == resolve(str(tiny_llama)).base.sha256
    assert model["compression"]["method"] == "magnitude" and model["compression"]["sparsity"] == pytest.approx(0.5)
    assert model["detected_sparsity"]["sparsity"] == pytest.approx(0.5)
