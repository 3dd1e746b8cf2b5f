"""Pruning a loaded model in place: validation, the method's hooks driven (through the calibration pipeline
of :mod:`jdna.layerwise` for calibrated methods), OWL's pre-pass, and statistics."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from jdna import layerwise
from jdna.artifact import PackedMasks
from jdna.bitmask import is_kept, zero_positions
from jdna.calibration import LayerwiseRunner, calibration_identity, check_calibration_spec, read_calibration_text
from jdna.errors import JdnaError, check_seed, unknown_name_error
from jdna.layerwise import Calibration, check_calibratable, observe, prepare_calibration
from jdna.progress import Reporter
from jdna.prunable import PrunableMatrix, prunable_matrices
from jdna.pruning.base import METHODS, SCOPES, Pruned, PruningMethod, ScoreContext, ScoreMethod, method_names
from jdna.pruning.owl import OWL_METRIC_STATISTIC, OWL_METRICS, outlier_ratio, owl_metric, owl_sparsities
from jdna.pruning.selection import Selection

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

    method: PruningMethod
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
        return self.config.owl and OWL_METRIC_STATISTIC[self.config.owl_metric] is not None

    @property
    def dense_statistics(self) -> list[str]:
        """Statistics measured on the dense model before pruning: OWL's, and a calibrated method's at global
        scope (one threshold over every block cannot wait for the blocks to be pruned one by one)."""
        wanted = []
        if self.config.owl:
            wanted.append(OWL_METRIC_STATISTIC[self.config.owl_metric])
        if self.scope == "global":
            wanted.append(self.method.statistic)
        return list(dict.fromkeys(name for name in wanted if name is not None))

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
        if self.method.seeded or self.needs_calibration:
            params["seed"] = c.seed
        if self.needs_calibration:
            params.update(calib_samples=c.calib_samples, calib_seqlen=c.calib_seqlen)
            params["calib"] = calibration_identity(c.calib)
        if self.method.reconstructs:
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
        owl_methods = ", ".join(method_names(lambda m: m.supports_owl))
        raise JdnaError(f"--owl applies to {owl_methods}, not '{method.name}'")
    if config.owl_metric not in OWL_METRICS:
        raise unknown_name_error("OWL metric", config.owl_metric, OWL_METRICS)
    if config.owl and not 0 <= config.owl_lambda < 1:  # also NaN: before any calibration text is looked for
        raise JdnaError(f"--owl-lambda must be in [0, 1), got {config.owl_lambda}")
    if method.needs_calibration or (config.owl and OWL_METRIC_STATISTIC[config.owl_metric] is not None):
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


def _owl_block_sparsity(
    matrices: list[PrunableMatrix], score: Callable[[PrunableMatrix], torch.Tensor], plan: PrunePlan
) -> dict[int, float]:
    blocks = sorted({m.block for m in matrices if m.block is not None})
    ratios = [
        outlier_ratio([lambda m=m: score(m) for m in matrices if m.block == block], plan.config.owl_m)
        for block in blocks
    ]
    return dict(zip(blocks, owl_sparsities(ratios, plan.sparsity, plan.config.owl_lambda)))


@dataclass
class _BlockPruner:
    """A pruning method as the calibration pipeline drives it (jdna.layerwise.BlockCompressor)."""

    method: PruningMethod
    context: ScoreContext
    selection: Selection
    masks: PackedMasks = field(default_factory=PackedMasks)
    updated: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def statistic(self) -> str | None:
        return self.method.statistic

    @property
    def recompute_outputs(self) -> bool:
        return self.method.recompute_outputs

    def compress_block(
        self, index: int, matrices: list[PrunableMatrix], statistics: Mapping[str, torch.Tensor]
    ) -> None:
        self.context.statistics = statistics
        pruned = self.method.compress(matrices, self.context, self.selection)
        self.context.statistics = {}  # a block's Hessians must not outlive it
        for matrix in matrices:
            self.masks.set_packed(matrix.name, pruned.masks.packed(matrix.name), tuple(matrix.param.shape))
        self.updated.update(pruned.updated)


def prune_model(
    model: nn.Module,
    tokenizer: Any,
    plan: PrunePlan,
    reporter: Reporter | None = None,
    device: torch.device | str | None = None,
    in_place: bool = True,
) -> PruneOutcome:
    """Prune `model` in place according to `plan`; returns the masks (and any rewritten weights).

    `in_place=False` lets a score method at global scope, or without calibration, only select: the weights are
    left as they were (the masks say what to zero). The prune step uses it, since it stores masks and drops the
    model; writing half of a memory-mapped 1B checkpoint cost more than choosing what to write.

    A calibrated method (one that declares a ``statistic``) compresses block by block through the calibration
    pipeline of :mod:`jdna.layerwise`, so later blocks see the outputs of the pruned earlier ones (as the
    reference Wanda and SparseGPT do); at global scope its statistic is measured on the dense model first, since
    one threshold spans every block. OWL's outlier ratios are a pre-pass on the dense model.

    `device`: where calibrated methods run each block (the model itself may stay on the CPU; see
    LayerwiseRunner); None runs them where the model is.
    """
    reporter = reporter or Reporter()
    config = plan.config
    method = plan.method
    matrices = prunable_matrices(model, config.include, config.exclude)
    context = ScoreContext(seed=config.seed, block_size=config.block_size, damp=config.damp)
    calibration: Calibration | None = None
    dense: dict[str, Mapping[str, torch.Tensor]] = {}

    def new_runner() -> LayerwiseRunner:
        assert calibration is not None
        return LayerwiseRunner(model, calibration.input_ids, device=device)

    if plan.needs_calibration:
        calibration = _calibration(model, tokenizer, plan, matrices, reporter)
        if plan.dense_statistics:
            dense = observe(new_runner(), matrices, plan.dense_statistics, reporter)
    block_sparsity = None
    if config.owl:
        owl_statistic = OWL_METRIC_STATISTIC[config.owl_metric]
        metric = owl_metric(config.owl_metric, dense[owl_statistic] if owl_statistic else {})
        block_sparsity = _owl_block_sparsity(matrices, metric, plan)
    selection = Selection(plan.sparsity, plan.scope, plan.n_m, block_sparsity)
    record = None if calibration is None else calibration.record

    if not method.needs_calibration or plan.scope == "global":
        if method.statistic is not None:
            context.statistics = dense[method.statistic]
        if not in_place and isinstance(method, ScoreMethod):
            pruned = Pruned(method.select(matrices, context, selection))
        else:
            pruned = method.compress(matrices, context, selection)
        return PruneOutcome(pruned.masks, pruned.updated, block_sparsity=block_sparsity, calibration=record)

    pruner = _BlockPruner(method, context, selection)
    layerwise.compress(new_runner(), matrices, pruner, reporter, "pruning blocks")
    return PruneOutcome(pruner.masks, pruner.updated, block_sparsity=block_sparsity, calibration=record)


def _calibration(
    model: nn.Module, tokenizer: Any, plan: PrunePlan, matrices: list[PrunableMatrix], reporter: Reporter
) -> Calibration:
    """The calibration windows of a plan that needs activations (the method's, or OWL's reference metric)."""
    config = plan.config
    method = plan.method
    uncalibrated = ", ".join(method_names(lambda m: not m.needs_calibration))
    if method.needs_calibration:
        check_calibratable(matrices, f"{method.name} needs", f"use a method without calibration ({uncalibrated})")
    else:
        check_calibratable(matrices, "OWL's outlier ratios (|W|·‖X‖) need", "use --owl-metric weight")
    try:
        text = read_calibration_text(config.calib)
    except JdnaError as error:
        if method.needs_calibration:
            raise
        raise JdnaError(
            f"--owl computes outlier ratios from |W|·‖X‖ as the reference OWL does, which needs calibration text "
            f"({error}); or pass --owl-metric weight for ratios from |W| alone"
        ) from None
    return prepare_calibration(
        model, tokenizer, text, config.calib, config.calib_samples, config.calib_seqlen, config.seed, reporter
    )


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
        # Counted on the packed bits and the weights' zero positions, never an unpacked mask: a 1B-parameter
        # prune spent longer unpacking and counting than selecting. Zeros are the pruned weights plus kept
        # weights that are exactly zero, whether or not the pruned ones were zeroed in the model.
        packed = masks.packed(matrix.name)
        count = matrix.numel - masks.kept(matrix.name)
        zero_count = count + int(np.count_nonzero(is_kept(packed, zero_positions(matrix.param))))
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
