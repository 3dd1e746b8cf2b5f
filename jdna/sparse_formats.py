"""compressed-tensors' sparse checkpoint layouts, written and read by jdna itself.

``sparse-24-bitmask`` (every prunable matrix 2:4: per row, each group of four consecutive weights keeps two
positions; ``compressed`` (rows, cols/2) holds their values in row-major order, ``bitmask`` (uint8, rows ×
ceil(cols/8), little-endian bit order) marks them, ``shape`` (2, 1) int64) and ``sparse-bitmask``
(``compressed`` the non-zeros in row-major order, ``bitmask`` the same packing, ``row_offsets`` int64 index of
each row's first value, ``shape`` (2,) int64). compressed-tensors removed its sparse compressors in 0.15.0, so
jdna writes (:mod:`jdna.compressed_tensors_export`) and reads (:mod:`jdna.model_files`) them with these pure
tensor functions; the byte layout is compressed-tensors 0.14.0.1's (tests/test_export_sparse.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jdna.errors import JdnaError

SPARSE_24 = "sparse-24-bitmask"
SPARSE_BITMASK = "sparse-bitmask"
SPARSE_FORMATS = (SPARSE_24, SPARSE_BITMASK)
# The last compressed-tensors release whose decompressors read the sparse layouts (it needs transformers < 5).
LAST_SPARSE_READER = "0.14.0.1"
# The tensors one sparse entry X stores instead of X.weight (row_offsets: sparse-bitmask only).
_SPARSE_LEAVES = ("shape", "compressed", "bitmask", "row_offsets")


def pack_bitmask(keep: torch.Tensor) -> torch.Tensor:
    """(rows, cols) bool -> (rows, ceil(cols/8)) uint8, bit j of byte k = column 8k + j (compressed-tensors'
    ``pack_bitmasks``: numpy.packbits along the last axis, little-endian bit order)."""
    return torch.from_numpy(np.packbits(keep.cpu().numpy(), axis=-1, bitorder="little"))


def unpack_bitmask(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    bits = np.unpackbits(packed.cpu().numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def compress_24(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 2:4 matrix as ``sparse-24-bitmask``: exactly two kept positions per group of four (the non-zeros, then
    the group's first zeros where it has fewer than two), their values in row-major order, half the columns."""
    rows, cols = weight.shape
    groups = (weight != 0).reshape(rows, cols // 4, 4)
    # A group with fewer than two non-zeros also keeps its first zero positions: the decoder scatters the values
    # in row-major order into the kept positions, so any two positions holding the group's values decode alike.
    rank_of_zero = torch.cumsum((~groups).to(torch.int8), dim=-1)
    missing = 2 - groups.sum(-1, keepdim=True)
    keep = (groups | (~groups & (rank_of_zero <= missing))).reshape(rows, cols)
    return {
        "shape": torch.tensor([rows, cols]).reshape(-1, 1),
        "compressed": weight[keep].reshape(rows, cols // 2).contiguous(),
        "bitmask": pack_bitmask(keep),
    }


def compress_bitmask(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Any matrix as ``sparse-bitmask``: its non-zeros in row-major order, their positions, each row's offset."""
    keep = weight != 0
    counts = keep.sum(dim=-1)
    return {
        "shape": torch.tensor(list(weight.shape)),
        "compressed": weight[keep].contiguous(),
        "bitmask": pack_bitmask(keep),
        "row_offsets": torch.cumsum(counts, 0) - counts,
    }


def decompress_weight(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense matrix of one ``sparse-24-bitmask`` or ``sparse-bitmask`` entry (they decode the same way)."""
    rows, cols = (int(d) for d in data["shape"].flatten().tolist())
    keep = unpack_bitmask(data["bitmask"], (rows, cols))
    values = data["compressed"].flatten()
    if int(keep.sum()) != values.numel():
        raise JdnaError(f"sparse entry of shape {rows}x{cols}: {values.numel()} values for {int(keep.sum())} "
                        "marked positions")
    dense = torch.zeros((rows, cols), dtype=values.dtype)
    dense[keep] = values
    return dense


def decompress_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors with every sparse entry (``X.compressed``/``X.bitmask``/``X.shape``
    [/``X.row_offsets``]) replaced by the dense ``X.weight``."""
    prefixes = {key[: -len(".bitmask")] for key in tensors if key.endswith(".bitmask")}
    dense: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in prefixes and leaf in _SPARSE_LEAVES:
            continue
        dense[key] = value
    for prefix in prefixes:
        parts = {leaf: tensors[f"{prefix}.{leaf}"] for leaf in ("shape", "compressed", "bitmask")
                 if f"{prefix}.{leaf}" in tensors}
        if len(parts) != 3:
            raise JdnaError(f"sparse entry '{prefix}' lacks {sorted({'shape', 'compressed', 'bitmask'} - set(parts))}")
        dense[f"{prefix}.weight"] = decompress_weight(parts)
    return dense


def sparse_format_of(config: dict[str, Any]) -> str | None:
    """``sparse-24-bitmask`` / ``sparse-bitmask`` for a checkpoint in one of those layouts, else None."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compressed-tensors":
        return None
    sparsity = quantization.get("sparsity_config")
    fmt = sparsity.get("format") if isinstance(sparsity, dict) else None
    return fmt if fmt in SPARSE_FORMATS else None


def read_sparse_directory(directory: Path) -> dict[str, torch.Tensor]:
    """The dense tensors of a sparse compressed-tensors checkpoint (every safetensors file in `directory`)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return decompress_state_dict(tensors)
