"""Multiple choice: the log-likelihood of each option given the prompt, as lm-evaluation-harness scores it.

`acc` takes the argmax of the summed log-likelihoods; `acc_norm` (lm-eval's) the argmax of the sum divided
by the option's length in characters, not counting the answer delimiter that starts each continuation.
Ties go to the first option, as numpy.argmax does in lm-eval.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jdna.evaluation.base import (
    EVALUATORS,
    EvalConfig,
    EvalContext,
    Outcome,
    Prepared,
    interval,
    load_lm,
    metric_entry,
    needs_causal_lm,
)
from jdna.evaluation.parallel import shard_map
from jdna.io import sha256_text
from jdna.models import ModelRef
from jdna.scoring import ChoiceRequest, ChoiceScores, loglikelihood_choices
from jdna.tasks import format_mc_prompt


def first_argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (numpy.argmax)."""
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def norm_lengths(continuations: list[str], delimiter: str) -> list[int]:
    """lm-eval's acc_norm denominators: len(choice), the continuation without its leading delimiter."""
    lengths = []
    for text in continuations:
        if delimiter and text.startswith(delimiter):
            text = text[len(delimiter) :]
        lengths.append(max(1, len(text)))
    return lengths


def predictions(scores: ChoiceScores, lengths: list[int]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction) for one question."""
    normalised = [lp / n for lp, n in zip(scores.logprobs, lengths, strict=True)]
    return first_argmax(scores.logprobs), first_argmax(normalised)


class MultipleChoice:
    higher_is_better = True

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> None:
        needs_causal_lm(ref, "multiple-choice")

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        return {}

    def run(self, ctx: EvalContext) -> Outcome:
        prepared = ctx.prepared
        task, items = prepared.task, prepared.items
        delimiter = task.prompt_format.answer_delimiter
        requests, lengths = [], []
        for item in items:
            prompt, conts = format_mc_prompt(task, item, prepared.shots[item.id])
            requests.append(ChoiceRequest(prompt, conts))
            lengths.append(norm_lengths(conts, delimiter))
        model, tokenizer, load_seconds = load_lm(ctx)
        ctx.reporter.log(f"scoring {len(items)} questions, {sum(len(r.continuations) for r in requests)} options")
        started = time.perf_counter()
        scores = shard_map(
            ctx.dist,
            lambda part: loglikelihood_choices(model, tokenizer, part, batch_size=ctx.config.batch_size),
            requests,
            costs=[len(r.context) + sum(len(c) for c in r.continuations) for r in requests],
        )
        seconds = time.perf_counter() - started

        acc, acc_norm, samples = [], [], []
        for item, request, score, length in zip(items, requests, scores, lengths, strict=True):
            pred, pred_norm = predictions(score, length)
            acc.append(float(pred == item.gold))
            acc_norm.append(float(pred_norm == item.gold))
            samples.append(
                {
                    "id": item.id,
                    "prompt_sha256": sha256_text(request.context),
                    "prompt_tail": request.context[-200:],
                    "choices": request.continuations,
                    "logprobs": [round(lp, 6) for lp in score.logprobs],
                    "prediction": pred,
                    "prediction_norm": pred_norm,
                    "gold": item.gold,
                    "correct": bool(pred == item.gold),
                    "correct_norm": bool(pred_norm == item.gold),
                }
            )
        values = {"acc": acc, "acc_norm": acc_norm}
        metrics = {
            name: metric_entry(float(np.mean(values[name])), interval(values[name], ctx.config.seed))
            for name in task.metrics
            if name in values
        }
        primary = task.primary_metric if task.primary_metric in values else "acc"
        per_item = {
            "ids": [item.id for item in items],
            "values": values[primary],
            "predictions": [s["prediction"] for s in samples],
            "predictions_norm": [s["prediction_norm"] for s in samples],
            "golds": [item.gold for item in items],
        }
        return Outcome(metrics, per_item, samples, seconds, extra={"load_seconds": round(load_seconds, 3)})


EVALUATORS.add("multiple_choice", MultipleChoice())
