"""Measured sparsity of a model's own weights: exact zeros in its prunable matrices.

A model pruned elsewhere (Wanda's or SparseGPT's scripts, llm-compressor) arrives as a plain Hugging Face
directory whose weights simply contain zeros. jdna reads those zeros so such a model is recorded as pruned (with
its measured sparsity and N:M pattern) rather than as dense. Pretrained dense weights have essentially no exact
zeros, so a zero fraction of at least ``EXTERNAL_PRUNING_THRESHOLD`` marks a model as externally pruned.

Quantized-then-dequantized weights also hold exact zeros (every weight that rounds to the zero-point): about
13-15% at 4 bits, more at 3 bits and below. The threshold sits above the 4-bit figure; a dequantized model at 3
bits or fewer can still cross it, and then reads as pruned (its N:M pattern, if any, tells pruning apart).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from jdna.models import BaseModel, ModelRef

# Dense checkpoints hold a handful of exact zeros at most and 4-bit dequantized ones about 15% (see above); a
# pruning study's sparsities start around 30%.
EXTERNAL_PRUNING_THRESHOLD = 0.25

# N:M patterns checked, most sparse first; the first one every matrix satisfies is reported.
CANDIDATE_PATTERNS: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (4, 8))


@dataclass
class MatrixSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    patterns: tuple[tuple[int, int], ...]  # the CANDIDATE_PATTERNS this matrix satisfies

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    matrices: list[MatrixSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)

    @property
    def zeros(self) -> int:
        return sum(m.zeros for m in self.matrices)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def n_m(self) -> tuple[int, int] | None:
        """The N:M pattern every matrix follows, if any."""
        if not self.matrices or not self.zeros:
            return None
        for pattern in CANDIDATE_PATTERNS:
            if all(pattern in m.patterns for m in self.matrices):
                return pattern
        return None

    @property
    def pattern(self) -> str:
        n_m = self.n_m
        return f"{n_m[0]}:{n_m[1]}" if n_m else "unstructured"

    @property
    def externally_pruned(self) -> bool:
        return self.sparsity >= EXTERNAL_PRUNING_THRESHOLD or self.n_m is not None

    @property
    def bits_per_weight(self) -> float:
        """Storage cost under jdna's accounting (docs/artifacts.md, "The compression axis")."""
        from jdna.pruning.engine import pruned_bits_per_weight

        if not self.externally_pruned:
            return 16.0
        return pruned_bits_per_weight(1.0 - self.sparsity, self.n_m)

    def summary(self) -> dict[str, Any]:
        """Overall figures, as eval records and export metadata carry them."""
        return {
            "sparsity": round(self.sparsity, 6),
            "pattern": self.pattern,
            "externally_pruned": self.externally_pruned,
            "prunable_params": self.numel,
            "zero_params": self.zeros,
            "matrices": len(self.matrices),
        }

    def per_matrix(self) -> list[dict[str, Any]]:
        """Rows shaped like a pruned artifact's ``stats.matrices`` (so `jdna info` prints them the same way)."""
        return [
            {"name": m.name, "shape": list(m.shape), "numel": m.numel, "pruned": m.zeros,
             "sparsity": round(m.sparsity, 6)}
            for m in self.matrices
        ]


def _satisfied_patterns(zero: torch.Tensor) -> tuple[tuple[int, int], ...]:
    rows, cols = zero.shape[0], zero.shape[-1]
    flat = zero.reshape(rows, cols)
    found = []
    for n, m in CANDIDATE_PATTERNS:
        if cols % m:
            continue
        zeros_per_group = flat.reshape(rows, cols // m, m).sum(dim=-1)
        if bool((zeros_per_group >= m - n).all()):
            found.append((n, m))
    return tuple(found)


def measure_matrix(name: str, weight: torch.Tensor) -> MatrixSparsity:
    zero = weight.detach() == 0
    return MatrixSparsity(
        name=name,
        shape=tuple(weight.shape),
        numel=weight.numel(),
        zeros=int(zero.sum()),
        patterns=_satisfied_patterns(zero) if weight.dim() == 2 else (),
    )


def measure_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> SparsityReport:
    return SparsityReport([measure_matrix(name, tensor) for name, tensor in named])


def measure_model(model: nn.Module) -> SparsityReport:
    """Sparsity of a loaded model's prunable matrices (the set `jdna prune` would touch by default)."""
    from jdna.prunable import prunable_matrices

    return measure_tensors((m.name, m.param) for m in prunable_matrices(model))


def _prunable_names(directory: Path, family: str) -> list[str]:
    """Canonical names of the prunable matrices, from a weightless (meta-device) instance of the architecture."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from jdna.prunable import prunable_matrices

    config = AutoConfig.from_pretrained(str(directory))
    model_class = AutoModelForCausalLM if family == "causal_lm" else AutoModel
    with torch.device("meta"):
        model = model_class.from_config(config)
    return [m.name for m in prunable_matrices(model)]


def measure_directory(directory: Path, family: str) -> SparsityReport:
    """Sparsity of a Hugging Face directory's safetensors weights, read tensor by tensor (no model is built)."""
    from safetensors import safe_open

    names = _prunable_names(directory, family)
    wanted = set(names)
    found: dict[str, MatrixSparsity] = {}
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else None
    paths = [directory / f for f in files] if files else sorted(directory.glob("*.safetensors"))
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                # A checkpoint names "model.layers.0.x.weight" or "layers.0.x.weight": match on the canonical tail.
                parts = key.split(".")
                name = next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in wanted), None)
                if name is not None and name not in found:
                    found[name] = measure_matrix(name, handle.get_tensor(key))
    return SparsityReport([found[n] for n in names if n in found])


_DETECTED: dict[str, SparsityReport] = {}


def detect_sparsity(base: BaseModel) -> SparsityReport:
    """Measured sparsity of a base model's weights (memoised per weights sha256 within a process).

    Plain checkpoints are read tensor by tensor; a quantized checkpoint (compressed-tensors) is loaded
    decompressed, since its packed codes are not weights.
    """
    if base.sha256 not in _DETECTED:
        if isinstance(base.config.get("quantization_config"), dict):
            from jdna.models import ModelRef, load_model

            model, _ = load_model(ModelRef(base=base))
            _DETECTED[base.sha256] = measure_model(model)
        else:
            _DETECTED[base.sha256] = measure_directory(base.path, base.family)
    return _DETECTED[base.sha256]


def reference_of(ref: ModelRef) -> dict[str, Any]:
    """How a record names a model it points to (e.g. a dense parent): its id is what that model's own eval
    records carry as ``model.id`` (the weights sha256 for a plain model, the artifact id for an artifact)."""
    return {"name": ref.display_name, "id": ref.identity, "source": ref.base.source}


def external_compression(report: SparsityReport) -> dict[str, Any]:
    """The ``compression`` block of a model pruned outside jdna, from its measured zeros."""
    return {
        "kind": "pruned",
        "method": "external",
        "sparsity": round(report.sparsity, 6),
        "bits_per_weight": round(report.bits_per_weight, 6),
        "target_sparsity": None,
        "pattern": report.pattern,
        "externally_pruned": True,
    }


def model_block_fields(ref: ModelRef) -> dict[str, Any]:
    """What an eval record's ``model`` block adds about compression that happened outside the jdna chain.

    ``dense_parent``: the dense model this one was compressed from (--dense-parent, a jdna export's metadata,
    or the base of a compressing chain); None for a dense model. For a model without a chain,
    ``detected_sparsity`` (measured zeros), and a ``compression`` block from the export metadata or, for a
    clearly sparse model, from the measured zeros (method "external").
    """
    from jdna.model_files import read_export_metadata
    from jdna.models import dense_parent_of

    fields: dict[str, Any] = {"dense_parent": dense_parent_of(ref)}
    if ref.chain:
        return fields
    report = detect_sparsity(ref.base)
    fields["detected_sparsity"] = report.summary()
    exported = read_export_metadata(ref.base.path)
    exported_compression = (exported or {}).get("compression") or {}
    if exported_compression.get("method", "dense") != "dense":
        fields["compression"] = {**exported_compression, "from": "jdna export metadata"}
    elif report.externally_pruned:
        fields["compression"] = external_compression(report)
    if report.externally_pruned:
        fields["detected_sparsity"]["per_matrix"] = {m.name: round(m.sparsity, 6) for m in report.matrices}
    return fields


def record_dense_parent(record: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """Set ``model.dense_parent`` in an eval record and its file: labelling a cached result needs no re-run."""
    from jdna.io import write_json_atomic

    model = record.get("model")
    if not isinstance(model, dict) or model.get("dense_parent") == parent:
        return record
    path = Path(record["path"])
    stored = json.loads(path.read_text())
    stored["model"]["dense_parent"] = parent
    write_json_atomic(path, stored)
    return {**record, "model": {**model, "dense_parent": parent}}
