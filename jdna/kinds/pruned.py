"""The ``pruned`` kind (``jdna prune``): keep-masks over the parent's weights, plus SparseGPT's rewritten matrices.

Tensors: ``mask.<name>`` (bit-packed keep-mask; its shape in the header's ``masks``) and, for reconstruction
methods, ``weight.<name>`` (the updated matrix). Loading zeroes the pruned positions (after copying a rewritten
matrix in). Every matrix it touches keeps its mask.
"""

from __future__ import annotations

import torch
from torch import nn

from jdna.bitmask import unpack_mask
from jdna.kinds.base import (
    COMPRESSION_FIELDS,
    KINDS,
    ArtifactKind,
    StoredArtifact,
    parameter,
    tensor_family,
)
from jdna.naming import canonical_parameters


@torch.no_grad()
def apply_pruned(model: nn.Module, artifact: StoredArtifact) -> None:
    params = canonical_parameters(model)
    masks = artifact.tensors("mask.")
    weights = artifact.tensors("weight.")
    shapes = artifact.header.get("masks", {})
    for name, packed in masks.items():
        param = parameter(params, name, artifact)
        keep = unpack_mask(packed, shapes.get(name, list(param.shape))).to(param.device)
        if name in weights:
            param.data.copy_(weights[name].to(param.dtype))
        param.data.masked_fill_(~keep, 0)


def touched(artifact: StoredArtifact) -> set[str]:
    return tensor_family(artifact, "mask.") | tensor_family(artifact, "weight.")


PRUNED = KINDS.declare(
    ArtifactKind(
        name="pruned",
        apply=apply_pruned,
        tensor_prefixes=("mask.", "weight."),
        touched=touched,
        record_fields=COMPRESSION_FIELDS,
        masks_table_required=True,
        compresses=True,
    )
)
