"""Multiple choice: the log-likelihood of each option given the prompt, as lm-evaluation-harness scores it.

`acc` takes the argmax of the summed log-likelihoods; `acc_norm` (lm-eval's) the argmax of the sum divided
by the option's length in characters, not counting the answer delimiter that starts each continuation.
Ties go to the first option, as numpy.argmax does in lm-eval.

An encoder fine-tuned with a multiple-choice head (`jdna finetune` on a multiple-choice task, the paper's
RoBERTa on CommonsenseQA) is scored by that head instead: each (question, option) pair gets a logit and the
prediction is the argmax (`jdna.evaluation.mc_head.score_items`); the metric is `acc` alone.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.evaluation.base import (
    EVALUATORS,
    EvalConfig,
    EvalContext,
    Outcome,
    Prepared,
    Transfer,
    interval,
    load_lm,
    metric_entry,
    needs_causal_lm,
)
from jdna.evaluation.mc_head import HEAD_TYPE, score_items
from jdna.evaluation.parallel import shard_map
from jdna.io import sha256_text
from jdna.models import ModelRef, head_of
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

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig, transfer: Transfer | None = None) -> None:
        if _head(ref) is not None:
            if config.shots:
                raise JdnaError(
                    f"'{ref.display_name}' scores options with its multiple-choice head, which takes no "
                    "demonstrations: drop --shots"
                )
            return
        if ref.base.family != "causal_lm":
            raise JdnaError(
                f"multiple-choice tasks score an encoder with a multiple-choice head, which '{ref.display_name}' "
                f"does not carry: fine-tune it first (jdna finetune {ref.display_name} --task {config.task}), "
                "or use a causal LM"
            )
        needs_causal_lm(ref, "multiple-choice")

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        head = _head(ref)
        return {"scorer": "multiple_choice_head", "max_length": head["max_length"]} if head else {}

    def run(self, ctx: EvalContext) -> Outcome:
        head = _head(ctx.ref)
        if head is not None:
            return run_head(ctx, int(head["max_length"]))
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
            lambda part: loglikelihood_choices(model, tokenizer, part, batch_size=ctx.config.batch_size,
                                               progress=ctx.reporter.stage("scoring")),
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
                    "prompt": request.context,
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
            "n_options": [len(item.choices or []) for item in items],  # chance per item, for difficulty's floor
        }
        return Outcome(
            metrics, per_item, samples, seconds, extra={"load_seconds": round(load_seconds, 3)}, item_values=values
        )


def _head(ref: ModelRef) -> dict[str, Any] | None:
    head = head_of(ref)
    return head if head and head.get("type") == HEAD_TYPE else None


def run_head(ctx: EvalContext, max_length: int) -> Outcome:
    """Score the prepared items with an encoder's multiple-choice head: argmax of the option logits."""
    items = ctx.prepared.items
    model, tokenizer, load_seconds = load_lm(ctx)
    ctx.reporter.log(f"scoring {len(items)} questions with the multiple-choice head")
    started = time.perf_counter()
    scores = score_items(model, tokenizer, items, max_length, ctx.device, batch_size=ctx.config.batch_size or 16)
    seconds = time.perf_counter() - started
    acc, samples = [], []
    for item, logits in zip(items, scores, strict=True):
        prediction = first_argmax(logits)
        acc.append(float(prediction == item.gold))
        samples.append(
            {
                "id": item.id,
                "question": item.question[-200:],
                "choices": list(item.choices or []),
                "logits": [round(value, 6) for value in logits],
                "prediction": prediction,
                "gold": item.gold,
                "correct": bool(prediction == item.gold),
            }
        )
    metrics = {"acc": metric_entry(float(np.mean(acc)), interval(acc, ctx.config.seed))}
    per_item = {
        "ids": [item.id for item in items],
        "values": acc,
        "predictions": [s["prediction"] for s in samples],
        "golds": [item.gold for item in items],
        "n_options": [len(item.choices or []) for item in items],
    }
    extra = {"load_seconds": round(load_seconds, 3), "scorer": "multiple_choice_head"}
    return Outcome(metrics, per_item, samples, seconds, extra=extra)


EVALUATORS.add("multiple_choice", MultipleChoice())
