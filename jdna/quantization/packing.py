"""Dense bit-packing of quantization codes, so storage matches the bits-per-weight accounting.

Layout: code ``i`` occupies stream bits ``[i*bits, (i+1)*bits)``, least significant bit
first, and stream bit ``k`` is bit ``k % 8`` (LSB = 0) of byte ``k // 8``.  Codes may
therefore straddle byte boundaries when ``bits`` does not divide 8.  The final byte is
zero-padded, so a stream of ``n`` codes is ``ceil(n * bits / 8)`` bytes.
"""

from __future__ import annotations

import torch

from jdna.errors import JdnaError


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise JdnaError(f"bits={bits!r} cannot be packed; choose a code width from 1 to 8")


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits each."""
    return (numel * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, flattened in row-major order) into a uint8 bitstream.

    Raises JdnaError if a code does not fit in ``bits`` bits.
    """
    _check_bits(bits)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise JdnaError(f"codes have dtype {codes.dtype}; pass integer codes (e.g. torch.uint8)")
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise JdnaError(
            f"codes range [{int(flat.min())}, {int(flat.max())}] does not fit in {bits} bits; "
            "quantize with the same bit width you pack with"
        )
    device = flat.device
    # Spread each code into its bits, then regroup the concatenated bit stream into bytes.
    shifts = torch.arange(bits, device=device, dtype=torch.int64)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    nbytes = packed_nbytes(flat.numel(), bits)
    padded = torch.zeros(nbytes * 8, dtype=torch.uint8, device=device)
    padded[: stream.numel()] = stream
    byte_shifts = torch.arange(8, device=device, dtype=torch.uint8)
    return (padded.reshape(nbytes, 8) << byte_shifts).sum(dim=1, dtype=torch.int64).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes of the stream, as 1-D uint8."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise JdnaError(f"packed stream has dtype {packed.dtype}; pass the uint8 tensor pack_codes returned")
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise JdnaError(f"numel={numel!r} is invalid; pass the number of codes that were packed")
    needed = packed_nbytes(numel, bits)
    flat = packed.reshape(-1)
    if flat.numel() < needed:
        raise JdnaError(
            f"packed stream has {flat.numel()} bytes but {numel} codes of {bits} bits need {needed}; "
            "pass the matching numel and bits"
        )
    device = flat.device
    byte_shifts = torch.arange(8, device=device, dtype=torch.uint8)
    stream = ((flat[:needed].unsqueeze(1) >> byte_shifts) & 1).reshape(-1)[: numel * bits]
    shifts = torch.arange(bits, device=device, dtype=torch.uint8)
    return (stream.reshape(numel, bits) << shifts).sum(dim=1, dtype=torch.int64).to(torch.uint8)
