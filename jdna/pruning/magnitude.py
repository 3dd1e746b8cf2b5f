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
        # Widen first, then abs in place: one new tensor instead of two (exact either way).
        return matrix.param.detach().to(torch.float32, copy=True).abs_()

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        return matrix.param.detach().reshape(-1)[start::stride].to(torch.float32, copy=True).abs_()


METHODS.add("magnitude", Magnitude())
