"""Round-to-nearest (RTN) quantization.

Grid convention (the one used by the GPTQ reference implementation), with
``maxq = 2**bits - 1`` and every group's range first widened to contain 0 so that a
zero weight is always exactly representable:

* asymmetric: ``scale = (xmax - xmin) / maxq`` and ``zero = round(-xmin / scale)``; since
  ``xmin <= 0 <= xmax`` the zero-point is an integer in ``[0, maxq]`` and fits in ``bits`` bits.
* symmetric: ``amax = max(|xmin|, xmax)``, ``scale = 2 * amax / maxq`` and the zero-point is
  the fixed midpoint ``2**(bits-1)``.  The grid ``scale * (code - 2**(bits-1))`` therefore
  spans ``[-2**(bits-1) * scale, (2**(bits-1) - 1) * scale]``; using all ``2**bits`` codes
  costs at most half a step of clipping at ``+amax``, which is still within the usual
  half-step rounding bound.

Codes are ``clamp(round(w / scale) + zero, 0, maxq)`` and ``W_hat = scale * (code - zero)``.
A group whose kept weights are all zero would get scale 0; it gets scale 1 instead, which
maps every weight in it to code ``zero`` and hence back to exactly 0.
"""

from __future__ import annotations

from typing import Any

import torch

from jdna.errors import JdnaError
from jdna.quantization.base import QUANTIZERS, Quantizer
from jdna.quantization.spec import QuantizedMatrix, QuantSpec

__all__ = ["RTN", "QuantizedMatrix", "check_weight", "grid_params", "group_view", "quantize_codes", "quantize_rtn"]

# Below this a scale would overflow ``w / scale`` or is a denormal; such groups hold only
# (near-)zero weights, which scale 1 rounds to exactly 0 with error below this threshold.
_MIN_SCALE = torch.finfo(torch.float32).tiny


def grid_params(
    x: torch.Tensor, bits: int, symmetric: bool, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point for each slice of ``x`` along its last dimension.

    Only entries where ``mask`` is True inform the range, so pruned weights cannot inflate
    the step size.  Returns float32 tensors shaped like ``x`` without its last dimension.
    """
    maxq = (1 << bits) - 1
    x = x.float()
    if mask is None:
        xmin = x.amin(dim=-1)
        xmax = x.amax(dim=-1)
    else:
        # A slice with nothing kept gives +inf/-inf here, which the clamp to 0 below absorbs.
        xmin = torch.where(mask, x, torch.full_like(x, float("inf"))).amin(dim=-1)
        xmax = torch.where(mask, x, torch.full_like(x, float("-inf"))).amax(dim=-1)
    # Widening the range to include 0 keeps 0.0 exactly representable (and zero in [0, maxq]).
    xmin = torch.clamp(xmin, max=0.0)
    xmax = torch.clamp(xmax, min=0.0)
    if symmetric:
        amax = torch.maximum(-xmin, xmax)
        scale = 2.0 * amax / maxq
    else:
        scale = (xmax - xmin) / maxq
    scale = torch.where(scale > _MIN_SCALE, scale, torch.ones_like(scale))
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        zero = torch.clamp(torch.round(-xmin / scale), 0, maxq)
    return scale, zero


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``x`` onto the grid; ``scale``/``zero`` must broadcast against ``x``. Returns float codes."""
    maxq = (1 << bits) - 1
    return torch.clamp(torch.round(x / scale) + zero, 0, maxq)


def check_weight(weight: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None) -> None:
    """Raise JdnaError for a weight/mask pair that the quantizers cannot handle."""
    if not isinstance(weight, torch.Tensor):
        raise JdnaError(f"weight must be a torch.Tensor, got {type(weight).__name__}; convert it first")
    spec.validate_for(tuple(weight.shape))
    if not weight.is_floating_point():
        raise JdnaError(f"weight has dtype {weight.dtype}; pass a floating-point matrix")
    if not bool(torch.isfinite(weight).all()):
        raise JdnaError("weight contains NaN or inf values; fix the checkpoint before quantizing it")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise JdnaError(f"mask has dtype {mask.dtype}; pass a bool tensor with True for kept weights")
        if tuple(mask.shape) != tuple(weight.shape):
            raise JdnaError(
                f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}; "
                "pass a mask of the same shape"
            )


def group_view(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``(rows, cols)`` as ``(scale_rows, scale_cols, members)`` so each group is one last-dim slice."""
    rows, cols = x.shape
    if spec.granularity == "tensor":
        return x.reshape(1, 1, rows * cols)
    if spec.granularity == "channel":
        return x.reshape(rows, 1, cols)
    return x.reshape(rows, cols // spec.group_size, spec.group_size)


def quantize_rtn(weight: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> QuantizedMatrix:
    """Quantize ``weight`` ``(out, in)`` by rounding each entry to the nearest grid point.

    Args:
        weight: floating-point matrix; computed in float32 whatever its dtype.
        spec: bits, granularity and symmetry.
        mask: optional bool matrix, True where the weight is kept.  Scales come from kept
            weights only and pruned positions dequantize to exactly 0.

    Returns:
        The codes with their scales and zero-points.
    """
    check_weight(weight, spec, mask)
    w = weight.detach().float()
    rows, cols = w.shape
    grouped = group_view(w, spec)
    grouped_mask = None if mask is None else group_view(mask, spec)
    scale, zero = grid_params(grouped, spec.bits, spec.symmetric, grouped_mask)
    codes = quantize_codes(grouped, scale.unsqueeze(-1), zero.unsqueeze(-1), spec.bits)
    if grouped_mask is not None:
        # Pruned entries get the code for 0.0 so the codes alone already decode them to 0.
        codes = torch.where(grouped_mask, codes, zero.unsqueeze(-1).expand_as(codes))
    return QuantizedMatrix(
        codes=codes.reshape(rows, cols).to(torch.uint8),
        scales=scale.contiguous(),
        zeros=zero.contiguous(),
        spec=spec,
        mask=None if mask is None else mask.clone(),
    )


class RTN(Quantizer):
    name = "rtn"
    description = "round each weight to the nearest grid point (no calibration)"

    def quantize(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        mask: torch.Tensor | None,
        statistic: torch.Tensor | None,
        options: Any,
    ) -> QuantizedMatrix:
        return quantize_rtn(weight, spec, mask)


QUANTIZERS.add("rtn", RTN())
