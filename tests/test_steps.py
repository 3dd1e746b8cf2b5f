"""The step runner (jdna.steps): identity, cache, output claim, load, execute, write and record, in that order."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from jdna.artifact import FORMAT_VERSION, read_artifact
from jdna.bitmask import pack_mask, unpack_mask
from jdna.errors import JdnaError
from jdna.models import ModelRef, resolve
from jdna.placement import resolve_placement
from jdna.progress import Reporter
from jdna.steps import Produced, Step, run_step
from tests.cli import run

MATRIX = "layers.0.mlp.up_proj.weight"  # (64, 32) in tests.conftest's tiny Llama


class StubPrune(Step):
    """A pruned-kind step that keeps every other weight of one matrix, counting how often it loads."""

    kind = "pruned"
    operation = "stub-prune"

    def __init__(self, every: int = 2, reusable: bool = True) -> None:
        super().__init__(resolve_placement("cpu", "auto"))
        self.every = every
        self.loads = 0
        self._reusable = reusable

    def params(self) -> dict[str, Any]:
        return {"every": self.every}

    def load(self, ref: ModelRef, reporter: Reporter) -> tuple[nn.Module, Any]:
        self.loads += 1
        return super().load(ref, reporter)

    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        keep = torch.ones(64 * 32, dtype=torch.bool)
        keep[:: self.every] = False
        keep = keep.reshape(64, 32)
        stats = {"sparsity": float((~keep).float().mean()), "note": "not shown in the record"}
        return Produced(
            tensors={f"mask.{MATRIX}": pack_mask(keep)},
            stats=stats,
            fields={"masks": {MATRIX: [64, 32]}},
        )

    def reusable(self, artifact: Any) -> bool:
        return self._reusable


def _expected_id(parent: str, operation: str, params: dict[str, Any]) -> str:
    payload = {"format": FORMAT_VERSION, "parent": parent, "operation": operation, "params": params}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_a_step_is_written_at_its_content_address_and_recorded(tiny_llama: Path) -> None:
    ref = resolve(str(tiny_llama))
    step = StubPrune()
    record = run_step(step, ref)
    expected = _expected_id(ref.base.sha256, "stub-prune", {"every": 2})
    assert record["id"] == expected and record["cached"] is False and step.loads == 1
    assert record["path"] == str(Path(os.environ["JDNA_RUNS"]) / "pruned" / f"{expected[:20]}.safetensors")
    # The record: the common fields, then what the pruned kind declares (stats it does not declare stay out).
    assert list(record)[:8] == ["path", "kind", "id", "cached", "base", "operation", "device", "dtype"]
    assert record["kind"] == "pruned" and record["operation"] == "stub-prune" and record["sparsity"] == 0.5
    assert "note" not in record and isinstance(record["seconds"], float)
    artifact = read_artifact(Path(record["path"]), verify=True)
    header = artifact.header
    assert header["operation"] == {"name": "stub-prune", "params": {"every": 2}}
    assert header["parent"] is None and header["base"]["sha256"] == ref.base.sha256
    assert header["compute"] == {"device": "cpu", "dtype": "float32"}
    assert header["stats"]["note"] == "not shown in the record"
    keep = unpack_mask(artifact.tensor(f"mask.{MATRIX}"), [64, 32])
    assert int((~keep).sum()) == 64 * 32 // 2


def test_a_cache_hit_loads_nothing(tiny_llama: Path) -> None:
    ref = resolve(str(tiny_llama))
    first = run_step(StubPrune(), ref)
    again = StubPrune()
    hit = run_step(again, ref)
    assert hit["cached"] is True and again.loads == 0
    assert {k: v for k, v in hit.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    other = StubPrune(every=4)  # other params: another id, another file
    assert run_step(other, ref)["id"] != first["id"] and other.loads == 1


def test_a_step_may_refuse_a_cached_artifact(tiny_llama: Path) -> None:
    ref = resolve(str(tiny_llama))
    run_step(StubPrune(), ref)
    fussy = StubPrune(reusable=False)
    record = run_step(fussy, ref)
    assert record["cached"] is False and fussy.loads == 1


def test_a_named_output_is_refused_before_loading_unless_forced(tiny_llama: Path, tmp_path: Path) -> None:
    ref = resolve(str(tiny_llama))
    target = tmp_path / "mine.st"
    target.write_text("someone's notes")
    step = StubPrune()
    with pytest.raises(JdnaError, match="--force"):
        run_step(step, ref, output=target)
    assert step.loads == 0 and target.read_text() == "someone's notes"
    record = run_step(step, ref, output=target, force=True)
    assert record["path"] == str(target) and read_artifact(target).id == record["id"]
    # The same step again at the same -o is this very artifact: a cache hit, no --force needed.
    assert run_step(StubPrune(), ref, output=target)["cached"] is True


def test_the_input_is_never_an_output(tiny_llama: Path) -> None:
    parent = run_step(StubPrune(), resolve(str(tiny_llama)))
    child = resolve(parent["path"])
    step = StubPrune(every=3)
    with pytest.raises(JdnaError):
        run_step(step, child, output=Path(parent["path"]), force=True)
    assert step.loads == 0 and read_artifact(Path(parent["path"])).id == parent["id"]


def test_a_child_names_its_parent_and_its_id_derives_from_the_parents(tiny_llama: Path) -> None:
    parent = run_step(StubPrune(), resolve(str(tiny_llama)))
    child = run_step(StubPrune(every=3), resolve(parent["path"]))
    assert child["id"] == _expected_id(parent["id"], "stub-prune", {"every": 3})
    header = read_artifact(Path(child["path"])).header
    assert header["parent"]["id"] == parent["id"] and header["parent"]["kind"] == "pruned"


def test_commands_on_the_runner_keep_their_records(tiny_llama: Path) -> None:
    """prune, quantize and lowrank go through run_step: cache hits are served without loading, as before."""
    for args in (["prune", "-s", "0.5"], ["quantize", "--bits", "4"], ["lowrank", "-r", "0.5"]):
        first = run(args[0], str(tiny_llama), *args[1:])
        assert first.code == 0, first.stderr
        second = run(args[0], str(tiny_llama), *args[1:])
        assert second.record["cached"] is True and "cache hit" in second.stderr
        assert second.record["id"] == first.record["id"]
