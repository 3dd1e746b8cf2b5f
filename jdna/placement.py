"""Where a command computes and in what precision: ``--device``, ``--dtype`` and ``--device-map``.

One `Placement` per run, resolved from the flags and the checkpoint before any model is loaded, so it can
enter the step's content address (`Placement.id_params`) and its record (`Placement.record`).

- ``--device auto`` is CUDA when a GPU is visible, else the CPU; on a CPU-only machine it is exactly
  ``--device cpu``, so ``auto`` never changes a CPU run's numbers.
- ``--dtype auto`` is the checkpoint's stored dtype (``dtype``/``torch_dtype`` of config.json; float32
  when unstated), with one exception per command, documented at its call: eval on CUDA scores a float32
  checkpoint in bfloat16 (as it always did), and on the CPU scores a float16 checkpoint in float32 (CPU
  half-precision kernels are slow and lossy).
- ``--device-map auto`` hands placement to accelerate (layers spread over every GPU, then CPU memory).

The content address gains ``dtype`` whenever the compute dtype is not float32 and ``device: "cuda"``
whenever the step computes on a GPU *and* that can change the result (calibration, training, scoring;
not magnitude selection, RTN or SVD, which run the same way wherever the weights live). A float32 run on
the CPU, the only setting before these options existed, keeps the content address it always had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from jdna.errors import JdnaError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def checkpoint_dtype(config: dict[str, Any]) -> torch.dtype:
    """The dtype a checkpoint's config.json says its weights are stored in (float32 when unstated)."""
    stored = config.get("dtype") or config.get("torch_dtype")
    aliases = {"float": "float32", "half": "float16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    if isinstance(stored, str):
        stored = aliases.get(stored, stored)
    return DTYPES.get(stored, torch.float32) if isinstance(stored, str) else torch.float32


def parse_device(spec: str | None) -> torch.device:
    """``auto`` (CUDA if visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; JdnaError for anything else."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise JdnaError(f"--device '{spec}' is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise JdnaError(f"--device {spec} but no CUDA GPU is visible to torch: use --device cpu (or auto)")
    index = int(match.group(1)) if match.group(1) is not None else None
    if index is not None and index >= torch.cuda.device_count():
        raise JdnaError(
            f"--device {spec} but only {torch.cuda.device_count()} GPU(s) are visible: use cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def parse_dtype(spec: str | None) -> torch.dtype | None:
    """A named dtype, or None for ``auto``; JdnaError for anything else."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return None
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    spec = aliases.get(spec, spec)
    if spec not in DTYPES:
        raise JdnaError(f"--dtype '{spec}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[spec]


def parse_device_map(spec: str | None) -> str | None:
    if spec in (None, "", "none"):
        return None
    if spec not in DEVICE_MAPS:
        raise JdnaError(f"--device-map '{spec}' is not one of {', '.join(DEVICE_MAPS)}")
    return spec


@dataclass(frozen=True)
class Placement:
    """The resolved device, dtype and device map of one run."""

    device: torch.device
    dtype: torch.dtype
    stored_dtype: torch.dtype  # the checkpoint's own dtype (what artifacts store weights in)
    device_map: str | None = None

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def id_params(self, device_matters: bool = True) -> dict[str, Any]:
        """What enters the content address: nothing for float32 on the CPU (see the module docstring)."""
        params: dict[str, Any] = {}
        if device_matters and self.on_gpu:
            params["device"] = "cuda"
        if self.dtype != torch.float32:
            params["dtype"] = dtype_name(self.dtype)
        return params

    def record(self) -> dict[str, Any]:
        """What a record says ran."""
        out: dict[str, Any] = {"device": self.device.type, "dtype": dtype_name(self.dtype)}
        if self.device.type == "cuda" and self.device.index is not None:
            out["device_index"] = self.device.index
        if self.device_map:
            out["device_map"] = self.device_map
        return out


def resolve_placement(
    device: str | None = "auto",
    dtype: str | None = "auto",
    config: dict[str, Any] | None = None,
    device_map: str | None = None,
    auto_dtype: Any = None,
) -> Placement:
    """Resolve the flags against a checkpoint's config.

    `auto_dtype(device, stored_dtype)` overrides what ``--dtype auto`` means for one command (eval's
    bfloat16 on CUDA); by default ``auto`` is the stored dtype.
    """
    resolved_map = parse_device_map(device_map)
    if resolved_map is not None and (device or "auto") not in ("auto", "cuda"):
        raise JdnaError(f"--device-map {resolved_map} places the model itself: drop --device {device}")
    target = parse_device(device)
    stored = checkpoint_dtype(config or {})
    chosen = parse_dtype(dtype)
    if chosen is None:
        chosen = auto_dtype(target, stored) if auto_dtype is not None else stored
    return Placement(device=target, dtype=chosen, stored_dtype=stored, device_map=resolved_map)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its first parameter's device (the embeddings, under a device map)."""
    return next(model.parameters()).device
