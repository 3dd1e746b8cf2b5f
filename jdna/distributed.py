"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: the process group, sharding, collectives.

Used by fine-tuning (data-parallel training) and by evaluation (each process scores a shard:
`jdna.evaluation.parallel`); it sits below both, so neither imports the other for it.

A launcher starts N copies of ``jdna finetune`` with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set;
`data_parallel()` joins them into one process group (NCCL, one GPU per ``LOCAL_RANK``, on CUDA; gloo on CPU,
or when ``accelerate launch --cpu`` set ``ACCELERATE_USE_CPU``). Without ``WORLD_SIZE`` > 1 nothing happens and
training runs in this one process, exactly as before.

The training is the same computation whatever N is:

- ``--batch-size`` is the *global* micro-batch: every process draws the same micro-batches from the seeded
  schedule and takes its own contiguous shard of each (`Dist.shard`: ``ceil(B / N)`` examples, the last
  processes fewer), so the steps, the learning-rate schedule and the content address do not depend on N.
- each process weights its shard's mean loss by the shard's share of the *step's* loss units (examples, or
  answer tokens, counted over all processes), and the gradients are summed across processes (a DDP comm hook
  that does not divide by N). The sum of the shards' weighted gradients is exactly the gradient of the step's
  mean loss, even when shards hold different numbers of answer tokens; with ``--grad-accum 1`` it is the
  same float sum a single process with ``--batch-size B/N --grad-accum N`` computes, so the two runs agree bit
  for bit (tests/test_finetune_distributed.py); otherwise they agree up to float summation order.
- a process whose shard of the step's last micro-batch is empty still runs it on one example with weight 0, so
  it joins the gradient all-reduce.

Every process applies the same summed gradient with the same optimizer, so all replicas stay identical; the
parameters are compared by sha256 across processes after training (`parameters_digest`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from jdna.errors import JdnaError

# How long a process waits in a collective: rank 0 validates and writes alone while the others wait at the
# final barrier, which can take long for generation tasks on a large model (NCCL's default is 10 minutes).
TIMEOUT = timedelta(hours=3)
_TRUE = ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "") or str(default)
    try:
        return int(raw)
    except ValueError:
        raise JdnaError(f"{name}={raw!r} is not an integer: launch with torchrun or accelerate launch") from None


def launched_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate launch) started: ``WORLD_SIZE``, else 1."""
    return max(1, _env_int("WORLD_SIZE", 1))


def launched_rank() -> int:
    """This process's global rank under a launcher (``RANK``), else 0."""
    return _env_int("RANK", 0) if launched_world_size() > 1 else 0


def single_process_note() -> str | None:
    """Why a launcher that was asked for several processes got one, when that is recognisable (else None)."""
    if launched_world_size() > 1:
        return None
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in _TRUE and os.environ.get("MASTER_ADDR"):
        return (
            "accelerate launch --cpu started this one process (its multi-process CPU mode needs mpirun), so "
            "training runs in one process; for N CPU processes use torchrun --nproc_per_node N or accelerate "
            "launch --multi_gpu --num_processes N"
        )
    return None


def _use_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in _TRUE


def _sum_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP comm hook: all-reduce the bucket by SUM (DDP's default divides by N; each process already weights its
    shard by its share of the step's loss units, so the sum is the full step's gradient).

    (Unannotated on purpose: DDP compares a hook's annotations with dist.GradBucket, and this module's
    annotations are strings.)"""
    import torch.distributed as td

    return td.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])


@dataclass
class Dist:
    """This process's place in the data-parallel group (world_size 1: a single process, no group)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def summary(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend} if self.enabled else {"world_size": 1}

    def shard_size(self, n: int) -> int:
        return -(-n // self.world_size)

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This process's contiguous part of a global micro-batch (may be empty for the last ranks)."""
        if not self.enabled:
            return list(indices)
        size = self.shard_size(len(indices))
        return list(indices[self.rank * size : (self.rank + 1) * size])

    # Collectives: every process must call them, in the same order. On a single process they are identities.

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as td

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        td.all_reduce(tensor)
        return [float(v) for v in tensor.cpu().tolist()]

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        if not self.enabled:
            return obj
        import torch.distributed as td

        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's `obj`, by rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` in DistributedDataParallel with the summing comm hook (the model itself on one process)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        assert self.device is not None
        ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffers are trained (no batch norm in these models), so they are not re-broadcast every forward.
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            buffers = {"forward_sync_buffers": False}  # (torch >= 2.13's name)
        else:
            buffers = {"broadcast_buffers": False}
        wrapped = DistributedDataParallel(model, device_ids=ids, **buffers)
        wrapped.register_comm_hook(None, _sum_hook)
        return wrapped

    def rng_states(self) -> list[dict[str, torch.Tensor]]:
        """Every process's RNG states (CPU, and its own GPU's), by rank: for the checkpoint, which rank 0 writes."""
        mine = {"torch": torch.get_rng_state()}
        if self.device is not None and self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        return self.all_gather_object(mine)


def no_sync(wrapped: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Accumulate gradients locally (no all-reduce) unless `sync`: the micro-batches before a step's last one."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def unwrap(model: Any) -> Any:
    """The model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def parameters_digest(model: nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and raw bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(param.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def _current() -> Dist:
    """The already initialised default process group, as a Dist."""
    import torch.distributed as td

    backend = str(td.get_backend())
    local_rank = _env_int("LOCAL_RANK", 0)
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return Dist(td.get_world_size(), td.get_rank(), local_rank, backend, device)


def _init() -> Dist:
    import torch.distributed as td

    world, rank, local_rank = launched_world_size(), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not td.is_available():
        raise JdnaError(f"WORLD_SIZE={world} but this torch build has no torch.distributed: run one process")
    if _use_cuda():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise JdnaError(
                f"LOCAL_RANK {local_rank} but this node has {count} visible GPU(s): launch at most {count} "
                "processes per node (torchrun --nproc_per_node, accelerate launch --num_processes)"
            )
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
        kwargs: dict[str, Any] = {"device_id": device}
    else:
        device, backend, kwargs = torch.device("cpu"), "gloo", {}
    try:
        td.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
    except ValueError as error:  # env:// without MASTER_ADDR/MASTER_PORT: WORLD_SIZE set by hand
        reason = (str(error).splitlines() or [""])[0]
        raise JdnaError(
            f"WORLD_SIZE={world} but the process group could not start ({reason}): launch with torchrun or "
            "accelerate launch, or unset WORLD_SIZE to run one process"
        ) from None
    return Dist(world, rank, local_rank, backend, device)


@contextlib.contextmanager
def data_parallel() -> Iterator[Dist]:
    """The data-parallel group the launcher's environment describes; a no-op `Dist()` for a single process.

    Joins (and on the way out, after a final barrier, destroys) the default process group; nested uses share
    the group the outermost one created, so only that one tears it down.
    """
    if launched_world_size() <= 1:
        yield Dist()
        return
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        yield _current()
        return
    dist = _init()
    try:
        yield dist
        dist.barrier()  # no process tears the group down while another still uses it
    finally:
        td.destroy_process_group()
