"""The hypothesis statistics: a paired trend test over difficulty with error control, rank correlations,
intervals, power, and multiplicity correction.

The Junk DNA hypothesis says the harder the task, the more compression hurts: the normalised drop
(1 − compressed/dense) should rise with difficulty. A study has a handful of difficulty levels, each measured
on a finite set of items and a few seeds, so the question is a test, not a correlation read off point values.
jdna tests the **slope** of drop on difficulty rank (the least-squares line through the points at ranks
0, 1, …, K−1): its uncertainty has two parts that are estimated separately and combined.

- Items: a paired bootstrap. A compressed record and its dense baseline are resampled on the same draw of
  their common item ids, and so are any two points measured on the same items (difficulty levels on the same
  questions), so the paired differences the slope is made of keep their correlation. Draws are seeded from
  the item ids' content, never from the order records arrive in.
- Seeds: the variance between seed replicates at a point, pooled over the points of a test (a t-based,
  hierarchical estimate with Σ(seeds − 1) degrees of freedom), enters as a multivariate-t term, so a handful of
  seeds gives honest (wide) intervals instead of the under-covering ones of resampling 2–3 seeds.

Decisions use one-sided tests at ALPHA/2 in each direction, Holm-corrected over every test of an analysis.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jdna.errors import JdnaError
from jdna.metrics import get_metric, spearman

# Bounds the (resamples x items) index blocks drawn at once, as jdna.metrics does.
_CHUNK_ELEMENTS = 1 << 22

ALPHA = 0.05  # two-sided; each direction ("monotone", "not monotone") is a one-sided family at ALPHA / 2
SHAPE_RHO = 0.5  # a significant slope also needs Spearman ρ ≥ this, so one extreme point cannot make a trend
MIN_LEVELS = 3
MIN_TREND = 0.03  # default smallest trend worth detecting: normalised drop per difficulty step
POWER = 0.8
FEW_SEEDS = 5
_Z_ALPHA = 1.959963984540054  # one-sided ALPHA / 2
_Z_POWER = 0.8416212335729143  # POWER
TIE_DECIMALS = 9  # values are rounded to this many decimals before ranking, so float noise cannot split ties

RULE = (
    "per test (a compression level across difficulty, or a difficulty level across compression): the slope of "
    "normalised drop on difficulty rank, with a paired item bootstrap and a t-based seed term; one-sided tests "
    f"at α = {ALPHA / 2:g} in each direction, Holm-corrected over all tests of the analysis. 'monotone' if the "
    f"slope is significantly > 0, no adjacent pair is significantly reversed and Spearman ρ ≥ {SHAPE_RHO}; "
    "'not monotone' only on evidence: a significantly reversed adjacent pair (the harder level lost "
    "significantly less) or a slope significantly < 0; otherwise 'inconclusive' with the reason (fewer than "
    f"{MIN_LEVELS} usable levels, no interval, levels excluded near chance, or too little power: see power)"
)


def content_rng(seed: int, *parts: Any) -> np.random.Generator:
    """A generator seeded from the user's seed and the content it draws for, never from record order."""
    digest = hashlib.sha256(repr((seed, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def normal_sf(z: float) -> float:
    """P(Z ≥ z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


_erfc = np.vectorize(math.erfc, otypes=[float])
# Log-spaced grid over u = χ²_df / df for the t mixture below.
_LOG_U = np.linspace(math.log(1e-9), math.log(1e3), 400)


def upper_tail(estimate: float, var_item: float, var_seed: float, df: int) -> float:
    """P(N(0, var_item) + sqrt(var_seed)·T_df ≥ estimate): the one-sided p-value of "estimate > 0".

    The seed term is t-distributed because its variance is estimated from `df` degrees of freedom; the
    mixture is integrated over u = χ²_df/df (σ² = var_item + var_seed/u), so it is exact for both pure cases:
    a normal without seeds, Student's t without item noise.
    """
    if not math.isfinite(estimate):
        return math.nan
    if var_seed <= 0 or df <= 0:
        if var_item <= 0:  # no noise in this contrast (e.g. identical answers on every item): exact
            return 0.0 if estimate > 0 else 1.0
        return normal_sf(estimate / math.sqrt(var_item))
    if df > 400:
        return normal_sf(estimate / math.sqrt(var_item + var_seed))
    u = np.exp(_LOG_U)
    half = df / 2.0
    log_density = half * math.log(half) + (half - 1.0) * _LOG_U - half * u - math.lgamma(half)
    weights = np.exp(log_density + _LOG_U)  # du = u d(log u)
    weights /= weights.sum()
    sd = np.sqrt(var_item + var_seed / u)
    return float((weights * 0.5 * _erfc(estimate / sd / math.sqrt(2.0))).sum())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries are not tests and stay NaN)."""
    tested = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    adjusted = [math.nan] * len(pvalues)
    order = sorted(tested, key=lambda i: pvalues[i])
    running = 0.0
    m = len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


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

    def subset(self, ids: Sequence[str]) -> ItemData:
        """The same record restricted to `ids` (sorted, all present): pairing on the common items."""
        positions = np.searchsorted(np.asarray(self.ids), np.asarray(ids))

        def take(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[positions]

        return ItemData(tuple(ids), take(self.values), take(self.nll), take(self.tokens), take(self.predictions),
                        take(self.golds), self.batched)

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


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def item_draws(datas: Sequence[ItemData], n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap (records × resamples) of each record's metric on one shared item set (all `datas` have the
    same ids), drawn from a generator seeded by those ids: paired, and independent of record order."""
    ids = datas[0].ids
    n = len(ids)
    rng = content_rng(seed, "items", hashlib.sha256("\n".join(ids).encode()).hexdigest())
    out = np.empty((len(datas), n_resamples))
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        for index, data in enumerate(datas):
            out[index, start:stop] = data.statistic(idx)
    return out


# ---------------------------------------------------------------------------------------------------
# The trend test


@dataclass
class Point:
    """One point of a trend test: the normalised performance at a difficulty (or compression) level.

    `estimate` is the mean over seed replicates; `draws` its item bootstrap (None if nothing was resampled);
    `replicates` each seed's own value, whose spread is the seed variance.
    """

    estimate: float
    draws: np.ndarray | None
    replicates: list[float]
    items: int = 0


@dataclass
class Trend:
    """The statistics of one test, before the analysis-wide Holm correction decides its verdict."""

    drops: np.ndarray
    draws: np.ndarray | None  # resamples × points of normalised performance (item + seed terms)
    slope: float
    slope_ci: list[float] | None
    p_increase: float
    p_decrease: float
    p_reversed: list[float]  # per adjacent pair (k, k+1): evidence that the harder one lost less
    rho: float
    spearman: dict[str, Any]
    kendall: dict[str, Any]
    violations: list[tuple[int, int]]
    power: dict[str, Any]
    seed_df: int
    verdict: str = "inconclusive"
    reason: str = ""
    adjusted: dict[str, Any] = field(default_factory=dict)


def _finite_cov(draws: np.ndarray) -> np.ndarray:
    rows = draws[np.isfinite(draws).all(axis=1)]
    k = draws.shape[1]
    if rows.shape[0] < 2:
        return np.zeros((k, k))
    return np.atleast_2d(np.cov(rows, rowvar=False))


def trend(points: Sequence[Point], n_resamples: int, rng: np.random.Generator,
          min_trend: float = MIN_TREND) -> Trend:
    """Slope of drop on rank over `points` (ordered: least → most difficult, or least → most compressed),
    with its interval and one-sided p-values, adjacent-pair reversal p-values, ρ and τ, and power."""
    k = len(points)
    if k < 2:  # nothing to compare: a trend with no statistics (its test is reported as untestable)
        drops = 1.0 - np.array([p.estimate for p in points], dtype=np.float64)
        empty = {"value": None, "ci95": None}
        return Trend(drops=drops, draws=None, slope=math.nan, slope_ci=None, p_increase=math.nan,
                     p_decrease=math.nan, p_reversed=[], rho=math.nan, spearman=dict(empty), kendall=dict(empty),
                     violations=[], power=power(0.0, 0.0, np.zeros(k), 0.0, [p.items for p in points],
                                                np.ones(k), 0, min_trend), seed_df=0)
    estimates = np.round(np.array([p.estimate for p in points], dtype=np.float64), TIE_DECIMALS)
    drops = 1.0 - estimates
    ranks = np.arange(k, dtype=np.float64)
    weights = (ranks - ranks.mean()) / max(((ranks - ranks.mean()) ** 2).sum(), 1e-300)
    slope = float(weights @ drops)

    resampled = any(p.draws is not None for p in points)
    item = np.stack([p.draws if p.draws is not None else np.full(n_resamples, p.estimate) for p in points], axis=1)
    cov_item = _finite_cov(item) if resampled else np.zeros((k, k))
    # Seed variance pooled over the points (one common σ² for the test), with Σ(seeds − 1) degrees of freedom.
    df = int(sum(len(p.replicates) - 1 for p in points))
    seeds = np.array([max(1, len(p.replicates)) for p in points], dtype=np.float64)
    s2 = (sum(float(((np.asarray(p.replicates) - np.mean(p.replicates)) ** 2).sum()) for p in points) / df
          if df > 0 else 0.0)
    draws = None
    if resampled or s2 > 0:
        draws = item.copy()
        if s2 > 0:
            z = rng.standard_normal((n_resamples, k))
            u = rng.chisquare(df, n_resamples) / df
            draws += np.sqrt(s2 / seeds)[None, :] * z / np.sqrt(u)[:, None]
        draws = np.round(draws, TIE_DECIMALS)

    def tails(contrast: np.ndarray) -> tuple[float, float, float]:
        """(estimate, P(noise ≥ estimate), P(noise ≤ estimate)) of a contrast of drops."""
        estimate = float(contrast @ drops)
        var_item = float(contrast @ cov_item @ contrast)
        var_seed = float(s2 * (contrast**2 / seeds).sum())
        return estimate, upper_tail(estimate, var_item, var_seed, df), upper_tail(-estimate, var_item, var_seed, df)

    _, p_increase, p_decrease = tails(weights)
    p_reversed = []
    for i in range(k - 1):
        contrast = np.zeros(k)
        contrast[i], contrast[i + 1] = -1.0, 1.0
        p_reversed.append(tails(contrast)[2])  # harder minus easier significantly below 0
    slope_ci = None
    rho_ci = tau_ci = None
    if draws is not None:
        drop_draws = 1.0 - draws
        with np.errstate(invalid="ignore"):  # a draw with an undefined ratio (dense at 0) is NaN by design
            slope_ci = interval(drop_draws @ weights)
        if k >= 2:
            rho_ci = interval(spearman_batched(ranks, drop_draws))
            tau_ci = interval(kendall_tau_b_batched(ranks, drop_draws))
    rho, tau = spearman_rho(ranks, drops), kendall_tau_b(ranks, drops)
    var_item = float(weights @ cov_item @ weights)
    var_seed = float(s2 * (weights**2 / seeds).sum())
    stated = power(var_item, var_seed, weights, s2, [p.items for p in points], seeds, df, min_trend)
    stated["slope_ci_width"] = slope_ci[1] - slope_ci[0] if slope_ci else None
    return Trend(
        drops=drops, draws=draws, slope=slope, slope_ci=slope_ci, p_increase=p_increase, p_decrease=p_decrease,
        p_reversed=p_reversed, rho=rho,
        spearman={"value": _finite_or_none(rho), "ci95": rho_ci},
        kendall={"value": _finite_or_none(tau), "ci95": tau_ci},
        violations=violations(list(ranks), list(drops)),
        power=stated,
        seed_df=df,
    )


def power(var_item: float, var_seed: float, weights: np.ndarray, s2: float, items: Sequence[int],
          seeds: np.ndarray, df: int, min_trend: float) -> dict[str, Any]:
    """What the test can detect: the minimum detectable slope (one-sided α/2, power 80%) at the measured
    noise, and the items (at the current seeds) or seeds (at the current items) that would detect `min_trend`.

    Item noise shrinks as 1/items and seed noise as 1/seeds; `None` means the other source alone already
    prevents it (or, for seeds, that one seed gave no seed variance to scale).
    """
    z = _Z_ALPHA + _Z_POWER
    se = math.sqrt(max(var_item + var_seed, 0.0))
    mde = z * se
    budget = (min_trend / z) ** 2
    n_items = int(np.median([n for n in items if n] or [0]))
    items_needed = None
    if var_item > 0 and n_items and budget > var_seed:
        items_needed = max(1, math.ceil(n_items * var_item / (budget - var_seed)))
    seeds_needed = None
    if df > 0 and budget > var_item:
        seeds_needed = max(2, math.ceil(s2 * float((weights**2).sum()) / (budget - var_item)))
    return {
        "min_trend": min_trend,
        "slope_se": se if se > 0 else None,
        "min_detectable_trend": mde if se > 0 else None,
        "items": n_items or None,
        "items_needed": items_needed,
        "seeds": int(seeds.min()) if len(seeds) else None,
        "seeds_needed": seeds_needed if df > 0 else None,
        "underpowered": bool(se == 0 or mde > min_trend),
    }


def decide(trends: Sequence[Trend], usable: Sequence[str | None], alpha: float = ALPHA,
           labels: Sequence[Sequence[str]] = ()) -> None:
    """Set every trend's verdict and reason, Holm-correcting each direction over all of `trends`.

    `usable[i]` is None for a testable trend, else the reason it is inconclusive before any test.
    `labels[i]` names its points, for the reasons.
    """
    testable = [i for i, reason in enumerate(usable) if reason is None]
    increase = holm([trends[i].p_increase for i in testable])
    # The "not monotone" family: each test's decreasing slope and every adjacent pair's reversal.
    against: list[tuple[int, str, int, float]] = []
    for i in testable:
        against.append((i, "slope", -1, trends[i].p_decrease))
        against.extend((i, "pair", j, p) for j, p in enumerate(trends[i].p_reversed))
    adjusted_against = holm([p for *_, p in against])
    level = alpha / 2
    for i, reason in enumerate(usable):
        t = trends[i]
        names = labels[i] if i < len(labels) else [str(j) for j in range(len(t.drops))]
        if reason is not None:
            t.verdict, t.reason = "inconclusive", reason
            continue
        p_up = increase[testable.index(i)]
        evidence = [(what, j, q) for (owner, what, j, _), q in zip(against, adjusted_against) if owner == i]
        t.adjusted = {"p_increase": _finite_or_none(p_up),
                      "p_not_monotone": _finite_or_none(min((q for *_, q in evidence), default=math.nan))}
        against_found = [(what, j, q) for what, j, q in evidence if math.isfinite(q) and q <= level]
        if against_found:
            what, j, q = min(against_found, key=lambda e: e[2])
            t.verdict = "not monotone"
            if what == "pair":
                t.reason = (f"{names[j + 1]} (harder) lost significantly less than {names[j]} "
                            f"(Holm-adjusted p = {q:.2g})")
            else:
                t.reason = f"the drop falls significantly with difficulty (Holm-adjusted p = {q:.2g})"
        elif math.isfinite(p_up) and p_up <= level:
            if math.isfinite(t.rho) and t.rho >= SHAPE_RHO:
                t.verdict = "monotone"
                t.reason = f"slope > 0 (Holm-adjusted p = {p_up:.2g}), no significantly reversed pair"
            else:
                t.verdict = "inconclusive"
                t.reason = f"slope > 0 (p = {p_up:.2g}) but the shape is not monotone enough (ρ < {SHAPE_RHO})"
        else:
            t.verdict = "inconclusive"
            t.reason = _weak_reason(t)


def _weak_reason(t: Trend) -> str:
    ci = t.slope_ci
    delta = t.power["min_trend"]
    if ci is not None and -delta < ci[0] and ci[1] < delta:
        return f"no trend: the slope's 95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}] excludes trends of ±{delta:g} per step"
    needed = t.power.get("items_needed")
    text = "slope not significant"
    if t.power["underpowered"]:
        text += f"; underpowered for a trend of {delta:g} per step"
        if needed:
            text += f" (≈{needed} items per level needed)"
        elif t.power.get("seeds_needed"):
            text += f" (≈{t.power['seeds_needed']} seeds needed)"
    return text
