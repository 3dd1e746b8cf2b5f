"""Step time of jdna's fine-tuning modes relative to dense, and examples/s next to a plain transformers Trainer.

Prunes the model (magnitude, 50%), then trains each mode (dense, sparse, freeze, regrow) with jdna's loop
(`jdna.finetune.loop.train`) on the same examples of a classification task, in interleaved rounds so that
load from other processes hits every mode alike; reports the median seconds per optimizer step and the ratio
to dense (target: <= 1.10x). Then runs `transformers.Trainer` for the same number of steps on the same data
(dense, same batch size, AdamW, linear schedule) and reports both examples/s. Not a test.

    python bench/bench_finetune.py --model minilm-l6 --task bigbench:vitaminc_fact_verification --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jdna.finetune import (  # noqa: E402
    FinetuneConfig,
    head_for,
    load_classification_task,
    seed_everything,
    training_items,
)
from jdna.finetune.data import Schedule, encode_items  # noqa: E402
from jdna.finetune.loop import TrainSettings, train  # noqa: E402
from jdna.finetune.masking import MaskEnforcer, dense_ref  # noqa: E402
from jdna.masks import effective_masks
from jdna.models import load_model, resolve  # noqa: E402
from jdna.pruning import PruneConfig, run_prune  # noqa: E402

MODES = ("dense", "sparse", "freeze", "regrow")


def _masking_seconds(enforcer: MaskEnforcer, optimizer: torch.optim.Optimizer, repeats: int = 10) -> float:
    """Seconds per step of the mode's mask work alone (what a step adds over dense), timed in isolation."""
    started = time.perf_counter()
    for _ in range(repeats):
        enforcer.mask_gradients()
        enforcer.enforce_weights()
        enforcer.mask_optimizer_state(optimizer)
    return (time.perf_counter() - started) / repeats


def _jdna_run(ref, mode: str, items, task, args) -> tuple[float, float, float]:
    """(seconds per step, examples/s, mask-work seconds per step) of `args.steps` optimizer steps in `mode`."""
    seed_everything(0)
    source = dense_ref(ref) if mode in ("dense", "freeze") else ref
    model, tokenizer = load_model(source, head=head_for(task), device="cpu")
    masks = effective_masks(ref.chain) if mode in ("sparse", "freeze") else {}
    enforcer = MaskEnforcer.build(model, masks, mode)
    data = encode_items(items, tokenizer, args.max_length, regression=False)
    schedule = Schedule(len(data), args.batch_size, 1, 1, seed=0)
    settings = TrainSettings(lr=5e-5, weight_decay=0.01, warmup=0.06)
    outcome, optimizer = train(model, data, schedule, enforcer, settings, tokenizer.pad_token_id, torch.device("cpu"))
    assert enforcer.check(optimizer)["passed"]
    return outcome.seconds / outcome.steps, outcome.examples_per_second, _masking_seconds(enforcer, optimizer)


def _trainer_run(ref, items, task, args) -> float:
    """examples/s of transformers.Trainer on the same examples (dense model, same batch size)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    seed_everything(0)
    model, tokenizer = load_model(dense_ref(ref), head=head_for(task), device="cpu")
    model.train()
    data = encode_items(items, tokenizer, args.max_length, regression=False)
    rows = []
    for i in range(len(data)):
        row = {"input_ids": data.input_ids[i], "labels": data.labels[i]}
        if data.token_type_ids is not None:
            row["token_type_ids"] = data.token_type_ids[i]
        rows.append(row)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=5e-5,
            weight_decay=0.01,
            warmup_steps=max(1, round(0.06 * args.steps)),
            lr_scheduler_type="linear",
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=rows,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        metrics = trainer.train().metrics
    return float(metrics["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--task", default="bigbench:vitaminc_fact_verification")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the modes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    runs = tempfile.mkdtemp(prefix="jdna-bench-")
    os.environ["JDNA_RUNS"] = runs
    pruned = run_prune(resolve(args.model), PruneConfig(method="magnitude", sparsity=0.5))
    ref = resolve(pruned["path"])
    task = load_classification_task(args.task)
    items = training_items(task, FinetuneConfig(task=args.task, train_examples=args.steps * args.batch_size))

    _jdna_run(ref, "dense", items[: 2 * args.batch_size], task, argparse.Namespace(**{**vars(args), "steps": 2}))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    masking: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        order = MODES if round_index % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            seconds, rate, mask_seconds = _jdna_run(ref, mode, items, task, args)
            times[mode].append(seconds)
            rates[mode].append(rate)
            masking[mode].append(mask_seconds)
            print(f"round {round_index} {mode:7s} {seconds * 1000:8.1f} ms/step {rate:7.1f} ex/s", file=sys.stderr)
    trainer_rates = []
    for _ in range(max(1, args.rounds // 2)):
        trainer_rates.append(_trainer_run(ref, items, task, args))
        print(f"Trainer {trainer_rates[-1]:7.1f} ex/s", file=sys.stderr)
    dense = statistics.median(times["dense"])
    result = {
        "model": args.model,
        "task": args.task,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "ms_per_step": {mode: round(statistics.median(v) * 1000, 1) for mode, v in times.items()},
        "ratio_to_dense": {mode: round(statistics.median(v) / dense, 3) for mode, v in times.items()},
        # Each round runs every mode back to back, so a per-round ratio cancels slow drifts in machine load.
        "paired_ratio_to_dense": {
            mode: round(statistics.median(t / d for t, d in zip(v, times["dense"])), 3) for mode, v in times.items()
        },
        "mask_work_ms_per_step": {mode: round(statistics.median(v) * 1000, 1) for mode, v in masking.items()},
        "mask_work_fraction_of_dense_step": {
            mode: round(statistics.median(v) / dense, 3) for mode, v in masking.items()
        },
        "examples_per_second": {mode: round(statistics.median(v), 1) for mode, v in rates.items()},
        "trainer_examples_per_second": round(statistics.median(trainer_rates), 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
