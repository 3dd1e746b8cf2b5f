"""What every subcommand shares: the stderr console, progress, reading a model from stdin, printing a record."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from jdna.errors import JdnaError
from jdna.io import finite_json
from jdna.outputs import check_target
from jdna.progress import Meter, Reporter

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

ARTIFACT_KINDS = ("pruned", "quantized", "lowrank", "finetuned", "hf-dir")  # hf-dir: a jdna export's record


# Whether commands draw progress: None = on a terminal only; True/False = forced by --progress/--no-progress
# (anywhere on the command line) or JDNA_PROGRESS=1/0. Set by app.main for each invocation.
PROGRESS_ENV = "JDNA_PROGRESS"
progress_forced: bool | None = None


def progress_wanted() -> bool | None:
    """The --progress/--no-progress choice, else JDNA_PROGRESS (1/0), else None (decide by the terminal)."""
    if progress_forced is not None:
        return progress_forced
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


class CliReporter(Reporter):
    """Logs and progress on stderr: a live bar with rate and ETA on a terminal, nothing otherwise.

    Off a terminal, --progress (or JDNA_PROGRESS=1) asks for plain lines instead, at most one every few
    seconds per stage plus the last; --no-progress silences the bar on a terminal too.
    """

    LINE_EVERY_S = 5.0

    def __init__(self, command: str) -> None:
        self.command = command
        wanted = progress_wanted()
        self.interactive = console.is_terminal
        self.enabled = self.interactive if wanted is None else wanted
        self.meter = Meter()
        self._last_line = 0.0
        self._bar_open = False

    def _close_bar(self) -> None:
        if self._bar_open:
            console.file.write("\r\x1b[2K")
            console.file.flush()
            self._bar_open = False

    def log(self, message: str) -> None:
        self._close_bar()
        console.print(f"[dim]jdna {self.command}:[/dim] {message}")

    def progress(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        self.meter.update(stage, done, total)
        finished = done >= total
        if self.interactive:
            width = 24
            filled = int(width * done / max(total, 1))
            bar = "█" * filled + "·" * (width - filled)
            console.file.write(f"\r\x1b[2K  {stage} [{bar}] {self.meter.describe()}")
            self._bar_open = not finished
            if finished:
                console.file.write("\n")
            console.file.flush()
        elif finished or self.meter.now - self._last_line >= self.LINE_EVERY_S:
            self._last_line = self.meter.now
            console.print(f"[dim]jdna {self.command}:[/dim] {stage}: {self.meter.describe()}", markup=True)


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
                f"stdin holds a '{kind}' record, not a model artifact: pipe the output of prune, export, "
                "quantize, lowrank or finetune"
            )
        raise JdnaError("stdin holds a JSON record without a model artifact 'path'")
    if Path(os.path.expanduser(last)).exists():
        return last
    raise JdnaError(f"stdin is neither a jdna record nor an existing path: {last[:80]!r}")


def emit(record: dict[str, Any]) -> None:
    """Print the command's single JSON line on stdout (standard JSON: a NaN statistic prints as null)."""
    try:
        sys.stdout.write(json.dumps(finite_json(record), sort_keys=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise JdnaError(f"could not write the record to stdout: {error.strerror or error}") from None


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
    return check_target(path, "-o")


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
