"""`lmeval:PATH.yaml`: a simple lm-evaluation-harness task YAML over local data files.

Supported (what lm-eval's own simple multiple-choice and generation tasks use):
    task                     the task's name (the key of the record's lm-eval `results` block)
    dataset_path: json       with dataset_kwargs.data_files: a path, a list, or {split: path(s)}, relative to the
                             YAML's directory; JSON-lines (or a JSON list) of documents
    test_split, validation_split, training_split, fewshot_split
                             evaluated: test_split, else validation_split; demonstrations: fewshot_split, else
                             training_split, else validation_split when it is not the evaluated split
    output_type              multiple_choice or generate_until
    doc_to_text, doc_to_choice, doc_to_target
                             a field name, a Jinja template ("Q: {{query}}"), a list (doc_to_choice) or an int
                             (doc_to_target); a rendered choice list ("{{choices}}") is read as a Python literal;
                             a target that renders to a choice's text or to a number picks that choice
    target_delimiter (" "), fewshot_delimiter ("\\n\\n"), description (""), num_fewshot (jdna's default --shots)
    metric_list              acc / acc_norm (multiple choice), exact_match (generation); others are refused
The prompt is lm-eval's: description + (text + target_delimiter + target + fewshot_delimiter) per demonstration +
text; each option is scored as target_delimiter + choice. Generation stops at a newline or the fewshot
delimiter (jdna's rule); generation_kwargs are not read. Demonstrations are drawn with jdna's seeded sampler, so
a few-shot prompt holds different (equally valid) demonstrations than lm-eval's.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from jdna.errors import JdnaError
from jdna.paths import expand
from jdna.tasks.base import Item, PromptFormat, Task

OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "generate_until": "generation"}
METRICS = {"multiple_choice": ("acc", "acc_norm"), "generation": ("exact_match", "f1")}
SUPPORTED_KEYS = {
    "task", "dataset_path", "dataset_kwargs", "dataset_name", "test_split", "validation_split", "training_split",
    "fewshot_split", "output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "target_delimiter",
    "fewshot_delimiter", "description", "num_fewshot", "metric_list", "metadata", "tag", "group",
    "generation_kwargs", "should_decontaminate", "doc_to_decontamination_query",
}  # fmt: skip


def _read_yaml(file: Path) -> dict[str, Any]:
    import yaml

    if not file.is_file():
        raise JdnaError(f"lm-eval task file {file} not found: pass lmeval:PATH with the path of a task .yaml")
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise JdnaError(f"{file} is not valid YAML ({str(error).splitlines()[0]}): fix the file") from None
    if not isinstance(config, dict):
        raise JdnaError(f"{file} does not hold a YAML mapping: it is not an lm-eval task")
    if "include" in config or "!function" in file.read_text():
        raise JdnaError(
            f"{file} uses 'include' or '!function', which jdna does not read: inline the fields and use "
            "templates or field names"
        )
    unknown = sorted(set(config) - SUPPORTED_KEYS)
    if unknown:
        raise JdnaError(f"{file}: lm-eval field '{unknown[0]}' is not supported here: remove it (see docs/tasks.md)")
    return config


def _data_files(file: Path, config: dict[str, Any]) -> dict[str, list[Path]]:
    if config.get("dataset_path") != "json":
        raise JdnaError(
            f"{file}: dataset_path '{config.get('dataset_path')}' is not local data: use dataset_path: json "
            "with dataset_kwargs.data_files"
        )
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, (str, list)):
        files = {"train": files}  # the datasets library's name for an unnamed split
    if not isinstance(files, dict) or not files:
        raise JdnaError(f"{file}: dataset_kwargs.data_files is missing: name the JSON-lines file of each split")
    out: dict[str, list[Path]] = {}
    for split, names in files.items():
        paths = [names] if isinstance(names, str) else names
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise JdnaError(f"{file}: data_files.{split} must be a path or a list of paths")
        out[str(split)] = [(file.parent / expand(p)) if not Path(p).is_absolute() else Path(p) for p in paths]
    return out


def _read_docs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise JdnaError(f"lm-eval data file {path} not found: fix data_files in the task YAML")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            docs = json.loads(text)
        except json.JSONDecodeError as error:
            raise JdnaError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    else:
        docs = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise JdnaError(f"{path} line {number} is not valid JSON ({error.msg})") from None
    if not all(isinstance(doc, dict) for doc in docs):
        raise JdnaError(f"{path}: every document must be a JSON object")
    return docs


class _Renderer:
    """lm-eval's doc_to_* rules: a field name, a Jinja template, or a literal."""

    def __init__(self, file: Path) -> None:
        import jinja2

        self.file = file
        self.env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)

    def value(self, spec: Any, doc: dict[str, Any], what: str) -> Any:
        import jinja2

        if not isinstance(spec, str):
            return spec
        if spec in doc:
            return doc[spec]
        try:
            return self.env.from_string(spec).render(**doc)
        except jinja2.TemplateError as error:
            raise JdnaError(f"{self.file}: {what} '{spec}' fails on a document ({error})") from None

    def choices(self, spec: Any, doc: dict[str, Any]) -> list[str]:
        value = self.value(spec, doc, "doc_to_choice")
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise JdnaError(f"{self.file}: doc_to_choice renders to {value[:60]!r}, not a list") from None
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise JdnaError(f"{self.file}: doc_to_choice must give a list of at least two options")
        return [str(choice) for choice in value]

    def gold(self, spec: Any, doc: dict[str, Any], choices: list[str]) -> int:
        value = self.value(spec, doc, "doc_to_target")
        if isinstance(value, str):
            if value in choices:
                return choices.index(value)
            if value.strip().lstrip("-").isdigit():
                value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
            raise JdnaError(
                f"{self.file}: doc_to_target gives {value!r}, which is neither an option's index nor its text"
            )
        return value


def _items(
    docs: list[dict[str, Any]], split: str, kind: str, config: dict[str, Any], render: _Renderer
) -> list[Item]:
    items = []
    for index, doc in enumerate(docs):
        text = str(render.value(config.get("doc_to_text", ""), doc, "doc_to_text"))
        item_id = f"{split}/{index}"
        if kind == "multiple_choice":
            choices = render.choices(config.get("doc_to_choice"), doc)
            items.append(Item(id=item_id, question=text, choices=choices,
                              gold=render.gold(config.get("doc_to_target"), doc, choices)))
        else:
            target = render.value(config.get("doc_to_target"), doc, "doc_to_target")
            answers = [str(t) for t in target] if isinstance(target, list) else [str(target)]
            items.append(Item(id=item_id, question=text, answers=answers))
    return items


def _metrics(file: Path, kind: str, config: dict[str, Any]) -> list[str]:
    listed = [entry.get("metric") for entry in config.get("metric_list") or [] if isinstance(entry, dict)]
    if not listed:
        return list(METRICS[kind])
    unknown = [name for name in listed if name not in METRICS[kind]]
    if unknown:
        raise JdnaError(
            f"{file}: metric '{unknown[0]}' is not computed for {kind} tasks: use {', '.join(METRICS[kind])}"
        )
    return [name for name in METRICS[kind] if name in listed] + [n for n in METRICS[kind] if n not in listed]


def default_shots(path: str | Path) -> int:
    """The YAML's num_fewshot (0 when absent): what `jdna eval` uses when --shots is not given."""
    file = expand(path)
    value = _read_yaml(file).get("num_fewshot", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise JdnaError(f"{file}: num_fewshot must be a whole number of 0 or more, got {value!r}")
    return value


def load_lmeval(path: str | Path) -> Task:
    """Load an `lmeval:PATH.yaml` task (see the module docstring)."""
    file = expand(path)
    config = _read_yaml(file)
    output_type = config.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise JdnaError(
            f"{file}: output_type '{output_type}' is not supported: use {' or '.join(OUTPUT_TYPES)}"
        )
    kind = OUTPUT_TYPES[output_type]
    needed = ("doc_to_text", "doc_to_choice", "doc_to_target") if kind == "multiple_choice" else (
        "doc_to_text", "doc_to_target")
    missing = [key for key in needed if config.get(key) in (None, "")]
    if missing:
        raise JdnaError(f"{file}: {output_type} tasks need {missing[0]}: add it (a field name or a Jinja template)")
    files = _data_files(file, config)
    eval_split = config.get("test_split") or config.get("validation_split")
    if eval_split is None:
        eval_split = "train" if list(files) == ["train"] else None
    if eval_split not in files:
        raise JdnaError(
            f"{file}: the evaluated split '{eval_split}' has no data_files entry: set test_split to one of "
            f"{', '.join(files)}"
        )
    shot_split = config.get("fewshot_split") or config.get("training_split")
    if shot_split is None and config.get("validation_split") not in (None, eval_split):
        shot_split = config.get("validation_split")
    if shot_split is not None and shot_split not in files:
        raise JdnaError(f"{file}: fewshot split '{shot_split}' has no data_files entry: add it or drop the field")
    render = _Renderer(file)
    read: dict[str, Path] = {}

    def split_items(split: str) -> list[Item]:
        docs = []
        for data in files[split]:
            read[str(data.relative_to(file.parent)) if data.is_relative_to(file.parent) else str(data)] = data
            docs.extend(_read_docs(data))
        return _items(docs, split, kind, config, render)

    items = split_items(eval_split)
    if not items:
        raise JdnaError(f"{file}: split '{eval_split}' has no documents")
    train = split_items(shot_split) if shot_split is not None and shot_split != eval_split else []
    name = str(config.get("task") or file.stem)
    fmt = PromptFormat(
        input_prefix="",
        output_prefix="",
        answer_delimiter=str(config.get("target_delimiter", " ")),
        shot_separator=str(config.get("fewshot_delimiter", "\n\n")),
    )
    return Task(
        name=name,
        kind=kind,
        source="lmeval",
        items=items,
        train_items=train,
        metrics=_metrics(file, kind, config),
        knobs=["shots", "options"] if kind == "multiple_choice" else ["shots"],
        prompt_prefix=str(config.get("description", "")),
        description=f"lm-eval task {name} from {file.name}",
        prompt_format=fmt,
        provenance=f"{file}: {len(items)} documents of split {eval_split} evaluated, "
        f"{len(train)} of {shot_split or 'no split'} as demonstrations",
    ).read_from({file.name: file, **read})
