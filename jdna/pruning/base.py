"""The pruning method interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from jdna.prunable import PrunableMatrix
from jdna.registry import Registry

SCOPES = ("global", "layer", "row")


@dataclass
class ScoreContext:
    """What a score may depend on beyond the weight itself."""

    seed: int = 0
    input_norms: dict[str, torch.Tensor] = field(default_factory=dict)


class ScoreMethod(ABC):
    """A method that ranks weights by a score; the lowest scores are pruned."""

    name: str = ""
    description: str = ""
    default_scope: str = "global"
    scopes: tuple[str, ...] = SCOPES
    needs_calibration: bool = False
    supports_owl: bool = False
    supports_n_m: bool = True

    @abstractmethod
    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        """float32 scores shaped like the weight; lower means pruned first."""

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        """`score(...)` at flat positions start, start + stride, ... (1-D). Global selection brackets its
        threshold with such a sample; methods whose score is elementwise override this to skip the rest."""
        return self.score(matrix, context).reshape(-1)[start::stride].clone()


class ReconstructionMethod:
    """A method that chooses masks while updating the remaining weights (SparseGPT)."""

    name: str = ""
    description: str = ""
    default_scope: str = "layer"
    scopes: tuple[str, ...] = ("layer", "row")
    needs_calibration: bool = True
    supports_owl: bool = False
    supports_n_m: bool = True


METHODS: Registry[ScoreMethod | ReconstructionMethod] = Registry("pruning method")
