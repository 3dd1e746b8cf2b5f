"""How each artifact kind changes a loaded model. Registered with jdna.models.register_applier."""

from __future__ import annotations

import torch
from torch import nn

from jdna.artifact import Artifact, unpack_mask
from jdna.errors import JdnaError
from jdna.masks import stored_masks
from jdna.models import canonical_parameters, register_applier


def _parameter(params: dict[str, nn.Parameter], name: str, artifact: Artifact) -> nn.Parameter:
    if name not in params:
        raise JdnaError(f"artifact '{artifact.path}' refers to '{name}', which this model does not have")
    return params[name]


@register_applier("pruned")
@torch.no_grad()
def apply_pruned(model: nn.Module, artifact: Artifact) -> None:
    params = canonical_parameters(model)
    masks = artifact.tensors("mask.")
    weights = artifact.tensors("weight.")
    shapes = artifact.header.get("masks", {})
    for name, packed in masks.items():
        param = _parameter(params, name, artifact)
        keep = unpack_mask(packed, shapes.get(name, list(param.shape))).to(param.device)
        if name in weights:
            param.data.copy_(weights[name].to(param.dtype))
        param.data.masked_fill_(~keep, 0)


def masks_of(artifact: Artifact) -> dict[str, torch.Tensor]:
    """Keep-masks stored in an artifact; which of them still hold is jdna.masks.effective_masks' rule."""
    return stored_masks(artifact)

import jdna.finetune_applier  # noqa: E402,F401  (registers the "finetuned" applier)
import jdna.quantization.appliers  # noqa: F401,E402  (registers the quantized and lowrank appliers)
