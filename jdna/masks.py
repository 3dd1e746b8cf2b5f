"""The one rule for which pruning masks a model still obeys.

Per matrix, the newest step in the chain that touched it decides:

- a step storing a mask for it (``mask.<name>``: pruned, quantized from a pruned parent, sparse/freeze fine-tuned)
  gives that mask;
- a step that rewrote it without a mask (lowrank factors, a quantization without mask, a dense or regrow
  fine-tune storing ``weight.<name>``) ends any older mask: its values are dense now;
- steps that did not touch it leave the older decision in force.

Which matrices a step touched and which of them it stores a mask for is the step's kind's declaration
(:class:`jdna.kinds.ArtifactKind` ``touched`` and ``masked``), so a new kind changes this rule by declaring,
not by editing it. quantize (which masks to carry), finetune (which masks sparse/freeze enforce), info and the
records all use :func:`effective_masks`, so no command can re-apply a mask that a later dense rewrite ended.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jdna.artifact import Artifact
from jdna.bitmask import unpack_mask
from jdna.kinds import kind_of


def stored_masks(artifact: Artifact) -> dict[str, torch.Tensor]:
    """Keep-masks (bool, True = kept) an artifact stores, by canonical parameter name."""
    shapes = artifact.header.get("masks", {})
    return {name: unpack_mask(packed, shapes[name]) for name, packed in artifact.tensors("mask.").items()}


def touched_matrices(artifact: Artifact) -> set[str]:
    """Canonical names of the parameters an artifact sets: masked, rewritten, quantized or factorized."""
    return kind_of(artifact).touched(artifact)


def masked_matrices(artifact: Artifact) -> set[str]:
    """Canonical names of the parameters whose keep-mask an artifact stores (they obey it after the step)."""
    return kind_of(artifact).masked(artifact)


def mask_owners(chain: Sequence[Artifact]) -> dict[str, Artifact | None]:
    """For every matrix some step touched: the artifact whose mask holds for it, or None (a dense rewrite)."""
    owners: dict[str, Artifact | None] = {}
    for artifact in reversed(chain):
        masked = masked_matrices(artifact)
        for name in sorted(touched_matrices(artifact)):  # sets iterate in hash-seed order; headers must not
            owners.setdefault(name, artifact if name in masked else None)
    return owners


def effective_masks(chain: Sequence[Artifact]) -> dict[str, torch.Tensor]:
    """Keep-masks the model made by `chain` (oldest first) still obeys, by canonical parameter name."""
    owners = mask_owners(chain)
    unpacked: dict[int, dict[str, torch.Tensor]] = {}
    masks = {}
    for name, owner in owners.items():
        if owner is None:
            continue
        if id(owner) not in unpacked:
            unpacked[id(owner)] = stored_masks(owner)
        masks[name] = unpacked[id(owner)][name]
    return masks


def ended_by(chain: Sequence[Artifact]) -> Artifact | None:
    """The newest artifact that ended a mask an older step set (a dense rewrite of a pruned matrix), if any."""
    owners = mask_owners(chain)
    masked_once = {name for artifact in chain for name in masked_matrices(artifact)}
    for artifact in reversed(chain):
        if any(owners.get(name) is None and name in masked_once for name in touched_matrices(artifact)):
            return artifact
    return None


def mask_summary(chain: Sequence[Artifact]) -> dict[str, object]:
    """What `jdna info` and records show: how many matrices are still masked and the masked sparsity."""
    masks = effective_masks(chain)
    total = sum(keep.numel() for keep in masks.values())
    pruned = sum(int((~keep).sum()) for keep in masks.values())
    summary: dict[str, object] = {
        "matrices": len(masks),
        "sparsity": pruned / total if total else 0.0,
    }
    ended = ended_by(chain)
    if ended is not None:
        summary["ended_by"] = {"kind": ended.kind, "path": str(ended.path)}
    return summary
