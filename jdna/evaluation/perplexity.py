"""Perplexity: rolling-window log-likelihood of each item's text (lm-eval's `loglikelihood_rolling`).

The metric pools items token-weighted, exp(total NLL / total tokens); lower is better. Per item the record
keeps the negative log-likelihood and the token count, so analyses can bootstrap the ratio.
"""

from __future__ import annotations

import math
import time
from typing import Any

from jdna.errors import JdnaError
from jdna.evaluation.base import (
    BOOTSTRAP_RESAMPLES,
    EVALUATORS,
    EvalConfig,
    EvalContext,
    Outcome,
    Prepared,
    Transfer,
    load_lm,
    metric_entry,
    needs_causal_lm,
)
from jdna.evaluation.parallel import shard_map
from jdna.metrics import bootstrap_ci, perplexity
from jdna.models import ModelRef
from jdna.scoring import rolling_loglikelihood


class Perplexity:
    higher_is_better = False

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig, transfer: Transfer | None = None) -> None:
        needs_causal_lm(ref, "perplexity")

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        return {"windows": "disjoint, max_length"}

    def run(self, ctx: EvalContext) -> Outcome:
        items = ctx.prepared.items
        model, tokenizer, load_seconds = load_lm(ctx)
        started = time.perf_counter()

        def score(texts: list[str]) -> list[tuple[float, int]]:
            out = []
            for done, text in enumerate(texts, 1):
                out.append(rolling_loglikelihood(model, tokenizer, text, batch_size=ctx.config.batch_size))
                ctx.reporter.progress("perplexity", done, len(texts))
            return out

        texts = [item.question for item in items]
        scored = shard_map(ctx.dist, score, texts, costs=[len(text) for text in texts])
        nlls = [-total for total, _ in scored]
        tokens = [count for _, count in scored]
        seconds = time.perf_counter() - started
        if sum(tokens) == 0:
            raise JdnaError("every evaluated text is empty, so there is nothing to score: check the task's texts")
        value = perplexity(nlls, tokens)
        low, high = bootstrap_ci((perplexity, nlls, tokens), n_resamples=BOOTSTRAP_RESAMPLES, seed=ctx.config.seed)
        samples = [
            {
                "id": item.id,
                "nll": round(nll, 6),
                "tokens": count,
                "perplexity": round(math.exp(nll / count), 6) if count else None,
            }
            for item, nll, count in zip(items, nlls, tokens, strict=True)
        ]
        per_item = {"ids": [item.id for item in items], "values": nlls, "nll": nlls, "tokens": tokens}
        metrics = {"perplexity": metric_entry(value, [low, high])}
        extra = {"load_seconds": round(load_seconds, 3), "tokens": sum(tokens)}
        return Outcome(metrics, per_item, samples, seconds, extra=extra)


EVALUATORS.add("perplexity", Perplexity())
