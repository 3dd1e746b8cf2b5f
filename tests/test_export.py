"""jdna export: plain HF and compressed-tensors directories, checked through the compressed-tensors package itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli import run
from tests.conftest import build_tiny_bert, model_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

compressed_tensors = pytest.importorskip("compressed_tensors")


def _ok(result) -> dict:
    assert result.code == 0, result.stderr
    return result.record


def _dequantized_by_compressed_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors after compressed-tensors' own dequantizer (no jdna code involved)."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    tensors = load_file(str(directory / "model.safetensors"))
    return CompressedTensorsDequantizer(str(directory), dtype=torch.float32).validate(dict(tensors))


def _loaded_by_transformers(directory: Path) -> dict[str, torch.Tensor]:
    """What transformers + compressed-tensors load (decompressed), by jdna's canonical names."""
    import warnings

    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from jdna.models import canonical_parameters

    config = json.loads((directory / "config.json").read_text())
    quantized = "quantization_config" in config
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if quantized else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    return {name: p.detach() for name, p in canonical_parameters(model).items()}


def _assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], prefix: str = "") -> None:
    for name, value in expected.items():
        other = got[prefix + name] if prefix + name in got else got[name]
        assert other.dtype == value.dtype, name
        assert torch.equal(other, value), f"{name}: max diff {(other - value).abs().max()}"


def _fp16_bytes(parameters: dict[str, torch.Tensor]) -> int:
    return sum(2 * p.numel() for p in parameters.values())


def test_gptq_4bit_exports_pack_quantized_with_the_weights_jdna_evaluates(
    tiny_llama: Path, calib_file: Path, tmp_path: Path
) -> None:
    quantized = _ok(
        run("quantize", str(tiny_llama), "--bits", "4", "--method", "gptq", "--granularity", "group",
            "--group-size", "16", "--calib", str(calib_file), "--calib-samples", "4", "--calib-seqlen", "16")
    )
    out = tmp_path / "ct"
    record = _ok(run("export", quantized["path"], "-o", str(out), "--format", "compressed-tensors"))
    assert record["format"] == "compressed-tensors" and record["kind"] == "hf-dir"
    assert record["compression"]["kind"] == "quantized" and record["bits_per_weight"] == quantized["bits_per_weight"]

    config = json.loads((out / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "pack-quantized"
    assert quant["quantization_status"] == "compressed"
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["group_size"], weights["symmetric"]) == (
        4, "group", 16, True
    )
    assert quant["ignore"] == ["lm_head"]
    # The zeros a 4-bit grid produces (weights rounding to the zero-point) do not read as pruning.
    assert not record["measured_sparsity"]["externally_pruned"]

    evaluated = model_parameters(quantized["path"])
    _assert_same_weights(evaluated, _dequantized_by_compressed_tensors(out), prefix="model.")
    _assert_same_weights(evaluated, _loaded_by_transformers(out))
    # jdna loads its own export back to the same weights (compressed-tensors decompresses on load).
    _assert_same_weights(evaluated, model_parameters(str(out)))

    stored = load_file(str(out / "model.safetensors"))
    packed = stored["model.layers.0.mlp.up_proj.weight_packed"]
    assert packed.dtype == torch.int32 and packed.numel() * 32 == 64 * 32 * 4  # 4 bits per weight, no padding
    assert "model.layers.0.mlp.up_proj.weight" not in stored
    assert (out / "model.safetensors").stat().st_size < _fp16_bytes(evaluated)
    metadata = json.loads((out / "jdna.json").read_text())
    assert metadata["dense_parent"]["id"] == quantized_base_sha(quantized["path"])
    assert config["jdna"]["lineage"][-1]["kind"] == "quantized"


def quantized_base_sha(path: str) -> str:
    from jdna.models import resolve

    return resolve(path).base.sha256


@pytest.mark.parametrize("granularity", [("--granularity", "channel", "--asym"), ("--granularity", "tensor")])
def test_rtn_asymmetric_and_tensor_grids_round_trip(tiny_llama: Path, tmp_path: Path, granularity) -> None:
    quantized = _ok(run("quantize", str(tiny_llama), "--bits", "3", *granularity))
    out = tmp_path / "ct"
    _ok(run("export", quantized["path"], "-o", str(out), "--format", "compressed-tensors"))
    _assert_same_weights(model_parameters(quantized["path"]), _dequantized_by_compressed_tensors(out), "model.")


def test_sparsegpt_2_4_model_exports_with_its_zeros_and_pattern(
    tiny_llama: Path, calib_file: Path, tmp_path: Path
) -> None:
    # The sparse layouts themselves are checked in tests/test_export_sparse.py; --format hf stays dense.
    pruned = _ok(
        run("prune", str(tiny_llama), "--pattern", "2:4", "--method", "sparsegpt", "--calib", str(calib_file),
            "--calib-samples", "4", "--calib-seqlen", "16")
    )
    out = tmp_path / "hf"
    record = _ok(run("export", pruned["path"], "-o", str(out), "--format", "hf"))
    assert record["measured_sparsity"]["pattern"] == "2:4"
    assert record["measured_sparsity"]["sparsity"] == pytest.approx(0.5)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # dense weights every transformers version loads
    evaluated = model_parameters(pruned["path"])
    _assert_same_weights(evaluated, _loaded_by_transformers(out))
    up = evaluated["layers.1.mlp.up_proj.weight"]
    assert ((up == 0).reshape(up.shape[0], -1, 4).sum(-1) >= 2).all()

    # 2:4 then 4-bit: packed codes whose pruned positions decode to exact zeros.
    quantized = _ok(run("quantize", pruned["path"], "--bits", "4", "--granularity", "group", "--group-size", "16"))
    both = tmp_path / "ct24q"
    record = _ok(run("export", quantized["path"], "-o", str(both), "--format", "compressed-tensors"))
    assert record["measured_sparsity"]["pattern"] == "2:4"
    evaluated = model_parameters(quantized["path"])
    _assert_same_weights(evaluated, _dequantized_by_compressed_tensors(both), "model.")
    assert (evaluated["layers.1.mlp.up_proj.weight"] == 0).sum() >= up.numel() // 2


def test_lowrank_is_refused_for_compressed_tensors_and_exported_dense_for_hf(
    tiny_llama: Path, tmp_path: Path
) -> None:
    lowrank = _ok(run("lowrank", str(tiny_llama), "--rank-ratio", "0.5"))
    refused = run("export", lowrank["path"], "-o", str(tmp_path / "ct"), "--format", "compressed-tensors")
    assert refused.code == 2 and "no low-rank format" in refused.stderr and "--format hf" in refused.stderr
    assert not (tmp_path / "ct").exists() and not list(tmp_path.glob(".ct.*"))
    out = tmp_path / "hf"
    _ok(run("export", lowrank["path"], "-o", str(out)))
    metadata = json.loads((out / "jdna.json").read_text())
    assert any("left @ right" in note for note in metadata["details"]["notes"])
    assert metadata["details"]["lowrank_ranks"]["layers.0.mlp.up_proj.weight"] == 16  # half of min(64, 32)


def test_hf_export_keeps_sentence_transformers_files_and_lineage(tmp_path: Path) -> None:
    model_dir = build_tiny_bert(tmp_path / "st")
    (model_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 32}')
    (model_dir / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    pruned = _ok(run("prune", str(model_dir), "--sparsity", "0.5"))
    out = tmp_path / "hf"
    record = _ok(run("export", pruned["path"], "-o", str(out), "--format", "hf"))
    assert (out / "modules.json").read_text() == (model_dir / "modules.json").read_text()
    assert (out / "1_Pooling" / "config.json").is_file() and (out / "sentence_bert_config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["jdna"]["compression"]["method"] == "magnitude"
    assert config["jdna"]["dense_parent"]["id"] == record["lineage"][0]["sha256"]
    assert record["measured_sparsity"]["sparsity"] == pytest.approx(0.5)


def test_unknown_format_and_missing_package_are_one_line_errors(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = run("export", str(tiny_llama), "-o", str(tmp_path / "x"), "--format", "compressed-tensor")
    assert wrong.code == 2 and "did you mean 'compressed-tensors'" in wrong.stderr
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    missing = run("export", str(tiny_llama), "-o", str(tmp_path / "y"), "--format", "compressed-tensors")
    assert missing.code == 2 and "pip install 'jdna[export]'" in missing.stderr
