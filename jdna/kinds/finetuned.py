"""The ``finetuned`` kind (``jdna finetune``): every parameter of the trained model, strictly by name.

Tensors: ``weight.<name>`` for all of the model's parameters (the task head included) and, for the sparse and
freeze modes, the keep-masks as ``mask.<name>``. Its header's ``head`` makes :func:`jdna.models.load_model`
build the matching model class before :func:`apply_finetuned` runs. A matrix it stores without a mask (dense
and regrow modes) is dense: any older mask on it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jdna.errors import JdnaError
from jdna.kinds.base import KINDS, ArtifactKind, Layout, StoredArtifact, tensor_family
from jdna.naming import canonical_parameters


@torch.no_grad()
def apply_finetuned(model: nn.Module, artifact: StoredArtifact) -> None:
    """Copy the artifact's weights into `model`; any missing, extra or misshapen parameter is an error."""
    params = canonical_parameters(model)
    weights = artifact.tensors("weight.")
    missing = sorted(set(params) - set(weights))
    extra = sorted(set(weights) - set(params))
    if missing or extra:
        what = f"lacks '{missing[0]}'" if missing else f"has '{extra[0]}', which the model does not"
        raise JdnaError(
            f"fine-tuned artifact '{artifact.path}' does not fit the loaded model: it {what} "
            f"({len(missing)} missing, {len(extra)} unexpected); was it made from another base or head?"
        )
    for name, tensor in weights.items():
        param = params[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise JdnaError(
                f"fine-tuned artifact '{artifact.path}': '{name}' has shape {tuple(tensor.shape)}, "
                f"the model {tuple(param.shape)}"
            )
        param.copy_(tensor.to(device=param.device, dtype=param.dtype))


def check_layout(header: dict[str, Any], layout: Layout, bad: Callable[[str], JdnaError]) -> None:
    if not any(name.startswith("weight.") for name in layout):
        raise bad("a finetuned artifact without weights")


def touched(artifact: StoredArtifact) -> set[str]:
    return tensor_family(artifact, "weight.") | tensor_family(artifact, "mask.")


def extend_record(record: dict[str, Any], artifact: StoredArtifact) -> None:
    """The training side of the record (docs/records.md, "finetune stdout record")."""
    header = artifact.header
    stats = header.get("stats", {})
    params = header["operation"].get("params", {})
    record.update(task=header.get("task"), mode=header.get("mode"), train_examples=stats.get("train_examples"))
    record["objective"] = header.get("objective", "classification")
    if "train_loss_last" in stats:
        record["train_loss_last"] = stats["train_loss_last"]
    record["lr"] = params.get("lr")
    record["epochs"] = params.get("epochs")
    evaluation = header.get("eval", {})
    record["primary_metric"] = evaluation.get("primary_metric")
    record["metrics"] = evaluation.get("metrics")
    record["invariants"] = header.get("invariants")
    record["world_size"] = (header.get("training") or {}).get("world_size", 1)
    if isinstance(header.get("split"), dict):
        record["split"] = {k: v for k, v in header["split"].items() if not k.endswith("_sha256")}
    record["eval_record"] = evaluation.get("path")


FINETUNED = KINDS.declare(
    ArtifactKind(
        name="finetuned",
        apply=apply_finetuned,
        tensor_prefixes=("weight.", "mask."),
        touched=touched,
        # Training parameters share some names with compression ones (method, bits...): the record shows the
        # measured compression figures only, then the training side.
        record_fields=tuple(
            ("stats", key)
            for key in ("sparsity", "target_bits_per_weight", "bits_per_weight", "compression_ratio",
                        "bits_accounting", "seconds")
        ),
        extend_record=extend_record,
        check_layout=check_layout,
    )
)
