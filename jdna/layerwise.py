"""The one layer-by-layer calibration pipeline that every calibrated compression method runs through.

A method plugs in with two hooks, the way llm-compressor's modifiers do:

- ``statistic``: what it collects from the inputs of a block's linear layers, a name in :data:`STATISTICS`
  (``input_norms`` for Wanda, ``hessian`` for SparseGPT and GPTQ, ``None`` for a method that needs no data);
- ``compress_block(index, matrices, statistics)``: how it compresses that block's matrices given them.

The pipeline owns the order of operations, the same for every method and the same as the reference Wanda,
SparseGPT and GPTQ code: block by block, the block runs on its current inputs while the statistic is collected,
the method compresses the block, and the compressed block runs again to produce the next block's inputs
(``recompute_outputs``; a method that declares it False propagates the outputs of the uncompressed block,
computed in the statistics pass). :func:`observe` is the same loop for a pass that compresses nothing (the dense
statistics of OWL and of global-scope Wanda): statistics and outputs come from one pass per block.
Blocks move to the calibration device one at a time (:class:`~jdna.calibration.LayerwiseRunner`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from jdna.calibration import (
    HessianAccumulator,
    InputNormAccumulator,
    LayerwiseRunner,
    calibration_identity,
    calibration_samples,
    collect_inputs,
)
from jdna.errors import JdnaError
from jdna.progress import Reporter
from jdna.prunable import PrunableMatrix
from jdna.registry import Registry


class Accumulator(Protocol):
    """Collects a statistic from module inputs (``accumulate(name, x2d)``) and reads it back per name."""

    def __call__(self, name: str, x: torch.Tensor) -> None: ...

    def values(self) -> Mapping[str, torch.Tensor]: ...


@dataclass(frozen=True)
class StatisticKind:
    """A statistic the pipeline can collect for a block's linear layers."""

    description: str
    accumulator: Callable[[], Accumulator]


STATISTICS: Registry[StatisticKind] = Registry("calibration statistic")
STATISTICS.add("input_norms", StatisticKind("‖X_j‖₂ per input feature over all tokens", InputNormAccumulator))
STATISTICS.add("hessian", StatisticKind("H = 2/n Σ x xᵀ per module", HessianAccumulator))


class BlockCompressor(Protocol):
    """What a calibrated method gives the pipeline."""

    @property
    def statistic(self) -> str | None:
        """A name in STATISTICS."""

    @property
    def recompute_outputs(self) -> bool:
        """Whether the next block's inputs come from the compressed block (rerun) or the statistics pass."""

    def compress_block(
        self, index: int, matrices: list[PrunableMatrix], statistics: Mapping[str, torch.Tensor]
    ) -> None:
        """Compress `matrices` (all in block `index`, on the calibration device) in place."""


@dataclass
class Calibration:
    """Calibration windows, and what a record says of them."""

    input_ids: torch.Tensor
    record: dict[str, Any]


def prepare_calibration(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    spec: str | None,
    samples: int,
    seqlen: int,
    seed: int,
    reporter: Reporter,
) -> Calibration:
    """Seeded windows of `text` (whose --calib is `spec`), and the record's ``calibration`` entry."""
    calib = calibration_samples(text, tokenizer, model, samples, seqlen, seed)
    if calib.seqlen < seqlen:
        reporter.log(
            f"calibration windows are {calib.seqlen} tokens (asked {seqlen}; capped by the "
            "model context or the calibration text)"
        )
    record = {
        "samples": int(calib.input_ids.shape[0]),
        "seqlen": calib.seqlen,
        "text_tokens": calib.total_tokens,
        "text": calibration_identity(spec),
    }
    return Calibration(input_ids=calib.input_ids, record=record)


def check_calibratable(matrices: Sequence[PrunableMatrix], why: str, alternative: str) -> None:
    """JdnaError unless every matrix is a linear layer inside a block (the only inputs the pipeline hooks)."""
    for matrix in matrices:
        if not matrix.is_linear or matrix.block is None:
            raise JdnaError(
                f"{why} input activations, but '{matrix.name}' is not a linear layer inside a "
                f"transformer block: --exclude it or {alternative}"
            )


def _layer_by_layer(
    runner: LayerwiseRunner,
    matrices: Sequence[PrunableMatrix],
    statistics_for_block: Callable[[], Accumulator],
    compress_block: Callable[[int, list[PrunableMatrix], Mapping[str, torch.Tensor]], None] | None,
    recompute_outputs: bool,
    reporter: Reporter,
    label: str,
) -> None:
    """The loop itself, the only one: see the module docstring for its order of operations."""
    for index, block in runner.iter_blocks():
        block_matrices = [m for m in matrices if m.block == index]
        if not block_matrices:
            outputs = runner.run(block, keep_outputs=True)
        else:
            statistics = statistics_for_block()
            remove = collect_inputs({m.name: m.module for m in block_matrices}, statistics)
            try:
                outputs = runner.run(block, keep_outputs=not recompute_outputs)
            finally:
                remove()
            if compress_block is not None:
                compress_block(index, block_matrices, statistics.values())
            del statistics  # a block's Hessians are freed before the next pass allocates activations
            if recompute_outputs:
                # Rerun the compressed block: the next block calibrates on what the compressed model computes.
                outputs = runner.run(block, keep_outputs=True)
        runner.advance(outputs)
        reporter.progress(label, index + 1, len(runner.blocks))


def compress(
    runner: LayerwiseRunner,
    matrices: Sequence[PrunableMatrix],
    method: BlockCompressor,
    reporter: Reporter,
    label: str,
) -> None:
    """Run `method` over the model block by block, each block's statistic collected afresh."""
    if method.statistic is None:
        raise ValueError("a method without a statistic compresses without the pipeline")
    kind = STATISTICS.get(method.statistic)
    _layer_by_layer(
        runner, matrices, kind.accumulator, method.compress_block, method.recompute_outputs, reporter, label
    )


class _Several:
    """Several statistics collected from the same inputs."""

    def __init__(self, names: Sequence[str]) -> None:
        self.accumulators = {name: STATISTICS.get(name).accumulator() for name in names}

    def __call__(self, name: str, x: torch.Tensor) -> None:
        for accumulator in self.accumulators.values():
            accumulator(name, x)

    def values(self) -> Mapping[str, torch.Tensor]:
        return {}  # read per statistic by observe(), once every block has been seen


def observe(
    runner: LayerwiseRunner,
    matrices: Sequence[PrunableMatrix],
    statistics: Sequence[str],
    reporter: Reporter,
    label: str = "activation statistics",
) -> dict[str, Mapping[str, torch.Tensor]]:
    """Statistics of the unchanged model for every matrix, keyed by statistic name: the same loop compressing
    nothing, so statistics and the next block's inputs come from one pass per block."""
    several = _Several(statistics)
    _layer_by_layer(runner, matrices, lambda: several, None, False, reporter, label)
    return {name: accumulator.values() for name, accumulator in several.accumulators.items()}
