"""The training loop: AdamW with linear warmup/decay, mask enforcement, checkpoints, clean interruption.

The loop is deterministic on CPU for a seed: the batch of every step is recomputed from the step number
(`jdna.finetune.data.Schedule`), the learning rate is a pure function of the step, and the torch RNG (dropout)
is checkpointed. A run resumed from a checkpoint therefore continues bit for bit like an uninterrupted one.

Under a launcher (`jdna.distributed`) every process runs this loop on its shard of each micro-batch,
with the model in DistributedDataParallel; the step's loss and the stop flag are summed across processes after
every step, so all processes log the same loss and stop (and checkpoint) at the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from jdna.distributed import Dist, no_sync
from jdna.errors import JdnaError
from jdna.finetune.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from jdna.finetune.data import Schedule, TrainData
from jdna.finetune.masking import MaskEnforcer
from jdna.progress import Reporter


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; rerunning the command resumes."""


@dataclass
class StopFlag:
    """Set by a signal handler; the loop checks it between optimizer steps."""

    signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop; a second SIGINT interrupts at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signal_name = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def lr_at(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction of the steps, then linear decay to 0 (step is 0-based)."""
    warm = int(math.ceil(warmup * total)) if warmup > 0 else 0
    if step < warm:
        return peak * (step + 1) / warm
    remaining = max(1, total - warm)
    return peak * max(0.0, (total - step) / remaining)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay for biases and normalisation weights (1-D parameters)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@dataclass
class TrainSettings:
    lr: float
    weight_decay: float
    warmup: float
    checkpoint_every: int = 100


@dataclass
class TrainOutcome:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0
    examples_per_second: float = 0.0


def _check_finite_gradients(model: nn.Module, step: int) -> None:
    """A non-finite gradient would make Adam write NaN into every weight it touches: stop the run instead."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.stack([g.detach().float().norm() for g in grads])).all()):
        raise JdnaError(
            f"training diverged: non-finite gradients at step {step}; nothing was written (lower --lr, or check "
            "the task data)"
        )


def _check_finite_weights(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise JdnaError(
                f"training diverged: weight '{name}' holds NaN or infinite values after training; nothing was "
                "written (lower --lr)"
            )


def train(
    model: nn.Module,
    data: TrainData,
    schedule: Schedule,
    enforcer: MaskEnforcer,
    settings: TrainSettings,
    pad_id: int,
    device: torch.device,
    checkpoint: Path | None = None,
    identity: str = "",
    reporter: Reporter | None = None,
    stop: StopFlag | None = None,
    dist: Dist | None = None,
) -> tuple[TrainOutcome, torch.optim.Optimizer]:
    """Fine-tune `model` in place; returns the outcome and the optimizer (for the invariant check).

    `dist`: this process's place in a data-parallel group (see `jdna.distributed`); every process of
    the group calls `train` with the same arguments. Only rank 0 writes checkpoints.
    """
    reporter = reporter or Reporter()
    stop = stop if stop is not None else StopFlag()
    dist = dist or Dist()
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.999), eps=1e-8
    )
    outcome = TrainOutcome()
    start_step = 0
    if checkpoint is not None:
        # Every process resumes from the checkpoint rank 0 sees (rank 0 writes it only after steps that need
        # every process, so no process reads a half-written one).
        payload = dist.broadcast_object(read_checkpoint(checkpoint, identity) if dist.is_main else None)
        if payload is not None:
            rank = dist.rank if dist.enabled else None
            restore_checkpoint(checkpoint, payload, model, optimizer, rank=rank, device=dist.device)
            enforcer.after_step(optimizer)
            start_step = int(payload["step"])
            outcome.losses = [float(x) for x in payload.get("losses", [])][:start_step]
            outcome.resumed_from = start_step
            reporter.log(f"resuming from the checkpoint at step {start_step}/{schedule.total_steps}")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    model.train()
    forward = dist.wrap(model)  # DistributedDataParallel under a launcher: gradients summed across processes
    total = schedule.total_steps
    started = time.perf_counter()
    seen = 0
    order_epoch, order = -1, None
    last_saved = start_step
    for step in range(start_step, total):
        epoch = step // schedule.steps_per_epoch
        if epoch != order_epoch:
            order_epoch, order = epoch, schedule.order(epoch)
        batches = schedule.step_batches(step, order)
        n_step = sum(len(b) for b in batches)
        # The step's loss is the mean over its loss units (examples; answer tokens for the LM objective),
        # whatever the split into micro-batches: each micro-batch's mean is weighted by its share of units.
        step_units = sum(data.units(b) for b in batches)
        lr = lr_at(step, total, settings.lr, settings.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for position, indices in enumerate(batches):
            # This process's shard (all of it on one process). Weighting each shard's mean by its share of the
            # step's units makes the gradients, summed over processes, those of the step's mean loss.
            mine = dist.shard(indices)
            sync = position == len(batches) - 1
            if not mine and not sync:
                continue
            # A process with no examples in the step's last micro-batch still joins its gradient all-reduce:
            # it runs one example with weight 0.
            weight = data.units(mine) / step_units if mine else 0.0
            with no_sync(forward, sync):
                batch = {k: v.to(device) for k, v in data.collate(mine or indices[:1], pad_id).items()}
                with autocast:
                    loss = data.loss(forward, batch)
                (loss * weight).backward()
            if mine:
                step_loss += float(loss.detach()) * weight
        if dist.enabled and step == start_step:
            _check_all_gradients(model)
        enforcer.mask_gradients()
        _check_finite_gradients(model, step + 1)
        optimizer.step()
        enforcer.after_step(optimizer)
        if dist.enabled:  # the step's loss over all processes, and whether any process was asked to stop
            step_loss, stops = dist.sum_floats([step_loss, 1.0 if stop else 0.0])
            stopping = stops > 0
            if stopping and not stop:
                stop.signal_name = "a signal to another process"
        if not math.isfinite(step_loss):
            raise JdnaError(
                f"training diverged: the loss is {step_loss} at step {step + 1}/{total}; nothing was written "
                "(lower --lr, or check the task data)"
            )
        outcome.losses.append(step_loss)
        seen += n_step
        done = step + 1
        elapsed = time.perf_counter() - started
        rate = seen / elapsed if elapsed > 0 else 0.0
        recent = outcome.losses[-20:]
        # The reporter adds steps/s and the ETA (jdna.progress.Meter keeps one clock while `done` grows).
        reporter.progress(f"train loss {sum(recent) / len(recent):.4f} lr {lr:.2e} {rate:.1f} ex/s", done, total)
        if not dist.enabled:
            stopping = bool(stop)
        # (Under a launcher `stopping` is what every process agreed on above; a signal that arrived since is
        # taken at the next step, so all processes checkpoint and stop at the same one.)
        if checkpoint is not None and done < total and (stopping or done - last_saved >= settings.checkpoint_every):
            model.eval()
            rank_rng = dist.rng_states() if dist.enabled else None
            if dist.is_main:
                save_checkpoint(
                    checkpoint, identity, done, model, optimizer, {"losses": outcome.losses}, rank_rng=rank_rng
                )
            model.train()
            last_saved = done
        if stopping and done < total:
            dist.barrier()  # no process exits (and no launcher tears the group down) before the checkpoint is written
            where = f" to {checkpoint}" if checkpoint is not None else ""
            reporter.log(f"{stop.signal_name}: stopped after step {done}/{total}, checkpoint written{where}")
            raise Interrupted(f"interrupted at step {done}")
    model.eval()
    _check_finite_weights(model)
    outcome.steps = total
    outcome.seconds = time.perf_counter() - started
    outcome.examples_per_second = seen / outcome.seconds if outcome.seconds > 0 else 0.0
    return outcome, optimizer


def _check_all_gradients(model: nn.Module) -> None:
    """Under DistributedDataParallel every trainable parameter must get a gradient (else its bucket is never
    all-reduced and the replicas would drift apart): checked after the first step's backward."""
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise JdnaError(
            f"{len(missing)} trainable parameters (first: {missing[0]}) get no gradient from the loss, which "
            "data-parallel fine-tuning does not support: run one process"
        )


def loss_summary(losses: list[float], steps_per_epoch: int, points: int = 20) -> dict[str, Any]:
    """A compact loss curve: first/last/min, mean per epoch, and `points` evenly spaced window means."""
    if not losses:
        return {}
    epochs = [
        losses[i : i + steps_per_epoch] for i in range(0, len(losses), max(1, steps_per_epoch))
    ]
    window = max(1, len(losses) // points)
    curve = [
        round(sum(losses[i : i + window]) / len(losses[i : i + window]), 5) for i in range(0, len(losses), window)
    ]
    return {
        "first": round(losses[0], 5),
        "last": round(losses[-1], 5),
        "min": round(min(losses), 5),
        "epoch_means": [round(sum(e) / len(e), 5) for e in epochs],
        "curve": curve,
        "curve_window": window,
    }
