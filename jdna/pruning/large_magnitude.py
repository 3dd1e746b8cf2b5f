"""Large-magnitude pruning: remove the largest weights, a control showing small weights are the cheap ones."""

from __future__ import annotations

import torch

from jdna.prunable import PrunableMatrix
from jdna.pruning.base import METHODS, ScoreContext, ScoreMethod


class LargeMagnitude(ScoreMethod):
    name = "large-magnitude"
    description = "prune the largest |w| (control)"
    default_scope = "global"

    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        return -matrix.param.detach().abs().to(torch.float32)

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        return -matrix.param.detach().reshape(-1)[start::stride].abs().to(torch.float32)


METHODS.add("large-magnitude", LargeMagnitude())
