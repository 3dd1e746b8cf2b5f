"""Pruning methods on tiny models, each checked against a reference computed another way."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from jdna.calibration import LayerwiseRunner, calibration_samples, collect_inputs
from jdna.errors import JdnaError
from jdna.models import canonical_parameters, load_model, resolve
from jdna.prunable import prunable_matrices
from jdna.pruning import PruneConfig, plan_prune, prune_model, run_prune
from jdna.pruning.owl import owl_sparsities
from jdna.pruning.selection import prune_count
from jdna.pruning.sparsegpt import sparsegpt_prune_matrix
from jdna.pruning.wanda import wanda_scores
from tests.conftest import TEXT


def load(path: Path):
    return load_model(resolve(str(path)))


def pruned_model(path: Path, **config):
    model, tokenizer = load(path)
    plan = plan_prune(PruneConfig(**config))
    outcome = prune_model(model, tokenizer, plan)
    return model, tokenizer, outcome


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("scope", ["global", "layer", "row"])
def test_magnitude_matches_brute_force_sort(
    model_fixture: str, scope: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(model_fixture)
    reference, _ = load(path)
    originals = {m.name: m.param.detach().clone() for m in prunable_matrices(reference)}
    model, _, outcome = pruned_model(path, method="magnitude", sparsity=0.6, scope=scope)
    names = list(originals)
    if scope == "global":
        flat = torch.cat([originals[n].abs().reshape(-1) for n in names])
        pruned = torch.zeros_like(flat, dtype=torch.bool)
        pruned[torch.sort(flat, stable=True).indices[: prune_count(0.6, flat.numel())]] = True
        offset = 0
        for name in names:
            size = originals[name].numel()
            assert torch.equal(
                outcome.masks[name], ~pruned[offset : offset + size].reshape(originals[name].shape)
            )
            offset += size
    for name in names:
        weight = originals[name]
        keep = outcome.masks[name]
        if scope == "layer":
            assert int((~keep).sum()) == prune_count(0.6, weight.numel())
            assert weight.abs()[keep].min() >= weight.abs()[~keep].max()
        if scope == "row":
            k = prune_count(0.6, weight.shape[1])
            assert torch.all((~keep).sum(1) == k)
            for row in range(weight.shape[0]):
                assert weight[row].abs()[keep[row]].min() >= weight[row].abs()[~keep[row]].max()
    params = canonical_parameters(model)
    for name in names:
        assert torch.equal(params[name].detach(), originals[name] * outcome.masks[name])


def test_global_sparsity_is_exact(tiny_llama: Path) -> None:
    _, _, outcome = pruned_model(tiny_llama, method="magnitude", sparsity=0.37)
    total = sum(m.numel() for m in outcome.masks.values())
    assert sum(int((~m).sum()) for m in outcome.masks.values()) == prune_count(0.37, total)


def test_large_magnitude_prunes_the_largest(tiny_llama: Path) -> None:
    reference, _ = load(tiny_llama)
    originals = {m.name: m.param.detach().clone() for m in prunable_matrices(reference)}
    _, _, outcome = pruned_model(tiny_llama, method="large-magnitude", sparsity=0.3, scope="layer")
    for name, weight in originals.items():
        keep = outcome.masks[name]
        assert weight.abs()[~keep].min() >= weight.abs()[keep].max()


def test_random_is_seeded_and_uniform(tiny_llama: Path) -> None:
    _, _, first = pruned_model(tiny_llama, method="random", sparsity=0.5, seed=1)
    _, _, again = pruned_model(tiny_llama, method="random", sparsity=0.5, seed=1)
    _, _, other = pruned_model(tiny_llama, method="random", sparsity=0.5, seed=2)
    assert all(torch.equal(first.masks[n], again.masks[n]) for n in first.masks)
    assert any(not torch.equal(first.masks[n], other.masks[n]) for n in first.masks)
    # Uniform: with one global threshold over i.i.d. scores, every matrix lands near 50%.
    for name, keep in first.masks.items():
        n = keep.numel()
        assert abs(float((~keep).float().mean()) - 0.5) < 4 * math.sqrt(0.25 / n) + 1e-9, name


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_n_m_patterns_valid_for_every_method(
    tiny_llama: Path, calib_file: Path, pattern: str, method: str
) -> None:
    n, m = map(int, pattern.split(":"))
    _, _, outcome = pruned_model(
        tiny_llama, method=method, pattern=pattern, calib=str(calib_file), calib_samples=4, calib_seqlen=16
    )
    for keep in outcome.masks.values():
        rows, cols = keep.shape
        assert torch.all(keep.reshape(rows, cols // m, m).sum(-1) == n)


def test_wanda_score_is_weight_times_input_norm() -> None:
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    x = torch.tensor([[1.0, 0.0, 2.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    norms = x.pow(2).sum(0).sqrt()
    scores = wanda_scores(weight, norms)
    for i in range(2):
        for j in range(3):
            assert math.isclose(
                scores[i, j].item(),
                abs(weight[i, j].item()) * math.sqrt(sum(x[t, j].item() ** 2 for t in range(3))),
                rel_tol=1e-6,
            )


def test_wanda_first_block_masks_follow_dense_activation_norms(tiny_llama: Path, calib_file: Path) -> None:
    model, tokenizer = load(tiny_llama)
    calib = calibration_samples(calib_file.read_text(), tokenizer, model, 4, 16, seed=0)
    runner = LayerwiseRunner(model, calib.input_ids)
    block0 = [m for m in prunable_matrices(model) if m.block == 0]
    inputs: dict[str, list[torch.Tensor]] = {}
    remove = collect_inputs(
        {m.name: m.module for m in block0}, lambda n, x: inputs.setdefault(n, []).append(x.clone())
    )
    runner.run(runner.blocks[0], keep_outputs=False)
    remove()
    _, _, outcome = pruned_model(
        tiny_llama, method="wanda", sparsity=0.5, calib=str(calib_file), calib_samples=4, calib_seqlen=16
    )
    for matrix in block0:
        x = torch.cat(inputs[matrix.name])
        score = matrix.param.detach().abs() * x.pow(2).sum(0).sqrt()
        k = prune_count(0.5, score.shape[1])
        expected = torch.ones_like(score, dtype=torch.bool)
        expected.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], False)
        assert torch.equal(outcome.masks[matrix.name], expected)


def _correlated_inputs(cols: int, tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=generator)
    return torch.randn(tokens, cols, generator=generator) @ mixing


def test_sparsegpt_reconstructs_better_than_magnitude() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=generator)
    x = _correlated_inputs(32, 256, seed=1)
    hessian = 2 * x.T @ x / x.shape[0]
    new_weight, keep = sparsegpt_prune_matrix(weight, hessian, 0.5, block_size=8, damp=0.0)
    k = prune_count(0.5, weight.numel())
    assert int((~keep).sum()) == k
    assert torch.all(new_weight[~keep] == 0)
    magnitude_keep = torch.ones_like(keep)
    magnitude_keep.view(-1)[torch.sort(weight.abs().reshape(-1), stable=True).indices[:k]] = False
    magnitude_error = torch.linalg.norm(x @ weight.T - x @ (weight * magnitude_keep).T)
    sparsegpt_error = torch.linalg.norm(x @ weight.T - x @ new_weight.T)
    assert sparsegpt_error < magnitude_error
    # Even with SparseGPT's mask, the weight update itself must help.
    assert sparsegpt_error < torch.linalg.norm(x @ weight.T - x @ (weight * keep).T)


def test_sparsegpt_matches_obs_closed_form_for_one_weight() -> None:
    """Removing one weight q from a row: δ = −w_q/[H⁻¹]_qq · H⁻¹[:, q] (Hassibi & Stork's OBS)."""
    generator = torch.Generator().manual_seed(4)
    cols = 8
    weight = torch.randn(1, cols, generator=generator, dtype=torch.float64) + 2.0
    weight[0, 0] = 0.01  # by far the least salient, and first in column order, so OBS applies exactly
    x = _correlated_inputs(cols, 64, seed=5).to(torch.float64)
    hessian = 2 * x.T @ x / x.shape[0]
    new_weight, keep = sparsegpt_prune_matrix(weight, hessian, 1 / cols, damp=0.0)
    assert keep.sum() == cols - 1 and not keep[0, 0]
    inverse = torch.linalg.inv(hessian)
    expected = weight[0] - weight[0, 0] / inverse[0, 0] * inverse[:, 0]
    assert torch.allclose(new_weight[0], expected, atol=1e-9)
    assert new_weight[0, 0] == 0


@pytest.mark.parametrize("scope", ["layer", "row"])
def test_sparsegpt_dead_inputs_are_zeroed_first_and_fill_the_budget(scope: str) -> None:
    """Closed form with a diagonal Hessian (no OBS updates): inputs with H_jj = 0 are zeroed and pruned first,
    the remaining budget goes to the live weights with the smallest w²·(h_j + λ), λ = damp·mean(diag H'),
    where H' has 1 on the dead diagonal; the kept live weights are unchanged."""
    generator = torch.Generator().manual_seed(7)
    rows, cols, damp, sparsity = 6, 16, 0.01, 0.5
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    dead = torch.zeros(cols, dtype=torch.bool)
    dead[[1, 6, 11]] = True
    weight[:, dead] = 10.0  # large: scored as live inputs (the old behaviour) they would all be kept
    h = torch.rand(cols, generator=generator, dtype=torch.float64) + 0.5
    h[dead] = 0
    new_weight, keep = sparsegpt_prune_matrix(weight, torch.diag(h), sparsity, scope=scope, damp=damp)

    h_filled = torch.where(dead, torch.ones_like(h), h)
    saliency = weight.pow(2) * (h + damp * h_filled.mean())
    saliency[:, dead] = 0
    expected = torch.ones(rows, cols, dtype=torch.bool)
    if scope == "layer":
        k = prune_count(sparsity, rows * cols)
        expected.view(-1)[torch.sort(saliency.reshape(-1), stable=True).indices[:k]] = False
    else:
        k = prune_count(sparsity, cols)
        expected.scatter_(1, torch.sort(saliency, dim=1, stable=True).indices[:, :k], False)
    assert torch.equal(keep, expected)
    assert not keep[:, dead].any()  # every dead weight is pruned, inside the budget
    assert int((~keep[:, ~dead]).sum()) == int((~expected).sum()) - int(dead.sum()) * rows
    assert torch.equal(new_weight, weight * expected)


def test_sparsegpt_end_to_end_exact_sparsity_and_weights_stored(tiny_llama: Path, calib_file: Path) -> None:
    record = run_prune(
        resolve(str(tiny_llama)),
        PruneConfig(
            method="sparsegpt", sparsity=0.5, calib=str(calib_file), calib_samples=4, calib_seqlen=16
        ),
    )
    assert record["sparsity"] == pytest.approx(0.5, abs=1e-12)
    model, tokenizer, outcome = pruned_model(
        tiny_llama, method="sparsegpt", sparsity=0.5, calib=str(calib_file), calib_samples=4, calib_seqlen=16
    )
    loaded, _ = load_model(resolve(record["path"]))
    expected = canonical_parameters(model)
    for name, param in canonical_parameters(loaded).items():
        assert torch.equal(param.detach(), expected[name].detach()), name


def test_owl_sparsities_formula() -> None:
    values = owl_sparsities([0.01, 0.02, 0.05, 0.03], 0.6, 0.08)
    assert math.isclose(sum(values) / 4, 0.6, abs_tol=1e-12)
    assert math.isclose(max(values) - min(values), 2 * 0.08, abs_tol=1e-12)
    assert values.index(min(values)) == 2 and values.index(max(values)) == 0
    assert owl_sparsities([0.1, 0.1], 0.5, 0.08) == [0.5, 0.5]


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_owl_prunes_blocks_at_their_own_sparsity(tiny_llama: Path, calib_file: Path, method: str) -> None:
    model, _, outcome = pruned_model(
        tiny_llama,
        method=method,
        sparsity=0.5,
        owl=True,
        owl_lambda=0.1,
        owl_m=2.0,
        calib=str(calib_file),
        calib_samples=4,
        calib_seqlen=16,
    )
    assert outcome.block_sparsity is not None
    assert sum(outcome.block_sparsity.values()) / len(outcome.block_sparsity) == pytest.approx(0.5)
    for block, target in outcome.block_sparsity.items():  # magnitude: one threshold per block; wanda: per row
        group = [matrix for matrix in prunable_matrices(model) if matrix.block == block]
        numel = sum(matrix.numel for matrix in group)
        achieved = sum(int((~outcome.masks[matrix.name]).sum()) for matrix in group) / numel
        assert abs(achieved - target) <= 1 / group[0].param.shape[1] + 1e-9


def _dense_input_norms_by_full_forward(path: Path, calib_file: Path, samples: int, seqlen: int) -> dict:
    """‖X_j‖₂ of every prunable linear layer's inputs, from one plain forward of the unpruned model."""
    model, tokenizer = load(path)
    calib = calibration_samples(calib_file.read_text(), tokenizer, model, samples, seqlen, seed=0)
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for matrix in prunable_matrices(model):
        def hook(_module, inputs, _output, name=matrix.name):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
        hooks.append(matrix.module.register_forward_hook(hook))
    with torch.no_grad():
        model(calib.input_ids)
    for handle in hooks:
        handle.remove()
    return {name: value.sqrt() for name, value in sums.items()}


def _owl_reference(model, metric, m: float, sparsity: float, lam: float) -> dict[int, float]:
    """OWL written out: outlier ratio D_l = #(metric > m·mean_l) / n_l per block, D min-max scaled to [0, 2λ],
    re-centred to mean density 1 − S; block sparsity = 1 − density."""
    ratios = {}
    for block in sorted({mat.block for mat in prunable_matrices(model)}):
        values = torch.cat([metric(mat).reshape(-1).double() for mat in prunable_matrices(model) if mat.block == block])
        ratios[block] = float((values > m * values.mean()).double().mean())
    low, high = min(ratios.values()), max(ratios.values())
    scaled = {b: (r - low) / (high - low) * 2 * lam for b, r in ratios.items()}
    mean = sum(scaled.values()) / len(scaled)
    return {b: 1 - (v - mean + 1 - sparsity) for b, v in scaled.items()}


@pytest.mark.parametrize("owl_metric", ["wanda", "weight"])
def test_owl_ratios_follow_the_reference_metric(tiny_llama: Path, calib_file: Path, owl_metric: str) -> None:
    """Magnitude + OWL: the ratios come from |W|·‖X‖ on the dense model (the reference OWL code), or from |W|
    under --owl-metric weight; each block is then pruned by magnitude at its own sparsity."""
    config = dict(method="magnitude", sparsity=0.5, owl=True, owl_lambda=0.1, owl_m=2.0, owl_metric=owl_metric,
                  calib=str(calib_file), calib_samples=4, calib_seqlen=16)
    reference_model, _ = load(tiny_llama)
    norms = _dense_input_norms_by_full_forward(tiny_llama, calib_file, 4, 16)
    if owl_metric == "wanda":
        def metric(mat):
            return mat.param.detach().abs().double() * norms[mat.name].reshape(1, -1)
    else:
        def metric(mat):
            return mat.param.detach().abs().double()
    expected = _owl_reference(reference_model, metric, 2.0, 0.5, 0.1)
    model, _, outcome = pruned_model(tiny_llama, **config)
    assert outcome.block_sparsity is not None
    assert outcome.block_sparsity == pytest.approx(expected, abs=1e-12)
    assert outcome.block_sparsity != pytest.approx({b: 0.5 for b in expected}, abs=1e-3)
    for block, target in expected.items():  # magnitude, global scope: one threshold per block
        group = [mat for mat in prunable_matrices(reference_model) if mat.block == block]
        scores = torch.cat([mat.param.detach().abs().reshape(-1) for mat in group])
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep[torch.sort(scores, stable=True).indices[: prune_count(target, scores.numel())]] = False
        got = torch.cat([outcome.masks[mat.name].reshape(-1) for mat in group])
        assert torch.equal(got, keep)
    if owl_metric == "wanda":
        assert outcome.calibration == {**outcome.calibration, "samples": 4, "seqlen": 16}
        assert plan_prune(PruneConfig(**config)).params()["calib_samples"] == 4
    else:
        assert outcome.calibration is None and "calib_samples" not in plan_prune(PruneConfig(**config)).params()


def test_owl_with_sparsegpt_prunes_each_block_at_the_reference_ratio(tiny_llama: Path, calib_file: Path) -> None:
    norms = _dense_input_norms_by_full_forward(tiny_llama, calib_file, 4, 16)
    reference_model, _ = load(tiny_llama)
    expected = _owl_reference(
        reference_model, lambda mat: mat.param.detach().abs().double() * norms[mat.name].reshape(1, -1), 2.0, 0.5, 0.1
    )
    model, _, outcome = pruned_model(tiny_llama, method="sparsegpt", sparsity=0.5, owl=True, owl_lambda=0.1,
                                     owl_m=2.0, calib=str(calib_file), calib_samples=4, calib_seqlen=16)
    assert outcome.block_sparsity == pytest.approx(expected, abs=1e-12)
    for matrix in prunable_matrices(model):
        pruned = int((~outcome.masks[matrix.name]).sum())
        assert pruned == prune_count(expected[matrix.block], matrix.numel), matrix.name


def test_owl_without_calibration_text_says_how_to_go_on(tiny_llama: Path) -> None:
    model, tokenizer = load(tiny_llama)
    with pytest.raises(JdnaError, match="--owl-metric weight"):
        prune_model(model, tokenizer, plan_prune(PruneConfig(sparsity=0.5, owl=True, calib_samples=2)))


def test_calibration_windows_capped_at_model_context(tiny_llama: Path) -> None:
    model, tokenizer = load(tiny_llama)
    calib = calibration_samples(TEXT, tokenizer, model, 3, 10_000, seed=0)
    assert calib.seqlen == 64 and calib.input_ids.shape == (3, 64)


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(sparsity=1.0), "must be in [0, 1)"),
        (dict(sparsity=-0.1), "must be in [0, 1)"),
        (dict(sparsity=0.5, method="magnitud"), "did you mean 'magnitude'"),
        (dict(sparsity=0.5, scope="globl"), "did you mean 'global'"),
        (dict(sparsity=0.5, method="sparsegpt", scope="global"), "supports scopes"),
        (dict(pattern="4:2"), "0 < N < M"),
        (dict(pattern="2-4"), "is not 'unstructured' or N:M"),
        (dict(pattern="2:4", sparsity=0.6), "contradicts"),
        (dict(sparsity=0.5, method="random", owl=True), "--owl applies to magnitude, sparsegpt, wanda"),
        (dict(sparsity=0.5, owl=True, owl_metric="wand"), "did you mean 'wanda'"),
        (dict(), "--sparsity is required"),
        (dict(sparsity=0.5, method="wanda", calib="/nonexistent.txt"), "does not exist"),
    ],
)
def test_bad_configs_raise_clear_errors(config: dict, message: str) -> None:
    with pytest.raises(JdnaError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        plan_prune(PruneConfig(**config))


@pytest.mark.parametrize("method_name", ["magnitude", "large-magnitude", "random", "wanda"])
def test_sampled_scores_equal_full_scores_at_the_sampled_positions(method_name: str, tiny_llama: Path) -> None:
    from jdna.pruning.base import METHODS, ScoreContext

    model, _ = load(tiny_llama)
    method = METHODS.get(method_name)
    matrices = prunable_matrices(model)
    generator = torch.Generator().manual_seed(0)
    norms = {m.name: torch.rand(m.param.shape[1], generator=generator) + 0.5 for m in matrices}
    context = ScoreContext(seed=3, input_norms=norms)
    for matrix in matrices:
        full = method.score(matrix, context).reshape(-1)
        for start, stride in [(0, 1), (2, 7), (5, 13)]:
            sampled = method.sample_scores(matrix, context, start, stride)
            assert torch.equal(sampled, full[start::stride])


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_select_only_leaves_weights_and_gives_the_same_masks_and_statistics(method: str, tiny_llama: Path) -> None:
    """The prune step selects without zeroing (in_place=False); its masks and counted zeros must equal those of
    pruning in place, counted another way (on the zeroed weights, with unpacked masks). Planted +0.0 and -0.0
    weights that random pruning keeps must count as zeros."""
    from jdna.pruning.engine import mask_statistics

    plan = plan_prune(PruneConfig(method=method, sparsity=0.5))
    model, tokenizer = load(tiny_llama)
    matrices = prunable_matrices(model)
    largest = max(matrices, key=lambda m: m.numel)
    with torch.no_grad():
        flat = largest.param.view(-1)
        flat[:20:2] = 0.0
        flat[1:20:2] = -0.0
    before = {m.name: m.param.detach().clone() for m in matrices}
    selected = prune_model(model, tokenizer, plan, in_place=False)
    assert all(torch.equal(m.param, before[m.name]) for m in matrices)
    statistics = mask_statistics(model, matrices, selected.masks, plan)

    reference_model, _ = load(tiny_llama)
    reference_matrices = prunable_matrices(reference_model)
    reference_largest = next(m for m in reference_matrices if m.name == largest.name)
    with torch.no_grad():
        reference_largest.param.copy_(before[largest.name])
    pruned = prune_model(reference_model, tokenizer, plan)
    total = sum(m.numel for m in reference_matrices)
    zeros = sum(int((m.param == 0).sum()) for m in reference_matrices)
    removed = sum(int((~pruned.masks[m.name]).sum()) for m in reference_matrices)
    for m in reference_matrices:
        assert torch.equal(selected.masks[m.name], pruned.masks[m.name])
        assert selected.masks.kept(m.name) == int(pruned.masks[m.name].sum())
    assert statistics["pruned_params"] == removed
    assert statistics["zero_fraction"] == zeros / total
    kept_planted = int(pruned.masks[largest.name].reshape(-1)[:20].sum())
    assert zeros == removed + kept_planted
    assert kept_planted > 0 if method == "random" else kept_planted == 0  # magnitude prunes zeros first
