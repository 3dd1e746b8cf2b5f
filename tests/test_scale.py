"""Device, dtype and distribution: placement flags, block-at-a-time calibration, data-parallel eval."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jdna.artifact import read_artifact
from jdna.calibration import (
    HessianAccumulator,
    InputNormAccumulator,
    LayerwiseRunner,
    calibration_samples,
    collect_inputs,
)
from jdna.errors import JdnaError
from jdna.evaluation import auto_dtype
from jdna.evaluation.parallel import shard_bounds, shard_map
from jdna.models import load_model, resolve
from jdna.placement import Placement, checkpoint_dtype, parse_device, parse_dtype, resolve_placement
from jdna.pruning import PruneConfig, plan_prune, prune_model, run_prune
from tests.cli import run
from tests.conftest import TEXT, WORDS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# --- flags -------------------------------------------------------------------------------------------


def test_device_and_dtype_parsing() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert parse_device("auto") == torch.device("cpu")  # auto never leaves a CPU-only machine's CPU
        with pytest.raises(JdnaError, match="no CUDA GPU"):
            parse_device("cuda:0")
    with pytest.raises(JdnaError, match="auto, cpu, cuda, cuda:N"):
        parse_device("tpu")
    assert parse_dtype("auto") is None
    assert parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(JdnaError, match="float32, bfloat16, float16"):
        parse_dtype("int8")
    assert checkpoint_dtype({"dtype": "bfloat16"}) == torch.bfloat16
    assert checkpoint_dtype({"torch_dtype": "float16"}) == torch.float16
    assert checkpoint_dtype({}) == torch.float32


def test_content_address_terms() -> None:
    cpu32 = Placement(torch.device("cpu"), torch.float32, torch.float32)
    assert cpu32.id_params() == {}  # the address every run had before the options existed
    cpu16 = Placement(torch.device("cpu"), torch.bfloat16, torch.float32)
    assert cpu16.id_params() == {"dtype": "bfloat16"}
    gpu = Placement(torch.device("cuda", 1), torch.float32, torch.float32)
    assert gpu.id_params() == {"device": "cuda"}
    assert gpu.id_params(device_matters=False) == {}
    assert gpu.record() == {"device": "cuda", "dtype": "float32", "device_index": 1}


def test_eval_auto_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_dtype(cpu, torch.float32) == torch.float32
    assert auto_dtype(cpu, torch.bfloat16) == torch.bfloat16
    assert auto_dtype(cpu, torch.float16) == torch.float32
    assert auto_dtype(cuda, torch.float32) == torch.bfloat16
    assert auto_dtype(cuda, torch.float16) == torch.float16
    placement = resolve_placement("cpu", "auto", {"dtype": "float16"}, auto_dtype=auto_dtype)
    assert placement.dtype == torch.float32 and placement.stored_dtype == torch.float16


# --- calibration ---------------------------------------------------------------------------------------


def _calib(model, tokenizer, samples: int = 6, seqlen: int = 16):
    return calibration_samples(TEXT, tokenizer, model, samples, seqlen, seed=0).input_ids


def _block_outputs(runner: LayerwiseRunner) -> list[torch.Tensor]:
    finals = []
    for _, block in runner.iter_blocks():
        runner.advance(runner.run(block, keep_outputs=True))
        finals = [chunk.hidden.detach().clone() for chunk in runner.chunks]
    return finals


def test_blocks_move_one_at_a_time(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model(resolve(str(tiny_llama)))
    ids = _calib(model, tokenizer)
    reference = _block_outputs(LayerwiseRunner(model, ids))
    runner = LayerwiseRunner(model, ids, device="cpu")  # a target device: offload even when it is the home
    assert runner.offload
    index_of = {id(block): i for i, block in enumerate(runner.blocks)}
    events: list[tuple[str, int, str]] = []
    original_to = torch.nn.Module.to

    def recording_to(module, *args, **kwargs):
        if id(module) in index_of:
            events.append(("to", index_of[id(module)], str(args[0] if args else kwargs.get("device"))))
        return original_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    for block in runner.blocks:
        block.register_forward_pre_hook(lambda m, _a: events.append(("run", index_of[id(m)], "")))
    outputs = _block_outputs(runner)
    on_device: set[int] = set()
    for kind, index, _ in events:  # "to" alternates device, home for each block, in order
        if kind == "to":
            on_device ^= {index}
            assert len(on_device) <= 1, events
        else:
            assert on_device == {index}, f"block {index} ran while not on the device: {events}"
    assert [e[1] for e in events if e[0] == "to"] == [0, 0, 1, 1]
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference, strict=True))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_offloaded_calibration_matches_in_place(tiny_llama: Path, calib_file: Path, method: str) -> None:
    plan = plan_prune(PruneConfig(method=method, sparsity=0.5, calib=str(calib_file), calib_samples=6,
                                  calib_seqlen=16))
    masks = []
    for device in (None, "cpu"):
        model, tokenizer = load_model(resolve(str(tiny_llama)))
        outcome = prune_model(model, tokenizer, plan, device=device)
        masks.append({name: outcome.masks[name].clone() for name in outcome.masks})
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_chunking_does_not_change_statistics(tiny_llama: Path) -> None:
    model, tokenizer = load_model(resolve(str(tiny_llama)))
    ids = _calib(model, tokenizer, samples=5)
    norms = []
    for batch_size in (1, 5):
        runner = LayerwiseRunner(model, ids, batch_size=batch_size)
        assert len(runner.chunks) == -(-5 // batch_size)
        _, block = next(runner.iter_blocks())
        accumulator = InputNormAccumulator()
        modules = {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}
        remove = collect_inputs(modules, accumulator)
        runner.run(block, keep_outputs=False)
        remove()
        norms.append(accumulator.norms())
    # Brute force: the q_proj input norms from one dense pass of all samples.
    x = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: x.append(i[0].detach()))
    with torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    brute = x[0].reshape(-1, x[0].shape[-1]).pow(2).sum(0).sqrt()
    for found in norms:
        assert torch.allclose(found["self_attn.q_proj"], brute, rtol=1e-5, atol=1e-6)
        assert set(found) == set(norms[0])


def test_shared_input_statistic_equals_separate() -> None:
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(10, 4, generator=generator)
    other = torch.randn(10, 4, generator=generator)
    accumulator = HessianAccumulator()
    for name in ("q", "k", "v"):
        accumulator(name, shared)
    accumulator("o", other)
    accumulator("q", other)  # a second chunk
    expected_kv = 2 * shared.T @ shared / 10
    assert torch.allclose(accumulator.hessian("k"), expected_kv)
    assert torch.allclose(accumulator.hessian("v"), expected_kv)
    assert torch.allclose(accumulator.hessian("o"), 2 * other.T @ other / 10)
    both = torch.cat([shared, other])
    assert torch.allclose(accumulator.hessian("q"), 2 * both.T @ both / 20)
    shared.mul_(2)  # modified in place: the version counter says the statistic is stale
    accumulator("w", shared)
    assert torch.allclose(accumulator.hessian("w"), 2 * shared.T @ shared / 10)


# --- placement in the content address and the artifact ---------------------------------------------------


def test_dtype_enters_the_address_and_the_record(tiny_llama: Path, calib_file: Path) -> None:
    ref = resolve(str(tiny_llama))
    config = PruneConfig(method="sparsegpt", sparsity=0.5, calib=str(calib_file), calib_samples=4, calib_seqlen=16)
    fp32 = run_prune(ref, config)
    bf16 = run_prune(ref, config, placement=resolve_placement("cpu", "bfloat16", ref.base.config))
    assert fp32["id"] != bf16["id"]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    assert "compute" not in read_artifact(Path(fp32["path"])).header["operation"]["params"]
    assert read_artifact(Path(bf16["path"])).header["operation"]["params"]["compute"] == {"dtype": "bfloat16"}
    # Rewritten weights are stored in the checkpoint's dtype, whatever computed them.
    stored = [t for name, t in load_file(bf16["path"]).items() if name.startswith("weight.")]
    assert stored and all(t.dtype == torch.float32 for t in stored)


def test_cli_dtype_and_device_flags(tiny_llama: Path, tmp_path: Path) -> None:
    result = run("prune", str(tiny_llama), "-s", "0.5", "--dtype", "bfloat16")
    assert result.code == 0, result.stderr
    assert result.record["dtype"] == "bfloat16" and result.record["device"] == "cpu"
    plain = run("prune", str(tiny_llama), "-s", "0.5", "--device", "cpu")
    assert plain.record["dtype"] == "float32" and plain.record["id"] != result.record["id"]
    bad = run("prune", str(tiny_llama), "-s", "0.5", "--dtype", "int4")
    assert bad.code == 2 and "--dtype" in bad.stderr
    if not torch.cuda.is_available():
        gpu = run("quantize", str(tiny_llama), "--bits", "4", "--device", "cuda")
        assert gpu.code == 2 and "no CUDA GPU" in gpu.stderr


# --- data-parallel eval ---------------------------------------------------------------------------------


def test_shard_bounds_cover_in_order() -> None:
    rng = random.Random(0)
    for n in (0, 1, 2, 7, 24):
        costs = [rng.randint(1, 50) for _ in range(n)]
        for parts in (1, 2, 3, 5):
            bounds = shard_bounds(costs, parts)
            assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == parts + 1
            assert bounds == sorted(bounds)
    bounds = shard_bounds([1] * 10 + [10], 2)  # the heavy tail gets a shard of its own
    assert bounds == [0, 10, 11]


class _FakeDist:
    """Two 'processes' simulated in one: all_gather_object returns what each rank's call produced."""

    def __init__(self, rank: int, results: dict[int, list]) -> None:
        self.rank, self.world_size, self.enabled, self.results = rank, 2, True, results

    def all_gather_object(self, obj):
        self.results[self.rank] = obj
        return [self.results.get(r, []) for r in range(self.world_size)]


def test_shard_map_gathers_in_order() -> None:
    requests = list(range(9))
    results: dict[int, list] = {}
    seen = []
    for rank in (1, 0):
        gathered = shard_map(_FakeDist(rank, results), lambda part: (seen.append(part), [r * r for r in part])[1],
                             requests)
    assert gathered == [r * r for r in requests]
    assert sorted(x for part in seen for x in part) == requests  # each request scored once


def _mc_file(directory: Path) -> Path:
    rng = random.Random(3)
    rows = []
    for i in range(28):
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        rows.append({"id": f"q{i}", "question": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))),
                     "choices": choices, "gold": i % 4, "split": "train" if i < 4 else "test"})
    path = directory / "mc.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_torchrun_eval_matches_one_process(tiny_llama: Path, tmp_path: Path) -> None:
    task = f"file:{_mc_file(tmp_path)}"
    single = run("eval", str(tiny_llama), "--task", task, "--shots", "1", "-o", str(tmp_path / "one.json"))
    assert single.code == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "jdna",
         "eval", str(tiny_llama), "--task", task, "--shots", "1", "-o", str(tmp_path / "two.json")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    lines = [line for line in launched.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, launched.stdout
    two, one = json.loads((tmp_path / "two.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    assert two["world_size"] == 2 and "world_size" not in one
    assert two["id"] == one["id"]  # the same evaluation, by content
    assert two["per_item"] == one["per_item"]
    assert two["metrics"] == one["metrics"]


def test_device_map_auto_runs_where_accelerate_places(tiny_llama: Path, tmp_path: Path) -> None:
    task = f"file:{_mc_file(tmp_path)}"
    plain = run("eval", str(tiny_llama), "--task", task, "-o", str(tmp_path / "plain.json"))
    mapped = run("eval", str(tiny_llama), "--task", task, "--device-map", "auto", "-o", str(tmp_path / "map.json"))
    assert plain.code == 0 and mapped.code == 0, mapped.stderr
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "map"))
    assert two["device_map"] == "auto" and two["per_item"] == one["per_item"]
    if not torch.cuda.is_available():  # accelerate places everything on the CPU: the same run, the same id
        assert two["id"] == one["id"]
    pruned = run("prune", str(tiny_llama), "-s", "0.5", "--device-map", "auto")
    assert pruned.code == 0, pruned.stderr
    clash = run("eval", str(tiny_llama), "--task", task, "--device-map", "auto", "--device", "cpu")
    assert clash.code == 2 and "--device-map" in clash.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_makefile_launch_prefixes_every_model_step(tmp_path: Path) -> None:
    targets = [f"{tmp_path}/{name}/records.jsonl" for name in ("setting1", "setting2", "quantization", "lmc")]
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO), "--no-print-directory", f"R={tmp_path}", "LAUNCH=XLAUNCH", *targets],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    steps = re.findall(r"(\S+)\s+\S*jdna (prune|quantize|lowrank|finetune|eval|lmc)\b", done.stdout)
    assert {step for _, step in steps} == {"prune", "quantize", "lowrank", "finetune", "eval", "lmc"}
    assert all(prefix.endswith("XLAUNCH") for prefix, _ in steps), [s for s in steps if "XLAUNCH" not in s[0]][:3]
