"""Generation: greedy decoding cut at stop strings, scored by exact match and SQuAD token F1 over aliases.

With `--context-tokens N` each item's evidence document is cut to a window of N of the model tokenizer's
tokens that contains an answer occurrence (`jdna.tasks.apply_context_window`); 0 is closed book. With
`--context-fraction F` the window is ceil(F x the document's tokens). Either way, items whose document holds
no answer were excluded before scoring (`jdna.evaluation.prepare`), and a window shorter than the shortest
answer occurrence is widened to it, so every window holds the answer. The record says what fraction of the
items had an answer in their window, and how many windows were widened.
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
from jdna.evaluation.parallel import shard_map
from jdna.io import sha256_text
from jdna.metrics import exact_match, token_f1
from jdna.models import ModelRef
from jdna.scoring import greedy_generate
from jdna.tasks import PromptFormat, apply_context_window, format_prompt, offsets_tokenizer

CONTEXT_PROTOCOL_VERSION = 2

PER_ITEM_SCORES = {"exact_match": exact_match, "f1": token_f1, "token_f1": token_f1}


def stop_strings(fmt: PromptFormat) -> list[str]:
    """Where an answer ends: a newline, or the separator that would start the next demonstration."""
    stops = ["\n"]
    if fmt.shot_separator and fmt.shot_separator not in stops:
        stops.append(fmt.shot_separator)
    return stops


class Generation:
    higher_is_better = True

    def check(self, ref: ModelRef, prepared: Prepared, config: EvalConfig, transfer: Transfer | None = None) -> None:
        needs_causal_lm(ref, "generation")
        if config.max_new_tokens < 1:
            raise JdnaError(f"--max-new-tokens {config.max_new_tokens} is below 1: use e.g. 32")

    def id_params(self, ref: ModelRef, prepared: Prepared, config: EvalConfig) -> dict[str, Any]:
        stop = stop_strings(prepared.task.prompt_format)
        params: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "stop": stop}
        if config.context_knob:
            # 2: unanswerable items excluded, windows widened to the answer (1 kept them and cut windows short).
            params["context_protocol"] = CONTEXT_PROTOCOL_VERSION
        return params

    def run(self, ctx: EvalContext) -> Outcome:
        prepared, config = ctx.prepared, ctx.config
        task = prepared.task
        model, tokenizer, load_seconds = load_lm(ctx)
        items = prepared.items
        extra: dict[str, Any] = {"load_seconds": round(load_seconds, 3)}
        if config.context_knob:
            flag = "--context-tokens" if config.context_tokens is not None else "--context-fraction"
            if not getattr(tokenizer, "is_fast", False):
                raise JdnaError(
                    f"{flag} counts the model's tokens, but '{ctx.ref.base.name}' has no fast tokenizer "
                    "(offsets are needed): use a model with a tokenizer.json"
                )
            items = apply_context_window(
                items,
                config.context_tokens,
                offsets_tokenizer(tokenizer),
                config.seed,
                fraction=config.context_fraction,
                widen_to_answer=True,
            )
            inside = [bool(item.meta.get("answer_in_context")) for item in items]
            extra["answer_in_context"] = round(float(np.mean(inside)), 6) if inside else None
            extra["context_unit"] = "model_tokens"
            extra["context_windows"] = {
                "mean_window_tokens": round(float(np.mean([item.meta["window_tokens"] for item in items])), 3),
                "mean_document_tokens": round(float(np.mean([item.meta["context_tokens"] for item in items])), 3),
                "widened_to_answer": sum(bool(item.meta["window_widened"]) for item in items),
            }
        stop = stop_strings(task.prompt_format)
        prompts = [format_prompt(task, item, prepared.shots[item.id]) for item in items]
        ctx.reporter.log(f"generating for {len(items)} items (greedy, up to {config.max_new_tokens} tokens)")
        started = time.perf_counter()
        outputs = shard_map(
            ctx.dist,
            lambda part: greedy_generate(
                model, tokenizer, part, config.max_new_tokens, stop, batch_size=config.batch_size,
                progress=ctx.reporter.stage("generating"),
            ),
            prompts,
            costs=[len(prompt) for prompt in prompts],
        )
        seconds = time.perf_counter() - started

        names = [name for name in task.metrics if name in PER_ITEM_SCORES] or ["exact_match", "f1"]
        values: dict[str, list[float]] = {name: [] for name in names}
        samples = []
        for item, prompt, output in zip(items, prompts, outputs, strict=True):
            aliases = list(item.answers or [])
            scores = {name: PER_ITEM_SCORES[name](output, aliases) for name in names}
            for name in names:
                values[name].append(scores[name])
            sample = {
                "id": item.id,
                "prompt": prompt,
                "prompt_sha256": sha256_text(prompt),
                "prompt_tail": prompt[-200:],
                "prediction": output,
                "gold": aliases,
                "correct": bool(exact_match(output, aliases)),
                **{name: scores[name] for name in names},
            }
            if config.context_knob:
                sample["answer_in_context"] = bool(item.meta.get("answer_in_context"))
            samples.append(sample)
        metrics = {
            name: metric_entry(float(np.mean(values[name])), interval(values[name], config.seed)) for name in names
        }
        per_item: dict[str, Any] = {
            "ids": [item.id for item in items],
            "values": values[names[0]],
            "predictions": outputs,
        }
        for name in names[1:]:
            per_item[name] = values[name]
        if config.context_knob:
            per_item["answer_in_context"] = [bool(item.meta.get("answer_in_context")) for item in items]
        return Outcome(metrics, per_item, samples, seconds, extra=extra, item_values=values)


EVALUATORS.add("generation", Generation())
