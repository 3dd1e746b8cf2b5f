"""Training data for fine-tuning: what the loop needs of its examples, and a seeded batch order.

Tokenised classification examples (`Encoded`) are the ones `jdna eval` scores (jdna.evaluation.classifier).

The answer-token data of multiple-choice and QA tasks on a causal LM lives in `jdna.finetune.lm`; both
implement `TrainData`, which is all the training loop sees.

The order of the examples in epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so the batch for any optimizer step can be recomputed from the step number alone: resuming
from a checkpoint needs no data-loader state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from jdna.evaluation.classifier import Encoded, collate, encode_items, is_regression

__all__ = ["Encoded", "Schedule", "TrainData", "collate", "encode_items", "is_regression"]


class TrainData(Protocol):
    """What the training loop needs of its examples (`Encoded`, `jdna.finetune.lm.LMEncoded`)."""

    def __len__(self) -> int: ...

    def collate(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """The model inputs of these examples, padded into one batch."""
        ...

    def units(self, indices: Sequence[int]) -> int:
        """How many loss units (examples, answer tokens) these examples hold."""
        ...

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss per unit over `batch` (a float32 scalar)."""
        ...


@dataclass(frozen=True)
class Schedule:
    """How micro-batches group into optimizer steps: `grad_accum` micro-batches of `batch_size` per step."""

    n_examples: int
    batch_size: int
    grad_accum: int
    epochs: int
    seed: int

    @property
    def micro_per_epoch(self) -> int:
        return -(-self.n_examples // self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.micro_per_epoch // self.grad_accum)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=generator).tolist()

    def step_batches(self, step: int, order: list[int] | None = None) -> list[list[int]]:
        """The micro-batches (example indices) of optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.order(epoch) if order is None else order
        first = within * self.grad_accum
        micro = range(first, min(first + self.grad_accum, self.micro_per_epoch))
        return [order[m * self.batch_size : (m + 1) * self.batch_size] for m in micro]
