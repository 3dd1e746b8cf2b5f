"""Wanda (Sun et al. 2023): score |W_ij|·‖X_j‖₂, compared within each output row by default."""

from __future__ import annotations

import torch

from jdna.errors import JdnaError
from jdna.prunable import PrunableMatrix
from jdna.pruning.base import METHODS, ScoreContext, ScoreMethod


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """|W| scaled per input column by the L2 norm of that input feature over all calibration tokens."""
    return weight.detach().abs().to(torch.float32) * input_norms.to(torch.float32).reshape(1, -1)


class Wanda(ScoreMethod):
    name = "wanda"
    description = "prune the smallest |w|·‖x‖₂ (calibrated; per output row by default)"
    default_scope = "row"
    statistic = "input_norms"
    supports_owl = True

    def score_norms(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        norms = context.statistics.get(matrix.name)
        if norms is None:
            raise JdnaError(
                f"wanda has no activations for '{matrix.name}': only linear layers in blocks qualify"
            )
        return norms.reshape(-1)

    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        return wanda_scores(matrix.param.cpu(), self.score_norms(matrix, context))

    def sample_scores(self, matrix: PrunableMatrix, context: ScoreContext, start: int, stride: int) -> torch.Tensor:
        weight = matrix.param.detach().cpu()
        columns = torch.arange(start, weight.numel(), stride) % weight.shape[-1]
        norms = self.score_norms(matrix, context).to(torch.float32)
        return weight.reshape(-1)[start::stride].abs().to(torch.float32) * norms[columns]


METHODS.add("wanda", Wanda())
