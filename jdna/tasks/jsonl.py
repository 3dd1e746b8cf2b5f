"""User tasks from a JSON-lines file: spec `file:PATH` (schema in docs/tasks.md).

One JSON object per line (blank lines are ignored); the row's fields decide the task kind:
    {"question": ..., "choices": [...], "gold": i}                    multiple_choice
    {"question": ..., "answers": [...], "context": "..."}              generation (context optional)
    {"text": ..., "text_pair": "...", "label": 1 or "positive"}       classification (text_pair optional)
    {"text": ..., "text_pair": "...", "target": 3.8}                   regression (classification kind)
    {"text": ...}                                                      perplexity
Every row may also have "id" (unique; default: the line number), "split" ("train" or "test") and
"group". An optional first line {"jdna_task": {...}} sets name, kind, labels, prefix, description,
metrics and format (PromptFormat fields, e.g. {"input_prefix": "Q: "}).

If any row has a "split", rows marked "train" form the train pool and the others are evaluated;
otherwise a `train_fraction` (default 0.2) of the rows is carved off by seeded hash, except for
perplexity tasks, which need no train pool. Bad rows raise JdnaError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jdna.errors import JdnaError, nearest
from jdna.paths import expand
from jdna.tasks.base import (
    DEFAULT_METRICS,
    DEFAULT_TRAIN_FRACTION,
    KINDS,
    Item,
    PromptFormat,
    Task,
    carve_split,
)

HEADER_KEY = "jdna_task"
HEADER_FIELDS = ("name", "kind", "labels", "prefix", "description", "metrics", "format")
COMMON_FIELDS = ("id", "split", "group")
ROW_FIELDS = {
    "multiple_choice": ("question", "choices", "gold"),
    "generation": ("question", "answers", "context"),
    "classification": ("text", "text_pair", "label", "target"),
    "perplexity": ("text",),
}
SPLITS = ("train", "test")
# Metric names each kind's evaluator computes; a header naming another is refused before any scoring.
KIND_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "generation": ("exact_match", "f1", "token_f1"),
    "classification": ("accuracy", "f1", "matthews", "pearson", "spearman"),
    "perplexity": ("perplexity",),
}
# What one row may hold: a task file is data, and data must not exhaust memory or the parser.
MAX_ROW_CHARS = 8 << 20
MAX_INT_DIGITS = 30


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _read_row(rows: _Rows, line_number: int, line: str) -> Any:
    if len(line) > MAX_ROW_CHARS:
        raise rows.fail(line_number, f"the row is {len(line):,} characters long", f"keep rows under {MAX_ROW_CHARS:,}")
    try:
        return json.loads(line, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise rows.fail(line_number, f"invalid JSON ({error.msg})", "write one JSON object per line") from None
    except RecursionError:
        raise rows.fail(line_number, "the row is nested too deeply", "write flat JSON objects") from None
    except ValueError as error:
        raise rows.fail(
            line_number, f"unreadable value ({error})", f"keep integers under {MAX_INT_DIGITS} digits"
        ) from None


class _Rows:
    """Per-file parsing context, so every error names the file and the line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, problem: str, fix: str) -> JdnaError:
        return JdnaError(f"{self.path} line {line}: {problem}: {fix}")


def _infer_kind(row: dict[str, Any]) -> str | None:
    if "choices" in row:
        return "multiple_choice"
    if "answers" in row:
        return "generation"
    if "label" in row or "target" in row:
        return "classification"
    if "text" in row:
        return "perplexity"
    return None


def _string(rows: _Rows, line: int, row: dict[str, Any], key: str, optional: bool = False) -> str | None:
    value = row.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise rows.fail(line, f"'{key}' must be a non-empty string", f'write "{key}": "..."')
    return value


def _parse_header(rows: _Rows, line: int, header: Any) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise rows.fail(
            line, f"'{HEADER_KEY}' must be an object", '{"jdna_task": {"name": ..., "kind": ...}}'
        )
    for key in header:
        if key not in HEADER_FIELDS:
            guess = nearest(key, HEADER_FIELDS)
            hint = f"did you mean '{guess}'? " if guess else ""
            raise rows.fail(line, f"unknown header field '{key}'", f"{hint}valid: {', '.join(HEADER_FIELDS)}")
    kind = header.get("kind")
    if kind is not None and kind not in KINDS:
        raise rows.fail(line, f"unknown kind '{kind}'", f"use one of {', '.join(KINDS)}")
    labels = header.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels)
    ):
        raise rows.fail(line, "'labels' must be a non-empty list of strings", '"labels": ["neg", "pos"]')
    metrics = header.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)
    ):
        raise rows.fail(line, "'metrics' must be a list of metric names", '"metrics": ["accuracy"]')
    fmt = header.get("format", {})
    valid_format = {f.name for f in dataclasses.fields(PromptFormat)}
    if not isinstance(fmt, dict) or any(key not in valid_format for key in fmt):
        raise rows.fail(
            line,
            "'format' must map PromptFormat fields to strings",
            f"valid fields: {', '.join(sorted(valid_format))}",
        )
    try:
        header["format"] = PromptFormat(**fmt)
    except JdnaError as error:
        raise rows.fail(line, "bad 'format'", str(error)) from None
    for key in ("name", "prefix", "description"):
        if key in header and not isinstance(header[key], str):
            raise rows.fail(line, f"header '{key}' must be a string", f'"{key}": "..."')
    return header


def _parse_row(
    rows: _Rows, line: int, row: dict[str, Any], kind: str, default_id: str
) -> tuple[Item, str | None, Any]:
    """(item, split, raw label) for one row; the raw label is resolved to an index afterwards."""
    allowed = ROW_FIELDS[kind] + COMMON_FIELDS
    for key in row:
        if key not in allowed:
            guess = nearest(key, allowed)
            hint = f"did you mean '{guess}'? " if guess else ""
            raise rows.fail(
                line, f"unknown field '{key}' for a {kind} row", f"{hint}valid: {', '.join(allowed)}"
            )
    raw_id = row.get("id", default_id)
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
        raise rows.fail(line, "'id' must be a string or an integer", '"id": "q1"')
    split = row.get("split")
    if split is not None and split not in SPLITS:
        raise rows.fail(line, f"'split' is '{split}'", 'use "train" or "test"')
    group = row.get("group")
    if group is not None and not isinstance(group, str):
        raise rows.fail(line, "'group' must be a string", '"group": "subset name"')
    item_id = str(raw_id)

    if kind == "multiple_choice":
        question = _string(rows, line, row, "question")
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise rows.fail(line, "'choices' must be a list of at least 2 strings", '"choices": ["a", "b"]')
        gold = row.get("gold")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise rows.fail(
                line,
                f"'gold' must be an index into the {len(choices)} choices",
                f'"gold": 0 ... {len(choices) - 1}',
            )
        return Item(id=item_id, question=question or "", choices=choices, gold=gold, group=group), split, None

    if kind == "generation":
        question = _string(rows, line, row, "question")
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise rows.fail(line, "'answers' must be a non-empty list of strings", '"answers": ["Paris"]')
        context = _string(rows, line, row, "context", optional=True)
        return (
            Item(id=item_id, question=question or "", answers=answers, context=context, group=group),
            split,
            None,
        )

    text = _string(rows, line, row, "text")
    assert text is not None
    if kind == "perplexity":
        return Item(id=item_id, question=text, group=group), split, None

    second = _string(rows, line, row, "text_pair", optional=True)
    shown = text if second is None else f"{text}\n{second}"
    has_label, has_target = "label" in row, "target" in row
    if has_label == has_target:
        raise rows.fail(
            line,
            "a classification row needs exactly one of 'label' and 'target'",
            '"label": "positive" (classes) or "target": 3.5 (regression)',
        )
    if has_target:
        target = row["target"]
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            raise rows.fail(line, "'target' must be a number", '"target": 3.5')
        item = Item(id=item_id, question=shown, text_pair=(text, second), target=float(target), group=group)
        return item, split, None
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise rows.fail(line, "'label' must be an integer or a string", '"label": 1 or "label": "positive"')
    return Item(id=item_id, question=shown, text_pair=(text, second), group=group), split, label


def _resolve_labels(
    rows: _Rows, parsed: list[tuple[int, Item, Any]], header_labels: list[str] | None
) -> list[str] | None:
    """Turn raw labels into indices into the task's label list (header's, else inferred)."""
    raw = [(line, label) for line, _, label in parsed if label is not None]
    if not raw:
        return header_labels
    kinds = {isinstance(label, str) for _, label in raw}
    if len(kinds) > 1:
        line = next(line for line, label in raw if isinstance(label, str) != isinstance(raw[0][1], str))
        raise rows.fail(line, "labels mix integers and strings", "use one or the other throughout")
    if header_labels is not None:
        labels = header_labels
    elif isinstance(raw[0][1], str):
        # Sorted so the label order does not depend on which row comes first.
        labels = sorted({label for _, label in raw})
    else:
        labels = [str(i) for i in range(max(label for _, label in raw) + 1)]
    for line, item, label in parsed:
        if label is None:
            continue
        if isinstance(label, str):
            if label not in labels:
                raise rows.fail(
                    line,
                    f"label '{label}' is not in the header labels {labels}",
                    "add it to the header's labels or fix the row",
                )
            item.label = labels.index(label)
        else:
            if not 0 <= label < len(labels):
                raise rows.fail(
                    line,
                    f"label {label} is outside 0..{len(labels) - 1}",
                    "use an index into the header's labels",
                )
            item.label = label
    return labels


def _lines(rows: _Rows, handle: Any) -> Any:
    """(line number, text) pairs; undecodable bytes are one clear error, not a traceback."""
    line_number = 0
    try:
        for line_number, line in enumerate(handle, start=1):
            yield line_number, line
    except UnicodeDecodeError as error:
        raise rows.fail(line_number + 1, f"not UTF-8 text ({error.reason} at byte {error.start})",
                        "save the file as UTF-8") from None
    except OSError as error:
        raise JdnaError(f"task file {rows.path} cannot be read: {error.strerror or error}") from None


def duplicate_choice_items(items: list[Item]) -> list[str]:
    """Ids of multiple-choice items whose options repeat a text: if the gold text repeats, no answer is right."""
    return [item.id for item in items if item.choices and len(set(item.choices)) < len(item.choices)]


def load_jsonl(
    path: str | Path,
    *,
    train_fraction: float = DEFAULT_TRAIN_FRACTION,
    split_seed: int = 0,
) -> Task:
    """Load a `file:PATH` task (see the module docstring for the schema)."""
    file = expand(path)
    if not file.is_file():
        raise JdnaError(f"task file {file} not found: pass file:PATH with the path of a .jsonl task file")
    rows = _Rows(file)
    header: dict[str, Any] = {}
    kind: str | None = None
    parsed: list[tuple[int, Item, Any]] = []
    splits: list[str | None] = []
    header_line = 0
    try:
        handle = open(file, encoding="utf-8-sig")  # a byte-order mark some editors write is accepted
    except OSError as error:
        raise JdnaError(f"task file {file} cannot be read: {error.strerror or error}") from None
    with handle:
        for line_number, line in _lines(rows, handle):
            if not line.strip():
                continue
            row = _read_row(rows, line_number, line)
            if not isinstance(row, dict):
                raise rows.fail(line_number, "not a JSON object", "write one JSON object per line")
            if HEADER_KEY in row:
                if parsed or header:
                    raise rows.fail(
                        line_number,
                        f"'{HEADER_KEY}' header after the first row",
                        "put the header on the first line",
                    )
                if len(row) != 1:
                    raise rows.fail(
                        line_number,
                        "the header line holds other fields",
                        f'write only {{"{HEADER_KEY}": {{...}}}} on that line',
                    )
                header = _parse_header(rows, line_number, row[HEADER_KEY])
                header_line = line_number
                kind = header.get("kind")
                continue
            if kind is None:
                kind = _infer_kind(row)
                if kind is None:
                    raise rows.fail(
                        line_number,
                        "cannot tell the task kind from this row",
                        "give question+choices+gold, question+answers, text+label or text",
                    )
            item, split, label = _parse_row(rows, line_number, row, kind, default_id=str(line_number))
            parsed.append((line_number, item, label))
            splits.append(split)
    if not parsed:
        raise JdnaError(f"task file {file} has no rows: add one JSON object per line")
    assert kind is not None

    labels = _resolve_labels(rows, parsed, header.get("labels"))
    items = [item for _, item, _ in parsed]
    if kind == "classification":
        with_label = sum(item.label is not None for item in items)
        if 0 < with_label < len(items):
            line = next(line for line, item, _ in parsed if item.label is None)
            raise rows.fail(line, "rows mix 'label' and 'target'", "use labels or targets throughout")
    seen: dict[str, int] = {}
    for line, item, _ in parsed:
        if item.id in seen:
            raise rows.fail(
                line, f"id '{item.id}' already used on line {seen[item.id]}", "give every row a unique id"
            )
        seen[item.id] = line

    name = header.get("name") or file.stem
    if any(split is not None for split in splits):
        train = [item for item, split in zip(items, splits, strict=True) if split == "train"]
        evaluation = [item for item, split in zip(items, splits, strict=True) if split != "train"]
        provenance = f"{file}: {len(evaluation)} evaluation rows, {len(train)} rows marked split=train"
    elif kind == "perplexity":
        evaluation, train = items, []
        provenance = f"{file}: {len(items)} texts"
    else:
        evaluation, train = carve_split(items, train_fraction, split_seed)
        provenance = (
            f"{file}: no split field, so {len(train)} of {len(items)} rows carved as the train pool "
            f"by seeded hash (train_fraction={train_fraction}, split_seed={split_seed})"
        )
    if not evaluation:
        raise JdnaError(
            f'task file {file} has no evaluation rows: mark some rows "split": "test" '
            "or drop the split fields"
        )

    metrics = header.get("metrics")
    for metric in metrics or []:
        if metric not in KIND_METRICS[kind]:
            guess = nearest(metric, KIND_METRICS[kind])
            hint = f"did you mean '{guess}'? " if guess else ""
            raise rows.fail(header_line, f"unknown metric '{metric}' for a {kind} task",
                            f"{hint}valid: {', '.join(KIND_METRICS[kind])}")
    if metrics is None:
        regression = kind == "classification" and labels is None
        metrics = ["pearson", "spearman"] if regression else list(DEFAULT_METRICS[kind])
    return Task(
        name=f"file:{name}",
        kind=kind,
        source="file",
        items=evaluation,
        train_items=train,
        labels=labels,
        metrics=metrics,
        prompt_prefix=header.get("prefix", ""),
        description=header.get("description", f"user task from {file}"),
        prompt_format=header.get("format", PromptFormat()),
        provenance=provenance,
    ).read_from({file.name: file})
