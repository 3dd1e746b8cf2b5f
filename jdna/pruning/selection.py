"""Exact mask selection from scores: the k lowest scores are pruned, ties broken by position.

Every selection prunes exactly ``round_half_up(sparsity * n)`` weights of its group. Ties (frequent in the
dequantized demo LM) are broken deterministically: within a group, matrices in model order, then flat index;
-0.0 and 0.0 are equal scores.

Global selection never concatenates the group. A strided sample of about 2^19 scores brackets the k-th
smallest score; one pass then packs "score at or above the bracket's low end" as keep-masks and copies out
the few scores inside the bracket (about 1% of the group); the k-th smallest among those gives the exact
threshold and its ties. The sample decides only speed, never the result: when the bracket misses or holds
too many scores (e.g. all scores equal), a two-pass radix select on order-preserving integer keys finishes
exactly. Extra memory: the packed masks (1/32 of float32 scores), the candidates, and one matrix's
temporaries; every buffer that outlives a matrix is allocated before the pass, so the allocator's heap does
not fragment between matrices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from jdna.artifact import PackedMasks, pack_mask, unpack_mask
from jdna.errors import JdnaError
from jdna.prunable import PrunableMatrix

ScoreFn = Callable[[int], torch.Tensor]  # index of a matrix in the group → its scores
# (index, start, stride) → that matrix's scores at flat positions start, start + stride, ... (1-D)
SampleFn = Callable[[int, int, int], torch.Tensor]
_BINS = 1 << 16
SAMPLE_SIZE = 1 << 19
# Bracket half-width in binomial standard deviations of the sample rank; a miss only costs the radix passes.
_BRACKET_SIGMAS = 4.0
_NAN_MESSAGE = "pruning scores contain NaN: the weights or calibration activations hold NaN values"


def prune_count(sparsity: float, n: int) -> int:
    """How many of `n` weights a target sparsity prunes: round half up, so 0.5 of 3 prunes 2."""
    return min(n, int(math.floor(sparsity * n + 0.5)))


def sort_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order equals the float32 order of `scores` (NaN rejected)."""
    scores = scores.detach().to(torch.float32).contiguous()
    if torch.isnan(scores).any():
        raise JdnaError(_NAN_MESSAGE)
    # Adding +0.0 turns -0.0 into 0.0, so equal floats get equal keys.
    bits = (scores + 0.0).view(torch.int32)
    # Negative floats order backwards as integers; flipping their low 31 bits restores the order.
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def select_group(sizes: Sequence[int], scores: ScoreFn, k: int) -> list[torch.Tensor]:
    """Flat boolean keep-masks for a group of matrices sharing one threshold, pruning exactly `k` weights."""
    return [unpack_mask(packed, [size]) for packed, size in zip(select_group_packed(sizes, scores, k), sizes)]


def select_group_packed(
    sizes: Sequence[int],
    scores: ScoreFn,
    k: int,
    sample: SampleFn | None = None,
    sample_size: int = SAMPLE_SIZE,
) -> list[torch.Tensor]:
    """Bit-packed keep-masks (as `pack_mask` packs them) for a group of matrices, pruning exactly `k` weights.

    `scores(i)` returns matrix i's scores and is called once or (rarely) four times per matrix, so it must be
    deterministic: callers recompute scores instead of holding them all. `sample(i, start, stride)`, when
    given, computes just the sampled scores (cheaper than `scores(i)` sliced, which is the default).
    """
    total = sum(sizes)
    if not 0 <= k <= total:
        raise ValueError(f"cannot prune {k} of {total} weights")
    if k == 0:
        return [pack_mask(torch.ones(size, dtype=torch.bool)) for size in sizes]
    low, high = _bracket(sizes, scores, sample, k, sample_size)
    packed = _select_in_bracket(sizes, scores, k, low, high, candidate_budget=max(total // 64, 4096))
    return packed if packed is not None else [pack_mask(keep) for keep in _radix_select(sizes, scores, k)]


def _flat_scores(scores: ScoreFn, i: int) -> torch.Tensor:
    flat = scores(i).detach().reshape(-1).cpu()
    return flat if flat.dtype == torch.float32 else flat.to(torch.float32)


def _bracket(
    sizes: Sequence[int], scores: ScoreFn, sample: SampleFn | None, k: int, sample_size: int
) -> tuple[float, float]:
    """Scores below and above the k-th smallest with high probability, from an evenly strided sample."""
    total = sum(sizes)
    stride = max(1, total // sample_size)
    starts, offset = [], 0
    for size in sizes:
        starts.append((-offset) % stride)
        offset += size
    counts = [max(0, -(-(size - start) // stride)) for size, start in zip(sizes, starts)]
    sampled = np.empty(sum(counts), dtype=np.float32)  # one buffer, filled in place and partitioned in place
    filled = 0
    for i, (start, count) in enumerate(zip(starts, counts)):
        if count == 0:
            continue
        if sample is not None:
            values = sample(i, start, stride).detach().reshape(-1).cpu().to(torch.float32)
        else:
            values = _flat_scores(scores, i)[start::stride]
        sampled[filled : filled + count] = values.numpy()
        filled += count
    if np.isnan(sampled).any():
        raise JdnaError(_NAN_MESSAGE)
    n, fraction = sampled.size, k / total
    spread = _BRACKET_SIGMAS * math.sqrt(n * fraction * (1 - fraction)) + 2
    low_rank, high_rank = math.floor(fraction * n - spread), math.ceil(fraction * n + spread)
    ranks = [r for r in (low_rank, high_rank) if 0 <= r < n]
    if ranks:
        sampled.partition(ranks)
    low = float(sampled[low_rank]) if low_rank >= 0 else -math.inf
    high = float(sampled[high_rank]) if high_rank < n else math.inf
    return low, high


def _select_in_bracket(
    sizes: Sequence[int], scores: ScoreFn, k: int, low: float, high: float, candidate_budget: int
) -> list[torch.Tensor] | None:
    """Packed masks when the k-th smallest score is in [low, high] and at most `candidate_budget` scores are."""
    # numpy, not torch: these comparisons, counts and nonzero run several times faster single-threaded there.
    largest = max(sizes)
    keep_buffer = np.empty(largest, dtype=np.bool_)
    inside_buffer = np.empty(largest, dtype=np.bool_)
    packed = [torch.empty((size + 7) // 8, dtype=torch.uint8) for size in sizes]
    positions = torch.empty(candidate_budget, dtype=torch.int32)
    values = torch.empty(candidate_budget, dtype=torch.float32)
    spans: list[tuple[int, int]] = []
    below = used = 0
    for i, size in enumerate(sizes):
        scored = _flat_scores(scores, i)
        # A NaN makes the sum non-finite; the sum is far cheaper than isnan over every score.
        if not math.isfinite(float(scored.sum())) and torch.isnan(scored).any():
            raise JdnaError(_NAN_MESSAGE)
        flat = scored.numpy()
        keep = np.greater_equal(flat, low, out=keep_buffer[:size])
        below += size - int(np.count_nonzero(keep))
        inside = np.logical_and(np.less_equal(flat, high, out=inside_buffer[:size]), keep, out=inside_buffer[:size])
        where = np.flatnonzero(inside)
        found = where.size
        if used + found > candidate_budget:
            return None
        positions[used : used + found] = torch.from_numpy(where)
        values[used : used + found] = torch.from_numpy(flat[where])
        spans.append((used, used + found))
        used += found
        packed[i].numpy()[:] = np.packbits(keep, bitorder="little")
    need = k - below  # candidates still to prune, lowest first
    if need < 0 or need > used:
        return None
    if need == 0:
        return packed
    # np.partition copies only the values; torch.kthvalue would also build an int64 index as large as them.
    threshold = float(np.partition(values[:used].numpy(), need - 1)[need - 1])
    ties_left = need - int(torch.count_nonzero(values[:used] < threshold))
    for i, (first, last) in enumerate(spans):
        chosen = values[first:last] < threshold
        if ties_left > 0:
            # Candidates are listed in (matrix, position) order, so the first ties are the ones to prune.
            equal = (values[first:last] == threshold).nonzero().reshape(-1)[:ties_left]
            chosen[equal] = True
            ties_left -= equal.numel()
        cleared = positions[first:last][chosen].to(torch.int64)
        if cleared.numel():
            bits = torch.zeros(packed[i].numel(), dtype=torch.int32)
            bits.index_add_(0, cleared >> 3, (1 << (cleared & 7)).to(torch.int32))  # distinct bits: sum is OR
            packed[i] &= (255 - bits).to(torch.uint8)
    return packed


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


def _radix_select(sizes: Sequence[int], scores: ScoreFn, k: int) -> list[torch.Tensor]:
    """The exact fallback: histograms of the high then the low 16 bits of the keys, then a mask pass."""
    high_hist = torch.zeros(_BINS, dtype=torch.int64)
    for i in range(len(sizes)):
        high_hist += torch.bincount(_high(sort_keys(scores(i))).reshape(-1).cpu(), minlength=_BINS)
    high_bin, below_high = _first_reaching(high_hist, k)
    low_hist = torch.zeros(_BINS, dtype=torch.int64)
    for i in range(len(sizes)):
        keys = sort_keys(scores(i)).reshape(-1)
        in_bin = keys[_high(keys) == high_bin]
        low_hist += torch.bincount(_low(in_bin).cpu(), minlength=_BINS)
    low_bin, below_low = _first_reaching(low_hist, k - below_high)
    threshold = torch.tensor(((high_bin - (1 << 15)) << 16) | low_bin, dtype=torch.int64).to(torch.int32)
    ties_left = k - below_high - below_low  # scores equal to the threshold still to prune, in order
    masks = []
    for i in range(len(sizes)):
        keys = sort_keys(scores(i)).reshape(-1)
        pruned = keys < threshold.to(keys.device)
        if ties_left > 0:
            take = (keys == threshold.to(keys.device)).nonzero().reshape(-1)[:ties_left]
            pruned[take] = True
            ties_left -= take.numel()
        masks.append(~pruned)
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


@dataclass
class Selection:
    """How many weights to prune and among which groups: the resolved sparsity, scope, N:M pattern and OWL's
    per-block sparsities."""

    sparsity: float
    scope: str
    n_m: tuple[int, int] | None = None
    block_sparsity: dict[int, float] | None = None

    def target(self, matrix: PrunableMatrix) -> float:
        """The sparsity `matrix` gets (its block's under OWL)."""
        if self.block_sparsity is not None and matrix.block is not None:
            return self.block_sparsity[matrix.block]
        return self.sparsity


MatrixScores = Callable[[PrunableMatrix], torch.Tensor]
MatrixSample = Callable[[PrunableMatrix, int, int], torch.Tensor]


def select_masks(
    matrices: list[PrunableMatrix], score: MatrixScores, sample: MatrixSample, selection: Selection
) -> PackedMasks:
    """Keep-masks pruning the lowest scores of `matrices` as `selection` says (exact counts, ties by position):
    per N:M group, per row, per matrix (layer), or over all matrices (global; per block under OWL)."""
    masks = PackedMasks()
    if selection.n_m is not None:
        for matrix in matrices:
            masks[matrix.name] = select_n_m(score(matrix), *selection.n_m)
    elif selection.scope == "row":
        for matrix in matrices:
            masks[matrix.name] = select_rows(score(matrix), selection.target(matrix))
    elif selection.scope == "layer":
        for matrix in matrices:
            k = prune_count(selection.target(matrix), matrix.numel)
            packed = select_group_packed(
                [matrix.numel], lambda _i, m=matrix: score(m), k, lambda _i, a, b, m=matrix: sample(m, a, b)
            )[0]
            masks.set_packed(matrix.name, packed, tuple(matrix.param.shape))
    else:
        groups: dict[Any, list[PrunableMatrix]] = {}
        for matrix in matrices:
            key = matrix.block if selection.block_sparsity is not None else "all"
            groups.setdefault(key, []).append(matrix)
        for group in groups.values():
            sizes = [m.numel for m in group]
            k = prune_count(selection.target(group[0]), sum(sizes))
            packed_masks = select_group_packed(
                sizes, lambda i, g=group: score(g[i]), k, lambda i, a, b, g=group: sample(g[i], a, b)
            )
            for matrix, packed in zip(group, packed_masks):
                masks.set_packed(matrix.name, packed, tuple(matrix.param.shape))
    return masks
