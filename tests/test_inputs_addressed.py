"""Content addresses cover every file a step reads: editing a task file, a calibration file or a baseline table
gives a fresh result instead of a stale cache hit (issue 16, part 1). Each edit keeps the file's size, so a
(size, mtime) memo of the hash could not tell the files apart either."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.cli import run
from tests.conftest import TEXT, WORDS
from tests.test_analysis import eval_record, monotone_drop, write_records

pytestmark = pytest.mark.usefixtures("one_thread")


def _ok(result) -> dict:
    assert result.code == 0, result.stderr
    return result.record


def _mc_rows(golds: list[int]) -> list[dict]:
    rng = random.Random(3)
    return [
        {"id": f"q{i}", "question": " ".join(rng.choice(WORDS) for _ in range(5)),
         "choices": [rng.choice(WORDS) for _ in range(4)], "gold": gold, "split": "test"}
        for i, gold in enumerate(golds)
    ]


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_editing_a_task_file_gives_a_fresh_eval(tiny_llama: Path, tmp_path: Path) -> None:
    task = tmp_path / "t.jsonl"
    _write_rows(task, _mc_rows([0] * 8))
    first = _ok(run("eval", str(tiny_llama), "--task", f"file:{task}"))
    assert first["protocol"]["inputs"] == {"t.jsonl": __import__("hashlib").sha256(task.read_bytes()).hexdigest()}
    predictions = json.loads(Path(first["path"]).read_text())["per_item"]["predictions"]
    # Same size, new golds: exactly the model's predictions, so the fresh accuracy is 1 (brute-force reference).
    size = task.stat().st_size
    _write_rows(task, _mc_rows(predictions))
    assert task.stat().st_size == size
    second = _ok(run("eval", str(tiny_llama), "--task", f"file:{task}"))
    assert second["cached"] is False and second["id"] != first["id"]
    assert second["metrics"]["acc"]["value"] == 1.0
    again = _ok(run("eval", str(tiny_llama), "--task", f"file:{task}"))
    assert again["cached"] is True and again["id"] == second["id"]


def _same_size_edit(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[1:] + text[0])  # rotated by one character: same size, different bytes


@pytest.mark.parametrize(
    "command",
    [
        ["prune", "--method", "wanda", "--sparsity", "0.5"],
        ["quantize", "--method", "gptq", "--bits", "4"],
    ],
)
def test_editing_the_calibration_file_gives_a_fresh_artifact(tiny_llama: Path, tmp_path: Path, command) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text(TEXT)
    args = [*command[:1], str(tiny_llama), *command[1:], "--calib", str(calib), "--calib-samples", "2",
            "--calib-seqlen", "16"]
    first = _ok(run(*args))
    assert _ok(run(*args))["cached"] is True
    _same_size_edit(calib)
    second = _ok(run(*args))
    assert second["cached"] is False and second["id"] != first["id"]


def test_editing_the_baselines_file_changes_the_difficulty_record(tmp_path: Path) -> None:
    records = []
    for task, dense in (("task_a", 0.9), ("task_b", 0.6), ("task_c", 0.3)):
        rank = {"task_a": 0, "task_b": 1, "task_c": 2}[task]
        records.append(eval_record(task, acc=dense, shots=None))
        records.append(eval_record(task, acc=dense * (1 - monotone_drop(0.5, rank)), kind="pruned", level=0.5,
                                   shots=None))
    directory = write_records(tmp_path / "records", records)
    table = tmp_path / "humans.csv"
    table.write_text("task,metric,human\ntask_a,acc,0.95\ntask_b,acc,0.90\ntask_c,acc,0.85\n")
    first = _ok(run("difficulty", str(directory), "--baselines", str(table), "--resamples", "50"))
    table.write_text("task,metric,human\ntask_a,acc,0.95\ntask_b,acc,0.70\ntask_c,acc,0.85\n")
    second = _ok(run("difficulty", str(directory), "--baselines", str(table), "--resamples", "50"))
    assert second["id"] != first["id"] and second["path"] != first["path"]
    gaps = json.loads(Path(second["path"]).read_text())["groups"][0]["levels"][0]["difficulties"]
    assert gaps[1] == pytest.approx((0.70 - 0.6) / 0.6)  # the edited human score, by hand
    assert second["inputs"]["baselines"] != first["inputs"]["baselines"]
