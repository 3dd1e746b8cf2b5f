"""What every subcommand shares: the stderr console, progress, reading a model from stdin, printing a record."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from jdna.errors import JdnaError
from jdna.progress import Reporter

# Arguments and options that several commands share, declared once so their help and defaults stay in step.
ModelArgument = Annotated[
    str | None, typer.Argument(help="Path, HF id, demo name, or '-'/nothing to read a record from stdin.")
]
ArtifactOutput = Annotated[
    str | None, typer.Option("--output", "-o", help="Artifact path (default: content-addressed under ./runs/).")
]
ForceRecompute = Annotated[bool, typer.Option(help="Recompute even if the content-addressed artifact exists.")]
AllowPickle = Annotated[bool, typer.Option(help="Allow loading pickle (.bin) weights. Only for trusted models.")]

console = Console(stderr=True, highlight=False)

ARTIFACT_KINDS = ("pruned", "quantized", "lowrank", "finetuned")


class CliReporter(Reporter):
    """Logs and progress on stderr: a live bar on a terminal, plain periodic lines otherwise."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.interactive = console.is_terminal
        self._last_line = 0.0

    def log(self, message: str) -> None:
        console.print(f"[dim]jdna {self.command}:[/dim] {message}")

    def progress(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if self.interactive:
            width = 24
            filled = int(width * done / max(total, 1))
            bar = "█" * filled + "·" * (width - filled)
            console.file.write(f"\r  {stage} [{bar}] {done}/{total}")
            if finished:
                console.file.write("\n")
            console.file.flush()
        elif finished or now - self._last_line > 5:
            self._last_line = now
            self.log(f"{stage}: {done}/{total}")


def model_from_stdin(model: str | None) -> str:
    """The MODEL argument, or the artifact path named by the record (or path) piped on stdin."""
    if model not in (None, "", "-"):
        return model
    if sys.stdin is None or sys.stdin.isatty():
        raise JdnaError(
            "no model given: pass MODEL (a path, HF id or demo name) or pipe a jdna record on stdin"
        )
    text = sys.stdin.read()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise JdnaError("stdin is empty: the previous command in the pipe produced no record (did it fail?)")
    last = lines[-1]
    try:
        record = json.loads(last)
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict):
        kind = record.get("kind")
        path = record.get("path")
        if kind in ARTIFACT_KINDS and isinstance(path, str):
            return path
        if kind is not None and kind not in ARTIFACT_KINDS:
            raise JdnaError(
                f"stdin holds a '{kind}' record, not a model artifact: pipe the output of prune, "
                "quantize, lowrank or finetune"
            )
        raise JdnaError("stdin holds a JSON record without a model artifact 'path'")
    if Path(os.path.expanduser(last)).exists():
        return last
    raise JdnaError(f"stdin is neither a jdna record nor an existing path: {last[:80]!r}")


def emit(record: dict[str, Any]) -> None:
    """Print the command's single JSON line on stdout."""
    sys.stdout.write(json.dumps(record, sort_keys=False) + "\n")
    sys.stdout.flush()


def output_path(output: str | None) -> Path | None:
    if output is None:
        return None
    path = Path(os.path.expanduser(output))  # a ~user that does not exist stays as written
    if path.is_dir():
        raise JdnaError(f"-o '{output}' is a directory: give a file path ending in .safetensors")
    if not path.parent.exists():
        raise JdnaError(
            f"output directory '{path.parent}' does not exist: create it or choose another -o path"
        )
    if not path.parent.is_dir():
        raise JdnaError(f"output directory '{path.parent}' is not a directory: choose another -o path")
    if not os.access(path.parent, os.W_OK):
        raise JdnaError(f"output directory '{path.parent}' is not writable: choose another -o path")
    return path


# Placement options shared by every model-loading command (see jdna/placement.py and docs/scale.md).
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto (CUDA when a GPU is visible, else CPU), cpu, cuda or cuda:N.")
]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (the checkpoint's dtype; eval and lmc differ, see docs/scale.md), float32, bfloat16 or float16.",
    ),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map", help="auto: spread the model over every GPU, then CPU memory (accelerate); replaces --device."
    ),
]


def placement_for(ref: Any, device: str, dtype: str, device_map: str | None = None, auto_dtype: Any = None) -> Any:
    """The run's Placement (jdna.placement) from the shared options and the model's checkpoint."""
    from jdna.placement import resolve_placement

    return resolve_placement(device, dtype, ref.base.config, device_map, auto_dtype)
