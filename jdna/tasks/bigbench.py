"""BIG-bench JSON tasks read from a local copy of `bigbench/benchmark_tasks` (fetched by `make data`).

Spec: `bigbench:NAME` or `bigbench:NAME/SUBTASK`. The tree is $JDNA_BIGBENCH, default
$JDNA_HOME/bigbench/benchmark_tasks (JDNA_HOME default ~/.cache/jdna); scripts/fetch_bigbench.py fills
it from the bigbench==1.0.0 sdist.

Semantics follow bigbench/api/json_task.py (v1.0.0) so prompts match the published protocol:
- duplicate examples (identical JSON) are dropped, keeping the first;
- `target_scores` (option -> score) makes a multiple-choice example whose gold option is the first one
  with the highest score; `target` (a string or a list of aliases) makes a generation example;
- a query renders as example_input_prefix (default "\\nQ: ") + input + [the options, each after
  choice_prefix (default "\\n  choice: "), when append_choices_to_input (default true)] +
  example_output_prefix (default "\\nA: "), after task_prefix (default ""); demonstrations are joined
  by few_shot_example_separator (default "\\n").
- jdna moves the output prefix's trailing whitespace into the scored continuation ("\\nA:" + " yes"
  rather than "\\nA: " + "yes"): the same text, tokenised the way BPE models saw it in training.
- a task.json without `examples` is a composite task whose subtasks are its subdirectories; loading
  it pools all subtasks (item.group = subtask) when they share one kind and prompt format.

Evidence sections. A generation task whose every input holds one labelled evidence section -- a line
starting "context:" (any case), e.g. disfl_qa's "<question>  \\ncontext: <passage>", or an
example_input_prefix ending in "Context:" followed by the passage and a "\\nQuestion: ..." line
(bridging_anaphora_resolution_barqa) -- is split the way trivia_qa is loaded: `item.context` is the
passage (up to the next "Question:"/"Q:" line or the end), `item.question` the rest, and the task
reports the `context` knob, so `--context-tokens N` cuts the passage to N tokens around the answer
(0 = closed book). Its primary metric is token F1, exact match second (see load_bigbench).
The prompt renders the evidence first, as for trivia_qa, with the task's own label and the input
prefix's leading newline: "\\ncontext: <passage>" + "\\nQuestion: <question>" + "\\nAnswer:" (disfl_qa);
when the input prefix is the label, the full-context prompt is BIG-bench's own. Demonstrations are
shown closed book, as for trivia_qa: train items keep their passage only in meta["context"]. A task
where any input lacks the section or has an empty passage, or where no input has text besides its
passage, is left whole; multiple-choice tasks are never split (as_kind="generation" splits them).

BIG-bench has no training split, so the train pool (demonstrations, fine-tuning) is carved from the
examples: `train_fraction` (default 0.2) of them, chosen by a seeded hash of their ids
(jdna.tasks.base.carve_split); the rest are evaluated.

`as_kind="classification"` turns a multiple-choice task whose every example offers the same option set
(vitaminc_fact_verification: True/False/Neither; multiemo/*; ...) into a classification task whose
labels are that set, in the order of the first example, for fine-tuning classifiers on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from jdna.errors import JdnaError, unknown_name_error
from jdna.paths import expand, jdna_home
from jdna.tasks.base import (
    DEFAULT_METRICS,
    DEFAULT_TRAIN_FRACTION,
    Item,
    PromptFormat,
    Task,
    carve_split,
)

TASK_FILE = "task.json"
AS_KINDS = ("multiple_choice", "generation", "classification")
_MC_METRIC = "multiple_choice_grade"


def bigbench_root() -> Path:
    """The benchmark_tasks directory: $JDNA_BIGBENCH, default $JDNA_HOME/bigbench/benchmark_tasks."""
    override = os.environ.get("JDNA_BIGBENCH")
    if override:
        return expand(override)
    return jdna_home() / "bigbench" / "benchmark_tasks"


def _require_root(root: Path | None) -> Path:
    root = root if root is not None else bigbench_root()
    if not root.is_dir():
        raise JdnaError(
            f"BIG-bench tasks not found at {root}: run 'make data' to fetch them, "
            "or point $JDNA_BIGBENCH at a bigbench/benchmark_tasks directory"
        )
    return root


def available_tasks(root: Path | None = None) -> list[str]:
    """Names of the tasks and subtasks present, e.g. 'abstract_narrative_understanding/4_distractors'.

    A $JDNA_BIGBENCH that names no BIG-bench tree is an error (a tree that is simply absent is not: the
    default one appears after 'make data').
    """
    override = root is None and bool(os.environ.get("JDNA_BIGBENCH"))
    root = root if root is not None else bigbench_root()
    if not root.is_dir():
        if override:
            raise JdnaError(f"$JDNA_BIGBENCH '{root}' is not a directory: point it at bigbench/benchmark_tasks")
        return []
    names = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if (task_dir / TASK_FILE).is_file():
            names.append(task_dir.name)
        names.extend(
            f"{task_dir.name}/{sub.name}"
            for sub in sorted(task_dir.iterdir())
            if sub.is_dir() and (sub / TASK_FILE).is_file()
        )
    if override and not names:
        raise JdnaError(
            f"$JDNA_BIGBENCH '{root}' holds no BIG-bench tasks (no NAME/task.json): point it at "
            "bigbench/benchmark_tasks"
        )
    return names


def is_available(name: str, root: Path | None = None) -> bool:
    root = root if root is not None else bigbench_root()
    return (root / name / TASK_FILE).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise JdnaError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}): "
            "re-run 'make data' or fix the file"
        ) from None
    if not isinstance(data, dict):
        raise JdnaError(f"{path} does not hold a JSON object: it is not a BIG-bench task.json")
    return data


def _prompt_format(data: dict[str, Any]) -> PromptFormat:
    output_prefix = str(data.get("example_output_prefix", "\nA: "))
    stripped = output_prefix.rstrip()
    append = bool(data.get("append_choices_to_input", True))
    return PromptFormat(
        input_prefix=str(data.get("example_input_prefix", "\nQ: ")),
        output_prefix=stripped,
        answer_delimiter=output_prefix[len(stripped) :],
        shot_separator=str(data.get("few_shot_example_separator", "\n")),
        choice_listing="bigbench" if append else "none",
        # Irrelevant when options are not listed; normalised so such subtasks still pool.
        choice_prefix=str(data.get("choice_prefix", "\n  choice: ")) if append else "",
        answer_style="text",
        # BIG-bench examples carry no separate evidence document.
        context_prefix="",
        context_suffix="",
    )


# A labelled evidence section inside an input: "context:" at the start of the input or of a line.
_CONTEXT_LABEL = re.compile(r"(?:^|\n)[ \t]*(context[ \t]*:)[ \t]*", re.IGNORECASE)
# The section ends where the question's own labelled line starts, else at the end of the input.
_QUESTION_LABEL = re.compile(r"\n[ \t]*(?:question|q)[ \t]*:", re.IGNORECASE)


def _label_in_prefix(data: dict[str, Any]) -> bool:
    """Whether the input prefix itself opens the evidence section ("\\nContext: " + passage + ...)."""
    prefix = str(data.get("example_input_prefix", "\nQ: "))
    return prefix.rstrip().lower().endswith("context:")


def split_context(text: str, label_in_prefix: bool = False) -> tuple[str, str, str] | None:
    """(question, context, label) of an input with one evidence section, or None.

    The section starts after a "context:" label (or at the input's start when `label_in_prefix`) and runs
    to the next "Question:"/"Q:" line or the end of the input; the question is the rest of the input,
    its parts joined by a newline (it may be empty: one disfl_qa input is only a passage). None when there
    is no such section, more than one, or the passage is empty.
    """
    if label_in_prefix:
        start = body = 0
        label = ""
    else:
        found = list(_CONTEXT_LABEL.finditer(text))
        if len(found) != 1:
            return None
        start, body, label = found[0].start(), found[0].end(), found[0].group(1)
    end_match = _QUESTION_LABEL.search(text, body)
    end = end_match.start() if end_match else len(text)
    context = text[body:end].strip()
    question = "\n".join(part for part in (text[:start].strip(), text[end:].strip()) if part)
    if not context:
        return None
    return question, context, label


def _context_format(data: dict[str, Any]) -> PromptFormat | None:
    """The prompt format with the evidence section split out, or None when the leaf is not split."""
    examples = data["examples"]
    in_prefix = _label_in_prefix(data)
    splits = [split_context(str(example["input"]), in_prefix) for example in examples]
    found = [split for split in splits if split is not None]
    if not found or len(found) < len(splits) or not any(question for question, _, _ in found):
        return None  # some input has no evidence section, or the passage is the whole input
    fmt = _prompt_format(data)
    if in_prefix:
        # "\nContext: " + passage + "\nQuestion: ...": the prefix opens the evidence, a newline the question.
        return dataclasses.replace(fmt, context_prefix=fmt.input_prefix, context_suffix="", input_prefix="\n")
    # The evidence takes the input prefix's leading newline and the task's own label ("\ncontext: "); the
    # question then follows on its own line.
    label = re.sub(r"\s", "", found[0][2])
    lead = fmt.input_prefix[: len(fmt.input_prefix) - len(fmt.input_prefix.lstrip())]
    return dataclasses.replace(
        fmt,
        context_prefix=f"{lead}{label} ",
        context_suffix="" if fmt.input_prefix.startswith("\n") else "\n",
    )


def _dedupe(examples: list[Any]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    distinct = []
    for example in examples:
        key = json.dumps(example)
        if key not in seen:
            seen.add(key)
            distinct.append(example)
    return distinct


def _gold_index(scores: dict[str, Any]) -> int | None:
    values = list(scores.values())
    best = max(values)
    if (len(values) == 1 and best == 0) or (len(values) > 1 and best <= min(values)):
        return None  # no option scores higher than another: BIG-bench rejects such examples
    return values.index(best)


def _leaf_kind(name: str, data: dict[str, Any], examples: list[dict[str, Any]], as_kind: str | None) -> str:
    has_scores = all(isinstance(e.get("target_scores"), dict) and e["target_scores"] for e in examples)
    has_target = all("target" in e for e in examples)
    if as_kind is None:
        if has_scores and (_MC_METRIC in data.get("metrics", []) or not has_target):
            return "multiple_choice"
        if has_target:
            return "generation"
        raise JdnaError(
            f"bigbench:{name} mixes examples with and without target_scores/target: "
            "it cannot be loaded as one task"
        )
    if as_kind in ("multiple_choice", "classification") and not has_scores:
        raise JdnaError(
            f"bigbench:{name} has no target_scores, so it cannot be loaded as {as_kind}: "
            "drop as_kind or use as_kind=generation"
        )
    if as_kind == "generation" and not (has_target or has_scores):
        raise JdnaError(f"bigbench:{name} has no targets to generate: drop as_kind=generation")
    return as_kind


def _fixed_labels(name: str, examples: list[dict[str, Any]]) -> list[str]:
    labels = list(examples[0]["target_scores"])
    expected = set(labels)
    for index, example in enumerate(examples):
        if set(example["target_scores"]) != expected:
            raise JdnaError(
                f"bigbench:{name} example {index} offers options {sorted(example['target_scores'])} "
                f"instead of {sorted(expected)}: only tasks with one fixed option set load as "
                "classification"
            )
    return labels


def _leaf_items(
    name: str,
    data: dict[str, Any],
    kind: str,
    labels: list[str] | None,
    group: str | None,
    split: bool = False,
) -> tuple[list[Item], int]:
    """Items of one task.json with examples; also how many invalid examples were skipped.

    With `split` (a generation leaf that `_context_format` accepted) each input's evidence section
    becomes `item.context` and the rest `item.question`.
    """
    examples = data["examples"]
    in_prefix = _label_in_prefix(data)
    items: list[Item] = []
    skipped = 0
    for index, example in enumerate(examples):
        item_id = f"{name}/{index}"
        text = str(example["input"])
        context = None
        if split:
            parts = split_context(text, in_prefix)
            assert parts is not None  # _context_format checked every example
            text, context = parts[0], parts[1]
        scores = example.get("target_scores")
        if kind == "generation":
            target = example.get("target")
            if target is None:
                gold = _gold_index(scores)
                if gold is None:
                    skipped += 1
                    continue
                answers = [list(scores)[gold]]
            else:
                answers = [str(t) for t in target] if isinstance(target, list) else [str(target)]
            if not answers:
                skipped += 1
                continue
            items.append(Item(id=item_id, question=text, answers=answers, context=context, group=group))
            continue
        gold = _gold_index(scores)
        if gold is None:
            skipped += 1
            continue
        choices = [str(option) for option in scores]
        if kind == "classification":
            assert labels is not None
            label = labels.index(choices[gold])
            items.append(
                Item(
                    id=item_id,
                    question=text,
                    choices=list(labels),
                    gold=label,
                    label=label,
                    text_pair=(text, None),
                    group=group,
                )
            )
        else:
            items.append(Item(id=item_id, question=text, choices=choices, gold=gold, group=group))
    return items, skipped


def _leaves(name: str, root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of each task.json with examples under `name` (itself or its subtasks)."""
    data = _read_json(root / name / TASK_FILE)
    if "examples" in data:
        if not isinstance(data["examples"], list) or not data["examples"]:
            raise JdnaError(f"bigbench:{name} has no examples: pick another task")
        for index, example in enumerate(data["examples"]):
            if not isinstance(example, dict) or "input" not in example:
                raise JdnaError(f"bigbench:{name} example {index} has no 'input': the task.json is malformed")
        # Deduplicated once here, as BIG-bench does before anything else, so indices (item ids) match.
        data["examples"] = _dedupe(data["examples"])
        return [(name, data)]
    subtasks = sorted(p.name for p in (root / name).iterdir() if (p / TASK_FILE).is_file())
    if not subtasks:
        raise JdnaError(f"bigbench:{name} has neither examples nor subtasks: it is not a JSON task")
    leaves = []
    for sub in subtasks:
        leaves.extend(_leaves(f"{name}/{sub}", root))
    return leaves


def load_bigbench(
    name: str,
    *,
    as_kind: str | None = None,
    train_fraction: float = DEFAULT_TRAIN_FRACTION,
    split_seed: int = 0,
    root: str | Path | None = None,
) -> Task:
    """Load `bigbench:NAME[/SUBTASK]` from the local task tree (see the module docstring)."""
    base = _require_root(Path(root) if root is not None else None)
    name = name.strip("/")
    if as_kind is not None and as_kind not in AS_KINDS:
        raise unknown_name_error("BIG-bench as_kind", as_kind, AS_KINDS)
    if not name or not (base / name / TASK_FILE).is_file():
        raise unknown_name_error("BIG-bench task", name, available_tasks(base))

    leaves = _leaves(name, base)
    formats = {_prompt_format(data) for _, data in leaves}
    if len(formats) > 1:
        options = ", ".join(f"bigbench:{leaf}" for leaf, _ in leaves[:4])
        raise JdnaError(
            f"bigbench:{name} pools subtasks with different prompt formats: load one of "
            f"them instead, e.g. {options}"
        )
    kinds = {leaf: _leaf_kind(leaf, data, data["examples"], as_kind) for leaf, data in leaves}
    if len(set(kinds.values())) > 1:
        options = ", ".join(f"bigbench:{leaf} ({kind})" for leaf, kind in list(kinds.items())[:4])
        raise JdnaError(
            f"bigbench:{name} pools subtasks of different kinds: load one of them instead, e.g. {options}"
        )
    kind = next(iter(kinds.values()))
    # Generation leaves with an evidence section in every input are split (see the module docstring).
    context_formats = {
        leaf: _context_format(data) if kind == "generation" else None for leaf, data in leaves
    }
    split = {leaf: fmt is not None for leaf, fmt in context_formats.items()}
    formats = {context_formats[leaf] or _prompt_format(data) for leaf, data in leaves}
    if len(formats) > 1:
        shown = ", ".join(
            f"bigbench:{leaf} ({'with' if split[leaf] else 'without'} a context section)" for leaf, _ in leaves[:4]
        )
        raise JdnaError(
            f"bigbench:{name} pools subtasks whose context sections differ: load one of them instead, e.g. {shown}"
        )
    labels = None
    if kind == "classification":
        label_sets = {tuple(_fixed_labels(leaf, data["examples"])) for leaf, data in leaves}
        if len(label_sets) > 1:
            raise JdnaError(
                f"bigbench:{name} subtasks use different option sets: load one subtask as classification"
            )
        labels = list(next(iter(label_sets)))

    prefixes = {str(data.get("task_prefix", "")) for _, data in leaves}
    shared_prefix = prefixes.pop() if len(prefixes) == 1 else ""
    items: list[Item] = []
    skipped = 0
    for leaf, data in leaves:
        group = leaf[len(name) + 1 :] if leaf != name else None
        leaf_items, leaf_skipped = _leaf_items(leaf, data, kind, labels, group, split[leaf])
        if len(leaves) > 1 and str(data.get("task_prefix", "")) != shared_prefix:
            for item in leaf_items:
                item.prompt_prefix = str(data.get("task_prefix", ""))
        items.extend(leaf_items)
        skipped += leaf_skipped
    if not items:
        raise JdnaError(f"bigbench:{name} has no usable examples: pick another task")

    evaluation, train = carve_split(items, train_fraction, split_seed)
    with_context = any(split.values())
    if with_context:
        # Demonstrations are shown closed book, as trivia_qa's: --context-tokens cuts only the query's
        # passage, so demonstrations with whole passages would make the prompt longer at every context
        # size and the knob less clean. The passage stays in meta["context"].
        train = [dataclasses.replace(item, context=None, meta={**item.meta, "context": item.context}) for item in train]
    top = leaves[0][1] if len(leaves) == 1 else _read_json(base / name / TASK_FILE)
    provenance = (
        f"BIG-bench {name}: {len(items)} distinct examples; train pool = {len(train)} carved by "
        f"seeded hash (train_fraction={train_fraction}, split_seed={split_seed}), "
        f"{len(evaluation)} evaluated"
    )
    if skipped:
        provenance += f"; {skipped} examples without a single best option skipped"
    if with_context:
        provenance += "; each input's context section split off as the evidence document (demonstrations closed book)"
    # Span QA over a passage is scored primarily by SQuAD token F1, as SQuAD (disfl_qa's source) and
    # TriviaQA-style context studies report it: exact match of a small LM is 0 at short contexts, which
    # leaves normalised performance (compressed / dense) undefined. Exact match is still recorded.
    metrics = ["f1", "exact_match"] if with_context else list(DEFAULT_METRICS[kind])
    return Task(
        name=f"bigbench:{name}",
        kind=kind,
        source="bigbench",
        items=evaluation,
        train_items=train,
        labels=labels,
        metrics=metrics,
        knobs=["shots", "context"] if with_context else [],
        prompt_prefix=shared_prefix,
        description=str(top.get("description", "")),
        prompt_format=formats.pop(),
        provenance=provenance,
    ).read_from({f"{path}/{TASK_FILE}": base / path / TASK_FILE for path in sorted({name, *dict(leaves)})})
