"""The one runner of content-addressed steps: identity -> cache -> claim -> load -> execute -> write -> record.

Every artifact-producing command (prune, quantize, lowrank, finetune) is a step: it turns the model a
:class:`~jdna.models.ModelRef` names into one new artifact whose parent is that model. A step declares

- its ``kind`` (the artifact kind it writes, :mod:`jdna.kinds`) and ``operation`` (the name in its header);
- :meth:`Step.params`: every parameter that defines the result. They enter the content address
  (:func:`jdna.artifact.artifact_id` of the parent identity, the operation and the params), so the same
  parent, operation and params always give the same id and the same default path;
- how it loads the model (:meth:`Step.load`: its ``placement`` and ``head``);
- its execution and statistics (:meth:`Step.execute`), which return the tensors and header fields to write.

:func:`run_step` does the rest, in this order, so no step can skip a part:

1. identity: :func:`address` computes the id and the output path (``-o``, else ``runs/<kind>/<id[:20]>``);
2. cache: :func:`find_cached` returns an existing artifact with that id whose tensors still match their hashes
   (then nothing is loaded and the record says ``"cached": true``);
3. claim: :func:`claim` applies the output policy (:mod:`jdna.outputs`: a named ``-o`` is replaced only with
   ``--force``, never an input or an artifact of the input's lineage) *before* any work;
4. load and execute (the step's own methods), timed into ``stats.seconds``;
5. write: :func:`header` builds the common header fields (kind, id, base, parent, operation, compute) and
   :func:`write` writes the file atomically through the claim and reads it back;
6. record: :meth:`Step.record`, by default the kind's one-line record (:func:`jdna.kinds.record`).

A step whose loading or writing does not fit this sequence (fine-tuning: a task head chosen after the task
is read, data-parallel ranks of which only rank 0 writes, a validation record written beside the artifact,
checkpoints and resume) calls the parts itself: :func:`address`, :func:`find_cached` (with ``reusable``),
:func:`claim`, :func:`header`, :func:`write`. Those functions are the same ones :func:`run_step` uses, so
ids, cache hits and the output policy cannot diverge between commands.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from jdna.artifact import (
    Artifact,
    artifact_id,
    cached_artifact,
    claim_artifact_output,
    default_output_path,
    parent_reference,
    read_artifact,
    write_artifact,
)
from jdna.kinds import record as kind_record
from jdna.models import ModelRef, load_model
from jdna.outputs import Claim, model_inputs
from jdna.placement import Placement
from jdna.progress import Reporter

__all__ = [
    "Produced",
    "Step",
    "Target",
    "address",
    "claim",
    "find_cached",
    "header",
    "run_step",
    "write",
]


@dataclass(frozen=True)
class Target:
    """Where a step's artifact goes and what it is: its content address and output path."""

    kind: str
    operation: str
    params: dict[str, Any]  # what entered the id
    id: str
    path: Path
    explicit: bool  # the user named the path (-o): it is never silently replaced


@dataclass
class Produced:
    """What a step's execution produced: the artifact's tensors and its kind-specific header fields.

    ``fields`` holds the header entries besides the common ones :func:`header` writes (e.g. ``masks``,
    ``quant``, ``lowrank``, ``head``); ``stats`` the measured figures (the runner adds ``seconds``);
    ``operation_params`` the params recorded in the header when they differ from the identity params (e.g.
    prune's ``calib_path``, which names where the text was read but is not part of the content address).
    """

    tensors: dict[str, torch.Tensor]
    stats: dict[str, Any]
    fields: dict[str, Any] = field(default_factory=dict)
    operation_params: dict[str, Any] | None = None


class Step(ABC):
    """One artifact-producing operation; subclasses set ``kind`` and ``operation`` and implement
    :meth:`params` and :meth:`execute` (and override :meth:`load` when the default does not fit).

    ``placement`` is where and in what precision the step runs (its ``id_params`` usually enter
    :meth:`params`; its ``record()`` is the header's ``compute``); ``head`` a task head for :meth:`load`.
    """

    kind: ClassVar[str]
    operation: ClassVar[str]

    def __init__(self, placement: Placement, head: dict[str, Any] | None = None) -> None:
        self.placement = placement
        self.head = head

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Every parameter that defines the result: the content address is computed from these."""

    @property
    def load_device(self) -> torch.device | None:
        """Where :meth:`load` puts the model; None keeps it on the CPU (calibrated steps move one block at a
        time to the placement's device)."""
        return self.placement.device

    def load(self, ref: ModelRef, reporter: Reporter) -> tuple[nn.Module, Any]:
        """The model and tokenizer the step works on (default: `ref` with ``head``, as placed)."""
        return load_model(
            ref,
            head=self.head,
            device=self.load_device,
            dtype=self.placement.dtype,
            device_map=self.placement.device_map,
        )

    @abstractmethod
    def execute(self, ref: ModelRef, model: nn.Module, tokenizer: Any, reporter: Reporter) -> Produced:
        """Change `model` and measure it: the tensors, header fields and statistics of the artifact."""

    def reusable(self, artifact: Artifact) -> bool:
        """Whether a cached artifact with this step's id may be served (beyond its hashes matching)."""
        return True

    def record(self, artifact: Artifact, cached: bool) -> dict[str, Any]:
        """The one-line JSON record the command prints for the artifact (made or found)."""
        return kind_record(artifact, cached)


def address(ref: ModelRef, kind: str, operation: str, params: dict[str, Any], output: Path | None) -> Target:
    """The step's content address (parent identity + operation + params) and its output path."""
    identity = artifact_id(ref.identity, operation, params)
    path = Path(output) if output else default_output_path(kind, identity)
    return Target(kind=kind, operation=operation, params=params, id=identity, path=path, explicit=output is not None)


def find_cached(
    target: Target,
    force: bool,
    reporter: Reporter | None = None,
    reusable: Callable[[Artifact], bool] | None = None,
) -> Artifact | None:
    """The artifact already at the target path with the target's id and intact tensors, or None.

    `reusable` adds a step's own condition (fine-tuning: its validation record still exists); an artifact it
    rejects is recomputed without a "cache hit" line.
    """
    return cached_artifact(target.path, target.id, target.explicit, force, reporter, reusable)


def claim(target: Target, force: bool, ref: ModelRef) -> Claim:
    """Apply the output policy before any work: refuse a named -o without --force, and any of `ref`'s files."""
    return claim_artifact_output(target.path, target.id, target.explicit, force, model_inputs(ref))


def header(
    target: Target,
    ref: ModelRef,
    placement: Placement,
    operation_params: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The artifact header: kind, id, base, parent, operation, compute, plus the step's own `fields`.

    `operation_params` are the params recorded in the header (default: the identity params).
    """
    params = target.params if operation_params is None else operation_params
    return {
        "kind": target.kind,
        "id": target.id,
        "base": ref.base.reference(),
        "parent": parent_reference(ref.top) if ref.top else None,
        "operation": {"name": target.operation, "params": params},
        **fields,
        "compute": placement.record(),
    }


def write(target: Target, full_header: dict[str, Any], tensors: dict[str, torch.Tensor], claimed: Claim) -> Artifact:
    """Write the artifact atomically through the claim and return it as read back from disk."""
    write_artifact(target.path, full_header, tensors, claimed)
    return read_artifact(target.path)


def run_step(
    step: Step,
    ref: ModelRef,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run `step` on the model `ref` names and return its record; a cache hit loads nothing."""
    reporter = reporter or Reporter()
    target = address(ref, step.kind, step.operation, step.params(), output)
    existing = find_cached(target, force, reporter, step.reusable)
    if existing is not None:
        return step.record(existing, cached=True)
    claimed = claim(target, force, ref)
    started = time.perf_counter()
    model, tokenizer = step.load(ref, reporter)
    produced = step.execute(ref, model, tokenizer, reporter)
    produced.stats["seconds"] = round(time.perf_counter() - started, 3)
    full = header(target, ref, step.placement, produced.operation_params, **produced.fields, stats=produced.stats)
    artifact = write(target, full, produced.tensors, claimed)
    return step.record(artifact, cached=False)
