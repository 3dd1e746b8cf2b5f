"""Quantizing and factorizing a loaded model in place: the configuration a quantize step validates, the
quantizers driven through the calibration pipeline, and what each matrix stores.

Quantizers are registered in :data:`jdna.quantization.base.QUANTIZERS`. One that declares a calibration
statistic (GPTQ: the Hessian) runs through the one layer-by-layer pipeline of :mod:`jdna.layerwise`, so each
block's statistic is measured on the outputs of the already-quantized earlier blocks; one without (RTN) quantizes
each matrix directly. The steps around this (content address, cache, artifact) are
:mod:`jdna.quantization.quantize_step` and :mod:`jdna.quantization.lowrank_step`; statistics live in
:mod:`jdna.quantization.run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from jdna import layerwise
from jdna.calibration import LayerwiseRunner, calibration_identity, check_calibration_spec, read_calibration_text
from jdna.errors import JdnaError, check_seed, unknown_name_error
from jdna.kinds.lowrank import reconstruct_lowrank
from jdna.kinds.quantized import decode_quantized
from jdna.layerwise import check_calibratable, prepare_calibration
from jdna.progress import Reporter
from jdna.prunable import PrunableMatrix, prunable_matrices
from jdna.quantization.base import QUANTIZERS, Quantizer
from jdna.quantization.lowrank import low_rank
from jdna.quantization.packing import pack_codes
from jdna.quantization.spec import GRANULARITIES, MAX_BITS, MIN_BITS, QuantizedMatrix, QuantSpec

# Scales and factors are stored as float16, the reference precision of the compression axis, so the
# accounting's 16 bits per stored value is what the file really holds.
STORED_FLOAT = torch.float16
_FLOAT16_MAX = torch.finfo(torch.float16).max


# --- quantize: configuration ---------------------------------------------------------------------------


@dataclass
class QuantizeConfig:
    """What the user asked for; :func:`plan_quantize` validates it and resolves defaults."""

    bits: int | None = None
    method: str = "rtn"
    granularity: str = "channel"
    group_size: int = 128
    symmetric: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    calib: str | None = None
    calib_samples: int = 128
    calib_seqlen: int = 512
    seed: int = 0
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False


@dataclass
class QuantizePlan:
    """A validated configuration."""

    method: str
    spec: QuantSpec
    config: QuantizeConfig

    @property
    def quantizer(self) -> Quantizer:
        return QUANTIZERS.get(self.method)

    @property
    def needs_calibration(self) -> bool:
        return self.quantizer.needs_calibration

    def params(self) -> dict[str, Any]:
        """The parameters that define the result (what the content address is computed from)."""
        c = self.config
        params: dict[str, Any] = {
            "method": self.method,
            "bits": self.spec.bits,
            "granularity": self.spec.granularity,
            "symmetric": self.spec.symmetric,
            "include": list(c.include),
            "exclude": list(c.exclude),
        }
        if self.spec.granularity == "group":
            params["group_size"] = self.spec.group_size
        if self.needs_calibration:
            params.update(
                seed=c.seed,
                calib_samples=c.calib_samples,
                calib_seqlen=c.calib_seqlen,
                calib=calibration_identity(c.calib),
                block_size=c.block_size,
                damp=c.damp,
                act_order=c.act_order,
            )
        return params


def _check_calibration_flags(calib: str | None, samples: int, seqlen: int) -> None:
    if samples < 1:
        raise JdnaError("--calib-samples must be at least 1")
    if seqlen < 2:
        raise JdnaError("--calib-seqlen must be at least 2")
    check_calibration_spec(calib)


def plan_quantize(config: QuantizeConfig) -> QuantizePlan:
    """Validate a configuration before any model is loaded; raises JdnaError (exit 2) on bad input.

    Whether ``--group-size`` divides every matrix's input width can only be checked once the model's
    shapes are known: :func:`quantize_model` does it before quantizing anything.
    """
    check_seed(config.seed)
    if config.method not in QUANTIZERS:
        raise unknown_name_error("method", config.method, QUANTIZERS.names())
    if config.bits is None:
        raise JdnaError(f"--bits is required: a code width from {MIN_BITS} to {MAX_BITS}, e.g. --bits 4")
    if isinstance(config.bits, bool) or not isinstance(config.bits, int) or not MIN_BITS <= config.bits <= MAX_BITS:
        raise JdnaError(f"--bits must be a whole number from {MIN_BITS} to {MAX_BITS}, got {config.bits}")
    if config.granularity not in GRANULARITIES:
        raise unknown_name_error("granularity", config.granularity, GRANULARITIES)
    if config.group_size < 1:
        raise JdnaError(f"--group-size must be a positive integer (e.g. 128), got {config.group_size}")
    if QUANTIZERS.get(config.method).needs_calibration:
        _check_calibration_flags(config.calib, config.calib_samples, config.calib_seqlen)
        if config.block_size < 1:
            raise JdnaError("--block-size must be at least 1")
        if not (math.isfinite(config.damp) and config.damp >= 0):
            raise JdnaError(f"--damp must be a non-negative fraction (e.g. 0.01), got {config.damp}")
    spec = QuantSpec(
        bits=config.bits,
        granularity=config.granularity,
        group_size=config.group_size,
        symmetric=config.symmetric,
    )
    return QuantizePlan(method=config.method, spec=spec, config=config)


# --- quantize: the work --------------------------------------------------------------------------------


@dataclass
class StoredQuantized:
    """One matrix as the artifact stores it, plus what it decodes to (float32)."""

    entry: dict[str, Any]
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    mask: torch.Tensor | None
    value: torch.Tensor


@dataclass
class QuantizeOutcome:
    stored: dict[str, StoredQuantized]
    errors: dict[str, tuple[float, float]]  # name → error_terms
    calibration: dict[str, Any] | None = None
    dropped_masks: list[str] = field(default_factory=list)


def encode(name: str, quantized: QuantizedMatrix) -> StoredQuantized:
    """Pack a QuantizedMatrix into what the artifact stores, and decode it back as a load will."""
    spec = quantized.spec
    scales = quantized.scales.detach().cpu()
    if not bool(torch.isfinite(scales).all()) or float(scales.abs().max()) > _FLOAT16_MAX:
        raise JdnaError(
            f"'{name}' has weights too large for float16 scales (max scale {float(scales.abs().max()):.3g}); "
            "--exclude it"
        )
    scales16 = scales.to(STORED_FLOAT).contiguous()
    codes = pack_codes(quantized.codes.detach().cpu(), spec.bits)
    zeros = None if spec.symmetric else pack_codes(quantized.zeros.detach().cpu().round().to(torch.uint8), spec.bits)
    mask = None if quantized.mask is None else quantized.mask.detach().cpu()
    entry = {
        "shape": list(quantized.shape),
        "bits": spec.bits,
        "granularity": spec.granularity,
        "group_size": spec.group_size,
        "symmetric": spec.symmetric,
    }
    # The value decoded from the float16 scales, not the float32 ones the quantizer used, so that the
    # statistics and the weights later calibration blocks see are exactly what loading reproduces.
    value = decode_quantized(entry, codes, scales16, zeros, mask)
    return StoredQuantized(entry=entry, codes=codes, scales=scales16, zeros=zeros, mask=mask, value=value)


def error_terms(weight: torch.Tensor, approximation: torch.Tensor) -> tuple[float, float]:
    """(‖W − Ŵ‖²_F, ‖W‖²_F), so per-matrix and whole-set relative errors come from the same sums."""
    weight = weight.detach().to(torch.float64)
    diff = weight - approximation.detach().to(torch.float64)
    return float(diff.pow(2).sum()), float(weight.pow(2).sum())


def _usable_mask(matrix: PrunableMatrix, keep: torch.Tensor | None) -> bool:
    if keep is None or tuple(keep.shape) != tuple(matrix.param.shape):
        return False
    return bool((matrix.param.detach().cpu()[~keep] == 0).all())


def check_matrices(model: nn.Module, plan: QuantizePlan) -> list[PrunableMatrix]:
    """The matrices to quantize; JdnaError if a glob matches nothing or the group size does not divide one."""
    matrices = prunable_matrices(model, plan.config.include, plan.config.exclude)
    for matrix in matrices:
        # Before any work: a group size that does not divide some matrix is bad input, not a crash midway.
        plan.spec.validate_for(tuple(matrix.param.shape), f"'{matrix.name}'")
    return matrices


def quantize_model(
    model: nn.Module,
    tokenizer: Any,
    plan: QuantizePlan,
    reporter: Reporter | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> QuantizeOutcome:
    """Quantize `model`'s prunable matrices in place (their weights become the dequantized values).

    `device`: where GPTQ runs each block (the model may stay on the CPU; see LayerwiseRunner).

    `masks` (canonical name → bool keep-mask, e.g. from :func:`inherited_masks`) keep pruned weights at
    exactly zero; a mask whose pruned positions hold nonzero weights is dropped (and listed).
    """
    reporter = reporter or Reporter()
    config = plan.config
    matrices = check_matrices(model, plan)
    masks = masks or {}
    keep_of: dict[str, torch.Tensor | None] = {}
    dropped = []
    for matrix in matrices:
        keep = masks.get(matrix.name)
        if keep is not None and not _usable_mask(matrix, keep):
            dropped.append(matrix.name)
            keep = None
        keep_of[matrix.name] = keep
    if dropped:
        reporter.log(f"ignoring the parent's mask of {len(dropped)} matrices whose pruned weights are not zero")
    carried = sum(1 for keep in keep_of.values() if keep is not None)
    if carried:
        reporter.log(f"keeping the parent's pruning masks of {carried} matrices (pruned weights stay 0)")

    stored: dict[str, StoredQuantized] = {}
    errors: dict[str, tuple[float, float]] = {}

    def finish(matrix: PrunableMatrix, quantized: QuantizedMatrix, original: torch.Tensor) -> None:
        item = encode(matrix.name, quantized)
        stored[matrix.name] = item
        errors[matrix.name] = error_terms(original, item.value)
        matrix.param.data.copy_(item.value.to(device=matrix.param.device, dtype=matrix.param.dtype))

    quantizer = plan.quantizer
    if not quantizer.needs_calibration:
        for done, matrix in enumerate(matrices, 1):
            original = matrix.param.detach().cpu().to(torch.float32)
            finish(matrix, quantizer.quantize(original, plan.spec, keep_of[matrix.name], None, config), original)
            reporter.progress("quantizing matrices", done, len(matrices))
        return QuantizeOutcome(stored=stored, errors=errors, dropped_masks=dropped)

    uncalibrated = ", ".join(name for name in QUANTIZERS.names() if not QUANTIZERS.get(name).needs_calibration)
    check_calibratable(matrices, f"{quantizer.name} needs", f"use --method {uncalibrated}")
    text = read_calibration_text(config.calib)
    calibration = prepare_calibration(
        model, tokenizer, text, config.calib, config.calib_samples, config.calib_seqlen, config.seed, reporter
    )
    runner = LayerwiseRunner(model, calibration.input_ids, device=device)
    block_quantizer = _BlockQuantizer(quantizer, plan, keep_of, finish)
    layerwise.compress(runner, matrices, block_quantizer, reporter, "quantizing blocks")
    return QuantizeOutcome(stored=stored, errors=errors, calibration=calibration.record, dropped_masks=dropped)


@dataclass
class _BlockQuantizer:
    """A quantizer as the calibration pipeline drives it (jdna.layerwise.BlockCompressor)."""

    quantizer: Quantizer
    plan: QuantizePlan
    keep_of: Mapping[str, torch.Tensor | None]
    finish: Callable[[PrunableMatrix, QuantizedMatrix, torch.Tensor], None]

    @property
    def statistic(self) -> str | None:
        return self.quantizer.statistic

    @property
    def recompute_outputs(self) -> bool:
        return self.quantizer.recompute_outputs

    def compress_block(
        self, index: int, matrices: list[PrunableMatrix], statistics: Mapping[str, torch.Tensor]
    ) -> None:
        for matrix in matrices:
            original = matrix.param.detach().to(torch.float32)
            quantized = self.quantizer.quantize(
                original, self.plan.spec, self.keep_of[matrix.name], statistics[matrix.name], self.plan.config
            )
            self.finish(matrix, quantized, original.cpu())


class LowRankSelector(Protocol):
    """What :func:`lowrank_model` needs of a lowrank configuration (jdna.quantization.run.LowRankConfig)."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]

    def rank_for(self, rows: int, cols: int) -> dict[str, Any]: ...


@dataclass
class StoredLowRank:
    entry: dict[str, Any]
    left: torch.Tensor
    right: torch.Tensor
    value: torch.Tensor
    energy: float


def lowrank_model(
    model: nn.Module, config: LowRankSelector, reporter: Reporter | None = None
) -> tuple[dict[str, StoredLowRank], dict[str, tuple[float, float]]]:
    """Factorize each prunable matrix in place (weights become left @ right, from the float16 factors)."""
    reporter = reporter or Reporter()
    matrices = prunable_matrices(model, config.include, config.exclude)
    stored: dict[str, StoredLowRank] = {}
    errors: dict[str, tuple[float, float]] = {}
    for done, matrix in enumerate(matrices, 1):
        original = matrix.param.detach().cpu().to(torch.float32)
        factors = low_rank(original, **config.rank_for(*original.shape))
        left = factors.left.to(STORED_FLOAT).contiguous()
        right = factors.right.to(STORED_FLOAT).contiguous()
        if not (bool(torch.isfinite(left).all()) and bool(torch.isfinite(right).all())):
            raise JdnaError(f"'{matrix.name}' has singular values too large for float16 factors: --exclude it")
        value = reconstruct_lowrank(left, right)
        rows, cols = original.shape
        stored[matrix.name] = StoredLowRank(
            entry={"shape": [rows, cols], "rank": factors.rank},
            left=left,
            right=right,
            value=value,
            energy=factors.energy(),
        )
        errors[matrix.name] = error_terms(original, value)
        matrix.param.data.copy_(value.to(device=matrix.param.device, dtype=matrix.param.dtype))
        reporter.progress("factorizing matrices", done, len(matrices))
    return stored, errors
