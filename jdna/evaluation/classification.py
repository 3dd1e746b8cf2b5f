"""Classification: a fine-tuned sequence-classification head's predictions, scored with the task's metrics.

A classification task needs a model whose chain carries a head fine-tuned for it (`jdna.models.head_of`).
Without one, eval first runs the task's fine-tuning protocol, the `Transfer` step the command layer passes in
(`jdna.finetune.EvalTransfer`: evaluation never imports fine-tuning): `sparse` transfer when the model still
obeys pruning masks (pruned weights stay zero), else `dense`; `--transfer-mode` overrides. The fine-tuned
artifact is content-addressed like any step, so a second eval reuses it; the record's `transfer` says what
was done.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.evaluation.base import (
    BOOTSTRAP_RESAMPLES,
    EVALUATORS,
    EvalConfig,
    EvalContext,
    Outcome,
    Prepared,
    Transfer,
    load_model_for,
    metric_entry,
)
from jdna.evaluation.classifier import encode_items, forward_batches, is_regression, pad_id_of
from jdna.masks import mask_owners
from jdna.metrics import bootstrap_ci, get_metric
from jdna.models import ModelRef, resolve

_CPU_TOKENS_PER_BATCH = 4096
_CUDA_TOKENS_PER_BATCH = 65536
_MAX_LENGTH = 512


def n_outputs(prepared: Prepared) -> int:
    if is_regression(prepared.task):
        return 1
    labels = prepared.task.labels
    if labels:
        return len(labels)
    return 1 + max(item.label or 0 for item in prepared.task.items + prepared.task.train_items)


def matching_head(ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any] | None:
    """The chain's newest head if it was fine-tuned for this task (same task spec, or same labels and size)."""
    for artifact in reversed(ref.chain):
        head = artifact.header.get("head")
        if not head:
            continue
        if head.get("type") != "sequence_classification" or int(head.get("num_labels", -1)) != n_outputs(prepared):
            return None
        labels = prepared.task.labels
        trained_for = artifact.header.get("task") or head.get("task")
        if trained_for == config.task or (labels and head.get("labels") == list(labels)):
            return head
        return None
    return None


def has_masks(ref: ModelRef) -> bool:
    """Whether the model still obeys a pruning mask (jdna.masks' one rule)."""
    return any(owner is not None for owner in mask_owners(ref.chain).values())


def transfer_mode(ref: ModelRef, config: EvalConfig) -> str:
    return config.transfer_mode or ("sparse" if has_masks(ref) else "dense")


def _no_transfer(config: EvalConfig) -> JdnaError:
    return JdnaError(
        f"this model has no head fine-tuned for {config.task}, and no fine-tuning step was given to train one: "
        "pipe a model from 'jdna finetune' instead"
    )


class Classification:
    higher_is_better = True

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig, transfer: Transfer | None = None) -> None:
        if matching_head(ref, prepared, config) is not None:
            given = [
                flag
                for flag, value in (
                    ("--train-fraction", config.train_fraction),
                    ("--train-examples", config.train_examples),
                    ("--transfer-mode", config.transfer_mode),
                )
                if value is not None
            ]
            if given:
                raise JdnaError(
                    f"{given[0]} applies when eval fine-tunes the model first, but '{ref.display_name}' already has "
                    f"a head fine-tuned for {config.task}: drop {given[0]}"
                )
            return
        if config.train_fraction is not None and config.train_examples is not None:
            raise JdnaError("give --train-fraction or --train-examples, not both")
        if not prepared.task.train_items:
            raise JdnaError(
                f"task {config.task} has no training data, so the model cannot be fine-tuned for it: "
                "pipe a model fine-tuned for this task"
            )
        if transfer is None:
            raise _no_transfer(config)
        transfer.check(ref, config, transfer_mode(ref, config))  # the engine's flag and model checks, no weights

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        if matching_head(ref, prepared, config) is not None:
            return {"transfer": None}
        return {"transfer": transfer_mode(ref, config)}

    def _finetune(self, ctx: EvalContext) -> tuple[ModelRef, dict[str, Any]]:
        config = ctx.config
        if ctx.transfer is None:
            raise _no_transfer(config)
        mode = transfer_mode(ctx.ref, config)
        ctx.reporter.log(
            f"'{ctx.ref.display_name}' has no head for {config.task}: fine-tuning it first ({mode} transfer, "
            "the task's protocol)"
        )
        finetuned = ctx.transfer.run(ctx.ref, config, mode, ctx.reporter)
        path = finetuned["path"]
        transfer = {
            "mode": mode,
            "train_examples": finetuned.get("train_examples"),
            "artifact": path,
            "cached": finetuned.get("cached"),
        }
        return resolve(path), transfer

    def run(self, ctx: EvalContext) -> Outcome:
        prepared, config = ctx.prepared, ctx.config
        ref, transfer = ctx.ref, None
        if matching_head(ref, prepared, config) is None:
            ref, transfer = self._finetune(ctx)
            if matching_head(ref, prepared, config) is None:
                raise JdnaError(
                    f"fine-tuning produced '{ref.display_name}', whose head does not match task {config.task}"
                )
        model, tokenizer, load_seconds = load_model_for(ctx, ref, f"loading {ref.display_name} ({ctx.device.type})")
        items = prepared.items
        regression = is_regression(prepared.task)
        started = time.perf_counter()
        outputs = _predict(model, tokenizer, items, ctx)
        seconds = time.perf_counter() - started

        n_labels = n_outputs(prepared)
        if regression:
            preds = outputs[:, 0].astype(np.float64)
            golds = np.array([float(item.target if item.target is not None else np.nan) for item in items])
        else:
            preds = outputs.argmax(axis=1).astype(np.int64)
            golds = np.array([int(item.label if item.label is not None else -1) for item in items])
            if (golds < 0).any():
                raise JdnaError(f"task {config.task} has evaluated items without a label: use a labelled split")
        metrics: dict[str, dict[str, Any]] = {}
        for name in prepared.task.metrics:
            fn = get_metric(name, "classification", n_labels=n_labels)
            value = fn(preds, golds)
            ci = bootstrap_ci((fn, preds, golds), n_resamples=BOOTSTRAP_RESAMPLES, seed=config.seed)
            metrics[name] = metric_entry(value, ci)
        correct = (preds == golds).astype(np.float64) if not regression else None
        values = correct.tolist() if correct is not None else preds.tolist()
        labels = prepared.task.labels
        samples = []
        for i, item in enumerate(items):
            sample: dict[str, Any] = {
                "id": item.id,
                "text": list(item.text_pair) if item.text_pair else item.question,
                "logits": [round(float(x), 6) for x in outputs[i]],
                "prediction": preds[i].item(),
                "gold": golds[i].item(),
            }
            if not regression:
                sample["correct"] = bool(correct[i])
                if labels:
                    sample["prediction_label"] = labels[int(preds[i])]
            samples.append(sample)
        per_item = {
            "ids": [item.id for item in items],
            "values": values,
            "predictions": preds.tolist(),
            "golds": golds.tolist(),
        }
        extra = {"load_seconds": round(load_seconds, 3)}
        item_values = {"accuracy": correct.tolist()} if correct is not None and "accuracy" in metrics else {}
        return Outcome(
            metrics, per_item, samples, seconds, extra=extra, transfer=transfer, model_ref=ref, item_values=item_values
        )


def _predict(model: Any, tokenizer: Any, items: list[Any], ctx: EvalContext) -> np.ndarray:
    """Logits of every item, batched by length (longest first) within a token budget; row order follows `items`."""
    limit = min(
        _MAX_LENGTH,
        int(getattr(model.config, "max_position_embeddings", _MAX_LENGTH) or _MAX_LENGTH),
        int(min(getattr(tokenizer, "model_max_length", _MAX_LENGTH), 10**7)),
    )
    data = encode_items(items, tokenizer, limit, regression=False)  # labels unused: scored from the items
    lengths = [len(ids) for ids in data.input_ids]
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))
    budget = _CUDA_TOKENS_PER_BATCH if ctx.device.type == "cuda" else _CPU_TOKENS_PER_BATCH
    batches = []
    start = 0
    while start < len(order):
        count = ctx.config.batch_size or max(1, budget // max(1, lengths[order[start]]))
        batches.append(order[start : start + count])
        start += count
    out: np.ndarray | None = None
    done = 0
    for chunk, logits, _ in forward_batches(model, data, batches, pad_id_of(tokenizer), ctx.device):
        values = logits.cpu().numpy()
        if out is None:
            out = np.zeros((len(items), values.shape[1]), dtype=np.float32)
        out[chunk] = values
        done += len(chunk)
        ctx.reporter.progress("classify", done, len(order))
    assert out is not None
    return out


EVALUATORS.add("classification", Classification())
