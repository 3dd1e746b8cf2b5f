"""Fine-tuning's checks across data-parallel processes; the process group itself lives in `jdna.distributed`
(evaluation uses it too), and its names stay importable from here."""

from __future__ import annotations

from typing import Any

import torch

from jdna.distributed import (
    TIMEOUT,
    Dist,
    data_parallel,
    launched_rank,
    launched_world_size,
    no_sync,
    parameters_digest,
    single_process_note,
    unwrap,
)
from jdna.errors import JdnaError

__all__ = [
    "TIMEOUT",
    "Dist",
    "check_replicas",
    "data_parallel",
    "launched_rank",
    "launched_world_size",
    "no_sync",
    "parameters_digest",
    "single_process_note",
    "unwrap",
]


def check_replicas(model: torch.nn.Module, invariants: dict[str, Any], dist: Dist) -> bool:
    """Every process's invariant and parameter digest, compared: a failed invariant or a replica whose parameters
    differ from rank 0's is an error on every process (nothing is written)."""
    views = dist.all_gather_object((bool(invariants["passed"]), parameters_digest(model)))
    if not invariants["passed"]:
        return False  # this process's own violation is reported in full by the caller
    failed = [rank for rank, (passed, _) in enumerate(views) if not passed]
    if failed:
        raise JdnaError(
            f"invariant violated after fine-tuning ({invariants['checked']}) on process(es) {failed}; nothing was "
            "written"
        )
    differing = [rank for rank, (_, digest) in enumerate(views) if digest != views[0][1]]
    if differing:
        raise JdnaError(
            f"after data-parallel fine-tuning the parameters of process(es) {differing} differ from rank 0's "
            f"(sha256 {views[differing[0]][1][:12]} vs {views[0][1][:12]}): the replicas diverged; nothing was written"
        )
    return True
