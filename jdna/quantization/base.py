"""The quantizer interface and its registry: a quantizer is one file and one ``QUANTIZERS.add`` line.

A quantizer declares the calibration statistic it needs (``statistic``: a name in
:data:`jdna.layerwise.STATISTICS`, e.g. ``hessian`` for GPTQ; None for RTN, which then runs without a calibration
pass) and quantizes one matrix given it. The engine (:mod:`jdna.quantization.engine`) and ``jdna quantize`` read
these declarations, never a quantizer's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from jdna.quantization.spec import QuantizedMatrix, QuantSpec
from jdna.registry import Registry


class Quantizer(ABC):
    name: str = ""
    description: str = ""
    # The statistic of a block's linear-layer inputs it needs (jdna.layerwise.STATISTICS), or None.
    statistic: str | None = None
    # Calibrated quantizers: whether the next block calibrates on this block's quantized outputs (GPTQ does).
    recompute_outputs: bool = True

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None

    @abstractmethod
    def quantize(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        mask: torch.Tensor | None,
        statistic: torch.Tensor | None,
        options: Any,
    ) -> QuantizedMatrix:
        """Codes for a float32 (rows × cols) `weight`; `mask` (True = kept) positions pruned decode to exactly 0;
        `statistic` is the matrix's calibration statistic (None without one); `options` the quantize
        configuration (its method-specific knobs, e.g. block_size, damp, act_order)."""


QUANTIZERS: Registry[Quantizer] = Registry("quantization method")
