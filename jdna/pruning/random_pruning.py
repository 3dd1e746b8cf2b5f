"""Random pruning: a seeded, uniformly random mask (control)."""

from __future__ import annotations

import hashlib

import torch

from jdna.prunable import PrunableMatrix
from jdna.pruning.base import METHODS, ScoreContext, ScoreMethod


def matrix_generator(seed: int, name: str) -> torch.Generator:
    """A generator keyed on (seed, matrix name): scores can be regenerated one matrix at a time."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class RandomPruning(ScoreMethod):
    name = "random"
    description = "prune a seeded uniformly random subset (control)"
    default_scope = "global"
    seeded = True

    def score(self, matrix: PrunableMatrix, context: ScoreContext) -> torch.Tensor:
        shape = tuple(matrix.param.shape)
        return torch.rand(shape, generator=matrix_generator(context.seed, matrix.name), dtype=torch.float32)


METHODS.add("random", RandomPruning())
