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
) -> dict[str, Any]:
    """Prune the model `ref` names and write a pruned artifact; returns its record."""
    reporter = reporter or Reporter()
    plan = plan_prune(config)
    params = plan.params()
    identity = artifact_id(ref.identity, "prune", params)
    path = Path(output) if output else default_output_path("pruned", identity)
    existing = cached_artifact(path, identity, output is not None, force, reporter)
    if existing is not None:
        return artifact_record(existing, cached=True)
    claim = claim_artifact_output(path, identity, output is not None, force, model_inputs(ref))
    started = time.perf_counter()
    reporter.log(f"loading {ref.display_name}")
    model, tokenizer = load_model(ref)
    reporter.log(f"pruning with {plan.method.name}, sparsity {plan.sparsity:g}, scope {params['scope']}")
    outcome = prune_model(model, tokenizer, plan, reporter)
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
    tensors.update({f"weight.{name}": weight for name, weight in outcome.updated.items()})
    header = {
        "kind": "pruned",
        "id": identity,
        "base": ref.base.reference(),
        "parent": parent_reference(ref.top) if ref.top else None,
        "operation": {"name": "prune", "params": operation_params},
        "masks": {name: list(outcome.masks[name].shape) for name in outcome.masks},
        "stats": stats,
    }
    write_artifact(path, header, tensors, claim)
    return artifact_record(read_artifact(path), cached=False)
