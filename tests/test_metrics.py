"""Metrics against hand-computed values and independent closed forms."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from jdna import metrics
from jdna.errors import JdnaError
from jdna.metrics import (
    accuracy,
    bootstrap_ci,
    exact_match,
    f1,
    get_metric,
    matthews_corrcoef,
    mean_exact_match,
    mean_token_f1,
    normalize_answer,
    pearson,
    perplexity,
    rankdata,
    spearman,
    token_f1,
)


def confusion_to_lists(tp: int, tn: int, fp: int, fn: int) -> tuple[list[int], list[int]]:
    """(predictions, golds) realising a binary confusion matrix."""
    predictions = [1] * tp + [0] * tn + [1] * fp + [0] * fn
    golds = [1] * tp + [0] * tn + [0] * fp + [1] * fn
    return predictions, golds


def naive_average_ranks(values: list[float]) -> list[float]:
    # rank = (number smaller) + (number equal + 1) / 2, the definition of the average rank.
    return [sum(v < x for v in values) + (sum(v == x for v in values) + 1) / 2 for x in values]


def test_accuracy() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(["a", "b"], ["a", "b"]) == 1.0


def test_matthews_known_confusion_matrix() -> None:
    predictions, golds = confusion_to_lists(tp=6, tn=3, fp=1, fn=2)
    expected = (6 * 3 - 1 * 2) / math.sqrt((6 + 1) * (6 + 2) * (3 + 1) * (3 + 2))
    assert matthews_corrcoef(predictions, golds) == pytest.approx(expected)
    assert matthews_corrcoef(golds, golds) == pytest.approx(1.0)
    assert matthews_corrcoef([1 - g for g in golds], golds) == pytest.approx(-1.0)


def test_matthews_undefined_is_zero() -> None:
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0


def test_matthews_multiclass_matches_covariance_form() -> None:
    rng = np.random.default_rng(3)
    golds = rng.integers(0, 3, size=200)
    predictions = np.where(rng.random(200) < 0.6, golds, rng.integers(0, 3, size=200))
    # R_K = cov(X, Y) / sqrt(cov(X, X) cov(Y, Y)) over one-hot indicator matrices (Gorodkin 2004).
    x = np.eye(3)[predictions]
    y = np.eye(3)[golds]
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (xc * yc).sum() / math.sqrt((xc * xc).sum() * (yc * yc).sum())
    assert matthews_corrcoef(predictions, golds) == pytest.approx(expected)


def test_f1_binary_and_macro() -> None:
    predictions, golds = confusion_to_lists(tp=6, tn=3, fp=1, fn=2)
    assert f1(predictions, golds) == pytest.approx(2 * 6 / (2 * 6 + 1 + 2))
    # Macro over three classes, per-class F1 by hand:
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: tp=1 fp=1 fn=0 -> 2/3.
    golds3 = [0, 0, 1, 1, 2]
    preds3 = [0, 2, 1, 0, 2]
    assert f1(preds3, golds3, average="macro") == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert f1([0, 0], [0, 0]) == 0.0  # positive class never occurs


def test_f1_rejects_labels_outside_given_set() -> None:
    with pytest.raises(JdnaError, match="outside labels"):
        f1([0, 5], [0, 1], average="macro", labels=[0, 1])


def test_pearson_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_rankdata_average_ties() -> None:
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.integers(0, 5, size=int(rng.integers(1, 30))).tolist()
        assert rankdata(values).tolist() == naive_average_ranks(values)


def test_spearman_with_ties_is_pearson_of_average_ranks() -> None:
    x = [1, 2, 2, 3, 5, 5, 5]
    y = [2, 1, 4, 3, 7, 6, 6]
    expected = np.corrcoef(naive_average_ranks(x), naive_average_ranks(y))[0, 1]
    assert spearman(x, y) == pytest.approx(expected)
    # Without ties: 1 - 6 sum d^2 / (n (n^2 - 1)).
    a, b = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert spearman(a, b) == pytest.approx(1 - 6 * 4 / (5 * 24))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The  Cat!", "cat"),
        ("An apple, a day.", "apple day"),
        ("  Hello\tWorld ", "hello world"),
        ("theater", "theater"),
        ("U.S.A.", "usa"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_exact_match_over_aliases() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Paris", ["London", "paris!"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    with pytest.raises(JdnaError, match="list of strings"):
        exact_match("Paris", "Paris")  # type: ignore[arg-type]


def test_token_f1_partial_overlap_and_best_alias() -> None:
    # pred tokens {big, red, cat}, gold {red, cat, sat}: overlap 2, P = R = 2/3.
    assert token_f1("the big red cat", ["red cat sat"]) == pytest.approx(2 / 3)
    assert token_f1("the big red cat", ["red cat sat", "big red cat"]) == 1.0
    assert token_f1("dog", ["cat"]) == 0.0
    assert token_f1("", [""]) == 1.0
    assert mean_token_f1(["red cat", "x"], [["red cat"], ["y"]]) == pytest.approx(0.5)
    assert mean_exact_match(["a", "b"], [["a"], ["c"]]) == 0.5


def test_perplexity_pools_tokens() -> None:
    assert perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    with pytest.raises(JdnaError):
        perplexity([], [])


def test_length_mismatch_is_one_line_error() -> None:
    with pytest.raises(JdnaError, match="one prediction per item"):
        accuracy([1, 2], [1])


def test_bootstrap_covers_point_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    correct = (rng.random(300) < 0.7).astype(float)
    low, high = bootstrap_ci(correct, seed=5)
    assert low <= correct.mean() <= high
    assert (low, high) == bootstrap_ci(correct, seed=5)
    assert (low, high) != bootstrap_ci(correct, seed=6)
    # Percentile interval of a proportion is close to the normal approximation.
    half_width = 1.96 * math.sqrt(correct.mean() * (1 - correct.mean()) / correct.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_bootstrap_corpus_metric_vectorised_equals_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    golds = rng.integers(0, 2, size=120)
    predictions = np.where(rng.random(120) < 0.8, golds, 1 - golds)
    point = matthews_corrcoef(predictions, golds)
    vectorised = bootstrap_ci((matthews_corrcoef, predictions, golds), n_resamples=300, seed=1)
    looped = bootstrap_ci((lambda p, g: matthews_corrcoef(p, g), predictions, golds), n_resamples=300, seed=1)
    assert vectorised == pytest.approx(looped)
    assert vectorised[0] <= point <= vectorised[1]
    # Chunking the resamples differently must not change the draw.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 500)
    assert bootstrap_ci((matthews_corrcoef, predictions, golds), n_resamples=300, seed=1) == vectorised


def test_bootstrap_partial_and_per_item_metrics() -> None:
    golds = [0, 1, 2, 0, 1, 2, 0, 1, 2, 1]
    predictions = [0, 1, 1, 0, 2, 2, 0, 1, 2, 1]
    macro = functools.partial(f1, average="macro")
    low, high = bootstrap_ci((macro, predictions, golds), n_resamples=200)
    assert low <= macro(predictions, golds) <= high
    answers = [["a"], ["b"], ["c"], ["d"]]
    assert bootstrap_ci((mean_exact_match, ["a", "x", "c", "d"], answers), seed=0) == bootstrap_ci(
        [1.0, 0.0, 1.0, 1.0], seed=0
    )


def test_bootstrap_rejects_bad_level() -> None:
    with pytest.raises(JdnaError, match="level"):
        bootstrap_ci([1.0, 0.0], level=95)


def test_get_metric_resolves_names_per_kind() -> None:
    assert get_metric("f1", "generation") is mean_token_f1
    assert get_metric("f1", "classification") is f1
    macro = get_metric("f1", "classification", n_labels=3)
    assert macro([0, 1, 2], [0, 1, 1]) == pytest.approx(f1([0, 1, 2], [0, 1, 1], average="macro"))
    assert get_metric("matthews") is matthews_corrcoef
    assert get_metric("acc_norm", "multiple_choice") is accuracy
    with pytest.raises(JdnaError, match="did you mean 'spearman'"):
        get_metric("spearmann")


def test_bootstrap_generic_callable_with_ragged_golds() -> None:
    def best_length_match(predictions: list[str], golds: list[list[str]]) -> float:
        return float(
            np.mean([any(len(p) == len(a) for a in g) for p, g in zip(predictions, golds, strict=True)])
        )

    predictions = ["ab", "c", "def", "g"]
    golds = [["xy"], ["z", "zz"], ["q"], ["w", "ww", "www"]]
    low, high = bootstrap_ci((best_length_match, predictions, golds), n_resamples=200, seed=3)
    assert 0.0 <= low <= best_length_match(predictions, golds) <= high <= 1.0
