"""Training and evaluation data for fine-tuning: tokenised classification examples and a seeded batch order.

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

from jdna.tasks import Item, Task


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


@dataclass
class Encoded:
    """Tokenised examples: one list of token ids per example, and the label (int) or target (float)."""

    ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[float] | list[int]
    regression: bool

    def __len__(self) -> int:
        return len(self.input_ids)

    # The training loop's view of its data (shared with `jdna.finetune.lm.LMEncoded`): a batch, how many
    # loss units (here: examples) a batch holds, and the mean loss over those units.

    def collate(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(self, indices, pad_id)

    def units(self, indices: Sequence[int]) -> int:
        return len(indices)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss.float()


def is_regression(task: Task) -> bool:
    """Regression tasks (STS-B-like) have float targets and no label set."""
    return not task.labels and any(item.target is not None for item in task.items + task.train_items)


def encode_items(
    items: Sequence[Item], tokenizer: Any, max_length: int, regression: bool
) -> Encoded:
    """Tokenise classification items (text, optional text pair), truncated to `max_length` tokens."""
    firsts = [(item.text_pair or (item.question, None))[0] for item in items]
    seconds = [(item.text_pair or (item.question, None))[1] for item in items]
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length}
    if any(second is not None for second in seconds):
        encoded = tokenizer(firsts, [second or "" for second in seconds], **kwargs)
    else:
        encoded = tokenizer(firsts, **kwargs)
    labels: list[Any]
    if regression:
        labels = [float(item.target if item.target is not None else 0.0) for item in items]
    else:
        labels = [int(item.label if item.label is not None else -100) for item in items]
    token_types = encoded.get("token_type_ids")
    return Encoded(
        ids=[item.id for item in items],
        input_ids=[list(row) for row in encoded["input_ids"]],
        token_type_ids=[list(row) for row in token_types] if token_types is not None else None,
        labels=labels,
        regression=regression,
    )


def collate(data: Encoded, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of the given examples (attention mask marks the real tokens)."""
    width = max(len(data.input_ids[i]) for i in indices)
    batch = len(indices)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    token_types = torch.zeros((batch, width), dtype=torch.long) if data.token_type_ids is not None else None
    for row, index in enumerate(indices):
        tokens = data.input_ids[index]
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, : len(tokens)] = 1
        if token_types is not None and data.token_type_ids is not None:
            token_types[row, : len(tokens)] = torch.tensor(data.token_type_ids[index], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention}
    if token_types is not None:
        out["token_type_ids"] = token_types
    label_dtype = torch.float32 if data.regression else torch.long
    out["labels"] = torch.tensor([data.labels[i] for i in indices], dtype=label_dtype)
    return out


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
