"""The eval record: one builder and one id recipe for every record of kind ``eval`` (docs/records.md).

Two places write eval records: `jdna eval` (`jdna.evaluation.run_eval`) and fine-tuning's validation pass
(`jdna.finetune`, the record its artifact's header points at). Both build them here, so they share the
layout and the content address:

    id = artifact_id(model identity, "eval", {protocol: EVAL_PROTOCOL_VERSION, **params})

`jdna eval`'s params are the task, its kind, every knob, the shot pool, the task files' sha256, the
evaluator's own parameters and the compute placement (`jdna.evaluation.eval_params`); fine-tuning's are the
task and the knobs of its validation pass, with the fine-tuned artifact as the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jdna.artifact import artifact_id, versions
from jdna.evaluation.base import EVAL_PROTOCOL_VERSION
from jdna.models import ModelRef
from jdna.paths import runs_dir

_ABSENT: Any = object()


def eval_identity(model_identity: str, params: dict[str, Any]) -> str:
    """The content address of an evaluation of the model `model_identity` with `params` (protocol included)."""
    return artifact_id(model_identity, "eval", {**params, "protocol": EVAL_PROTOCOL_VERSION})


def default_record_path(identity: str) -> Path:
    """Where an eval record goes without -o: ``runs/eval/<id[:20]>.json``."""
    return runs_dir() / "eval" / f"{identity[:20]}.json"


def model_block(ref: ModelRef) -> dict[str, Any]:
    """The record's `model`: what was evaluated, its lineage and compression."""
    from jdna.sparsity import model_block_fields

    return {
        "name": ref.display_name,
        "id": ref.identity,
        "base": ref.base.name,
        "base_sha256": ref.base.sha256,
        "lineage": ref.lineage(),
        "compression": ref.compression(),
        **model_block_fields(ref),  # dense_parent; measured zeros of a model pruned outside jdna
    }


def build_record(
    *,
    identity: str,
    path: Path,
    task: str,
    task_kind: str,
    knobs: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    primary_metric: str,
    higher_is_better: bool,
    n: int,
    model: dict[str, Any],
    transfer: dict[str, Any] | None,
    per_item: dict[str, Any],
    timing: dict[str, Any],
    extra: dict[str, Any] | None = None,
    excluded: dict[str, Any] | None = _ABSENT,
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An eval record in the documented key order. `excluded` (items left out by rule) and `protocol` (how the
    items and prompts were made) appear when given; `extra` holds the evaluator's and the placement's fields."""
    record: dict[str, Any] = {
        "kind": "eval",
        "path": str(path),
        "id": identity,
        "cached": False,
        "task": task,
        "task_kind": task_kind,
        "knobs": knobs,
        "primary_metric": primary_metric,
        "metrics": metrics,
        "higher_is_better": higher_is_better,
        "n": n,
    }
    if excluded is not _ABSENT:
        record["excluded"] = excluded
    record["model"] = model
    record["transfer"] = transfer
    if protocol is not None:
        record["protocol"] = protocol
    record.update(extra or {})
    record["per_item"] = per_item
    record["timing"] = timing
    record["versions"] = versions()
    return record
