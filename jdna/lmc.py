"""Linear mode connectivity (Frankle et al. 2020): evaluate θ(α) = (1−α)·θ_A + α·θ_B along a line.

Both endpoints must share an architecture (same canonical parameter names and shapes, same task head).
Masks need no special handling: a sparse model's pruned weights are real zeros and interpolate like any
other value. The barrier is Frankle et al.'s (2020, §2, "error barrier height"), the metric the paper's
Fig. 10 uses: the supremum over α of the loss (or of the error, 1 − metric, for a higher-is-better metric
bounded by 1; the metric itself when lower is better) minus the mean of the two endpoints' values:
sup_α L(α) − ½[L(0) + L(1)]. It is never negative, as the endpoints are on the path. A barrier near zero
means the endpoints are linearly connected. The largest gap between the curve and the straight chord
joining the endpoints, max_α L(α) − [(1−α)L(0) + αL(1)], is reported too, as `chord_barrier_*`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.artifact import artifact_id, versions
from jdna.errors import JdnaError
from jdna.io import write_json_atomic
from jdna.models import ModelRef, canonical_parameters, head_of, load_model
from jdna.outputs import claim_record, model_inputs
from jdna.paths import runs_dir
from jdna.placement import Placement, resolve_placement
from jdna.progress import Reporter

LMC_PROTOCOL_VERSION = 2  # 2: barrier_* is Frankle's (sup minus the endpoints' mean); 1 was the chord gap


def alpha_grid(points: int) -> list[float]:
    if points < 2:
        raise JdnaError(f"--points {points} is below 2: use at least 2 (the endpoints), e.g. 11")
    return [round(i / (points - 1), 10) for i in range(points)]


def frankle_barrier(values: Sequence[float], higher_is_better: bool) -> float:
    """Frankle et al.'s barrier: sup over the path of the error minus the mean of the endpoints' errors.

    The error is the value itself for a loss or a lower-is-better metric, and 1 − value for a
    higher-is-better metric (accuracy); both reduce to "worst point along the path minus the endpoints'
    mean", measured in the direction that is worse.
    """
    errors = [1.0 - v for v in values] if higher_is_better else list(values)
    return max(errors) - (errors[0] + errors[-1]) / 2


def barrier(values: Sequence[float], alphas: Sequence[float], higher_is_better: bool) -> float:
    """Largest drop of the curve below (metric) or rise above (loss) the chord between the endpoints."""
    first, last = values[0], values[-1]
    gaps = []
    for alpha, value in zip(alphas, values):
        chord = (1 - alpha) * first + alpha * last
        gaps.append(chord - value if higher_is_better else value - chord)
    return max(0.0, max(gaps))


def check_compatible(a: nn.Module, b: nn.Module, ref_a: ModelRef, ref_b: ModelRef) -> None:
    params_a, params_b = canonical_parameters(a), canonical_parameters(b)
    if set(params_a) != set(params_b):
        missing = sorted(set(params_a) ^ set(params_b))[0]
        raise JdnaError(
            f"cannot interpolate {ref_a.display_name} and {ref_b.display_name}: their architectures differ "
            f"(e.g. '{missing}' exists in only one)"
        )
    for name, param in params_a.items():
        if param.shape != params_b[name].shape:
            raise JdnaError(
                f"cannot interpolate: '{name}' is {tuple(param.shape)} in one model and "
                f"{tuple(params_b[name].shape)} in the other"
            )


@torch.no_grad()
def interpolate_into(target: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> None:
    """Write (1−α)·a + α·b into `target`'s parameters (exact copies at α = 0 and α = 1)."""
    for name, param in canonical_parameters(target).items():
        if alpha == 0.0:
            param.copy_(a[name])
        elif alpha == 1.0:
            param.copy_(b[name])
        else:
            param.copy_(torch.lerp(a[name].float(), b[name].float(), alpha).to(param.dtype))


@dataclass
class Scorer:
    """Scores the model currently loaded: (loss, metric). Built once per task, reused for every α."""

    metric_name: str
    higher_is_better: bool
    n: int
    score: Callable[[nn.Module], tuple[float, float]]


def _classification_scorer(task_spec: str, tokenizer: Any, limit: int | None, device: torch.device) -> Scorer:
    from jdna.evaluation.classifier import encode_items, forward_batches, is_regression, pad_id_of
    from jdna.finetune import evaluation_items, load_classification_task

    task = load_classification_task(task_spec)
    items = evaluation_items(task, limit)
    regression = is_regression(task)
    data = encode_items(items, tokenizer, 128, regression)
    pad = pad_id_of(tokenizer)

    def score(model: nn.Module) -> tuple[float, float]:
        total_loss, correct, count = 0.0, 0.0, 0
        order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
        batches = [order[start : start + 64] for start in range(0, len(order), 64)]
        for _, logits, labels in forward_batches(model, data, batches, pad, device):
            if regression:
                total_loss += float(((logits[:, 0] - labels) ** 2).sum())
                correct += float(-((logits[:, 0] - labels) ** 2).sum())
            else:
                total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += float((logits.argmax(-1) == labels).sum())
            count += labels.shape[0]
        return total_loss / count, correct / count

    return Scorer("neg_mse" if regression else "accuracy", True, len(items), score)


def _multiple_choice_scorer(task_spec: str, tokenizer: Any, limit: int | None, seed: int) -> Scorer:
    from jdna.evaluation import EvalConfig, prepare
    from jdna.scoring import ChoiceRequest, loglikelihood_choices
    from jdna.tasks import format_mc_prompt

    prepared = prepare(EvalConfig(task=task_spec, limit=limit, seed=seed))
    requests, golds = [], []
    for item in prepared.items:
        prompt, continuations = format_mc_prompt(prepared.task, item, prepared.shots[item.id])
        requests.append(ChoiceRequest(prompt, continuations))
        golds.append(int(item.gold))

    def score(model: nn.Module) -> tuple[float, float]:
        results = loglikelihood_choices(model, tokenizer, requests)
        loss = sum(-r.logprobs[g] / max(r.n_tokens[g], 1) for r, g in zip(results, golds)) / len(golds)
        accuracy = sum(int(max(range(len(r.logprobs)), key=lambda i: r.logprobs[i]) == g)
                       for r, g in zip(results, golds)) / len(golds)
        return loss, accuracy

    return Scorer("acc", True, len(golds), score)


def _mc_head_scorer(task_spec: str, tokenizer: Any, limit: int | None, seed: int, max_length: int,
                    device: torch.device) -> Scorer:
    """An encoder's multiple-choice head: cross-entropy over each item's options, and accuracy."""
    from jdna.evaluation import EvalConfig, prepare
    from jdna.evaluation.mc_head import encode_items, option_logits

    items = prepare(EvalConfig(task=task_spec, limit=limit, seed=seed)).items
    data = encode_items(items, tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @torch.no_grad()
    def score(model: nn.Module) -> tuple[float, float]:
        total_loss, correct = 0.0, 0.0
        for start in range(0, len(data), 16):
            batch = {k: v.to(device) for k, v in data.collate(range(start, min(start + 16, len(data))), pad).items()}
            logits = option_logits(model, batch)
            total_loss += float(nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
            correct += float((logits.argmax(-1) == batch["labels"]).sum())
        return total_loss / len(data), correct / len(data)

    return Scorer("acc", True, len(items), score)


def _perplexity_scorer(task_spec: str, tokenizer: Any, limit: int | None, seed: int) -> Scorer:
    from jdna.evaluation import EvalConfig, prepare
    from jdna.scoring import rolling_loglikelihood

    prepared = prepare(EvalConfig(task=task_spec, limit=limit, seed=seed))
    texts = [item.question for item in prepared.items]

    def score(model: nn.Module) -> tuple[float, float]:
        total, tokens = 0.0, 0
        for text in texts:
            logprob, count = rolling_loglikelihood(model, tokenizer, text)
            total += logprob
            tokens += count
        nll = -total / max(tokens, 1)
        return nll, math.exp(nll)

    return Scorer("perplexity", False, len(texts), score)


def _task_inputs(task_spec: str, limit: int | None, seed: int) -> dict[str, str]:
    """sha256 of every file the task was read from (part of the content address)."""
    from jdna.evaluation import EvalConfig, prepare

    return prepare(EvalConfig(task=task_spec, limit=limit, seed=seed)).task.inputs


def make_scorer(task_spec: str, ref: ModelRef, tokenizer: Any, limit: int | None, seed: int,
                device: torch.device) -> Scorer:
    """A (loss, metric) scorer for the task, chosen by whether the model carries a classification head."""
    head = head_of(ref)
    if head and head.get("type") == "sequence_classification":
        return _classification_scorer(task_spec, tokenizer, limit, device)
    if head and head.get("type") == "multiple_choice":
        return _mc_head_scorer(task_spec, tokenizer, limit, seed, int(head["max_length"]), device)
    if ref.base.family != "causal_lm":
        raise JdnaError(
            f"'{ref.display_name}' has no classification head: LMC on an encoder needs fine-tuned models "
            "(pipe `jdna finetune` outputs)"
        )
    from jdna.evaluation import EvalConfig, prepare

    kind = prepare(EvalConfig(task=task_spec, limit=limit, seed=seed)).task.kind
    if kind == "multiple_choice":
        return _multiple_choice_scorer(task_spec, tokenizer, limit, seed)
    if kind == "perplexity":
        return _perplexity_scorer(task_spec, tokenizer, limit, seed)
    raise JdnaError(f"lmc supports classification, multiple-choice and perplexity tasks, not {kind} ({task_spec})")


def run_lmc(
    ref_a: ModelRef,
    ref_b: ModelRef,
    task: str,
    points: int = 11,
    limit: int | None = None,
    seed: int = 0,
    output: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Evaluate the linear path between two models on a task; returns the lmc record (docs/records.md).

    `placement` default: the GPU when visible, else the CPU, in float32 (``--dtype auto`` for lmc: the
    interpolated weights and the barrier are measured in full precision, as before the option existed).
    """
    reporter = reporter or Reporter()
    placement = placement or resolve_placement("auto", "float32", ref_a.base.config)
    alphas = alpha_grid(points)
    if limit is not None and limit < 1:
        raise JdnaError(f"--limit {limit} is below 1")
    params = {"protocol": LMC_PROTOCOL_VERSION, "task": task, "points": points, "limit": limit, "seed": seed,
              "other": ref_b.identity, "task_inputs": _task_inputs(task, limit, seed)}
    compute = placement.id_params(device_matters=True)
    if compute:
        params["compute"] = compute
    identity = artifact_id(ref_a.identity, "lmc", params)
    path = Path(output) if output else runs_dir() / "lmc" / f"{identity[:20]}.json"
    if path.exists() and not force:
        try:
            import json

            cached = json.loads(path.read_text())
            if cached.get("id") == identity:
                reporter.log(f"cache hit: {path}")
                return {**cached, "cached": True}
        except (OSError, ValueError):
            pass
    if (head_of(ref_a) or {}).get("num_labels") != (head_of(ref_b) or {}).get("num_labels"):
        raise JdnaError("cannot interpolate: the two models have different task heads (fine-tune both on the task)")
    claim = claim_record(path, identity, output is not None, force, [*model_inputs(ref_a), *model_inputs(ref_b)])
    started = time.perf_counter()
    device = placement.device
    model_a, tokenizer = load_model(ref_a, device=device, dtype=placement.dtype)
    model_b, _ = load_model(ref_b, device=device, dtype=placement.dtype)
    check_compatible(model_a, model_b, ref_a, ref_b)
    state_a = {name: p.detach().clone() for name, p in canonical_parameters(model_a).items()}
    state_b = {name: p.detach().clone() for name, p in canonical_parameters(model_b).items()}
    del model_b
    scorer = make_scorer(task, ref_a, tokenizer, limit, seed, device)
    losses, metrics = [], []
    for index, alpha in enumerate(alphas):
        interpolate_into(model_a, state_a, state_b, alpha)
        model_a.eval()
        loss, metric = scorer.score(model_a)
        losses.append(round(loss, 6))
        metrics.append(round(metric, 6))
        reporter.progress("interpolation points", index + 1, len(alphas))
    record = {
        "kind": "lmc",
        "path": str(path),
        "id": identity,
        "cached": False,
        "task": task,
        "model_a": {"name": ref_a.display_name, "id": ref_a.identity, "lineage": ref_a.lineage(),
                    "compression": ref_a.compression()},
        "model_b": {"name": ref_b.display_name, "id": ref_b.identity, "lineage": ref_b.lineage(),
                    "compression": ref_b.compression()},
        "alphas": alphas,
        "loss": losses,
        "metric": metrics,
        "metric_name": scorer.metric_name,
        "higher_is_better": scorer.higher_is_better,
        "barrier_loss": round(frankle_barrier(losses, higher_is_better=False), 6),
        "barrier_metric": round(frankle_barrier(metrics, higher_is_better=scorer.higher_is_better), 6),
        "barrier_definition": "frankle2020: sup_alpha error(alpha) - (error(0) + error(1)) / 2; error = loss, "
        "or 1 - metric when higher is better",
        "chord_barrier_loss": round(barrier(losses, alphas, higher_is_better=False), 6),
        "chord_barrier_metric": round(barrier(metrics, alphas, higher_is_better=scorer.higher_is_better), 6),
        "n": scorer.n,
        **placement.record(),
        "timing": {"seconds": round(time.perf_counter() - started, 3)},
        "versions": versions(),
    }
    write_json_atomic(path, record, claim)
    return record
