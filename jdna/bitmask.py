"""Keep-masks at one bit per weight: how artifacts store them (little-endian bits, row-major order)."""

from __future__ import annotations

import numpy as np
import torch


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """Bit-pack a boolean mask (little-endian bit order) into uint8."""
    flat = keep.detach().reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat if flat.dtype == np.bool_ else flat.astype(bool), bitorder="little"))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The boolean mask of `shape` that `pack_mask` packed."""
    numel = int(np.prod(shape)) if len(shape) else 1
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_)).reshape(tuple(shape))


def count_kept(packed: torch.Tensor) -> int:
    """How many bits `pack_mask` set (its padding bits are zero, so this counts kept weights exactly)."""
    bytes_ = packed.numpy()
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return int(np.bitwise_count(bytes_).sum(dtype=np.int64))
    return int(np.unpackbits(bytes_).sum(dtype=np.int64))


def is_kept(packed: torch.Tensor, positions: np.ndarray) -> np.ndarray:
    """Whether each flat position's bit is set in a `pack_mask`-packed mask."""
    return ((packed.numpy()[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).astype(bool)


def zero_positions(weight: torch.Tensor) -> np.ndarray:
    """Flat positions where a floating-point `weight` is exactly zero (+0.0 or -0.0).

    Read through an integer view: shifting out the sign bit leaves zero only for ±0.0, and this pass is
    several times faster than torch.count_nonzero on a half-zero bfloat16 matrix.
    """
    flat = weight.detach().reshape(-1).cpu()
    if not flat.is_floating_point() or flat.element_size() not in (2, 4, 8):
        return np.flatnonzero(flat.numpy() == 0)
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    bits = flat.view(integer).numpy()
    return np.flatnonzero(np.left_shift(bits, 1) == 0)
