"""Pruning: methods (one file each, registered in METHODS), exact selection, and the prune step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.models import ModelRef
from jdna.placement import Placement, dtype_name, resolve_placement
from jdna.progress import Reporter
from jdna.prunable import prunable_matrices
from jdna.pruning import large_magnitude, magnitude, random_pruning, sparsegpt, wanda  # noqa: F401  (registration)
from jdna.pruning.base import METHODS
from jdna.pruning.engine import PruneConfig, PrunePlan, mask_statistics, plan_prune, prune_model
from jdna.steps import Produced, Step, run_step

__all__ = [
    "METHODS",
    "PruneConfig",
    "PrunePlan",
    "PruneStep",
    "plan_prune",
    "prune_model",
    "run_prune",
]


class PruneStep(Step):
    """``jdna prune`` as a step: masks (and SparseGPT's rewritten matrices) over the parent's weights.

    `placement` (default in :func:`run_prune`: the CPU, in the checkpoint's dtype) says where and in what
    precision; calibrated methods keep the model on the CPU and move one block at a time to its device (unless
    it has a device map, which places the model itself).
    """

    kind = "pruned"
    operation = "prune"

    def __init__(self, config: PruneConfig, placement: Placement) -> None:
        super().__init__(placement)
        self.config = config
        self.plan = plan_prune(config)

    @property
    def calibrated(self) -> bool:
        return self.plan.method.needs_calibration

    def params(self) -> dict[str, Any]:
        params = self.plan.params()
        compute = self.placement.id_params(device_matters=self.calibrated)
        if compute:
            params["compute"] = compute
        return params

    @property
    def load_device(self) -> torch.device | None:
        return None if self.calibrated else self.placement.device

    def load(self, ref: ModelRef, reporter: Reporter) -> tuple[nn.Module, Any]:
        reporter.log(f"loading {ref.display_name} ({_where(self.placement, self.calibrated)})")
        return super().load(ref, reporter)

    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        plan, config, placement = self.plan, self.config, self.placement
        params = self.params()
        reporter.log(f"pruning with {plan.method.name}, sparsity {plan.sparsity:g}, scope {params['scope']}")
        device = placement.device if self.calibrated else None
        outcome = prune_model(model, tokenizer, plan, reporter, device=device, in_place=False)
        matrices = prunable_matrices(model, config.include, config.exclude)
        stats = mask_statistics(model, matrices, outcome.masks, plan)
        if outcome.block_sparsity is not None:
            stats["block_sparsity"] = {str(k): v for k, v in outcome.block_sparsity.items()}
        if outcome.calibration is not None:
            stats["calibration"] = outcome.calibration
        operation_params = dict(params)
        if config.calib and plan.needs_calibration:
            # Where the text was read is recorded, but only its content (params["calib"]) is in the id.
            operation_params["calib_path"] = str(config.calib)
        tensors = {f"mask.{name}": outcome.masks.packed(name) for name in outcome.masks}
        # Rewritten weights are stored in the checkpoint's own dtype, whatever precision computed them.
        tensors.update({f"weight.{name}": w.to(placement.stored_dtype) for name, w in outcome.updated.items()})
        masks = {name: list(outcome.masks.shape(name)) for name in outcome.masks}
        return Produced(tensors=tensors, stats=stats, fields={"masks": masks}, operation_params=operation_params)


def run_prune(
    ref: ModelRef,
    config: PruneConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Prune the model `ref` names and write a pruned artifact; returns its record (see :class:`PruneStep`)."""
    placement = placement or resolve_placement("cpu", "auto", ref.base.config)
    return run_step(PruneStep(config, placement), ref, output, reporter, force)


def _where(placement: Placement, calibrated: bool) -> str:
    """How the model is placed, for the log line."""
    dtype = dtype_name(placement.dtype)
    if placement.device_map:
        return f"device map {placement.device_map}, {dtype}"
    if calibrated and placement.device.type != "cpu":
        return f"on the CPU, one block at a time on {placement.device}, {dtype}"
    return f"{placement.device}, {dtype}"
