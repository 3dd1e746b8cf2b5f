"""Truncated-SVD low-rank approximation of weight matrices.

``W ~= left @ right`` with ``left = U_r diag(S_r)`` and ``right = V_r^T``: the singular
values are folded into the left factor, so ``right`` has orthonormal rows.  By the
Eckart-Young theorem this is the best rank-``r`` approximation in Frobenius norm, with
error ``sqrt(sum_{i >= r} s_i^2)``.  The SVD runs in float64 so that small singular values
(and hence the error at high rank) are not swamped by float32 round-off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from jdna.errors import JdnaError

# Cumulative energy is a float64 running sum; without slack an exact target such as 0.9
# can be missed by one ulp and select one rank too many.
_ENERGY_TOL = 1e-12


@dataclass
class LowRankFactors:
    """Factors of a rank-``rank`` approximation.

    Attributes:
        left: float32 ``(rows, rank)``, ``U_r * S_r``.
        right: float32 ``(rank, cols)``, ``V_r^T``.
        rank: the kept rank ``r``.
        singular_values: float32, the full spectrum of the original matrix (descending),
            kept so callers can report retained energy without another SVD.
    """

    left: torch.Tensor
    right: torch.Tensor
    rank: int
    singular_values: torch.Tensor

    def reconstruct(self) -> torch.Tensor:
        """The float32 ``(rows, cols)`` approximation ``left @ right``."""
        return self.left @ self.right

    def energy(self) -> float:
        """Fraction of squared Frobenius norm retained, ``sum_{i<r} s_i^2 / sum s_i^2``."""
        sq = self.singular_values.double() ** 2
        total = float(sq.sum())
        return 1.0 if total == 0 else float(sq[: self.rank].sum()) / total


def _in_unit_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise JdnaError(f"{name}={value!r} is out of range; choose a value in (0, 1], e.g. 0.5")
    return float(value)


def rank_for_ratio(rank_ratio: float, rows: int, cols: int) -> int:
    """``max(1, round(rank_ratio * min(rows, cols)))``, rounding halves up."""
    ratio = _in_unit_interval("rank_ratio", rank_ratio)
    # floor(x + 0.5) rather than round(): Python's round() sends halves to even.
    return max(1, min(min(rows, cols), math.floor(ratio * min(rows, cols) + 0.5)))


def rank_for_bits_per_weight(bits_per_weight: float, rows: int, cols: int, value_bits: int = 16) -> int:
    """The rank whose two factors, stored at ``value_bits`` a value, cost closest to ``bits_per_weight`` per
    original weight: ``round(B·rows·cols / (value_bits·(rows + cols)))``, halves up, within [1, min(rows, cols)]."""
    if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, (int, float)) or not bits_per_weight > 0:
        raise JdnaError(f"bits_per_weight={bits_per_weight!r} must be a positive number of bits, e.g. 4")
    exact = bits_per_weight * rows * cols / (value_bits * (rows + cols))
    return max(1, min(min(rows, cols), math.floor(exact + 0.5)))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` whose top ``r`` singular values hold at least ``energy`` of ``sum s_i^2``."""
    target = _in_unit_interval("energy", energy)
    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    cumulative = torch.cumsum(sq, dim=0) / total
    reached = torch.nonzero(cumulative >= target - _ENERGY_TOL)
    # Round-off can leave the full sum a hair under 1.0; full rank then satisfies any target.
    return int(reached[0]) + 1 if reached.numel() else int(sq.numel())


def low_rank(
    weight: torch.Tensor,
    rank_ratio: float | None = None,
    energy: float | None = None,
    rank: int | None = None,
) -> LowRankFactors:
    """Best rank-``r`` approximation of a 2-D ``weight``; give exactly one of the three selectors.

    Args:
        weight: floating-point ``(rows, cols)`` matrix.
        rank_ratio: ``r = max(1, round(rank_ratio * min(rows, cols)))``, in (0, 1].
        energy: smallest ``r`` keeping this fraction of ``sum s_i^2``, in (0, 1].
        rank: ``r`` itself, in [1, min(rows, cols)] (e.g. from :func:`rank_for_bits_per_weight`).
    """
    if sum(selector is not None for selector in (rank_ratio, energy, rank)) != 1:
        raise JdnaError("give exactly one of rank_ratio, energy or rank to choose the rank, e.g. rank_ratio=0.5")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        what = (
            f"shape {tuple(weight.shape)}, dtype {weight.dtype}"
            if isinstance(weight, torch.Tensor)
            else type(weight).__name__
        )
        raise JdnaError(f"low_rank needs a 2-D floating-point matrix, got {what}; pass a Linear weight")
    rows, cols = weight.shape
    if rows == 0 or cols == 0:
        raise JdnaError(f"weight has empty shape {tuple(weight.shape)}; pass a non-empty matrix")
    if not bool(torch.isfinite(weight).all()):
        raise JdnaError("weight contains NaN or inf values; fix the checkpoint before factorizing it")
    # Validate the selector before paying for the SVD.
    if rank_ratio is not None:
        rank = rank_for_ratio(rank_ratio, rows, cols)
    elif rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(rows, cols):
            raise JdnaError(
                f"rank={rank!r} must be a whole number in [1, {min(rows, cols)}] for a {rows}x{cols} matrix"
            )
    else:
        _in_unit_interval("energy", energy)  # type: ignore[arg-type]
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    if energy is not None:
        rank = rank_for_energy(s, energy)
    left = (u[:, :rank] * s[:rank]).float()
    right = vh[:rank].float()
    return LowRankFactors(left=left, right=right, rank=rank, singular_values=s.float())
