"""A sequence-classification model's inputs and its one forward pass.

Three callers run a classification head over tokenised items: `jdna eval` (evaluation/classification.py),
fine-tuning's validation (finetune/evaluate.py) and linear mode connectivity (jdna/lmc.py). They tokenise
with `encode_items`, pad with `collate` and run the model with `forward_batches`; each keeps its own batch
plan (order and sizes), because the batch a row shares changes its logits in the last float bits, and each
caller's figures must stay what they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jdna.tasks import Item, Task


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

    # The training loop's view of its data (jdna.finetune.data.TrainData, shared with the LM's answer-token
    # data): a batch, how many loss units (here: examples) a batch holds, and the mean loss over those units.

    def collate(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(self, indices, pad_id)

    def units(self, indices: Sequence[int]) -> int:
        return len(indices)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss.float()


def is_regression(task: Task) -> bool:
    """Regression tasks (STS-B-like) have float targets and no label set."""
    return not task.labels and any(item.target is not None for item in task.items + task.train_items)


def encode_items(items: Sequence[Item], tokenizer: Any, max_length: int, regression: bool) -> Encoded:
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


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def forward_batches(
    model: Any,
    data: Encoded,
    batches: Iterable[Sequence[int]],
    pad_id: int,
    device: torch.device,
    autocast: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The classification forward pass: for each batch of example indices, (indices, float32 logits on
    `device`, labels on `device`), without gradients. `autocast` runs CUDA forwards in bfloat16 autocast
    (fine-tuning's validation of a float32 model)."""
    for batch_indices in batches:
        indices = list(batch_indices)
        batch = collate(data, indices, pad_id)
        labels = batch.pop("labels").to(device)
        use_autocast = autocast and device.type == "cuda"
        context = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        # The no-grad scope ends before the yield, so the caller's own grad mode is never changed.
        with torch.no_grad(), context:
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
        yield indices, logits, labels
