"""Multiple-choice head on an encoder (Fig. 8's RoBERTa on CommonsenseQA): finetune in every mode, eval the artifact."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from jdna.finetune.multiple_choice import encode_items, head_spec
from jdna.models import load_model, resolve
from jdna.tasks import load_task
from tests.cli import run
from tests.conftest import WORDS, prune_record

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--max-length", "24"]
COLOURS = ["red", "blue", "green"]


@pytest.fixture(scope="module")
def mc_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 train and 12 test questions whose answer is the colour named in the question; 2 or 3 options."""
    rng = random.Random(0)
    rows = []
    for split, count in (("train", 24), ("test", 12)):
        for i in range(count):
            gold_colour = COLOURS[i % 3]
            filler = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
            choices = list(COLOURS) if i % 2 == 0 else [gold_colour, COLOURS[(i + 1) % 3]]
            rng.shuffle(choices)
            rows.append(
                {
                    "id": f"{split}{i}",
                    "question": " ".join([*filler, "the", gold_colour, "one"]),
                    "choices": choices,
                    "gold": choices.index(gold_colour),
                    "split": split,
                }
            )
    path = tmp_path_factory.mktemp("mc-head") / "colours.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def pairwise_logits(model: nn.Module, tokenizer, question: str, choices: list[str]) -> list[float]:
    """Each option scored alone (one pair per forward, no padding): the reference for batched scoring."""
    scores = []
    for choice in choices:
        encoded = tokenizer([question], [choice], truncation="only_first", max_length=24, return_tensors="pt")
        with torch.no_grad():
            scores.append(float(model(**{k: v.unsqueeze(1) for k, v in encoded.items()}).logits[0, 0]))
    return scores


def test_padded_options_do_not_change_the_loss(tiny_bert: Path, mc_task: Path) -> None:
    model, tokenizer = load_model(resolve(str(tiny_bert)), head=head_spec(24))
    model.eval()
    task = load_task(f"file:{mc_task}")
    items = task.items[:4]  # 3, 2, 3, 2 options: one batch pads the 2-option items
    data = encode_items(items, tokenizer, 24)
    batch = data.collate(range(len(items)), tokenizer.pad_token_id)
    assert batch["input_ids"].shape[:2] == (4, 3) and batch["choice_mask"].sum().item() == 10
    with torch.no_grad():
        batched = float(data.loss(model, batch))
    by_hand = []
    for item in items:
        logits = torch.tensor(pairwise_logits(model, tokenizer, item.question, item.choices))
        by_hand.append(float(nn.functional.cross_entropy(logits[None], torch.tensor([item.gold]))))
    assert batched == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)


def test_finetune_mc_head_all_modes_and_eval_reproduces(tiny_bert: Path, mc_task: Path) -> None:
    pruned = prune_record(tiny_bert)
    task = load_task(f"file:{mc_task}")
    for mode in ("dense", "sparse", "freeze", "regrow"):
        result = run("finetune", pruned["path"], "--task", f"file:{mc_task}", "--mode", mode, *FAST)
        assert result.code == 0, result.stderr
        record = result.record
        assert record["objective"] == "multiple_choice_head" and record["invariants"]["passed"]
        assert record["primary_metric"] == "acc" and record["split"]["validation_used"] == 12
        if mode in ("sparse", "freeze"):
            assert record["invariants"]["checked"] in ("exact_zeros", "frozen_values")
        finetuned = json.loads(Path(record["eval_record"]).read_text())
        assert finetuned["transfer"]["mode"] == mode and finetuned["scorer"] == "multiple_choice_head"

        # jdna eval on the artifact: the same predictions as finetune's validation pass...
        evaluated = run("eval", record["path"], "--task", f"file:{mc_task}")
        assert evaluated.code == 0, evaluated.stderr
        full = json.loads(Path(evaluated.record["path"]).read_text())
        assert full["metrics"]["acc"]["value"] == pytest.approx(record["metrics"]["acc"]["value"])
        assert full["per_item"]["predictions"] == finetuned["per_item"]["predictions"]
        # ...and the same as scoring every option alone with the loaded head, by hand.
        model, tokenizer = load_model(resolve(record["path"]))
        assert type(model).__name__ == "BertForMultipleChoice"
        model.eval()
        by_id = {item.id: item for item in task.items}
        for item_id, prediction in zip(full["per_item"]["ids"], full["per_item"]["predictions"], strict=True):
            item = by_id[item_id]
            scores = pairwise_logits(model, tokenizer, item.question, item.choices)
            assert prediction == max(range(len(scores)), key=lambda i: (scores[i], -i))
    dense = run("finetune", pruned["path"], "--task", f"file:{mc_task}", "--mode", "dense", *FAST).record
    assert dense["cached"] is True
    # LMC between two multiple-choice heads: the endpoints' accuracy is the validation accuracy of each.
    sparse = run("finetune", pruned["path"], "--task", f"file:{mc_task}", "--mode", "sparse", *FAST).record
    lmc = run("lmc", dense["path"], sparse["path"], "--task", f"file:{mc_task}", "--points", "3")
    assert lmc.code == 0, lmc.stderr
    assert lmc.record["metric_name"] == "acc" and lmc.record["n"] == 12
    assert lmc.record["metric"][0] == pytest.approx(dense["metrics"]["acc"]["value"], abs=1e-6)
    assert lmc.record["metric"][-1] == pytest.approx(sparse["metrics"]["acc"]["value"], abs=1e-6)


def test_encoder_without_mc_head_cannot_be_evaluated_on_mc(tiny_bert: Path, mc_task: Path) -> None:
    result = run("eval", str(tiny_bert), "--task", f"file:{mc_task}")
    assert result.code == 2 and "multiple-choice head" in result.stderr and "jdna finetune" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
