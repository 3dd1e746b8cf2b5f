"""Storage cost in bits per weight: the shared x-axis for comparing compression methods.

Conventions (every figure is *bits per original weight*, averaged over a matrix):

* The dense baseline is 16 bits per weight (fp16/bf16), so ``compression_ratio`` is
  ``16 / bits_per_weight`` unless another reference is given.
* Quantized matrix: ``bits`` per code for every position (pruned positions keep a code;
  the dense code array is what is stored), plus for each scale group one scale of
  ``value_bits`` (16: an fp16 scale) and, for asymmetric grids only, one zero-point of
  ``bits`` bits.  The zero-point is an integer in ``[0, 2**bits)`` by construction (see
  :mod:`jdna.quantization.rtn`), so ``bits`` suffices; symmetric grids use a fixed midpoint
  and store nothing.  Example: 4-bit symmetric, group 128 costs ``4 + 16/128 = 4.125``.
* A pruning mask, when it must be stored, is passed as ``mask_bits``: the total bits it
  takes for the whole matrix (``numel`` for a dense bitmap).
* Low-rank factors ``(rows x r)`` and ``(r x cols)`` store ``r * (rows + cols)`` values of
  ``value_bits`` each.
* Several matrices combine by a numel-weighted mean, i.e. total bits over total weights.
"""

from __future__ import annotations

from collections.abc import Iterable

from jdna.errors import JdnaError

DENSE_BITS = 16


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise JdnaError(f"{name} must be a positive integer, got {value!r}; pass a count of at least 1")
    return value


def quantized_bits_per_weight(
    numel: int,
    bits: int,
    n_scale_groups: int,
    symmetric: bool,
    value_bits: int = DENSE_BITS,
    mask_bits: int = 0,
) -> float:
    """Bits per weight of a quantized matrix, scales, zero-points and optional mask included.

    Args:
        numel: weights in the matrix.
        bits: code width.
        n_scale_groups: (scale, zero-point) pairs stored, e.g. ``rows * cols / group_size``.
        symmetric: True if the zero-point is the implicit midpoint (costs nothing).
        value_bits: width of each stored scale.
        mask_bits: total bits of a stored pruning mask for the whole matrix (0 if none).
    """
    _positive_int("numel", numel)
    _positive_int("bits", bits)
    _positive_int("n_scale_groups", n_scale_groups)
    _positive_int("value_bits", value_bits)
    if mask_bits < 0:
        raise JdnaError(f"mask_bits must be >= 0, got {mask_bits}; pass 0 when no mask is stored")
    per_group = value_bits + (0 if symmetric else bits)
    return (bits * numel + n_scale_groups * per_group + mask_bits) / numel


def lowrank_bits_per_weight(rows: int, cols: int, rank: int, value_bits: int = DENSE_BITS) -> float:
    """Bits per weight of storing ``left (rows x rank)`` and ``right (rank x cols)`` in ``value_bits``."""
    _positive_int("rows", rows)
    _positive_int("cols", cols)
    _positive_int("rank", rank)
    _positive_int("value_bits", value_bits)
    return value_bits * rank * (rows + cols) / (rows * cols)


def compression_ratio(bits_per_weight: float, reference_bits: float = DENSE_BITS) -> float:
    """How many times smaller than the dense reference, ``reference_bits / bits_per_weight``."""
    if not bits_per_weight > 0:
        raise JdnaError(
            f"bits_per_weight must be positive, got {bits_per_weight}; check the accounting inputs"
        )
    if not reference_bits > 0:
        raise JdnaError(f"reference_bits must be positive, got {reference_bits}; use 16 for fp16 baselines")
    return reference_bits / bits_per_weight


def aggregate_bits_per_weight(items: Iterable[tuple[int, float]]) -> float:
    """Numel-weighted mean of ``(numel, bits_per_weight)`` pairs, i.e. total bits / total weights."""
    total_weights = 0
    total_bits = 0.0
    for numel, bpw in items:
        _positive_int("numel", numel)
        if bpw < 0:
            raise JdnaError(f"bits_per_weight must be >= 0, got {bpw}; check the per-matrix accounting")
        total_weights += numel
        total_bits += numel * bpw
    if total_weights == 0:
        raise JdnaError("no matrices to aggregate; pass at least one (numel, bits_per_weight) pair")
    return total_bits / total_weights
