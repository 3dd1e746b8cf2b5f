"""The pruning method interface and its registry.

A method is one file and one ``METHODS.add`` line. It declares what it needs (``statistic``: the calibration
statistic the layer-by-layer pipeline of :mod:`jdna.layerwise` collects for it, or None) and implements one
hook that compresses a group of matrices: a :class:`ScoreMethod` scores weights and the engine's exact
selection prunes the lowest; a :class:`ReconstructionMethod` chooses masks while rewriting the kept weights.
Engines and commands read the declared properties, never a method's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass, field

import torch

from jdna.artifact import PackedMasks
from jdna.prunable import PrunableMatrix
from jdna.pruning.selection import Selection, select_masks
from jdna.registry import Registry

SCOPES = ("global", "layer", "row")


@dataclass
class ScoreContext:
    """What a method may depend on beyond the weights themselves."""

    seed: int = 0
    # The method's calibration statistic per matrix name (``statistic``), empty for an uncalibrated method.
    statistics: Mapping[str, torch.Tensor] = field(default_factory=dict)
    block_size: int = 128  # reconstruction: columns per lazy-update block
    damp: float = 0.01  # reconstruction: Hessian dampening as a fraction of its mean diagonal
    input_norms: InitVar[Mapping[str, torch.Tensor] | None] = None  # the former name of Wanda's statistics

    def __post_init__(self, input_norms: Mapping[str, torch.Tensor] | None) -> None:
        if input_norms is not None:
            self.statistics = input_norms


@dataclass
class Pruned:
    """What compressing a group of matrices produced: keep-masks, and rewritten weights (CPU) if any."""

    masks: PackedMasks
    updated: dict[str, torch.Tensor] = field(default_factory=dict)


class PruningMethod(ABC):
    """What every pruning method declares, and its one hook."""

    name: str = ""
    description: str = ""
    default_scope: str = "global"
    scopes: tuple[str, ...] = SCOPES
    # The statistic of a block's linear-layer inputs this method needs (a name in jdna.layerwise.STATISTICS).
    statistic: str | None = None
    # Calibrated methods: whether the next block calibrates on this block's compressed outputs (the
    # references do) or on its dense ones.
    recompute_outputs: bool = True
    # Whether the result depends on --seed even without calibration (the seed then enters the content address).
    seeded: bool = False
    # Whether kept weights are rewritten too (stored in the artifact; --block-size and --damp apply).
    reconstructs: bool = False
    supports_owl: bool = False
    supports_n_m: bool = True

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None

    @abstractmethod
    def compress(self, matrices: list[PrunableMatrix], context: ScoreContext, selection: Selection) -> Pruned:
        """Prune `matrices` in place (one block's under the calibration pipeline, else all of them), with
        ``context.statistics`` holding this method's statistic for them."""


class ScoreMethod(PruningMethod, ABC):
    """A method that ranks weights by a score; the lowest scores are pruned."""

    @abstractmethod
    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        """float32 scores shaped like the weight; lower means pruned first."""

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        """`score(...)` at flat positions start, start + stride, ... (1-D). Global selection brackets its
        threshold with such a sample; methods whose score is elementwise override this to skip the rest."""
        return self.score(matrix, context).reshape(-1)[start::stride].clone()

    def select(self, matrices: list[PrunableMatrix], context: ScoreContext, selection: Selection) -> PackedMasks:
        """The keep-masks `compress` applies, leaving the weights as they are."""
        return select_masks(
            matrices,
            lambda matrix: self.score(matrix, context).cpu(),
            lambda matrix, start, stride: self.sample_scores(matrix, context, start, stride).cpu(),
            selection,
        )

    def compress(self, matrices: list[PrunableMatrix], context: ScoreContext, selection: Selection) -> Pruned:
        masks = self.select(matrices, context, selection)
        for matrix in matrices:
            matrix.param.data.masked_fill_(~masks[matrix.name].to(matrix.param.device), 0)
        return Pruned(masks)


class ReconstructionMethod(PruningMethod, ABC):
    """A method that chooses masks while updating the remaining weights (SparseGPT)."""

    default_scope = "layer"
    scopes = ("layer", "row")
    statistic = "hessian"
    reconstructs = True

    @abstractmethod
    def reconstruct(
        self,
        weight: torch.Tensor,
        statistic: torch.Tensor,
        sparsity: float,
        scope: str,
        n_m: tuple[int, int] | None,
        block_size: int,
        damp: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(new weight, bool keep mask) for one float32 (rows × cols) matrix given its statistic."""

    def compress(self, matrices: list[PrunableMatrix], context: ScoreContext, selection: Selection) -> Pruned:
        pruned = Pruned(PackedMasks())
        for matrix in matrices:
            weight, keep = self.reconstruct(
                matrix.param.data.to(torch.float32),
                context.statistics[matrix.name],
                selection.target(matrix),
                scope=selection.scope,
                n_m=selection.n_m,
                block_size=context.block_size,
                damp=context.damp,
            )
            matrix.param.data.copy_(weight.to(matrix.param.dtype))
            pruned.masks[matrix.name] = keep
            pruned.updated[matrix.name] = matrix.param.data.detach().cpu().clone()
        return pruned


METHODS: Registry[PruningMethod] = Registry("pruning method")


def method_names(predicate: Callable[[PruningMethod], bool] | None = None) -> list[str]:
    """Registered method names (sorted), those for which `predicate(method)` holds if given."""
    return [name for name in METHODS.names() if predicate is None or predicate(METHODS.get(name))]


def default_scopes() -> str:
    """Each scope with the methods it is the default of, e.g. "global for magnitude/random, row for wanda"."""
    by_scope: dict[str, list[str]] = {}
    for name in METHODS.names():
        by_scope.setdefault(METHODS.get(name).default_scope, []).append(name)
    return ", ".join(f"{scope} for {'/'.join(names)}" for scope, names in by_scope.items())
