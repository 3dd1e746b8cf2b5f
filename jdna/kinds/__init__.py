"""Artifact kinds: one registry (:data:`KINDS`), one module per kind (pruned, quantized, lowrank, finetuned).

Each kind declares once how it changes a loaded model, which tensors it stores, which matrices it masks or
rewrites densely, and what its record shows (:class:`ArtifactKind`). Everything else asks the registry:
:func:`jdna.models.apply_artifact` (loading), :func:`jdna.artifact.read_artifact` (layout checks),
:func:`jdna.masks.effective_masks` (which masks still hold), :func:`record` (the one-line stdout record).

Adding a kind = one module here declaring an :class:`ArtifactKind` in :data:`KINDS`, imported below.
"""

from __future__ import annotations

from typing import Any

from jdna.kinds import finetuned, lowrank, pruned, quantized
from jdna.kinds.base import COMPRESSION_FIELDS, KINDS, ArtifactKind, StoredArtifact

__all__ = ["KINDS", "ArtifactKind", "StoredArtifact", "kind_of", "record"]

# The modules above declared their kinds on import; naming them keeps the import meaningful to linters.
DECLARED = (pruned.PRUNED, quantized.QUANTIZED, lowrank.LOWRANK, finetuned.FINETUNED)


def kind_of(artifact: StoredArtifact) -> ArtifactKind:
    """The declaration of an artifact's kind; an unknown kind's error names the nearest registered one."""
    return KINDS.get(artifact.kind)


def record(artifact: StoredArtifact, cached: bool, detail: bool = True) -> dict[str, Any]:
    """The one-line JSON record a command prints for an artifact it produced or found.

    The common part (path, kind, id, cached, base, operation, device, dtype), then the fields the kind
    declares (``record_fields``, ``extend_record``). `detail=False` gives the common part and the
    compression figures only, whatever the kind (what ``jdna info`` builds its own record on).
    """
    header = artifact.header
    record: dict[str, Any] = {
        "path": str(artifact.path),
        "kind": artifact.kind,
        "id": header["id"],
        "cached": cached,
        "base": header["base"].get("name"),
        "operation": header["operation"].get("name"),
    }
    compute = header.get("compute")
    if isinstance(compute, dict):
        record["device"] = compute.get("device")
        record["dtype"] = compute.get("dtype")
    kind = kind_of(artifact)
    sources = {"params": header["operation"].get("params", {}), "stats": header.get("stats", {})}
    for source, key in kind.record_fields if detail else COMPRESSION_FIELDS:
        if key in sources[source]:
            record[key] = sources[source][key]
    if detail and kind.extend_record is not None:
        kind.extend_record(record, artifact)
    return record
