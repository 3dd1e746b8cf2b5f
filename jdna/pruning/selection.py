"""Exact mask selection from scores: the k lowest scores are pruned, ties broken by position.

Every selection prunes exactly ``round_half_up(sparsity * n)`` weights of its group. Ties (frequent in the
dequantized demo LM) are broken deterministically: within a group, matrices in model order, then flat index.

Global selection never concatenates the group: it finds the k-th smallest score by a two-pass radix select
on order-preserving integer keys of the float32 scores (histograms of the high then the low 16 bits), so its
extra memory is one matrix's worth of keys plus two 65,536-bin histograms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from jdna.errors import JdnaError

ScoreFn = Callable[[int], torch.Tensor]  # index of a matrix in the group → its float32 scores
_BINS = 1 << 16


def prune_count(sparsity: float, n: int) -> int:
    """How many of `n` weights a target sparsity prunes: round half up, so 0.5 of 3 prunes 2."""
    return min(n, int(math.floor(sparsity * n + 0.5)))


def sort_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float32 order of `scores` (NaN rejected)."""
    scores = scores.detach().to(torch.float32).contiguous()
    if torch.isnan(scores).any():
        raise JdnaError("pruning scores contain NaN: the weights or calibration activations hold NaN values")
    bits = scores.view(torch.int32)
    # Negative floats order backwards as integers; flipping their low 31 bits restores the order.
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _high(keys: torch.Tensor) -> torch.Tensor:
    return ((keys >> 16) + (1 << 15)).to(torch.int64)


def _low(keys: torch.Tensor) -> torch.Tensor:
    return (keys & 0xFFFF).to(torch.int64)


def _first_reaching(histogram: torch.Tensor, target: int) -> tuple[int, int]:
    """The first bin where the running count reaches `target`, and the count strictly before it."""
    cumulative = torch.cumsum(histogram, 0)
    index = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=cumulative.dtype)).item())
    before = int(cumulative[index - 1].item()) if index > 0 else 0
    return index, before


def select_group(
    sizes: Sequence[int], scores: ScoreFn, k: int, consume: Callable[[int, torch.Tensor], None] | None = None
) -> list[torch.Tensor]:
    """Keep-masks for a group of matrices sharing one threshold, pruning exactly `k` weights in all.

    `scores(i)` is called three times per matrix, so it must be deterministic; it lets callers recompute
    scores instead of holding them all. With `consume`, each mask is handed over as soon as it is made and
    not kept (the returned list is empty), so callers can pack masks instead of holding them all as bools.
    """
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune {k} of {total} weights")
    if k == 0:
        ones = [torch.ones_like(scores(i), dtype=torch.bool) for i in range(len(sizes))]
        if consume is None:
            return ones
        for i, keep in enumerate(ones):
            consume(i, keep)
        return []
    high_hist = torch.zeros(_BINS, dtype=torch.int64)
    for i in range(len(sizes)):
        high_hist += torch.bincount(_high(sort_keys(scores(i))).reshape(-1), minlength=_BINS)
    high_bin, below_high = _first_reaching(high_hist, k)
    low_hist = torch.zeros(_BINS, dtype=torch.int64)
    for i in range(len(sizes)):
        keys = sort_keys(scores(i)).reshape(-1)
        in_bin = keys[_high(keys) == high_bin]
        low_hist += torch.bincount(_low(in_bin), minlength=_BINS)
    low_bin, below_low = _first_reaching(low_hist, k - below_high)
    threshold_key = ((high_bin - (1 << 15)) << 16) | low_bin
    threshold = torch.tensor(threshold_key, dtype=torch.int64).to(torch.int32)
    ties_left = k - below_high - below_low  # weights equal to the threshold still to prune, in order
    masks = []
    for i in range(len(sizes)):
        score = scores(i)
        keys = sort_keys(score)
        pruned = keys < threshold
        if ties_left > 0:
            equal = (keys == threshold).reshape(-1).nonzero().reshape(-1)
            take = equal[:ties_left]
            pruned.view(-1)[take] = True
            ties_left -= take.numel()
        if consume is None:
            masks.append(~pruned)
        else:
            consume(i, ~pruned)
    return masks


def select_rows(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning the same number of lowest scores in every output row (Wanda's comparison group)."""
    rows, cols = scores.shape
    k = prune_count(sparsity, cols)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    if k:
        order = torch.sort(scores.to(torch.float32), dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, order, False)
    return keep


def select_n_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly `n` kept weights in every group of `m` consecutive inputs of a row."""
    rows, cols = scores.shape
    if cols % m:
        raise JdnaError(f"N:M pattern {n}:{m} needs input dimensions divisible by {m}; a matrix has {cols}")
    grouped = scores.to(torch.float32).reshape(rows, cols // m, m)
    order = torch.sort(grouped, dim=2, stable=True).indices[:, :, : m - n]
    keep = torch.ones_like(grouped, dtype=torch.bool)
    keep.scatter_(2, order, False)
    return keep.reshape(rows, cols)
