"""The ``lowrank`` kind (``jdna lowrank``): each factorized matrix becomes ``left @ right``.

Tensors: ``left.<name>`` ``(rows, r)`` and ``right.<name>`` ``(r, cols)``, float16; header ``lowrank: {name:
{shape, rank}}``. The factors are dense, so a factorized matrix obeys no older mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from jdna.errors import JdnaError
from jdna.kinds.base import (
    COMPRESSION_FIELDS,
    KINDS,
    ArtifactKind,
    Layout,
    StoredArtifact,
    check_shape,
    dims,
    no_masks,
    parameter,
)
from jdna.naming import canonical_parameters


def reconstruct_lowrank(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left @ right`` in float32 from the stored (float16) factors."""
    return left.to(torch.float32) @ right.to(torch.float32)


@torch.no_grad()
def apply_lowrank(model: nn.Module, artifact: StoredArtifact) -> None:
    params = canonical_parameters(model)
    entries: dict[str, dict[str, Any]] = artifact.header.get("lowrank", {})
    lefts = artifact.tensors("left.")
    rights = artifact.tensors("right.")
    for name, entry in entries.items():
        param = parameter(params, name, artifact)
        check_shape(param, entry["shape"], name, artifact)
        if name not in lefts or name not in rights:
            raise JdnaError(f"artifact '{artifact.path}' lacks the factors of '{name}': recreate it")
        value = reconstruct_lowrank(lefts[name], rights[name])
        param.data.copy_(value.to(device=param.device, dtype=param.dtype))


def check_layout(header: dict[str, Any], layout: Layout, bad: Callable[[str], JdnaError]) -> None:
    entries = header.get("lowrank")
    if not isinstance(entries, dict) or not entries:
        raise bad("a lowrank artifact without 'lowrank' entries")
    for name, entry in entries.items():
        shape = dims(entry.get("shape")) if isinstance(entry, dict) else None
        if shape is None or len(shape) != 2:
            raise bad(f"lowrank entry '{name[:60]}' is malformed")
        left, right = layout.get(f"left.{name}"), layout.get(f"right.{name}")
        if left is None or right is None:
            raise bad(f"lowrank entry '{name[:60]}' has no factors")
        if len(left[1]) != 2 or len(right[1]) != 2 or left[1][0] != shape[0] or right[1][1] != shape[1] \
                or left[1][1] != right[1][0]:
            raise bad(f"the factors of '{name[:60]}' do not multiply to its shape {shape}")
    for name in layout:
        if name.split(".", 1)[1] not in entries:
            raise bad(f"tensor '{name[:60]}' has no lowrank entry")


def touched(artifact: StoredArtifact) -> set[str]:
    return set(artifact.header.get("lowrank", {}))


LOWRANK = KINDS.declare(
    ArtifactKind(
        name="lowrank",
        apply=apply_lowrank,
        tensor_prefixes=("left.", "right."),
        touched=touched,
        masked=no_masks,  # the factors are dense
        record_fields=COMPRESSION_FIELDS
        + (("params", "group_size"), ("params", "symmetric"), ("params", "energy"))
        + (("stats", "relative_error"), ("stats", "mean_rank_ratio")),
        check_layout=check_layout,
        compresses=True,
    )
)
