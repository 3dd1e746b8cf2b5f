"""jdna finetune on multiple-choice and QA tasks: a causal LM trained on the answer tokens only.

Tiny Llama (tests/conftest.py), tiny synthetic task files; no network, nothing from ~/.cache.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from jdna.artifact import read_artifact
from jdna.errors import JdnaError
from jdna.finetune import FinetuneConfig, Interrupted, load_finetune_task, run_finetune, training_items
from jdna.finetune.data import Schedule
from jdna.finetune.lm import LM_HEAD, encode_lm_items, mean_answer_loss, prompt_answer_pairs
from jdna.finetune.loop import TrainSettings, train
from jdna.finetune.masking import MaskEnforcer
from jdna.masks import effective_masks
from jdna.models import canonical_parameters, load_model, resolve
from jdna.tasks import format_mc_prompt, format_prompt
from tests.cli import run
from tests.conftest import WORDS, InterruptAt, make_tokenizer, model_parameters, prune_record

KEYS = ["cat", "dog", "red"]
FAST = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--eval-limit", "16"]
FILLER = [w for w in WORDS if w not in KEYS]


pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, rows: list[dict], header: dict | None = None) -> Path:
    lines = ([json.dumps({"jdna_task": header})] if header else []) + [json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Memorisable multiple choice: the question's last word is the gold option. 24 train, 24 test rows."""
    rng = random.Random(0)
    rows = []
    for i in range(48):
        gold = i % 3
        question = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 6))) + f" {KEYS[gold]}"
        rows.append({"id": f"q{i}", "question": question, "choices": KEYS, "gold": gold,
                     "split": "train" if i < 24 else "test"})
    return _write(tmp_path_factory.mktemp("mc") / "mc.jsonl", rows)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QA without a split field (carved by seeded hash): the answer is the question's last word."""
    rng = random.Random(1)
    rows = []
    for i in range(30):
        key = KEYS[i % 3]
        rows.append({"id": f"g{i}", "question": " ".join(rng.choice(FILLER) for _ in range(4)) + f" {key}",
                     "answers": [key, "x"]})
    return _write(tmp_path_factory.mktemp("qa") / "qa.jsonl", rows)


def _bpe_tokenizer(directory: Path):
    """A small byte-level BPE tokenizer: " cat" is one token, so the answer delimiter merges into it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS)] * 20 + ["Question: what\nAnswer: cat dog red"] * 20
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_labels_mask_exactly_the_prompt(mc_file: Path, qa_file: Path, tmp_path: Path) -> None:
    task = load_finetune_task(f"file:{mc_file}")
    items = task.train_items[:6]
    bpe = _bpe_tokenizer(tmp_path / "bpe")
    pairs = prompt_answer_pairs(items, task, bpe, add_bos=False)
    for item, (prompt_ids, answer_ids) in zip(items, pairs, strict=True):
        prompt, continuations = format_mc_prompt(task, item)
        whole = prompt + continuations[item.gold]
        # Reference by character offsets: the answer tokens are those that start at or after the prompt's end.
        encoded = bpe(whole, add_special_tokens=False, return_offsets_mapping=True)
        n_answer = sum(start >= len(prompt) for start, _ in encoded["offset_mapping"])
        assert n_answer == 1  # " cat" is one token, delimiter included
        assert prompt_ids + answer_ids == encoded["input_ids"]
        assert len(answer_ids) == n_answer and bpe.decode(answer_ids) == continuations[item.gold]

    data = encode_lm_items(items, task, bpe, max_length=128)
    batch = data.collate(list(range(len(items))), pad_id=bpe.pad_token_id)
    for row, (prompt_ids, answer_ids) in enumerate(pairs):
        n = len(prompt_ids) + len(answer_ids)
        labels = batch["labels"][row].tolist()
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        assert labels[len(prompt_ids) : n] == answer_ids
        assert labels[n:] == [-100] * (len(labels) - n)  # padding
        assert batch["attention_mask"][row].sum() == n
    assert data.units(range(len(items))) == len(items)

    # QA with the word-level tokenizer: words are tokens, "\n" is invisible, so EOS ends the answer.
    words, _ = make_tokenizer(tmp_path / "words")
    qa = load_finetune_task(f"file:{qa_file}")
    qa_pairs = prompt_answer_pairs(qa.train_items, qa, words, add_bos=False)
    for item, (prompt_ids, answer_ids) in zip(qa.train_items, qa_pairs, strict=True):
        reference_prompt = words(format_prompt(qa, item), add_special_tokens=False)["input_ids"]
        assert prompt_ids == reference_prompt
        assert answer_ids == [words.convert_tokens_to_ids(item.answers[0]), words.eos_token_id]


def test_left_truncation_keeps_the_answer(mc_file: Path, tmp_path: Path) -> None:
    task = load_finetune_task(f"file:{mc_file}")
    tokenizer, _ = make_tokenizer(tmp_path / "words")
    items = task.train_items[:4]
    (prompt, answer), *_ = prompt_answer_pairs(items, task, tokenizer, add_bos=False)
    assert len(answer) == 1 and len(prompt) > 6
    data = encode_lm_items(items, task, tokenizer, max_length=6)
    assert data.truncated == len(items)
    assert data.input_ids[0] == prompt[-5:] + answer  # the prompt's start is gone, the answer intact
    assert data.prompt_lengths[0] == 5 and all(len(ids) == 6 for ids in data.input_ids)
    whole = encode_lm_items(items, task, tokenizer, max_length=64)
    assert whole.truncated == 0 and whole.input_ids[0] == prompt + answer
    with pytest.raises(JdnaError, match="answers are never truncated"):
        encode_lm_items(items, task, tokenizer, max_length=1)


def test_training_reduces_answer_loss(tiny_llama: Path, mc_file: Path, tmp_path: Path) -> None:
    ref = resolve(str(tiny_llama))
    task = load_finetune_task(f"file:{mc_file}")
    model, tokenizer = load_model(ref, head=LM_HEAD)
    data = encode_lm_items(task.train_items, task, tokenizer, max_length=64)
    before = mean_answer_loss(model, data, tokenizer.pad_token_id)
    assert before > 3.0  # a random model: about ln(vocab size)
    config = FinetuneConfig(task=f"file:{mc_file}", mode="dense", epochs=12, batch_size=8, lr=1e-2, eval_limit=24)
    record = run_finetune(ref, config, tmp_path / "ft.safetensors")
    trained, _ = load_model(resolve(record["path"]))
    after = mean_answer_loss(trained, data, tokenizer.pad_token_id)
    # Below ln 3 = 1.10 (a uniform guess among the three answers): the answers are learned, not just the vocabulary.
    assert after < 0.6, (before, after)
    curve = read_artifact(Path(record["path"])).header["stats"]["train_loss"]
    assert curve["first"] > 3.0 and curve["last"] < 0.6
    assert record["objective"] == "answer_tokens" and record["train_examples"] == 24
    # ... and they generalise to the held-out items (chance: 1/3), scored by log-likelihood.
    assert record["metrics"]["acc"]["value"] > 0.75


def test_mode_invariants_on_the_lm_path(tiny_llama: Path, mc_file: Path) -> None:
    pruned = prune_record(tiny_llama)
    masks = effective_masks(resolve(pruned["path"]).chain)
    dense = model_parameters(str(tiny_llama))
    for mode in ("sparse", "freeze", "regrow", "dense"):
        result = run("finetune", pruned["path"], "--task", f"file:{mc_file}", "--mode", mode, *FAST)
        assert result.code == 0, result.stderr
        record = result.record
        assert record["objective"] == "answer_tokens" and record["mode"] == mode
        assert read_artifact(Path(record["path"])).header["head"]["type"] == "causal_lm"
        weights = model_parameters(record["path"])
        assert "lm_head.weight" in weights  # the LM head is trained and stored, no classification head
        kept_changed = sum(int((weights[n][k] != dense[n][k]).sum()) for n, k in masks.items())
        assert kept_changed > 0, f"{mode}: training changed nothing"
        if mode == "sparse":
            assert record["invariants"] == {**record["invariants"], "checked": "exact_zeros", "passed": True,
                                            "violations": 0, "optimizer_state_violations": 0}
            assert all(torch.all(weights[n][~k] == 0) for n, k in masks.items())
        elif mode == "freeze":
            assert record["invariants"]["checked"] == "frozen_values" and record["invariants"]["passed"]
            for name, keep in masks.items():
                got, want = weights[name][~keep], dense[name][~keep]
                assert torch.equal(got.view(torch.int32), want.view(torch.int32)), name
        elif mode == "regrow":
            assert sum(int((weights[n][~k] != 0).sum()) for n, k in masks.items()) > 0
        else:
            assert record["sparsity"] < 0.01


def test_sparse_lm_training_keeps_adam_moments_zero(tiny_llama: Path, mc_file: Path) -> None:
    """The loop on LM data: pruned weights and both Adam moments stay exactly zero, kept ones move."""
    ref = resolve(prune_record(tiny_llama)["path"])
    task = load_finetune_task(f"file:{mc_file}")
    model, tokenizer = load_model(ref, head=LM_HEAD)
    masks = effective_masks(ref.chain)
    enforcer = MaskEnforcer.build(model, masks, "sparse")
    data = encode_lm_items(task.train_items, task, tokenizer, max_length=64)
    schedule = Schedule(len(data), batch_size=8, grad_accum=2, epochs=2, seed=0)
    settings = TrainSettings(lr=1e-2, weight_decay=0.1, warmup=0.0)
    _, optimizer = train(model, data, schedule, enforcer, settings, tokenizer.pad_token_id, torch.device("cpu"))
    params = canonical_parameters(model)
    moved_moments = 0
    for name, keep in masks.items():
        assert torch.all(params[name][~keep] == 0), name
        state = optimizer.state[params[name]]
        assert torch.all(state["exp_avg"][~keep] == 0) and torch.all(state["exp_avg_sq"][~keep] == 0), name
        moved_moments += int((state["exp_avg_sq"][keep] != 0).sum())
    assert moved_moments > 0
    assert enforcer.check(optimizer) == {**enforcer.check(optimizer), "passed": True, "violations": 0}


def test_resume_equals_uninterrupted(tiny_llama: Path, mc_file: Path, tmp_path: Path) -> None:
    ref = resolve(prune_record(tiny_llama)["path"])
    config = FinetuneConfig(
        task=f"file:{mc_file}", mode="sparse", epochs=3, batch_size=4, lr=1e-3, eval_limit=12, checkpoint_every=2
    )
    straight = run_finetune(ref, config, tmp_path / "straight.safetensors")
    resumed_path = tmp_path / "resumed.safetensors"
    with pytest.raises(Interrupted):
        run_finetune(ref, config, resumed_path, reporter=InterruptAt(7))
    assert json.loads((tmp_path / "resumed.safetensors.ckpt" / "state.json").read_text())["step"] == 7
    resumed = run_finetune(ref, config, resumed_path)
    a, b = read_artifact(Path(straight["path"])), read_artifact(resumed_path)
    assert b.header["stats"]["resumed_from_step"] == 7 and a.header["stats"]["steps"] == 18
    assert a.header["tensors_sha256"] == b.header["tensors_sha256"]
    assert a.header["stats"]["train_loss"] == b.header["stats"]["train_loss"]
    assert straight["metrics"] == resumed["metrics"]


def test_artifact_evaluates_with_jdna_eval(tiny_llama: Path, mc_file: Path, qa_file: Path) -> None:
    for task_file, extra in ((mc_file, []), (qa_file, ["--train-examples", "5"])):
        spec = f"file:{task_file}"
        result = run("finetune", str(tiny_llama), "--task", spec, "--mode", "dense", *FAST, *extra)
        assert result.code == 0, result.stderr
        record = result.record
        validation = json.loads(Path(record["eval_record"]).read_text())
        evaluated = run("eval", "--task", spec, "--limit", "16", stdin=json.dumps(record))
        assert evaluated.code == 0, evaluated.stderr
        again = evaluated.record
        assert again["model"]["id"] == record["id"] and again["task_kind"] == validation["task_kind"]
        # The same evaluator on the same items: the same numbers, item by item.
        assert again["metrics"] == record["metrics"] == validation["metrics"]
        stored = json.loads(Path(again["path"]).read_text())
        assert stored["per_item"]["ids"] == validation["per_item"]["ids"]
        assert stored["per_item"]["predictions"] == validation["per_item"]["predictions"]
        # Validation items are never trained on; the split is recorded.
        task = load_finetune_task(spec)
        trained = set(validation["transfer"]["train_ids"])
        assert trained <= {item.id for item in task.train_items}
        assert not trained & set(validation["per_item"]["ids"])
        split = record["split"]
        assert split["train_pool"] == len(task.train_items) and split["validation_pool"] == len(task.items)
        assert split["train_used"] == record["train_examples"] == len(trained)
        info = run("info", "--summary", stdin=json.dumps(record))
        assert info.code == 0, info.stderr
        assert info.record["eval"]["metrics"] == record["metrics"] and info.record["mode"] == "dense"
    assert record["primary_metric"] == "exact_match" and split["train_used"] == 5
    assert "carved" in split["provenance"]


def test_subsampling(mc_file: Path, tmp_path: Path) -> None:
    task = load_finetune_task(f"file:{mc_file}")
    small = training_items(task, FinetuneConfig(task="x", train_examples=6, seed=1))
    large = training_items(task, FinetuneConfig(task="x", train_examples=12, seed=1))
    assert len(small) == 6 and {i.id for i in small} <= {i.id for i in large}
    assert {i.id for i in small} != {i.id for i in training_items(task, FinetuneConfig(task="x", train_examples=6))}
    assert len(training_items(task, FinetuneConfig(task="x", train_fraction=0.5))) == 12
    # Letter-answer multiple choice (MMLU-like) is stratified by the gold letter: 18 A, 6 B -> 3 A, 1 B.
    rows = [{"id": f"l{i}", "question": "which", "choices": ["cat", "dog"], "gold": int(i >= 18), "split": "train"}
            for i in range(24)] + [{"id": "t", "question": "which", "choices": ["cat", "dog"], "gold": 0}]
    fmt = {"choice_listing": "letters", "answer_style": "letter"}
    letters = load_finetune_task(f"file:{_write(tmp_path / 'letters.jsonl', rows, {'format': fmt})}")
    chosen = training_items(letters, FinetuneConfig(task="x", train_examples=4, seed=2))
    assert sorted(item.gold for item in chosen) == [0, 0, 0, 1]


def test_bad_input_exits_2(tiny_llama: Path, tiny_bert: Path, mc_file: Path, qa_file: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    def one_line(result, *needles: str) -> None:
        assert result.code == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", result.stderr
        for needle in needles:
            assert needle in result.stderr, result.stderr

    task = ["--task", f"file:{mc_file}", "--mode", "dense"]
    # An encoder on a QA task has no head to train (on multiple choice it gets a multiple-choice head).
    one_line(run("finetune", str(tiny_bert), "--task", f"file:{qa_file}", "--mode", "dense"), "generation task",
             "encoder with no LM head")
    classifier_dir = tmp_path / "llama-cls"
    make_tokenizer(classifier_dir)
    config = LlamaConfig(**{k: v for k, v in json.loads((tiny_llama / "config.json").read_text()).items()
                            if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "num_key_value_heads", "pad_token_id")})
    LlamaForSequenceClassification(config).save_pretrained(classifier_dir)
    one_line(run("finetune", str(classifier_dir), *task), "LlamaForSequenceClassification", "no LM head")
    labels = tmp_path / "labels.jsonl"
    _write(labels, [{"text": f"{w} {w}", "label": w} for w in KEYS * 4])
    classified = run("finetune", str(tiny_llama), "--task", f"file:{labels}", "--mode", "dense", "--epochs", "1")
    assert classified.code == 0, classified.stderr
    one_line(run("finetune", *task, stdin=json.dumps(classified.record)), "sequence-classification head")
    qa = ["--task", f"file:{qa_file}", "--mode", "dense", "--max-length", "2"]  # answer: a word + EOS
    one_line(run("finetune", str(tiny_llama), *qa), "is 2 tokens", "answers are never truncated")
    one_line(run("finetune", str(tiny_llama), *task, "--train-examples", "25"), "has only 24 items")
    text = _write(tmp_path / "text.jsonl", [{"text": "the cat"}, {"text": "a dog"}])
    one_line(run("finetune", str(tiny_llama), "--task", f"file:{text}", "--mode", "dense"), "perplexity task")
