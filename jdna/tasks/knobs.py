"""Difficulty knobs and prompt rendering.

Knobs change how hard a task is without changing the task: fewer answer options, fewer
demonstrations, less evidence, less training data. Each is deterministic given its seed and keys its
randomness on item ids (see `jdna.tasks.base.stable_rng`), so every model sees exactly the same
variant of every item, and an item's variant does not depend on which other items are evaluated.
Selections are nested where that makes sense: the 3 options kept at --options 3 are among the 5 kept
at --options 5, the 2 shots drawn at k=2 are the first 2 of k=5, a 10% training subsample is inside
the 20% one, so difficulty curves compare like with like.

Prompt rendering lives here too (`format_prompt`, `format_mc_prompt`, `format_shots`) because it must
run after the knobs: the listing of options in an MMLU or BIG-bench prompt has to show exactly the
options that are scored.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.tasks.base import Item, PromptFormat, Task, hash_rank, stable_hash, stable_rng

# ---------------------------------------------------------------------------------------------------
# Number of options


def restrict_options(items: Sequence[Item], n_options: int, seed: int = 0) -> list[Item]:
    """Keep each item's gold option plus n_options - 1 seeded distractors, in a seeded order.

    Distractors come from a permutation keyed on (seed, item id), and the first n - 1 are kept, so the
    same item gets the same distractors whatever else is evaluated and smaller option sets are subsets
    of larger ones. The kept options are then shuffled (keyed on the item and n) and `gold` points at
    the gold option's new position. Items are copied, never modified.
    """
    if n_options < 2:
        raise JdnaError(f"--options {n_options} leaves nothing to choose between: use at least 2")
    restricted = []
    for item in items:
        if item.choices is None or item.gold is None:
            raise JdnaError(
                f"--options applies to multiple-choice items, but item {item.id} has no "
                "choices: drop --options for this task"
            )
        if n_options > len(item.choices):
            raise JdnaError(
                f"--options {n_options} but item {item.id} has only {len(item.choices)} "
                f"options: use --options {len(item.choices)} or fewer"
            )
        distractors = [i for i in range(len(item.choices)) if i != item.gold]
        order = stable_rng(seed, "options-distractors", item.id).permutation(len(distractors))
        kept = [item.gold] + [distractors[i] for i in order[: n_options - 1]]
        shuffle = stable_rng(seed, "options-order", n_options, item.id).permutation(n_options)
        kept = [kept[i] for i in shuffle]
        meta = dict(item.meta, original_choice_indices=kept)
        restricted.append(
            dataclasses.replace(
                item,
                choices=[item.choices[i] for i in kept],
                gold=kept.index(item.gold),
                meta=meta,
            )
        )
    return restricted


# ---------------------------------------------------------------------------------------------------
# Few-shot demonstrations


def draw_shots(
    train_items: Sequence[Item],
    k: int,
    seed: int = 0,
    exclude_ids: Iterable[str] = (),
    *,
    key: str = "",
    group: str | None = None,
) -> list[Item]:
    """K demonstrations from the train pool, never one of `exclude_ids` (the evaluated items).

    The pool is ranked by a hash of (seed, key, item id) and the first K taken, so K=2 is a prefix of
    K=5 and the draw does not depend on pool order. Pass `key=item.id` for different demonstrations
    per evaluated item (BIG-bench's protocol) or leave it empty for one shared set (lets a scorer cache
    the shared prompt). `group` restricts the pool to items of that group (MMLU: the same subject).
    """
    if k < 0:
        raise JdnaError(f"--shots {k} is negative: use 0 or more")
    if k == 0:
        return []
    excluded = set(exclude_ids)
    pool = [
        item for item in train_items if item.id not in excluded and (group is None or item.group == group)
    ]
    if k > len(pool):
        where = f" in group '{group}'" if group is not None else ""
        raise JdnaError(
            f"--shots {k} but the train pool{where} has only {len(pool)} items: "
            f"use --shots {len(pool)} or fewer"
        )
    return hash_rank(pool, seed, "shots", key)[:k]


# ---------------------------------------------------------------------------------------------------
# Evidence context

Token = tuple[str, int, int]
"""A token and its [start, end) character span in the text it came from."""

Tokenize = Callable[[str], Sequence[Token]]
"""Maps a text to its tokens with character offsets; see whitespace_tokenize and offsets_tokenizer."""

_NON_SPACE = re.compile(r"\S+")


def whitespace_tokenize(text: str) -> list[Token]:
    """Whitespace tokens with their character spans (the default when no model tokenizer is given)."""
    return [(m.group(), m.start(), m.end()) for m in _NON_SPACE.finditer(text)]


def offsets_tokenizer(tokenizer: Any) -> Tokenize:
    """Adapt a Hugging Face *fast* tokenizer so windows are measured in the model's own tokens."""

    def tokenize(text: str) -> list[Token]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        return [
            (tok, start, end)
            for tok, (start, end) in zip(tokens, encoded["offset_mapping"], strict=True)
            if end > start
        ]

    return tokenize


@dataclass(frozen=True)
class ContextWindow:
    """A window cut from a context document.

    `answer_in_window` is False when no alias occurs in the document (or every occurrence is longer
    than the window and the window was not widened), in which case the window is the document's start;
    `start_token` is the index of the window's first token in the document, `n_window_tokens` its length
    and `widened` whether it was grown past the requested length to hold the shortest answer occurrence.
    """

    text: str
    answer_in_window: bool
    start_token: int
    n_document_tokens: int
    n_window_tokens: int = 0
    widened: bool = False


def _answer_spans(context: str, answers: Sequence[str]) -> list[tuple[int, int]]:
    spans = set()
    for alias in answers:
        alias = alias.strip()
        if alias:
            spans.update(m.span() for m in re.finditer(re.escape(alias), context, flags=re.IGNORECASE))
    return sorted(spans)


def answer_occurs(context: str | None, answers: Sequence[str] | None) -> bool:
    """Whether any alias occurs in the document (case-insensitive), i.e. whether a window can hold it."""
    return bool(_answer_spans(context or "", answers or []))


def fraction_tokens(n_document_tokens: int, fraction: float) -> int:
    """Window length for a share of a document: ceil(fraction * tokens), at least 1 token of a non-empty one."""
    if not 0.0 < fraction <= 1.0:
        raise JdnaError(f"--context-fraction {fraction} is outside (0, 1]: use e.g. 0.25")
    if n_document_tokens == 0:
        return 0
    return max(1, min(n_document_tokens, math.ceil(fraction * n_document_tokens - 1e-9)))


def locate_window(
    context: str,
    answers: Sequence[str],
    n_tokens: int | None,
    tokenize: Tokenize | None = None,
    seed: int = 0,
    *,
    fraction: float | None = None,
    widen_to_answer: bool = False,
) -> ContextWindow:
    """Choose an `n_tokens`-token window of `context` (or `fraction` of its tokens) holding an answer occurrence.

    Answer occurrences are case-insensitive matches of any alias. One occurrence that fits is picked
    and the window start drawn uniformly among the positions that keep it inside, both seeded on
    (seed, context, answers), so the answer does not always sit at the same offset (which a model could
    exploit) yet the window is identical for every model. The window is the exact substring of
    `context` from its first token's start to its last token's end. With `widen_to_answer`, when every
    occurrence is longer than the window, the window grows to the shortest occurrence (so a window
    never loses the answer to its length); the result says so in `widened`.
    """
    if (n_tokens is None) == (fraction is None):
        raise JdnaError("a context window takes a token count or a fraction of the document, not both or neither")
    if n_tokens is not None and n_tokens < 0:
        raise JdnaError(f"--context {n_tokens} is negative: use 0 (closed book) or more tokens")
    tokens = list((tokenize or whitespace_tokenize)(context))
    if fraction is not None:
        n_tokens = fraction_tokens(len(tokens), fraction)
    assert n_tokens is not None
    if n_tokens == 0 or not tokens:
        return ContextWindow("", False, 0, len(tokens), 0)
    spans = _answer_spans(context, answers)
    if n_tokens >= len(tokens):
        return ContextWindow(context[tokens[0][1] : tokens[-1][2]], bool(spans), 0, len(tokens), len(tokens))

    starts = np.array([t[1] for t in tokens])
    ends = np.array([t[2] for t in tokens])
    occurrences = []
    for char_start, char_end in spans:
        # Token range [first, last] covering the occurrence: tokens that overlap it.
        first = int(np.searchsorted(ends, char_start, side="right"))
        last = int(np.searchsorted(starts, char_end, side="left")) - 1
        if first <= last:
            occurrences.append((first, last))
    fitting = [(first, last) for first, last in occurrences if last - first + 1 <= n_tokens]
    widened = False
    if not fitting and occurrences and widen_to_answer:
        n_tokens = min(last - first + 1 for first, last in occurrences)
        fitting = [(first, last) for first, last in occurrences if last - first + 1 == n_tokens]
        widened = True
    if not fitting:
        return ContextWindow(context[tokens[0][1] : tokens[n_tokens - 1][2]], False, 0, len(tokens), n_tokens)

    rng = stable_rng(seed, "context", stable_hash(context), *answers)
    first, last = fitting[int(rng.integers(len(fitting)))]
    lowest = max(0, last - n_tokens + 1)
    highest = min(first, len(tokens) - n_tokens)
    start = int(rng.integers(lowest, highest + 1))
    end = start + n_tokens - 1
    return ContextWindow(context[tokens[start][1] : tokens[end][2]], True, start, len(tokens), n_tokens, widened)


def context_window(
    context: str,
    answers: Sequence[str],
    n_tokens: int,
    tokenize: Tokenize | None = None,
    seed: int = 0,
) -> str:
    """The text of `locate_window(...)`: n_tokens of context around an answer; "" for 0 (closed book)."""
    return locate_window(context, answers, n_tokens, tokenize, seed).text


def apply_context_window(
    items: Sequence[Item],
    n_tokens: int | None,
    tokenize: Tokenize | None = None,
    seed: int = 0,
    *,
    fraction: float | None = None,
    widen_to_answer: bool = False,
) -> list[Item]:
    """Copies of the items with each context cut to `n_tokens` or to `fraction` of its tokens (neither
    leaves contexts whole).

    Each copy records meta["answer_in_context"] so results can be split by whether the evidence was
    actually there, plus the window's length in tokens and whether it was widened to hold the answer.
    """
    if n_tokens is None and fraction is None:
        return list(items)
    windowed = []
    for item in items:
        window = locate_window(
            item.context or "",
            item.answers or [],
            n_tokens,
            tokenize,
            seed,
            fraction=fraction,
            widen_to_answer=widen_to_answer,
        )
        meta = dict(
            item.meta,
            answer_in_context=window.answer_in_window,
            context_tokens=window.n_document_tokens,
            window_tokens=window.n_window_tokens,
            window_widened=window.widened,
        )
        windowed.append(dataclasses.replace(item, context=window.text, meta=meta))
    return windowed


def split_answerable(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """(items whose evidence document contains an answer alias, the others), each in input order.

    With a context knob set only the first part is scored, so every level of the context axis scores
    the same items and every window can hold the answer (the study's "ensuring that the correct answer
    still resides within the provided context").
    """
    kept, dropped = [], []
    for item in items:
        (kept if answer_occurs(item.context, item.answers) else dropped).append(item)
    return kept, dropped


# ---------------------------------------------------------------------------------------------------
# Training-data volume


def _allocate(counts: dict[Any, int], total: int) -> dict[Any, int]:
    """Split `total` across strata proportionally (largest remainder), one per stratum if possible."""
    size = sum(counts.values())
    exact = {key: total * count / size for key, count in counts.items()}
    quota = {key: int(value) for key, value in exact.items()}
    leftover = total - sum(quota.values())
    by_remainder = sorted(counts, key=lambda key: (-(exact[key] - quota[key]), str(key)))
    for key in by_remainder[:leftover]:
        quota[key] += 1
    if total >= len(counts):
        # A fine-tuning set missing a class entirely is a different task, not a smaller one.
        for key in counts:
            if quota[key] == 0:
                donor = max(quota, key=lambda k: (quota[k], str(k)))
                quota[donor] -= 1
                quota[key] += 1
    return quota


def subsample_train(
    items: Sequence[Item],
    fraction: float | None = None,
    n: int | None = None,
    seed: int = 0,
    stratify: bool = True,
) -> list[Item]:
    """A seeded subset of the training pool: `fraction` of it or `n` items, in pool order.

    With `stratify` (and items that have labels) every label keeps its share, by largest remainder,
    and every label keeps at least one item when n allows. Within a label the items ranked first by a
    seeded hash of their id are taken, so a smaller subsample is contained in a larger one.
    """
    if (fraction is None) == (n is None):
        raise JdnaError(
            "subsample the training data by a fraction or by a count, not both or neither: "
            "use --train-fraction or --train-size"
        )
    if not items:
        raise JdnaError(
            "the training pool is empty, so it cannot be subsampled: pick a task with training data"
        )
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise JdnaError(f"--train-fraction {fraction} is outside (0, 1]: use e.g. 0.1")
        total = max(1, round(fraction * len(items)))
    else:
        assert n is not None
        if n < 1:
            raise JdnaError(f"--train-size {n} is below 1: use at least 1")
        if n > len(items):
            raise JdnaError(
                f"--train-size {n} but the training pool has only {len(items)} items: "
                f"use --train-size {len(items)} or fewer"
            )
        total = n

    strata: dict[Any, list[Item]] = {}
    for item in items:
        stratum = item.label if stratify and item.label is not None else None
        strata.setdefault(stratum, []).append(item)
    quota = _allocate({key: len(pool) for key, pool in strata.items()}, total)
    chosen: set[str] = set()
    for key, pool in strata.items():
        chosen.update(item.id for item in hash_rank(pool, seed, "train-subsample")[: quota[key]])
    return [item for item in items if item.id in chosen]


# ---------------------------------------------------------------------------------------------------
# Prompt rendering

LETTERS = string.ascii_uppercase


def _bigbench_listing_order(n: int) -> list[int]:
    # BIG-bench lists the sorted options in np.random.RandomState(42).permutation order (its
    # default_format_fn re-seeds for every example, so every n-option example shares one order).
    return [int(i) for i in np.random.RandomState(42).permutation(n)]


def _choice_listing(item: Item, fmt: PromptFormat) -> str:
    if fmt.choice_listing == "none" or not item.choices:
        return ""
    if fmt.choice_listing == "letters":
        if len(item.choices) > len(LETTERS):
            raise JdnaError(
                f"item {item.id} has {len(item.choices)} options, more than there are letters: "
                "use --options 26 or fewer"
            )
        return "".join(f"\n{LETTERS[i]}. {choice}" for i, choice in enumerate(item.choices))
    ordered = sorted(item.choices)
    shown = [ordered[i] for i in _bigbench_listing_order(len(ordered))]
    return fmt.choice_prefix + fmt.choice_prefix.join(shown)


def format_question(item: Item, fmt: PromptFormat) -> str:
    """The item as a query: optional context, the question, the option listing, the output prefix."""
    context = f"{fmt.context_prefix}{item.context}{fmt.context_suffix}" if item.context else ""
    return f"{context}{fmt.input_prefix}{item.question}{_choice_listing(item, fmt)}{fmt.output_prefix}"


def continuations(item: Item, fmt: PromptFormat) -> list[str]:
    """The scored continuation of each option, answer delimiter included."""
    if not item.choices:
        raise JdnaError(f"item {item.id} has no options to score: it is not a multiple-choice item")
    if fmt.answer_style == "letter":
        return [f"{fmt.answer_delimiter}{LETTERS[i]}" for i in range(len(item.choices))]
    return [f"{fmt.answer_delimiter}{choice}" for choice in item.choices]


def format_answer(item: Item, fmt: PromptFormat, labels: Sequence[str] | None = None) -> str:
    """The gold answer as a demonstration shows it, answer delimiter included.

    Generation items show their first alias; classification items the name of their label.
    """
    if item.choices is not None and item.gold is not None:
        return continuations(item, fmt)[item.gold]
    if item.answers:
        return f"{fmt.answer_delimiter}{item.answers[0]}"
    if item.label is not None and labels is not None:
        return f"{fmt.answer_delimiter}{labels[item.label]}"
    raise JdnaError(
        f"item {item.id} has no gold answer to show in a demonstration: "
        "use items with choices+gold, answers or a label"
    )


def format_shots(shots: Sequence[Item], fmt: PromptFormat, labels: Sequence[str] | None = None) -> str:
    """Demonstrations, each question + answer, separated and followed by `fmt.shot_separator`."""
    if not shots:
        return ""
    rendered = [format_question(shot, fmt) + format_answer(shot, fmt, labels) for shot in shots]
    return fmt.shot_separator.join(rendered) + fmt.shot_separator


def format_prompt(task: Task, item: Item, shots: Sequence[Item] = ()) -> str:
    """Full prompt for an item: prefix, demonstrations, query (up to the output prefix).

    For generation the model continues from here; for multiple choice see format_mc_prompt.
    """
    return (
        task.prefix_for(item)
        + format_shots(shots, task.prompt_format, task.labels)
        + format_question(item, task.prompt_format)
    )


def format_mc_prompt(task: Task, item: Item, shots: Sequence[Item] = ()) -> tuple[str, list[str]]:
    """(prompt, continuations): one prompt shared by all options, and each option's scored text.

    The scorer computes log P(continuation | prompt) per option; "acc" takes the argmax of the sum,
    "acc_norm" of the sum divided by the continuation's length.
    """
    return format_prompt(task, item, shots), continuations(item, task.prompt_format)
