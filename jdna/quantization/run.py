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
from dataclasses import dataclass
from typing import Any

from torch import nn

from jdna.errors import JdnaError
from jdna.quantization.accounting import (
    DENSE_BITS,
    aggregate_bits_per_weight,
    compression_ratio,
    lowrank_bits_per_weight,
    quantized_bits_per_weight,
)
from jdna.quantization.engine import (  # the method side of the quantize and lowrank steps
    QuantizeOutcome,
    QuantizePlan,
    StoredLowRank,
)
from jdna.quantization.lowrank import rank_for_bits_per_weight

# How bits_per_weight is counted (stated in every record; docs/methods.md, "The compression axis").
QUANTIZED_BITS = "b-bit codes + a float16 scale per group (+ b-bit zero-point if asymmetric) + 1-bit mask if carried"
LOWRANK_BITS = "float16 factors: 16·r·(rows + cols) bits per rows×cols matrix"


# --- quantize: the work --------------------------------------------------------------------------------


def relative_error(terms: tuple[float, float]) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F from summed error terms (the absolute error when ‖W‖ is 0)."""
    diff_sq, norm_sq = terms
    return math.sqrt(diff_sq / norm_sq) if norm_sq > 0 else math.sqrt(diff_sq)


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
