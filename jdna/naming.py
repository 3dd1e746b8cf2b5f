"""Canonical parameter names: the names without the task-head wrapper's prefix, so they agree across classes.

``layers.0.mlp.up_proj.weight`` names the same matrix in a bare Llama, a causal LM and a sequence classifier;
artifacts, masks and every compression step key matrices by these names.
"""

from __future__ import annotations

from torch import nn


def canonical_name(model: nn.Module, name: str) -> str:
    """A parameter name without the task-head wrapper's prefix, so names agree across model classes."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and name.startswith(prefix + "."):
        return name[len(prefix) + 1 :]
    return name


def canonical_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters by canonical name."""
    return {canonical_name(model, name): param for name, param in model.named_parameters()}
