"""Classification: a fine-tuned sequence-classification head's predictions, scored with the task's metrics.

A classification task needs a model whose chain carries a head fine-tuned for it (`jdna.models.head_of`).
Without one, eval first runs the task's fine-tuning protocol (`jdna.finetune.run_finetune`): `sparse`
transfer when the model carries pruning masks (pruned weights stay zero), else `dense`; `--transfer-mode`
overrides. The fine-tuned artifact is content-addressed like any step, so a second eval reuses it; the
record's `transfer` says what was done.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from jdna.errors import JdnaError
from jdna.evaluation.base import (
    BOOTSTRAP_RESAMPLES,
    EVALUATORS,
    EvalConfig,
    EvalContext,
    Outcome,
    Prepared,
    metric_entry,
)
from jdna.metrics import bootstrap_ci, get_metric
from jdna.models import ModelRef, load_model, resolve

_CPU_TOKENS_PER_BATCH = 4096
_CUDA_TOKENS_PER_BATCH = 65536
_MAX_LENGTH = 512


def is_regression(prepared: Prepared) -> bool:
    task = prepared.task
    return not task.labels and any(item.target is not None for item in task.items + task.train_items)


def n_outputs(prepared: Prepared) -> int:
    if is_regression(prepared):
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
    return any(artifact.header.get("masks") for artifact in ref.chain)


def transfer_mode(ref: ModelRef, config: EvalConfig) -> str:
    return config.transfer_mode or ("sparse" if has_masks(ref) else "dense")


def _finetune_api() -> tuple[Any, Any]:
    try:
        from jdna.finetune import FinetuneConfig, run_finetune
    except ImportError as error:
        raise JdnaError(
            "this model has no head fine-tuned for the task, and jdna's fine-tuning engine is not available "
            f"({error}): pipe a model from 'jdna finetune' instead"
        ) from None
    return FinetuneConfig, run_finetune


def _finetune_config(finetune_config_cls: Any, ref: ModelRef, config: EvalConfig) -> Any:
    wanted: dict[str, Any] = {
        "task": config.task,
        "mode": transfer_mode(ref, config),
        "train_fraction": config.train_fraction,
        "train_examples": config.train_examples,
        "seed": config.seed,
    }
    fields = {f.name for f in dataclasses.fields(finetune_config_cls)}
    return finetune_config_cls(**{key: value for key, value in wanted.items() if key in fields})


class Classification:
    higher_is_better = True

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> None:
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
        finetune_config_cls, _ = _finetune_api()
        from jdna import finetune

        finetune_config = _finetune_config(finetune_config_cls, ref, config)
        for name in ("plan", "check_model"):  # the engine's own flag and model checks, before any weights
            step = getattr(finetune, name, None)
            if callable(step):
                step(*((finetune_config,) if name == "plan" else (ref, finetune_config)))

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        if matching_head(ref, prepared, config) is not None:
            return {"transfer": None}
        return {"transfer": transfer_mode(ref, config)}

    def _finetune(self, ctx: EvalContext) -> tuple[ModelRef, dict[str, Any]]:
        config = ctx.config
        finetune_config_cls, run_finetune = _finetune_api()
        mode = transfer_mode(ctx.ref, config)
        ctx.reporter.log(
            f"'{ctx.ref.display_name}' has no head for {config.task}: fine-tuning it first ({mode} transfer, "
            "the task's protocol)"
        )
        finetune_config = _finetune_config(finetune_config_cls, ctx.ref, config)
        finetuned = run_finetune(ctx.ref, finetune_config, reporter=ctx.reporter)
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
        started = time.perf_counter()
        ctx.reporter.log(f"loading {ref.display_name} ({ctx.device.type})")
        model, tokenizer = load_model(ref, device=ctx.device, dtype=ctx.dtype)
        load_seconds = time.perf_counter() - started
        items = prepared.items
        regression = is_regression(prepared)
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


@torch.inference_mode()
def _predict(model: Any, tokenizer: Any, items: list[Any], ctx: EvalContext) -> np.ndarray:
    """Logits of every item, batched by length (longest first); row order follows `items`."""
    limit = min(
        _MAX_LENGTH,
        int(getattr(model.config, "max_position_embeddings", _MAX_LENGTH) or _MAX_LENGTH),
        int(min(getattr(tokenizer, "model_max_length", _MAX_LENGTH), 10**7)),
    )
    firsts = [(item.text_pair or (item.question, None))[0] for item in items]
    seconds = [(item.text_pair or (item.question, None))[1] for item in items]
    if any(second is not None for second in seconds):
        encoded = tokenizer(firsts, [s or "" for s in seconds], truncation=True, max_length=limit)
    else:
        encoded = tokenizer(firsts, truncation=True, max_length=limit)
    ids = encoded["input_ids"]
    types = encoded.get("token_type_ids")
    order = sorted(range(len(items)), key=lambda i: (-len(ids[i]), i))
    budget = _CUDA_TOKENS_PER_BATCH if ctx.device.type == "cuda" else _CPU_TOKENS_PER_BATCH
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: np.ndarray | None = None
    start = 0
    while start < len(order):
        width = len(ids[order[start]])
        count = ctx.config.batch_size or max(1, budget // max(1, width))
        chunk = order[start : start + count]
        start += count
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        token_types = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
            if types is not None:
                token_types[row, : len(ids[i])] = torch.tensor(types[i])
        kwargs = {"input_ids": input_ids.to(ctx.device), "attention_mask": mask.to(ctx.device)}
        if types is not None:
            kwargs["token_type_ids"] = token_types.to(ctx.device)
        logits = model(**kwargs).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(items), logits.shape[1]), dtype=np.float32)
        out[chunk] = logits
        ctx.reporter.progress("classify", min(start, len(order)), len(order))
    assert out is not None
    return out


EVALUATORS.add("classification", Classification())
