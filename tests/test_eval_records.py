"""Evaluation's shared parts: one eval-record id recipe (jdna eval and fine-tuning's validation), one
classification forward pass, one model load for `jdna eval --tasks a,b`, and evaluation below fine-tuning."""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path

import pytest
import torch

import jdna.models
from jdna.errors import JdnaError
from jdna.evaluation import EvalConfig, run_eval
from jdna.evaluation.classifier import encode_items, forward_batches
from jdna.io import canonical_json, sha256_text
from jdna.models import load_model, resolve
from jdna.tasks import load_task
from tests.cli import run
from tests.conftest import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _mc_file(path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [
        {
            "question": " ".join(rng.choice(WORDS) for _ in range(5)),
            "choices": [rng.choice(WORDS) for _ in range(3)],
            "gold": rng.randrange(3),
        }
        for _ in range(12)
    ]
    return _write(path, rows)


@pytest.fixture(scope="module")
def cls_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    rows: list[dict] = [{"jdna_task": {"name": "toy", "labels": ["cold", "warm"]}}]
    for i in range(40):
        label = i % 2
        text = f"{rng.choice(WORDS)} {'red' if label else 'blue'} {rng.choice(WORDS)} {rng.choice(WORDS)}"
        rows.append({"text": text, "label": ["cold", "warm"][label], "split": "train" if i < 24 else "test"})
    return _write(tmp_path_factory.mktemp("cls") / "cls.jsonl", rows)


def _without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timing", "cached", "path", "load_seconds")}


def test_several_tasks_load_the_model_once_and_match_separate_runs(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _mc_file(tmp_path / "a.jsonl", 1), _mc_file(tmp_path / "b.jsonl", 2)
    loads: list[str] = []
    real = jdna.models.load_model

    def counting(ref, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(ref.identity)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(jdna.models, "load_model", counting)
    together = run("eval", str(tiny_llama), "--tasks", f"file:{first},file:{second}", "--options", "2")
    assert together.code == 0, together.stderr
    records = [json.loads(line) for line in together.stdout.splitlines() if line.strip()]
    assert len(records) == 2 and len(loads) == 1, loads
    assert "reusing" in together.stderr
    for record, task in zip(records, (first, second)):
        full_together = json.loads(Path(record["path"]).read_text())
        alone = run("eval", str(tiny_llama), "--task", f"file:{task}", "--options", "2", "--force")
        assert alone.code == 0, alone.stderr
        assert alone.record["id"] == record["id"]
        full_alone = json.loads(Path(alone.record["path"]).read_text())
        assert _without_timing(full_alone) == _without_timing(full_together)
    assert len(loads) == 3  # one load per separate run


def test_finetune_validation_record_has_the_eval_id_recipe(tiny_bert: Path, cls_file: Path) -> None:
    args = (
        "finetune", str(tiny_bert), "--task", f"file:{cls_file}", "--mode", "dense", "--epochs", "1",
        "--batch-size", "8", "--eval-limit", "10",
    )  # fmt: skip
    result = run(*args)
    assert result.code == 0, result.stderr
    finetuned = result.record
    record = json.loads(Path(finetuned["eval_record"]).read_text())
    knobs = {
        "shots": 0, "options": None, "context_tokens": None, "train_fraction": None, "train_examples": 24,
        "limit": 10, "limit_mode": "sample", "split": "test", "seed": 0,
    }  # fmt: skip
    # artifact_id by hand: sha256 of the canonical JSON of {format, parent, operation, params}, the protocol
    # version among the params as in every `jdna eval` record.
    payload = {
        "format": 1,
        "parent": finetuned["id"],
        "operation": "eval",
        "params": {"task": f"file:{cls_file}", "knobs": knobs, "protocol": 1},
    }
    assert record["knobs"] == knobs
    assert record["id"] == sha256_text(canonical_json(payload))
    assert Path(finetuned["eval_record"]).name == f"{record['id'][:20]}.json"
    assert record["kind"] == "eval" and record["model"]["id"] == finetuned["id"]
    assert record["metrics"] == finetuned["metrics"]
    # The step is cached while the record it names exists; without it, it is redone (same id), not half-served.
    again = run(*args)
    assert again.code == 0 and again.record["cached"] is True and "cache hit" in again.stderr
    Path(finetuned["eval_record"]).unlink()
    redone = run(*args)
    assert redone.code == 0 and redone.record["cached"] is False and redone.record["id"] == finetuned["id"]
    assert json.loads(Path(redone.record["eval_record"]).read_text())["id"] == record["id"]


def test_classification_without_a_transfer_step_says_so(tiny_bert: Path, cls_file: Path) -> None:
    with pytest.raises(JdnaError, match="no fine-tuning step"):
        run_eval(resolve(str(tiny_bert)), EvalConfig(task=f"file:{cls_file}", train_examples=8))


def test_forward_batches_equal_one_item_at_a_time(tiny_bert: Path, cls_file: Path) -> None:
    task = load_task(f"file:{cls_file}")
    ref = resolve(str(tiny_bert))
    model, tokenizer = load_model(ref, head={"type": "sequence_classification", "num_labels": 2})
    data = encode_items(task.items, tokenizer, 64, regression=False)
    order = sorted(range(len(data)), key=lambda i: -len(data.input_ids[i]))  # mixed lengths: padding in use
    batches = [order[i : i + 5] for i in range(0, len(order), 5)]
    device = torch.device("cpu")
    seen = []
    for indices, logits, labels in forward_batches(model, data, batches, 0, device):
        for row, index in enumerate(indices):
            ids = torch.tensor([data.input_ids[index]])
            types = torch.tensor([data.token_type_ids[index]]) if data.token_type_ids is not None else None
            with torch.no_grad():
                alone = model(input_ids=ids, **({"token_type_ids": types} if types is not None else {})).logits[0]
            torch.testing.assert_close(logits[row], alone.float(), rtol=1e-4, atol=1e-5)
            assert int(labels[row]) == data.labels[index]
            seen.append(index)
    assert sorted(seen) == list(range(len(data)))
    assert torch.is_grad_enabled()  # the pass never leaves the caller without gradients


def _imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """Every import in a file, function-level ones included: (module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_evaluation_never_imports_finetune_and_no_private_names_cross_modules() -> None:
    evaluation = sorted((ROOT / "jdna" / "evaluation").glob("*.py"))
    assert evaluation
    for path in evaluation:
        for module, _ in _imported_modules(path):
            assert not module.startswith("jdna.finetune"), f"{path.name} imports {module}"
    owned = [*evaluation, *(ROOT / "jdna" / "finetune").glob("*.py"), ROOT / "jdna" / "lmc.py"]
    owned.append(ROOT / "jdna" / "scoring.py")
    for path in owned:
        for module, names in _imported_modules(path):
            private = [name for name in names if name.startswith("_") and name != "__future__"]
            assert not (module.startswith("jdna") and private), f"{path.name} imports {private} from {module}"


def test_weights_are_measured_before_the_model_is_loaded(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measuring a plain checkpoint's zeros reads its weights file; done while the model is held (as --tasks holds
    it) the read doubled eval's peak memory on the 1.1B stand-in (bench/bench_scale.py: 2.0x vs 1.14x)."""
    import jdna.sparsity

    events: list[str] = []
    real_load, real_measure = jdna.models.load_model, jdna.sparsity.measure_directory

    def loading(ref, *args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("load")
        return real_load(ref, *args, **kwargs)

    def measuring(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("measure")
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(jdna.models, "load_model", loading)
    monkeypatch.setattr(jdna.sparsity, "measure_directory", measuring)
    jdna.sparsity._DETECTED.clear()
    task = _mc_file(tmp_path / "a.jsonl", 1)
    done = run("eval", str(tiny_llama), "--task", f"file:{task}", "--options", "2")
    assert done.code == 0, done.stderr
    assert events == ["measure", "load"], events
