"""How a weight matrix is quantized (bit width, scale granularity, grid symmetry), and the quantized-matrix
container RTN and GPTQ produce.

Weight matrices follow the ``torch.nn.Linear`` layout ``(out_features, in_features)``,
i.e. rows are output channels and columns are input features.  Granularity decides how
many (scale, zero-point) pairs there are:

* ``"tensor"``: one pair for the whole matrix, stored with shape ``(1, 1)``;
* ``"channel"``: one pair per output row, shape ``(rows, 1)``;
* ``"group"``: one pair per row and per ``group_size`` consecutive input columns,
  shape ``(rows, cols // group_size)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from jdna.errors import JdnaError, unknown_name_error
from jdna.quantization.accounting import quantized_bits_per_weight

GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")
MIN_BITS = 2
# Codes are stored one per uint8, so eight bits is the ceiling.
MAX_BITS = 8


def _suggest_group_size(cols: int, group_size: int) -> int:
    """A divisor of ``cols`` to propose instead of ``group_size``.

    Power-of-two group sizes are what packed kernels expect, so prefer the largest one
    that divides ``cols`` and is not larger than the requested size; fall back to the
    largest divisor of any kind when ``cols`` has no useful power-of-two factor.
    """
    divisors = [d for d in range(1, min(cols, group_size) + 1) if cols % d == 0]
    powers = [d for d in divisors if d & (d - 1) == 0 and d >= 8]
    return max(powers) if powers else max(divisors)


@dataclass(frozen=True)
class QuantSpec:
    """A quantization recipe; validated on construction so a bad spec fails early.

    Attributes:
        bits: code width, 2 to 8 inclusive.
        granularity: ``"tensor"``, ``"channel"`` or ``"group"`` (see the module docstring).
        group_size: input columns sharing one scale; only used by ``"group"``.
        symmetric: if True the grid is centred on zero and needs no stored zero-point.
    """

    bits: int
    granularity: str
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise JdnaError(f"bits must be an integer, got {self.bits!r}; use a whole number from 2 to 8")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise JdnaError(
                f"bits={self.bits} is out of range; choose a bit width from {MIN_BITS} to {MAX_BITS}"
            )
        if self.granularity not in GRANULARITIES:
            raise unknown_name_error("granularity", str(self.granularity), GRANULARITIES)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise JdnaError(f"group_size={self.group_size!r} is invalid; use a positive integer such as 128")

    @property
    def maxq(self) -> int:
        """The largest code, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def n_groups_per_row(self, cols: int) -> int:
        """Scale columns for a matrix with ``cols`` input features (1 unless granularity is group)."""
        return cols // self.group_size if self.granularity == "group" else 1

    def scale_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """Shape of the ``scales``/``zeros`` tensors for a weight of ``shape``."""
        rows, cols = int(shape[0]), int(shape[1])
        if self.granularity == "tensor":
            return (1, 1)
        return (rows, self.n_groups_per_row(cols))

    def n_scale_groups(self, shape: Sequence[int]) -> int:
        """How many (scale, zero-point) pairs a weight of ``shape`` needs; used for bit accounting."""
        r, c = self.scale_shape(shape)
        return r * c

    def validate_for(self, shape: Sequence[int], name: str = "the weight") -> None:
        """Raise JdnaError unless a weight of ``shape`` can be quantized with this spec.

        ``name`` only appears in the message so the user knows which layer is at fault.
        """
        if len(shape) != 2:
            raise JdnaError(
                f"{name} has shape {tuple(shape)} but quantization needs a 2-D (out, in) matrix; "
                "reshape it first"
            )
        rows, cols = int(shape[0]), int(shape[1])
        if rows < 1 or cols < 1:
            raise JdnaError(f"{name} has empty shape {tuple(shape)}; pass a non-empty matrix")
        if self.granularity == "group" and cols % self.group_size != 0:
            suggestion = _suggest_group_size(cols, self.group_size)
            raise JdnaError(
                f"group size {self.group_size} does not divide the {cols} input columns of {name}; "
                f"choose a divisor such as {suggestion}"
            )


@dataclass
class QuantizedMatrix:
    """Integer codes plus the per-group affine parameters that map them back to floats.

    Attributes:
        codes: uint8 ``(rows, cols)`` codes in ``[0, 2**bits)``.
        scales: float32 step sizes, shape ``(1, 1)`` (tensor), ``(rows, 1)`` (channel) or
            ``(rows, cols // group_size)`` (group).
        zeros: float32 zero-points in code units, same shape as ``scales``; whole numbers.
            Symmetric grids use the midpoint ``2**(bits-1)``.
        spec: the recipe the codes were produced with.
        mask: optional bool ``(rows, cols)``; False marks a pruned weight, which dequantizes
            to exactly 0 whatever its code (an asymmetric grid need not contain 0 in general).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: QuantSpec
    mask: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the quantized weight."""
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def _expand(self, params: torch.Tensor) -> torch.Tensor:
        # Group parameters are stored once per group; repeat them so each column sees its own.
        if self.spec.granularity == "group":
            return params.repeat_interleave(self.spec.group_size, dim=1)
        return params

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``scale * (code - zero)``, with pruned positions exactly 0."""
        scale = self._expand(self.scales.float())
        zero = self._expand(self.zeros.float())
        w_hat = scale * (self.codes.float() - zero)
        if self.mask is not None:
            w_hat = torch.where(self.mask, w_hat, torch.zeros((), dtype=w_hat.dtype, device=w_hat.device))
        return w_hat

    @property
    def n_scale_groups(self) -> int:
        """Number of (scale, zero-point) pairs stored."""
        return int(self.scales.numel())

    def bits_per_weight(self, value_bits: int = 16, count_mask: bool = False) -> float:
        """Storage cost per weight under the conventions of :mod:`jdna.quantization.accounting`.

        ``count_mask`` adds one bit per weight for a dense pruning bitmap when a mask is present.
        """
        numel = self.codes.numel()
        mask_bits = numel if (count_mask and self.mask is not None) else 0
        return quantized_bits_per_weight(
            numel,
            self.spec.bits,
            self.n_scale_groups,
            self.spec.symmetric,
            value_bits=value_bits,
            mask_bits=mask_bits,
        )
