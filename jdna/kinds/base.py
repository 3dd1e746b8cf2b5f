"""What an artifact kind declares, and the registry the kinds are declared in.

An :class:`ArtifactKind` says, once, everything the rest of jdna needs to know about a kind:

- ``apply``: how an artifact of the kind changes a loaded model (masks, new weights, dequantized codes...);
- ``tensor_prefixes`` and ``check_layout``: which tensor families it stores and how its header must describe
  them (checked by :func:`jdna.artifact.read_artifact` before any tensor is read);
- ``touched`` and ``masked``: which matrices it sets, and of those, which it stores a keep-mask for. The
  others it rewrote densely, which ends an older mask (:func:`jdna.masks.effective_masks`);
- ``record_fields`` and ``extend_record``: what its one-line record shows (:func:`jdna.kinds.record`);
- ``compresses``: whether it places the model on the compression axis (:meth:`jdna.models.ModelRef.compression`).

This module sits below :mod:`jdna.artifact` (which checks layouts through it) and :mod:`jdna.models` (which
applies kinds through it), so it imports neither: an artifact is seen through :class:`StoredArtifact`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from jdna.errors import JdnaError
from jdna.registry import Registry

Layout = dict[str, tuple[str, list[int]]]  # tensor name -> (safetensors dtype, shape)
MAX_DIM = 1 << 40


class StoredArtifact(Protocol):
    """What a kind reads of an artifact (jdna.artifact.Artifact is one)."""

    path: Path
    header: dict[str, Any]
    tensor_names: list[str]

    @property
    def kind(self) -> str: ...

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]: ...


def tensor_family(artifact: StoredArtifact, prefix: str) -> set[str]:
    """Canonical names of the matrices an artifact stores a `prefix` tensor for (``mask.``, ``weight.``...)."""
    return {name[len(prefix) :] for name in artifact.tensor_names if name.startswith(prefix)}


def stored_mask_names(artifact: StoredArtifact) -> set[str]:
    """The matrices an artifact stores a keep-mask for (``mask.<name>``)."""
    return tensor_family(artifact, "mask.")


def no_masks(artifact: StoredArtifact) -> set[str]:
    """For a kind that never stores a keep-mask: everything it touches is rewritten densely."""
    return set()


@dataclass(frozen=True)
class ArtifactKind:
    """One artifact kind, declared once (see the module docstring)."""

    name: str
    apply: Callable[[nn.Module, StoredArtifact], None]
    tensor_prefixes: tuple[str, ...]
    touched: Callable[[StoredArtifact], set[str]]
    masked: Callable[[StoredArtifact], set[str]] = stored_mask_names
    # (source, key) pairs, in record order: source "params" reads operation.params, "stats" reads stats.
    record_fields: tuple[tuple[str, str], ...] = ()
    extend_record: Callable[[dict[str, Any], StoredArtifact], None] | None = None
    check_layout: Callable[[dict[str, Any], Layout, Callable[[str], JdnaError]], None] | None = None
    masks_table_required: bool = False
    compresses: bool = False

    def rewritten(self, artifact: StoredArtifact) -> set[str]:
        """The matrices this artifact set without a mask: any older mask on them no longer holds."""
        return self.touched(artifact) - self.masked(artifact)


class KindRegistry(Registry[ArtifactKind]):
    """The artifact kinds; an unknown kind's error names the nearest registered one."""

    def declare(self, kind: ArtifactKind) -> ArtifactKind:
        self.add(kind.name, kind)
        return kind

    def remove(self, name: str) -> None:
        """Forget a kind (tests that declare a kind of their own)."""
        self._items.pop(name, None)


KINDS = KindRegistry("artifact kind")


# --- helpers the kinds share ------------------------------------------------------------------------------


def parameter(params: dict[str, nn.Parameter], name: str, artifact: StoredArtifact) -> nn.Parameter:
    """The model parameter an artifact names, or an error naming the artifact."""
    if name not in params:
        raise JdnaError(f"artifact '{artifact.path}' refers to '{name}', which this model does not have")
    return params[name]


def check_shape(param: nn.Parameter, shape: list[int], name: str, artifact: StoredArtifact) -> None:
    if list(param.shape) != [int(d) for d in shape]:
        raise JdnaError(
            f"artifact '{artifact.path}' stores '{name}' with shape {list(shape)}, but the model's is "
            f"{list(param.shape)}"
        )


def dims(value: Any) -> list[int] | None:
    """A header shape if it is a short list of sane non-negative ints, else None."""
    if not isinstance(value, list) or len(value) > 8:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DIM for d in value):
        return None
    return value


# What every compression kind's record shows (docs/artifacts.md, "The stdout record"), in record order.
COMPRESSION_PARAMS = ("method", "scope", "pattern", "bits", "granularity", "rank_ratio")
COMPRESSION_STATS = (
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
)
COMPRESSION_FIELDS = tuple(("params", key) for key in COMPRESSION_PARAMS) + tuple(
    ("stats", key) for key in COMPRESSION_STATS
)
