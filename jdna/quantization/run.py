"""Quantization and low-rank factorization of a loaded model: configurations, validation, the work, statistics.

``jdna quantize`` quantizes the prunable matrices (same set and ``--include``/``--exclude`` rules as prune)
with round-to-nearest or GPTQ; GPTQ is calibrated one transformer block at a time with the same
:class:`~jdna.calibration.LayerwiseRunner` SparseGPT uses, so each block's Hessians are measured on the
outputs of the already-quantized earlier blocks. ``jdna lowrank`` replaces each matrix by its truncated SVD.

The steps that load a model, run these and write the artifacts are :mod:`jdna.quantization.quantize_step` and
:mod:`jdna.quantization.lowrank_step` (both on :mod:`jdna.steps`). The statistics place the results on the
bits-per-weight axis with :mod:`jdna.quantization.accounting`, counting exactly what is stored: packed codes,
float16 scales, packed zero-points (asymmetric grids only), a 1-bit-per-weight mask when one is carried,
float16 factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from jdna.calibration import (
    HessianAccumulator,
    LayerwiseRunner,
    calibration_identity,
    calibration_samples,
    check_calibration_spec,
    collect_inputs,
    read_calibration_text,
)
from jdna.errors import JdnaError, check_seed, unknown_name_error
from jdna.kinds.lowrank import reconstruct_lowrank
from jdna.kinds.quantized import decode_quantized
from jdna.progress import Reporter
from jdna.prunable import PrunableMatrix, prunable_matrices
from jdna.quantization.accounting import (
    DENSE_BITS,
    aggregate_bits_per_weight,
    compression_ratio,
    lowrank_bits_per_weight,
    quantized_bits_per_weight,
)
from jdna.quantization.gptq import gptq_quantize
from jdna.quantization.lowrank import low_rank, rank_for_bits_per_weight
from jdna.quantization.packing import pack_codes
from jdna.quantization.rtn import QuantizedMatrix, quantize_rtn
from jdna.quantization.spec import GRANULARITIES, MAX_BITS, MIN_BITS, QuantSpec

QUANT_METHODS = ("rtn", "gptq")
# How bits_per_weight is counted (stated in every record; docs/methods.md, "The compression axis").
QUANTIZED_BITS = "b-bit codes + a float16 scale per group (+ b-bit zero-point if asymmetric) + 1-bit mask if carried"
LOWRANK_BITS = "float16 factors: 16·r·(rows + cols) bits per rows×cols matrix"
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
    def needs_calibration(self) -> bool:
        return self.method == "gptq"

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
    if config.method not in QUANT_METHODS:
        raise unknown_name_error("method", config.method, QUANT_METHODS)
    if config.bits is None:
        raise JdnaError(f"--bits is required: a code width from {MIN_BITS} to {MAX_BITS}, e.g. --bits 4")
    if isinstance(config.bits, bool) or not isinstance(config.bits, int) or not MIN_BITS <= config.bits <= MAX_BITS:
        raise JdnaError(f"--bits must be a whole number from {MIN_BITS} to {MAX_BITS}, got {config.bits}")
    if config.granularity not in GRANULARITIES:
        raise unknown_name_error("granularity", config.granularity, GRANULARITIES)
    if config.group_size < 1:
        raise JdnaError(f"--group-size must be a positive integer (e.g. 128), got {config.group_size}")
    if config.method == "gptq":
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


def relative_error(terms: tuple[float, float]) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F from summed error terms (the absolute error when ‖W‖ is 0)."""
    diff_sq, norm_sq = terms
    return math.sqrt(diff_sq / norm_sq) if norm_sq > 0 else math.sqrt(diff_sq)


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

    if plan.method == "rtn":
        for done, matrix in enumerate(matrices, 1):
            original = matrix.param.detach().cpu().to(torch.float32)
            keep = keep_of[matrix.name]
            finish(matrix, quantize_rtn(original, plan.spec, keep), original)
            reporter.progress("quantizing matrices", done, len(matrices))
        return QuantizeOutcome(stored=stored, errors=errors, dropped_masks=dropped)

    for matrix in matrices:
        if not matrix.is_linear or matrix.block is None:
            raise JdnaError(
                f"gptq needs input activations, but '{matrix.name}' is not a linear layer inside a "
                "transformer block: --exclude it or use --method rtn"
            )
    text = read_calibration_text(config.calib)
    calib = calibration_samples(text, tokenizer, model, config.calib_samples, config.calib_seqlen, config.seed)
    if calib.seqlen < config.calib_seqlen:
        reporter.log(
            f"calibration windows are {calib.seqlen} tokens (asked {config.calib_seqlen}; capped by the "
            "model context or the calibration text)"
        )
    calibration = {
        "samples": int(calib.input_ids.shape[0]),
        "seqlen": calib.seqlen,
        "text_tokens": calib.total_tokens,
        "text": calibration_identity(config.calib),
    }
    runner = LayerwiseRunner(model, calib.input_ids, device=device)
    for index, block in runner.iter_blocks():
        block_matrices = [m for m in matrices if m.block == index]
        if block_matrices:
            hessians = HessianAccumulator()
            remove = collect_inputs({m.name: m.module for m in block_matrices}, hessians)
            try:
                runner.run(block, keep_outputs=False)
            finally:
                remove()
            for matrix in block_matrices:
                original = matrix.param.detach().to(torch.float32)
                quantized = gptq_quantize(
                    original,
                    hessians.hessian(matrix.name),
                    plan.spec,
                    block_size=config.block_size,
                    damp=config.damp,
                    act_order=config.act_order,
                    mask=None if keep_of[matrix.name] is None else keep_of[matrix.name].to(original.device),
                )
                finish(matrix, quantized, original.cpu())
            hessians.clear()
        # Rerun the block on its quantized weights: the next block calibrates on what the artifact loads.
        runner.advance(runner.run(block, keep_outputs=True))
        reporter.progress("quantizing blocks", index + 1, len(runner.blocks))
    return QuantizeOutcome(stored=stored, errors=errors, calibration=calibration, dropped_masks=dropped)


def quantize_statistics(
    model: nn.Module, outcome: QuantizeOutcome, plan: QuantizePlan
) -> dict[str, Any]:
    """bits_per_weight (numel-weighted over the quantized set), sparsity kept from masks, errors."""
    per_matrix = []
    pairs = []
    total = pruned = 0
    for name, item in outcome.stored.items():
        rows, cols = item.entry["shape"]
        numel = rows * cols
        spec = plan.spec
        mask_bits = numel if item.mask is not None else 0
        bits = quantized_bits_per_weight(
            numel, spec.bits, spec.n_scale_groups((rows, cols)), spec.symmetric, DENSE_BITS, mask_bits
        )
        count = 0 if item.mask is None else int((~item.mask).sum())
        per_matrix.append(
            {
                "name": name,
                "shape": [rows, cols],
                "numel": numel,
                "pruned": count,
                "sparsity": count / numel,
                "bits_per_weight": bits,
                "error": relative_error(outcome.errors[name]),
            }
        )
        pairs.append((numel, bits))
        total += numel
        pruned += count
    bits_per_weight = aggregate_bits_per_weight(pairs)
    all_params = sum(p.numel() for p in model.parameters())
    return {
        "bits_per_weight": bits_per_weight,
        "compression_ratio": compression_ratio(bits_per_weight),
        "sparsity": pruned / total,
        "prunable_params": total,
        "pruned_params": pruned,
        "model_params": all_params,
        "model_sparsity": pruned / all_params,
        # Over the whole set: sqrt(Σ‖W−Ŵ‖² / Σ‖W‖²).
        "relative_error": set_relative_error(outcome.errors.values()),
        "bits_accounting": QUANTIZED_BITS,
        "matrices": per_matrix,
    }


def set_relative_error(terms: Any) -> float:
    """sqrt(Σ‖W−Ŵ‖² / Σ‖W‖²) over (diff², norm²) pairs: the relative error of the whole compressed set."""
    pairs = list(terms)
    return relative_error((sum(d for d, _ in pairs), sum(n for _, n in pairs)))


# --- lowrank -------------------------------------------------------------------------------------------


@dataclass
class LowRankConfig:
    """Exactly one of `rank_ratio` (rank = ratio · min(rows, cols)), `energy` (spectral energy kept) and
    `bits_per_weight` (per matrix, the rank whose float16 factors cost closest to that many bits a weight)."""

    rank_ratio: float | None = None
    energy: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    bits_per_weight: float | None = None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"method": "svd", "include": list(self.include), "exclude": list(self.exclude)}
        if self.rank_ratio is not None:
            params["rank_ratio"] = self.rank_ratio
        elif self.bits_per_weight is not None:
            params["target_bits_per_weight"] = self.bits_per_weight
        else:
            params["energy"] = self.energy
        return params

    def rank_for(self, rows: int, cols: int) -> dict[str, Any]:
        """The selector `low_rank` takes for one matrix."""
        if self.bits_per_weight is not None:
            return {"rank": rank_for_bits_per_weight(self.bits_per_weight, rows, cols, DENSE_BITS)}
        return {"rank_ratio": self.rank_ratio, "energy": self.energy}


def _in_unit_interval(flag: str, value: float) -> None:
    if not (0 < value <= 1) or math.isnan(value):
        raise JdnaError(f"{flag} must be in (0, 1], got {value}")


def plan_lowrank(config: LowRankConfig) -> LowRankConfig:
    """Validate before any model is loaded; raises JdnaError (exit 2) on bad input."""
    given = [flag for flag, value in (("--rank-ratio", config.rank_ratio), ("--energy", config.energy),
                                      ("--bits-per-weight", config.bits_per_weight)) if value is not None]
    if len(given) > 1:
        raise JdnaError(
            f"give one of --rank-ratio, --energy and --bits-per-weight, not both {given[0]} and {given[1]}"
        )
    if not given:
        raise JdnaError(
            "give --rank-ratio R (fraction of full rank, e.g. 0.5), --energy E (e.g. 0.9) or --bits-per-weight B "
            "(e.g. 4)"
        )
    bits = config.bits_per_weight
    if bits is not None and not (bits > 0 and math.isfinite(bits)):
        raise JdnaError(f"--bits-per-weight must be a positive number of bits (e.g. 4), got {config.bits_per_weight}")
    if config.rank_ratio is not None:
        _in_unit_interval("--rank-ratio", config.rank_ratio)
    if config.energy is not None:
        _in_unit_interval("--energy", config.energy)
    return config


@dataclass
class StoredLowRank:
    entry: dict[str, Any]
    left: torch.Tensor
    right: torch.Tensor
    value: torch.Tensor
    energy: float


def lowrank_model(
    model: nn.Module, config: LowRankConfig, reporter: Reporter | None = None
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


def lowrank_statistics(
    model: nn.Module, stored: dict[str, StoredLowRank], errors: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """bits_per_weight of the float16 factors (numel-weighted over the factorized set), ranks, errors."""
    per_matrix = []
    pairs = []
    total = 0
    ratios = []
    for name, item in stored.items():
        rows, cols = item.entry["shape"]
        rank = item.entry["rank"]
        numel = rows * cols
        bits = lowrank_bits_per_weight(rows, cols, rank, DENSE_BITS)
        per_matrix.append(
            {
                "name": name,
                "shape": [rows, cols],
                "numel": numel,
                # A factorization is dense: nothing is pruned (a parent's zeros are not kept).
                "pruned": 0,
                "sparsity": 0.0,
                "rank": rank,
                "rank_ratio": rank / min(rows, cols),
                "energy": item.energy,
                "bits_per_weight": bits,
                "error": relative_error(errors[name]),
            }
        )
        pairs.append((numel, bits))
        total += numel
        ratios.append(rank / min(rows, cols))
    bits_per_weight = aggregate_bits_per_weight(pairs)
    return {
        "bits_per_weight": bits_per_weight,
        "compression_ratio": compression_ratio(bits_per_weight),
        "sparsity": 0.0,
        "prunable_params": total,
        "pruned_params": 0,
        "model_params": sum(p.numel() for p in model.parameters()),
        "stored_values": sum(item.entry["rank"] * sum(item.entry["shape"]) for item in stored.values()),
        "mean_rank_ratio": sum(ratios) / len(ratios),
        "relative_error": set_relative_error(errors.values()),
        "ranks": {name: item.entry["rank"] for name, item in stored.items()},
        "bits_accounting": LOWRANK_BITS,
        "matrices": per_matrix,
    }
