"""Validation of a fine-tuned sequence-classification model: predictions, metrics and bootstrap intervals."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from jdna.evaluation.classifier import Encoded, forward_batches
from jdna.metrics import accuracy, bootstrap_ci, get_metric
from jdna.progress import Reporter
from jdna.tasks import Task


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, Any]]
    primary_metric: str
    predictions: list[float] | list[int]
    golds: list[float] | list[int]
    per_item: list[float]
    seconds: float


def predict(
    model: nn.Module,
    data: Encoded,
    pad_id: int,
    device: torch.device,
    batch_size: int = 64,
    reporter: Reporter | None = None,
) -> list[Any]:
    """Class indices (or regression values) for every example, batched by similar lengths."""
    reporter = reporter or Reporter()
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    out: list[Any] = [None] * len(data)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    done = 0
    for indices, logits, _ in forward_batches(model, data, batches, pad_id, device, autocast=True):
        values = logits[:, 0].tolist() if data.regression else logits.argmax(dim=-1).tolist()
        for index, value in zip(indices, values):
            out[index] = value
        done += len(indices)
        reporter.progress("validation", done, len(order))
    return out


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 6)


def evaluate(
    model: nn.Module,
    task: Task,
    data: Encoded,
    pad_id: int,
    device: torch.device,
    seed: int = 0,
    reporter: Reporter | None = None,
) -> Evaluation:
    """Score `data` (the task's evaluation items) with the task's metrics and 95% bootstrap intervals."""
    started = time.perf_counter()
    predictions = predict(model, data, pad_id, device, reporter=reporter)
    golds = list(data.labels)
    n_labels = len(task.labels) if task.labels else None
    metrics: dict[str, dict[str, Any]] = {}
    for name in task.metrics:
        function = get_metric(name, "classification", n_labels)
        value = function(predictions, golds)
        low, high = bootstrap_ci((function, predictions, golds), seed=seed)
        metrics[name] = {"value": _clean(value), "ci95": [_clean(low), _clean(high)]}
    if data.regression:
        per_item = [float(p) for p in predictions]
    else:
        per_item = [float(p == g) for p, g in zip(predictions, golds)]
        if "accuracy" not in metrics:  # always useful next to MCC / F1
            acc = accuracy(predictions, golds)
            low, high = bootstrap_ci(np.asarray(per_item), seed=seed)
            metrics["accuracy"] = {"value": _clean(acc), "ci95": [_clean(low), _clean(high)]}
    return Evaluation(
        metrics=metrics,
        primary_metric=task.primary_metric,
        predictions=predictions,
        golds=golds,
        per_item=per_item,
        seconds=time.perf_counter() - started,
    )
