"""Loading `quantized` and `lowrank` artifacts into a model, and the decoders both the writer and loader use.

A quantized artifact replaces each matrix it names with its dequantized value (simulated quantization: the
model runs in its usual float dtype on ``scale * (code - zero)``, pruned positions exactly 0). A lowrank
artifact replaces each matrix with ``left @ right``. The writer (:mod:`jdna.quantization.run`) computes its
error statistics and the weights it hands to later calibration blocks with the same decoders, so what it
measured is exactly what a load reproduces.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from jdna.artifact import Artifact, unpack_mask
from jdna.errors import JdnaError
from jdna.models import canonical_parameters, register_applier
from jdna.quantization.packing import unpack_codes
from jdna.quantization.rtn import QuantizedMatrix
from jdna.quantization.spec import QuantSpec


def spec_of(entry: dict[str, Any]) -> QuantSpec:
    """The QuantSpec recorded in a header ``quant`` entry."""
    return QuantSpec(
        bits=int(entry["bits"]),
        granularity=str(entry["granularity"]),
        group_size=int(entry["group_size"]),
        symmetric=bool(entry["symmetric"]),
    )


def decode_quantized(
    entry: dict[str, Any],
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The float32 matrix a stored quantized entry stands for.

    Args:
        entry: the header's ``quant[name]``: shape, bits, granularity, group_size, symmetric.
        codes: uint8 bitstream of the row-major codes, ``bits`` bits each (``pack_codes``).
        scales: float16 scales shaped ``spec.scale_shape(shape)``.
        zeros: uint8 bitstream of the zero-points (``bits`` bits each), or None for a symmetric grid,
            whose zero-point is the fixed midpoint ``2**(bits-1)``.
        mask: bool keep-mask, or None; pruned positions decode to exactly 0.
    """
    spec = spec_of(entry)
    rows, cols = (int(d) for d in entry["shape"])
    scale_shape = spec.scale_shape((rows, cols))
    code_matrix = unpack_codes(codes, spec.bits, rows * cols).reshape(rows, cols)
    if spec.symmetric:
        zero = torch.full(scale_shape, float(1 << (spec.bits - 1)), dtype=torch.float32)
    else:
        if zeros is None:
            raise JdnaError("an asymmetric quantized matrix has no stored zero-points: recreate the artifact")
        count = math.prod(scale_shape)
        zero = unpack_codes(zeros, spec.bits, count).reshape(scale_shape).to(torch.float32)
    matrix = QuantizedMatrix(
        codes=code_matrix,
        scales=scales.to(torch.float32).reshape(scale_shape),
        zeros=zero,
        spec=spec,
        mask=mask,
    )
    return matrix.dequantize()


def reconstruct_lowrank(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` in float32 from the stored (float16) factors."""
    return left.to(torch.float32) @ right.to(torch.float32)


def _parameter(params: dict[str, nn.Parameter], name: str, artifact: Artifact) -> nn.Parameter:
    if name not in params:
        raise JdnaError(f"artifact '{artifact.path}' refers to '{name}', which this model does not have")
    return params[name]


def _check_shape(param: nn.Parameter, shape: list[int], name: str, artifact: Artifact) -> None:
    if list(param.shape) != [int(d) for d in shape]:
        raise JdnaError(
            f"artifact '{artifact.path}' stores '{name}' with shape {list(shape)}, but the model's is "
            f"{list(param.shape)}"
        )


@register_applier("quantized")
@torch.no_grad()
def apply_quantized(model: nn.Module, artifact: Artifact) -> None:
    params = canonical_parameters(model)
    entries: dict[str, dict[str, Any]] = artifact.header.get("quant", {})
    codes = artifact.tensors("codes.")
    scales = artifact.tensors("scales.")
    zeros = artifact.tensors("zeros.")
    packed_masks = artifact.tensors("mask.")
    mask_shapes = artifact.header.get("masks", {})
    for name, entry in entries.items():
        param = _parameter(params, name, artifact)
        _check_shape(param, entry["shape"], name, artifact)
        if name not in codes or name not in scales:
            raise JdnaError(f"artifact '{artifact.path}' lacks the codes or scales of '{name}': recreate it")
        mask = unpack_mask(packed_masks[name], mask_shapes[name]) if name in packed_masks else None
        value = decode_quantized(entry, codes[name], scales[name], zeros.get(name), mask)
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))


@register_applier("lowrank")
@torch.no_grad()
def apply_lowrank(model: nn.Module, artifact: Artifact) -> None:
    params = canonical_parameters(model)
    entries: dict[str, dict[str, Any]] = artifact.header.get("lowrank", {})
    lefts = artifact.tensors("left.")
    rights = artifact.tensors("right.")
    for name, entry in entries.items():
        param = _parameter(params, name, artifact)
        _check_shape(param, entry["shape"], name, artifact)
        if name not in lefts or name not in rights:
            raise JdnaError(f"artifact '{artifact.path}' lacks the factors of '{name}': recreate it")
        value = reconstruct_lowrank(lefts[name], rights[name])
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))
