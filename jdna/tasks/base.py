"""The task data model shared by every source: `Item`, `PromptFormat`, `Task`, and split helpers.

A `Task` holds two disjoint pools of `Item`s: `items` are evaluated, `train_items` supply few-shot
demonstrations or fine-tuning data. Items are source-agnostic; which fields are set depends on the
task kind (see `Item`). Prompt *rendering* is kept out of the items (see `PromptFormat` and
`jdna.tasks.knobs.format_prompt`) so that difficulty knobs such as restricting the options can change
an item before it is rendered, and the rendering still lists exactly the options that are scored.

Determinism: every seeded choice in the task library ranks items by a hash of (seed, purpose, item
id) instead of drawing from a shared random stream. The same item therefore gets the same treatment
whichever other items are present, whatever their order, and on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.io import sha256_file

KINDS = ("classification", "multiple_choice", "generation", "perplexity")

# Primary metric first. For classification "f1" is binary with two labels and macro with more
# (jdna.metrics.get_metric); for generation it is SQuAD token F1.
DEFAULT_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "f1"],
    "multiple_choice": ["acc", "acc_norm"],
    "generation": ["exact_match", "f1"],
    "perplexity": ["perplexity"],
}



@dataclass(frozen=True)
class Knob:
    """A difficulty knob (jdna.tasks.knobs), the one vocabulary of tasks and evaluation: `name` is what a task
    lists (`jdna tasks`), `settings` what sets it, each setting at once a field of
    `jdna.evaluation.EvalConfig`, a key of the eval record's `knobs` and a flag (`knob_flag`). One name per
    knob; each setting sets one knob."""

    name: str
    settings: tuple[str, ...]


# "options" = restrict_options, "shots" = draw_shots, "context" = locate_window (a window of N tokens or a
# fraction F of the evidence), "train_size" = subsample_train (N training examples or a fraction F of the pool).
KNOB_SPECS: tuple[Knob, ...] = (
    Knob("options", ("options",)),
    Knob("shots", ("shots",)),
    Knob("context", ("context_tokens", "context_fraction")),
    Knob("train_size", ("train_fraction", "train_examples")),
)
KNOBS = tuple(knob.name for knob in KNOB_SPECS)
# The knobs a task of each kind can take; a task lists those its items allow (`default_knobs`).
KIND_KNOBS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("options", "shots"),
    "generation": ("shots", "context"),
    "classification": ("train_size",),
    "perplexity": (),
}


def knob_of(setting: str) -> Knob:
    """The knob a setting (e.g. ``context_fraction``) sets."""
    return next(knob for knob in KNOB_SPECS if setting in knob.settings)


def knob_flag(setting: str) -> str:
    """The command-line flag of a setting: ``context_tokens`` -> ``--context-tokens``."""
    return "--" + setting.replace("_", "-")

# Used when a source has no separate training split and the caller gives no fraction.
DEFAULT_TRAIN_FRACTION = 0.2


@dataclass
class Item:
    """One example. Which fields are set depends on the task kind:

    - multiple_choice: `question`, `choices`, `gold` (index into choices).
    - generation: `question`, `answers` (gold aliases), optionally `context` (evidence document).
    - classification: `text_pair` (sentence, optional second sentence) with `label` (index into
      `Task.labels`) or `target` (a float, for regression such as STS-B); `question` repeats the text
      for display.
    - perplexity: `question` is the text to score.

    `group` names the subset an item belongs to (MMLU subject, BIG-bench subtask) so demonstrations can
    come from the same subset; `prompt_prefix` overrides `Task.prompt_prefix` for this item (MMLU's
    per-subject header); `meta` carries provenance that is not used for scoring.
    """

    id: str
    question: str
    choices: list[str] | None = None
    gold: int | None = None
    answers: list[str] | None = None
    context: str | None = None
    label: int | None = None
    text_pair: tuple[str, str | None] | None = None
    target: float | None = None
    group: str | None = None
    prompt_prefix: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptFormat:
    """How an item is rendered into a prompt; see `jdna.tasks.knobs.format_prompt`.

    One demonstration or query reads:
        [context_prefix + context + context_suffix]  (only if the item has a non-empty context)
        input_prefix + question + [choice listing] + output_prefix
    and a demonstration then continues with answer_delimiter + answer. Demonstrations and the query are
    joined by `shot_separator`, after the task (or item) prompt prefix.

    `answer_delimiter` starts every scored continuation rather than ending the prompt, because a
    trailing space in the prompt splits BPE tokens unnaturally (" Paris" is one token, " " + "Paris"
    two); prompt + continuation is the same string either way.

    choice_listing: "none" (options not shown), "letters" ("\\nA. option" lines, MMLU) or "bigbench"
    (choice_prefix + each option, in BIG-bench's fixed seeded permutation of the sorted options).
    answer_style: "text" (continuations are the option texts) or "letter" (" A", " B", ...).
    """

    input_prefix: str = "Question: "
    output_prefix: str = "\nAnswer:"
    answer_delimiter: str = " "
    shot_separator: str = "\n\n"
    choice_listing: str = "none"
    choice_prefix: str = "\n  choice: "
    answer_style: str = "text"
    context_prefix: str = "Context: "
    context_suffix: str = "\n\n"

    def __post_init__(self) -> None:
        if self.choice_listing not in ("none", "letters", "bigbench"):
            raise JdnaError(f"unknown choice_listing '{self.choice_listing}': use none, letters or bigbench")
        if self.answer_style not in ("text", "letter"):
            raise JdnaError(f"unknown answer_style '{self.answer_style}': use text or letter")


@dataclass
class Task:
    """A loaded task: the evaluation pool, a disjoint train pool, and how to prompt and score it.

    `metrics` lists metric names, primary first (see DEFAULT_METRICS); `knobs` the difficulty knobs
    that make sense for this task; `provenance` says where the pools came from (splits used, how a
    train pool was carved, rows skipped) so reports can cite it.
    """

    name: str
    kind: str
    source: str
    items: list[Item]
    train_items: list[Item] = field(default_factory=list)
    labels: list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    prompt_prefix: str = ""
    knobs: list[str] = field(default_factory=list)
    description: str = ""
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    provenance: str = ""
    # Every local file the loader read, by a machine-independent label, with the sha256 of its bytes: part of
    # an evaluation's content address, so editing a task file never serves a stale cached result.
    inputs: dict[str, str] = field(default_factory=dict)
    input_paths: dict[str, Path] = field(default_factory=dict, repr=False)

    def read_from(self, files: dict[str, Path]) -> Task:
        """Record the files (label -> path) this task was loaded from, with their sha256 now; returns self."""
        self.input_paths = dict(files)
        self.inputs = current_inputs(self)
        return self

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise JdnaError(f"task {self.name}: unknown kind '{self.kind}': use one of {', '.join(KINDS)}")
        if not self.metrics:
            self.metrics = list(DEFAULT_METRICS[self.kind])
        if not self.knobs:
            self.knobs = default_knobs(self.kind, self.items)
        unknown = [k for k in self.knobs if k not in KNOBS]
        if unknown:
            raise JdnaError(f"task {self.name}: unknown knob '{unknown[0]}': use one of {', '.join(KNOBS)}")
        check_disjoint(self.name, self.items, self.train_items)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def prefix_for(self, item: Item) -> str:
        """The instruction placed before the demonstrations for this item."""
        return self.prompt_prefix if item.prompt_prefix is None else item.prompt_prefix


def default_knobs(kind: str, items: Sequence[Item]) -> list[str]:
    """Knobs that apply to a task of this kind with these items: the kind's (`KIND_KNOBS`), less options when
    no item has more than two and context when no item has an evidence document."""
    applies = {
        "options": lambda: max((len(item.choices or ()) for item in items), default=0) > 2,
        "context": lambda: any(item.context for item in items),
    }
    return [knob for knob in KIND_KNOBS.get(kind, ()) if applies.get(knob, lambda: True)()]


def check_disjoint(name: str, items: Sequence[Item], train_items: Sequence[Item]) -> None:
    """Item ids must be unique and the evaluation and train pools must not share any."""
    for pool, what in ((items, "evaluation"), (train_items, "train")):
        seen: set[str] = set()
        for item in pool:
            if item.id in seen:
                raise JdnaError(
                    f"task {name}: item id '{item.id}' occurs twice in the {what} pool: "
                    "give every item a unique id"
                )
            seen.add(item.id)
    overlap = {item.id for item in items} & {item.id for item in train_items}
    if overlap:
        first = sorted(overlap)[0]
        raise JdnaError(
            f"task {name}: item '{first}' is in both the evaluation and train pools: keep the splits disjoint"
        )


# ---------------------------------------------------------------------------------------------------
# Seeded, order-independent selection


def current_inputs(task: Task) -> dict[str, str]:
    """The sha256 of each file the task was loaded from, as the files are now (a missing file hashes to "")."""
    return {label: sha256_file(path) if path.is_file() else "" for label, path in task.input_paths.items()}


def stable_hash(*keys: object) -> int:
    """A 64-bit hash of the keys that is the same on every run and machine (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(k) for k in keys).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def stable_rng(*keys: object) -> np.random.Generator:
    """A numpy generator seeded from the keys, e.g. stable_rng(seed, "options", item.id)."""
    return np.random.default_rng(stable_hash(*keys))


def hash_rank(items: Iterable[Item], *keys: object) -> list[Item]:
    """Items ordered by a seeded hash of their id: a random order that is independent of input order.

    Taking the first k of this order gives nested selections (the k chosen items are among the k+1).
    """
    return sorted(items, key=lambda item: (stable_hash(*keys, item.id), item.id))


def carve_split(
    items: Sequence[Item],
    fraction: float = DEFAULT_TRAIN_FRACTION,
    seed: int = 0,
) -> tuple[list[Item], list[Item]]:
    """Split one pool into (evaluation, train) for sources without a training split.

    The train part is the round(fraction * n) items (at least 1, leaving at least 1 to evaluate) ranked
    first by hash_rank(seed, "train-split"), so the carve is deterministic and does not depend on file
    order. Both parts keep the input order.
    """
    if not 0.0 < fraction < 1.0:
        raise JdnaError(f"train fraction {fraction} is outside (0, 1): use e.g. 0.2")
    if len(items) < 2:
        return list(items), []
    n_train = min(len(items) - 1, max(1, round(fraction * len(items))))
    train_ids = {item.id for item in hash_rank(items, seed, "train-split")[:n_train]}
    evaluation = [item for item in items if item.id not in train_ids]
    train = [item for item in items if item.id in train_ids]
    return evaluation, train
