"""The one layer-by-layer calibration pipeline (jdna.layerwise) and the method hooks it drives.

References are hand-written loops over LayerwiseRunner (the way each method was coded before the pipeline
existed), full-model forwards, or per-matrix calls; a toy method registered here (one registration) shows a new
method is selectable by name and runs through the same pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from jdna.calibration import LayerwiseRunner, calibration_samples, collect_inputs
from jdna.models import canonical_parameters, load_model, resolve
from jdna.prunable import PrunableMatrix, prunable_matrices
from jdna.pruning import METHODS, PruneConfig, plan_prune, prune_model
from jdna.pruning.base import ScoreContext, ScoreMethod
from jdna.pruning.selection import prune_count
from jdna.pruning.sparsegpt import sparsegpt_prune_matrix
from jdna.quantization.base import QUANTIZERS, Quantizer
from jdna.quantization.engine import QuantizeConfig, encode, plan_quantize, quantize_model
from jdna.quantization.gptq import gptq_quantize
from jdna.quantization.rtn import quantize_rtn
from jdna.quantization.spec import QuantizedMatrix, QuantSpec
from tests.cli import run

SAMPLES, SEQLEN = 4, 16


class InputEnergy(ScoreMethod):
    """Toy: prune the smallest |w|·‖x‖² per row (Wanda with the squared norm)."""

    name = "toy-input-energy"
    description = "toy: |w|·‖x‖²"
    default_scope = "row"
    statistic = "input_norms"

    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        norms = context.statistics[matrix.name].to(torch.float32).reshape(1, -1)
        return matrix.param.detach().cpu().abs().to(torch.float32) * norms.pow(2)


class DenseOutputsInputEnergy(InputEnergy):
    name = "toy-input-energy-dense-outputs"
    recompute_outputs = False


class LiveInputRTN(Quantizer):
    """Toy: RTN after zeroing the inputs whose Hessian diagonal is below the median."""

    name = "toy-live-rtn"
    description = "toy: RTN of the live inputs"
    statistic = "hessian"

    def quantize(
        self, weight: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None, statistic: Any, options: Any
    ) -> QuantizedMatrix:
        diag = torch.diagonal(statistic)
        return quantize_rtn(weight * (diag >= diag.median()).to(weight.dtype).reshape(1, -1), spec, mask)


@pytest.fixture
def toy_methods() -> Iterator[None]:
    toys = [InputEnergy(), DenseOutputsInputEnergy()]
    for toy in toys:
        METHODS.add(toy.name, toy)  # the one registration a new method needs
    QUANTIZERS.add(LiveInputRTN.name, LiveInputRTN())
    try:
        yield
    finally:  # registries are process-wide: keep the toys out of other tests' name lists
        for toy in toys:
            del METHODS._items[toy.name]
        del QUANTIZERS._items[LiveInputRTN.name]


def _load(path: Path):
    return load_model(resolve(str(path)))


def _calibration(model, tokenizer, calib_file: Path) -> torch.Tensor:
    return calibration_samples(calib_file.read_text(), tokenizer, model, SAMPLES, SEQLEN, seed=0).input_ids


def _by_hand(model, input_ids: torch.Tensor, compress_block, recompute: bool = True) -> None:
    """The layer-by-layer loop written out: raw block inputs collected per module, then `compress_block`."""
    runner = LayerwiseRunner(model, input_ids)
    matrices = prunable_matrices(model)
    for index, block in runner.iter_blocks():
        block_matrices = [m for m in matrices if m.block == index]
        inputs: dict[str, list[torch.Tensor]] = {}

        def keep_input(name: str, x: torch.Tensor, inputs: dict[str, list[torch.Tensor]] = inputs) -> None:
            inputs.setdefault(name, []).append(x.clone())

        remove = collect_inputs({m.name: m.module for m in block_matrices}, keep_input)
        outputs = runner.run(block, keep_outputs=True)
        remove()
        compress_block(block_matrices, {name: torch.cat(xs).to(torch.float32) for name, xs in inputs.items()})
        runner.advance(runner.run(block, keep_outputs=True) if recompute else outputs)


def _keep_lowest_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, : prune_count(sparsity, scores.shape[1])], False)
    return keep


def _prune_reference(path: Path, calib_file: Path, score, sparsity: float, recompute: bool = True):
    model, tokenizer = _load(path)
    masks: dict[str, torch.Tensor] = {}

    def compress_block(matrices: list[PrunableMatrix], inputs: dict[str, torch.Tensor]) -> None:
        for matrix in matrices:
            keep = _keep_lowest_per_row(score(matrix.param.detach().to(torch.float32), inputs[matrix.name]), sparsity)
            matrix.param.data.masked_fill_(~keep, 0)
            masks[matrix.name] = keep

    _by_hand(model, _calibration(model, tokenizer, calib_file), compress_block, recompute)
    return masks, canonical_parameters(model)


def _pruned(path: Path, calib_file: Path, **config):
    model, tokenizer = _load(path)
    plan = plan_prune(PruneConfig(calib=str(calib_file), calib_samples=SAMPLES, calib_seqlen=SEQLEN, **config))
    outcome = prune_model(model, tokenizer, plan)
    return outcome, canonical_parameters(model)


def _energy(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return weight.abs() * x.pow(2).sum(0).sqrt().reshape(1, -1).pow(2)


@pytest.mark.parametrize("recompute", [True, False])
def test_toy_method_runs_through_the_pipeline(
    tiny_llama: Path, calib_file: Path, toy_methods: None, recompute: bool
) -> None:
    name = InputEnergy.name if recompute else DenseOutputsInputEnergy.name
    outcome, params = _pruned(tiny_llama, calib_file, method=name, sparsity=0.5)
    masks, reference_params = _prune_reference(tiny_llama, calib_file, _energy, 0.5, recompute)
    assert set(outcome.masks) == set(masks)
    for matrix_name, keep in masks.items():
        assert torch.equal(outcome.masks[matrix_name], keep), matrix_name
        assert torch.equal(params[matrix_name], reference_params[matrix_name]), matrix_name


def test_recompute_outputs_is_what_the_next_block_sees(tiny_llama: Path, calib_file: Path, toy_methods: None) -> None:
    compressed, _ = _pruned(tiny_llama, calib_file, method=InputEnergy.name, sparsity=0.5)
    dense, _ = _pruned(tiny_llama, calib_file, method=DenseOutputsInputEnergy.name, sparsity=0.5)
    block0 = [n for n in compressed.masks if n.startswith("layers.0.")]
    later = [n for n in compressed.masks if not n.startswith("layers.0.")]
    assert all(torch.equal(compressed.masks[n], dense.masks[n]) for n in block0)
    assert any(not torch.equal(compressed.masks[n], dense.masks[n]) for n in later)


def test_toy_method_is_selectable_by_name(tiny_llama: Path, calib_file: Path, toy_methods: None) -> None:
    result = run("prune", str(tiny_llama), "-s", "0.5", "--method", "toy-input-energy", "--calib", str(calib_file),
                 "--calib-samples", str(SAMPLES), "--calib-seqlen", str(SEQLEN))
    assert result.code == 0, result.stderr
    assert result.record["method"] == "toy-input-energy" and result.record["scope"] == "row"
    assert run("prune", "--help").stdout.count("toy-input-energy") >= 1
    unknown = run("prune", str(tiny_llama), "-s", "0.5", "--method", "toy-input-energergy")
    assert unknown.code == 2 and "did you mean 'toy-input-energy'" in unknown.stderr
    unknown = run("quantize", str(tiny_llama), "-b", "4", "--method", "toy-live-rt")
    assert unknown.code == 2 and "did you mean 'toy-live-rtn'" in unknown.stderr


def _quantize_reference(path: Path, calib_file: Path, quantize) -> dict[str, torch.Tensor]:
    """Each matrix quantized from the Hessian of its raw inputs (2/n XᵀX), blocks propagated quantized."""
    model, tokenizer = _load(path)

    def compress_block(matrices: list[PrunableMatrix], inputs: dict[str, torch.Tensor]) -> None:
        for matrix in matrices:
            x = inputs[matrix.name]
            hessian = 2.0 * (x.T @ x) / x.shape[0]
            value = encode(matrix.name, quantize(matrix.param.detach().to(torch.float32), hessian)).value
            matrix.param.data.copy_(value)

    _by_hand(model, _calibration(model, tokenizer, calib_file), compress_block)
    return canonical_parameters(model)


def _quantized(path: Path, calib_file: Path, **config) -> dict[str, torch.Tensor]:
    model, tokenizer = _load(path)
    plan = plan_quantize(QuantizeConfig(calib=str(calib_file), calib_samples=SAMPLES, calib_seqlen=SEQLEN, **config))
    quantize_model(model, tokenizer, plan)
    return canonical_parameters(model)


def _equal_weights(found: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], names: list[str]) -> None:
    assert names
    for name in names:
        assert torch.equal(found[name], reference[name]), name


def test_toy_quantizer_runs_through_the_pipeline(tiny_llama: Path, calib_file: Path, toy_methods: None) -> None:
    spec = QuantSpec(bits=4, granularity="channel")
    found = _quantized(tiny_llama, calib_file, bits=4, method=LiveInputRTN.name)
    toy = LiveInputRTN()
    reference = _quantize_reference(tiny_llama, calib_file, lambda w, h: toy.quantize(w, spec, None, h, None))
    names = [m.name for m in prunable_matrices(_load(tiny_llama)[0])]
    _equal_weights(found, reference, names)
    # The statistic mattered: the inputs below the (lower) median Hessian diagonal, about half, were dropped.
    for name in names:
        assert int((found[name] == 0).all(0).sum()) >= found[name].shape[1] // 2 - 1


def test_gptq_through_the_pipeline_equals_the_hand_loop(tiny_llama: Path, calib_file: Path) -> None:
    spec = QuantSpec(bits=3, granularity="group", group_size=16, symmetric=True)
    found = _quantized(tiny_llama, calib_file, bits=3, method="gptq", granularity="group", group_size=16)
    reference = _quantize_reference(tiny_llama, calib_file, lambda w, h: gptq_quantize(w, h, spec))
    _equal_weights(found, reference, [m.name for m in prunable_matrices(_load(tiny_llama)[0])])


def test_rtn_through_the_interface_equals_per_matrix_rtn(tiny_llama: Path) -> None:
    model, _ = _load(tiny_llama)
    spec = QuantSpec(bits=4, granularity="channel")
    expected = {m.name: quantize_rtn(m.param.detach().to(torch.float32), spec) for m in prunable_matrices(model)}
    found = _quantized(tiny_llama, Path("unused"), bits=4, method="rtn")
    for name, quantized in expected.items():
        assert torch.equal(found[name], encode(name, quantized).value)


def test_sparsegpt_through_the_pipeline_equals_the_hand_loop(tiny_llama: Path, calib_file: Path) -> None:
    outcome, params = _pruned(tiny_llama, calib_file, method="sparsegpt", sparsity=0.5)
    model, tokenizer = _load(tiny_llama)
    masks: dict[str, torch.Tensor] = {}

    def compress_block(matrices: list[PrunableMatrix], inputs: dict[str, torch.Tensor]) -> None:
        for matrix in matrices:
            x = inputs[matrix.name]
            hessian = 2.0 * (x.T @ x) / x.shape[0]
            weight, keep = sparsegpt_prune_matrix(matrix.param.data.to(torch.float32), hessian, 0.5)
            matrix.param.data.copy_(weight)
            masks[matrix.name] = keep

    _by_hand(model, _calibration(model, tokenizer, calib_file), compress_block)
    reference = canonical_parameters(model)
    assert set(outcome.masks) == set(masks)
    for name, keep in masks.items():
        assert torch.equal(outcome.masks[name], keep), name
        assert torch.equal(params[name], reference[name]), name
        assert torch.equal(outcome.updated[name], params[name]), name
