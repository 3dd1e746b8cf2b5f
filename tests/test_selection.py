"""Mask selection against brute-force sorting, including ties and negative scores."""

from __future__ import annotations

import pytest
import torch

from jdna.artifact import pack_mask, unpack_mask
from jdna.errors import JdnaError
from jdna.pruning.selection import (
    _radix_select,
    prune_count,
    select_group,
    select_group_packed,
    select_n_m,
    select_rows,
    sort_keys,
)


def brute_force_group(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    flat = torch.cat([s.reshape(-1) for s in scores])
    order = torch.sort(flat, stable=True).indices[:k]
    pruned = torch.zeros_like(flat, dtype=torch.bool)
    pruned[order] = True
    out, offset = [], 0
    for s in scores:
        out.append(~pruned[offset : offset + s.numel()].reshape(s.shape))
        offset += s.numel()
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.99])
def test_global_selection_equals_brute_force_with_ties(seed: int, sparsity: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    # Few distinct values: most scores tie, as in the dequantized demo LM.
    scores = [
        torch.randint(-4, 5, shape, generator=generator).float() * 0.25
        for shape in [(7, 5), (3, 11), (13, 2)]
    ]
    total = sum(s.numel() for s in scores)
    k = prune_count(sparsity, total)
    masks = select_group([s.numel() for s in scores], lambda i: scores[i], k)
    expected = brute_force_group(scores, k)
    for got, want in zip(masks, expected):
        assert torch.equal(got.reshape(want.shape), want)
    assert sum(int((~m).sum()) for m in masks) == k


def test_global_selection_continuous_scores_spanning_many_buckets() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = [
        torch.randn(64, 48, generator=generator)
        * 10 ** torch.randint(-8, 8, (1,), generator=generator).item()
        for _ in range(4)
    ]
    k = prune_count(0.6, sum(s.numel() for s in scores))
    masks = select_group([s.numel() for s in scores], lambda i: scores[i], k)
    for got, want in zip(masks, brute_force_group(scores, k)):
        assert torch.equal(got.reshape(want.shape), want)


def test_sort_keys_preserve_float_order() -> None:
    values = torch.tensor([-3.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 2.0, 1e30])
    keys = sort_keys(values)
    assert torch.all(keys[1:] >= keys[:-1])
    assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(values, stable=True))


def test_row_selection_equals_per_row_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (9, 10), generator=generator).float()
    keep = select_rows(scores, 0.35)
    k = prune_count(0.35, 10)
    for row in range(9):
        order = sorted(range(10), key=lambda j: (scores[row, j].item(), j))
        pruned = set(order[:k])
        assert {j for j in range(10) if not keep[row, j]} == pruned


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_n_m_every_group_keeps_exactly_n_largest(n: int, m: int) -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.rand(6, 4 * m, generator=generator)
    keep = select_n_m(scores, n, m)
    groups = keep.reshape(6, 4, m)
    assert torch.all(groups.sum(-1) == n)
    grouped_scores = scores.reshape(6, 4, m)
    kept_min = torch.where(groups, grouped_scores, torch.inf).min(-1).values
    pruned_max = torch.where(~groups, grouped_scores, -torch.inf).max(-1).values
    assert torch.all(kept_min >= pruned_max)


def test_prune_count_rounds_half_up() -> None:
    assert prune_count(0.5, 3) == 2
    assert prune_count(0.5, 4) == 2
    assert prune_count(0.0, 10) == 0
    assert prune_count(0.999, 10) == 10


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (8, 8), (13, 17)])
def test_mask_packing_round_trips(shape: tuple[int, ...]) -> None:
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(keep)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (keep.numel() + 7) // 8
    assert torch.equal(unpack_mask(packed, list(shape)), keep)


def _as_flat_bools(masks: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    return [unpack_mask(m, [n]) for m, n in zip(masks, sizes)]


@pytest.mark.parametrize("sample_size", [1, 7, 64, 1 << 18])
@pytest.mark.parametrize("sparsity", [0.01, 0.5, 0.93, 1.0])
def test_sampled_bracket_equals_brute_force_for_any_sample_size(sample_size: int, sparsity: float) -> None:
    # Tiny samples make the bracket miss or overflow, so this drives both the bracket and the radix fallback.
    generator = torch.Generator().manual_seed(11)
    scores = [torch.randn(shape, generator=generator).abs() for shape in [(40, 30), (17, 9), (64, 64), (3, 1)]]
    scores[1][:5] = 0.0
    scores[2].view(-1)[::3] = scores[2].view(-1)[1]  # a large block of exact ties
    sizes = [s.numel() for s in scores]
    k = prune_count(sparsity, sum(sizes))
    masks = _as_flat_bools(select_group_packed(sizes, lambda i: scores[i], k, sample_size=sample_size), sizes)
    for got, want in zip(masks, brute_force_group(scores, k)):
        assert torch.equal(got.reshape(want.shape), want)


def test_radix_fallback_equals_brute_force_with_signed_zeros_and_infinities() -> None:
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), 0.0, -0.0, 2.5, -2.5])
    scores = [values[:6].reshape(2, 3), values[6:]]
    sizes = [6, 4]
    for k in range(11):
        for got, want in zip(_radix_select(sizes, lambda i: scores[i], k), brute_force_group(scores, k)):
            assert torch.equal(got.reshape(want.shape), want), k
        packed = select_group_packed(sizes, lambda i: scores[i], k)
        for got, want in zip(_as_flat_bools(packed, sizes), brute_force_group(scores, k)):
            assert torch.equal(got.reshape(want.shape), want), k


def test_selection_rejects_nan_scores() -> None:
    scores = [torch.tensor([0.5, float("nan"), 1.0])]
    with pytest.raises(JdnaError, match="NaN"):
        select_group_packed([3], lambda i: scores[i], 1)


def test_packed_masks_store_one_bit_per_weight() -> None:
    from jdna.artifact import PackedMasks

    masks = PackedMasks()
    keep = torch.rand(33, 17, generator=torch.Generator().manual_seed(1)) > 0.3
    masks["w"] = keep
    assert torch.equal(masks["w"], keep) and list(masks) == ["w"]
    assert masks.packed("w").numel() == (33 * 17 + 7) // 8


def test_bracket_needs_no_fallback_on_continuous_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    import jdna.pruning.selection as selection

    def no_fallback(*_args: object) -> None:
        raise AssertionError("the sampled bracket should have held the threshold")

    monkeypatch.setattr(selection, "_radix_select", no_fallback)
    generator = torch.Generator().manual_seed(5)
    scores = [torch.randn(300, 200, generator=generator).abs() for _ in range(5)]
    sizes = [s.numel() for s in scores]
    for sparsity in (0.2, 0.5, 0.9):
        k = prune_count(sparsity, sum(sizes))
        packed = selection.select_group_packed(sizes, lambda i: scores[i], k)
        for got, want in zip(_as_flat_bools(packed, sizes), brute_force_group(scores, k)):
            assert torch.equal(got.reshape(want.shape), want)
