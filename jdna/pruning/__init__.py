"""Pruning: methods (one file each, registered in METHODS), exact selection, and the prune step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jdna.artifact import (
    Artifact,
    artifact_id,
    cached_artifact,
    claim_artifact_output,
    default_output_path,
    parent_reference,
    read_artifact,
    write_artifact,
)
from jdna.models import ModelRef, load_model
from jdna.outputs import model_inputs
from jdna.placement import Placement, dtype_name, resolve_placement
from jdna.progress import Reporter
from jdna.prunable import prunable_matrices
from jdna.pruning import large_magnitude, magnitude, random_pruning, sparsegpt, wanda  # noqa: F401  (registration)
from jdna.pruning.base import METHODS
from jdna.pruning.engine import PruneConfig, PrunePlan, mask_statistics, plan_prune, prune_model

__all__ = ["METHODS", "PruneConfig", "PrunePlan", "plan_prune", "prune_model", "run_prune", "artifact_record"]


def artifact_record(artifact: Artifact, cached: bool) -> dict[str, Any]:
    """The one-line JSON summary a command prints for an artifact it produced or found."""
    header = artifact.header
    stats = header.get("stats", {})
    params = header["operation"].get("params", {})
    record: dict[str, Any] = {
        "path": str(artifact.path),
        "kind": artifact.kind,
        "id": artifact.id,
        "cached": cached,
        "base": header["base"].get("name"),
        "operation": header["operation"].get("name"),
    }
    compute = header.get("compute")
    if isinstance(compute, dict):
        record["device"] = compute.get("device")
        record["dtype"] = compute.get("dtype")
    for key in ("method", "scope", "pattern", "bits", "granularity", "rank_ratio"):
        if key in params:
            record[key] = params[key]
    for key in (
        "target_sparsity",
        "sparsity",
        "target_bits_per_weight",
        "bits_per_weight",
        "compression_ratio",
        "bits_accounting",
        "prunable_params",
        "pruned_params",
        "model_sparsity",
        "seconds",
    ):
        if key in stats:
            record[key] = stats[key]
    return record


def run_prune(
    ref: ModelRef,
    config: PruneConfig,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Prune the model `ref` names and write a pruned artifact; returns its record.

    `placement` (default: the CPU, in the checkpoint's dtype) says where and in what precision; calibrated
    methods keep the model on the CPU and move one block at a time to its device (unless it has a device
    map, which places the model itself).
    """
    reporter = reporter or Reporter()
    plan = plan_prune(config)
    placement = placement or resolve_placement("cpu", "auto", ref.base.config)
    params = plan.params()
    compute = placement.id_params(device_matters=plan.method.needs_calibration)
    if compute:
        params["compute"] = compute
    identity = artifact_id(ref.identity, "prune", params)
    path = Path(output) if output else default_output_path("pruned", identity)
    existing = cached_artifact(path, identity, output is not None, force, reporter)
    if existing is not None:
        return artifact_record(existing, cached=True)
    claim = claim_artifact_output(path, identity, output is not None, force, model_inputs(ref))
    started = time.perf_counter()
    calibrated = plan.method.needs_calibration
    reporter.log(f"loading {ref.display_name} ({_where(placement, calibrated)})")
    model, tokenizer = load_model(
        ref,
        device=None if calibrated else placement.device,
        dtype=placement.dtype,
        device_map=placement.device_map,
    )
    reporter.log(f"pruning with {plan.method.name}, sparsity {plan.sparsity:g}, scope {params['scope']}")
    outcome = prune_model(model, tokenizer, plan, reporter, device=placement.device if calibrated else None)
    matrices = prunable_matrices(model, config.include, config.exclude)
    stats = mask_statistics(model, matrices, outcome.masks, plan)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    if outcome.block_sparsity is not None:
        stats["block_sparsity"] = {str(k): v for k, v in outcome.block_sparsity.items()}
    if outcome.calibration is not None:
        stats["calibration"] = outcome.calibration
    operation_params = dict(params)
    if config.calib and plan.needs_calibration:
        operation_params["calib_path"] = str(config.calib)
    tensors = {f"mask.{name}": outcome.masks.packed(name) for name in outcome.masks}
    # Rewritten weights are stored in the checkpoint's own dtype, whatever precision computed them.
    tensors.update({f"weight.{name}": w.to(placement.stored_dtype) for name, w in outcome.updated.items()})
    header = {
        "kind": "pruned",
        "id": identity,
        "base": ref.base.reference(),
        "parent": parent_reference(ref.top) if ref.top else None,
        "operation": {"name": "prune", "params": operation_params},
        "masks": {name: list(outcome.masks[name].shape) for name in outcome.masks},
        "stats": stats,
        "compute": placement.record(),
    }
    write_artifact(path, header, tensors, claim)
    return artifact_record(read_artifact(path), cached=False)


def _where(placement: Placement, calibrated: bool) -> str:
    """How the model is placed, for the log line."""
    dtype = dtype_name(placement.dtype)
    if placement.device_map:
        return f"device map {placement.device_map}, {dtype}"
    if calibrated and placement.device.type != "cpu":
        return f"on the CPU, one block at a time on {placement.device}, {dtype}"
    return f"{placement.device}, {dtype}"
