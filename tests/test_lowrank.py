"""Truncated-SVD low-rank factorization: exactness, optimality and rank selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jdna.errors import JdnaError
from jdna.quantization import low_rank, lowrank_bits_per_weight
from jdna.quantization.lowrank import rank_for_bits_per_weight


def _with_spectrum(singular_values: list[float], rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A float64 matrix U diag(s) V^T with the given singular values and random orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (6, 6)])
def test_full_rank_reconstructs_exactly(shape: tuple[int, int]) -> None:
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    factors = low_rank(weight, rank_ratio=1.0)
    assert factors.rank == min(shape)
    assert factors.left.shape == (shape[0], min(shape)) and factors.right.shape == (min(shape), shape[1])
    assert factors.left.dtype == torch.float32 and factors.right.dtype == torch.float32
    assert torch.allclose(factors.reconstruct(), weight, atol=1e-5)
    assert factors.energy() == pytest.approx(1.0)


def test_factor_structure() -> None:
    weight = torch.randn(10, 7, generator=torch.Generator().manual_seed(2))
    factors = low_rank(weight, rank_ratio=0.5)
    s = np.linalg.svd(weight.double().numpy(), compute_uv=False)
    # right = V_r^T has orthonormal rows; left = U_r S_r has orthogonal columns of norm s_i.
    assert torch.allclose(factors.right @ factors.right.T, torch.eye(factors.rank), atol=1e-5)
    gram = (factors.left.T @ factors.left).double().numpy()
    assert np.allclose(gram, np.diag(s[: factors.rank] ** 2), atol=1e-4)


@pytest.mark.parametrize("rank_ratio", [0.25, 0.5, 0.75])
def test_eckart_young_error(rank_ratio: float) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 12, generator=gen)
    factors = low_rank(weight, rank_ratio=rank_ratio)
    r = factors.rank
    assert r == round(rank_ratio * 12)
    s = np.linalg.svd(weight.double().numpy(), compute_uv=False)
    expected = float(np.sqrt(np.sum(s[r:] ** 2)))
    error = float(torch.linalg.norm(weight - factors.reconstruct()))
    assert error == pytest.approx(expected, rel=1e-5)
    assert factors.energy() == pytest.approx(float(np.sum(s[:r] ** 2) / np.sum(s**2)), rel=1e-6)
    # Any other rank-r approximation does worse; the best one within a random r-dim row
    # subspace (orthogonal projection onto it) is a strong competitor.
    for seed in range(5):
        basis, _ = torch.linalg.qr(torch.randn(12, r, generator=torch.Generator().manual_seed(seed)))
        random_error = float(torch.linalg.norm(weight - weight @ basis @ basis.T))
        assert error < random_error


def test_energy_selects_rank_on_known_spectrum() -> None:
    # s^2 = 16, 9, 4, 1 (total 30): cumulative energy 0.533, 0.833, 0.967, 1.
    # Kept in float64 so that targets sitting exactly on a boundary are meaningful.
    weight = _with_spectrum([4.0, 3.0, 2.0, 1.0], rows=9, cols=7)
    cases = {0.1: 1, 16 / 30: 1, 0.54: 2, 25 / 30: 2, 0.84: 3, 0.96: 3, 29 / 30: 3, 0.97: 4, 1.0: 4}
    for energy, expected in cases.items():
        factors = low_rank(weight, energy=energy)
        assert factors.rank == expected, energy
        assert factors.energy() >= energy - 1e-6
    spectrum = low_rank(weight, energy=1.0).singular_values[:4].numpy()
    np.testing.assert_allclose(spectrum, [4, 3, 2, 1], rtol=1e-6)


def test_energy_on_float32_weights_away_from_boundaries() -> None:
    weight = _with_spectrum([4.0, 3.0, 2.0, 1.0], rows=9, cols=7, seed=1).float()
    for energy, expected in {0.5: 1, 0.8: 2, 0.9: 3, 0.99: 4}.items():
        assert low_rank(weight, energy=energy).rank == expected


def test_energy_one_on_full_spectrum_is_full_rank() -> None:
    weight = torch.randn(6, 9, generator=torch.Generator().manual_seed(4))
    assert low_rank(weight, energy=1.0).rank == 6


def test_rank_ratio_rounding() -> None:
    weight = torch.randn(8, 6, generator=torch.Generator().manual_seed(5))
    assert low_rank(weight, rank_ratio=0.5).rank == 3
    assert low_rank(weight, rank_ratio=0.25).rank == 2  # 1.5 rounds half up
    assert low_rank(weight, rank_ratio=0.01).rank == 1  # never below rank 1


def test_zero_matrix_is_finite() -> None:
    factors = low_rank(torch.zeros(4, 5), energy=0.9)
    assert factors.rank == 1
    assert torch.equal(factors.reconstruct(), torch.zeros(4, 5))


def test_lowrank_accounting_at_selected_rank() -> None:
    factors = low_rank(torch.randn(32, 16), rank_ratio=0.25)
    assert lowrank_bits_per_weight(32, 16, factors.rank) == pytest.approx(16 * 4 * 48 / 512)


@pytest.mark.parametrize("kwargs", [{"rank_ratio": 0.0}, {"rank_ratio": 1.5}, {"rank_ratio": -0.2}])
def test_rank_ratio_out_of_range(kwargs: dict) -> None:
    with pytest.raises(JdnaError, match=r"rank_ratio=.*\(0, 1\]"):
        low_rank(torch.randn(4, 4), **kwargs)


@pytest.mark.parametrize("energy", [0.0, 1.5])
def test_energy_out_of_range(energy: float) -> None:
    with pytest.raises(JdnaError, match=r"energy=.*\(0, 1\]"):
        low_rank(torch.randn(4, 4), energy=energy)


def test_exactly_one_selector() -> None:
    with pytest.raises(JdnaError, match="exactly one"):
        low_rank(torch.randn(4, 4))
    with pytest.raises(JdnaError, match="exactly one"):
        low_rank(torch.randn(4, 4), rank_ratio=0.5, energy=0.5)


def test_rejects_non_matrix() -> None:
    with pytest.raises(JdnaError, match="2-D"):
        low_rank(torch.randn(4), rank_ratio=0.5)
    with pytest.raises(JdnaError, match="2-D"):
        low_rank(torch.ones(4, 4, dtype=torch.int64), rank_ratio=0.5)


@pytest.mark.parametrize("shape", [(576, 576), (192, 576), (1536, 576), (576, 1536), (7, 300), (33, 65)])
@pytest.mark.parametrize("bits", [0.3, 2.0, 3.0, 4.0, 6.0, 8.0, 12.5])
def test_rank_for_bits_is_the_closest_rank_by_brute_force(shape: tuple[int, int], bits: float) -> None:
    rows, cols = shape
    rank = rank_for_bits_per_weight(bits, rows, cols)
    costs = {r: lowrank_bits_per_weight(rows, cols, r) for r in range(1, min(rows, cols) + 1)}
    best = min(abs(cost - bits) for cost in costs.values())
    assert abs(costs[rank] - bits) == pytest.approx(best, abs=1e-12)
    assert low_rank(torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)), rank=rank).rank == rank


def test_rank_selector_bounds() -> None:
    with pytest.raises(JdnaError, match=r"\[1, 4\]"):
        low_rank(torch.randn(4, 6), rank=5)
    with pytest.raises(JdnaError, match="positive number of bits"):
        rank_for_bits_per_weight(0, 4, 4)
    assert rank_for_bits_per_weight(1000, 4, 6) == 4  # capped at full rank
