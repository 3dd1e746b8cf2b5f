"""``jdna quantize`` as a step (:mod:`jdna.steps`): packed integer codes of the prunable matrices.

The compression itself (:func:`jdna.quantization.run.quantize_model`, RTN or GPTQ) starts from the masks the
model still obeys (:func:`jdna.masks.effective_masks`), so a pruned parent's zeros stay exactly zero; this
module loads, runs it, measures it and lays the result out as a ``quantized`` artifact (docs/artifacts.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.bitmask import pack_mask
from jdna.masks import effective_masks
from jdna.models import ModelRef
from jdna.placement import Placement, resolve_placement
from jdna.progress import Reporter
from jdna.quantization.run import (
    QuantizeConfig,
    check_matrices,
    plan_quantize,
    quantize_model,
    quantize_statistics,
)
from jdna.steps import Produced, Step, run_step

__all__ = ["QuantizeStep", "run_quantize"]


class QuantizeStep(Step):
    """Quantize the prunable matrices; GPTQ keeps the model on the CPU and calibrates one block at a time on
    the placement's device."""

    kind = "quantized"
    operation = "quantize"

    def __init__(self, config: QuantizeConfig, placement: Placement) -> None:
        super().__init__(placement)
        self.config = config
        self.plan = plan_quantize(config)

    def params(self) -> dict[str, Any]:
        params = self.plan.params()
        compute = self.placement.id_params(device_matters=self.plan.needs_calibration)
        if compute:
            params["compute"] = compute
        return params

    @property
    def load_device(self) -> torch.device | None:
        return None if self.plan.needs_calibration else self.placement.device

    def load(self, ref: ModelRef, reporter: Reporter) -> tuple[nn.Module, Any]:
        model, tokenizer = super().load(ref, reporter)
        # Checked before the first log line, so bad input still fails with exactly one line on stderr.
        check_matrices(model, self.plan)
        return model, tokenizer

    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        plan, config = self.plan, self.config
        spec = plan.spec
        group = f", group {spec.group_size}" if spec.granularity == "group" else ""
        reporter.log(
            f"loaded {ref.display_name}; quantizing with {plan.method}: {spec.bits} bits, {spec.granularity}"
            f"{group}, {'symmetric' if spec.symmetric else 'asymmetric'}"
        )
        device = self.placement.device if plan.needs_calibration else None
        outcome = quantize_model(model, tokenizer, plan, reporter, effective_masks(ref.chain), device=device)
        stats = quantize_statistics(model, outcome, plan)
        if outcome.calibration is not None:
            stats["calibration"] = outcome.calibration
        if outcome.dropped_masks:
            stats["dropped_masks"] = outcome.dropped_masks
        operation_params = self.params()
        if plan.needs_calibration and config.calib not in (None, "c4"):
            operation_params["calib_path"] = str(config.calib)
        tensors: dict[str, torch.Tensor] = {}
        masks: dict[str, list[int]] = {}
        for name, item in outcome.stored.items():
            tensors[f"codes.{name}"] = item.codes
            tensors[f"scales.{name}"] = item.scales
            if item.zeros is not None:
                tensors[f"zeros.{name}"] = item.zeros
            if item.mask is not None:
                tensors[f"mask.{name}"] = pack_mask(item.mask)
                masks[name] = list(item.mask.shape)
        fields = {"quant": {name: item.entry for name, item in outcome.stored.items()}, "masks": masks}
        return Produced(tensors=tensors, stats=stats, fields=fields, operation_params=operation_params)


def run_quantize(
    ref: ModelRef,
    config: QuantizeConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Quantize the model `ref` names and write a quantized artifact; returns its record.

    `placement` as in `jdna.pruning.run_prune` (default: the CPU, in the checkpoint's dtype).
    """
    placement = placement or resolve_placement("cpu", "auto", ref.base.config)
    return run_step(QuantizeStep(config, placement), ref, output, reporter, force)
