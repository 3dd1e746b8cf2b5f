"""GPTQ: second-order, error-compensating quantization (Frantar et al., 2022).

The caller supplies the layer Hessian proxy ``H = 2/n * sum_x x x^T`` over ``n``
calibration inputs (``cols x cols``).  Columns are quantized one at a time; the error
each one leaves is spread over the not-yet-quantized columns through the upper Cholesky
factor of ``H^-1`` so that the layer output ``W X`` moves as little as possible.  Updates
to columns outside the current block are deferred and applied once per block ("lazy
batch" updates), which changes nothing numerically but turns rank-1 updates into matmuls.

Choices worth knowing:

* Dead inputs (``H[j, j] == 0``, the feature never fires on calibration data) get
  ``H[j, j] = 1`` and their weights set to 0, as in the reference: they cannot affect the
  calibrated output and would otherwise make ``H`` singular.
* Damping adds ``damp * mean(diag H)`` to the diagonal before inverting.  The inverse and
  its Cholesky factor are computed in float64; the column loop runs in float32.
* Without ``act_order``, a group's scale is fitted when the loop reaches its first column,
  from the weights as already updated by the error of earlier columns (pending lazy
  updates included).  With ``act_order`` the columns are visited by decreasing ``diag(H)``,
  so a group's columns are scattered through the loop; every group's scale is then fitted
  up front from the (dead-column-zeroed) original weights, the reference's "static groups".
  Tensor and channel scales are always fitted up front, from the same weights RTN sees.
* Pruned positions (``mask`` False) are forced to 0 and their error ``w - 0`` is propagated
  like any other column's, so the kept weights compensate for the pruning too.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from jdna.errors import JdnaError
from jdna.quantization.base import QUANTIZERS, Quantizer
from jdna.quantization.rtn import check_weight, grid_params, group_view, quantize_codes
from jdna.quantization.spec import QuantizedMatrix, QuantSpec


def _check_hessian(hessian: torch.Tensor, cols: int) -> None:
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols):
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise JdnaError(
            f"hessian has shape {shape} but the weight has {cols} input columns; "
            f"pass a ({cols}, {cols}) matrix 2/n * X^T X of the layer inputs"
        )
    if not hessian.is_floating_point() or not bool(torch.isfinite(hessian).all()):
        raise JdnaError("hessian must be a finite floating-point matrix; check the calibration activations")


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, computed in float64."""
    h = hessian.clone()
    cols = h.shape[0]
    idx = torch.arange(cols, device=h.device)
    h[idx, idx] += damp * torch.mean(torch.diagonal(h))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise JdnaError(
            f"hessian is not positive definite with damp={damp}; "
            "increase damp (e.g. 0.01-0.1) or use more calibration samples"
        )
    h_inv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(h_inv, upper=True)
    if int(info) != 0:
        raise JdnaError(
            f"inverse hessian lost positive definiteness with damp={damp}; increase damp (e.g. 0.01-0.1)"
        )
    return upper


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    mask: torch.Tensor | None = None,
) -> QuantizedMatrix:
    """Quantize ``weight`` ``(out, in)`` with GPTQ given the input Hessian ``(in, in)``.

    Args:
        weight: floating-point matrix (not modified).
        hessian: ``2/n * sum x x^T`` over calibration inputs (not modified).
        spec: bits, granularity and symmetry; group granularity needs ``in % group_size == 0``.
        block_size: columns per lazy-update block; affects speed only, up to rounding.
        damp: diagonal damping as a fraction of the mean Hessian diagonal.
        act_order: visit columns by decreasing ``diag(H)`` (see the module docstring).
        mask: optional bool matrix, True where the weight is kept; False positions
            dequantize to exactly 0.

    Returns:
        The codes with their scales and zero-points, in the original column order.
    """
    check_weight(weight, spec, mask)
    rows, cols = weight.shape
    _check_hessian(hessian, cols)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise JdnaError(f"block_size={block_size!r} is invalid; use a positive integer such as 128")
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise JdnaError(f"damp={damp!r} is invalid; use a non-negative fraction such as 0.01")

    w = weight.detach().float().clone()
    h = hessian.detach().double().clone()
    keep = None if mask is None else mask.clone()

    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    grouped = spec.granularity == "group"
    gs = spec.group_size
    scale_shape = spec.scale_shape((rows, cols))
    scales = torch.zeros(scale_shape, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(scale_shape, dtype=torch.float32, device=w.device)
    if not grouped or act_order:
        # Fixed up front: either the granularity ignores column order, or act_order scatters groups.
        s, z = grid_params(
            group_view(w, spec), spec.bits, spec.symmetric, None if keep is None else group_view(keep, spec)
        )
        scales.copy_(s)
        zeros.copy_(z)

    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]
        if keep is not None:
            keep = keep[:, perm]
    else:
        perm = torch.arange(cols, device=w.device)

    u = _inverse_cholesky(h, float(damp)).float()
    codes = torch.zeros((rows, cols), dtype=torch.float32, device=w.device)
    zero_value = torch.zeros((), dtype=torch.float32, device=w.device)
    # Group of each visited column, read once as Python ints to avoid a device sync per column.
    column_group = (perm // gs).tolist() if grouped else [0] * cols

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        # A view, so in-block updates are visible when a later group's scale is fitted from `w`.
        w1 = w[:, i1:i2]
        err1 = torch.zeros((rows, i2 - i1), dtype=torch.float32, device=w.device)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if grouped and not act_order and j % gs == 0:
                current = w[:, j : j + gs].clone()
                if j + gs > i2:
                    # Columns past this block still owe this block's deferred updates.
                    current[:, i2 - j :] -= err1[:, :i] @ u[i1:j, i2 : j + gs]
                s, z = grid_params(
                    current, spec.bits, spec.symmetric, None if keep is None else keep[:, j : j + gs]
                )
                scales[:, j // gs] = s
                zeros[:, j // gs] = z
            s_col = scales[:, column_group[j]]
            z_col = zeros[:, column_group[j]]
            col_w = w1[:, i]
            c = quantize_codes(col_w, s_col, z_col, spec.bits)
            q = s_col * (c - z_col)
            if keep is not None:
                c = torch.where(keep[:, j], c, z_col.expand_as(c))
                q = torch.where(keep[:, j], q, zero_value)
            codes[:, j] = c
            err = (col_w - q) / u1[i, i]
            w1[:, i:] -= torch.outer(err, u1[i, i:])
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]

    if act_order:
        codes = codes[:, torch.argsort(perm)]

    return QuantizedMatrix(
        codes=codes.to(torch.uint8),
        scales=scales,
        zeros=zeros,
        spec=spec,
        mask=None if mask is None else mask.clone(),
    )


class GPTQ(Quantizer):
    name = "gptq"
    description = "second-order error-compensating quantization (calibrated, block by block)"
    statistic = "hessian"

    def quantize(
        self,
        weight: torch.Tensor,
        spec: QuantSpec,
        mask: torch.Tensor | None,
        statistic: torch.Tensor | None,
        options: Any,
    ) -> QuantizedMatrix:
        assert statistic is not None
        return gptq_quantize(
            weight,
            statistic,
            spec,
            block_size=options.block_size,
            damp=options.damp,
            act_order=options.act_order,
            mask=None if mask is None else mask.to(weight.device),
        )


QUANTIZERS.add("gptq", GPTQ())
