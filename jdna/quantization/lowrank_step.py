"""``jdna lowrank`` as a step (:mod:`jdna.steps`): truncated-SVD factors of the prunable matrices.

The factorization itself is :func:`jdna.quantization.run.lowrank_model`; this module loads, runs it, measures
it and lays the result out as a ``lowrank`` artifact (docs/artifacts.md). The factors are dense, so a parent's
pruning mask does not hold on the factorized matrices afterwards (:mod:`jdna.masks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.masks import effective_masks
from jdna.models import ModelRef
from jdna.placement import Placement, resolve_placement
from jdna.progress import Reporter
from jdna.prunable import prunable_matrices
from jdna.quantization.run import LowRankConfig, lowrank_model, lowrank_statistics, plan_lowrank
from jdna.steps import Produced, Step, run_step

__all__ = ["LowRankStep", "run_lowrank"]


class LowRankStep(Step):
    """Factorize each prunable matrix. The SVD runs in float32 on the CPU whatever the placement, so only the
    placement's dtype (the weights factorized) enters the content address."""

    kind = "lowrank"
    operation = "lowrank"

    def __init__(self, config: LowRankConfig, placement: Placement) -> None:
        super().__init__(placement)
        self.config = plan_lowrank(config)

    def params(self) -> dict[str, Any]:
        params = self.config.params()
        compute = self.placement.id_params(device_matters=False)
        if compute:
            params["compute"] = compute
        return params

    def load(self, ref: ModelRef, reporter: Reporter) -> tuple[nn.Module, Any]:
        model, tokenizer = super().load(ref, reporter)
        prunable_matrices(model, self.config.include, self.config.exclude)  # bad globs fail before any log line
        return model, tokenizer

    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        config = self.config
        if config.rank_ratio is not None:
            how = f"rank ratio {config.rank_ratio:g}"
        elif config.bits_per_weight is not None:
            how = f"rank per matrix for {config.bits_per_weight:g} bits per weight (float16 factors)"
        else:
            how = f"energy {config.energy:g}"
        reporter.log(f"loaded {ref.display_name}; truncated SVD per matrix, {how}")
        if effective_masks(ref.chain):
            reporter.log("the factors are dense: a parent's pruning mask is not kept")
        stored, errors = lowrank_model(model, config, reporter)
        stats = lowrank_statistics(model, stored, errors)
        if config.bits_per_weight is not None:
            stats["target_bits_per_weight"] = config.bits_per_weight
        tensors: dict[str, torch.Tensor] = {}
        for name, item in stored.items():
            tensors[f"left.{name}"] = item.left
            tensors[f"right.{name}"] = item.right
        fields = {"lowrank": {name: item.entry for name, item in stored.items()}}
        return Produced(tensors=tensors, stats=stats, fields=fields)


def run_lowrank(
    ref: ModelRef,
    config: LowRankConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Factorize the model `ref` names and write a lowrank artifact; returns its record (see :class:`LowRankStep`)."""
    placement = placement or resolve_placement("cpu", "auto", ref.base.config)
    return run_step(LowRankStep(config, placement), ref, output, reporter, force)
