"""Evaluation metrics and percentile-bootstrap confidence intervals.

Every corpus metric is written once in a *batched* form that scores many resamples of the same items
at once (rows of a 2-D array), so `bootstrap_ci` is a handful of numpy operations rather than a Python
loop over resamples. The public single-sample functions are thin wrappers around the batched forms,
which keeps the point estimate and the bootstrap distribution computed by the same code.

Conventions follow scikit-learn / scipy / the SQuAD evaluation script, so numbers are comparable to
published results:
- `matthews_corrcoef` is the multi-class generalisation (Gorodkin's R_K); 0.0 when undefined.
- `f1` is binary (positive label 1) or macro over the labels present; 0.0 for a label never predicted
  nor present.
- `pearson` / `spearman` are NaN for a constant input (the correlation is undefined).
- `exact_match` / `token_f1` take the best score over the answer aliases, after SQuAD normalisation.
"""

from __future__ import annotations

import collections
import functools
import math
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.registry import Registry

ArrayLike = Sequence[Any] | np.ndarray
Batched = Callable[..., np.ndarray]

# Bootstrap resamples are drawn and scored in chunks of about this many elements, to bound memory
# for large evaluation sets (1000 resamples x 14k MMLU items would otherwise be ~110 MB per array).
_CHUNK_ELEMENTS = 1 << 22


def _batchable(batched: Batched) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Attach the batched implementation to a public metric so `bootstrap_ci` can vectorise it."""

    def decorator(fn: Callable[..., float]) -> Callable[..., float]:
        fn.batched = batched  # type: ignore[attr-defined]
        return fn

    return decorator


def _pair(predictions: ArrayLike, golds: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(predictions), np.asarray(golds)
    if p.shape != g.shape:
        raise JdnaError(
            f"metric got {p.shape[-1] if p.ndim else 0} predictions for "
            f"{g.shape[-1] if g.ndim else 0} gold values: pass one prediction per item"
        )
    if p.ndim != 1 or p.size == 0:
        raise JdnaError("metric needs a non-empty 1-D sequence of predictions: check the evaluated items")
    return p, g


# ---------------------------------------------------------------------------------------------------
# Classification


def _accuracy_batched(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    return (p == g).mean(axis=-1)


@_batchable(_accuracy_batched)
def accuracy(predictions: ArrayLike, golds: ArrayLike) -> float:
    """Fraction of predictions equal to the gold value."""
    p, g = _pair(predictions, golds)
    return float(_accuracy_batched(p[None], g[None])[0])


def _confusion_batched(p: np.ndarray, g: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion counts C[r, true, pred] for each row r, over the given sorted label values."""
    n_labels = len(labels)
    # searchsorted maps values to label indices; values absent from `labels` are rejected by callers.
    true_idx = np.searchsorted(labels, g)
    pred_idx = np.searchsorted(labels, p)
    rows = p.shape[0]
    flat = (true_idx * n_labels + pred_idx) + (np.arange(rows)[:, None] * n_labels * n_labels)
    counts = np.bincount(flat.ravel(), minlength=rows * n_labels * n_labels)
    return counts.reshape(rows, n_labels, n_labels)


def _label_set(p: np.ndarray, g: np.ndarray, labels: ArrayLike | None) -> np.ndarray:
    present = np.unique(np.concatenate([p.ravel(), g.ravel()]))
    if labels is None:
        return present
    chosen = np.unique(np.asarray(labels))
    missing = np.setdiff1d(present, chosen)
    if missing.size:
        raise JdnaError(
            f"metric got label value {missing[0]!r} outside labels {chosen.tolist()}: "
            "pass every label that predictions or golds can take"
        )
    return chosen


def _matthews_batched(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    c = _confusion_batched(p, g, _label_set(p, g, None)).astype(np.float64)
    true_sum = c.sum(axis=2)
    pred_sum = c.sum(axis=1)
    n_correct = np.trace(c, axis1=1, axis2=2)
    n = c.sum(axis=(1, 2))
    cov_tp = n_correct * n - (true_sum * pred_sum).sum(axis=1)
    cov_pp = n * n - (pred_sum * pred_sum).sum(axis=1)
    cov_tt = n * n - (true_sum * true_sum).sum(axis=1)
    denom = np.sqrt(cov_tt * cov_pp)
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = np.where(denom == 0, 0.0, cov_tp / np.where(denom == 0, 1.0, denom))
    return mcc


@_batchable(_matthews_batched)
def matthews_corrcoef(predictions: ArrayLike, golds: ArrayLike) -> float:
    """Matthews correlation coefficient (multi-class R_K as in scikit-learn); 0.0 when undefined."""
    p, g = _pair(predictions, golds)
    return float(_matthews_batched(p[None], g[None])[0])


def _f1_batched(
    p: np.ndarray,
    g: np.ndarray,
    average: str = "binary",
    positive: Any = 1,
    labels: ArrayLike | None = None,
) -> np.ndarray:
    label_values = _label_set(p, g, labels)
    if average == "binary":
        hits = np.flatnonzero(label_values == positive)
        if hits.size == 0:
            # The positive class never occurs, so there are no true positives: F1 is 0 by convention.
            return np.zeros(p.shape[0])
        label_index = [int(hits[0])]
    elif average == "macro":
        label_index = list(range(len(label_values)))
    else:
        raise JdnaError(f"unknown f1 average '{average}': use 'binary' or 'macro'")
    c = _confusion_batched(p, g, label_values).astype(np.float64)
    diag = np.diagonal(c, axis1=1, axis2=2)[:, label_index]
    pred_sum = c.sum(axis=1)[:, label_index]
    true_sum = c.sum(axis=2)[:, label_index]
    denom = pred_sum + true_sum
    per_label = np.where(denom == 0, 0.0, 2 * diag / np.where(denom == 0, 1.0, denom))
    return per_label.mean(axis=1)


@_batchable(_f1_batched)
def f1(
    predictions: ArrayLike,
    golds: ArrayLike,
    *,
    average: str = "binary",
    positive: Any = 1,
    labels: ArrayLike | None = None,
) -> float:
    """F1 score: of the `positive` class ("binary") or the unweighted mean over classes ("macro").

    Macro averages over `labels` when given, else over the labels present in predictions or golds.
    """
    p, g = _pair(predictions, golds)
    return float(_f1_batched(p[None], g[None], average=average, positive=positive, labels=labels)[0])


# ---------------------------------------------------------------------------------------------------
# Regression / correlation


def _pearson_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom == 0, np.nan, (xc * yc).sum(axis=-1) / np.where(denom == 0, 1.0, denom))
    return np.clip(r, -1.0, 1.0)


@_batchable(_pearson_batched)
def pearson(predictions: ArrayLike, golds: ArrayLike) -> float:
    """Pearson correlation; NaN if either side is constant."""
    p, g = _pair(predictions, golds)
    return float(_pearson_batched(p[None], g[None])[0])


def _rank_batched(a: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing their average rank (scipy's 'average')."""
    rows, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    ordered = np.take_along_axis(a, order, axis=1)
    starts_group = np.ones((rows, n), dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    # Group ids offset by row*n are unique across rows, and since groups are laid out contiguously in
    # row-major order, a cumulative sum of group sizes gives each group's first flat position.
    group = np.cumsum(starts_group, axis=1) - 1 + (np.arange(rows)[:, None] * n)
    sizes = np.bincount(group.ravel(), minlength=rows * n)
    first_flat = np.cumsum(sizes) - sizes
    row_of_group = np.arange(rows * n) // n
    average_rank = (first_flat - row_of_group * n) + (sizes + 1) / 2.0
    ranks = np.empty((rows, n), dtype=np.float64)
    np.put_along_axis(ranks, order, average_rank[group], axis=1)
    return ranks


def rankdata(values: ArrayLike) -> np.ndarray:
    """1-based ranks of `values` with ties given their average rank (like scipy.stats.rankdata)."""
    a = np.asarray(values)
    if a.ndim != 1:
        raise JdnaError("rankdata needs a 1-D sequence")
    if a.size == 0:
        return np.zeros(0)
    return _rank_batched(a[None])[0]


def _spearman_batched(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_batched(_rank_batched(x), _rank_batched(y))


@_batchable(_spearman_batched)
def spearman(predictions: ArrayLike, golds: ArrayLike) -> float:
    """Spearman rank correlation: Pearson of average ranks (ties handled like scipy)."""
    p, g = _pair(predictions, golds)
    return float(_spearman_batched(p[None], g[None])[0])


# ---------------------------------------------------------------------------------------------------
# Generation (SQuAD semantics)

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, squash whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_aliases(aliases: Sequence[str]) -> None:
    if isinstance(aliases, str):
        raise JdnaError("answer aliases must be a list of strings, not one string: wrap it as [answer]")
    if not aliases:
        raise JdnaError("an item has no gold answers: give each generation item at least one answer")


def exact_match(prediction: str, aliases: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised alias, else 0.0."""
    _check_aliases(aliases)
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(alias) for alias in aliases))


def _token_f1_single(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    if not prediction_tokens or not gold_tokens:
        # SQuAD v2 convention: two empty answers agree, an empty and a non-empty one do not.
        return float(prediction_tokens == gold_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, aliases: Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and the best-matching alias."""
    _check_aliases(aliases)
    prediction_tokens = normalize_answer(prediction).split()
    return max(_token_f1_single(prediction_tokens, normalize_answer(alias).split()) for alias in aliases)


def _per_item(score: Callable[[str, Sequence[str]], float]) -> Callable[..., float]:
    """Corpus mean of a per-item generation score, carrying a `per_item` hook for the bootstrap."""

    def per_item(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> np.ndarray:
        if len(predictions) != len(golds):
            raise JdnaError(
                f"metric got {len(predictions)} predictions for {len(golds)} items: "
                "pass one prediction per item"
            )
        return np.array([score(p, g) for p, g in zip(predictions, golds, strict=True)], dtype=np.float64)

    def corpus(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
        values = per_item(predictions, golds)
        if values.size == 0:
            raise JdnaError("metric needs at least one item: check the evaluated items")
        return float(values.mean())

    corpus.per_item = per_item  # type: ignore[attr-defined]
    corpus.__name__ = f"mean_{score.__name__}"
    corpus.__doc__ = f"Mean {score.__name__} over items (golds are lists of aliases)."
    return corpus


mean_exact_match = _per_item(exact_match)
mean_token_f1 = _per_item(token_f1)


def perplexity(nlls: ArrayLike, token_counts: ArrayLike) -> float:
    """exp(total negative log-likelihood / total tokens), pooling items token-weighted."""
    total_tokens = float(np.sum(np.asarray(token_counts, dtype=np.float64)))
    if total_tokens <= 0:
        raise JdnaError("perplexity needs at least one scored token: check the evaluated texts")
    return math.exp(float(np.sum(np.asarray(nlls, dtype=np.float64))) / total_tokens)


# ---------------------------------------------------------------------------------------------------
# Name lookup: Task.metrics names → functions taking (predictions, golds)

METRICS: Registry[Callable[..., float]] = Registry("metric")
METRICS.add("accuracy", accuracy)
# Multiple choice: the scorer turns raw / length-normalised log-likelihoods into predicted indices;
# both are then plain accuracy.
METRICS.add("acc", accuracy)
METRICS.add("acc_norm", accuracy)
METRICS.add("matthews", matthews_corrcoef)
METRICS.add("pearson", pearson)
METRICS.add("spearman", spearman)
METRICS.add("exact_match", mean_exact_match)
METRICS.add("token_f1", mean_token_f1)
METRICS.add("f1", f1)


def get_metric(name: str, kind: str = "classification", n_labels: int | None = None) -> Callable[..., float]:
    """The function behind a `Task.metrics` name for a task kind.

    "f1" means token F1 for generation tasks, binary F1 for two-label classification and macro F1 when
    there are more labels (`n_labels`, e.g. MNLI's 3).
    """
    if name == "f1":
        if kind == "generation":
            return mean_token_f1
        if n_labels is not None and n_labels > 2:
            return functools.partial(f1, average="macro", labels=list(range(n_labels)))
        return f1
    if name == "perplexity":
        return perplexity
    return METRICS.get(name)


# ---------------------------------------------------------------------------------------------------
# Bootstrap


def _resample_chunks(rng: np.random.Generator, n_items: int, n_resamples: int):
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_items))
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        yield rng.integers(0, n_items, size=(rows, n_items))
        done += rows


def _batched_of(metric_fn: Callable[..., Any]) -> Callable[..., np.ndarray] | None:
    if isinstance(metric_fn, functools.partial):
        inner = getattr(metric_fn.func, "batched", None)
        if inner is None:
            return None
        return functools.partial(inner, *metric_fn.args, **metric_fn.keywords)
    return getattr(metric_fn, "batched", None)


def bootstrap_ci(
    data: ArrayLike | tuple[Callable[..., Any], ArrayLike, ArrayLike],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval over items, deterministic for a seed.

    `data` is either per-item values (the statistic is their mean, e.g. 0/1 correctness) or a tuple
    `(metric_fn, predictions, golds)` for a corpus metric such as F1 or MCC that is not a mean of
    per-item values. Resamples draw items with replacement; the interval is the (1-level)/2 and
    (1+level)/2 quantiles of the resampled statistic (resamples where it is undefined, e.g. a
    constant-input correlation, are ignored). Metrics from this module are scored vectorised; any
    other callable is called once per resample.
    """
    if not 0.0 < level < 1.0:
        raise JdnaError(f"bootstrap level {level} is outside (0, 1): use e.g. 0.95")
    if n_resamples < 1:
        raise JdnaError(f"bootstrap needs n_resamples >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)

    if isinstance(data, tuple) and len(data) == 3 and callable(data[0]):
        metric_fn, predictions, golds = data
        per_item_fn = getattr(metric_fn, "per_item", None)
        if per_item_fn is not None:
            values = np.asarray(per_item_fn(predictions, golds), dtype=np.float64)
            stats = _bootstrap_means(values, rng, n_resamples)
        else:
            batched = _batched_of(metric_fn)
            pieces = []
            if batched is not None:
                p, g = _pair(predictions, golds)
                for idx in _resample_chunks(rng, len(p), n_resamples):
                    pieces.append(np.asarray(batched(p[idx], g[idx]), dtype=np.float64))
            else:
                # Arbitrary callables may take ragged golds (alias lists), so resample plain lists.
                p_list, g_list = list(predictions), list(golds)
                if len(p_list) != len(g_list) or not p_list:
                    raise JdnaError(
                        f"bootstrap got {len(p_list)} predictions for {len(g_list)} items: "
                        "pass one prediction per item"
                    )
                for idx in _resample_chunks(rng, len(p_list), n_resamples):
                    pieces.append(
                        np.array(
                            [metric_fn([p_list[i] for i in row], [g_list[i] for i in row]) for row in idx],
                            dtype=np.float64,
                        )
                    )
            stats = np.concatenate(pieces)
    else:
        values = np.asarray(data, dtype=np.float64)
        if values.ndim != 1:
            raise JdnaError("bootstrap_ci needs a 1-D sequence of per-item values")
        stats = _bootstrap_means(values, rng, n_resamples)

    if np.all(np.isnan(stats)):
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(stats, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    if values.size == 0:
        raise JdnaError("bootstrap needs at least one item: check the evaluated items")
    chunks = _resample_chunks(rng, values.size, n_resamples)
    return np.concatenate([values[idx].mean(axis=1) for idx in chunks])
