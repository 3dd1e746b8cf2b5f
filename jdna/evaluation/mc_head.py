"""A multiple-choice head on an encoder (transformers' AutoModelForMultipleChoice): data, loss and scoring.

The paper fine-tunes RoBERTa on CommonsenseQA (Fig. 8) the way its authors' code does: each option is
encoded as the pair (question, option), the encoder's pooled output of each pair goes through one linear
layer to a score, and a softmax over the item's options is trained with cross-entropy against the gold one.
Items may have different numbers of options (BIG-bench, `--options`): a batch pads every item to its widest
item with empty options that a choice mask keeps out of the softmax, so padding never changes a score.

`jdna finetune` trains this head (all four modes) for a multiple-choice task on an encoder
(jdna.finetune.multiple_choice); `jdna eval` scores such an artifact with `score_items`, the same function the
fine-tuning run validated with. It lives in evaluation, below fine-tuning, so eval never imports finetune.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jdna.errors import JdnaError
from jdna.tasks import Item

OBJECTIVE = "multiple_choice_head"
HEAD_TYPE = "multiple_choice"


def head_spec(max_length: int) -> dict[str, Any]:
    """The artifact header's `head`: the class to build and the pair length it was trained with."""
    return {"type": HEAD_TYPE, "objective": OBJECTIVE, "max_length": int(max_length)}


def first_segment(item: Item) -> str:
    """The first text of each pair: the evidence (if any) and the question."""
    return f"{item.context}\n{item.question}" if item.context else item.question


@dataclass
class MCEncoded:
    """Tokenised (question, option) pairs: input_ids[item][option] is one pair's token ids."""

    ids: list[str]
    input_ids: list[list[list[int]]]
    token_type_ids: list[list[list[int]]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """(batch, widest option count, longest pair) inputs, plus `choice_mask` marking real options."""
        options = max(len(self.input_ids[i]) for i in indices)
        width = max(len(pair) for i in indices for pair in self.input_ids[i])
        shape = (len(indices), options, width)
        input_ids = torch.full(shape, pad_id, dtype=torch.long)
        attention = torch.zeros(shape, dtype=torch.long)
        token_types = torch.zeros(shape, dtype=torch.long) if self.token_type_ids is not None else None
        choice_mask = torch.zeros((len(indices), options), dtype=torch.bool)
        for row, index in enumerate(indices):
            for option, pair in enumerate(self.input_ids[index]):
                input_ids[row, option, : len(pair)] = torch.tensor(pair, dtype=torch.long)
                attention[row, option, : len(pair)] = 1
                choice_mask[row, option] = True
                if token_types is not None and self.token_type_ids is not None:
                    types = self.token_type_ids[index][option]
                    token_types[row, option, : len(types)] = torch.tensor(types, dtype=torch.long)
            # A padded option still needs one attended token, or attention over it is undefined (NaN).
            attention[row, len(self.input_ids[index]) :, 0] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, "choice_mask": choice_mask}
        if token_types is not None:
            batch["token_type_ids"] = token_types
        batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return batch

    def units(self, indices: Sequence[int]) -> int:
        return len(indices)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        logits = option_logits(model, batch)
        return nn.functional.cross_entropy(logits, labels)


def option_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each option's score (float32), padded options at -inf."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "choice_mask")}
    logits = model(**inputs).logits.float()
    return logits.masked_fill(~batch["choice_mask"], float("-inf"))


def encode_items(items: Sequence[Item], tokenizer: Any, max_length: int) -> MCEncoded:
    """Tokenise every (question, option) pair, cutting the question (never the option) to `max_length`."""
    input_ids: list[list[list[int]]] = []
    token_types: list[list[list[int]]] = []
    has_types = True
    for item in items:
        if not item.choices or item.gold is None:
            raise JdnaError(f"item {item.id} has no options with a gold one: a multiple-choice head needs both")
        first = first_segment(item)
        try:
            encoded = tokenizer(
                [first] * len(item.choices), list(item.choices), truncation="only_first", max_length=max_length
            )
        except Exception:  # an option alone longer than max_length: tokenizers refuse only_first then
            encoded = tokenizer([first] * len(item.choices), list(item.choices), truncation=True, max_length=max_length)
        input_ids.append([list(row) for row in encoded["input_ids"]])
        types = encoded.get("token_type_ids")
        has_types = has_types and types is not None
        token_types.append([list(row) for row in types] if types is not None else [])
    return MCEncoded(
        ids=[item.id for item in items],
        input_ids=input_ids,
        token_type_ids=token_types if has_types else None,
        labels=[int(item.gold) for item in items],  # type: ignore[arg-type]  (checked above)
    )


@torch.no_grad()
def score_items(
    model: nn.Module, tokenizer: Any, items: Sequence[Item], max_length: int, device: torch.device, batch_size: int = 16
) -> list[list[float]]:
    """Every item's option scores (logits), batched by similar lengths; eval mode, no gradients."""
    data = encode_items(items, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.eval()
    order = sorted(range(len(data)), key=lambda i: max(len(pair) for pair in data.input_ids[i]))
    scores: list[list[float]] = [[] for _ in range(len(data))]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in data.collate(indices, pad_id).items()}
        with autocast:
            logits = option_logits(model, batch)
        for row, index in enumerate(indices):
            scores[index] = logits[row, : len(data.input_ids[index])].tolist()
    return scores


def is_head_model(model: Any) -> bool:
    """Whether a loaded model is a transformers *ForMultipleChoice class."""
    return type(model).__name__.endswith("ForMultipleChoice")
