"""The `finetuned` artifact kind's applier: load every stored parameter into the model, strictly by name.

A fine-tuned artifact stores all of the model's parameters as ``weight.<canonical name>`` (the task head
included) and, for the sparse and freeze modes, the keep-masks as ``mask.<name>``. Its header's ``head`` makes
`jdna.models.load_model` build the matching model class before this applier runs.
"""

from __future__ import annotations

import torch
from torch import nn

from jdna.artifact import Artifact
from jdna.errors import JdnaError
from jdna.models import canonical_parameters, register_applier


@register_applier("finetuned")
@torch.no_grad()
def apply_finetuned(model: nn.Module, artifact: Artifact) -> None:
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
