"""The lm-evaluation-harness shape of a result, written into every eval record beside jdna's own fields.

lm-eval's results file reads `results[task]["acc,none"]` and `results[task]["acc_stderr,none"]` (metric, a comma,
the filter: jdna applies none), plus `n-shot` and `n-samples`; a script written for it reads jdna's record file
unchanged. Standard errors are lm-eval's for a mean over items: the sample standard deviation (n - 1) over
sqrt(n); a metric that is not a mean over items (perplexity, F1 over a corpus, correlations) gets "N/A", as
lm-eval writes when it has none. jdna's own 95% bootstrap intervals stay in `metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FILTER = "none"
# jdna metric names that lm-eval spells differently (the jdna name is kept too).
LMEVAL_NAMES = {"accuracy": "acc", "matthews": "mcc"}


def mean_stderr(values: Sequence[float]) -> float | str:
    """lm-eval's `mean_stderr`: sample standard deviation over sqrt(n); "N/A" below two items."""
    n = len(values)
    if n < 2:
        return "N/A"
    mean = math.fsum(values) / n
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def results_block(
    task_key: str,
    metrics: dict[str, dict[str, Any]],
    item_values: dict[str, list[float]],
    shots: int,
    n: int,
    pool_size: int,
) -> dict[str, Any]:
    """The `results`, `n-shot` and `n-samples` entries of an lm-eval results file for one task."""
    entry: dict[str, Any] = {"alias": task_key}
    for name, metric in metrics.items():
        stderr = mean_stderr(item_values[name]) if name in item_values else "N/A"
        for spelled in dict.fromkeys([name, LMEVAL_NAMES.get(name, name)]):
            entry[f"{spelled},{FILTER}"] = metric["value"]
            entry[f"{spelled}_stderr,{FILTER}"] = stderr
    return {
        "results": {task_key: entry},
        "n-shot": {task_key: shots},
        "n-samples": {task_key: {"original": pool_size, "effective": n}},
    }
