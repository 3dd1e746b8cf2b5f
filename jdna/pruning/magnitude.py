"""Magnitude pruning: remove the weights smallest in absolute value (the paper's main method)."""

from __future__ import annotations

import torch

from jdna.prunable import PrunableMatrix
from jdna.pruning.base import METHODS, ScoreContext, ScoreMethod


class Magnitude(ScoreMethod):
    name = "magnitude"
    description = "prune the smallest |w| (the study's method; global threshold by default, as its code)"
    default_scope = "global"
    supports_owl = True

    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        return matrix.param.detach().abs().to(torch.float32)

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        return matrix.param.detach().reshape(-1)[start::stride].abs().to(torch.float32)


METHODS.add("magnitude", Magnitude())
