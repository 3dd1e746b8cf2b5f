"""Calibration data, the block-by-block runner and the statistics accumulators that the calibration
pipeline (:mod:`jdna.layerwise`) drives Wanda, SparseGPT, OWL and GPTQ with.

Like the reference implementations, the model is processed one transformer block at a time: the inputs
of block 0 are captured once, each block is run on the current inputs (collecting statistics through
hooks on its linear layers), compressed, and run again to produce the inputs of the next block. Only one
block's activations are alive at a time, so a 7B model calibrates on one 24 GB GPU.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from jdna.calibration_corpus import offline_corpus
from jdna.errors import JdnaError
from jdna.io import sha256_file
from jdna.paths import expand
from jdna.prunable import find_blocks
from jdna.tasks.hub import hub_unreachable

_SANE_MAX_LENGTH = 1_000_000


# Named calibration sources for --calib (anything else is a file path).
CALIBRATION_SOURCES = ("c4", "bigbench")


def check_calibration_spec(spec: str | None) -> None:
    """JdnaError unless `spec` is None (the default), a named source, or an existing file."""
    if spec is None or spec in CALIBRATION_SOURCES:
        return
    if not expand(spec).is_file():
        raise JdnaError(
            f"calibration file '{spec}' does not exist: pass --calib with a .txt or .jsonl file, or one of "
            f"{', '.join(CALIBRATION_SOURCES)}"
        )


@lru_cache(maxsize=1)
def default_calibration_source() -> str:
    """C4 when the hub is reachable (the references' choice), else the offline BIG-bench corpus."""
    if hub_unreachable():
        return "bigbench"
    try:
        _c4_text()
    except JdnaError:
        return "bigbench"
    return "c4"


def calibration_identity(spec: str | None) -> str | dict[str, str]:
    """What a calibrated step's content address records of its text: "c4", the offline corpus' name and
    sha256, or a file's sha256. The default is resolved first, so the address names the text really used."""
    source = default_calibration_source() if spec is None else spec
    if source == "c4":
        return "c4"
    if source == "bigbench":
        return offline_corpus().identity()
    return {"sha256": sha256_file(expand(source))}


def read_calibration_text(spec: str | None) -> str:
    """Text from a .txt file, or the "text" fields of a .jsonl file; "c4" is C4 from the hub, "bigbench" the
    offline corpus (jdna.calibration_corpus), None the first of those two that is available."""
    if spec is None:
        spec = default_calibration_source()
    if spec == "c4":
        return _c4_text()
    if spec == "bigbench":
        return offline_corpus().text
    path = expand(spec)
    if not path.is_file():
        raise JdnaError(f"calibration file '{spec}' does not exist: pass --calib with a .txt or .jsonl file")
    raw = path.read_text(errors="replace")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise JdnaError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(row, dict):
                raise JdnaError(f"{path}:{number}: expected an object with a 'text' field")
            text = row.get("text") or " ".join(str(v) for v in row.values() if isinstance(v, str))
            texts.append(text)
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise JdnaError(f"calibration file '{spec}' is empty")
    return raw


@lru_cache(maxsize=1)
def _c4_text(max_documents: int = 2000) -> str:
    try:
        from datasets import load_dataset

        stream = load_dataset(
            "allenai/c4", data_files="en/c4-train.00000-of-01024.json.gz", split="train", streaming=True
        )
        texts = [row["text"] for _, row in zip(range(max_documents), stream)]
    except Exception:
        raise JdnaError(
            "the default calibration set (C4) needs the Hugging Face hub, which is unreachable: "
            "pass --calib FILE (a .txt or .jsonl file) or --calib bigbench (offline, after `make data`)"
        ) from None
    return "\n\n".join(texts)


def model_context_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest sequence the model takes: the config's limit, capped by a sane tokenizer limit."""
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < _SANE_MAX_LENGTH:
        limit = min(limit, int(tokenizer_limit))
    return int(limit)


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor  # (samples, seqlen)
    seqlen: int
    requested_seqlen: int
    total_tokens: int


def calibration_samples(
    text: str, tokenizer: Any, model: nn.Module, samples: int, seqlen: int, seed: int
) -> CalibrationSet:
    """Random windows of `seqlen` tokens from the text (seeded), capped at the model's context length."""
    if samples < 1:
        raise JdnaError("--calib-samples must be at least 1")
    if seqlen < 2:
        raise JdnaError("--calib-seqlen must be at least 2")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    wraps = (
        all(token is not None for token in special) and getattr(model.config, "is_decoder", False) is False
    )
    wraps = (
        wraps and getattr(tokenizer, "cls_token", None) is not None and "[CLS]" in str(tokenizer.cls_token)
    )
    length = min(seqlen, model_context_length(model, tokenizer))
    content = length - 2 if wraps else length
    if len(ids) < 2:
        raise JdnaError("the calibration text is too short: it must hold at least a few tokens")
    content = min(content, len(ids))
    rng = random.Random(seed)
    rows = []
    for _ in range(samples):
        start = rng.randint(0, len(ids) - content)
        window = ids[start : start + content]
        if wraps:
            window = [tokenizer.cls_token_id, *window, tokenizer.sep_token_id]
        rows.append(window)
    return CalibrationSet(
        input_ids=torch.tensor(rows, dtype=torch.long),
        seqlen=len(rows[0]),
        requested_seqlen=seqlen,
        total_tokens=len(ids),
    )


class _StopForward(Exception):
    pass


@dataclass
class _Chunk:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        return self.kwargs["hidden_states"] if "hidden_states" in self.kwargs else self.args[0]

    def with_hidden(self, hidden: torch.Tensor) -> _Chunk:
        if "hidden_states" in self.kwargs:
            return _Chunk(self.args, {**self.kwargs, "hidden_states": hidden})
        return _Chunk((hidden, *self.args[1:]), self.kwargs)


def _to_device(value: Any, device: torch.device) -> Any:
    """`value` with every tensor inside (tuples, lists, dicts) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model's layers (``--device-map``): its blocks then stay where they are."""
    placement = getattr(model, "hf_device_map", None)
    return isinstance(placement, dict) and len(set(placement.values())) > 1


# Calibration tokens run through a block together, so the matmuls see long rows (a per-sample loop runs
# each weight through memory once per sample). Activation memory grows with the chunk, so it is capped.
CPU_TOKENS_PER_CHUNK = 16_384
CUDA_TOKENS_PER_CHUNK = 32_768


def chunk_samples(samples: int, seqlen: int, device: torch.device) -> int:
    """Calibration samples per chunk on `device`: as many as the token budget allows, at least one."""
    budget = CUDA_TOKENS_PER_CHUNK if device.type == "cuda" else CPU_TOKENS_PER_CHUNK
    return max(1, min(samples, budget // max(seqlen, 1)))


class LayerwiseRunner:
    """Feeds calibration samples through a model one transformer block at a time.

    With a `device` other than where the model lives (the model is loaded on the CPU), each block is moved
    to `device` when `iter_blocks` reaches it and back afterwards, and the captured activations live on
    `device`: only one block's weights and one set of activations occupy the accelerator, as in the
    reference Wanda/SparseGPT/GPTQ code. A model placed by accelerate (``--device-map``) is left where it
    is; each block's inputs follow it.
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model
        self.home = next(model.parameters()).device
        self.offload = device is not None and not is_dispatched(model)
        self.device = torch.device(device) if self.offload and device is not None else self.home
        self.blocks_path, self.blocks = find_blocks(model)
        size = batch_size or chunk_samples(input_ids.shape[0], input_ids.shape[1], self.device)
        captured = self._capture_inputs(input_ids, size)
        self.chunks = [_Chunk(*_to_device((c.args, c.kwargs), self.device)) for c in captured]

    @torch.no_grad()
    def _capture_inputs(self, input_ids: torch.Tensor, batch_size: int) -> list[_Chunk]:
        captured: list[_Chunk] = []

        def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(_Chunk(args, dict(kwargs)))
            raise _StopForward

        handle = self.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        accepts_cache = "use_cache" in inspect.signature(self.model.forward).parameters
        try:
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start : start + batch_size].to(self.home)
                kwargs: dict[str, Any] = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
                if accepts_cache:
                    kwargs["use_cache"] = False
                try:
                    self.model(**kwargs)
                except _StopForward:
                    pass
        finally:
            handle.remove()
        return captured

    @torch.no_grad()
    def run(self, block: nn.Module, keep_outputs: bool) -> list[_Chunk] | None:
        outputs = []
        for chunk in self.chunks:
            result = block(*chunk.args, **chunk.kwargs)
            hidden = result[0] if isinstance(result, (tuple, list)) else result
            if keep_outputs:
                outputs.append(chunk.with_hidden(hidden))
        return outputs if keep_outputs else None

    def advance(self, outputs: list[_Chunk]) -> None:
        self.chunks = outputs

    def iter_blocks(self) -> Iterator[tuple[int, nn.Module]]:
        """Each block in order, on the calibration device while the caller works on it."""
        for index, block in enumerate(self.blocks):
            if self.offload:
                block.to(self.device)
            try:
                yield index, block
            finally:
                if self.offload:
                    block.to(self.home)


def collect_inputs(
    modules: dict[str, nn.Module], accumulate: Callable[[str, torch.Tensor], None]
) -> Callable[[], None]:
    """Hook each module's input into `accumulate(name, x2d)`; returns a function removing the hooks."""
    handles = []
    for name, module in modules.items():

        def hook(_module: nn.Module, inputs: tuple[Any, ...], _output: Any, name: str = name) -> None:
            x = inputs[0].detach()
            accumulate(name, x.reshape(-1, x.shape[-1]))

        handles.append(module.register_forward_hook(hook))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


class _SameInput:
    """Reuses a statistic when consecutive modules read the very same input tensor (q/k/v, gate/up).

    The last input is kept referenced, so its memory cannot be reused by another tensor while its address,
    layout and version counter identify it: an equal key means equal values.
    """

    def __init__(self) -> None:
        self._input: torch.Tensor | None = None
        self._key: tuple[Any, ...] | None = None
        self._value: torch.Tensor | None = None

    def get(self, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version)
        if self._value is None or key != self._key:
            self._input, self._key, self._value = x, key, compute(x)
        return self._value

    def forget(self) -> None:
        self._input = self._key = self._value = None


class InputNormAccumulator:
    """‖X_j‖₂ over all calibration tokens for each input feature j (Wanda's activation statistic)."""

    def __init__(self) -> None:
        self.sum_squares: dict[str, torch.Tensor] = {}
        self._same = _SameInput()

    def __call__(self, name: str, x: torch.Tensor) -> None:
        contribution = self._same.get(x, lambda t: t.to(torch.float32).pow(2).sum(0))
        if name in self.sum_squares:
            self.sum_squares[name] += contribution
        else:
            self.sum_squares[name] = contribution.clone()

    def norms(self) -> dict[str, torch.Tensor]:
        self._same.forget()
        return {name: value.sqrt().cpu() for name, value in self.sum_squares.items()}

    def values(self) -> dict[str, torch.Tensor]:
        """The statistic per module name (the accumulators' common reader)."""
        return self.norms()


class HessianAccumulator:
    """H = 2/n Σ x xᵀ over calibration tokens for each module (SparseGPT's and GPTQ's proxy Hessian)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._same = _SameInput()

    def __call__(self, name: str, x: torch.Tensor) -> None:
        contribution = self._same.get(x, _gram)
        if name in self.sums:
            self.sums[name] += contribution
        else:
            self.sums[name] = contribution.clone()
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]

    def hessian(self, name: str) -> torch.Tensor:
        self._same.forget()
        return 2.0 * self.sums[name] / max(self.counts[name], 1)

    def clear(self) -> None:
        self._same.forget()
        self.sums.clear()
        self.counts.clear()

    def values(self) -> Mapping[str, torch.Tensor]:
        """The statistic per module name (the accumulators' common reader); each Hessian is formed when read,
        so a block's matrices hold one at a time."""
        return _Hessians(self)


class _Hessians(Mapping[str, torch.Tensor]):
    def __init__(self, accumulator: HessianAccumulator) -> None:
        self._accumulator = accumulator

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._accumulator.sums:
            raise KeyError(name)
        return self._accumulator.hessian(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._accumulator.sums)

    def __len__(self) -> int:
        return len(self._accumulator.sums)


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32)
    return x.T @ x
