"""Quantization library: RTN, GPTQ, packing, accounting and input validation."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
import torch

from jdna.errors import JdnaError
from jdna.quantization import (
    QuantSpec,
    aggregate_bits_per_weight,
    compression_ratio,
    gptq_quantize,
    lowrank_bits_per_weight,
    pack_codes,
    quantize_rtn,
    quantized_bits_per_weight,
    unpack_codes,
)

GRANULARITIES = ["tensor", "channel", "group"]


def _expand(params: torch.Tensor, q) -> torch.Tensor:
    """Per-element copy of per-group ``params``, built column by column from the group index."""
    rows, cols = q.codes.shape
    if q.spec.granularity != "group":
        return params.expand(rows, cols)
    return torch.stack([params[:, j // q.spec.group_size] for j in range(cols)], dim=1)


def _expanded_scales(q) -> torch.Tensor:
    return _expand(q.scales, q)


def _calibration(cols: int, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs with strongly correlated columns (so error compensation matters) and their Hessian."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=gen) + 2.0 * torch.randn(1, cols, generator=gen)
    x = torch.randn(n, cols, generator=gen) @ mixing
    return x, 2.0 / n * x.T @ x


def _output_error(weight: torch.Tensor, q, x: torch.Tensor) -> float:
    return float(torch.linalg.norm((weight - q.dequantize()) @ x.T))


# ---------------------------------------------------------------- spec validation


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_out_of_range_rejected(bits: int) -> None:
    with pytest.raises(JdnaError, match="2 to 8"):
        QuantSpec(bits=bits, granularity="channel")


def test_bits_must_be_int() -> None:
    with pytest.raises(JdnaError):
        QuantSpec(bits=4.0, granularity="channel")  # type: ignore[arg-type]


def test_unknown_granularity_suggests_nearest() -> None:
    with pytest.raises(JdnaError, match="did you mean 'channel'"):
        QuantSpec(bits=4, granularity="chanel")


def test_group_size_must_divide_columns() -> None:
    spec = QuantSpec(bits=4, granularity="group", group_size=128)
    with pytest.raises(JdnaError) as info:
        spec.validate_for((8, 576), name="model.layers.0.mlp.up_proj")
    message = str(info.value)
    assert "128" in message and "576" in message and "model.layers.0.mlp.up_proj" in message
    assert "64" in message  # largest power-of-two divisor of 576 below 128
    assert "\n" not in message
    with pytest.raises(JdnaError, match="does not divide"):
        quantize_rtn(torch.randn(4, 576), spec)
    spec.validate_for((8, 512))  # a divisible width passes


def test_non_group_granularity_ignores_group_size() -> None:
    QuantSpec(bits=4, granularity="channel", group_size=128).validate_for((8, 576))


def test_mask_shape_and_dtype_checked() -> None:
    spec = QuantSpec(bits=4, granularity="channel")
    with pytest.raises(JdnaError, match="bool"):
        quantize_rtn(torch.randn(4, 8), spec, mask=torch.ones(4, 8))
    with pytest.raises(JdnaError, match="shape"):
        quantize_rtn(torch.randn(4, 8), spec, mask=torch.ones(4, 4, dtype=torch.bool))


# ---------------------------------------------------------------- RTN


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_error_within_half_step_and_nearest(bits: int, granularity: str, symmetric: bool) -> None:
    gen = torch.Generator().manual_seed(bits)
    # Rows of different scale and sign offset so per-row/per-group scales actually differ.
    weight = torch.randn(6, 32, generator=gen) * torch.linspace(0.01, 5, 6).unsqueeze(1) + 0.3
    spec = QuantSpec(bits=bits, granularity=granularity, group_size=8, symmetric=symmetric)
    q = quantize_rtn(weight, spec)

    expected_groups = {"tensor": (1, 1), "channel": (6, 1), "group": (6, 4)}[granularity]
    assert q.scales.shape == expected_groups and q.zeros.shape == expected_groups
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) < 2**bits
    assert torch.equal(q.zeros, q.zeros.round())
    if symmetric:
        assert torch.all(q.zeros == 2 ** (bits - 1))

    scale = _expanded_scales(q)
    w_hat = q.dequantize()
    assert w_hat.dtype == torch.float32
    err = (weight - w_hat).abs()
    # Slack of a few float32 ulps of |w|: clipping at +amax loses exactly half a step, and
    # computing that difference cancels digits of the (much larger) weight.
    assert torch.all(err <= scale / 2 + 1e-6 * (weight.abs() + scale))

    # Brute force: the best of all 2**bits grid points is no better than what RTN picked.
    levels = torch.arange(2**bits, dtype=torch.float32)
    grid = scale.unsqueeze(-1) * (levels - _expand(q.zeros, q).unsqueeze(-1))
    best = (weight.unsqueeze(-1) - grid).abs().min(dim=-1).values
    assert torch.allclose(err, best, atol=1e-6, rtol=1e-5)


def test_asymmetric_beats_symmetric_on_shifted_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = 2.0 + torch.rand(16, 64, generator=gen)  # uniform in [2, 3]
    for bits in (2, 4):
        mse = {}
        for symmetric in (True, False):
            q = quantize_rtn(weight, QuantSpec(bits=bits, granularity="channel", symmetric=symmetric))
            mse[symmetric] = float(((weight - q.dequantize()) ** 2).mean())
        assert mse[False] < 0.5 * mse[True]


def test_group_scales_match_hand_computed() -> None:
    weight = torch.tensor(
        [
            [0.1, -0.3, 0.2, 0.15, 30.0, -15.0, 7.5, 0.0],
            [1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [2.0, 3.0, 2.5, 2.2, -1.0, -2.0, -4.0, -3.0],
        ]
    )
    sym = quantize_rtn(weight, QuantSpec(bits=4, granularity="group", group_size=4, symmetric=True))
    # scale = 2 * max|w| / 15 per group; an all-zero group falls back to scale 1.
    expected_sym = torch.tensor([[0.6 / 15, 60.0 / 15], [3.0 / 15, 1.0], [6.0 / 15, 8.0 / 15]])
    assert torch.allclose(sym.scales, expected_sym, rtol=1e-6)
    assert torch.all(sym.zeros == 8)
    assert torch.equal(sym.dequantize()[1, 4:], torch.zeros(4))

    asym = quantize_rtn(weight, QuantSpec(bits=4, granularity="group", group_size=4, symmetric=False))
    # The range is widened to include 0: [min(xmin, 0), max(xmax, 0)], zero = round(-xmin / scale).
    expected_scale = torch.tensor([[0.5 / 15, 3.0], [0.1, 1.0], [0.2, 4.0 / 15]])
    expected_zero = torch.tensor([[9.0, 5.0], [0.0, 0.0], [0.0, 15.0]])
    assert torch.allclose(asym.scales, expected_scale, rtol=1e-6)
    assert torch.equal(asym.zeros, expected_zero)
    # Spot-check one code by hand: 30 / 3 + 5 = 15.
    assert int(asym.codes[0, 4]) == 15 and int(asym.codes[0, 5]) == 0


def test_rtn_casts_half_precision_and_keeps_input() -> None:
    weight = torch.randn(4, 16, dtype=torch.bfloat16)
    before = weight.clone()
    spec = QuantSpec(bits=8, granularity="channel")
    q = quantize_rtn(weight, spec)
    assert torch.equal(weight, before)
    assert torch.allclose(q.dequantize(), weight.float(), atol=float(weight.float().abs().max()) / 100)


def test_rtn_all_zero_matrix_has_no_nan() -> None:
    for symmetric, granularity in itertools.product((True, False), GRANULARITIES):
        spec = QuantSpec(bits=3, granularity=granularity, group_size=4, symmetric=symmetric)
        q = quantize_rtn(torch.zeros(3, 8), spec)
        assert torch.all(torch.isfinite(q.scales)) and torch.all(q.scales > 0)
        assert torch.equal(q.dequantize(), torch.zeros(3, 8))


def test_rtn_rejects_non_finite() -> None:
    weight = torch.randn(2, 4)
    weight[0, 0] = float("nan")
    with pytest.raises(JdnaError, match="NaN"):
        quantize_rtn(weight, QuantSpec(bits=4, granularity="channel"))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_mask_zeroes_pruned_and_ignores_them_for_scales(granularity: str, symmetric: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 16, generator=gen) + 1.0
    mask = torch.rand(4, 16, generator=gen) > 0.4
    mask[0, 0] = False
    weight[0, 0] = 1000.0  # a pruned outlier must not blow up the scale
    spec = QuantSpec(bits=3, granularity=granularity, group_size=8, symmetric=symmetric)
    q = quantize_rtn(weight, spec, mask=mask)
    w_hat = q.dequantize()
    assert torch.all(w_hat[~mask] == 0)
    # Kept-only ranges equal the ranges of the matrix with pruned entries zeroed (ranges include 0).
    reference = quantize_rtn(torch.where(mask, weight, 0.0), spec)
    assert torch.allclose(q.scales, reference.scales) and torch.equal(q.zeros, reference.zeros)
    err = (weight - w_hat).abs()[mask]
    scale = _expanded_scales(q)[mask]
    assert torch.all(err <= scale / 2 + 1e-6 * (weight.abs()[mask] + scale))


def test_rtn_fully_pruned_group_is_finite_zero() -> None:
    weight = torch.randn(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, :4] = False
    q = quantize_rtn(weight, QuantSpec(bits=4, granularity="group", group_size=4, symmetric=False), mask=mask)
    assert torch.all(torch.isfinite(q.scales))
    assert torch.equal(q.dequantize()[:, :4], torch.zeros(2, 4))


# ---------------------------------------------------------------- packing


def _numpy_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Independent reference: explicit little-endian bit expansion and numpy.packbits."""
    stream = ((codes[:, None].astype(np.int64) >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("numel", [0, 1, 7, 13, 1001])
def test_pack_round_trip(bits: int, numel: int) -> None:
    gen = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2**bits, (numel,), generator=gen, dtype=torch.int64).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(numel * bits / 8)
    assert np.array_equal(packed.numpy(), _numpy_pack(codes.numpy(), bits))
    assert torch.equal(unpack_codes(packed, bits, numel), codes)


def test_pack_known_bytes() -> None:
    # 2 bits: 1 -> 0b01, 2 -> 0b10, 3 -> 0b11 at offsets 0, 2, 4: 1 + 8 + 16 + 32.
    assert pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 2).tolist() == [57]
    # 3 bits straddle bytes: 5, 6, 7 -> stream 101 011 111 (LSB first) -> 0b11110101, 0b1.
    assert pack_codes(torch.tensor([5, 6, 7], dtype=torch.uint8), 3).tolist() == [245, 1]


def test_pack_matrix_codes_round_trip() -> None:
    q = quantize_rtn(torch.randn(8, 24), QuantSpec(bits=5, granularity="channel"))
    packed = pack_codes(q.codes, 5)
    assert torch.equal(unpack_codes(packed, 5, q.codes.numel()).reshape(q.codes.shape), q.codes)


def test_pack_million_codes_fast() -> None:
    codes = torch.randint(0, 8, (1_000_003,), dtype=torch.int64).to(torch.uint8)
    start = time.perf_counter()
    restored = unpack_codes(pack_codes(codes, 3), 3, codes.numel())
    assert time.perf_counter() - start < 3.0
    assert torch.equal(restored, codes)


def test_pack_rejects_bad_input() -> None:
    with pytest.raises(JdnaError, match="fit in 2 bits"):
        pack_codes(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(JdnaError):
        pack_codes(torch.tensor([1.0]), 2)
    with pytest.raises(JdnaError):
        pack_codes(torch.tensor([1], dtype=torch.uint8), 9)
    with pytest.raises(JdnaError, match="need"):
        unpack_codes(torch.zeros(1, dtype=torch.uint8), 4, 3)


# ---------------------------------------------------------------- GPTQ


def _naive_gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    damp: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unblocked float64 GPTQ in its textbook (OBQ) form: downdate H^-1 after every column.

    Independent of the Cholesky/lazy-batch formulation, so agreement checks both the
    update algebra and the deferred updates that cross block and group boundaries.
    Pruned weights (``mask`` False) are set to 0 and their whole value is compensated.
    """
    keep = torch.ones_like(weight, dtype=torch.bool) if mask is None else mask
    w = weight.double().clone()
    h = hessian.double().clone()
    cols = w.shape[1]
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    maxq = 2**spec.bits - 1
    codes = torch.zeros_like(w)

    def params(block: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block = torch.where(kept, block, 0.0)  # ranges include 0, so zeroing pruned = ignoring them
        lo = block.min(dim=1).values.clamp(max=0)
        hi = block.max(dim=1).values.clamp(min=0)
        if spec.symmetric:
            scale = 2 * torch.maximum(-lo, hi) / maxq
            return scale, torch.full_like(scale, 2 ** (spec.bits - 1))
        scale = (hi - lo) / maxq
        return scale, torch.round(-lo / scale)

    scale, zero = params(w, keep)
    for j in range(cols):
        if spec.granularity == "group" and j % spec.group_size == 0:
            cols_j = slice(j, j + spec.group_size)
            scale, zero = params(w[:, cols_j], keep[:, cols_j])
        c = torch.clamp(torch.round(w[:, j] / scale) + zero, 0, maxq)
        c = torch.where(keep[:, j], c, zero)
        codes[:, j] = c
        d = h_inv[j, j]
        w[:, j:] -= torch.outer((w[:, j] - scale * (c - zero)) / d, h_inv[j, j:])
        h_inv = h_inv - torch.outer(h_inv[:, j], h_inv[j, :]) / d
    return codes


@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_matches_unblocked_reference(granularity: str, symmetric: bool) -> None:
    x, hessian = _calibration(24, seed=3)
    weight = torch.randn(6, 24, generator=torch.Generator().manual_seed(4))
    spec = QuantSpec(bits=3, granularity=granularity, group_size=8, symmetric=symmetric)
    reference = _naive_gptq(weight, hessian, spec, damp=0.01)
    # Block sizes below, straddling and above the group size exercise the pending-update paths.
    for block_size in (1, 5, 128):
        q = gptq_quantize(weight, hessian, spec, block_size=block_size, damp=0.01)
        mismatches = int((q.codes.double() != reference).sum())
        assert mismatches <= 1, (block_size, mismatches)  # allow one float32-vs-64 rounding tie


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_beats_rtn_on_calibration_output(granularity: str, symmetric: bool) -> None:
    x, hessian = _calibration(32)
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(2))
    spec = QuantSpec(bits=3, granularity=granularity, group_size=8, symmetric=symmetric)
    rtn = _output_error(weight, quantize_rtn(weight, spec), x)
    gptq = _output_error(weight, gptq_quantize(weight, hessian, spec, block_size=8), x)
    act = _output_error(weight, gptq_quantize(weight, hessian, spec, block_size=8, act_order=True), x)
    assert gptq < rtn
    assert act < rtn


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_identity_hessian_equals_rtn(granularity: str, symmetric: bool) -> None:
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    spec = QuantSpec(bits=4, granularity=granularity, symmetric=symmetric)
    rtn = quantize_rtn(weight, spec)
    for act_order in (False, True):
        q = gptq_quantize(weight, torch.eye(16), spec, damp=0.0, block_size=4, act_order=act_order)
        assert torch.equal(q.codes, rtn.codes)
        assert torch.equal(q.scales, rtn.scales) and torch.equal(q.zeros, rtn.zeros)


def test_gptq_act_order_group_uses_static_scales() -> None:
    _, hessian = _calibration(16, seed=6)
    weight = torch.randn(4, 16, generator=torch.Generator().manual_seed(6))
    spec = QuantSpec(bits=3, granularity="group", group_size=4, symmetric=False)
    q = gptq_quantize(weight, hessian, spec, act_order=True)
    rtn = quantize_rtn(weight, spec)
    assert torch.equal(q.scales, rtn.scales) and torch.equal(q.zeros, rtn.zeros)
    # Without act_order the later groups see error-updated weights, so their scales move.
    assert not torch.equal(gptq_quantize(weight, hessian, spec).scales[:, 1:], rtn.scales[:, 1:])


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_mask_positions_exactly_zero(act_order: bool, symmetric: bool) -> None:
    x, hessian = _calibration(16, seed=7)
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(8, 16, generator=gen) + 0.5
    mask = torch.rand(8, 16, generator=gen) > 0.5
    spec = QuantSpec(bits=4, granularity="group", group_size=8, symmetric=symmetric)
    q = gptq_quantize(weight, hessian, spec, block_size=4, act_order=act_order, mask=mask)
    w_hat = q.dequantize()
    assert torch.all(w_hat[~mask] == 0)
    assert torch.isfinite(w_hat).all()
    # Compensating for the pruned weights must beat pruning then rounding.
    pruned = torch.where(mask, weight, 0.0)
    rtn = quantize_rtn(pruned, spec, mask=mask)
    assert _output_error(weight, q, x) < _output_error(weight, rtn, x)
    if not act_order:
        reference = _naive_gptq(weight, hessian, spec, damp=0.01, mask=mask)
        assert int((q.codes.double() != reference).sum()) <= 1


def test_gptq_dead_columns_and_inputs_untouched() -> None:
    x, hessian = _calibration(12, seed=8)
    x[:, [2, 7]] = 0.0
    hessian = 2.0 / x.shape[0] * x.T @ x
    weight = torch.randn(5, 12)
    weight_before, hessian_before = weight.clone(), hessian.clone()
    q = gptq_quantize(weight, hessian, QuantSpec(bits=4, granularity="channel"), damp=0.0)
    assert torch.equal(weight, weight_before) and torch.equal(hessian, hessian_before)
    w_hat = q.dequantize()
    assert torch.isfinite(w_hat).all()
    assert torch.equal(w_hat[:, [2, 7]], torch.zeros(5, 2))


def test_gptq_rejects_bad_hessian() -> None:
    spec = QuantSpec(bits=4, granularity="channel")
    weight = torch.randn(4, 6)
    with pytest.raises(JdnaError, match=r"\(6, 6\)"):
        gptq_quantize(weight, torch.eye(5), spec)
    indefinite = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -3.0]))
    with pytest.raises(JdnaError, match="increase damp"):
        gptq_quantize(weight, indefinite, spec, damp=0.0)
    with pytest.raises(JdnaError, match="damp"):
        gptq_quantize(weight, torch.eye(6), spec, damp=-1.0)
    with pytest.raises(JdnaError, match="block_size"):
        gptq_quantize(weight, torch.eye(6), spec, block_size=0)


# ---------------------------------------------------------------- accounting


def test_quantized_bits_per_weight_hand_cases() -> None:
    numel = 4096 * 4096
    assert quantized_bits_per_weight(numel, 4, numel // 128, True) == pytest.approx(4.125)
    assert quantized_bits_per_weight(numel, 4, numel // 128, False) == pytest.approx(4 + 20 / 128)
    assert quantized_bits_per_weight(numel, 3, 4096, True) == pytest.approx(3 + 16 / 4096)
    assert quantized_bits_per_weight(numel, 8, 1, True, value_bits=32) == pytest.approx(8 + 32 / numel)
    assert quantized_bits_per_weight(64, 2, 4, False, mask_bits=64) == pytest.approx(2 + 4 * 18 / 64 + 1)


def test_quantized_matrix_bits_per_weight_uses_its_groups() -> None:
    spec = QuantSpec(bits=4, granularity="group", group_size=8, symmetric=False)
    mask = torch.ones(4, 16, dtype=torch.bool)
    q = quantize_rtn(torch.randn(4, 16), spec, mask=mask)
    assert q.n_scale_groups == 8
    assert q.bits_per_weight() == pytest.approx(4 + 8 * 20 / 64)
    assert q.bits_per_weight(count_mask=True) == pytest.approx(5 + 8 * 20 / 64)


def test_lowrank_and_ratio_and_aggregate() -> None:
    assert lowrank_bits_per_weight(4, 8, 2) == pytest.approx(16 * 2 * 12 / 32)
    assert lowrank_bits_per_weight(4096, 4096, 512) == pytest.approx(4.0)
    assert compression_ratio(4.125) == pytest.approx(16 / 4.125)
    assert compression_ratio(4.0, reference_bits=32) == pytest.approx(8.0)
    assert aggregate_bits_per_weight([(100, 4.0), (300, 8.0)]) == pytest.approx(7.0)


def test_accounting_rejects_bad_input() -> None:
    with pytest.raises(JdnaError):
        compression_ratio(0.0)
    with pytest.raises(JdnaError):
        aggregate_bits_per_weight([])
    with pytest.raises(JdnaError):
        quantized_bits_per_weight(0, 4, 1, True)
    with pytest.raises(JdnaError):
        lowrank_bits_per_weight(4, 4, 0)
