"""Pruning a loaded model in place: validation, calibration passes, mask selection and statistics."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from jdna.artifact import PackedMasks
from jdna.calibration import (
    HessianAccumulator,
    InputNormAccumulator,
    LayerwiseRunner,
    calibration_identity,
    calibration_samples,
    check_calibration_spec,
    collect_inputs,
    read_calibration_text,
)
from jdna.errors import JdnaError, check_seed, unknown_name_error
from jdna.progress import Reporter
from jdna.prunable import PrunableMatrix, prunable_matrices
from jdna.pruning.base import METHODS, SCOPES, ReconstructionMethod, ScoreContext, ScoreMethod
from jdna.pruning.owl import OWL_METRICS, outlier_ratio, owl_sparsities
from jdna.pruning.selection import prune_count, select_group_packed, select_n_m, select_rows
from jdna.pruning.sparsegpt import sparsegpt_prune_matrix
from jdna.pruning.wanda import wanda_scores

VALUE_BITS = 16  # the reference precision of the compression axis: a dense model counts 16 bits a weight


@dataclass
class PruneConfig:
    method: str = "magnitude"
    sparsity: float | None = None
    scope: str | None = None
    pattern: str = "unstructured"
    owl: bool = False
    owl_lambda: float = 0.08
    owl_m: float = 5.0
    owl_metric: str = "wanda"  # what OWL's outlier ratios are computed from: |W|·‖X‖ (reference) or |W|
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    calib: str | None = None
    calib_samples: int = 128
    calib_seqlen: int = 512
    block_size: int = 128
    damp: float = 0.01
    bits_per_weight: float | None = None  # instead of sparsity: the sparsity whose storage costs this many bits


@dataclass
class PrunePlan:
    """A validated configuration with defaults resolved."""

    method: ScoreMethod | ReconstructionMethod
    sparsity: float
    scope: str
    n_m: tuple[int, int] | None
    config: PruneConfig

    @property
    def needs_calibration(self) -> bool:
        """Calibrated methods, and OWL's reference outlier ratios (|W|·‖X‖ needs activations for any method)."""
        return self.method.needs_calibration or self.owl_needs_activations

    @property
    def owl_needs_activations(self) -> bool:
        return self.config.owl and self.config.owl_metric == "wanda"

    def params(self) -> dict[str, Any]:
        """The parameters that define the result (what the content address is computed from)."""
        c = self.config
        params: dict[str, Any] = {
            "method": self.method.name,
            "sparsity": self.sparsity,
            "scope": "n:m" if self.n_m else self.scope,
            "pattern": f"{self.n_m[0]}:{self.n_m[1]}" if self.n_m else "unstructured",
            "include": list(c.include),
            "exclude": list(c.exclude),
        }
        if c.owl:
            params.update(owl=True, owl_lambda=c.owl_lambda, owl_m=c.owl_m, owl_metric=c.owl_metric)
        if self.method.name == "random" or self.needs_calibration:
            params["seed"] = c.seed
        if self.needs_calibration:
            params.update(calib_samples=c.calib_samples, calib_seqlen=c.calib_seqlen)
            params["calib"] = calibration_identity(c.calib)
        if isinstance(self.method, ReconstructionMethod):
            params.update(block_size=c.block_size, damp=c.damp)
        return params


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    if pattern in ("unstructured", "", None):
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if not match:
        raise JdnaError(f"pattern '{pattern}' is not 'unstructured' or N:M (e.g. 2:4, 4:8)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise JdnaError(f"pattern {n}:{m} needs 0 < N < M (N weights kept of every M), e.g. 2:4")
    return n, m


def plan_prune(config: PruneConfig) -> PrunePlan:
    """Validate a configuration and fill in method-dependent defaults; raises JdnaError on bad input."""
    check_seed(config.seed)
    method = METHODS.get(config.method)
    n_m = parse_pattern(config.pattern)
    if n_m is not None:
        implied = 1 - n_m[0] / n_m[1]
        if config.sparsity is not None and not math.isclose(config.sparsity, implied, abs_tol=1e-9):
            raise JdnaError(
                f"--sparsity {config.sparsity} contradicts pattern {n_m[0]}:{n_m[1]} (sparsity {implied:g}): drop one"
            )
        sparsity = implied
        if config.owl:
            raise JdnaError(
                "--owl sets a sparsity per layer, which an N:M pattern fixes: use one or the other"
            )
        if config.bits_per_weight is not None:
            raise JdnaError("--bits-per-weight chooses an unstructured sparsity, which an N:M pattern fixes: drop one")
    elif config.bits_per_weight is not None:
        if config.sparsity is not None:
            raise JdnaError("give --sparsity or --bits-per-weight, not both (the bits fix the sparsity)")
        sparsity = sparsity_for_bits_per_weight(config.bits_per_weight)
    else:
        if config.sparsity is None:
            raise JdnaError(
                "--sparsity is required (a fraction in [0, 1), e.g. 0.5) unless --pattern N:M or --bits-per-weight "
                "is given"
            )
        sparsity = float(config.sparsity)
        if not (0 <= sparsity < 1) or math.isnan(sparsity):
            raise JdnaError(f"--sparsity must be in [0, 1), got {config.sparsity}")
    scope = config.scope or method.default_scope
    if scope not in SCOPES:
        raise unknown_name_error("scope", scope, SCOPES)
    if scope not in method.scopes:
        raise JdnaError(f"method '{method.name}' supports scopes {', '.join(method.scopes)}, not '{scope}'")
    if config.owl and not method.supports_owl:
        owl_methods = ", ".join(name for name in METHODS.names() if METHODS.get(name).supports_owl)
        raise JdnaError(f"--owl applies to {owl_methods}, not '{method.name}'")
    if config.owl_metric not in OWL_METRICS:
        raise unknown_name_error("OWL metric", config.owl_metric, OWL_METRICS)
    if config.owl and not 0 <= config.owl_lambda < 1:  # also NaN: before any calibration text is looked for
        raise JdnaError(f"--owl-lambda must be in [0, 1), got {config.owl_lambda}")
    if method.needs_calibration or (config.owl and config.owl_metric == "wanda"):
        if config.calib_samples < 1:
            raise JdnaError("--calib-samples must be at least 1")
        if config.calib_seqlen < 2:
            raise JdnaError("--calib-seqlen must be at least 2")
        check_calibration_spec(config.calib)
    if config.block_size < 1:
        raise JdnaError("--block-size must be at least 1")
    if config.damp < 0:
        raise JdnaError("--damp must be non-negative")
    return PrunePlan(method=method, sparsity=sparsity, scope=scope, n_m=n_m, config=config)


@dataclass
class PruneOutcome:
    masks: PackedMasks  # canonical name → keep mask (bool on access, stored at one bit per weight)
    updated: dict[str, torch.Tensor] = field(default_factory=dict)  # new weights (SparseGPT)
    block_sparsity: dict[int, float] | None = None
    calibration: dict[str, Any] | None = None


def _apply(matrix: PrunableMatrix, keep: torch.Tensor) -> None:
    matrix.param.data.masked_fill_(~keep.to(matrix.param.device), 0)


@dataclass
class _Scorer:
    """A method's scores for one matrix at a time (all of them, or a strided sample)."""

    method: ScoreMethod
    context: ScoreContext

    def __call__(self, matrix: PrunableMatrix) -> torch.Tensor:
        return self.method.score(matrix, self.context).cpu()

    def sample(self, matrix: PrunableMatrix, start: int, stride: int) -> torch.Tensor:
        return self.method.sample_scores(matrix, self.context, start, stride).cpu()


def _select(
    matrices: list[PrunableMatrix],
    score: _Scorer,
    plan: PrunePlan,
    block_sparsity: dict[int, float] | None,
) -> PackedMasks:
    def target(matrix: PrunableMatrix) -> float:
        if block_sparsity is not None and matrix.block is not None:
            return block_sparsity[matrix.block]
        return plan.sparsity

    masks = PackedMasks()
    if plan.n_m is not None:
        for matrix in matrices:
            masks[matrix.name] = select_n_m(score(matrix), *plan.n_m)
    elif plan.scope == "row":
        for matrix in matrices:
            masks[matrix.name] = select_rows(score(matrix), target(matrix))
    elif plan.scope == "layer":
        for matrix in matrices:
            k = prune_count(target(matrix), matrix.numel)
            packed = select_group_packed(
                [matrix.numel], lambda _i, m=matrix: score(m), k, lambda _i, a, b, m=matrix: score.sample(m, a, b)
            )[0]
            masks.set_packed(matrix.name, packed, tuple(matrix.param.shape))
    else:
        groups: dict[Any, list[PrunableMatrix]] = {}
        for matrix in matrices:
            key = matrix.block if block_sparsity is not None else "all"
            groups.setdefault(key, []).append(matrix)
        for group in groups.values():
            sizes = [m.numel for m in group]
            k = prune_count(target(group[0]), sum(sizes))
            packed_masks = select_group_packed(
                sizes, lambda i, g=group: score(g[i]), k, lambda i, a, b, g=group: score.sample(g[i], a, b)
            )
            for matrix, packed in zip(group, packed_masks):
                masks.set_packed(matrix.name, packed, tuple(matrix.param.shape))
    return masks


def _owl_block_sparsity(
    matrices: list[PrunableMatrix], score: Callable[[PrunableMatrix], torch.Tensor], plan: PrunePlan
) -> dict[int, float]:
    blocks = sorted({m.block for m in matrices if m.block is not None})
    ratios = [
        outlier_ratio([lambda m=m: score(m) for m in matrices if m.block == block], plan.config.owl_m)
        for block in blocks
    ]
    return dict(zip(blocks, owl_sparsities(ratios, plan.sparsity, plan.config.owl_lambda)))


def _owl_metric(plan: PrunePlan, input_norms: dict[str, torch.Tensor]) -> Callable[[PrunableMatrix], torch.Tensor]:
    """What OWL counts outliers of: the Wanda metric |W|·‖X‖ on the dense model (the reference OWL code does so
    whatever the pruning score), or |W| alone under ``--owl-metric weight``."""
    if plan.config.owl_metric == "weight":
        return lambda matrix: matrix.param.detach().abs().to(torch.float32).cpu()
    return lambda matrix: wanda_scores(matrix.param.detach().cpu(), input_norms[matrix.name])


def _dense_input_norms(
    runner: LayerwiseRunner, matrices: list[PrunableMatrix], reporter: Reporter
) -> dict[str, torch.Tensor]:
    accumulator = InputNormAccumulator()
    for index, block in runner.iter_blocks():
        remove = collect_inputs({m.name: m.module for m in matrices if m.block == index}, accumulator)
        outputs = runner.run(block, keep_outputs=True)
        remove()
        runner.advance(outputs)
        reporter.progress("activation statistics", index + 1, len(runner.blocks))
    return accumulator.norms()


def prune_model(
    model: nn.Module,
    tokenizer: Any,
    plan: PrunePlan,
    reporter: Reporter | None = None,
    device: torch.device | str | None = None,
) -> PruneOutcome:
    """Prune `model` in place according to `plan`; returns the masks (and any rewritten weights).

    `device`: where calibrated methods run each block (the model itself may stay on the CPU; see
    LayerwiseRunner); None runs them where the model is.
    """
    reporter = reporter or Reporter()
    config = plan.config
    method = plan.method
    matrices = prunable_matrices(model, config.include, config.exclude)
    context = ScoreContext(seed=config.seed)

    score = _Scorer(method, context)

    if not plan.needs_calibration:
        block_sparsity = _owl_block_sparsity(matrices, _owl_metric(plan, {}), plan) if config.owl else None
        masks = _select(matrices, score, plan, block_sparsity)
        for matrix in matrices:
            _apply(matrix, masks[matrix.name])
        return PruneOutcome(masks=masks, block_sparsity=block_sparsity)

    for matrix in matrices:
        if not matrix.is_linear or matrix.block is None:
            why = f"{method.name} needs" if method.needs_calibration else "OWL's outlier ratios (|W|·‖X‖) need"
            alternative = "use magnitude" if method.needs_calibration else "use --owl-metric weight"
            raise JdnaError(
                f"{why} input activations, but '{matrix.name}' is not a linear layer inside a "
                f"transformer block: --exclude it or {alternative}"
            )
    try:
        text = read_calibration_text(config.calib)
    except JdnaError as error:
        if method.needs_calibration:
            raise
        raise JdnaError(
            f"--owl computes outlier ratios from |W|·‖X‖ as the reference OWL does, which needs calibration text "
            f"({error}); or pass --owl-metric weight for ratios from |W| alone"
        ) from None
    calib = calibration_samples(
        text, tokenizer, model, config.calib_samples, config.calib_seqlen, config.seed
    )
    if calib.seqlen < config.calib_seqlen:
        reporter.log(
            f"calibration windows are {calib.seqlen} tokens (asked {config.calib_seqlen}; capped by the "
            "model context or the calibration text)"
        )
    calibration = {
        "samples": int(calib.input_ids.shape[0]),
        "seqlen": calib.seqlen,
        "text_tokens": calib.total_tokens,
        "text": calibration_identity(config.calib),
    }

    def new_runner() -> LayerwiseRunner:
        return LayerwiseRunner(model, calib.input_ids, device=device)

    block_sparsity = None
    dense_norms: dict[str, torch.Tensor] = {}
    needs_dense_norms = plan.owl_needs_activations or (
        plan.scope == "global" and not isinstance(method, ReconstructionMethod)
    )
    if needs_dense_norms:
        dense_norms = _dense_input_norms(new_runner(), matrices, reporter)
    if config.owl:
        block_sparsity = _owl_block_sparsity(matrices, _owl_metric(plan, dense_norms), plan)

    if isinstance(method, ReconstructionMethod):
        masks, updated = _sparsegpt_pass(new_runner(), matrices, plan, reporter, block_sparsity)
        return PruneOutcome(masks=masks, updated=updated, block_sparsity=block_sparsity, calibration=calibration)

    if not method.needs_calibration or plan.scope == "global":
        context.input_norms = dense_norms
        masks = _select(matrices, score, plan, block_sparsity)
        for matrix in matrices:
            _apply(matrix, masks[matrix.name])
        return PruneOutcome(masks=masks, block_sparsity=block_sparsity, calibration=calibration)

    # Row/layer scope: prune block by block so later blocks see the activations of the pruned earlier
    # ones (as Wanda's reference implementation does).
    runner = new_runner()
    masks = PackedMasks()
    for index, block in runner.iter_blocks():
        block_matrices = [m for m in matrices if m.block == index]
        accumulator = InputNormAccumulator()
        remove = collect_inputs({m.name: m.module for m in block_matrices}, accumulator)
        runner.run(block, keep_outputs=False)
        remove()
        context.input_norms = accumulator.norms()
        block_masks = _select(block_matrices, score, plan, block_sparsity)
        for matrix in block_matrices:
            _apply(matrix, block_masks[matrix.name])
        masks.update(block_masks)
        runner.advance(runner.run(block, keep_outputs=True))
        reporter.progress("pruning blocks", index + 1, len(runner.blocks))
    return PruneOutcome(masks=masks, block_sparsity=block_sparsity, calibration=calibration)


def _sparsegpt_pass(
    runner: LayerwiseRunner,
    matrices: list[PrunableMatrix],
    plan: PrunePlan,
    reporter: Reporter,
    block_sparsity: dict[int, float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    masks = PackedMasks()
    updated: dict[str, torch.Tensor] = {}
    for index, block in runner.iter_blocks():
        block_matrices = [m for m in matrices if m.block == index]
        hessians = HessianAccumulator()
        remove = collect_inputs({m.name: m.module for m in block_matrices}, hessians)
        runner.run(block, keep_outputs=False)
        remove()
        for matrix in block_matrices:
            weight, keep = sparsegpt_prune_matrix(
                matrix.param.data.to(torch.float32),
                hessians.hessian(matrix.name),
                plan.sparsity if block_sparsity is None else block_sparsity[index],
                scope=plan.scope,
                n_m=plan.n_m,
                block_size=plan.config.block_size,
                damp=plan.config.damp,
            )
            matrix.param.data.copy_(weight.to(matrix.param.dtype))
            masks[matrix.name] = keep
            updated[matrix.name] = matrix.param.data.detach().cpu().clone()
        hessians.clear()
        runner.advance(runner.run(block, keep_outputs=True))
        reporter.progress("pruning blocks", index + 1, len(runner.blocks))
    return masks, updated


def pruned_bits_per_weight(
    density: float, n_m: tuple[int, int] | None, value_bits: int = VALUE_BITS
) -> float:
    """Storage cost per weight of a pruned matrix: kept values plus the mask or N:M index overhead.

    Unstructured masks cost one bit per weight (a bitmap); N:M costs ceil(log2 C(M, N)) bits per group of M.
    """
    if n_m is None:
        return value_bits * density + 1.0
    n, m = n_m
    return value_bits * n / m + math.ceil(math.log2(math.comb(m, n))) / m


def sparsity_for_bits_per_weight(bits_per_weight: float, value_bits: int = VALUE_BITS) -> float:
    """The unstructured sparsity s whose storage, ``value_bits·(1 − s) + 1`` (kept values plus a bitmap mask),
    is `bits_per_weight`; JdnaError outside (1, value_bits + 1]."""
    if not (1 < bits_per_weight <= value_bits + 1) or math.isnan(bits_per_weight):
        raise JdnaError(
            f"--bits-per-weight must be in (1, {value_bits + 1}] for pruning (a 1-bit mask plus {value_bits}-bit "
            f"kept values), got {bits_per_weight}"
        )
    return 1 - (bits_per_weight - 1) / value_bits


def bits_accounting(n_m: tuple[int, int] | None, value_bits: int = VALUE_BITS) -> str:
    """How a pruned artifact's bits_per_weight is counted, in words (stated in its record)."""
    if n_m is None:
        return f"{value_bits}-bit kept values + 1-bit bitmap mask per weight"
    return f"{value_bits}-bit kept values + ceil(log2 C({n_m[1]},{n_m[0]})) index bits per group of {n_m[1]}"


def mask_statistics(
    model: nn.Module, matrices: list[PrunableMatrix], masks: dict[str, torch.Tensor], plan: PrunePlan
) -> dict[str, Any]:
    per_matrix = []
    total = pruned = zeros = 0
    for matrix in matrices:
        keep = masks[matrix.name]
        # numpy's bool count and torch.count_nonzero are ~100x and ~10x faster than torch's bool sums,
        # which dominated a 1B-parameter prune.
        count = matrix.numel - int(np.count_nonzero(keep.cpu().numpy()))
        zero_count = matrix.numel - int(torch.count_nonzero(matrix.param.detach()))
        per_matrix.append(
            {
                "name": matrix.name,
                "shape": list(matrix.param.shape),
                "numel": matrix.numel,
                "pruned": count,
                "sparsity": count / matrix.numel,
            }
        )
        total += matrix.numel
        pruned += count
        zeros += zero_count
    all_params = sum(p.numel() for p in model.parameters())
    sparsity = pruned / total
    bits = pruned_bits_per_weight(1 - sparsity, plan.n_m)
    return {
        "sparsity": sparsity,
        "target_sparsity": plan.sparsity,
        "prunable_params": total,
        "pruned_params": pruned,
        "zero_fraction": zeros / total,
        "model_params": all_params,
        "model_sparsity": pruned / all_params,
        "bits_per_weight": bits,
        "compression_ratio": VALUE_BITS / bits,
        "bits_accounting": bits_accounting(plan.n_m),
        "matrices": per_matrix,
    }


def config_dict(config: PruneConfig) -> dict[str, Any]:
    data = asdict(config)
    data["include"] = list(config.include)
    data["exclude"] = list(config.exclude)
    return data
