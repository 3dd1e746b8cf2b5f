"""Answer-token fine-tuning of a causal LM on multiple-choice and QA (generation) tasks.

A training example is the prompt `jdna eval` scores for the item (zero-shot: `format_mc_prompt` /
`format_prompt`) followed by the gold answer:

- multiple choice: the gold option's continuation as the evaluator scores it, answer delimiter included
  (" four", or " B" for letter-answer tasks such as MMLU);
- generation: the first answer alias as a demonstration shows it (`format_answer`), followed by the
  evaluator's first stop string ("\\n"), so the model learns where its answer ends (greedy decoding stops
  there); when that stop string adds no token (a tokenizer without newlines) the EOS token ends it instead.

Tokenisation is the evaluator's (`jdna.scoring`, lm-evaluation-harness rules, no special tokens except
Gemma's BOS): for multiple choice the prompt's trailing whitespace moves onto the answer and the answer
tokens are ``enc(prompt + answer)[len(enc(prompt)):]``; for generation the prompt is encoded as greedy
decoding sees it. An empty prompt becomes the BOS (else EOS) token, as in scoring.

Labels are -100 on the prompt and on padding and the token ids on the answer, so the loss -- the mean
cross-entropy per answer token -- is on the answer only; logits are computed at the answer positions only.
A sequence longer than ``max_length`` loses prompt tokens from the left (a forced BOS stays); the answer is
never cut, and an answer that leaves no room for one prompt token is an error.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from jdna.distributed import unwrap
from jdna.errors import JdnaError
from jdna.models import ModelRef, head_of
from jdna.tasks import Item, Task, format_answer, format_mc_prompt, format_prompt, subsample_train

OBJECTIVE = "answer_tokens"
LM_KINDS = ("multiple_choice", "generation")
# Bumped whenever a change to the training sequences (prompt, answer, stop, truncation) changes training:
# part of the fine-tuned artifact's content address.
LM_PROTOCOL = 1
LM_HEAD = {"type": "causal_lm", "objective": OBJECTIVE}
_LM_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_lm_model(ref: ModelRef, spec: str, kind: str) -> None:
    """The model must be a causal LM with its LM head: not an encoder, not a classification-only class."""
    what = f"task {spec} is a {kind} task, which finetune trains on a causal LM's answer tokens"
    if ref.base.family != "causal_lm":
        raise JdnaError(
            f"{what}, but '{ref.base.name}' is an encoder with no LM head: use a causal LM (e.g. smollm2-135m), "
            "or a classification task for an encoder"
        )
    head = head_of(ref)
    if head and head.get("type") == "sequence_classification":
        raise JdnaError(
            f"{what}, but '{ref.display_name}' carries a sequence-classification head (no LM head): fine-tune "
            "the model it was made from (the base or pruned artifact) instead"
        )
    architectures = [str(a) for a in ref.base.config.get("architectures") or []]
    if architectures and not any(a.endswith(_LM_CLASS_SUFFIXES) for a in architectures):
        raise JdnaError(
            f"{what}, but '{ref.base.name}' is a {architectures[0]} checkpoint, a classification-only model class "
            "with no LM head: use the causal-LM checkpoint of that model"
        )


def load_tokenizer(ref: ModelRef) -> Any:
    """The base model's tokenizer (what `jdna.models.load_model` returns with the model)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ref.base.path))


def adds_bos(ref: ModelRef) -> bool:
    """Whether scoring prepends a BOS token for this model (lm-eval forces one for Gemma; see jdna.scoring)."""
    config = ref.base.config
    model_types = [config.get("model_type"), (config.get("text_config") or {}).get("model_type")]
    return any("gemma" in (model_type or "") for model_type in model_types)


def training_pool_items(task: Task, n: int | None, fraction: float | None, seed: int) -> list[Item]:
    """The seeded training subset of an MC/QA task's train pool (pool order kept; smaller sets nested).

    Letter-answer multiple choice (MMLU) is stratified by the gold index, so the answer letters keep their
    shares; text-answer tasks, whose option order the prompt does not show as such, get a seeded sample.
    """
    pool = task.train_items
    if n is None and (fraction is None or fraction >= 1.0):
        return list(pool)
    by_gold = task.kind == "multiple_choice" and task.prompt_format.answer_style == "letter"
    keyed = [dataclasses.replace(item, label=item.gold if by_gold else None) for item in pool]
    chosen = {item.id for item in subsample_train(keyed, fraction=None if n else fraction, n=n, seed=seed)}
    return [item for item in pool if item.id in chosen]


def _answer_text(task: Task, item: Item) -> str:
    if task.kind == "multiple_choice":
        if not item.choices or item.gold is None:
            raise JdnaError(f"item {item.id} of {task.name} has no options with a gold one to train on")
        return format_mc_prompt(task, item)[1][item.gold]
    if not item.answers:
        raise JdnaError(f"item {item.id} of {task.name} has no answer to train on: give every item answers")
    return format_answer(item, task.prompt_format)


def prompt_answer_pairs(
    items: Sequence[Item], task: Task, tokenizer: Any, add_bos: bool
) -> list[tuple[list[int], list[int]]]:
    """(prompt tokens, answer tokens) of each item, tokenised as the evaluator tokenises them."""
    from jdna.evaluation.generation import stop_strings
    from jdna.scoring import ChoiceRequest, encode_choice_requests, encode_texts, prefix_token_id, split_whole

    answers = [_answer_text(task, item) for item in items]
    if task.kind == "multiple_choice":
        requests = [ChoiceRequest(format_mc_prompt(task, item)[0], [answer]) for item, answer in zip(items, answers)]
        return [pairs[0] for pairs in encode_choice_requests(tokenizer, requests, add_bos)]
    prefix = prefix_token_id(tokenizer)
    stop = stop_strings(task.prompt_format)[0]
    prompts = [format_prompt(task, item) for item in items]
    contexts = encode_texts(tokenizer, prompts, add_bos)
    wholes = encode_texts(tokenizer, [p + a + stop for p, a in zip(prompts, answers)], add_bos)
    bare = encode_texts(tokenizer, [p + a for p, a in zip(prompts, answers)], add_bos)
    eos = tokenizer.eos_token_id
    pairs = []
    for ctx, whole, plain in zip(contexts, wholes, bare, strict=True):
        prompt, answer = ([prefix], whole) if not ctx else split_whole(ctx, whole, prefix)
        if whole == plain and eos is not None:  # the stop string is invisible to this tokenizer
            answer = [*answer, int(eos)]
        pairs.append((prompt, answer))
    return pairs


@dataclass
class LMEncoded:
    """Prompt + answer token sequences; the first `prompt_lengths[i]` tokens of sequence i are the prompt."""

    ids: list[str]
    input_ids: list[list[int]]
    prompt_lengths: list[int]
    truncated: int  # sequences whose prompt lost tokens to max_length

    def __len__(self) -> int:
        return len(self.input_ids)

    def answer_length(self, index: int) -> int:
        return len(self.input_ids[index]) - self.prompt_lengths[index]

    def collate(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded inputs, attention mask, and labels that are -100 except on the answer tokens."""
        width = max(len(self.input_ids[i]) for i in indices)
        batch = len(indices)
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        for row, index in enumerate(indices):
            tokens = torch.tensor(self.input_ids[index], dtype=torch.long)
            start = self.prompt_lengths[index]
            input_ids[row, : len(tokens)] = tokens
            attention[row, : len(tokens)] = 1
            labels[row, start : len(tokens)] = tokens[start:]
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def units(self, indices: Sequence[int]) -> int:
        return sum(self.answer_length(i) for i in indices)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_token_loss(model, batch)


def encode_lm_items(
    items: Sequence[Item], task: Task, tokenizer: Any, max_length: int, add_bos: bool = False
) -> LMEncoded:
    """Training sequences of `items` (see the module docstring), prompts cut from the left to fit."""
    pairs = prompt_answer_pairs(items, task, tokenizer, add_bos)
    longest = max(((len(a), item.id) for item, (_, a) in zip(items, pairs)), default=(0, ""))
    if longest[0] + 1 > max_length:
        raise JdnaError(
            f"the answer of item {longest[1]} is {longest[0]} tokens, which leaves no room for its prompt within "
            f"--max-length {max_length} (answers are never truncated): use --max-length {longest[0] + 1} or more"
        )
    bos = tokenizer.bos_token_id
    input_ids, prompt_lengths, truncated = [], [], 0
    for prompt, answer in pairs:
        room = max_length - len(answer)
        if len(prompt) > room:
            truncated += 1
            keep_bos = add_bos and bos is not None and prompt[0] == bos and room >= 2
            prompt = [prompt[0], *prompt[len(prompt) - room + 1 :]] if keep_bos else prompt[len(prompt) - room :]
        input_ids.append([*prompt, *answer])
        prompt_lengths.append(len(prompt))
    return LMEncoded([item.id for item in items], input_ids, prompt_lengths, truncated)


_KEEPS_BOOL_LOGITS: dict[type, bool] = {}


def _keeps_bool_logits(model: Any) -> bool:
    """Whether `model` takes a boolean (batch, seq) `logits_to_keep` (transformers >= 5)."""
    kind = type(model)
    if kind not in _KEEPS_BOOL_LOGITS:
        try:
            from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401

            bool_ok = True
        except ImportError:  # pragma: no cover - older transformers
            bool_ok = False
        _KEEPS_BOOL_LOGITS[kind] = bool_ok and "logits_to_keep" in inspect.signature(model.forward).parameters
    return _KEEPS_BOOL_LOGITS[kind]


def answer_token_loss(model: Any, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the answer tokens (labels != -100) given everything before them, in float32.

    The logits are computed only where a next answer token is predicted (position t predicts token t + 1).
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    scored = targets != -100
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = scored
    kwargs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    if _keeps_bool_logits(unwrap(model)):  # (a DistributedDataParallel wrapper's forward takes **kwargs)
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits
    if logits.dim() == 3:  # the model ignored logits_to_keep or does not take it
        logits = logits[keep]
    return F.cross_entropy(logits.float(), targets[scored], reduction=reduction)


@torch.no_grad()
def mean_answer_loss(
    model: Any, data: LMEncoded, pad_id: int, device: torch.device | str = "cpu", batch_size: int = 16
) -> float:
    """The mean cross-entropy per answer token over all of `data` (model left in eval mode)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        indices = list(range(start, min(start + batch_size, len(data))))
        batch = {k: v.to(device) for k, v in data.collate(indices, pad_id).items()}
        total += float(answer_token_loss(model, batch, reduction="sum"))
        count += data.units(indices)
    return total / max(1, count)
