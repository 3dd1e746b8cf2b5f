"""A hostile pass over the jdna CLI, run as a new user would: real processes, tiny models, hostile input.

    .venv/bin/python bench/hostile_pass.py [--keep] [--only SUBSTRING] [--workdir DIR]

Each case runs `python -m jdna ...` in a scratch directory with its own JDNA_HOME/JDNA_RUNS and checks the
contract of issue #17: a failure is exit 2 with exactly one error line (the last line on stderr), no
traceback and nothing on stdout; a success is exit 0 with one standard-JSON line; and the case's own
post-condition (a file left as it was, no debris, a record that describes its own file, ...). Prints one line
per case and a summary; exits 1 if any case failed. Groups: outputs, caches, headers, training, numbers,
files, environment, concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Case:
    name: str
    group: str
    args: Callable[[Ctx], list[str]]
    expect: str = "fail"  # "fail": exit 2, one error line; "ok": exit 0, one JSON line; "any": no traceback
    fragment: str = ""
    check: Callable[[Ctx, Result], str | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    umask: int | None = None
    fsize: int | None = None
    stdout_path: str | None = None


@dataclass
class Ctx:
    root: Path
    llama: Path
    bert: Path
    mc: Path
    cls: Path
    calib: Path
    pruned: Path
    child: Path
    quantized: Path
    eval_records: list[Path]
    scratch: Path

    def fresh(self, name: str) -> Path:
        """A new empty directory for one case."""
        path = self.scratch / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def base_env(ctx: Ctx) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JDNA_HOME=str(ctx.root / "home"),
        JDNA_RUNS=str(ctx.root / "runs"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    env.pop("JDNA_BIGBENCH", None)
    return env


IN_PROCESS = False  # --in-process: call the CLI's main() here (fast); resource limits and stdout files still fork


def _in_process(ctx: Ctx, args: list[str], env: dict[str, str], stdin: str | None, umask: int | None) -> Result:
    import io

    from jdna.commands.app import main

    saved_env, saved_streams, saved_cwd = dict(os.environ), (sys.stdin, sys.stdout, sys.stderr), os.getcwd()
    old_umask = os.umask(umask) if umask is not None else None
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin or ""), out, err
    os.chdir(ctx.root)
    started = time.monotonic()
    try:
        code = main(list(args))
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        if old_umask is not None:
            os.umask(old_umask)
    return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


def jdna(ctx: Ctx, args: list[str], env: dict[str, str] | None = None, stdin: str | None = None,
         umask: int | None = None, fsize: int | None = None, stdout_path: str | None = None) -> Result:
    full_env = base_env(ctx)
    full_env.update(env or {})
    if IN_PROCESS and fsize is None and stdout_path is None:
        return _in_process(ctx, args, full_env, stdin, umask)

    def limits() -> None:
        if umask is not None:
            os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    started = time.monotonic()
    out_handle = open(stdout_path, "w") if stdout_path else subprocess.PIPE  # noqa: SIM115
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jdna", *args], env=full_env, cwd=ctx.root, input=stdin, text=True,
            stdout=out_handle, stderr=subprocess.PIPE, preexec_fn=limits, timeout=600,
        )
    finally:
        if stdout_path:
            out_handle.close()
    return Result(proc.returncode, proc.stdout or "", proc.stderr, time.monotonic() - started)


def contract(case: Case, result: Result) -> str | None:
    if "Traceback" in result.stderr or "internal error" in result.stderr:
        return f"traceback/internal error: {result.stderr.strip().splitlines()[-1][:200]}"
    if case.expect == "any":
        return None
    if case.expect == "ok":
        if result.code != 0:
            last = result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else ""
            return f"exit {result.code}: {last}"
        if case.stdout_path is None:
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            if len(lines) != 1:
                return f"{len(lines)} stdout lines"
            try:
                json.loads(lines[0], parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as error:
                return f"stdout is not standard JSON ({error})"
        return None
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ": error:" in line]
    if result.code != 2:
        return f"exit {result.code} (expected 2): {lines[-1][:200] if lines else ''}"
    if result.stdout.strip():
        return "stdout not empty on failure"
    if len(errors) != 1 or errors[0] != lines[-1]:
        return f"{len(errors)} error lines"
    if len(errors[0]) > 1200:
        return f"error line of {len(errors[0])} characters"
    if case.fragment and case.fragment.lower() not in errors[0].lower():
        return f"message lacks {case.fragment!r}: {errors[0][:200]}"
    return None


# --- materials -------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build(root: Path) -> Ctx:
    from tests.conftest import TEXT, build_tiny_bert, build_tiny_llama

    root.mkdir(parents=True, exist_ok=True)
    llama = build_tiny_llama(root / "llama") if not (root / "llama").exists() else root / "llama"
    bert = build_tiny_bert(root / "bert") if not (root / "bert").exists() else root / "bert"
    mc = _write_jsonl(root / "mc.jsonl", [
        {"question": f"the cat is {i}", "choices": ["red", "blue", "green"], "gold": i % 3} for i in range(6)])
    rows = []
    for split, n in (("train", 12), ("test", 6)):
        for i in range(n):
            label = ("yes", "no")[i % 2]
            rows.append({"text": f"the cat is {label} {i % 3}", "label": label, "split": split})
    cls = _write_jsonl(root / "cls.jsonl", rows)
    calib = root / "calib.txt"
    calib.write_text(TEXT)
    ctx = Ctx(root=root, llama=llama, bert=bert, mc=mc, cls=cls, calib=calib, pruned=root / "pruned.safetensors",
              child=root / "child.safetensors", quantized=root / "quantized.safetensors", eval_records=[],
              scratch=root / "cases")
    ctx.scratch.mkdir(exist_ok=True)
    for args in (["prune", str(llama), "-s", "0.5", "-o", str(ctx.pruned)],
                 ["prune", str(ctx.pruned), "-s", "0.7", "-o", str(ctx.child)],
                 ["quantize", str(llama), "-b", "4", "-o", str(ctx.quantized)]):
        if not Path(args[-1]).exists():
            made = jdna(ctx, args)
            assert made.code == 0, made.stderr
    for model in (llama, ctx.pruned):
        for shots in ("0", "1"):
            made = jdna(ctx, ["eval", str(model), "--task", f"file:{mc}", "--shots", shots])
            assert made.code == 0, made.stderr
            ctx.eval_records.append(Path(json.loads(made.stdout)["path"]))
    return ctx


# --- helpers used by the cases -----------------------------------------------------------------------------


def copy(ctx: Ctx, source: Path, name: str) -> Path:
    target = ctx.fresh(name) / source.name
    shutil.copy(source, target)
    return target


def taken(ctx: Ctx, name: str, suffix: str, content: bytes = b"precious\n") -> Path:
    path = ctx.fresh(name) / f"taken{suffix}"
    path.write_bytes(content)
    return path


def unchanged(path: Path, content: bytes = b"precious\n") -> Callable[[Ctx, Result], str | None]:
    return lambda ctx, result: None if path.read_bytes() == content else f"{path.name} was changed"


def no_debris(directory: Callable[[], Path]) -> Callable[[Ctx, Result], str | None]:
    def check(ctx: Ctx, result: Result) -> str | None:
        left = [p.name for p in directory().iterdir() if p.name.startswith(".")] if directory().exists() else []
        return f"debris: {left}" if left else None
    return check


def fifo(ctx: Ctx, name: str, suffix: str) -> Path:
    path = ctx.fresh(name) / f"pipe{suffix}"
    os.mkfifo(path)
    return path


def resave(source: Path, target: Path, edit: Callable[[dict, dict], None], rehash: bool = True) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    import jdna.artifact

    with safe_open(str(source), framework="pt") as handle:
        tensors = {n: handle.get_tensor(n) for n in handle.keys()}
        header = json.loads(handle.metadata()["jdna"])
    edit(header, tensors)
    if rehash and "header_sha256" in header:
        header["header_sha256"] = jdna.artifact.header_sha256(header)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={"jdna": json.dumps(header)})
    return target


def crafted(ctx: Ctx, name: str, edit: Callable[[dict, dict], None], source: Path | None = None,
            rehash: bool = True) -> Path:
    return resave(source or ctx.pruned, ctx.fresh(name) / "crafted.safetensors", edit, rehash)


def first_mask(header: dict) -> str:
    return sorted(header["masks"])[0]


def first_quant(header: dict) -> str:
    return sorted(header["quant"])[0]


def tensor_start(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    start = tensor_start(bytes(data))
    if how == "zero":
        data[start : start + 64] = bytes(64)
    elif how == "flip":
        data[(start + len(data)) // 2] ^= 0x10
    elif how == "truncate":
        data = data[: (start + len(data)) // 2]
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


def cache_case(ctx: Ctx, name: str, sparsity: str, how: str) -> list[str]:
    """A content-addressed artifact that is damaged after a first run; the rerun must recompute it."""
    store = Path(f"/tmp/jdna-hostile-cache-{name[1:]}")
    shutil.rmtree(store, ignore_errors=True)
    env = {"JDNA_RUNS": str(store)}
    first = jdna(ctx, ["prune", str(ctx.llama), "-s", sparsity], env=env)
    assert first.code == 0, first.stderr
    path = Path(json.loads(first.stdout)["path"])
    if how == "header":
        resave(path, path, lambda h, t: h["stats"].__setitem__("sparsity", 0.01), rehash=False)
    else:
        damage(path, how)
    return ["prune", str(ctx.llama), "-s", sparsity]


def recomputed(name: str) -> Callable[[Ctx, Result], str | None]:
    def check(ctx: Ctx, result: Result) -> str | None:
        from jdna.artifact import read_artifact

        record = json.loads(result.stdout)
        if record.get("cached") is not False:
            return "a damaged cache file was served"
        read_artifact(Path(record["path"]), verify=True)
        return None
    return check


def mode_is(path_of: Callable[[], Path], mode: int) -> Callable[[Ctx, Result], str | None]:
    def check(ctx: Ctx, result: Result) -> str | None:
        actual = path_of().stat().st_mode & 0o777
        return None if actual == mode else f"mode {oct(actual)}, expected {oct(mode)}"
    return check


def no_store(store: Callable[[], Path]) -> Callable[[Ctx, Result], str | None]:
    return lambda ctx, result: f"{store()} was created" if store().exists() else None


def task_file(ctx: Ctx, name: str, content: bytes) -> str:
    path = ctx.fresh(name) / "task.jsonl"
    path.write_bytes(content)
    return f"file:{path}"


ROW = b'{"question": "q", "choices": ["a", "b"], "gold": 0}\n'


def poisoned_bert(ctx: Ctx) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = ctx.fresh("poisoned") / "bert"
    shutil.copytree(ctx.bert, directory)
    weights = next(directory.glob("*.safetensors"))
    with safe_open(str(weights), framework="pt") as handle:
        tensors = {n: handle.get_tensor(n) for n in handle.keys()}
        metadata = handle.metadata()
    name = next(n for n in sorted(tensors) if "word_embeddings" in n)
    tensors[name][0, 0] = float("inf")
    save_file(tensors, str(weights), metadata=metadata)
    return directory


def race(ctx: Ctx, name: str, commands: list[list[str]], env: dict[str, str] | None = None) -> list[Result]:
    full_env = base_env(ctx)
    full_env.update(env or {})
    procs = [subprocess.Popen([sys.executable, "-m", "jdna", *args], env=full_env, cwd=ctx.root, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [Result(p.returncode, out, err, 0.0) for p, (out, err) in zip(procs, outputs)]


# --- the cases ---------------------------------------------------------------------------------------------


def cases() -> list[Case]:  # noqa: C901, PLR0915
    c: list[Case] = []
    S: dict[str, Any] = {}  # paths made by a case's args, read by its check

    def add(name: str, group: str, args: Callable[[Ctx], list[str]], expect: str = "fail", fragment: str = "",
            check: Callable[[Ctx, Result], str | None] | None = None, **extra: Any) -> None:
        c.append(Case(name, group, args, expect, fragment, check, **extra))

    def keep(key: str, value: Any) -> Any:
        S[key] = value
        return value

    # outputs
    add("prune -o an existing JSON file", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.6", "-o", str(keep("o1", taken(x, "o1", ".json")))],
        fragment="already exists", check=lambda x, r: unchanged(S["o1"])(x, r))
    add("prune -o an existing file with --force", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.6", "-o", str(taken(x, "o2", ".safetensors")), "--force"], "ok")
    add("prune A -o A", "outputs",
        lambda x: ["prune", str(keep("o3", copy(x, x.pruned, "o3"))), "-s", "0.7", "-o", str(S["o3"])],
        fragment="own input")
    add("prune A -o A --force", "outputs",
        lambda x: ["prune", str(keep("o4", copy(x, x.pruned, "o4"))), "-s", "0.7", "-o", str(S["o4"]), "--force"],
        fragment="own input")
    add("quantize child -o its parent --force", "outputs",
        lambda x: ["quantize", str(x.child), "-b", "4", "-o", str(x.pruned), "--force"], fragment="own input")
    add("prune -o the base weights --force", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.llama / "model.safetensors"), "--force"],
        fragment="own input")
    add("lowrank -o a symlink to its input --force", "outputs",
        lambda x: ["lowrank", str(x.pruned), "-r", "0.5", "-o",
                   str(_symlink(x.fresh("o7") / "l.safetensors", x.pruned)), "--force"], fragment="own input")
    add("prune -o a FIFO --force", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(fifo(x, "o8", ".safetensors")), "--force"],
        fragment="not a regular file")
    add("prune -o /dev/null --force", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", "/dev/null", "--force"], fragment="not a regular file")
    add("prune -o a directory", "outputs", lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.fresh("o10"))],
        fragment="directory")
    add("prune -o a path under a file", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.calib / "a.safetensors")], fragment="directory")
    add("prune -o a missing directory", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.root / "nope" / "a.safetensors")],
        fragment="does not exist")
    add("eval -o its own task file --force", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{keep('o13', copy(x, x.mc, 'o13'))}", "-o", str(S["o13"]),
                   "--force"], fragment="own input")
    add("eval --log-samples == -o", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "-o", str(x.fresh("o14") / "r.json"),
                   "--log-samples", str(x.scratch / "o14" / "r.json")], fragment="same file")
    add("eval --log-samples onto an existing file", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--log-samples",
                   str(keep("o15", taken(x, "o15", ".jsonl")))], fragment="already exists",
        check=lambda x, r: unchanged(S["o15"])(x, r))
    add("eval --log-samples into a FIFO", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--log-samples", str(fifo(x, "o16", ".jsonl"))],
        fragment="not a regular file")
    add("eval -o an unrelated existing JSON", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "-o", str(keep("o17", taken(x, "o17", ".json")))],
        fragment="already exists", check=lambda x, r: unchanged(S["o17"])(x, r))
    add("eval -o its own earlier record (cache)", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "-o", str(x.eval_records[0])], "ok",
        check=lambda x, r: None if json.loads(r.stdout)["cached"] else "not a cache hit")
    add("difficulty -o an existing file", "outputs",
        lambda x: ["difficulty", *map(str, x.eval_records), "--resamples", "10", "-o",
                   str(keep("o19", taken(x, "o19", ".json")))], fragment="already exists",
        check=lambda x, r: unchanged(S["o19"])(x, r))
    add("difficulty -o one of its input records --force", "outputs",
        lambda x: ["difficulty", *map(str, x.eval_records), "--resamples", "10", "-o", str(x.eval_records[1]),
                   "--force"], fragment="own input")
    add("plot -o an existing figure", "outputs",
        lambda x: ["plot", *map(str, x.eval_records), "--resamples", "10", "-o",
                   str(keep("o21", taken(x, "o21", ".png")))], fragment="already exists",
        check=lambda x, r: unchanged(S["o21"])(x, r))
    add("plot -o an existing figure --force", "outputs",
        lambda x: ["plot", *map(str, x.eval_records), "--resamples", "10", "-o", str(taken(x, "o22", ".svg")),
                   "--force"], "ok")
    add("plot -o a FIFO", "outputs",
        lambda x: ["plot", *map(str, x.eval_records), "-o", str(fifo(x, "o23", ".png"))], fragment="regular file")
    add("export -o an existing directory", "outputs",
        lambda x: ["export", str(x.pruned), "-o", str(x.fresh("o24"))], fragment="already exists")
    add("export -o a FIFO", "outputs",
        lambda x: ["export", str(x.pruned), "-o", str(fifo(x, "o25", ""))], fragment="already exists")
    add("prune -o a symlink to an unrelated file", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o",
                   str(_symlink(x.fresh("o26") / "l.safetensors", keep("o26", taken(x, "o26b", ".json"))))],
        fragment="already exists", check=lambda x, r: unchanged(S["o26"])(x, r))
    add("prune -o an artifact of this very step (cache)", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.pruned)], "ok",
        check=lambda x, r: None if json.loads(r.stdout)["cached"] else "not a cache hit")
    add("artifact mode under umask 022", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.41", "-o", str(keep("o28", x.fresh("o28") / "a.safetensors"))],
        "ok", check=lambda x, r: mode_is(lambda: S["o28"], 0o644)(x, r), umask=0o022)
    add("artifact mode under umask 077", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.42", "-o", str(keep("o29", x.fresh("o29") / "a.safetensors"))],
        "ok", check=lambda x, r: mode_is(lambda: S["o29"], 0o600)(x, r), umask=0o077)
    add("record and samples modes under umask 027", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--limit", "2", "-o",
                   str(keep("o30", x.fresh("o30") / "r.json")), "--log-samples", str(x.scratch / "o30" / "s.jsonl")],
        "ok", check=lambda x, r: mode_is(lambda: S["o30"], 0o640)(x, r)
        or mode_is(lambda: x.scratch / "o30" / "s.jsonl", 0o640)(x, r), umask=0o027)
    add("figure mode under umask 002", "outputs",
        lambda x: ["plot", *map(str, x.eval_records), "--resamples", "10", "-o",
                   str(keep("o31", x.fresh("o31") / "f.png"))], "ok",
        check=lambda x, r: mode_is(lambda: S["o31"], 0o664)(x, r), umask=0o002)
    add("quantize refused for its group size leaves no run store", "outputs",
        lambda x: ["quantize", str(x.llama), "-b", "4", "--granularity", "group", "--group-size", "7"],
        fragment="group size", env={"JDNA_RUNS": "/tmp/jdna-hostile-never-made-1"},
        check=no_store(lambda: Path("/tmp/jdna-hostile-never-made-1")))
    add("lowrank matching nothing leaves no run store", "outputs",
        lambda x: ["lowrank", str(x.llama), "-r", "0.5", "--include", "zzz*"],
        env={"JDNA_RUNS": "/tmp/jdna-hostile-never-made-2"},
        check=no_store(lambda: Path("/tmp/jdna-hostile-never-made-2")))
    add("prune past a file-size limit (-o)", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(keep("o34", x.fresh("o34")) / "a.safetensors")],
        fragment="File too large", fsize=2048,
        check=lambda x, r: f"left {list(S['o34'].iterdir())}" if list(S["o34"].iterdir()) else None)
    add("prune past a file-size limit (run store)", "outputs",
        lambda x: ["prune", str(x.llama), "-s", "0.51"], fragment="File too large", fsize=2048,
        env={"JDNA_RUNS": "/tmp/jdna-hostile-store-35"},
        check=lambda x, r: "debris in the store" if [p for p in Path("/tmp/jdna-hostile-store-35").rglob("*")
                                                      if p.is_file()] else None)
    add("plot --force past a file-size limit keeps the old figure", "outputs",
        lambda x: ["plot", *map(str, x.eval_records), "-o", str(keep("o36", taken(x, "o36", ".png", b"old figure"))),
                   "--force"], fragment="File too large", fsize=2048,
        check=lambda x, r: unchanged(S["o36"], b"old figure")(x, r))
    add("eval with samples past a file-size limit leaves neither", "outputs",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--shots", "1", "-o",
                   str(keep("o37", x.fresh("o37")) / "r.json"), "--log-samples", str(x.scratch / "o37" / "s.jsonl")],
        fragment="s.jsonl", fsize=1500,
        check=lambda x, r: f"left {list(S['o37'].iterdir())}" if list(S["o37"].iterdir()) else None)
    add("record to a full stdout", "outputs", lambda x: ["info", str(x.pruned)], fragment="stdout",
        stdout_path="/dev/full")
    add("export into a fresh directory (mode follows umask 022)", "outputs",
        lambda x: ["export", str(x.pruned), "-o", str(keep("o39", x.fresh("o39") / "hf"))], "ok",
        check=lambda x, r: mode_is(lambda: S["o39"], 0o755)(x, r), umask=0o022)

    # caches
    for index, how in enumerate(("zero", "flip", "truncate", "empty", "header")):
        add(f"cache hit on a {how} artifact is recomputed", "caches",
            lambda x, i=index, h=how: cache_case(x, f"c{i}", f"0.{31 + i}", h), "ok",
            check=recomputed(f"c{index}"), env={"JDNA_RUNS": f"/tmp/jdna-hostile-cache-{index}"})
    add("a clean cache hit is served", "caches", lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.pruned)],
        "ok", check=lambda x, r: None if json.loads(r.stdout)["cached"] else "not served")
    add("an unreadable cached eval record is recomputed", "caches",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--limit", "3", "-o",
                   str(keep("c7", taken(x, "c7", ".json", b"{not json"))), "--force"], "ok")
    add("info --verify on a flipped artifact", "caches",
        lambda x: ["info", "--verify", str(_damaged(x, "c8", "flip"))], fragment="corrupt")
    add("info --verify on an edited header", "caches",
        lambda x: ["info", "--verify", str(crafted(x, "c9", lambda h, t: h["stats"].__setitem__("sparsity", 0.9),
                                                   rehash=False))], fragment="header was edited")
    add("a child whose parent changed", "caches",
        lambda x: ["info", str(_changed_parent(x, "c10"))], fragment="changed")
    add("a child whose parent is gone", "caches",
        lambda x: ["info", str(_orphan(x, "c11"))], fragment="missing")

    # headers
    header_lies: list[tuple[str, Callable[[dict, dict], None], Path | None, str]] = [
        ("a declared mask is missing", lambda h, t: t.pop(f"mask.{first_mask(h)}"), None, "declared"),
        ("a stored mask is undeclared", lambda h, t: h["masks"].pop(first_mask(h)), None, "declared"),
        ("a mask shape asking for 931 GiB", lambda h, t: h["masks"].__setitem__(first_mask(h), [1 << 20, 1 << 23]),
         None, "declares shape"),
        ("a negative mask shape", lambda h, t: h["masks"].__setitem__(first_mask(h), [-1, 8]), None, "invalid shape"),
        ("a float mask shape", lambda h, t: h["masks"].__setitem__(first_mask(h), [1.5, 8]), None, "invalid shape"),
        ("masks that are not a table", lambda h, t: h.__setitem__("masks", [1, 2]), None, "not a table"),
        ("pruned artifact calling itself quantized", lambda h, t: h.__setitem__("kind", "quantized"), None, "quant"),
        ("pruned artifact calling itself lowrank", lambda h, t: h.__setitem__("kind", "lowrank"), None, "lowrank"),
        ("an unknown kind", lambda h, t: h.__setitem__("kind", "distilled"), None, "unknown artifact kind"),
        ("quant entry with 9 bits", lambda h, t: h["quant"][first_quant(h)].__setitem__("bits", 9), "q", "malformed"),
        ("quant codes missing", lambda h, t: t.pop(f"codes.{first_quant(h)}"), "q", "no codes"),
        ("quant shape that does not fit its codes", lambda h, t: h["quant"][first_quant(h)].__setitem__(
            "shape", [4096, 4096]), "q", "do not fit"),
        ("quantized calling itself pruned", lambda h, t: h.__setitem__("kind", "pruned"), "q", "does not hold"),
        ("a stray tensor", lambda h, t: t.__setitem__("weight.evil", t[next(iter(t))].clone()), "q", "does not hold"),
    ]
    for index, (name, edit, source, fragment) in enumerate(header_lies):
        add(f"info: {name}", "headers",
            lambda x, i=index, e=edit, s=source: ["info", str(crafted(x, f"h{i}", e, x.quantized if s else None))],
            fragment=fragment)
    add("export of a header that lies about its masks", "headers",
        lambda x: ["export", str(crafted(x, "h20", lambda h, t: t.pop(f"mask.{first_mask(h)}"))), "-o",
                   str(x.fresh("h20b") / "hf")], fragment="does not match")
    add("eval of a header that lies about its kind", "headers",
        lambda x: ["eval", str(crafted(x, "h21", lambda h, t: h.__setitem__("kind", "quantized"))), "--task",
                   f"file:{x.mc}"], fragment="does not match")
    add("NaN statistics print as standard JSON", "headers",
        lambda x: ["info", str(crafted(x, "h22", lambda h, t: h["stats"].update(sparsity=float("nan"),
                                                                                bits_per_weight=float("inf"))))],
        "ok")
    add("a future format version", "headers",
        lambda x: ["info", str(crafted(x, "h23", lambda h, t: h.__setitem__("version", 2)))], fragment="version 2")

    # training
    for flag, value in (("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "3"),
                        ("--weight-decay", "inf"), ("--weight-decay", "-1"), ("--warmup", "1.5"),
                        ("--warmup", "nan"), ("--seed", "-1"), ("--epochs", "0"), ("--batch-size", "0")):
        add(f"finetune {flag} {value}", "training",
            lambda x, f=flag, v=value: ["finetune", str(x.bert), "--task", f"file:{x.cls}", "--mode", "dense", f, v],
            fragment=flag)
    add("finetune of a model whose weights hold inf", "training",
        lambda x: ["finetune", str(poisoned_bert(x)), "--task", f"file:{x.cls}", "--mode", "dense", "--epochs", "1",
                   "--batch-size", "4", "-o", str(keep("t13", x.fresh("t13b") / "ft.safetensors"))],
        fragment="training diverged", check=lambda x, r: "an artifact was written" if S["t13"].exists() else None)
    add("finetune that trains", "training",
        lambda x: ["finetune", str(x.bert), "--task", f"file:{x.cls}", "--mode", "dense", "--epochs", "1",
                   "--batch-size", "4", "-o", str(x.fresh("t14") / "ft.safetensors")], "ok")
    add("finetune -o an existing file", "training",
        lambda x: ["finetune", str(x.bert), "--task", f"file:{x.cls}", "--mode", "dense", "--epochs", "1", "-o",
                   str(keep("t15", taken(x, "t15", ".safetensors")))], fragment="already exists",
        check=lambda x, r: unchanged(S["t15"])(x, r))

    # numbers
    numbers = [
        ("prune --seed -1", lambda x: ["prune", str(x.llama), "-s", "0.5", "--seed", "-1"], "--seed"),
        ("quantize --seed -1", lambda x: ["quantize", str(x.llama), "-b", "4", "--seed", "-1"], "--seed"),
        ("eval --seed -1", lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--seed", "-1"], "--seed"),
        ("lmc --seed -1", lambda x: ["lmc", str(x.llama), str(x.llama), "--task", f"file:{x.mc}", "--seed", "-1"],
         "--seed"),
        ("difficulty --seed -1", lambda x: ["difficulty", *map(str, x.eval_records), "--seed", "-1"], "--seed"),
        ("plot --seed -1", lambda x: ["plot", *map(str, x.eval_records), "--seed", "-1"], "--seed"),
        ("lowrank --energy nan", lambda x: ["lowrank", str(x.llama), "--energy", "nan"], "--energy"),
        ("prune -s nan", lambda x: ["prune", str(x.llama), "-s", "nan"], "sparsity"),
        ("prune -s inf", lambda x: ["prune", str(x.llama), "-s", "inf"], "sparsity"),
        ("quantize --group-size -5", lambda x: ["quantize", str(x.llama), "-b", "4", "--granularity", "group",
                                                "--group-size", "-5"], "--group-size"),
        ("quantize gptq --damp nan", lambda x: ["quantize", str(x.llama), "-b", "4", "--method", "gptq", "--calib",
                                                str(x.calib), "--damp", "nan"], "--damp"),
        ("eval --limit -3", lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--limit", "-3"], "--limit"),
        ("eval --shots 10**30", lambda x: ["eval", str(x.llama), "--task", f"file:{x.mc}", "--shots", "1" + "0" * 30],
         "shots"),
        ("plot --dpi 0", lambda x: ["plot", *map(str, x.eval_records), "--dpi", "0"], "--dpi"),
        ("difficulty --resamples -1", lambda x: ["difficulty", *map(str, x.eval_records), "--resamples", "-1"],
         "--resamples"),
        ("prune wanda --calib-samples 0", lambda x: ["prune", str(x.llama), "-s", "0.5", "--method", "wanda",
                                                     "--calib", str(x.calib), "--calib-samples", "0"], "calib"),
        ("prune --owl-lambda nan", lambda x: ["prune", str(x.llama), "-s", "0.5", "--owl", "--owl-lambda", "nan"],
         "lambda"),
        ("lmc --points 1", lambda x: ["lmc", str(x.llama), str(x.llama), "--task", f"file:{x.mc}", "--points", "1"],
         "--points"),
    ]
    for name, args, fragment in numbers:
        add(name, "numbers", args, fragment=fragment)
    add("lowrank --rank-ratio 1e-9 (rank 1)", "numbers",
        lambda x: ["lowrank", str(x.llama), "-r", "1e-9", "-o", str(x.fresh("n19") / "l.safetensors")], "ok")

    # files
    add("a task file with a UTF-8 BOM", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f1", b"\xef\xbb\xbf" + x.mc.read_bytes())], "ok")
    add("a latin-1 task file", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f2", ROW.replace(b'"q"', b'"caf\xe9"'))],
        fragment="UTF-8")
    add("a binary task file", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f3", os.urandom(2048))], fragment="line")
    add("a 5,000-digit integer in a row", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f4", ROW.replace(b": 0", b": " + b"9" * 5000))],
        fragment="digits")
    add("100,000-deep nesting in a row", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f5", b"[" * 100_000 + b"]" * 100_000 + b"\n")],
        fragment="nested")
    add("a 9 MB row", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f6", ROW.replace(b'"q"', b'"' + b"q" * 9_000_000
                                                                                    + b'"'))], fragment="characters")
    add("an unknown metric in a task header", "files",
        lambda x: ["eval", "/no/such/model", "--task", task_file(
            x, "f7", b'{"jdna_task": {"metrics": ["acuracy"]}}\n' + ROW * 3)], fragment="unknown metric")
    add("a task path that is a directory", "files",
        lambda x: ["eval", str(x.llama), "--task", f"file:{x.fresh('f8')}"], fragment="task file")
    add("a task path that is a FIFO", "files",
        lambda x: ["eval", str(x.llama), "--task", f"file:{fifo(x, 'f9', '.jsonl')}"], fragment="task file")
    add("duplicate option texts are warned about", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(
            x, "f10", b"".join(b'{"question": "q", "choices": ["a", "b", "a"], "gold": 2, "split": "test", "id": %d}\n'
                               % i for i in range(3)))], "ok",
        check=lambda x, r: None if "twice" in r.stderr else "no warning")
    add("a latin-1 baselines file", "files",
        lambda x: ["difficulty", *map(str, x.eval_records), "--baselines",
                   str(_bytes(x.fresh("f11") / "b.csv", b"task,metric,human\ncaf\xe9,acc,1\n"))], fragment="UTF-8")
    add("a binary baselines file", "files",
        lambda x: ["difficulty", *map(str, x.eval_records), "--baselines",
                   str(_bytes(x.fresh("f12") / "b.csv", bytes(range(256)) * 8))], fragment="baseline")
    add("a baselines file with a NUL byte", "files",
        lambda x: ["difficulty", *map(str, x.eval_records), "--baselines",
                   str(_bytes(x.fresh("f13") / "b.csv", b"task,metric,human\nx\0y,acc,1\n"))], "any")
    add("an empty task file", "files",
        lambda x: ["eval", str(x.llama), "--task", task_file(x, "f14", b"")], fragment="no rows")
    add("a binary calibration file", "files",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "--method", "wanda", "--calib",
                   str(_bytes(x.fresh("f15") / "c.txt", os.urandom(4096)))], "any")
    add("an empty calibration file", "files",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "--method", "wanda", "--calib",
                   str(_bytes(x.fresh("f16") / "c.txt", b""))], fragment="calib")
    add("a model directory without config.json", "files",
        lambda x: ["prune", str(x.fresh("f17")), "-s", "0.5"], fragment="config.json")
    add("a record on stdin whose path is a plain directory", "files", lambda x: ["info"], fragment="config.json",
        stdin=json.dumps({"kind": "pruned", "path": "/tmp"}) + "\n")

    # environment
    add("JDNA_HOME is a file", "environment", lambda x: ["prune", str(x.llama), "-s", "0.5"],
        fragment="JDNA_HOME", env={"JDNA_HOME": "/etc/hostname"})
    add("JDNA_RUNS is a file", "environment", lambda x: ["prune", str(x.llama), "-s", "0.52"],
        fragment="JDNA_RUNS", env={"JDNA_RUNS": "/etc/hostname"})
    add("JDNA_BIGBENCH is an empty directory", "environment", lambda x: ["tasks", "--bigbench"],
        fragment="JDNA_BIGBENCH", env={"JDNA_BIGBENCH": "/tmp"})
    add("JDNA_BIGBENCH is a file", "environment", lambda x: ["tasks", "--bigbench"],
        fragment="JDNA_BIGBENCH", env={"JDNA_BIGBENCH": "/etc/hostname"})
    add("a FIFO given as MODEL", "environment", lambda x: ["info", str(fifo(x, "e5", ""))],
        fragment="not a regular file")
    add("an unknown BIG-bench task among ~1,000 is a short line", "environment",
        lambda x: ["eval", str(x.llama), "--task", "bigbench:no_such_tsk"],
        fragment="BIG-bench task", env={"JDNA_BIGBENCH": str(Path.home() / ".cache/jdna/bigbench/benchmark_tasks")},
        check=lambda x, r: "line too long" if len(r.stderr) > 600 else None)
    add("JDNA_RUNS empty means ./runs", "environment",
        lambda x: ["prune", str(x.llama), "-s", "0.5", "-o", str(x.pruned)], "ok", env={"JDNA_RUNS": ""})
    add("JDNA_RUNS under a read-only path (a file's child)", "environment",
        lambda x: ["prune", str(x.llama), "-s", "0.53"], fragment="not a directory",
        env={"JDNA_RUNS": "/etc/hostname/runs"})
    add("a hub id that is not cached, offline", "environment",
        lambda x: ["info", "someone/not-a-model-xyz"], fragment="HF_HUB_OFFLINE")

    # concurrency
    add("two prunes of different sparsity racing for one -o", "concurrency", lambda x: _race_distinct(x), "ok",
        check=lambda x, r: S.get("race1"))
    add("two identical prunes into the run store", "concurrency", lambda x: _race_same(x), "ok",
        check=lambda x, r: S.get("race2"))
    add("two evals of different tasks racing for one -o", "concurrency", lambda x: _race_evals(x), "ok",
        check=lambda x, r: S.get("race3"))

    def _race_distinct(x: Ctx) -> list[str]:
        target = x.fresh("x1") / "a.safetensors"
        results = race(x, "x1", [["prune", str(x.llama), "-s", s, "-o", str(target)] for s in ("0.2", "0.6")])
        S["race1"] = _one_winner(target, results, artifact=True)
        return ["info", str(x.pruned)]

    def _race_same(x: Ctx) -> list[str]:
        store = x.fresh("x2")
        results = race(x, "x2", [["prune", str(x.llama), "-s", "0.44", "--method", "random"]] * 2,
                       env={"JDNA_RUNS": str(store)})
        files = [p for p in store.rglob("*") if p.is_file()]
        ok = all(r.code == 0 for r in results) and len(files) == 1
        S["race2"] = None if ok else f"codes {[r.code for r in results]}, files {files}"
        return ["info", str(x.pruned)]

    def _race_evals(x: Ctx) -> list[str]:
        target = x.fresh("x3") / "r.json"
        other = copy(x, x.mc, "x3b")
        other.write_text(other.read_text().replace("the cat", "a dog"))
        results = race(x, "x3", [["eval", str(x.llama), "--task", f"file:{t}", "-o", str(target)]
                                 for t in (x.mc, other)])
        S["race3"] = _one_winner(target, results, artifact=False)
        return ["info", str(x.pruned)]

    return c


def _one_winner(target: Path, results: list[Result], artifact: bool) -> str | None:
    winners = [json.loads(r.stdout) for r in results if r.code == 0]
    losers = [r for r in results if r.code != 0]
    if len(winners) != 1 or len(losers) != 1 or losers[0].code != 2:
        return f"codes {[r.code for r in results]}"
    if artifact:
        from jdna.artifact import read_artifact

        actual = read_artifact(target, verify=True).id
    else:
        actual = json.loads(target.read_text())["id"]
    return None if actual == winners[0]["id"] else "the winner's record describes another file"


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _damaged(ctx: Ctx, name: str, how: str) -> Path:
    path = copy(ctx, ctx.pruned, name)
    damage(path, how)
    return path


def _changed_parent(ctx: Ctx, name: str) -> Path:
    directory = ctx.fresh(name)
    parent = directory / f"{name}-parent.safetensors"  # unique: the parent lookup searches sibling folders
    shutil.copy(ctx.pruned, parent)
    child = directory / "child.safetensors"
    made = jdna(ctx, ["prune", str(parent), "-s", "0.8", "-o", str(child)])
    assert made.code == 0, made.stderr
    damage(parent, "flip")
    return child


def _orphan(ctx: Ctx, name: str) -> Path:
    child = _changed_parent(ctx, name)
    (child.parent / f"{name}-parent.safetensors").unlink()
    return child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "jdna-hostile"))
    parser.add_argument("--only", default="")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory afterwards.")
    parser.add_argument("--in-process", action="store_true",
                        help="Run the CLI in this process (much faster; file-size limits and stdout files still fork).")
    options = parser.parse_args()
    global IN_PROCESS
    IN_PROCESS = options.in_process
    if IN_PROCESS:
        import torch

        torch.set_num_threads(1)
    root = Path(options.workdir)
    ctx = build(root)
    selected = [case for case in cases() if options.only in case.name or options.only == case.group]
    failures: list[tuple[Case, str]] = []
    started = time.monotonic()
    for number, case in enumerate(selected, 1):
        try:
            args = case.args(ctx)
            result = jdna(ctx, args, env=case.env, stdin=case.stdin, umask=case.umask, fsize=case.fsize,
                          stdout_path=case.stdout_path)
            problem = contract(case, result)
            if problem is None and case.check is not None:
                problem = case.check(ctx, result)
        except Exception as error:  # a broken case is reported, not fatal to the pass
            problem = f"case error: {type(error).__name__}: {error}"
        status = "ok  " if problem is None else "FAIL"
        print(f"{status} {number:3d} [{case.group}] {case.name}" + (f": {problem}" if problem else ""), flush=True)
        if problem is not None:
            failures.append((case, problem))
    print(f"\n{len(selected)} cases, {len(selected) - len(failures)} passed, {len(failures)} failed "
          f"({time.monotonic() - started:.0f} s)")
    for case, problem in failures:
        print(f"  FAIL [{case.group}] {case.name}: {problem}")
    if not options.keep:
        shutil.rmtree(root, ignore_errors=True)
        for extra in Path("/tmp").glob("jdna-hostile-*"):
            shutil.rmtree(extra, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
