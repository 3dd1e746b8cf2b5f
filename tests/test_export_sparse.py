"""Pruned models exported with --format compressed-tensors: compressed-tensors' sparse layouts (sparse-24-bitmask
for 2:4, sparse-bitmask otherwise), checked against the bitmask unpacking of the installed compressed-tensors,
against the decompressor of compressed-tensors 0.14.0.1 (the last release that has one) and against what jdna
evaluates, bit for bit, and smaller than the same matrices in float16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli import run

pytestmark = pytest.mark.usefixtures("one_thread")

compressed_tensors = pytest.importorskip("compressed_tensors")

LEGACY_VERSION = "0.14.0.1"
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _ok(result) -> dict:
    assert result.code == 0, result.stderr
    return result.record


def _evaluated(path: str, dtype: str = "auto") -> dict[str, torch.Tensor]:
    """The weights jdna evaluates for `path` at `dtype`, by canonical name."""
    from jdna.models import canonical_parameters, load_model, resolve

    model, _ = load_model(resolve(path), dtype=dtype)
    return {name: p.detach().clone() for name, p in canonical_parameters(model).items()}


def _reference_decode(stored: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """One sparse entry decoded row by row with the installed compressed-tensors' own ``unpack_bitmasks`` (a
    different path from jdna's flat scatter): row r's kept positions take row r's values, in column order."""
    from compressed_tensors.utils import unpack_bitmasks

    rows, cols = (int(d) for d in stored[f"{prefix}.shape"].flatten())
    keep = unpack_bitmasks(stored[f"{prefix}.bitmask"], [rows, cols])
    values = stored[f"{prefix}.compressed"]
    dense = torch.zeros((rows, cols), dtype=values.dtype)
    offsets = stored.get(f"{prefix}.row_offsets")
    start = 0
    for r in range(rows):
        count = int(keep[r].sum())
        if offsets is not None:  # sparse-bitmask: values are flat, each row starts at its recorded offset
            assert int(offsets[r]) == start
            row_values = values[start : start + count]
        else:  # sparse-24-bitmask: (rows, cols/2), each row holds its own cols/2 kept values
            assert count == cols // 2
            row_values = values[r]
        dense[r, keep[r]] = row_values
        start += count
    return dense


def _check_export(out: Path, evaluated: dict[str, torch.Tensor], sparse_format: str, dtype: torch.dtype) -> None:
    config = json.loads((out / "config.json").read_text())
    sparsity = config["quantization_config"]["sparsity_config"]
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert "config_groups" not in config["quantization_config"]
    assert sparsity["format"] == sparse_format and sparsity["targets"] == ["Linear"]
    assert sparsity["ignore"] == ["lm_head"]
    # The config is what compressed-tensors' own config class for that layout describes.
    from compressed_tensors.config import SparsityCompressionConfig

    parsed = SparsityCompressionConfig.load_from_registry(sparse_format, **sparsity)
    assert parsed.model_dump() == sparsity

    stored = load_file(str(out / "model.safetensors"))
    sparse_bytes = dense_fp16_bytes = 0
    for layer in (0, 1):
        for linear in LINEARS:
            kind = "self_attn" if linear in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"model.layers.{layer}.{kind}.{linear}"
            name = f"layers.{layer}.{kind}.{linear}.weight"
            assert f"{prefix}.weight" not in stored
            values = stored[f"{prefix}.compressed"]
            rows, cols = evaluated[name].shape
            assert values.dtype == dtype and stored[f"{prefix}.bitmask"].dtype == torch.uint8
            assert stored[f"{prefix}.bitmask"].shape == (rows, (cols + 7) // 8)
            if sparse_format == "sparse-24-bitmask":
                assert values.shape == (rows, cols // 2) and stored[f"{prefix}.shape"].shape == (2, 1)
            else:
                assert values.shape == (int((evaluated[name] != 0).sum()),)
            decoded = _reference_decode(stored, prefix)
            assert torch.equal(decoded, evaluated[name]), name
            entry = [k for k in stored if k.startswith(prefix + ".")]
            sparse_bytes += sum(stored[k].numel() * stored[k].element_size() for k in entry)
            dense_fp16_bytes += 2 * rows * cols
    # Smaller than the same matrices in float16, and the whole file smaller than the model in float16.
    assert sparse_bytes < dense_fp16_bytes
    assert (out / "model.safetensors").stat().st_size < sum(2 * p.numel() for p in evaluated.values())
    # jdna reads its export back (its own decompressor) to the weights it evaluated.
    assert_same(_evaluated(str(out), dtype="auto"), evaluated)


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), name


@pytest.fixture(scope="module")
def sparse_exports(tiny_llama: Path, calib_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2:4 SparseGPT model and a 60% unstructured magnitude model, each exported in float16."""
    root = tmp_path_factory.mktemp("sparse-exports")
    exports = {}
    # A module fixture runs before the per-test run store exists: give it its own.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JDNA_HOME", str(root / "home"))
        patch.setenv("JDNA_RUNS", str(root / "runs"))
        two_four = _ok(
            run("prune", str(tiny_llama), "--pattern", "2:4", "--method", "sparsegpt", "--calib", str(calib_file),
                "--calib-samples", "4", "--calib-seqlen", "16")
        )
        unstructured = _ok(run("prune", str(tiny_llama), "--sparsity", "0.6"))
        cases = (("2:4", two_four, "sparse-24-bitmask"), ("unstructured", unstructured, "sparse-bitmask"))
        for key, record, fmt in cases:
            out = root / key.replace(":", "-")
            exported = _ok(
                run("export", record["path"], "-o", str(out), "--format", "compressed-tensors-sparse", "--dtype",
                    "float16")
            )
            exports[key] = {"out": out, "record": exported, "format": fmt,
                            "evaluated": _evaluated(record["path"], dtype="float16")}
    return exports


@pytest.mark.parametrize("key", ["2:4", "unstructured"])
def test_pruned_exports_are_sparse_and_decode_to_the_weights_jdna_evaluates(sparse_exports, key) -> None:
    export = sparse_exports[key]
    _check_export(export["out"], export["evaluated"], export["format"], torch.float16)
    record = export["record"]
    assert record["measured_sparsity"]["pattern"] == ("2:4" if key == "2:4" else "unstructured")
    metadata = json.loads((export["out"] / "jdna.json").read_text())
    assert metadata["details"]["weights"] == export["format"] and metadata["details"]["sparse_modules"] == 14
    assert metadata["details"]["sparse_bytes"] < metadata["details"]["dense_bytes_of_those_matrices"]


def test_float32_export_keeps_float32_values(tiny_llama: Path, tmp_path: Path) -> None:
    pruned = _ok(run("prune", str(tiny_llama), "--pattern", "2:4"))
    out = tmp_path / "ct"
    _ok(run("export", pruned["path"], "-o", str(out), "--format", "compressed-tensors-sparse"))
    stored = load_file(str(out / "model.safetensors"))
    assert stored["model.layers.0.mlp.up_proj.compressed"].dtype == torch.float32
    assert_same(_evaluated(str(out)), _evaluated(pruned["path"]))


def test_pruned_compressed_tensors_export_is_dense_unless_the_sparse_layout_is_asked_for(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """The legacy sparse layouts load with random weights in transformers 5, so they are opt-in: the plain
    compressed-tensors export of a pruned model holds dense weights (with their zeros) that any loader reads."""
    pruned = _ok(run("prune", str(tiny_llama), "--pattern", "2:4"))
    out = tmp_path / "ct"
    _ok(run("export", pruned["path"], "-o", str(out), "--format", "compressed-tensors"))
    stored = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.mlp.up_proj.weight" in stored
    assert not any(key.endswith((".bitmask", ".compressed")) for key in stored)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "jdna.json").read_text())["details"]["weights"] == "dense"
    evaluated = _evaluated(pruned["path"])
    for name, value in _evaluated(str(out)).items():
        assert torch.equal(value, evaluated[name]), name
    assert (stored["model.layers.0.mlp.up_proj.weight"] == 0).float().mean() == 0.5


def test_dense_model_is_not_written_in_a_sparse_layout(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "ct"
    record = _ok(run("export", str(tiny_llama), "-o", str(out), "--format", "compressed-tensors-sparse"))
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert record["measured_sparsity"]["sparsity"] < 0.01


def _legacy_compressed_tensors(scratch: Path) -> Path | None:
    """compressed-tensors 0.14.0.1 unpacked (it cannot be installed beside transformers 5) from the wheel named by
    $JDNA_LEGACY_CT_WHEEL; tests never touch the network, so `make test` downloads it while installing
    (Makefile, LEGACY_CT) and names it here. None without it."""
    wheel = os.environ.get("JDNA_LEGACY_CT_WHEEL")
    if not wheel or not Path(wheel).is_file():
        return None
    target = scratch / f"compressed-tensors-{LEGACY_VERSION}"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


LEGACY_SCRIPT = """
import json, sys, torch
import compressed_tensors
from compressed_tensors.compressors import ModelCompressor
assert compressed_tensors.__version__ == sys.argv[3], compressed_tensors.__version__
config = json.load(open(sys.argv[1] + "/config.json"))["quantization_config"]
compressor = ModelCompressor.from_compression_config(config)  # what transformers 4.x does on load
print(type(compressor.sparsity_compressor).__name__)
torch.save(dict(compressor.sparsity_compressor.decompress(sys.argv[1])), sys.argv[2])
"""


def test_compressed_tensors_0_14_decompresses_the_exports(sparse_exports, tmp_path: Path) -> None:
    legacy = _legacy_compressed_tensors(tmp_path)
    if legacy is None:
        pytest.skip(f"no compressed-tensors {LEGACY_VERSION} wheel: `make test` names it in $JDNA_LEGACY_CT_WHEEL")
    env = {**os.environ, "PYTHONPATH": str(legacy), "OMP_NUM_THREADS": "1"}
    for key, compressor in (("2:4", "Sparse24BitMaskCompressor"), ("unstructured", "BitmaskCompressor")):
        export = sparse_exports[key]
        dump = tmp_path / f"{compressor}.pt"
        done = subprocess.run(
            [sys.executable, "-c", LEGACY_SCRIPT, str(export["out"]), str(dump), LEGACY_VERSION],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == [compressor]
        decompressed = torch.load(dump)
        got = {name.removeprefix("model."): value for name, value in decompressed.items()}
        assert_same(got, export["evaluated"])
