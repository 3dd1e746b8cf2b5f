"""Hardening (issue #8): bad input fails cleanly, faults leave no broken artifact, steps are deterministic.

The contract under test (commands/app.py, docs/artifacts.md): bad input exits 2 with exactly one line on
stderr naming the problem, nothing on stdout and nothing new in the run store; a file under an artifact's
final name is always complete; the same inputs and seed give byte-identical tensors; a header can never make
a load reach outside the run store. Tiny models only, one intra-op thread (a busy 2-core machine).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file

import jdna.artifact
from jdna.artifact import read_artifact, write_artifact
from jdna.errors import JdnaError
from tests.cli import Result, run

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


pytestmark = pytest.mark.usefixtures("one_thread")


# --- shared materials ---------------------------------------------------------------------------------


@dataclass
class Materials:
    """Files the bad-input cases point at, built once per module outside any test's run store."""

    root: Path
    llama: Path
    bert: Path
    pruned: Path  # a valid pruned artifact of `llama`
    pruned_line: str  # its stdout record
    eval_line: str  # a real eval record's stdout line
    eval_file: Path
    mc_task: Path
    cls_task: Path
    calib: Path
    empty: Path
    truncated: Path
    flipped: Path
    raw_header_corrupt: Path
    jdna_header_corrupt: Path
    wrong_version: Path
    foreign: Path
    stale_base_artifact: Path
    pickle_dir: Path
    text_file: Path


def _mc_rows() -> list[dict]:
    rows = [{"question": "the cat is", "choices": ["red", "blue", "green"], "gold": i % 3} for i in range(6)]
    rows.append({"question": "one two", "choices": ["three", "four"], "gold": 0, "split": "train"})
    return rows


def _cls_rows() -> list[dict]:
    rows = []
    for split, n in (("train", 12), ("test", 6)):
        for i in range(n):
            label = ("yes", "no")[i % 2]
            rows.append({"text": f"the cat is {label} {i % 3}", "label": label, "split": split})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tensor_region(data: bytes) -> int:
    """Offset of the first tensor byte in a safetensors file (8-byte length + JSON header)."""
    return 8 + struct.unpack("<Q", data[:8])[0]


def _resave(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    with safe_open(str(source), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.fixture(scope="module")
def mats(tiny_llama: Path, tiny_bert: Path, calib_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Materials:
    root = tmp_path_factory.mktemp("hardening-materials")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JDNA_HOME", str(root / "home"))
        patch.setenv("JDNA_RUNS", str(root / "runs"))
        pruned = root / "good.safetensors"
        made = run("prune", str(tiny_llama), "-s", "0.5", "-o", str(pruned))
        assert made.code == 0, made.stderr
        mc_task = _write_jsonl(root / "mc.jsonl", _mc_rows())
        cls_task = _write_jsonl(root / "cls.jsonl", _cls_rows())
        evaluated = run("eval", str(tiny_llama), "--task", f"file:{mc_task}")
        assert evaluated.code == 0, evaluated.stderr

        data = pruned.read_bytes()
        start = _tensor_region(data)
        (root / "empty.safetensors").write_bytes(b"")
        (root / "truncated.safetensors").write_bytes(data[: (start + len(data)) // 2])
        flipped = bytearray(data)
        flipped[(start + len(data)) // 2] ^= 0x01
        (root / "flipped.safetensors").write_bytes(bytes(flipped))
        raw = bytearray(data)
        raw[8] = ord("X")  # the header JSON's opening brace
        (root / "raw-header.safetensors").write_bytes(bytes(raw))
        header = read_artifact(pruned).header
        _resave(pruned, root / "jdna-header.safetensors", {"jdna": json.dumps(header)[:-7]})
        _resave(pruned, root / "v2.safetensors", {"jdna": json.dumps({**header, "version": 2})})
        save_file({"x": torch.zeros(2)}, str(root / "foreign.safetensors"))

        base = root / "changing-base"
        shutil.copytree(tiny_llama, base)
        stale = root / "stale.safetensors"
        assert run("prune", str(base), "-s", "0.5", "-o", str(stale)).code == 0
        weights = next(base.glob("*.safetensors"))
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata()
        first = sorted(tensors)[0]
        tensors[first] = tensors[first] + 1
        save_file(tensors, str(weights), metadata=metadata)

        from transformers import BertModel

        pickled = root / "pickled"
        shutil.copytree(tiny_bert, pickled)
        for file in pickled.glob("*.safetensors"):
            file.unlink()
        torch.save(BertModel.from_pretrained(tiny_bert).state_dict(), pickled / "pytorch_model.bin")

        text_file = root / "somefile.txt"
        text_file.write_text("not a directory\n")
    return Materials(
        root=root,
        llama=tiny_llama,
        bert=tiny_bert,
        pruned=pruned,
        pruned_line=made.stdout,
        eval_line=evaluated.stdout,
        eval_file=Path(evaluated.record["path"]),
        mc_task=mc_task,
        cls_task=cls_task,
        calib=calib_file,
        empty=root / "empty.safetensors",
        truncated=root / "truncated.safetensors",
        flipped=root / "flipped.safetensors",
        raw_header_corrupt=root / "raw-header.safetensors",
        jdna_header_corrupt=root / "jdna-header.safetensors",
        wrong_version=root / "v2.safetensors",
        foreign=root / "foreign.safetensors",
        stale_base_artifact=stale,
        pickle_dir=pickled,
        text_file=text_file,
    )


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _assert_clean_failure(result: Result, fragment: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == 2, (result.code, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]


# --- 1. the bad-input matrix ---------------------------------------------------------------------------

Args = Callable[[Materials, Path], list[str]]


def _unwritable(m: Materials, tmp: Path) -> str:
    """An output directory this process cannot write into; as root (chmod does not bind) a path under a file."""
    if IS_ROOT:
        return str(m.text_file / "out.safetensors")
    locked = tmp / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o500)
    return str(locked / "out.safetensors")


def _unwritable_fragment() -> str:
    return "not a directory" if IS_ROOT else "not writable"


NO_USER_REASON = (
    "Path(...).expanduser() raises RuntimeError for '~unknown-user'; fixed for MODEL arguments, -o of "
    "prune/quantize/lowrank/finetune/lmc and record sources, not yet for eval/difficulty/plot/export -o, "
    "--log-samples, --calib and --baselines (use os.path.expanduser there)"
)

# fmt: off
CASES: list = [
    # numeric flags: out of range, not a number
    ("prune-sparsity-high", lambda m, t: ["prune", str(m.llama), "-s", "1.5"], None, "must be in [0, 1)"),
    ("prune-sparsity-negative", lambda m, t: ["prune", str(m.llama), "-s", "-0.1"], None, "must be in [0, 1)"),
    ("prune-sparsity-text", lambda m, t: ["prune", str(m.llama), "-s", "half"], None, "invalid value for '--sparsity'"),
    ("prune-sparsity-missing", lambda m, t: ["prune", str(m.llama)], None, "--sparsity"),
    ("quantize-bits-low", lambda m, t: ["quantize", str(m.llama), "-b", "1"], None, "--bits"),
    ("quantize-bits-high", lambda m, t: ["quantize", str(m.llama), "-b", "9"], None, "--bits"),
    ("quantize-bits-text", lambda m, t: ["quantize", str(m.llama), "-b", "four"], None, "invalid value for '--bits'"),
    ("quantize-group-size", lambda m, t: ["quantize", str(m.llama), "-b", "4", "--granularity", "group",
                                          "--group-size", "0"], None, "--group-size"),
    ("lowrank-ratio-zero", lambda m, t: ["lowrank", str(m.llama), "-r", "0"], None, "(0, 1]"),
    ("lowrank-ratio-high", lambda m, t: ["lowrank", str(m.llama), "-r", "1.5"], None, "(0, 1]"),
    ("lowrank-ratio-text", lambda m, t: ["lowrank", str(m.llama), "-r", "most"], None,
     "invalid value for '--rank-ratio'"),
    ("lowrank-both", lambda m, t: ["lowrank", str(m.llama), "-r", "0.5", "--energy", "0.9"], None, "not both"),
    ("finetune-fraction-zero", lambda m, t: ["finetune", str(m.bert), "--task", f"file:{m.cls_task}",
                                             "--mode", "dense", "--train-fraction", "0"], None, "(0, 1]"),
    ("finetune-fraction-high", lambda m, t: ["finetune", str(m.bert), "--task", f"file:{m.cls_task}",
                                             "--mode", "dense", "--train-fraction", "1.5"], None, "(0, 1]"),
    ("finetune-fraction-nan", lambda m, t: ["finetune", str(m.bert), "--task", f"file:{m.cls_task}",
                                            "--mode", "dense", "--train-fraction", "nan"], None, "(0, 1]"),
    ("eval-shots-negative", lambda m, t: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--shots", "-1"],
     None, "--shots"),
    ("eval-shots-text", lambda m, t: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--shots", "few"],
     None, "invalid value for '--shots'"),
    ("eval-options-one", lambda m, t: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--options", "1"],
     None, "--options"),
    ("eval-limit-zero", lambda m, t: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--limit", "0"],
     None, "--limit"),
    ("lmc-points-one", lambda m, t: ["lmc", str(m.llama), str(m.llama), "--task", f"file:{m.mc_task}",
                                     "--points", "1"], None, "--points"),
    ("lmc-points-text", lambda m, t: ["lmc", str(m.llama), str(m.llama), "--task", f"file:{m.mc_task}",
                                      "--points", "many"], None, "invalid value for '--points'"),
    ("difficulty-resamples-zero", lambda m, t: ["difficulty", "--resamples", "0"], lambda m: m.eval_line,
     "--resamples"),
    ("plot-dpi-low", lambda m, t: ["plot", "--dpi", "10"], lambda m: m.eval_line, "--dpi"),
    ("plot-dpi-text", lambda m, t: ["plot", "--dpi", "sharp"], lambda m: m.eval_line, "invalid value for '--dpi'"),
    # unknown names, with the nearest valid one suggested
    ("prune-method", lambda m, t: ["prune", str(m.llama), "-s", "0.5", "--method", "wandaa"], None,
     "did you mean 'wanda'"),
    ("quantize-method", lambda m, t: ["quantize", str(m.llama), "-b", "4", "--method", "gtpq"], None,
     "did you mean 'gptq'"),
    ("quantize-granularity", lambda m, t: ["quantize", str(m.llama), "-b", "4", "--granularity", "chanel"], None,
     "did you mean 'channel'"),
    ("finetune-mode", lambda m, t: ["finetune", str(m.bert), "--task", f"file:{m.cls_task}", "--mode",
                                    "sparsest"], None, "did you mean 'sparse'"),
    ("eval-task", lambda m, t: ["eval", str(m.llama), "--task", "mmluu"], None, "did you mean 'mmlu'"),
    ("eval-task-file-missing", lambda m, t: ["eval", str(m.llama), "--task", "file:nope.jsonl"], None,
     "not found"),
    ("plot-kind", lambda m, t: ["plot", "--kind", "sparsty"], lambda m: m.eval_line, "did you mean 'sparsity'"),
    ("difficulty-axis", lambda m, t: ["difficulty", "--axis", "shot"], lambda m: m.eval_line,
     "did you mean 'shots'"),
    ("unknown-command", lambda m, t: ["prnue", str(m.llama)], None, "prnue"),
    ("unknown-option", lambda m, t: ["tasks", "--bigbnech"], None, "--bigbnech"),
    # model files: missing, empty, truncated, flipped, corrupt headers, foreign, stale base
    ("info-missing", lambda m, t: ["info", str(t / "missing.safetensors")], None, "does not exist"),
    ("info-empty", lambda m, t: ["info", str(m.empty)], None, "not a readable safetensors"),
    ("info-truncated", lambda m, t: ["info", str(m.truncated)], None, "truncated or corrupt"),
    ("info-verify-flipped", lambda m, t: ["info", "--verify", str(m.flipped)], None, "corrupt"),
    ("info-raw-header-corrupt", lambda m, t: ["info", str(m.raw_header_corrupt)], None,
     "not a readable safetensors"),
    ("info-jdna-header-corrupt", lambda m, t: ["info", str(m.jdna_header_corrupt)], None, "corrupt jdna header"),
    ("info-wrong-version", lambda m, t: ["info", str(m.wrong_version)], None, "format version 2"),
    ("prune-foreign", lambda m, t: ["prune", str(m.foreign), "-s", "0.5"], None, "not a jdna artifact"),
    ("quantize-truncated", lambda m, t: ["quantize", str(m.truncated), "-b", "4"], None, "truncated or corrupt"),
    ("prune-stale-base", lambda m, t: ["prune", str(m.stale_base_artifact), "-s", "0.6"], None, "no longer match"),
    ("lmc-mismatched", lambda m, t: ["lmc", str(m.llama), str(m.bert), "--task", f"file:{m.mc_task}",
                                     "--points", "2"], None, "differ"),
    # wrong records and empty stdin
    ("prune-eval-stdin", lambda m, t: ["prune", "-s", "0.5"], lambda m: m.eval_line, "'eval' record"),
    ("quantize-eval-stdin", lambda m, t: ["quantize", "-b", "4"], lambda m: m.eval_line, "'eval' record"),
    ("finetune-eval-stdin", lambda m, t: ["finetune", "--task", f"file:{m.cls_task}", "--mode", "dense"],
     lambda m: m.eval_line, "'eval' record"),
    ("info-eval-stdin", lambda m, t: ["info"], lambda m: m.eval_line, "'eval' record"),
    ("difficulty-pruned-stdin", lambda m, t: ["difficulty"], lambda m: m.pruned_line, "'pruned' record"),
    ("prune-empty-stdin", lambda m, t: ["prune", "-s", "0.5"], lambda m: "", "stdin is empty"),
    ("info-blank-stdin", lambda m, t: ["info"], lambda m: "\n  \n", "stdin is empty"),
    ("difficulty-empty-stdin", lambda m, t: ["difficulty"], lambda m: "", "no eval records"),
    # outputs
    ("prune-unwritable", lambda m, t: ["prune", str(m.llama), "-s", "0.5", "-o", _unwritable(m, t)], None,
     _unwritable_fragment()),
    ("quantize-unwritable", lambda m, t: ["quantize", str(m.llama), "-b", "4", "-o", _unwritable(m, t)], None,
     _unwritable_fragment()),
    ("lmc-unwritable", lambda m, t: ["lmc", str(m.llama), str(m.llama), "--task", f"file:{m.mc_task}",
                                     "--points", "2", "-o", _unwritable(m, t).replace(".safetensors", ".json")], None,
     _unwritable_fragment()),
    ("plot-bad-suffix", lambda m, t: ["plot", "-o", str(t / "fig.gif")], lambda m: m.eval_line, ".png"),
    ("export-exists", lambda m, t: ["export", str(m.pruned), "-o", str(m.root)], None, "already exists"),
    # "~user" of a user that does not exist (pathlib's expanduser raises RuntimeError for it)
    ("prune-tilde-nouser", lambda m, t: ["prune", "~no-such-user-jdna/model", "-s", "0.5"], None, "not found"),
    ("difficulty-tilde-nouser", lambda m, t: ["difficulty", "~no-such-user-jdna/runs"], None, "does not exist"),
    pytest.param("eval-o-tilde-nouser", lambda m, t: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "-o",
                                                      "~no-such-user-jdna/r.json"], None, "does not exist",
                 id="eval-o-tilde-nouser"),
    pytest.param("plot-o-tilde-nouser", lambda m, t: ["plot", "-o", "~no-such-user-jdna/f.png"],
                 lambda m: m.eval_line, "existing directory",
                 id="plot-o-tilde-nouser"),
    # untrusted weights
    ("prune-pickle", lambda m, t: ["prune", str(m.pickle_dir), "-s", "0.5"], None, "--allow-pickle"),
    ("info-pickle", lambda m, t: ["info", str(m.pickle_dir)], None, "--allow-pickle"),
]
# fmt: on


def _case_name(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _params():
    for case in CASES:
        if hasattr(case, "values"):  # a pytest.param (xfail)
            yield pytest.param(*case.values[1:], marks=case.marks, id=case.id)
        else:
            yield pytest.param(*case[1:], id=case[0])


@pytest.mark.parametrize(("args", "stdin", "fragment"), list(_params()))
def test_bad_input_matrix(
    mats: Materials, tmp_path: Path, args: Args, stdin: Callable[[Materials], str] | None, fragment: str
) -> None:
    store = Path(os.environ["JDNA_RUNS"])
    before = _snapshot(store)
    materials_before = _snapshot(mats.root)
    result = run(*args(mats, tmp_path), stdin=None if stdin is None else stdin(mats))
    _assert_clean_failure(result, fragment)
    assert _snapshot(store) == before, "a failed command left a file in the run store"
    assert _snapshot(mats.root) == materials_before, "a failed command left a file beside its inputs"


def test_matrix_is_large_enough() -> None:
    assert len(CASES) >= 40
    named = {_case_name(c).split("-")[0] for c in CASES}
    assert named >= {"prune", "quantize", "lowrank", "finetune", "eval", "difficulty", "plot", "lmc", "info", "export"}


def test_version_and_bare_invocation() -> None:
    version = run("--version")
    assert version.code == 0 and version.stdout.startswith("jdna ") and version.stderr == ""
    bare = run()  # prints the help; no empty "error:" line
    assert bare.code == 2 and "Usage" in bare.stdout and bare.stderr == ""


# --- 2. faults -----------------------------------------------------------------------------------------


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JDNA_RUNS=str(tmp_path / "runs"),
        JDNA_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    return env


def _assert_no_broken_artifact(directory: Path, name: str) -> None:
    """Only complete artifacts under final names; anything else is a temp file named `.<name>.*.tmp`."""
    temp = re.compile(rf"^\.{re.escape(name)}\..+\.tmp$")
    for path in directory.iterdir():
        if path.name == name:
            read_artifact(path, verify=True)
        else:
            assert temp.match(path.name), f"unexpected file {path.name}"


# Saves half the file, says so, then waits to be killed: a kill while the artifact is being written.
_SLOW_WRITER = """
import sys, time
from pathlib import Path
import jdna.artifact
real = jdna.artifact.save_file
def half_then_hang(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    data = Path(filename).read_bytes()
    Path(filename).write_bytes(data[: len(data) // 2])
    Path(sys.argv[1]).write_text("writing")
    time.sleep(120)
jdna.artifact.save_file = half_then_hang
from jdna.commands.app import main
main(sys.argv[2:])
"""


def test_sigkill_during_prune_leaves_no_broken_artifact(tiny_llama: Path, tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "p.safetensors"
    args = ["prune", str(tiny_llama), "-s", "0.5", "-o", str(out)]

    # A kill in the middle of writing the artifact.
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(marker), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the writer never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a half-written artifact appeared under its final name"
    leftovers = list(out_dir.iterdir())
    assert leftovers, "expected the killed writer's temp file"
    _assert_no_broken_artifact(out_dir, out.name)

    # Kills at random moments once pruning has started (model loaded, masks computed, file written).
    rng = random.Random(8)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "jdna", *args, "--force"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "pruning with" in line:
                break
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_no_broken_artifact(out_dir, out.name)

    # The leftovers never stop the step from completing.
    again = run(*args, "--force")
    assert again.code == 0, again.stderr
    _assert_no_broken_artifact(out_dir, out.name)
    assert read_artifact(out, verify=True).id == again.record["id"]


def test_two_processes_making_the_same_artifact(tiny_llama: Path, tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    command = [sys.executable, "-m", "jdna", "prune", str(tiny_llama), "-s", "0.4", "--method", "random"]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr
    records = [json.loads(stdout) for stdout, _ in outputs]
    store = tmp_path / "runs" / "pruned"
    files = sorted(store.iterdir())
    assert [f.name for f in files] == [Path(records[0]["path"]).name], files
    artifact = read_artifact(files[0], verify=True)
    volatile = {"cached", "seconds"}
    stable = [{k: v for k, v in r.items() if k not in volatile} for r in records]
    assert stable[0] == stable[1]
    assert records[0]["id"] == artifact.id


def test_disk_full_while_writing(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # what got written before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jdna.artifact, "save_file", full)
    store = tmp_path / "runs"
    for args in (
        ["prune", str(tiny_llama), "-s", "0.5"],
        ["quantize", str(tiny_llama), "-b", "4"],
        ["prune", str(tiny_llama), "-s", "0.5", "-o", str(tmp_path / "explicit.safetensors")],
    ):
        result = run(*args)
        # Progress lines may precede it (the failure comes mid-run), but the error is one line, and the last.
        assert "Traceback" not in result.stderr and result.code == 2 and result.stdout == "", result.stderr
        errors = [line for line in result.stderr.splitlines() if ": error:" in line]
        assert errors == [result.stderr.splitlines()[-1]], result.stderr
        assert "could not write" in errors[0] and "No space left on device" in errors[0], errors[0]
        assert [p for p in store.rglob("*") if p.is_file()] == []
        assert not (tmp_path / "explicit.safetensors").exists()
        assert not list(tmp_path.glob(".explicit.safetensors.*"))


# --- 3. determinism and integrity ---------------------------------------------------------------------


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    with safe_open(str(path), framework="pt") as handle:
        return {
            name: handle.get_tensor(name).contiguous().view(torch.uint8).numpy().tobytes() for name in handle.keys()
        }


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "-s", "0.5", "--method", "magnitude"],
        ["prune", "-s", "0.5", "--method", "random", "--seed", "7"],
        ["prune", "-s", "0.5", "--method", "wanda", "--calib-samples", "4", "--calib-seqlen", "16"],
        ["quantize", "-b", "4", "--method", "rtn"],
        ["quantize", "-b", "3", "--method", "rtn", "--asym", "--granularity", "group", "--group-size", "16"],
    ],
    ids=["magnitude", "random", "wanda", "rtn", "rtn-asym-group"],
)
def test_same_inputs_give_identical_artifacts(
    tiny_llama: Path, calib_file: Path, tmp_path: Path, args: list[str]
) -> None:
    extra = ["--calib", str(calib_file)] if "wanda" in args else []
    headers, tensors = [], []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        result = run(args[0], str(tiny_llama), *args[1:], *extra, "-o", str(out))
        assert result.code == 0, result.stderr
        headers.append(read_artifact(out, verify=True).header)
        tensors.append(_tensor_bytes(out))
    assert headers[0]["tensors_sha256"] == headers[1]["tensors_sha256"]
    assert headers[0]["id"] == headers[1]["id"]
    assert tensors[0] == tensors[1]


def test_verify_catches_a_flipped_tensor_byte(mats: Materials, tmp_path: Path) -> None:
    data = mats.pruned.read_bytes()
    start = _tensor_region(data)
    read_artifact(mats.pruned, verify=True)
    for offset in (start, (start + len(data)) // 2, len(data) - 1):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[offset] ^= bit
            path = tmp_path / "damaged.safetensors"
            path.write_bytes(bytes(damaged))
            read_artifact(path)  # the header still reads ...
            with pytest.raises(JdnaError, match="corrupt"):
                read_artifact(path, verify=True)  # ... but the tensors no longer match it


# --- 4. fuzzing ---------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@st.composite
def _mutations(draw: st.DrawFn, data: bytes) -> bytes:
    start = _tensor_region(data)
    header_pos = st.integers(0, start - 1)
    anywhere = st.integers(0, len(data) - 1)
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.one_of(header_pos, header_pos, anywhere)) % max(len(out), 1)
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        if action == "flip":
            out[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del out[where:]
        elif action == "insert":
            out[where:where] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b"\\", b"{", b"}"]))
        elif action == "delete":
            del out[where : where + draw(st.integers(1, 8))]
        else:
            out[where] = draw(st.sampled_from(list(b'"\\{}[],:0123456789')))
        if not out:
            break
    return bytes(out)


def _json_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every (nested) key or index of a JSON value, as a path from the top."""
    paths = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        paths.extend(_json_paths(child, (*prefix, key)))
    return paths


@st.composite
def _header_mutations(draw: st.DrawFn, tensors: dict[str, torch.Tensor], header: dict) -> bytes:
    """A well-formed safetensors file whose jdna header text or values were changed."""
    text = json.dumps(header, sort_keys=True)
    if draw(st.booleans()):  # change the text: it may stop being JSON
        where = draw(st.integers(0, len(text) - 1))
        text = text[:where] + draw(st.text(max_size=3)) + text[where + draw(st.integers(0, 3)) :]
    else:  # change one value anywhere in the header to any JSON, or drop it
        mutated = json.loads(text)
        *parents, last = draw(st.sampled_from(_json_paths(mutated)))
        holder = mutated
        for key in parents:
            holder = holder[key]
        if draw(st.booleans()) or isinstance(holder, list):
            holder[last] = draw(_json)
        else:
            del holder[last]
        text = json.dumps(mutated)
    return safetensors_save(tensors, metadata={"jdna": text})


def _fuzz_info(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    result = run("info", "--verify", str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code in (0, 2), (result.code, result.stderr)
    if result.code == 2:
        assert len(result.stderr.splitlines()) == 1 and result.stdout == "", result.stderr


def test_fuzz_info_verify_on_mutated_artifacts(mats: Materials, tmp_path: Path) -> None:
    data = mats.pruned.read_bytes()
    target = tmp_path / "fuzzed.safetensors"

    @_FUZZ
    @given(payload=_mutations(data))
    def check(payload: bytes) -> None:
        _fuzz_info(target, payload)

    check()


def test_fuzz_info_verify_on_mutated_headers(mats: Materials, tmp_path: Path) -> None:
    artifact = read_artifact(mats.pruned)
    target = tmp_path / "header.safetensors"

    @_FUZZ
    @given(payload=_header_mutations(artifact.tensors(), artifact.header))
    def check(payload: bytes) -> None:
        _fuzz_info(target, payload)

    check()


def test_fuzz_info_verify_on_random_bytes(mats: Materials, tmp_path: Path) -> None:
    data = mats.pruned.read_bytes()
    target = tmp_path / "random.safetensors"
    header_len = struct.pack("<Q", _tensor_region(data) - 8)

    @_FUZZ
    @given(payload=st.binary(max_size=256) | st.binary(max_size=256).map(lambda b: header_len + b))
    def check(payload: bytes) -> None:
        _fuzz_info(target, payload)

    check()


_json_scalar = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_line_noise = st.one_of(
    _json.map(json.dumps),
    st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["eval", "lmc", "difficulty", "pruned"])},
        optional={
            key: _json for key in ("task", "primary_metric", "metrics", "knobs", "path", "alphas", "loss", "groups")
        },
    ).map(json.dumps),
)
# Fields of an eval record that the analyses read; a fuzzed record replaces or drops some of them.
_FIELDS = [
    ("task",),
    ("knobs",),
    ("knobs", "shots"),
    ("knobs", "seed"),
    ("metrics",),
    ("metrics", "acc"),
    ("metrics", "acc", "value"),
    ("metrics", "acc", "ci95"),
    ("primary_metric",),
    ("model",),
    ("model", "compression"),
    ("model", "compression", "kind"),
    ("model", "compression", "method"),
    ("model", "compression", "sparsity"),
    ("model", "compression", "target_sparsity"),
    ("model", "compression", "bits_per_weight"),
    ("model", "base_sha256"),
    ("per_item",),
    ("per_item", "values"),
    ("per_item", "ids"),
    ("n",),
    ("higher_is_better",),
    ("transfer",),
    ("id",),
    ("path",),
]


def _eval_variants(full: dict) -> list[dict]:
    """The real (dense) record, and pruned and harder-knob copies of it: a set the analysis can compare."""
    variants = []
    for sparsity, shots in ((None, 0), (None, 2), (0.5, 0), (0.5, 2)):
        record = json.loads(json.dumps(full))
        record["knobs"]["shots"] = shots
        if sparsity is not None:
            record["model"]["compression"] = {
                "kind": "pruned",
                "method": "magnitude",
                "sparsity": sparsity,
                "target_sparsity": sparsity,
                "bits_per_weight": 9.0,
            }
        record["id"] = f"{record['id'][:50]}-{sparsity}-{shots}"
        record.pop("path", None)
        variants.append(record)
    return variants


@st.composite
def _fuzzed_records(draw: st.DrawFn, variants: list[dict]) -> list[str]:
    lines = []
    for record in variants:
        record = json.loads(json.dumps(record))
        for _ in range(draw(st.integers(0, 2))):
            *parents, last = draw(st.sampled_from(_FIELDS))
            holder = record
            for key in parents:
                holder = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(holder, dict):
                if draw(st.booleans()):
                    holder[last] = draw(_json)
                else:
                    holder.pop(last, None)
        if draw(st.integers(0, 9)):  # now and then a record goes missing
            lines.append(json.dumps(record))
    for _ in range(draw(st.integers(0, 1))):
        lines.insert(draw(st.integers(0, len(lines))), draw(_line_noise))
    return lines


def test_fuzz_difficulty_record_reader(mats: Materials) -> None:
    variants = _eval_variants(json.loads(mats.eval_file.read_text()))
    store = Path(os.environ["JDNA_RUNS"])
    clean = run("difficulty", "--resamples", "20", stdin="".join(json.dumps(r) + "\n" for r in variants))
    assert clean.code == 0, clean.stderr  # the unfuzzed set is a valid analysis

    @_FUZZ
    @given(lines=_fuzzed_records(variants))
    def check(lines: list[str]) -> None:
        result = run("difficulty", "--resamples", "20", stdin="\n".join(lines) + "\n")
        assert "Traceback" not in result.stderr, result.stderr
        assert result.code in (0, 2), (result.code, result.stderr)
        if result.code == 2:
            assert len(result.stderr.splitlines()) == 1 and result.stdout == "", result.stderr
        shutil.rmtree(store, ignore_errors=True)

    check()


def test_error_messages_stay_on_one_line(mats: Materials) -> None:
    """A record's path (any string) can hold line breaks; the error line must not."""
    line = json.dumps({"kind": "lmc", "path": "evil\nsecond line\n"})
    _assert_clean_failure(run("difficulty", stdin=line + "\n"), "'lmc' record")


# --- 5. a header cannot point a load outside the run store ---------------------------------------------


def _child_with_parent(mats: Materials, directory: Path, parent: dict) -> Path:
    """A pruned artifact whose header's parent reference is crafted; tensors copied from a real artifact."""
    good = read_artifact(mats.pruned)
    header = {
        k: v for k, v in good.header.items() if k not in ("format", "version", "versions", "created", "tensors_sha256")
    }
    header["id"] = "c" * 64
    header["parent"] = parent
    path = directory / "child.safetensors"
    write_artifact(path, header, good.tensors())
    return path


def test_parent_references_cannot_escape_the_run_store(
    mats: Materials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store" / "pruned"
    store.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = outside / "evil.safetensors"
    shutil.copy(mats.pruned, evil)  # a valid artifact with the id the crafted headers name
    good = read_artifact(mats.pruned)
    from jdna.io import sha256_file

    real_ref = {"id": good.id, "kind": "pruned", "sha256": sha256_file(evil)}
    not_artifact = outside / "passwd"
    not_artifact.write_text("root:x:0:0:root:/root:/bin/bash\n")

    opened: list[str] = []
    real_open = jdna.artifact.safe_open

    def spying_open(filename, *args, **kwargs):
        opened.append(str(Path(filename).resolve()))
        return real_open(filename, *args, **kwargs)

    monkeypatch.setattr(jdna.artifact, "safe_open", spying_open)
    crafted = [
        (
            {**real_ref, "path": "../../outside/evil.safetensors", "file": "../../outside/evil.safetensors"},
            "is missing",
            True,
        ),
        ({**real_ref, "path": "outside/evil.safetensors", "file": str(evil)}, "is missing", True),
        ({**real_ref, "path": "", "file": ".."}, "is missing", True),
        ({**real_ref, "path": str(not_artifact), "file": "passwd"}, "not a readable safetensors", False),
        ({**real_ref, "path": str(evil), "file": "evil.safetensors", "id": "0" * 64}, "is missing", False),
        ({**real_ref, "path": str(evil), "file": "evil.safetensors", "sha256": "0" * 64}, "changed", False),
    ]
    for reference, fragment, never_opened in crafted:
        child = _child_with_parent(mats, store, reference)
        opened.clear()
        result = run("info", str(child))
        _assert_clean_failure(result, fragment)
        if never_opened:
            assert str(evil.resolve()) not in opened, reference
    # The same header with the parent beside it in the run store loads.
    shutil.copy(mats.pruned, store.parent / "good.safetensors")
    child = _child_with_parent(
        mats,
        store,
        {
            **real_ref,
            "path": "/nowhere/good.safetensors",
            "file": "good.safetensors",
            "sha256": sha256_file(store.parent / "good.safetensors"),
        },
    )
    # The fallback looks in the artifact's directory and its siblings; move the parent into a sibling.
    sibling = store.parent / "other"
    sibling.mkdir()
    shutil.move(str(store.parent / "good.safetensors"), sibling / "good.safetensors")
    described = run("info", str(child))
    assert described.code == 0, described.stderr
    assert [step["kind"] for step in described.record["lineage"]] == ["base", "pruned", "pruned"]


# --- 6. the output policy (issue #17): nothing lost, nothing silently wrong -----------------------------
#
# Every writer goes through jdna/outputs.py. The contracts: an existing file is replaced only with --force;
# a command's own input or lineage never; nothing is written through a FIFO or device node; files follow the
# umask; a failed or refused command leaves the old file intact and no debris; racing writers never both win.


_PAIR: dict[str, list[str]] = {}


def _eval_pair(m: Materials) -> list[str]:
    """Dense and pruned eval records at two shot counts: enough for difficulty and plot to analyse."""
    if str(m.root) not in _PAIR:
        directory = m.root / "variants"
        directory.mkdir(exist_ok=True)
        paths = []
        for index, record in enumerate(_eval_variants(json.loads(m.eval_file.read_text()))):
            path = directory / f"v{index}.json"
            path.write_text(json.dumps(record))
            paths.append(str(path))
        _PAIR[str(m.root)] = paths
    return _PAIR[str(m.root)]


def _writers(m: Materials, tmp: Path) -> dict[str, Callable[[str], list[str]]]:
    """Each command that writes a file the user names, as a function of that path."""
    pair = _eval_pair(m)
    return {
        "prune": lambda o: ["prune", str(m.llama), "-s", "0.3", "-o", o],
        "quantize": lambda o: ["quantize", str(m.llama), "-b", "4", "-o", o],
        "lowrank": lambda o: ["lowrank", str(m.llama), "-r", "0.5", "-o", o],
        "eval": lambda o: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--limit", "2", "-o", o],
        "log-samples": lambda o: ["eval", str(m.llama), "--task", f"file:{m.mc_task}", "--limit", "2",
                                  "--log-samples", o, "-o", str(tmp / f"rec-{random.random()}.json")],
        "difficulty": lambda o: ["difficulty", *pair, "--resamples", "10", "-o", o],
        "plot": lambda o: ["plot", *pair, "--resamples", "10", "-o", o],
    }


_SUFFIX = {"plot": ".png", "eval": ".json", "log-samples": ".jsonl", "difficulty": ".json"}


@pytest.mark.parametrize("writer", ["prune", "quantize", "lowrank", "eval", "log-samples", "difficulty", "plot"])
def test_an_existing_file_is_replaced_only_with_force(mats: Materials, tmp_path: Path, writer: str) -> None:
    target = tmp_path / f"taken{_SUFFIX.get(writer, '.safetensors')}"
    target.write_bytes(b"someone else's file\n")
    args = _writers(mats, tmp_path)[writer](str(target))
    _assert_clean_failure(run(*args), "already exists")
    assert target.read_bytes() == b"someone else's file\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "debris left"
    replaced = run(*args, "--force")
    assert replaced.code == 0, replaced.stderr
    assert target.read_bytes() != b"someone else's file\n"


@pytest.mark.parametrize("writer", ["prune", "eval", "log-samples", "difficulty", "plot"])
@pytest.mark.parametrize("node", ["fifo", "device"])
def test_nothing_is_written_through_a_fifo_or_device(mats: Materials, tmp_path: Path, writer: str, node: str) -> None:
    if node == "fifo":
        target = tmp_path / f"pipe{_SUFFIX.get(writer, '.safetensors')}"
        os.mkfifo(target)
    else:
        target = Path("/dev/null")
    result = run(*_writers(mats, tmp_path)[writer](str(target)), "--force")
    _assert_clean_failure(result, ".png" if (writer, node) == ("plot", "device") else "not a regular file")
    assert node == "device" or target.is_fifo()


def test_inputs_and_their_lineage_are_never_replaced(mats: Materials, tmp_path: Path) -> None:
    parent = tmp_path / "parent.safetensors"
    shutil.copy(mats.pruned, parent)
    child = tmp_path / "child.safetensors"
    assert run("prune", str(parent), "-s", "0.7", "-o", str(child)).code == 0
    before = {p: p.read_bytes() for p in (parent, child, mats.mc_task)}
    weights = next(mats.llama.glob("*.safetensors"))
    base_before = weights.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(parent)
    cases = [
        ["prune", str(parent), "-s", "0.7", "-o", str(parent)],  # its own input
        ["quantize", str(child), "-b", "4", "-o", str(parent)],  # an artifact its input derives from
        ["quantize", str(child), "-b", "4", "-o", str(link)],  # the same, through a symlink
        ["prune", str(mats.llama), "-s", "0.5", "-o", str(weights)],  # the base weights
        ["eval", str(mats.llama), "--task", f"file:{mats.mc_task}", "-o", str(mats.mc_task)],  # its task file
        ["eval", str(child), "--task", f"file:{mats.mc_task}", "--log-samples", str(parent)],
    ]
    for args in cases:
        _assert_clean_failure(run(*args, "--force"), "own input")
    assert {p: p.read_bytes() for p in before} == before
    assert weights.read_bytes() == base_before
    assert read_artifact(child, verify=True).header["parent"]["id"] == read_artifact(parent).id


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(mats: Materials, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        outputs = {
            "artifact": tmp_path / "a.safetensors",
            "record": tmp_path / "r.json",
            "samples": tmp_path / "s.jsonl",
            "figure": tmp_path / "f.svg",
        }
        assert run("prune", str(mats.llama), "-s", "0.45", "-o", str(outputs["artifact"])).code == 0
        assert run("eval", str(mats.llama), "--task", f"file:{mats.mc_task}", "--limit", "2", "-o",
                   str(outputs["record"]), "--log-samples", str(outputs["samples"])).code == 0
        assert run("plot", *_eval_pair(mats), "--resamples", "10", "-o", str(outputs["figure"])).code == 0
        store = [p for p in Path(os.environ["JDNA_RUNS"]).rglob("*") if p.is_file()]
    finally:
        os.umask(old)
    for path in [*outputs.values(), *store]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_an_export_directory_follows_the_umask(mats: Materials, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert run("export", str(mats.llama), "-o", str(tmp_path / "exported")).code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "exported").stat().st_mode & 0o777 == 0o777 & ~umask


def test_owl_lambda_is_checked_before_anything_is_looked_for(mats: Materials, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JDNA_HOME", str(tmp_path / "empty-home"))  # no calibration text anywhere
    for value in ("nan", "1.5", "-0.1"):
        _assert_clean_failure(run("prune", str(mats.llama), "-s", "0.5", "--owl", "--owl-lambda", value),
                              "--owl-lambda")


def test_a_refused_command_leaves_no_debris(mats: Materials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "fresh-store"
    monkeypatch.setenv("JDNA_RUNS", str(store))
    # Refused once the model's shapes are known: after loading, before writing.
    _assert_clean_failure(
        run("quantize", str(mats.llama), "-b", "4", "--granularity", "group", "--group-size", "7"), "group size"
    )
    _assert_clean_failure(run("lowrank", str(mats.llama), "-r", "0.5", "--include", "nothing*"), "")
    assert not store.exists(), list(store.rglob("*"))


_FSIZE_RUNNER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from jdna.commands.app import main
sys.exit(main(sys.argv[2:]))
"""


def _limited(limit: int, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the CLI with a real file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets): writes past it fail
    with EFBIG inside whichever library is writing, like a disk that fills up."""
    return subprocess.run([sys.executable, "-c", _FSIZE_RUNNER, str(limit), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_real_size_limit_fails_cleanly_and_keeps_the_old_file(mats: Materials, tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    figure = out / "fig.png"
    assert run("plot", *_eval_pair(mats), "--resamples", "10", "-o", str(figure)).code == 0
    good_figure = figure.read_bytes()
    cases = [
        (["prune", str(mats.llama), "-s", "0.5", "-o", str(out / "p.safetensors")], out / "p.safetensors"),
        (["prune", str(mats.llama), "-s", "0.5"], None),  # into the run store
        (["plot", *_eval_pair(mats), "--resamples", "10", "-o", str(figure), "--force"], figure),
        (["eval", str(mats.llama), "--task", f"file:{mats.mc_task}", "-o", str(out / "r.json"), "--log-samples",
          str(out / "s.jsonl")], out / "r.json"),
    ]
    for args, final in cases:
        result = _limited(2048, args, env)
        assert "Traceback" not in result.stderr
        assert result.returncode == 2 and result.stdout == "", (args, result.returncode, result.stderr)
        errors = [line for line in result.stderr.splitlines() if ": error:" in line]
        assert errors == [result.stderr.splitlines()[-1]], result.stderr
        assert "could not write" in errors[0] and "File too large" in errors[0], errors[0]
        if final is figure:
            assert figure.read_bytes() == good_figure, "a failed write damaged the previous figure"
        elif final is not None:
            assert not final.exists()
    assert sorted(p.name for p in out.iterdir()) == ["fig.png"], "a failed write left files behind"
    assert not (out / "s.jsonl").exists(), "the samples of a failed eval were left behind"
    assert [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] == []


def test_samples_that_cannot_be_written_leave_no_record(mats: Materials, tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    record = tmp_path / "r.json"
    # The samples are larger than the record's limit allows once they include every prompt; the record
    # must not be left claiming a run whose samples were asked for.
    result = _limited(1500, ["eval", str(mats.llama), "--task", f"file:{mats.mc_task}", "--shots", "1",
                             "--log-samples", str(tmp_path / "s.jsonl"), "-o", str(record)], env)
    assert result.returncode == 2, result.stderr
    assert "s.jsonl" in result.stderr.splitlines()[-1]
    assert not record.exists()


def test_two_commands_racing_for_one_output_never_both_win(mats: Materials, tmp_path: Path) -> None:
    env = _subprocess_env(tmp_path)
    target = tmp_path / "contested.safetensors"
    procs = [
        subprocess.Popen([sys.executable, "-m", "jdna", "prune", str(mats.llama), "-s", sparsity, "-o", str(target)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for sparsity in ("0.2", "0.6")
    ]
    outcomes = [(proc, *proc.communicate(timeout=300)) for proc in procs]
    winners = [json.loads(out) for proc, out, _ in outcomes if proc.returncode == 0]
    losers = [err for proc, _, err in outcomes if proc.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert read_artifact(target, verify=True).id == winners[0]["id"]
    assert re.search(r"already exists|written by another command", losers[0]), losers[0]
    assert [p.name for p in tmp_path.glob(".contested*")] == []


def test_a_claim_fails_if_another_writer_got_there_first(tmp_path: Path) -> None:
    from jdna.outputs import claim_output

    target = tmp_path / "r.json"
    claim = claim_output(target)
    target.write_text("the other command's record\n")
    with pytest.raises(JdnaError, match="written by another command"):
        with claim.write() as tmp:
            tmp.write_text("mine\n")
    assert target.read_text() == "the other command's record\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- 7. verify before trusting: cache hits and headers --------------------------------------------------


def _zero_block(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = _tensor_region(bytes(data))
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("sampled", [False, True], ids=["full-hash", "sampled-tensors"])
def test_a_corrupt_cache_hit_is_recomputed(
    mats: Materials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampled: bool
) -> None:
    if sampled:  # as for an artifact too large to re-hash whole: each sampled tensor against its own hash
        monkeypatch.setattr(jdna.artifact, "FULL_VERIFY_BYTES", 0)
    first = run("prune", str(mats.llama), "-s", "0.55")
    path = Path(first.record["path"])
    assert run("prune", str(mats.llama), "-s", "0.55").record["cached"] is True
    _zero_block(path)
    again = run("prune", str(mats.llama), "-s", "0.55")
    assert again.code == 0 and again.record["cached"] is False, again.stderr
    assert "corrupt" in again.stderr
    read_artifact(path, verify=True)


def _crafted(mats: Materials, target: Path, edit: Callable[[dict, dict], None], rehash: bool = True) -> Path:
    artifact = read_artifact(mats.pruned)
    header = dict(artifact.header)
    tensors = artifact.tensors()
    edit(header, tensors)
    if rehash:
        header["header_sha256"] = jdna.artifact.header_sha256(header)
    save_file(tensors, str(target), metadata={"jdna": json.dumps(header)})
    return target


def _first_mask(header: dict) -> str:
    return sorted(header["masks"])[0]


_HEADER_LIES = {
    "declared-mask-missing": lambda h, t: t.pop(f"mask.{_first_mask(h)}"),
    "undeclared-mask": lambda h, t: h["masks"].pop(_first_mask(h)),
    "mask-shape-931-GiB": lambda h, t: h["masks"].__setitem__(_first_mask(h), [1 << 20, 1 << 23]),
    "mask-shape-negative": lambda h, t: h["masks"].__setitem__(_first_mask(h), [-4, 8]),
    "quantized-holding-masks": lambda h, t: h.__setitem__("kind", "quantized"),
    "lowrank-holding-masks": lambda h, t: h.__setitem__("kind", "lowrank"),
    "unknown-kind": lambda h, t: h.__setitem__("kind", "distilled"),
}


@pytest.mark.parametrize("lie", list(_HEADER_LIES))
@pytest.mark.parametrize("command", ["info", "export", "eval"])
def test_headers_are_checked_against_their_tensors(mats: Materials, tmp_path: Path, lie: str, command: str) -> None:
    path = _crafted(mats, tmp_path / "crafted.safetensors", _HEADER_LIES[lie])
    args = {
        "info": ["info", str(path)],
        "export": ["export", str(path), "-o", str(tmp_path / "exported")],
        "eval": ["eval", str(path), "--task", f"file:{mats.mc_task}"],
    }[command]
    result = run(*args)
    _assert_clean_failure(result, "recreate it")
    assert not (tmp_path / "exported").exists()


def test_verify_catches_an_edited_header(mats: Materials, tmp_path: Path) -> None:
    def edit(header: dict, tensors: dict) -> None:
        header["stats"] = {**header["stats"], "sparsity": 0.99}

    path = _crafted(mats, tmp_path / "edited.safetensors", edit, rehash=False)
    assert run("info", str(path)).code == 0  # it still reads ...
    _assert_clean_failure(run("info", "--verify", str(path)), "header was edited")  # ... but does not verify


def test_nan_statistics_print_as_valid_json(mats: Materials, tmp_path: Path) -> None:
    def edit(header: dict, tensors: dict) -> None:
        header["stats"] = {**header["stats"], "sparsity": float("nan"), "bits_per_weight": float("inf")}

    path = _crafted(mats, tmp_path / "nan.safetensors", edit)
    result = run("info", str(path))
    assert result.code == 0, result.stderr

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    record = json.loads(result.stdout, parse_constant=reject)
    assert record["sparsity"] is None


# --- 8. training that diverges fails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1e-4"), ("--lr", "5"), ("--weight-decay", "inf"),
     ("--weight-decay", "nan"), ("--weight-decay", "-0.1"), ("--warmup", "inf"), ("--warmup", "nan"),
     ("--seed", "-1")],
)
def test_training_flags_are_checked_before_any_work(mats: Materials, flag: str, value: str) -> None:
    # The model does not exist: the flag must be refused before anything is loaded.
    result = run("finetune", "/no/such/model", "--task", f"file:{mats.cls_task}", "--mode", "dense", flag, value)
    _assert_clean_failure(result, flag)


def test_a_diverging_run_stops_and_writes_nothing(mats: Materials, tmp_path: Path) -> None:
    poisoned = tmp_path / "poisoned-bert"
    shutil.copytree(mats.bert, poisoned)
    weights = next(poisoned.glob("*.safetensors"))
    with safe_open(str(weights), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    name = next(n for n in sorted(tensors) if "word_embeddings" in n)
    tensors[name][0, 0] = float("inf")  # one weight: every loss is then NaN
    save_file(tensors, str(weights), metadata=metadata)
    out = tmp_path / "ft.safetensors"
    result = run("finetune", str(poisoned), "--task", f"file:{mats.cls_task}", "--mode", "dense", "--epochs", "1",
                 "--batch-size", "4", "-o", str(out))
    assert result.code == 2 and result.stdout == "", result.stderr
    assert "training diverged" in result.stderr.splitlines()[-1]
    assert not out.exists()
    assert not list(Path(os.environ["JDNA_RUNS"]).rglob("*.json"))


def test_non_finite_gradients_stop_training() -> None:
    from jdna.finetune.loop import _check_finite_gradients

    model = torch.nn.Linear(3, 2)
    model(torch.ones(1, 3)).sum().backward()
    _check_finite_gradients(model, 1)  # finite: passes
    model.weight.grad[0, 0] = float("nan")
    with pytest.raises(JdnaError, match="training diverged"):
        _check_finite_gradients(model, 2)


# --- 9. every failure is one line with exit 2 -------------------------------------------------------------


def _bom_task(m: Materials, tmp: Path) -> Path:
    path = tmp / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + m.mc_task.read_bytes())
    return path


def _task_with(tmp: Path, name: str, content: bytes) -> str:
    path = tmp / name
    path.write_bytes(content)
    return f"file:{path}"


_ROW = b'{"question": "q", "choices": ["a", "b"], "gold": 0}\n'
# fmt: off
VALIDATION: list = [
    ("prune-seed", lambda m, t: ["prune", str(m.llama), "-s", "0.5", "--seed", "-1"], "--seed"),
    ("quantize-seed", lambda m, t: ["quantize", str(m.llama), "-b", "4", "--seed", "-1"], "--seed"),
    ("eval-seed", lambda m, t: ["eval", "/no/model", "--task", f"file:{m.mc_task}", "--seed", "-1"], "--seed"),
    ("lmc-seed", lambda m, t: ["lmc", "/no/a", "/no/b", "--task", f"file:{m.mc_task}", "--seed", "-2"], "--seed"),
    ("difficulty-seed", lambda m, t: ["difficulty", str(m.eval_file), "--seed", "-1"], "--seed"),
    ("plot-seed", lambda m, t: ["plot", str(m.eval_file), "--seed", "-1"], "--seed"),
    ("task-huge-int", lambda m, t: ["eval", "/no/model", "--task", _task_with(
        t, "int.jsonl", _ROW.replace(b'"gold": 0', b'"gold": ' + b"9" * 5000))], "digits"),
    ("task-deep", lambda m, t: ["eval", "/no/model", "--task", _task_with(
        t, "deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n")], "nested too deeply"),
    ("task-latin1", lambda m, t: ["eval", "/no/model", "--task", _task_with(
        t, "latin.jsonl", _ROW.replace(b'"q"', b'"caf\xe9"'))], "not utf-8"),
    ("task-binary", lambda m, t: ["eval", "/no/model", "--task", _task_with(
        t, "bin.jsonl", bytes(range(256)) * 4)], "line 1"),
    ("task-unknown-metric", lambda m, t: ["eval", "/no/model", "--task", _task_with(
        t, "metric.jsonl", b'{"jdna_task": {"metrics": ["acuracy"]}}\n' + _ROW * 3)], "unknown metric 'acuracy'"),
    ("task-unreadable", lambda m, t: ["eval", "/no/model", "--task", f"file:{t}/dir.jsonl"], "task file"),
    ("baselines-latin1", lambda m, t: ["difficulty", str(m.eval_file), "--baselines", str(
        _write_bytes(t / "b.csv", b"task,metric,human\ncaf\xe9,acc,1\n"))], "not utf-8"),
    ("baselines-binary", lambda m, t: ["difficulty", str(m.eval_file), "--baselines", str(
        _write_bytes(t / "b.csv", bytes(range(256))))], "baseline table"),
    ("model-fifo", lambda m, t: ["info", str(_fifo(t / "model"))], "not a regular file"),
]
# fmt: on


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(("args", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in VALIDATION])
def test_bad_values_are_one_line(mats: Materials, tmp_path: Path, args: Args, fragment: str) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    result = run(*args(mats, tmp_path))
    _assert_clean_failure(result, fragment)
    assert len(result.stderr) < 1200, len(result.stderr)


def test_a_bom_task_file_is_read(mats: Materials, tmp_path: Path) -> None:
    plain = run("eval", str(mats.llama), "--task", f"file:{mats.mc_task}")
    bom = run("eval", str(mats.llama), "--task", f"file:{_bom_task(mats, tmp_path)}")
    assert bom.code == 0, bom.stderr
    assert bom.record["metrics"] == plain.record["metrics"]


def test_duplicate_options_are_warned_about(mats: Materials, tmp_path: Path) -> None:
    rows = [{"question": "the cat is", "choices": ["red", "blue", "red"], "gold": i % 3} for i in range(4)]
    task = _write_jsonl(tmp_path / "dupes.jsonl", rows)
    result = run("eval", str(mats.llama), "--task", f"file:{task}")
    assert result.code == 0 and "list one option text twice" in result.stderr, result.stderr


@pytest.mark.parametrize("variable", ["JDNA_HOME", "JDNA_RUNS"])
def test_home_or_store_pointing_to_a_file_is_one_line(
    mats: Materials, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, str(mats.text_file))
    _assert_clean_failure(run("prune", str(mats.llama), "-s", "0.35"), variable)


def test_a_bigbench_variable_that_is_not_a_tree_is_an_error(
    mats: Materials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JDNA_BIGBENCH", str(tmp_path))
    _assert_clean_failure(run("tasks", "--bigbench"), "JDNA_BIGBENCH")
    monkeypatch.setenv("JDNA_BIGBENCH", str(mats.text_file))
    _assert_clean_failure(run("tasks", "--bigbench"), "not a directory")


def test_a_full_stdout_is_one_line(mats: Materials, tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    env = _subprocess_env(tmp_path)
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "jdna", "info", str(mats.pruned)], env=env, stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [result.stderr.splitlines()[-1]] and "stdout" in errors[0], result.stderr


def test_an_unknown_name_among_many_is_a_short_line(
    mats: Materials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "benchmark_tasks"
    for index in range(1000):
        (tree / f"some_task_number_{index}").mkdir(parents=True)
        (tree / f"some_task_number_{index}" / "task.json").write_text("{}")
    monkeypatch.setenv("JDNA_BIGBENCH", str(tree))
    result = run("eval", str(mats.llama), "--task", "bigbench:some_task_numbr_17")
    _assert_clean_failure(result, "did you mean 'some_task_number_17'")
    assert len(result.stderr) < 400, len(result.stderr)
