"""The ``quantized`` kind (``jdna quantize``): each quantized matrix becomes ``scale · (code − zero)``.

Tensors: ``codes.<name>`` (bit-packed codes), ``scales.<name>`` (float16), ``zeros.<name>`` (asymmetric grids)
and ``mask.<name>`` when a parent's pruning mask still held (pruned positions decode to exactly 0); header
``quant: {name: {shape, bits, granularity, group_size, symmetric}}``. A matrix quantized without a mask is
dense: any older mask on it ends. The writer (:mod:`jdna.quantization.run`) measures its errors with the same
decoder, so what it measured is exactly what a load reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jdna.bitmask import unpack_mask
from jdna.errors import JdnaError
from jdna.kinds.base import (
    COMPRESSION_FIELDS,
    KINDS,
    ArtifactKind,
    Layout,
    StoredArtifact,
    check_shape,
    dims,
    parameter,
    tensor_family,
)
from jdna.naming import canonical_parameters
from jdna.quantization.packing import packed_nbytes, unpack_codes
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


@torch.no_grad()
def apply_quantized(model: nn.Module, artifact: StoredArtifact) -> None:
    params = canonical_parameters(model)
    entries: dict[str, dict[str, Any]] = artifact.header.get("quant", {})
    codes = artifact.tensors("codes.")
    scales = artifact.tensors("scales.")
    zeros = artifact.tensors("zeros.")
    packed_masks = artifact.tensors("mask.")
    mask_shapes = artifact.header.get("masks", {})
    for name, entry in entries.items():
        param = parameter(params, name, artifact)
        check_shape(param, entry["shape"], name, artifact)
        if name not in codes or name not in scales:
            raise JdnaError(f"artifact '{artifact.path}' lacks the codes or scales of '{name}': recreate it")
        mask = unpack_mask(packed_masks[name], mask_shapes[name]) if name in packed_masks else None
        value = decode_quantized(entry, codes[name], scales[name], zeros.get(name), mask)
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))


def check_layout(header: dict[str, Any], layout: Layout, bad: Callable[[str], JdnaError]) -> None:
    entries = header.get("quant")
    if not isinstance(entries, dict) or not entries:
        raise bad("a quantized artifact without 'quant' entries")
    for name, entry in entries.items():
        shape = dims(entry.get("shape")) if isinstance(entry, dict) else None
        bits = entry.get("bits") if isinstance(entry, dict) else None
        if shape is None or len(shape) != 2 or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise bad(f"quant entry '{name[:60]}' is malformed")
        if f"codes.{name}" not in layout or f"scales.{name}" not in layout:
            raise bad(f"quant entry '{name[:60]}' has no codes or scales")
        dtype, stored = layout[f"codes.{name}"]
        if dtype != "U8" or math.prod(stored) != packed_nbytes(shape[0] * shape[1], bits):
            raise bad(f"the codes of '{name[:60]}' do not fit its shape {shape} at {bits} bits")
        if name in header.get("masks", {}) and header["masks"][name] != shape:
            raise bad(f"the mask of '{name[:60]}' has another shape than its codes")
    for name in layout:
        table = name.split(".", 1)
        if table[0] in ("codes", "scales", "zeros") and table[1] not in entries:
            raise bad(f"tensor '{name[:60]}' has no quant entry")


def touched(artifact: StoredArtifact) -> set[str]:
    return set(artifact.header.get("quant", {})) | tensor_family(artifact, "mask.")


QUANTIZED = KINDS.declare(
    ArtifactKind(
        name="quantized",
        apply=apply_quantized,
        tensor_prefixes=("codes.", "scales.", "zeros.", "mask."),
        touched=touched,
        record_fields=COMPRESSION_FIELDS
        + (("params", "group_size"), ("params", "symmetric"), ("params", "energy"))
        + (("stats", "relative_error"), ("stats", "mean_rank_ratio")),
        check_layout=check_layout,
        compresses=True,
    )
)
