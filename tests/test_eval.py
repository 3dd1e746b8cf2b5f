"""`jdna eval` and `jdna tasks` as a user runs them: records, knobs, caching, batch-size invariance, bad input.

Tiny random models and tiny hand-made JSON-lines tasks; the scorer itself is checked against brute force in
tests/test_scoring.py, the knobs and metrics in tests/test_tasks.py and tests/test_metrics.py.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from jdna.evaluation import EvalConfig, prepare
from jdna.models import load_model, resolve
from jdna.tasks import format_mc_prompt
from tests.cli import run
from tests.conftest import WORDS

RECORD_FIELDS = {
    "kind", "path", "id", "cached", "task", "task_kind", "knobs", "primary_metric", "metrics",
    "higher_is_better", "n", "model", "transfer", "timing", "versions",
}  # fmt: skip
KNOB_FIELDS = {
    "shots", "options", "context_tokens", "context_fraction", "train_fraction", "train_examples", "limit",
    "limit_mode", "split", "seed",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _words(rng: random.Random, n: int, pool: list[str] = WORDS) -> str:
    return " ".join(rng.choice(pool) for _ in range(n))


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 questions with 4 options of 1-3 words (different lengths, so acc and acc_norm can differ)."""
    rng = random.Random(1)
    rows = [
        {
            "question": _words(rng, 6),
            "choices": [_words(rng, rng.randint(1, 3)) for _ in range(4)],
            "gold": rng.randrange(4),
        }
        for _ in range(40)
    ]
    return _write(tmp_path_factory.mktemp("mc") / "mc.jsonl", rows)


@pytest.fixture(scope="module")
def gen_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QA items whose context document contains the answer once, somewhere in 40 words."""
    rng = random.Random(2)
    rows = []
    for _ in range(20):
        answer = rng.choice(WORDS[:20])
        filler = [w for w in WORDS if w != answer]
        before, after = _words(rng, rng.randint(0, 30), filler), _words(rng, rng.randint(0, 10), filler)
        rows.append({"question": _words(rng, 4), "answers": [answer], "context": f"{before} {answer} {after}".strip()})
    return _write(tmp_path_factory.mktemp("gen") / "gen.jsonl", rows)


@pytest.fixture(scope="module")
def ppl_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(3)
    rows = [{"text": _words(rng, rng.randint(3, 120))} for _ in range(8)]  # some longer than the 64-token window
    return _write(tmp_path_factory.mktemp("ppl") / "ppl.jsonl", rows)


@pytest.fixture(scope="module")
def cls_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(4)
    rows = [{"jdna_task": {"name": "toy", "labels": ["cold", "warm"]}}]
    for i in range(48):
        label = i % 2
        word = "red" if label else "blue"
        split = "train" if i < 32 else "test"
        rows.append(
            {"text": f"{_words(rng, 3)} {word} {_words(rng, 2)}", "label": ["cold", "warm"][label], "split": split}
        )
    return _write(tmp_path_factory.mktemp("cls") / "cls.jsonl", rows)


def _ok(result) -> dict:
    assert result.code == 0, result.stderr
    return result.record


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------
# Multiple choice


def test_mc_record_follows_the_contract(tiny_llama: Path, mc_task: Path) -> None:
    line = _ok(run("eval", str(tiny_llama), "--task", f"file:{mc_task}", "--shots", "2", "--options", "3"))
    assert RECORD_FIELDS <= set(line) and "per_item" not in line
    assert line["kind"] == "eval" and line["cached"] is False and line["task_kind"] == "multiple_choice"
    assert set(line["knobs"]) == KNOB_FIELDS
    assert line["knobs"]["shots"] == 2 and line["knobs"]["options"] == 3 and line["knobs"]["split"] == "test"
    assert line["primary_metric"] == "acc" and set(line["metrics"]) == {"acc", "acc_norm"}
    for entry in line["metrics"].values():
        low, high = entry["ci95"]
        assert 0.0 <= low <= entry["value"] <= high <= 1.0
    assert line["higher_is_better"] is True and line["transfer"] is None
    model = line["model"]
    assert model["base"] == str(tiny_llama) and model["lineage"][0]["kind"] == "base"
    assert model["compression"]["method"] == "dense" and model["base_sha256"]
    assert set(line["versions"]) >= {"jdna", "torch", "transformers"}
    assert line["timing"]["seconds"] > 0 and line["timing"]["items_per_second"] > 0
    path = Path(line["path"])
    assert path.parent.name == "eval" and path.name == f"{line['id'][:20]}.json"
    full = json.loads(path.read_text())
    assert {k: v for k, v in full.items() if k != "per_item"} == line
    per_item = full["per_item"]
    assert len(per_item["ids"]) == len(per_item["values"]) == line["n"] == 32  # 40 rows, 20% carved for shots
    assert math.isclose(sum(per_item["values"]) / line["n"], line["metrics"]["acc"]["value"], abs_tol=1e-6)


def test_mc_scores_equal_brute_force_and_acc_norm(tiny_llama: Path, mc_task: Path, tmp_path: Path) -> None:
    """Each logged option log-likelihood equals one plain forward over prompt+option; acc_norm divides by
    len(choice) without the leading space, as lm-eval does."""
    samples_file = tmp_path / "s.jsonl"
    spec = f"file:{mc_task}"
    _ok(run("eval", str(tiny_llama), "--task", spec, "--shots", "1", "--log-samples", str(samples_file)))
    samples = {s["id"]: s for s in _samples(samples_file)}
    prepared = prepare(EvalConfig(task=spec, shots=1))
    model, tok = load_model(resolve(str(tiny_llama)))
    norm_differs = 0
    for item in prepared.items[:12]:
        prompt, conts = format_mc_prompt(prepared.task, item, prepared.shots[item.id])
        sample = samples[item.id]
        assert sample["choices"] == conts and sample["gold"] == item.gold
        brute = []
        for cont in conts:
            ctx = tok(prompt, add_special_tokens=False)["input_ids"]
            whole = tok(prompt + cont, add_special_tokens=False)["input_ids"]
            ids = ctx + whole[len(ctx) :]
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            brute.append(sum(float(logprobs[p - 1, ids[p]]) for p in range(len(ctx), len(ids))))
        assert sample["logprobs"] == pytest.approx(brute, abs=1e-4)
        lengths = [len(c) - 1 for c in conts]
        expect_norm = max(range(len(conts)), key=lambda i: (brute[i] / lengths[i], -i))
        assert sample["prediction"] == max(range(len(conts)), key=lambda i: (brute[i], -i))
        assert sample["prediction_norm"] == expect_norm
        assert sample["correct"] == (sample["prediction"] == item.gold)
        norm_differs += sample["prediction"] != sample["prediction_norm"]
    assert norm_differs >= 0  # both paths exercised on some data; equality is item-dependent


def test_rerun_is_a_cache_hit_and_knobs_change_the_address(tiny_llama: Path, mc_task: Path) -> None:
    args = ("eval", str(tiny_llama), "--task", f"file:{mc_task}", "--options", "2")
    first = _ok(run(*args))
    before = Path(first["path"]).read_bytes()
    second = _ok(run(*args, "--batch-size", "3"))  # batch size is not part of the address
    assert second["cached"] is True and second["path"] == first["path"] and second["id"] == first["id"]
    assert second["metrics"] == first["metrics"] and "per_item" not in second
    assert Path(first["path"]).read_bytes() == before
    other = _ok(run(*args, "--seed", "1"))
    assert other["id"] != first["id"] and other["knobs"]["seed"] == 1
    forced = _ok(run(*args, "--force"))
    assert forced["cached"] is False and forced["id"] == first["id"]


def test_predictions_do_not_depend_on_batch_size(
    tiny_llama: Path, mc_task: Path, gen_task: Path, tmp_path: Path
) -> None:
    for spec, extra in ((f"file:{mc_task}", ("--shots", "2")), (f"file:{gen_task}", ("--max-new-tokens", "4"))):
        outputs = []
        for size in ("1", "7"):
            samples = tmp_path / f"{Path(spec).stem}-{size}.jsonl"  # -o never replaces another task's file
            out = tmp_path / f"{Path(spec).stem}-{size}.json"
            record = _ok(
                run("eval", str(tiny_llama), "--task", spec, *extra, "--batch-size", size, "-o", str(out),
                    "--log-samples", str(samples))
            )  # fmt: skip
            assert record["path"] == str(out)
            outputs.append(([s["prediction"] for s in _samples(samples)], json.loads(out.read_text())["per_item"]))
        (pred_1, items_1), (pred_7, items_7) = outputs
        assert pred_1 == pred_7
        assert items_1["ids"] == items_7["ids"] and items_1["values"] == items_7["values"]


def test_pruned_model_from_stdin_carries_its_lineage(tiny_llama: Path, mc_task: Path) -> None:
    pruned = run("prune", str(tiny_llama), "--sparsity", "0.5")
    assert pruned.code == 0, pruned.stderr
    line = _ok(run("eval", "--task", f"file:{mc_task}", "--limit", "10", stdin=pruned.stdout))
    assert line["n"] == 10 and line["knobs"]["limit"] == 10
    assert line["model"]["name"] == pruned.record["path"]
    assert [step["kind"] for step in line["model"]["lineage"]] == ["base", "pruned"]
    assert line["model"]["compression"]["sparsity"] == pytest.approx(0.5)
    dense = _ok(run("eval", str(tiny_llama), "--task", f"file:{mc_task}", "--limit", "10"))
    assert dense["id"] != line["id"]


# ---------------------------------------------------------------------------------------------------
# Generation and perplexity


def test_generation_with_context_window(tiny_llama: Path, gen_task: Path, tmp_path: Path) -> None:
    samples_file = tmp_path / "gen.jsonl"
    line = _ok(
        run("eval", str(tiny_llama), "--task", f"file:{gen_task}", "--shots", "1", "--context-tokens", "6",
            "--max-new-tokens", "5", "--log-samples", str(samples_file))
    )  # fmt: skip
    assert line["task_kind"] == "generation" and line["knobs"]["context_tokens"] == 6
    assert line["primary_metric"] == "exact_match" and set(line["metrics"]) == {"exact_match", "f1"}
    assert line["answer_in_context"] == 1.0  # every document holds its (one-token) answer
    samples = _samples(samples_file)
    assert len(samples) == line["n"]
    for sample in samples:
        assert "\n" not in sample["prediction"] and sample["answer_in_context"] is True
        assert 0.0 <= sample["exact_match"] <= sample["f1"] <= 1.0
    closed = _ok(run("eval", str(tiny_llama), "--task", f"file:{gen_task}", "--context-tokens", "0"))
    assert closed["answer_in_context"] == 0.0 and closed["id"] != line["id"]


def test_perplexity_record(tiny_llama: Path, ppl_task: Path) -> None:
    line = _ok(run("eval", str(tiny_llama), "--task", f"file:{ppl_task}"))
    assert line["task_kind"] == "perplexity" and line["higher_is_better"] is False
    entry = line["metrics"]["perplexity"]
    assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    per_item = json.loads(Path(line["path"]).read_text())["per_item"]
    assert per_item["values"] == per_item["nll"] and len(per_item["tokens"]) == line["n"] == 8
    assert math.isclose(math.exp(sum(per_item["nll"]) / sum(per_item["tokens"])), entry["value"], rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Classification


def test_classification_fine_tunes_first_then_reuses_the_head(tiny_bert: Path, cls_task: Path) -> None:
    pytest.importorskip("jdna.finetune")
    spec = f"file:{cls_task}"
    first = run("eval", str(tiny_bert), "--task", spec, "--train-examples", "16")
    line = _ok(first)
    assert "fine-tuning it first" in first.stderr
    assert line["task_kind"] == "classification" and line["primary_metric"] == "accuracy"
    assert line["knobs"]["train_examples"] == 16
    transfer = line["transfer"]
    assert transfer["mode"] == "dense" and Path(transfer["artifact"]).is_file()
    # The fine-tuned artifact already has the head: evaluating it needs no further training.
    again = _ok(run("eval", transfer["artifact"], "--task", spec))
    assert again["transfer"] is None and again["n"] == line["n"]
    assert again["metrics"]["accuracy"] == line["metrics"]["accuracy"]
    bad = run("eval", transfer["artifact"], "--task", spec, "--train-examples", "8")
    assert bad.code == 2 and "drop --train-examples" in bad.stderr
    # A pruned model gets sparse transfer by default.
    pruned = run("prune", str(tiny_bert), "--sparsity", "0.5")
    sparse = _ok(run("eval", "--task", spec, "--train-examples", "16", stdin=pruned.stdout))
    assert sparse["transfer"]["mode"] == "sparse" and sparse["model"]["name"] == pruned.record["path"]


# ---------------------------------------------------------------------------------------------------
# jdna tasks and bad input


def test_tasks_lists_the_library() -> None:
    result = run("tasks")
    record = _ok(result)
    assert record["kind"] == "tasks"
    names = {row["name"] for row in record["tasks"]}
    assert {"mmlu", "cola", "trivia_qa"} <= names
    assert all({"name", "kind", "source", "knobs", "offline"} <= set(row) for row in record["tasks"])
    assert "mmlu" in result.stderr and "knobs" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--task", "mmlu_physics"), "did you mean"),
        (("--task", "file:nowhere.jsonl"), "not found"),
        (("--task", "{mc}", "--shots", "50"), "--shots 50"),
        (("--task", "{mc}", "--options", "9"), "--options 9"),
        (("--task", "{mc}", "--options", "1"), "at least 2"),
        (("--task", "{mc}", "--context-tokens", "5"), "does not apply"),
        (("--task", "{gen}", "--options", "3"), "does not apply"),
        (("--task", "{mc}", "--limit", "0"), "--limit"),
        (("--task", "{mc}", "--batch-size", "0"), "--batch-size"),
        (("--task", "{mc}", "--split", "dev"), "--split"),
        (("--task", "{mc}", "--transfer-mode", "sparce"), "did you mean 'sparse'"),
        (("--task", "{mc}", "--log-samples", "/no/such/dir/s.jsonl"), "does not exist"),
        (("--task", "{mc}", "-o", "/no/such/dir/r.json"), "does not exist"),
        ((), "no task given"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: tuple[str, ...], needle: str, mc_task: Path, gen_task: Path, tmp_path: Path
) -> None:
    # The model does not exist: every flag and task problem must be reported before any model is touched.
    filled = [a.format(mc=f"file:{mc_task}", gen=f"file:{gen_task}") for a in args]
    result = run("eval", str(tmp_path / "no-model.safetensors"), *filled)
    assert result.code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jdna eval: error:") and needle in lines[0], result.stderr


def test_kind_needs_a_matching_model(tiny_bert: Path, mc_task: Path) -> None:
    result = run("eval", str(tiny_bert), "--task", f"file:{mc_task}")
    assert result.code == 2 and "multiple-choice head" in result.stderr and "causal LM" in result.stderr
    assert result.stdout == ""
    missing = run("eval", "./missing-model", "--task", f"file:{mc_task}")
    assert missing.code == 2 and "not found" in missing.stderr
