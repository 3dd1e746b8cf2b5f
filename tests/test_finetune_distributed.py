"""jdna finetune under torchrun: two CPU processes (gloo) train exactly like one process with the same global batch.

Why the runs must agree bit for bit: ``--batch-size 2B`` on 2 processes gives each process one half (B examples)
of every micro-batch; a single process with ``--batch-size B --grad-accum 2`` sees the same two halves, in the
same order, as the two micro-batches of each step (the seeded schedule depends on neither). Each half's mean
loss is weighted by its share of the step's loss units -- examples for classification, answer tokens for the LM
objective, counted over the whole step -- so both runs compute the same per-half gradients (same shapes, same
kernels, one thread), and the step's gradient is their sum either way: ``g0 + g1`` by accumulation on one
process, by a summing all-reduce on two (a float sum of two terms does not depend on their order). The same
gradients give the same AdamW steps, so weights, loss curve and validation metrics match exactly. (With dropout
the processes draw different masks than one process would, so the tiny BERT here has dropout 0; the tiny Llama
has none. The LM task's answers are 1-3 tokens long, so the halves hold different numbers of loss units.)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jdna.artifact import read_artifact
from jdna.progress import Reporter
from tests.cli import run
from tests.conftest import WORDS, InterruptAt, build_tiny_bert, prune_path

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "red"]
ANSWERS = ["cat", "dog red", "blue green three"]  # gold answers of 1, 2 and 3 tokens
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def classification_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 labels, 60 train rows and 30 test rows."""
    rng = random.Random(0)
    rows = []
    for split, count in (("train", 60), ("test", 30)):
        for i in range(count):
            label = i % 3
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))] + [LABELS[label]] * 2
            rng.shuffle(words)
            rows.append({"id": f"{split}{i}", "text": " ".join(words), "label": LABELS[label], "split": split})
    return _write(tmp_path_factory.mktemp("cls") / "toy.jsonl", rows)


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multiple choice whose gold answers are 1-3 tokens: 24 train rows, 24 test rows."""
    rng = random.Random(1)
    filler = [w for w in WORDS if w not in " ".join(ANSWERS).split()]
    rows = []
    for i in range(48):
        gold = i % 3
        question = " ".join(rng.choice(filler) for _ in range(rng.randint(3, 6))) + f" {LABELS[gold]}"
        rows.append({"id": f"q{i}", "question": question, "choices": ANSWERS, "gold": gold,
                     "split": "train" if i < 24 else "test"})
    return _write(tmp_path_factory.mktemp("mc") / "mc.jsonl", rows)


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"))
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _torchrun(*args: str, module: str = "jdna") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.run(
        [*TORCHRUN, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def _one_record(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got {stdout!r}"
    return json.loads(lines[0])


def _assert_same_training(distributed: dict, single: dict) -> None:
    a, b = read_artifact(Path(distributed["path"])), read_artifact(Path(single["path"]))
    weights_a, weights_b = load_file(distributed["path"]), load_file(single["path"])
    names = [name for name in weights_a if name.startswith("weight.")]
    assert names and sorted(names) == sorted(n for n in weights_b if n.startswith("weight."))
    for name in names:  # bit for bit (see the module docstring)
        assert torch.equal(weights_a[name].view(torch.uint8), weights_b[name].view(torch.uint8)), name
    assert a.header["stats"]["train_loss"] == b.header["stats"]["train_loss"]
    assert a.header["stats"]["steps"] == b.header["stats"]["steps"]
    assert distributed["metrics"] == single["metrics"]
    assert distributed["id"] != single["id"]  # (different --batch-size/--grad-accum: different runs by name)


def _check_launch(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    record = _one_record(result.stdout)
    assert record["world_size"] == 2
    training = read_artifact(Path(record["path"])).header["training"]
    assert training == {"world_size": 2, "backend": "gloo", "micro_batch": training["micro_batch"],
                        "micro_batch_per_process": training["micro_batch"] // 2, "replicas_identical": True}
    assert record["invariants"] == {**record["invariants"], "checked": "exact_zeros", "passed": True,
                                    "violations": 0, "optimizer_state_violations": 0}
    assert result.stderr.count("data-parallel over 2 processes (gloo)") == 1  # only rank 0 logs
    shown = run("info", record["path"])
    assert shown.code == 0 and "data-parallel over 2 processes (gloo)" in shown.stderr + shown.stdout
    assert "replicas identical" in shown.stderr + shown.stdout
    return record


def test_classification_matches_one_process(bert_without_dropout: Path, classification_file: Path,
                                            tmp_path: Path) -> None:
    pruned = prune_path(bert_without_dropout)
    # 49 = 4 x 12 + 1: each epoch's last micro-batch holds one example, so process 1 has none and joins the
    # all-reduce with a weight-0 example (one process: that step is a lone 1-example micro-batch).
    common = ["--task", f"file:{classification_file}", "--mode", "sparse", "--epochs", "2", "--lr", "1e-3",
              "--eval-limit", "20", "--train-examples", "49"]
    launched = _torchrun("finetune", pruned, *common, "--batch-size", "12", "-o", str(tmp_path / "dp.safetensors"))
    record = _check_launch(launched)
    assert record["objective"] == "classification" and record["sparsity"] == pytest.approx(0.5, abs=0.01)
    single = run("finetune", pruned, *common, "--batch-size", "6", "--grad-accum", "2")
    assert single.code == 0, single.stderr
    assert single.record["world_size"] == 1
    _assert_same_training(record, single.record)


def test_answer_token_objective_matches_one_process(tiny_llama: Path, mc_file: Path, tmp_path: Path) -> None:
    pruned = prune_path(tiny_llama)
    common = ["--task", f"file:{mc_file}", "--mode", "sparse", "--epochs", "2", "--lr", "1e-3", "--eval-limit", "12"]
    launched = _torchrun("finetune", pruned, *common, "--batch-size", "8", "-o", str(tmp_path / "dp.safetensors"))
    record = _check_launch(launched)
    assert record["objective"] == "answer_tokens"
    stats = read_artifact(Path(record["path"])).header["stats"]
    assert stats["answer_tokens"] > stats["train_examples"]  # answers of several tokens: unequal shards
    single = run("finetune", pruned, *common, "--batch-size", "4", "--grad-accum", "2")
    assert single.code == 0, single.stderr
    _assert_same_training(record, single.record)


def test_interrupted_run_resumes_on_every_process(bert_without_dropout: Path, classification_file: Path,
                                                  tmp_path: Path) -> None:
    """Rank 0 gets SIGINT after step 5: both processes stop after step 6 (the next step's agreement), rank 0
    writes one checkpoint with both processes' RNG states, and rerunning resumes it on both, ending exactly
    where an uninterrupted data-parallel run ends."""
    pruned = prune_path(bert_without_dropout)
    module = "tests.test_finetune_distributed"
    launched = _torchrun("resume", pruned, str(classification_file), str(tmp_path), module=module)
    assert launched.returncode == 0, launched.stderr[-3000:]
    outcome = _one_record(launched.stdout)
    assert outcome["interrupted"] == [True, True]
    assert outcome["checkpoint_step"] == 6 and outcome["resumed_from_step"] == 6
    assert {"rng.rank0.torch", "rng.rank1.torch", "rng.torch"} <= set(outcome["checkpoint_rng"])
    assert outcome["checkpoint_removed"] and outcome["same_tensors"] and outcome["same_loss_curve"]
    assert outcome["same_metrics"]


def _resume_worker(pruned: str, task: str, out: Path) -> None:
    """Run under torchrun: an uninterrupted run, an interrupted one (rank 0 signalled), then its resumption."""
    from jdna.finetune import FinetuneConfig, Interrupted, run_finetune
    from jdna.finetune.distributed import data_parallel
    from jdna.models import resolve

    config = FinetuneConfig(task=f"file:{task}", mode="sparse", epochs=2, batch_size=12, lr=1e-3, eval_limit=20,
                            checkpoint_every=4)
    with data_parallel() as dist:
        ref = resolve(pruned)
        straight = run_finetune(ref, config, out / "straight.safetensors")
        resumed_path = out / "resumed.safetensors"
        reporter = InterruptAt(5) if dist.is_main else Reporter()
        try:
            run_finetune(ref, config, resumed_path, reporter=reporter)
            interrupted = False
        except Interrupted:
            interrupted = True
        checkpoint = out / "resumed.safetensors.ckpt"
        state = json.loads((checkpoint / "state.json").read_text()) if dist.is_main else {}
        rng = sorted(k for k in load_file(str(checkpoint / state["tensors"])) if k.startswith("rng.")) if state else []
        flags = dist.all_gather_object(interrupted)
        dist.barrier()  # everyone has looked at the checkpoint before the resumed run removes it
        resumed = run_finetune(ref, config, resumed_path)
        if dist.is_main:
            a, b = read_artifact(Path(straight["path"])), read_artifact(resumed_path)
            print(json.dumps({
                "interrupted": flags,
                "checkpoint_step": state["step"],
                "checkpoint_rng": rng,
                "resumed_from_step": b.header["stats"]["resumed_from_step"],
                "checkpoint_removed": not checkpoint.exists(),
                "same_tensors": a.header["tensors_sha256"] == b.header["tensors_sha256"],
                "same_loss_curve": a.header["stats"]["train_loss"] == b.header["stats"]["train_loss"],
                "same_metrics": straight["metrics"] == resumed["metrics"],
            }))


if __name__ == "__main__":  # torchrun ... -m tests.test_finetune_distributed resume PRUNED TASK OUT
    torch.set_num_threads(1)
    if sys.argv[1] == "resume":
        _resume_worker(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
