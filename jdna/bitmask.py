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
