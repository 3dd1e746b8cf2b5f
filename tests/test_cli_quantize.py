"""The quantize and lowrank commands as a user runs them: artifacts, loading, accounting, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from jdna.artifact import read_artifact, unpack_mask
from jdna.models import canonical_parameters, load_model, resolve
from jdna.quantization import unpack_codes
from tests.cli import run

# tiny_llama (conftest): hidden 32, intermediate 64, 4 heads of 8, 2 KV heads, 2 layers.
# (rows, cols) of the 7 matrices of one block, in model order.
BLOCK_SHAPES = [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]
SHAPES = BLOCK_SHAPES * 2
NUMEL = sum(r * c for r, c in SHAPES)  # 18432


def _decode(artifact_path: str, name: str) -> torch.Tensor:
    """Dequantize one stored matrix by hand from the artifact's tensors (independent of the applier)."""
    artifact = read_artifact(Path(artifact_path))
    entry = artifact.header["quant"][name]
    rows, cols = entry["shape"]
    bits = entry["bits"]
    codes = unpack_codes(artifact.tensor(f"codes.{name}"), bits, rows * cols).reshape(rows, cols).float()
    scales = artifact.tensor(f"scales.{name}")
    assert scales.dtype == torch.float16
    scales = scales.float()
    if entry["symmetric"]:
        assert f"zeros.{name}" not in artifact.tensor_names
        zeros = torch.full_like(scales, 2.0 ** (bits - 1))
    else:
        zeros = unpack_codes(artifact.tensor(f"zeros.{name}"), bits, scales.numel()).reshape(scales.shape).float()
    if entry["granularity"] == "group":
        scales = scales.repeat_interleave(entry["group_size"], dim=1)
        zeros = zeros.repeat_interleave(entry["group_size"], dim=1)
    value = scales * (codes - zeros)
    if f"mask.{name}" in artifact.tensor_names:
        keep = unpack_mask(artifact.tensor(f"mask.{name}"), artifact.header["masks"][name])
        value = torch.where(keep, value, torch.zeros(()))
    return value


def _assert_loads_dequantized(record: dict, base_dir: Path) -> dict[str, torch.Tensor]:
    """Every quantized matrix loads as its decoded codes exactly; every other parameter is untouched."""
    quant = read_artifact(Path(record["path"])).header["quant"]
    loaded = canonical_parameters(load_model(resolve(record["path"]))[0])
    base = canonical_parameters(load_model(resolve(str(base_dir)))[0])
    assert len(quant) == len(SHAPES)
    for name, param in loaded.items():
        if name in quant:
            assert torch.equal(param.detach(), _decode(record["path"], name).to(param.dtype)), name
        else:
            assert torch.equal(param.detach(), base[name].detach()), name
    return {name: p.detach() for name, p in loaded.items()}


def test_rtn_quantize_pipes_into_info_and_loads_codes(tiny_llama: Path) -> None:
    result = run("quantize", str(tiny_llama), "--bits", "4")
    assert result.code == 0, result.stderr
    record = result.record
    assert record["kind"] == "quantized" and record["method"] == "rtn" and record["cached"] is False
    assert record["bits"] == 4 and record["granularity"] == "channel" and record["sparsity"] == 0.0
    # 4-bit codes for every weight + one fp16 scale per output row (symmetric: no zero-point).
    rows = sum(r for r, _ in SHAPES)
    assert record["bits_per_weight"] == pytest.approx((4 * NUMEL + 16 * rows) / NUMEL)  # 4.444…
    assert record["compression_ratio"] == pytest.approx(16 / record["bits_per_weight"])
    _assert_loads_dequantized(record, tiny_llama)
    info = run("info", stdin=result.stdout)
    assert info.code == 0, info.stderr
    assert info.record["bits_per_weight"] == record["bits_per_weight"]
    assert [step["kind"] for step in info.record["lineage"]] == ["base", "quantized"]
    again = run("quantize", str(tiny_llama), "--bits", "4").record
    assert again["cached"] is True and again["path"] == record["path"]


def test_gptq_quantize_loads_codes_and_beats_rtn_on_calibration_loss(tiny_llama: Path, calib_file: Path) -> None:
    common = ["--bits", "3", "--granularity", "group", "--group-size", "16", "--asym"]
    gptq = run(
        "quantize", str(tiny_llama), "--method", "gptq", *common,
        "--calib", str(calib_file), "--calib-samples", "4", "--calib-seqlen", "32",
    )  # fmt: skip
    assert gptq.code == 0, gptq.stderr
    record = gptq.record
    assert record["method"] == "gptq" and record["group_size"] == 16 and record["symmetric"] is False
    # Per group of 16: 3-bit codes, a 16-bit scale and a 3-bit zero-point.
    assert record["bits_per_weight"] == pytest.approx(3 + (16 + 3) / 16)
    header = read_artifact(Path(record["path"])).header
    assert header["stats"]["calibration"]["samples"] == 4
    assert all(0 < m["error"] < 1 for m in header["stats"]["matrices"])
    _assert_loads_dequantized(record, tiny_llama)
    rtn = run("quantize", str(tiny_llama), "--method", "rtn", *common).record
    assert rtn["path"] != record["path"] and rtn["bits_per_weight"] == record["bits_per_weight"]


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantizing_a_pruned_artifact_keeps_exact_zeros(tiny_llama: Path, calib_file: Path, method: str) -> None:
    pruned = run("prune", str(tiny_llama), "-s", "0.5")
    extra = ["--calib", str(calib_file), "--calib-samples", "2", "--calib-seqlen", "16"] if method == "gptq" else []
    result = run("quantize", "--bits", "4", "--asym", "--method", method, *extra, stdin=pruned.stdout)
    assert result.code == 0, result.stderr
    record = result.record
    assert record["sparsity"] == pytest.approx(0.5)
    artifact = read_artifact(Path(record["path"]))
    parent_masks = read_artifact(Path(pruned.record["path"])).header["masks"]
    assert set(artifact.header["masks"]) == set(parent_masks)
    # Asymmetric 4-bit channel: codes + (16-bit scale + 4-bit zero) per row + the 1-bit mask.
    rows = sum(r for r, _ in SHAPES)
    assert record["bits_per_weight"] == pytest.approx((4 * NUMEL + 20 * rows + NUMEL) / NUMEL)
    loaded = _assert_loads_dequantized(record, tiny_llama)
    pruned_model = canonical_parameters(load_model(resolve(pruned.record["path"]))[0])
    for name in parent_masks:
        was_zero = pruned_model[name].detach() == 0
        assert bool((loaded[name][was_zero] == 0).all()), name
    lineage = run("info", record["path"]).record["lineage"]
    assert [step["kind"] for step in lineage] == ["base", "pruned", "quantized"]


def test_artifact_stores_packed_codes_sized_by_bits(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.safetensors"
    record = run("quantize", str(tiny_llama), "--bits", "3", "-o", str(out)).record
    artifact = read_artifact(out)
    names = artifact.tensor_names
    assert names and all(n.startswith(("codes.", "scales.")) for n in names)
    stored = sum(t.numel() * t.element_size() for t in artifact.tensors().values())
    # What is stored is what the accounting counts (up to one partial byte per packed stream).
    assert abs(stored - record["bits_per_weight"] * NUMEL / 8) <= len(SHAPES)
    fp32_bytes = NUMEL * 4
    assert stored < fp32_bytes * (3 / 32) * 1.25
    # The file is the tensors plus a JSON header of a few kilobytes.
    assert out.stat().st_size < stored + 32_000


def test_lowrank_full_rank_reproduces_weights_within_fp16(tiny_llama: Path) -> None:
    result = run("lowrank", str(tiny_llama), "--rank-ratio", "1")
    assert result.code == 0, result.stderr
    record = result.record
    assert record["kind"] == "lowrank" and record["rank_ratio"] == 1.0
    # Full rank r = min(rows, cols): r·(rows + cols) fp16 values per matrix.
    stored_bits = sum(16 * min(r, c) * (r + c) for r, c in SHAPES)
    assert record["bits_per_weight"] == pytest.approx(stored_bits / NUMEL)  # 25.78, above dense 16
    artifact = read_artifact(Path(record["path"]))
    assert all(artifact.tensor(n).dtype == torch.float16 for n in artifact.tensor_names)
    assert artifact.header["stats"]["ranks"]["layers.0.mlp.down_proj.weight"] == 32
    loaded = canonical_parameters(load_model(resolve(record["path"]))[0])
    base = canonical_parameters(load_model(resolve(str(tiny_llama)))[0])
    for name, entry in artifact.header["lowrank"].items():
        weight = base[name].detach()
        approx = loaded[name].detach()
        assert list(weight.shape) == entry["shape"]
        # fp16 factors: relative rounding 2^-11 per factor entry, accumulated over the rank.
        assert float((approx - weight).norm() / weight.norm()) < 2e-3, name
        left = artifact.tensor(f"left.{name}").float()
        right = artifact.tensor(f"right.{name}").float()
        assert torch.equal(approx, (left @ right).to(approx.dtype))
    info = run("info", stdin=result.stdout)
    assert info.code == 0 and info.record["bits_per_weight"] == record["bits_per_weight"]


def test_lowrank_energy_and_half_rank_on_bert(tiny_bert: Path) -> None:
    half = run("lowrank", str(tiny_bert), "-r", "0.5").record
    # BERT blocks: 4 attention 32×32, intermediate 64×32, output 32×64; rank 16 each.
    shapes = [(32, 32)] * 4 + [(64, 32), (32, 64)]
    numel = sum(r * c for r, c in shapes)
    assert half["bits_per_weight"] == pytest.approx(sum(16 * 16 * (r + c) for r, c in shapes) / numel)
    energy = run("lowrank", str(tiny_bert), "--energy", "0.9").record
    stats = read_artifact(Path(energy["path"])).header["stats"]
    assert all(m["energy"] >= 0.9 - 1e-9 for m in stats["matrices"])
    assert 0 < energy["relative_error"] <= math.sqrt(0.1) + 1e-3


def test_lowrank_at_bits_per_weight_chooses_each_rank_from_its_shape(tiny_bert: Path) -> None:
    result = run("lowrank", str(tiny_bert), "--bits-per-weight", "4")
    assert result.code == 0, result.stderr
    record = result.record
    # 32×32: r = 4·1024/(16·64) = 4 (exactly 4 bits); 64×32 and 32×64: r = round(4·2048/(16·96)) = round(5.33) = 5,
    # 16·5·96/2048 = 3.75 bits; numel-weighted: (4·4096 + 3.75·4096)/8192 = 3.875.
    stats = read_artifact(Path(record["path"])).header["stats"]
    assert sorted(set(stats["ranks"].values())) == [4, 5]
    assert record["bits_per_weight"] == pytest.approx(3.875, abs=1e-12)
    assert record["target_bits_per_weight"] == 4 and "float16 factors" in record["bits_accounting"]
    assert record["compression_ratio"] == pytest.approx(16 / 3.875)
    info = run("info", stdin=result.stdout)
    assert info.code == 0 and info.record["bits_per_weight"] == pytest.approx(3.875)


def test_prune_at_bits_per_weight_is_the_sparsity_with_that_storage(tiny_bert: Path) -> None:
    result = run("prune", str(tiny_bert), "--bits-per-weight", "8")
    assert result.code == 0, result.stderr
    record = result.record
    # 16·(1 − s) + 1 = 8  →  s = 7/16 kept away from 1: 0.5625; 16,384 prunable weights, so exactly 8 bits.
    assert record["target_sparsity"] == 0.5625 and record["sparsity"] == 0.5625
    assert record["bits_per_weight"] == 8.0 and record["compression_ratio"] == 2.0
    assert record["bits_accounting"] == "16-bit kept values + 1-bit bitmap mask per weight"
    same = run("prune", str(tiny_bert), "-s", "0.5625")
    assert same.record["id"] == record["id"] and same.record["cached"]
    for args, fragment in (
        (["--bits-per-weight", "1"], "(1, 17]"),
        (["--bits-per-weight", "8", "-s", "0.5"], "not both"),
        (["--bits-per-weight", "8", "--pattern", "2:4"], "N:M"),
    ):
        bad = run("prune", str(tiny_bert), *args)
        assert bad.code == 2 and fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_quantize_after_lowrank_of_pruned_carries_no_mask(tiny_llama: Path) -> None:
    pruned = run("prune", str(tiny_llama), "-s", "0.5")
    factored = run("lowrank", "-r", "0.5", stdin=pruned.stdout)
    quantized = run("quantize", "--bits", "8", stdin=factored.stdout)
    assert quantized.code == 0, quantized.stderr
    assert quantized.record["sparsity"] == 0.0
    assert read_artifact(Path(quantized.record["path"])).header["masks"] == {}


def _assert_clean_failure(result, fragment: str, tmp_path: Path) -> None:
    assert result.code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    # transformers' own "Loading weights" bar shows only in-process: the CLI disables hub progress bars
    # through an environment variable that an already-imported transformers has read before main() sets it.
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Loading weights")
    ]
    assert len(lines) == 1, result.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert not list(tmp_path.rglob("runs/**/*.safetensors")), "a failed command left a file behind"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--bits", "1"], "from 2 to 8"),
        (["--bits", "9"], "from 2 to 8"),
        ([], "--bits is required"),
        (["--bits", "4", "--method", "gtpq"], "did you mean 'gptq'"),
        (["--bits", "4", "--granularity", "chanel"], "did you mean 'channel'"),
        (["--bits", "4", "--granularity", "group", "--group-size", "24"], "does not divide"),
        (["--bits", "4", "--granularity", "group", "--group-size", "0"], "positive"),
        (["--bits", "4", "--method", "gptq", "--calib", "/nonexistent.txt"], "does not exist"),
        (["--bits", "4", "--exclude", "nothing.*"], "matches no parameter"),
    ],
)
def test_bad_quantize_flags(tiny_llama: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    _assert_clean_failure(run("quantize", str(tiny_llama), *args), fragment, tmp_path)


def test_bad_flags_fail_before_loading_the_model(tmp_path: Path) -> None:
    # The model does not exist: a flag error must be reported first, so no model was looked at.
    _assert_clean_failure(run("quantize", "./missing", "--bits", "9"), "from 2 to 8", tmp_path)
    _assert_clean_failure(run("lowrank", "./missing", "-r", "0"), "(0, 1]", tmp_path)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--rank-ratio", "0"], "(0, 1]"),
        (["--rank-ratio", "1.5"], "(0, 1]"),
        (["--energy", "0"], "(0, 1]"),
        (["--rank-ratio", "0.5", "--energy", "0.9"], "not both"),
        (["--rank-ratio", "0.5", "--bits-per-weight", "4"], "not both"),
        (["--bits-per-weight", "0"], "positive number of bits"),
        ([], "--rank-ratio"),
    ],
)
def test_bad_lowrank_flags(tiny_llama: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    _assert_clean_failure(run("lowrank", str(tiny_llama), *args), fragment, tmp_path)
