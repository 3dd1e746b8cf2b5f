"""The hypothesis statistics: rank correlations, their bootstrap intervals, monotonicity violations, verdicts.

The Junk DNA hypothesis says the harder the task, the more compression hurts: the normalised drop
(1 − compressed/dense) should rise with difficulty. With the handful of difficulty levels a study has,
a rank correlation between difficulty and drop is the natural statistic, and its uncertainty comes from two
sources the bootstrap resamples together: which items were evaluated (per-item values of each record, with
the same resampled items for records evaluated on the same items, so compressed and dense stay paired) and
which seeds were run (replicate records at a difficulty level are resampled with replacement).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from jdna.errors import JdnaError
from jdna.metrics import get_metric, spearman

# Bounds the (resamples x items) index blocks drawn at once, as jdna.metrics does.
_CHUNK_ELEMENTS = 1 << 22

MONOTONE_RHO = 0.8
MIN_LEVELS = 3

RULE = (
    f"verdict per level, from Spearman ρ between difficulty and normalised drop (1 − compressed/dense) and "
    f"its bootstrap 95% CI over items and seeds: 'monotone' if ρ ≥ {MONOTONE_RHO} and the CI's lower end > 0; "
    f"'not monotone' if ρ ≤ 0 or the CI's upper end < {MONOTONE_RHO}; otherwise 'inconclusive' — as are "
    f"levels with fewer than {MIN_LEVELS} difficulty levels, an undefined ρ (no variation), or no interval "
    "(one seed and no per-item values)"
)


# ---------------------------------------------------------------------------------------------------
# Rank correlations


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-b (ties in either variable handled as scipy.stats.kendalltau does); NaN if undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise JdnaError("kendall_tau_b needs two 1-D sequences of equal length")
    return float(kendall_tau_b_batched(a, b[None])[0])


def kendall_tau_b_batched(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """τ-b of a fixed `x` against each row of `ys`.

    τ-b = Σ sign(Δx)·sign(Δy) / sqrt(#pairs untied in x · #pairs untied in y), over all pairs i < j: the
    tie-corrected denominators (n0 − n1)(n0 − n2) are exactly these untied-pair counts.
    """
    n = x.shape[0]
    if n < 2:
        return np.full(ys.shape[0], np.nan)
    i, j = np.triu_indices(n, k=1)
    # Resampled drops can be ±inf (a resample whose dense score is 0); inf − inf gives NaN, and a NaN τ is
    # what such a resample should yield, so numpy's warning about it is noise.
    with np.errstate(invalid="ignore", divide="ignore"):
        sx = np.sign(x[j] - x[i])
        sy = np.sign(ys[:, j] - ys[:, i])
        concordance = (sy * sx).sum(axis=1)
        denom = np.sqrt(np.abs(sx).sum() * np.abs(sy).sum(axis=1))
        return np.where(denom == 0, np.nan, concordance / np.where(denom == 0, 1.0, denom))


def spearman_rho(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ with average ranks for ties (jdna.metrics.spearman); NaN if either side is constant."""
    if len(x) < 2:
        return math.nan
    return spearman(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))


def spearman_batched(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's ρ of a fixed `x` against each row of `ys` (jdna.metrics' vectorised form)."""
    if x.shape[0] < 2:
        return np.full(ys.shape[0], np.nan)
    return spearman.batched(np.broadcast_to(x, ys.shape), ys)  # type: ignore[attr-defined]


def interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap samples, ignoring undefined (NaN) ones; None if none is defined."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(low), float(high)]


# ---------------------------------------------------------------------------------------------------
# Item bootstrap of each record's primary metric


@dataclass
class ItemData:
    """A record's per-item values, sorted by item id so records on the same items line up."""

    ids: tuple[str, ...]
    values: np.ndarray | None = None  # per-item contributions whose mean is the metric
    nll: np.ndarray | None = None  # perplexity: per-item negative log-likelihood …
    tokens: np.ndarray | None = None  # … and token counts, pooled token-weighted
    predictions: np.ndarray | None = None  # corpus metrics (MCC, F1, correlations) re-scored per resample …
    golds: np.ndarray | None = None
    batched: Callable[..., np.ndarray] | None = None  # … by jdna.metrics' vectorised form

    def statistic(self, idx: np.ndarray) -> np.ndarray:
        """The metric on each row of resampled item indices."""
        if self.batched is not None:
            assert self.predictions is not None and self.golds is not None
            return np.asarray(self.batched(self.predictions[idx], self.golds[idx]), dtype=np.float64)
        if self.values is not None:
            return self.values[idx].mean(axis=1)
        assert self.nll is not None and self.tokens is not None
        return np.exp(self.nll[idx].sum(axis=1) / self.tokens[idx].sum(axis=1))


def item_data(record: dict, value: float) -> ItemData | None:
    """A record's per-item values when it has them and they reproduce its metric; None otherwise.

    Metrics that are not a mean of per-item values (MCC, F1 over classes, correlations) are re-scored from
    `per_item.predictions`/`golds` when the record has them; a record whose per-item data does not reproduce
    its metric is treated as fixed rather than resampled wrongly.
    """
    per_item = record.get("per_item")
    if not isinstance(per_item, dict) or not per_item.get("ids"):
        return None
    ids = [str(i) for i in per_item["ids"]]
    order = np.argsort(np.asarray(ids), kind="stable")
    sorted_ids = tuple(ids[i] for i in order)
    n = len(ids)
    if record.get("primary_metric") == "perplexity":
        nll, tokens = per_item.get("nll"), per_item.get("tokens")
        if nll is None or tokens is None or len(nll) != n or len(tokens) != n:
            return None
        data = ItemData(sorted_ids, nll=np.asarray(nll, float)[order], tokens=np.asarray(tokens, float)[order])
    else:
        values = per_item.get("values")
        if values is None or len(values) != n:
            return None
        data = ItemData(sorted_ids, values=np.asarray(values, float)[order])
    full = np.arange(n)[None]
    if math.isclose(float(data.statistic(full)[0]), value, rel_tol=1e-6, abs_tol=1e-6):
        return data
    corpus = _corpus_metric(record, per_item, order)
    if corpus is not None and math.isclose(float(corpus.statistic(full)[0]), value, rel_tol=1e-6, abs_tol=1e-6):
        return ItemData(sorted_ids, predictions=corpus.predictions, golds=corpus.golds, batched=corpus.batched)
    return None


def _corpus_metric(record: dict, per_item: dict, order: np.ndarray) -> ItemData | None:
    """Predictions and golds with the vectorised jdna.metrics function of the record's primary metric."""
    predictions, golds = per_item.get("predictions"), per_item.get("golds")
    if predictions is None or golds is None or len(predictions) != len(order) or len(golds) != len(order):
        return None
    try:
        p, g = np.asarray(predictions)[order], np.asarray(golds)[order]
        if p.dtype == object or g.dtype == object:
            return None
        n_labels = len(np.union1d(p, g)) if record.get("task_kind") != "generation" else None
        fn = get_metric(str(record.get("primary_metric")), str(record.get("task_kind") or "classification"),
                        n_labels)
    except (JdnaError, ValueError, TypeError):
        return None
    if isinstance(fn, functools.partial):
        inner = getattr(fn.func, "batched", None)
        batched = functools.partial(inner, *fn.args, **fn.keywords) if inner else None
    else:
        batched = getattr(fn, "batched", None)
    if batched is None:
        return None
    return ItemData((), predictions=p, golds=g, batched=batched)


def resample_records(
    records: Sequence[dict], values: Sequence[float], n_resamples: int, seed: int = 0
) -> tuple[np.ndarray, list[bool]]:
    """Bootstrap distribution (records × resamples) of each record's primary metric over its items.

    Records evaluated on the same set of item ids share the resampled indices, so a compressed model and
    its dense baseline (or two difficulty levels on the same items) are compared on the same draw. Records
    without usable per-item values keep their value in every resample; the second result says which records
    were resampled.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(records), n_resamples))
    datas = [item_data(r, v) for r, v in zip(records, values)]
    by_items: dict[tuple[str, ...], list[int]] = {}
    for index, data in enumerate(datas):
        if data is None:
            out[index] = values[index]
        else:
            by_items.setdefault(data.ids, []).append(index)
    # Keys in sorted order so the draws do not depend on record order.
    for ids in sorted(by_items):
        members = by_items[ids]
        n = len(ids)
        rows = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, n_resamples, rows):
            stop = min(n_resamples, start + rows)
            idx = rng.integers(0, n, size=(stop - start, n))
            for index in members:
                out[index, start:stop] = datas[index].statistic(idx)  # type: ignore[union-attr]
    return out, [d is not None for d in datas]


def resample_points(point_samples: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """Bootstrap (resamples × points) of the mean over seeds at each point.

    `point_samples[p]` is (seeds × resamples): each seed replicate's item-resampled value. Each resample
    draws the point's seeds with replacement and takes row b of each drawn replicate, so seed and item
    variation compound.
    """
    rng = np.random.default_rng(seed)
    columns = []
    for samples in point_samples:
        k, b = samples.shape
        if k == 1:
            columns.append(samples[0])
            continue
        chosen = rng.integers(0, k, size=(b, k))
        columns.append(samples[chosen, np.arange(b)[:, None]].mean(axis=1))
    return np.stack(columns, axis=1)


# ---------------------------------------------------------------------------------------------------
# Monotonicity


def violations(
    difficulties: Sequence[float], drops: Sequence[float], tolerance: float = 1e-9
) -> list[tuple[int, int]]:
    """Index pairs (easier, harder) where the strictly harder level lost less than the easier one."""
    pairs = []
    for i in range(len(difficulties)):
        for j in range(len(difficulties)):
            if difficulties[j] > difficulties[i] and drops[j] < drops[i] - tolerance:
                pairs.append((i, j))
    return pairs


def verdict(n_levels: int, rho: float, ci: list[float] | None) -> str:
    """The verdict of RULE for one compression level."""
    if n_levels < MIN_LEVELS or not math.isfinite(rho):
        return "inconclusive"
    if rho <= 0:
        return "not monotone"
    if ci is None:
        return "inconclusive"
    if rho >= MONOTONE_RHO and ci[0] > 0:
        return "monotone"
    if ci[1] < MONOTONE_RHO:
        return "not monotone"
    return "inconclusive"


def correlations(
    difficulty: np.ndarray, drops: np.ndarray, drop_samples: np.ndarray | None
) -> tuple[dict, dict]:
    """Spearman and Kendall of difficulty vs drop, each as {"value", "ci95"}.

    `drop_samples` is (resamples × points), or None when nothing was resampled (no interval).
    """
    rho, tau = spearman_rho(difficulty, drops), kendall_tau_b(difficulty, drops)
    rho_ci = tau_ci = None
    if drop_samples is not None and len(difficulty) >= 2 and np.ptp(drop_samples, axis=0).any():
        rho_ci = interval(spearman_batched(difficulty, drop_samples))
        tau_ci = interval(kendall_tau_b_batched(difficulty, drop_samples))
    return (
        {"value": _finite_or_none(rho), "ci95": rho_ci},
        {"value": _finite_or_none(tau), "ci95": tau_ci},
    )


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
