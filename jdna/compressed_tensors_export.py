"""The ``compressed-tensors`` export format, as llm-compressor writes it and transformers/vLLM load it.

* A quantized artifact becomes ``pack-quantized``: each quantized Linear stores ``weight_packed`` (int32, the
  codes packed by compressed-tensors' own ``pack_to_int32``), ``weight_scale``, ``weight_shape`` and, for
  asymmetric grids, ``weight_zero_point``; ``config.json`` gets the ``quantization_config`` that
  compressed-tensors' ``ModelCompressor.update_config`` writes. jdna's codes are unsigned (``0..2^b-1``,
  ``w = scale·(code − zero)``); compressed-tensors' are signed (``w = scale·(q − zp)``), so
  ``q = code − 2^(b−1)`` and ``zp = zero − 2^(b−1)``: the same products, so the decompressed weights equal the
  ones jdna evaluates. Pruned positions get ``code = zero`` so they decompress to exactly 0 without a mask.
* A pruned (or sparse fine-tuned) model is written in compressed-tensors' sparse layouts, which jdna writes
  itself because compressed-tensors removed its sparse compressors in 0.15.0 (the first release transformers 5
  accepts; 0.14.0.1 is the last that decompresses them, with transformers < 5):
  ``sparse-24-bitmask`` when every prunable matrix is 2:4 (per row, each group of four consecutive weights
  keeps two positions: ``compressed`` (rows, cols/2) holds their values in row-major order, ``bitmask``
  (uint8, rows × ceil(cols/8), little-endian bit order) marks them, ``shape`` (2, 1) int64), else
  ``sparse-bitmask`` (``compressed`` the non-zeros in row-major order, ``bitmask`` the same packing,
  ``row_offsets`` int64 index of each row's first value, ``shape`` (2,) int64) on the matrices where it saves
  bytes. jdna reads both back itself (:func:`decompress_state_dict`), whatever compressed-tensors is installed.
* Low-rank factors have no compressed-tensors format: such a model is refused (export it with ``--format hf``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.artifact import Artifact
from jdna.bitmask import unpack_mask
from jdna.errors import JdnaError
from jdna.kinds.quantized import spec_of
from jdna.model_files import require_compressed_tensors
from jdna.models import ModelRef, canonical_name
from jdna.progress import Reporter
from jdna.quantization.packing import unpack_codes
from jdna.sparse_formats import LAST_SPARSE_READER, SPARSE_24, SPARSE_BITMASK, compress_24, compress_bitmask

_STRATEGIES = {"tensor": "tensor", "channel": "channel", "group": "group"}


def _compressing_top(ref: ModelRef) -> Artifact | None:
    """The newest artifact that defines how the weights are stored (quantized codes, factors, or sparse)."""
    for artifact in reversed(ref.chain):
        if artifact.kind in ("pruned", "quantized", "lowrank", "finetuned"):
            return artifact
    return None


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def _signed_codes(artifact: Artifact, name: str, entry: dict[str, Any], tensors: dict[str, dict]) -> tuple:
    """(q int8 (rows, cols), zero-point int8 or None, scale float (scale shape)) in compressed-tensors' terms."""
    spec = spec_of(entry)
    rows, cols = (int(d) for d in entry["shape"])
    scale_shape = spec.scale_shape((rows, cols))
    offset = 1 << (spec.bits - 1)
    codes = unpack_codes(tensors["codes"][name], spec.bits, rows * cols).reshape(rows, cols).to(torch.int16)
    if spec.symmetric:
        zero = torch.full(scale_shape, offset, dtype=torch.int16)
    else:
        if name not in tensors["zeros"]:
            raise JdnaError(f"artifact '{artifact.path}' lacks the zero-points of '{name}': recreate it")
        count = scale_shape[0] * scale_shape[1]
        zero = unpack_codes(tensors["zeros"][name], spec.bits, count).reshape(scale_shape).to(torch.int16)
    if name in tensors["masks"]:
        keep = unpack_mask(tensors["masks"][name], artifact.header["masks"][name])
        per_column = zero.repeat_interleave(spec.group_size, dim=1) if spec.granularity == "group" else zero
        codes = torch.where(keep, codes, per_column.expand(rows, cols))
    q = (codes - offset).to(torch.int8)
    zero_point = None if spec.symmetric else (zero - offset).to(torch.int8)
    return q, zero_point, tensors["scales"][name].reshape(scale_shape)


def _weights_args(entry: dict[str, Any]) -> dict[str, Any]:
    spec = spec_of(entry)
    args: dict[str, Any] = {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.symmetric,
        "strategy": _STRATEGIES[spec.granularity],
        "dynamic": False,
    }
    if spec.granularity == "group":
        args["group_size"] = spec.group_size
    return args


@torch.no_grad()
def _pack_quantized(artifact: Artifact, model: nn.Module, work: Path) -> dict[str, Any]:
    from compressed_tensors import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    entries: dict[str, dict[str, Any]] = artifact.header.get("quant", {})
    tensors = {key: artifact.tensors(f"{key}.") for key in ("codes", "scales", "zeros")}
    tensors["masks"] = artifact.tensors("mask.")
    linears = _linear_modules(model)
    by_canonical = {canonical_name(model, f"{name}.weight"): name for name in linears}
    groups: dict[str, list[str]] = defaultdict(list)  # weights-args JSON -> module names
    args_of: dict[str, dict[str, Any]] = {}
    scale_dtypes: set[str] = set()
    for name, entry in entries.items():
        module_name = by_canonical.get(name)
        if module_name is None:
            raise JdnaError(
                f"'{name}' is quantized but is not an nn.Linear weight: compressed-tensors packs only Linear "
                "layers; export this model with --format hf"
            )
        module = linears[module_name]
        q, zero_point, scale = _signed_codes(artifact, name, entry, tensors)
        spec = spec_of(entry)
        # The loader creates weight_scale in the model's dtype and dequantizes in it: writing it there keeps the
        # decompressed weight equal to jdna's scale·(code − zero) (exactly so for fp32 and fp16 models).
        dtype = module.weight.dtype
        del module.weight
        module.register_parameter("weight_packed", nn.Parameter(pack_to_int32(q, spec.bits), requires_grad=False))
        stored_scale = scale.reshape(-1) if spec.granularity == "tensor" else scale  # tensor strategy: shape (1,)
        module.register_parameter("weight_scale", nn.Parameter(stored_scale.to(dtype), requires_grad=False))
        scale_dtypes.add(str(dtype).replace("torch.", ""))
        module.register_buffer("weight_shape", torch.tensor(list(q.shape)))
        if zero_point is not None:
            packed_zero = (
                pack_to_int32(zero_point, spec.bits, packed_dim=0)
                if spec.granularity in ("group", "channel")
                else zero_point.reshape(-1)
            )
            module.register_buffer("weight_zero_point", packed_zero.contiguous())
        key = repr(sorted(_weights_args(entry).items()))
        args_of[key] = _weights_args(entry)
        groups[key].append(module_name)
    quantized = {m for names in groups.values() for m in names}
    ignore = sorted(set(linears) - quantized)
    if len(groups) == 1:
        # One scheme: the llm-compressor form, every Linear but the ignored ones.
        ((key, _),) = groups.items()
        config_groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args_of[key]))}
    else:
        config_groups = {
            f"group_{i}": QuantizationScheme(targets=sorted(names), weights=QuantizationArgs(**args_of[key]))
            for i, (key, names) in enumerate(sorted(groups.items()))
        }
    quant_config = QuantizationConfig(
        config_groups=config_groups, format="pack-quantized", quantization_status="compressed", ignore=ignore
    )
    model.save_pretrained(work, safe_serialization=True)
    ModelCompressor(quantization_config=quant_config).update_config(str(work))
    return {
        "weights": "pack-quantized",
        "quantized_modules": len(quantized),
        "ignored_linear_modules": ignore,
        "scale_dtype": sorted(scale_dtypes),
    }


def _bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def _sparse(ref: ModelRef, model: nn.Module, work: Path) -> dict[str, Any] | None:
    """Replace each pruned Linear weight by its sparse entry and save; None when nothing is worth compressing."""
    from jdna.sparsity import measure_model

    report = measure_model(model)
    if not report.externally_pruned and not any(a.kind == "pruned" for a in ref.chain):
        return None  # a dense model's stray zeros (e.g. a 4-bit checkpoint's) are not worth a legacy layout
    linears = _linear_modules(model)
    by_canonical = {canonical_name(model, f"{name}.weight"): name for name in linears}
    two_four = report.n_m in ((1, 4), (2, 4))
    sparse_format = SPARSE_24 if two_four else SPARSE_BITMASK
    entries: dict[str, dict[str, torch.Tensor]] = {}
    for matrix in report.matrices:
        module_name = by_canonical.get(matrix.name)
        if module_name is None or not matrix.zeros:
            continue
        weight = linears[module_name].weight.detach().cpu()
        entry = compress_24(weight) if two_four else compress_bitmask(weight)
        if two_four or _bytes(entry) < weight.numel() * weight.element_size():
            entries[module_name] = entry
    if not entries:
        return None
    dense_bytes = sum(linears[m].weight.numel() * linears[m].weight.element_size() for m in entries)
    for module_name, entry in entries.items():
        module = linears[module_name]
        del module.weight
        for key, value in entry.items():
            module.register_buffer(key, value)
    model.save_pretrained(work, safe_serialization=True)
    config_path = work / "config.json"
    config = json.loads(config_path.read_text())
    # What compressed-tensors <= 0.14's ModelCompressor.update_config wrote for a sparse-only model.
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": sparse_format,
            "targets": ["Linear"],
            "ignore": sorted(set(linears) - set(entries)),
            "global_sparsity": round(report.sparsity, 6),
            "sparsity_structure": "2:4" if two_four else "unstructured",
            "registry_requires_subclass": False,
        },
        "transform_config": {},
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {
        "weights": sparse_format,
        "sparse_modules": len(entries),
        "sparse_bytes": sum(_bytes(e) for e in entries.values()),
        "dense_bytes_of_those_matrices": dense_bytes,
        "notes": [
            f"{sparse_format} is compressed-tensors' legacy sparse layout: compressed-tensors <= "
            f"{LAST_SPARSE_READER} (with transformers < 5) and jdna decompress it; compressed-tensors >= 0.15, "
            "transformers 5 and current vLLM no longer read it (use --format hf for a dense copy they load)"
        ],
    }


def write_compressed_tensors(
    ref: ModelRef, model: nn.Module, work: Path, reporter: Reporter, sparse_layout: bool = False
) -> dict[str, Any]:
    """Quantized models as ``pack-quantized``; pruned ones dense with their exact zeros (what llm-compressor saves
    today, read by every loader) unless `sparse_layout` asks for the legacy ``sparse-24-bitmask`` /
    ``sparse-bitmask`` layouts, smaller but read only by jdna and compressed-tensors <= 0.14.0.1: transformers 5
    loads such a file with *random* weights in place of the compressed matrices (it reports them missing and
    initialises them), so they are opt-in (``--format compressed-tensors-sparse``), never the default."""
    version = require_compressed_tensors()
    top = _compressing_top(ref)
    if top is not None and top.kind == "lowrank":
        raise JdnaError(
            "compressed-tensors has no low-rank format, so the factors cannot be exported as such: use "
            "--format hf (dense left @ right, ranks recorded in jdna.json)"
        )
    details: dict[str, Any] = {}
    if top is not None and top.kind == "quantized":
        reporter.log("packing quantized codes (compressed-tensors pack-quantized)")
        details = _pack_quantized(top, model, work)
    elif sparse_layout:
        reporter.log("compressing pruned matrices (compressed-tensors legacy sparse bitmask)")
        details = _sparse(ref, model, work) or {}
    if not details:
        model.save_pretrained(work, safe_serialization=True)
        pruned = any(artifact.kind == "pruned" for artifact in ref.chain)
        note = (
            "pruned positions are stored as exact zeros in dense matrices, as llm-compressor saves pruned models "
            "(every loader reads them; --format compressed-tensors-sparse writes the smaller legacy sparse layouts)"
            if pruned and not sparse_layout
            else "no pruned matrix to compress: the weights are stored dense"
        )
        details = {"weights": "dense", "notes": [note]}
    details["compressed_tensors"] = version
    return details


def write_compressed_tensors_sparse(
    ref: ModelRef, model: nn.Module, work: Path, reporter: Reporter
) -> dict[str, Any]:
    """``--format compressed-tensors-sparse``: as :func:`write_compressed_tensors`, pruned matrices in the legacy
    sparse layouts."""
    return write_compressed_tensors(ref, model, work, reporter, sparse_layout=True)
