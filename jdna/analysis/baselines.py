"""Published human baselines, and the across-task difficulty they give: the normalised human–LLM gap.

The shipped table (jdna/data/human_baselines.csv) holds only figures with a citation: the GLUE human row
of Nangia & Bowman (2019), CommonsenseQA (Talmor et al., 2019), MMLU's estimated expert accuracy
(Hendrycks et al., 2021), and BIG-bench's human raters (Srivastava et al., 2022) for the BIG-bench tasks
jdna loads from its local tree. The BIG-bench task.json files carry no human scores; the raters' scores ship
as `task_human_eval.pkl` in the bigbench 1.0.0 sdist, and scripts/extract_bigbench_human.py turned them into
CSV rows once (reading the pickle with an unpickler that resolves only numpy's scalar and dtype): `task` is
the spec jdna records carry (`bigbench:NAME`), `metric` is `acc` for BIG-bench's multiple_choice_grade and
`exact_match` for exact_str_match, `human` the average rater, and the note gives the expert (max) rater.
jdna never unpickles anything at run time. Other tasks, and BIG-bench subtasks (the raters scored whole
tasks), need a user table (`--baselines FILE`), whose rows override the shipped ones. Scores are on the
scale of jdna's metrics: fractions (88.9% is 0.889).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jdna.errors import JdnaError
from jdna.io import sha256_file
from jdna.paths import expand

# Metrics whose values jdna reports in [-1, 1] / [0, 1]; a human score above 1 is a percentage typed in.
_BOUNDED = {"acc", "acc_norm", "accuracy", "f1", "matthews", "pearson", "spearman", "exact_match", "token_f1"}
# Multiple-choice accuracy (raw or length-normalised scoring) and classification accuracy are the same
# quantity for a human, so one published accuracy serves all three names.
_ALIASES = {"acc": "accuracy", "acc_norm": "accuracy", "accuracy": "accuracy"}


@dataclass(frozen=True)
class Baseline:
    task: str
    metric: str
    human: float
    citation: str
    note: str = ""


def _metric_key(metric: str) -> str:
    return _ALIASES.get(metric, metric)


def _row(task: object, metric: object, human: object, citation: object, note: object, where: str) -> Baseline:
    if not task or not metric:
        raise JdnaError(f"baseline table {where}: every row needs 'task' and 'metric'")
    try:
        value = float(human)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise JdnaError(f"baseline table {where}: human score {human!r} for {task} is not a number") from None
    if not math.isfinite(value):
        raise JdnaError(f"baseline table {where}: human score for {task} is not finite")
    if str(metric) in _BOUNDED and abs(value) > 1:
        raise JdnaError(
            f"baseline table {where}: {task} {metric} = {value} is above 1: give scores as fractions like jdna's "
            f"metrics ({value}% → {value / 100:g})"
        )
    return Baseline(str(task), str(metric), value, str(citation or ""), str(note or ""))


def _read_csv(text: str, where: str) -> list[Baseline]:
    reader = csv.DictReader(text.splitlines())
    missing = {"task", "metric", "human"} - set(reader.fieldnames or [])
    if missing:
        raise JdnaError(f"baseline table {where} lacks column(s) {', '.join(sorted(missing))}: "
                        "use columns task,metric,human[,citation,note]")
    return [
        _row(r.get("task"), r.get("metric"), r.get("human"), r.get("citation"), r.get("note"), where)
        for r in reader
    ]


def _read_json(text: str, where: str) -> list[Baseline]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise JdnaError(f"baseline table {where} is not valid JSON: {error.msg}") from error
    rows: list[Baseline] = []
    if isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                raise JdnaError(f"baseline table {where}: list entries must be objects with task, metric, human")
            rows.append(_row(item.get("task"), item.get("metric"), item.get("human"), item.get("citation"),
                             item.get("note"), where))
    elif isinstance(data, dict):
        # {"task": {"metric": score}} — the compact form for a handful of BIG-bench tasks.
        for task, metrics in data.items():
            if not isinstance(metrics, dict):
                raise JdnaError(f"baseline table {where}: '{task}' must map metric names to scores")
            rows.extend(_row(task, metric, value, "", "", where) for metric, value in metrics.items())
    else:
        raise JdnaError(f"baseline table {where} must be a JSON list of rows or an object task → {{metric: score}}")
    return rows


def shipped_baselines() -> list[Baseline]:
    """The published baselines that ship with jdna."""
    text = resources.files("jdna").joinpath("data/human_baselines.csv").read_text()
    return _read_csv(text, "human_baselines.csv")


def read_baselines(path: str | Path) -> list[Baseline]:
    """A user table: .csv with columns task,metric,human[,citation,note], or .json (list of rows, or
    {task: {metric: score}})."""
    file = expand(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise JdnaError(f"cannot read baseline table '{path}': {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise JdnaError(f"baseline table '{path}' is not UTF-8 text ({error.reason} at byte {error.start})") from None
    if file.suffix.lower() == ".json":
        return _read_json(text, str(path))
    if file.suffix.lower() == ".csv":
        return _read_csv(text, str(path))
    raise JdnaError(f"baseline table '{path}' must end in .csv or .json")


class BaselineTable:
    """Lookup of a human score by (task, metric); later tables override earlier ones."""

    def __init__(self, *tables: list[Baseline], inputs: dict[str, str] | None = None) -> None:
        # sha256 of each user table read, by file name: part of a difficulty record's content address.
        self.inputs = dict(inputs or {})
        self._rows: dict[tuple[str, str], Baseline] = {}
        for table in tables:
            for row in table:
                self._rows[(row.task, _metric_key(row.metric))] = row

    @classmethod
    def load(cls, user: str | Path | None = None) -> BaselineTable:
        if not user:
            return cls(shipped_baselines())
        rows = read_baselines(user)
        return cls(shipped_baselines(), rows, inputs={expand(user).name: sha256_file(expand(user))})

    def get(self, task: str, metric: str) -> Baseline | None:
        return self._rows.get((task, _metric_key(metric)))

    def rows(self) -> list[Baseline]:
        return list(self._rows.values())


def human_gap(human: float, dense: float, by: str = "dense") -> float:
    """Normalised human–LLM gap: how far the dense model is from people; larger = harder for the model.

    `by="dense"`: (human − dense) / dense, relative to what the model achieves (the paper's Fig. 5);
    `by="human"`: (human − dense) / human, relative to what people achieve (its Appendix B variant).
    """
    denominator = dense if by == "dense" else human
    if denominator == 0:
        who = "the dense model" if by == "dense" else "the human baseline"
        raise JdnaError(f"{who} scores 0, so the normalised human–LLM gap is undefined")
    return (human - dense) / abs(denominator)
