"""Content ids are a compatibility promise: pinned here, they must not change when the code is reorganised.

Every step's output path and cache entry is addressed by `artifact_id(parent identity, operation, params)`, and
a long experiment's cache is keyed by these ids: a refactor that changes what enters an id (a renamed or added
parameter, a different default, another serialisation) silently recomputes every step. This test runs each
id-producing command once on a base model whose weight file is written byte for byte here (so its sha256, the
root of every id, depends on neither torch's random generator nor the safetensors/transformers version) and
compares each id with the string the code produced when the ids were pinned. Versions of torch/transformers
are recorded but do not enter ids (asserted below), so a patch-version bump leaves this test green.

If this test fails, the change alters the content address of existing runs: revert it, or (deliberately, with
the lead) bump the pinned ids and say so in the changelog.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch

from jdna.artifact import artifact_id, read_artifact
from tests.cli import run
from tests.conftest import TEXT, WORDS, make_tokenizer, tiny_llama_config

pytestmark = pytest.mark.usefixtures("one_thread")

# The sha256 of the base model's weight file, and each step's id, as computed on the code of ebb7ed6.
PINNED = {
    "base": "ca407d0d6d44dd93810d65a9e1d2f2bf4d69def01f092b8e1b4f075747b45352",
    "prune-magnitude": "70c160ae6c5a2bf890ec0392eff9f3193344b5040049dcb22b3430c83ecd5326",
    "prune-wanda": "6b61a7827bb26ea3858e533b59bbc6b9c2ef7858597ceaa27960c228caa43743",
    "quantize-rtn": "76b7344dd2fdb68eaa0ffc6bdc0ac0c03d6fbd87e85e6c4d29b93cb562c91ad9",
    "quantize-gptq": "1d7c950282e4b191eb4997851866b16c903ddca17a220990366c9692a1b7219b",
    "lowrank": "f0d13fd6178ad18179a806e6d9b09596c90f35ec2cf95596475afef307bc5844",
    "finetune-sparse": "c891eaa6fce2080affe2cf38b8a21fcef8c8e9d72719076050836b9ec882861d",
    # Changed on purpose (h/evalside): fine-tuning's validation record now has `jdna eval`'s id recipe, which
    # includes the protocol version (was 0b7c8be3...). A cached finetuned artifact still names its old record.
    "finetune-validation": "c85d65b00f29a46f3a75e23b12e5c93587375b3b99a4bd62f57dc165dc867b1e",
    "eval": "5b416d91cfc4856995413be3adbdcfd4fd57c6512fa365dc889f3c66142400b6",
}
# On a GPU machine `auto` would compute on CUDA (in bf16), which enters the ids of calibrated and trained steps
# and of evals: the pinned ids are those of a float32 run on the CPU, asked for explicitly.
CPU = ("--device", "cpu", "--dtype", "float32")
# artifact_id on fixed input: guards the recipe itself (format version, canonical JSON, hash).
PINNED_RECIPE = "9dc3eb1f63a85632e1f220a164883a7f6b270f4a70285103425326bff9b17e0c"


def _deterministic_tensor(shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """Values from integer arithmetic only (exactly representable in float32): no generator, no platform libm."""
    n = 1
    for size in shape:
        n *= size
    index = torch.arange(n, dtype=torch.int64)
    codes = (index * 2654435761 + salt * 40503) % 2039 - 1019  # a scrambled, roughly uniform integer per entry
    return (codes.to(torch.float32) / 8192.0).reshape(shape)


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors format written by hand (8-byte header length, JSON header, raw little-endian data), so the
    file's bytes do not depend on the installed safetensors' header layout."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].contiguous().numpy().astype("<f4").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def _base(directory: Path) -> Path:
    from transformers import LlamaForCausalLM

    directory.mkdir()
    tokenizer, vocab_size = make_tokenizer(directory)
    config = tiny_llama_config(tokenizer, vocab_size)
    config.save_pretrained(directory)
    names = {name: tuple(p.shape) for name, p in LlamaForCausalLM(config).state_dict().items()}
    tensors = {}
    for salt, name in enumerate(sorted(names)):
        tensors[name] = _deterministic_tensor(names[name], salt)
        if name.endswith("norm.weight"):  # RMSNorm weights near 1, as a trained model has
            tensors[name] = 1.0 + tensors[name]
    _write_safetensors(directory / "model.safetensors", tensors)
    return directory


def _inputs(directory: Path) -> dict[str, Path]:
    (directory / "calib.txt").write_text(TEXT)
    rng = random.Random(7)
    labels = ["cold", "warm"]
    rows = [{"jdna_task": {"name": "toy", "labels": labels}}]
    for i in range(24):
        words = [rng.choice(WORDS) for _ in range(4)] + ["red" if i % 2 else "blue"]
        rows.append({"text": " ".join(words), "label": labels[i % 2], "split": "train" if i < 16 else "test"})
    (directory / "cls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    mc = [
        {"question": " ".join(rng.choice(WORDS) for _ in range(5)), "choices": [rng.choice(WORDS) for _ in range(3)],
         "gold": i % 3}
        for i in range(12)
    ]  # fmt: skip
    (directory / "mc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in mc))
    return {"calib": directory / "calib.txt", "cls": directory / "cls.jsonl", "mc": directory / "mc.jsonl"}


def _record(*args: str) -> dict:
    result = run(*args)
    assert result.code == 0, result.stderr
    return result.record


def _check(name: str, identity: str, header_params: object = None) -> None:
    assert identity == PINNED[name], (
        f"the content id of '{name}' changed ({PINNED[name]} -> {identity}): every cached run of this step would "
        f"be recomputed. What now enters the id: {json.dumps(header_params, sort_keys=True)}"
    )


def test_artifact_id_recipe_is_pinned() -> None:
    assert artifact_id("parent", "prune", {"sparsity": 0.5, "method": "magnitude", "nested": [1, "a"]}) == (
        PINNED_RECIPE
    )


def test_content_ids_do_not_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # Relative paths in the scratch working directory (conftest's isolated_home): the calibration file's and a
    # file: task's path as given enter ids, so absolute temporary paths would change them on every run.
    base, inputs = _base(Path("base")), _inputs(Path("."))
    from jdna import artifact

    # Versions are recorded, never addressed: with them changed, every id below must still be the pinned one.
    monkeypatch.setattr(artifact, "versions", lambda: {"jdna": "x", "torch": "x", "transformers": "x", "python": "x"})
    from jdna.models import resolve

    changed = "the pinned base model changed (its configuration, tokenizer or weight recipe): no id below can match"
    assert resolve(str(base)).identity == PINNED["base"], changed
    calib = ["--calib", str(inputs["calib"]), "--calib-samples", "2", "--calib-seqlen", "16"]

    def artifact_step(name: str, *args: str) -> dict:
        record = _record(*args, *CPU)
        header = read_artifact(Path(record["path"])).header
        assert header["id"] == record["id"]
        _check(name, record["id"], header["operation"])
        return record

    magnitude = artifact_step("prune-magnitude", "prune", str(base), "--sparsity", "0.5")
    artifact_step("prune-wanda", "prune", str(base), "--sparsity", "0.5", "--method", "wanda", *calib)
    artifact_step("quantize-rtn", "quantize", str(base), "--bits", "4")
    artifact_step("quantize-gptq", "quantize", str(base), "--bits", "4", "--method", "gptq", *calib)
    artifact_step("lowrank", "lowrank", str(base), "--rank-ratio", "0.5")
    tuned = artifact_step(
        "finetune-sparse", "finetune", magnitude["path"], "--task", f"file:{inputs['cls']}", "--mode", "sparse",
        "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--eval-limit", "8",
    )  # fmt: skip
    validation = json.loads(Path(tuned["eval_record"]).read_text())
    _check("finetune-validation", validation["id"], validation.get("knobs"))
    record = _record("eval", str(base), "--task", f"file:{inputs['mc']}", "--limit", "6", *CPU)
    _check("eval", record["id"], {"task": record["task"], "knobs": record["knobs"]})
