"""The artifact-kind registry (jdna.kinds) drives loading, layout checks, the mask rule and the record."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from jdna.artifact import read_artifact, write_artifact
from jdna.bitmask import pack_mask
from jdna.errors import JdnaError
from jdna.kinds import KINDS, ArtifactKind, record
from jdna.kinds.base import StoredArtifact, no_masks, stored_mask_names, tensor_family
from jdna.masks import effective_masks, mask_summary
from jdna.models import ModelRef, canonical_parameters, load_model, resolve
from jdna.placement import resolve_placement
from jdna.progress import Reporter
from jdna.steps import Produced, Step, run_step
from tests.conftest import model_parameters, prune_record

MATRIX = "layers.0.mlp.up_proj.weight"


@torch.no_grad()
def _apply_rescaled(model: nn.Module, artifact: StoredArtifact) -> None:
    params = canonical_parameters(model)
    for name, weight in artifact.tensors("weight.").items():
        params[name].copy_(weight)


def _touched(artifact: StoredArtifact) -> set[str]:
    return tensor_family(artifact, "weight.")


def _extend(record: dict[str, Any], artifact: StoredArtifact) -> None:
    record["rescaled"] = sorted(_touched(artifact))


@pytest.fixture
def rescaled_kinds() -> Iterator[None]:
    """Two kinds that rewrite one matrix as 2·W and store its mask: one declares the result dense (the mask
    ends), the other declares the mask in force."""
    common: dict[str, Any] = dict(
        apply=_apply_rescaled,
        tensor_prefixes=("weight.", "mask."),
        touched=_touched,
        record_fields=(("stats", "factor"), ("params", "factor")),
        extend_record=_extend,
    )
    KINDS.declare(ArtifactKind(name="rescaled", masked=no_masks, **common))
    KINDS.declare(ArtifactKind(name="rescaled-masked", masked=stored_mask_names, **common))
    yield
    KINDS.remove("rescaled")
    KINDS.remove("rescaled-masked")


class Rescale(Step):
    operation = "rescale"

    def __init__(self, kind: str) -> None:
        super().__init__(resolve_placement("cpu", "auto"))
        self.kind = kind  # type: ignore[misc]

    def params(self) -> dict[str, Any]:
        return {"factor": 2.0}

    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        weight = canonical_parameters(model)[MATRIX].detach() * 2.0
        # Both kinds store the mask; only the declaration says whether it still holds after the step (a
        # rule reading the tensors instead of asking the kind would keep it for both).
        tensors = {f"weight.{MATRIX}": weight, f"mask.{MATRIX}": pack_mask(weight != 0)}
        fields = {"masks": {MATRIX: list(weight.shape)}}
        return Produced(tensors=tensors, stats={"factor": 2.0}, fields=fields)


@pytest.mark.parametrize("kind", ["rescaled", "rescaled-masked"])
def test_a_declared_kind_is_applied_masked_and_recorded_as_declared(
    tiny_llama: Path, rescaled_kinds: None, kind: str
) -> None:
    pruned = prune_record(tiny_llama)
    before = effective_masks(resolve(pruned["path"]).chain)
    assert MATRIX in before
    made = run_step(Rescale(kind), resolve(pruned["path"]))
    # The record: the common fields, the declared stats field, the declared extension; nothing undeclared.
    assert made["kind"] == kind and made["factor"] == 2.0 and made["rescaled"] == [MATRIX]
    assert "sparsity" not in made and "bits_per_weight" not in made
    assert record(read_artifact(Path(made["path"])), cached=True) == {**made, "cached": True}
    # Loading applies the kind's declared change on top of the pruned parent.
    loaded = model_parameters(made["path"])
    parent = model_parameters(pruned["path"])
    assert torch.equal(loaded[MATRIX], parent[MATRIX] * 2.0)
    # The mask rule asks the kind: a dense rewrite ends the matrix's mask, a masked one keeps it.
    chain = resolve(made["path"]).chain
    held = effective_masks(chain)
    assert set(held) - {MATRIX} == set(before) - {MATRIX}
    if kind == "rescaled":
        assert MATRIX not in held
        assert mask_summary(chain)["ended_by"] == {"kind": "rescaled", "path": made["path"]}
    else:
        assert torch.equal(held[MATRIX], before[MATRIX])
        assert "ended_by" not in mask_summary(chain)


def test_a_kind_holds_only_the_tensors_it_declares(tiny_llama: Path, rescaled_kinds: None) -> None:
    made = run_step(Rescale("rescaled"), resolve(str(tiny_llama)))
    artifact = read_artifact(Path(made["path"]))
    header = {k: v for k, v in artifact.header.items() if k not in ("format", "version")}
    odd = Path("odd.safetensors")
    write_artifact(odd, header, {f"codes.{MATRIX}": torch.zeros(4, dtype=torch.uint8)})
    with pytest.raises(JdnaError, match="a rescaled artifact does not hold a tensor like 'codes."):
        read_artifact(odd)


def test_an_unknown_kind_names_the_nearest_registered_one(tiny_llama: Path) -> None:
    pruned = read_artifact(Path(prune_record(tiny_llama)["path"]))
    header = {k: v for k, v in pruned.header.items() if k not in ("format", "version")}
    header["kind"] = "prunned"
    typo = Path("typo.safetensors")
    write_artifact(typo, header, pruned.tensors())
    with pytest.raises(JdnaError, match="unknown artifact kind 'prunned' \\(did you mean 'pruned'\\?\\)"):
        read_artifact(typo)
    with pytest.raises(JdnaError, match="did you mean 'quantized'"):
        KINDS.get("quantised")


def test_every_kind_is_registered_and_loads_through_the_registry(tiny_llama: Path) -> None:
    assert KINDS.names() == ["finetuned", "lowrank", "pruned", "quantized"]
    assert [KINDS.get(name).compresses for name in KINDS.names()] == [False, True, True, True]
    pruned = prune_record(tiny_llama)
    model, _ = load_model(resolve(pruned["path"]))
    weights = canonical_parameters(model)
    for name, keep in effective_masks(resolve(pruned["path"]).chain).items():
        assert torch.all(weights[name][~keep] == 0)


def test_the_kinds_sit_below_artifacts_and_models() -> None:
    """jdna.kinds imports neither jdna.artifact nor jdna.models (they import it): no cycle through them."""
    code = "import sys, jdna.kinds; print(sorted(m for m in sys.modules if m in ('jdna.artifact', 'jdna.models', " \
           "'jdna.masks', 'jdna.steps')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
