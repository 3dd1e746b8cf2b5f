"""The prune/info/export commands as a user runs them: pipes, caching, artifacts, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jdna.artifact import read_artifact
from jdna.models import canonical_parameters, load_model, resolve
from tests.cli import run


def test_prune_pipes_into_info(tiny_llama: Path) -> None:
    pruned = run("prune", str(tiny_llama), "--sparsity", "0.5")
    assert pruned.code == 0, pruned.stderr
    record = pruned.record
    assert record["kind"] == "pruned" and record["sparsity"] == 0.5 and record["cached"] is False
    assert Path(record["path"]).is_file() and "runs" in record["path"]
    info = run("info", stdin=pruned.stdout)
    assert info.code == 0, info.stderr
    described = info.record
    assert described["sparsity"] == 0.5
    assert described["lineage"][0]["kind"] == "base"
    assert set(described["per_matrix_sparsity"]) and "TOTAL" in info.stderr


def test_rerun_is_a_cache_hit_with_identical_bytes(tiny_llama: Path) -> None:
    first = run("prune", str(tiny_llama), "-s", "0.3", "--method", "random", "--seed", "3").record
    before = Path(first["path"]).read_bytes()
    second = run("prune", str(tiny_llama), "-s", "0.3", "--method", "random", "--seed", "3").record
    assert second["cached"] is True and second["path"] == first["path"]
    assert Path(second["path"]).read_bytes() == before
    other = run("prune", str(tiny_llama), "-s", "0.3", "--method", "random", "--seed", "4").record
    assert other["path"] != first["path"]


def test_artifact_stores_packed_masks_not_weights(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.safetensors"
    record = run("prune", str(tiny_llama), "-s", "0.5", "-o", str(out)).record
    assert record["path"] == str(out)
    with safe_open(str(out), framework="pt") as handle:
        names = list(handle.keys())
        header = json.loads(handle.metadata()["jdna"])
    assert names and all(name.startswith("mask.") for name in names)
    assert header["base"]["sha256"] and header["operation"]["params"]["sparsity"] == 0.5
    assert set(header["versions"]) >= {"jdna", "torch", "transformers"}
    assert out.stat().st_size < sum(p.stat().st_size for p in tiny_llama.glob("*.safetensors")) / 8


def test_loading_pruned_artifact_reproduces_pruned_weights(tiny_bert: Path) -> None:
    record = run("prune", str(tiny_bert), "-s", "0.7", "--scope", "row").record
    loaded, _ = load_model(resolve(record["path"]))
    base, _ = load_model(resolve(str(tiny_bert)))
    artifact = read_artifact(Path(record["path"]))
    masks = artifact.header["masks"]
    loaded_params = canonical_parameters(loaded)
    for name, param in canonical_parameters(base).items():
        if name in masks:
            weight = param.detach()
            keep = loaded_params[name].detach() != 0
            assert torch.equal(loaded_params[name].detach(), weight * keep)
            assert float((~keep).float().mean()) == pytest.approx(0.7, abs=1 / weight.shape[1])
        else:
            assert torch.equal(loaded_params[name].detach(), param.detach())


def test_chained_prune_resolves_parents(tiny_llama: Path) -> None:
    first = run("prune", str(tiny_llama), "-s", "0.3")
    second = run("prune", "--sparsity", "0.6", stdin=first.stdout)
    assert second.code == 0, second.stderr
    lineage = run("info", second.record["path"]).record["lineage"]
    assert [step["kind"] for step in lineage] == ["base", "pruned", "pruned"]
    loaded, _ = load_model(resolve(second.record["path"]))
    matrices = [p for n, p in canonical_parameters(loaded).items() if "layers." in n and "proj" in n]
    zeros = sum(int((p == 0).sum()) for p in matrices)
    assert zeros / sum(p.numel() for p in matrices) == pytest.approx(0.6, abs=1e-3)


def test_export_writes_plain_hf_dir(tiny_llama: Path, tmp_path: Path) -> None:
    pruned = run("prune", str(tiny_llama), "-s", "0.5")
    exported = run("export", "-o", str(tmp_path / "hf"), stdin=pruned.stdout)
    assert exported.code == 0, exported.stderr
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    via_jdna, _ = load_model(resolve(pruned.record["path"]))
    for (name, a), (_, b) in zip(plain.named_parameters(), via_jdna.named_parameters()):
        assert torch.equal(a, b), name


def _assert_clean_failure(result, fragment: str, tmp_path: Path, check_nothing_written: bool = True) -> None:
    assert result.code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    if check_nothing_written:
        assert not list(tmp_path.rglob("runs/**/*.safetensors")), "a failed command left a file behind"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sparsity", "1.5"], "must be in [0, 1)"),
        (["--sparsity", "abc"], "valid number"),
        (["--sparsity", "0.5", "--method", "wandaa"], "did you mean 'wanda'"),
        (["--sparsity", "0.5", "--scope", "rows"], "did you mean 'row'"),
        (["--pattern", "4:4"], "0 < N < M"),
        (["--pattern", "two:four"], "N:M"),
        (["--sparsity", "0.5", "-o", "/nonexistent-dir/x.safetensors"], "does not exist"),
    ],
)
def test_bad_prune_flags(tiny_llama: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    _assert_clean_failure(run("prune", str(tiny_llama), *args), fragment, tmp_path)


def test_bad_models_and_stdin(tmp_path: Path) -> None:
    _assert_clean_failure(run("prune", "./missing-model", "-s", "0.5"), "not found", tmp_path)
    _assert_clean_failure(run("prune", "-s", "0.5", stdin=""), "stdin is empty", tmp_path)
    _assert_clean_failure(run("prune", "-s", "0.5", stdin="hello world\n"), "neither a jdna record", tmp_path)
    _assert_clean_failure(
        run("info", stdin='{"kind": "eval", "path": "x.json"}\n'), "not a model artifact", tmp_path
    )
    hub = run("prune", "some-org/not-cached-model", "-s", "0.5")
    _assert_clean_failure(hub, "HF_HUB_OFFLINE", tmp_path)


def test_corrupt_and_foreign_safetensors(tiny_llama: Path, tmp_path: Path) -> None:
    record = run("prune", str(tiny_llama), "-s", "0.5", "-o", str(tmp_path / "good.safetensors")).record
    data = Path(record["path"]).read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    _assert_clean_failure(run("info", str(truncated)), "truncated or corrupt", tmp_path, False)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not safetensors at all")
    _assert_clean_failure(run("info", str(garbage)), "not a readable safetensors", tmp_path, False)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    _assert_clean_failure(run("info", str(foreign)), "not a jdna artifact", tmp_path, False)
    flipped = tmp_path / "flipped.safetensors"
    raw = bytearray(data)
    raw[-3] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    _assert_clean_failure(run("info", "--verify", str(flipped)), "corrupt", tmp_path, False)


def test_changed_base_weights_are_detected(tiny_llama: Path, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    record = run("prune", str(base), "-s", "0.5").record
    weights = next(base.glob("*.safetensors"))
    tensors = {}
    with safe_open(str(weights), framework="pt") as handle:
        for name in handle.keys():
            tensors[name] = handle.get_tensor(name)
        metadata = handle.metadata()
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(weights), metadata=metadata)
    _assert_clean_failure(run("info", record["path"]), "no longer match", tmp_path, False)


def test_pickle_weights_refused_without_flag(tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    from transformers import BertModel

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_bert, pickled)
    model = BertModel.from_pretrained(tiny_bert)
    for file in pickled.glob("*.safetensors"):
        file.unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    _assert_clean_failure(run("prune", str(pickled), "-s", "0.5"), "--allow-pickle", tmp_path)
