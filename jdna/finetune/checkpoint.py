"""Resumable training checkpoints without pickle: tensors in safetensors, scalars in JSON.

A checkpoint is a directory holding ``state.safetensors`` (trainable parameters as ``param.<name>``, Adam
moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>``, RNG states as uint8 tensors) and ``state.json`` (the
run's identity, the optimizer step, the loss curve so far). Both are written atomically, the JSON last, so
a checkpoint whose JSON names the right step is complete.

Under data parallelism (`jdna.distributed`) only rank 0 writes it; the replicas' parameters and Adam
moments are identical, so one copy serves all, and each process's RNG states are added as
``rng.rank<r>.torch`` / ``rng.rank<r>.cuda``. Every process resumes from the same checkpoint, restoring its own
RNG states when the checkpoint has them (a checkpoint from another number of processes resumes too: ranks it
has no states for keep their seeded ones).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jdna.io import atomic_path, write_json_atomic
from jdna.models import canonical_name

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
_MOMENTS = ("exp_avg", "exp_avg_sq")


def checkpoint_dir(output: Path) -> Path:
    """Where the checkpoint of a run that writes `output` lives: ``<output>.ckpt/``."""
    return output.with_name(output.name + ".ckpt")


def _named(model: nn.Module) -> dict[str, nn.Parameter]:
    return {canonical_name(model, name): p for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    directory: Path,
    identity: str,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    rank_rng: list[dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write the state after `step` optimizer steps; the previous checkpoint stays valid until the JSON moves.

    `rank_rng` (data-parallel runs): every process's RNG states by rank, from `Dist.rng_states`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    steps: dict[str, float] = {}
    for name, param in _named(model).items():
        tensors[f"param.{name}"] = param.detach().cpu().contiguous()
        state = optimizer.state.get(param, {})
        for key in _MOMENTS:
            if key in state:
                tensors[f"{key}.{name}"] = state[key].detach().cpu().contiguous()
        if "step" in state:
            steps[name] = float(state["step"])
    if rank_rng is None:
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for index, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{index}"] = rng
    else:  # (not get_rng_state_all: it would open a CUDA context on every GPU of the node from this process)
        tensors["rng.torch"] = rank_rng[0]["torch"].clone()  # (safetensors refuses shared storage)
        for rank, states in enumerate(rank_rng):
            for kind, rng in states.items():
                tensors[f"rng.rank{rank}.{kind}"] = rng
    tensor_file = directory / f"{STATE_TENSORS}.{step}"
    with atomic_path(tensor_file) as tmp:
        save_file(tensors, str(tmp))
    payload = {"identity": identity, "step": step, "tensors": tensor_file.name, "adam_steps": steps, **extra}
    write_json_atomic(directory / STATE_JSON, payload)
    for old in directory.glob(f"{STATE_TENSORS}.*"):
        if old.name != tensor_file.name:
            old.unlink(missing_ok=True)


def read_checkpoint(directory: Path, identity: str) -> dict[str, Any] | None:
    """The checkpoint's JSON if `directory` holds a complete checkpoint of the run `identity`, else None."""
    try:
        payload = json.loads((directory / STATE_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("identity") != identity:
        return None
    if not (directory / str(payload.get("tensors", ""))).is_file():
        return None
    return payload


@torch.no_grad()
def restore_checkpoint(
    directory: Path,
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Load parameters, Adam state and RNG states saved by `save_checkpoint` into `model` and `optimizer`.

    `rank` (data-parallel runs): restore that process's RNG states (its GPU's is `device`), if saved.
    """
    tensors = load_file(str(directory / payload["tensors"]))
    steps = payload.get("adam_steps", {})
    for name, param in _named(model).items():
        param.copy_(tensors[f"param.{name}"].to(param.device))
        if all(f"{key}.{name}" in tensors for key in _MOMENTS) and name in steps:
            state = optimizer.state[param]
            state["step"] = torch.tensor(float(steps[name]), dtype=torch.float32)
            for key in _MOMENTS:
                state[key] = tensors[f"{key}.{name}"].to(device=param.device, dtype=param.dtype)
    if rank is not None:
        _restore_rank_rng(tensors, rank, device)
        return
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        states = [tensors[k] for k in keys]
        if states:
            torch.cuda.set_rng_state_all(states)


def _restore_rank_rng(tensors: dict[str, torch.Tensor], rank: int, device: torch.device | None) -> None:
    cpu = tensors.get(f"rng.rank{rank}.torch")
    if cpu is None and rank == 0:
        cpu = tensors.get("rng.torch")  # a single-process checkpoint
    if cpu is not None:
        torch.set_rng_state(cpu)
    cuda = tensors.get(f"rng.rank{rank}.cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def remove_checkpoint(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
