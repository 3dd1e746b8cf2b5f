"""The ``compressed-tensors`` export format, as llm-compressor writes it and transformers/vLLM load it.

* A quantized artifact becomes ``pack-quantized``: each quantized Linear stores ``weight_packed`` (int32, the
  codes packed by compressed-tensors' own ``pack_to_int32``), ``weight_scale``, ``weight_shape`` and, for
  asymmetric grids, ``weight_zero_point``; ``config.json`` gets the ``quantization_config`` that
  compressed-tensors' ``ModelCompressor.update_config`` writes. jdna's codes are unsigned (``0..2^b-1``,
  ``w = scale·(code − zero)``); compressed-tensors' are signed (``w = scale·(q − zp)``), so
  ``q = code − 2^(b−1)`` and ``zp = zero − 2^(b−1)``: the same products, so the decompressed weights equal the
  ones jdna evaluates. Pruned positions get ``code = zero`` so they decompress to exactly 0 without a mask.
* A pruned (or sparse fine-tuned) model is written with dense weights holding its exact zeros, and no
  ``quantization_config``: compressed-tensors removed its sparse formats (``sparse-bitmask``,
  ``sparse-24-bitmask``) in 0.15.0, the first release transformers 5 accepts, and llm-compressor now saves
  pruned models dense the same way. The sparsity and its N:M pattern are recorded in ``jdna.json``.
* Low-rank factors have no compressed-tensors format: such a model is refused (export it with ``--format hf``).
"""

from __future__ import annotations

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


def write_compressed_tensors(ref: ModelRef, model: nn.Module, work: Path, reporter: Reporter) -> dict[str, Any]:
    version = require_compressed_tensors()
    top = _compressing_top(ref)
    if top is not None and top.kind == "lowrank":
        raise JdnaError(
            "compressed-tensors has no low-rank format, so the factors cannot be exported as such: use "
            "--format hf (dense left @ right, ranks recorded in jdna.json)"
        )
    if top is not None and top.kind == "quantized":
        reporter.log("packing quantized codes (compressed-tensors pack-quantized)")
        details = _pack_quantized(top, model, work)
    else:
        model.save_pretrained(work, safe_serialization=True)
        details = {
            "weights": "dense",
            "notes": [
                "compressed-tensors >= 0.15 has no sparse storage format (sparse-bitmask and sparse-24-bitmask were "
                "removed), so pruned weights are stored dense with their exact zeros, as llm-compressor saves them"
            ],
        }
    details["compressed_tensors"] = version
    return details
