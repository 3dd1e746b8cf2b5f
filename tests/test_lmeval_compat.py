"""lm-evaluation-harness conventions on `jdna eval`: --tasks, --num-fewshot, fractional --limit, --limit-mode, the
lm-eval `results` block, `lmeval:PATH.yaml` tasks and full prompts in --log-samples (issue 16, part 4)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from tests.cli import run
from tests.conftest import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")

N_DOCS = 8


def _ok(result) -> list[dict]:
    assert result.code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    rng = random.Random(5)
    return [
        {"query": " ".join(rng.choice(WORDS) for _ in range(5)),
         "choices": [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2))) for _ in range(3)],
         "gold": rng.randrange(3)}
        for _ in range(N_DOCS)
    ]


@pytest.fixture()
def lmeval_task(tmp_path: Path, docs: list[dict]) -> Path:
    """The YAML shape of /work/shared/bench-notes.md, over local JSON-lines files."""
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    shots = [{"query": "one two three", "choices": ["red", "blue", "green"], "gold": 1},
             {"query": "cat dog", "choices": ["king", "queen", "river"], "gold": 0}]
    (tmp_path / "fewshot.jsonl").write_text("".join(json.dumps(d) + "\n" for d in shots))
    path = tmp_path / "my_mc.yaml"
    path.write_text(
        "task: my_mc_task\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: test.jsonl\n    validation: fewshot.jsonl\n"
        "test_split: test\nfewshot_split: validation\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{query}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: gold\n"
        'target_delimiter: " "\n'
        'fewshot_delimiter: "\\n\\n"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return path


def test_lmeval_yaml_scores_like_the_same_items_as_a_jsonl_task(
    tiny_llama: Path, tmp_path: Path, lmeval_task: Path, docs: list[dict]
) -> None:
    samples = tmp_path / "samples.jsonl"
    (record,) = _ok(run("eval", str(tiny_llama), "--task", f"lmeval:{lmeval_task}", "--log-samples", str(samples)))
    # The same questions as a jdna JSON-lines task: its default prompt is "Question: q\nAnswer:" + " choice".
    as_jsonl = tmp_path / "same.jsonl"
    as_jsonl.write_text("".join(
        json.dumps({"id": f"q{i}", "question": d["query"], "choices": d["choices"], "gold": d["gold"],
                    "split": "test"}) + "\n" for i, d in enumerate(docs)))
    (reference,) = _ok(run("eval", str(tiny_llama), "--task", f"file:{as_jsonl}"))
    assert record["metrics"] == reference["metrics"] and record["n"] == N_DOCS
    full = json.loads(Path(record["path"]).read_text())
    ref_full = json.loads(Path(reference["path"]).read_text())
    assert full["per_item"]["predictions"] == ref_full["per_item"]["predictions"]
    # --log-samples keeps the whole prompt, exactly as lm-eval builds it.
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [s["prompt"] for s in lines] == [f"Question: {d['query']}\nAnswer:" for d in docs]
    assert lines[0]["choices"] == [" " + c for c in docs[0]["choices"]]
    # The lm-eval results block, keyed by the YAML's task name; stderr by hand (sample sd over sqrt(n)).
    acc = np.array(full["per_item"]["values"])
    entry = record["results"]["my_mc_task"]
    assert entry["acc,none"] == record["metrics"]["acc"]["value"] == pytest.approx(acc.mean())
    assert entry["acc_stderr,none"] == pytest.approx(acc.std(ddof=1) / math.sqrt(len(acc)))
    assert "acc_norm,none" in entry and record["n-samples"]["my_mc_task"] == {"original": N_DOCS, "effective": N_DOCS}
    # A script written for lm-eval's results file reads the record file unchanged.
    assert json.loads(Path(record["path"]).read_text())["results"]["my_mc_task"]["acc,none"] == entry["acc,none"]


def test_lmeval_yaml_fewshot_prompt_and_num_fewshot_default(tiny_llama: Path, tmp_path: Path, lmeval_task: Path,
                                                            docs: list[dict]) -> None:
    lmeval_task.write_text(lmeval_task.read_text() + "num_fewshot: 1\ndescription: \"Pick one.\\n\\n\"\n")
    samples = tmp_path / "s.jsonl"
    (record,) = _ok(run("eval", str(tiny_llama), "--task", f"lmeval:{lmeval_task}", "--log-samples", str(samples),
                        "--limit", "2", "--limit-mode", "first"))
    assert record["knobs"]["shots"] == 1 and record["n-shot"]["my_mc_task"] == 1
    demos = {"Question: one two three\nAnswer: blue", "Question: cat dog\nAnswer: king"}
    for sample, doc in zip((json.loads(x) for x in samples.read_text().splitlines()), docs[:2]):
        head, query = sample["prompt"].rsplit("\n\n", 1)
        assert head.startswith("Pick one.\n\n") and head[len("Pick one.\n\n"):] in demos
        assert query == f"Question: {doc['query']}\nAnswer:"
    # --num-fewshot (lm-eval's flag) overrides the YAML, as in lm-eval.
    (zero,) = _ok(run("eval", str(tiny_llama), "--task", f"lmeval:{lmeval_task}", "--num-fewshot", "0"))
    assert zero["knobs"]["shots"] == 0


def test_lmeval_yaml_errors_say_what_is_wrong(tmp_path: Path, lmeval_task: Path, tiny_llama: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(lmeval_task.read_text().replace("dataset_path: json", "dataset_path: cais/mmlu"))
    result = run("eval", str(tiny_llama), "--task", f"lmeval:{bad}")
    assert result.code == 2 and "dataset_path: json" in result.stderr
    result = run("eval", str(tiny_llama), "--task", f"lmeval:{tmp_path / 'missing.yaml'}")
    assert result.code == 2 and "not found" in result.stderr
    bad.write_text(lmeval_task.read_text().replace("doc_to_target: gold", "doc_to_target: 7"))
    result = run("eval", str(tiny_llama), "--task", f"lmeval:{bad}")
    assert result.code == 2 and "doc_to_target" in result.stderr
    bad.write_text(lmeval_task.read_text().replace('doc_to_choice: "{{choices}}"\n', ""))
    result = run("eval", str(tiny_llama), "--task", f"lmeval:{bad}")
    assert result.code == 2 and "need doc_to_choice" in result.stderr


def test_tasks_flag_runs_each_task_and_prints_a_line_each(tiny_llama: Path, tmp_path: Path, lmeval_task: Path,
                                                          docs: list[dict]) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"question": d["query"], "choices": d["choices"], "gold": d["gold"],
                                         "split": "test"}) + "\n" for d in docs))
    samples = tmp_path / "samples.jsonl"
    records = _ok(run("eval", str(tiny_llama), "--tasks", f"file:{jsonl},lmeval:{lmeval_task}", "--num-fewshot",
                      "0", "--limit", "0.25", "--log-samples", str(samples)))
    assert [r["task"] for r in records] == [f"file:{jsonl}", f"lmeval:{lmeval_task}"]
    assert all(r["n"] == math.ceil(N_DOCS * 0.25) for r in records)  # a fraction rounds up, as lm-eval's
    assert {r["id"] for r in records} != {records[0]["id"]}
    assert sorted(p.name for p in tmp_path.glob("samples.*.jsonl")) == sorted(
        f"samples.{name}.jsonl" for name in ("file_" + str(jsonl).replace("/", "_").strip("_"),
                                             "lmeval_" + str(lmeval_task).replace("/", "_").strip("_")))
    result = run("eval", str(tiny_llama), "--tasks", f"file:{jsonl},lmeval:{lmeval_task}", "-o",
                 str(tmp_path / "r.json"))
    assert result.code == 2 and "several tasks" in result.stderr and result.stdout == ""


def test_limit_modes_first_and_sample(tiny_llama: Path, tmp_path: Path, docs: list[dict]) -> None:
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"q{i}", "question": d["query"], "choices": d["choices"],
                                         "gold": d["gold"], "split": "test"}) + "\n" for i, d in enumerate(docs)))

    def ids(*flags: str) -> list[str]:
        (record,) = _ok(run("eval", str(tiny_llama), "--task", f"file:{jsonl}", *flags))
        return json.loads(Path(record["path"]).read_text())["per_item"]["ids"]

    assert ids("--limit", "3", "--limit-mode", "first") == ["q0", "q1", "q2"]
    sample = ids("--limit", "3")
    assert len(sample) == 3 and set(sample) <= {f"q{i}" for i in range(N_DOCS)}
    assert set(sample) <= set(ids("--limit", "5"))  # nested in N
    for bad, words in (("0", "below 1"), ("1.5", "neither a whole number"), ("x", "not a number")):
        result = run("eval", str(tiny_llama), "--task", f"file:{jsonl}", "--limit", bad)
        assert result.code == 2 and words in result.stderr
    result = run("eval", str(tiny_llama), "--task", f"file:{jsonl}", "--limit", "2", "--limit-mode", "frist")
    assert result.code == 2 and "did you mean 'first'" in result.stderr


def test_lmeval_generation_yaml_matches_the_same_items_as_a_jsonl_task(tiny_llama: Path, tmp_path: Path) -> None:
    rng = random.Random(9)
    rows = [{"q": " ".join(rng.choice(WORDS) for _ in range(4)), "a": rng.choice(WORDS)} for _ in range(5)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_file = tmp_path / "qa.yaml"
    yaml_file.write_text(
        "task: my_qa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: qa.jsonl\n"
        "test_split: test\noutput_type: generate_until\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_target: a\nmetric_list:\n  - metric: exact_match\n'
    )
    samples = tmp_path / "s.jsonl"
    (record,) = _ok(run("eval", str(tiny_llama), "--task", f"lmeval:{yaml_file}", "--max-new-tokens", "3",
                        "--log-samples", str(samples)))
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({"id": f"q{i}", "question": r["q"], "answers": [r["a"]], "split": "test"})
                            + "\n" for i, r in enumerate(rows)))
    (reference,) = _ok(run("eval", str(tiny_llama), "--task", f"file:{same}", "--max-new-tokens", "3"))
    assert record["task_kind"] == "generation" and record["metrics"] == reference["metrics"]
    predictions = [json.loads(line)["prediction"] for line in samples.read_text().splitlines()]
    assert predictions == json.loads(Path(reference["path"]).read_text())["per_item"]["predictions"]
    assert record["results"]["my_qa"]["exact_match,none"] == reference["metrics"]["exact_match"]["value"]
