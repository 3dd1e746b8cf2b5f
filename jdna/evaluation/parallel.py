"""Data-parallel evaluation under ``torchrun`` / ``accelerate launch``: each process scores a shard.

The launcher's process group is the one fine-tuning uses (`jdna.distributed.data_parallel`). Every
process prepares the same items and loads the same model; the scoring calls (the only costly part) go
through `shard_map`, which gives each process a contiguous, cost-balanced slice of the requests and gathers
the results in the original order on every process. Everything after scoring (predictions, metrics, the
bootstrap) then runs on identical inputs everywhere, and rank 0 alone writes and prints the record. Scoring a
request does not depend on which other requests share its batch (see jdna.scoring), so the predictions are
those of one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Request = TypeVar("Request")


def shard_bounds(costs: Sequence[float], parts: int) -> list[int]:
    """Split points (parts + 1 of them) of a contiguous partition with near-equal summed cost."""
    total = float(sum(costs))
    bounds = [0]
    running = 0.0
    index = 0
    for part in range(1, parts):
        target = total * part / parts
        while index < len(costs) and running + costs[index] / 2 <= target:
            running += costs[index]
            index += 1
        bounds.append(max(index, bounds[-1]))
    bounds.append(len(costs))
    return bounds


def shard_map(
    dist: Any,
    score: Callable[[list[Request]], Sequence[Any]],
    requests: Sequence[Request],
    costs: Sequence[float] | None = None,
) -> list[Any]:
    """`score(requests)`, computed as one contiguous shard per process and gathered in order on every process.

    `dist` is a `jdna.distributed.Dist` (or None: one process). `costs` (e.g. characters per request)
    balance the shards; by default each request costs 1.
    """
    if dist is None or not dist.enabled or len(requests) < 2:
        return list(score(list(requests)))
    bounds = shard_bounds(costs if costs is not None else [1.0] * len(requests), dist.world_size)
    start, end = bounds[dist.rank], bounds[dist.rank + 1]
    mine = list(score(list(requests[start:end]))) if end > start else []
    gathered = dist.all_gather_object(mine)
    return [result for part in gathered for result in part]
