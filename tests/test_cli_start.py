"""Start fast and find things (issue 16, parts 2 and 5): lazy imports, help, completion, `jdna runs`, flag aliases
and their suggestions, and progress with rate and ETA on stderr only."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jdna.progress import Meter, Reporter
from tests.cli import run

pytestmark = pytest.mark.usefixtures("one_thread")

JDNA = str(Path(sys.executable).with_name("jdna"))
HEAVY = ("torch", "transformers", "matplotlib")


def _modules_after(*args: str) -> set[str]:
    code = (
        "import json, sys\nfrom jdna.commands.app import main\n"
        f"code = main({list(args)!r})\n"
        f"sys.stderr.write(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_help_and_version_import_no_heavy_library() -> None:
    assert _modules_after("--version") == set()
    assert _modules_after("--help") == set()
    assert _modules_after("tasks", "--help") == set()


def test_listed_help_matches_each_commands_docstring() -> None:
    from jdna.commands.app import COMMANDS, load_command, short_help

    for name in COMMANDS:
        command = load_command(name)
        first = (command.help or "").strip().splitlines()[0]
        assert first == short_help(name), name


def test_tasks_help_shows_bracketed_specs() -> None:
    result = run("tasks", "--help")
    assert result.code == 0, result.stderr
    assert "bigbench:NAME[/SUBTASK]" in result.stdout


def test_shell_completion_completes_commands_and_options() -> None:
    env = {**os.environ, "_JDNA_COMPLETE": "complete_bash", "COMP_WORDS": "jdna ev", "COMP_CWORD": "1"}
    done = subprocess.run([JDNA], capture_output=True, text=True, env=env, timeout=120)
    assert "eval" in done.stdout.split()
    env.update(COMP_WORDS="jdna eval --num", COMP_CWORD="2")
    done = subprocess.run([JDNA], capture_output=True, text=True, env=env, timeout=120)
    assert "--num-fewshot" in done.stdout.split()
    env.update(COMP_WORDS="jdna eval --task mm", COMP_CWORD="3")
    done = subprocess.run([JDNA], capture_output=True, text=True, env=env, timeout=120)
    assert "mmlu" in done.stdout.split()
    # Typer detects the shell from the parent process: run it from bash (the "; true" keeps bash the parent).
    shown = subprocess.run(["bash", "-c", f"{JDNA} --show-completion; true"], capture_output=True, text=True,
                           timeout=120)
    assert "_JDNA_COMPLETE=complete_bash" in shown.stdout, shown.stderr


def test_unknown_command_and_option_suggest_the_right_name() -> None:
    result = run("evl")
    assert result.code == 2 and "did you mean 'eval'" in result.stderr and "jdna evl --help" not in result.stderr
    result = run("prune", "x", "--sparsity-typ", "2:4")
    assert result.code == 2 and "did you mean --pattern?" in result.stderr
    result = run("prune", "x", "--sparsty", "0.5")
    assert result.code == 2 and "did you mean --sparsity?" in result.stderr


def test_wanda_and_gptq_flag_spellings_are_aliases(tiny_llama: Path, calib_file: Path) -> None:
    ours = run("prune", str(tiny_llama), "--sparsity", "0.5", "--pattern", "2:4", "--method", "wanda",
               "--calib", str(calib_file), "--calib-samples", "2", "--calib-seqlen", "16")
    theirs = run("prune", "--model", str(tiny_llama), "--sparsity_ratio", "0.5", "--sparsity_type", "2:4",
                 "--prune_method", "wanda", "--calib", str(calib_file), "--nsamples=2", "--seqlen", "16")
    assert ours.code == 0 and theirs.code == 0, theirs.stderr
    assert theirs.record["id"] == ours.record["id"] and theirs.record["cached"] is True
    assert run("prune", str(tiny_llama), "--sparsity-type", "2:4", "-s", "0.5").code == 0
    quantized = run("quantize", str(tiny_llama), "--wbits", "4")
    assert quantized.code == 0 and quantized.record["id"] == run("quantize", str(tiny_llama), "-b", "4").record["id"]


def _prune(model: Path, sparsity: str, stdin: str | None = None) -> dict:
    args = ["prune", str(model), "-s", sparsity] if stdin is None else ["prune", "-s", sparsity]
    result = run(*args, stdin=stdin)
    assert result.code == 0, result.stderr
    return result.record


def test_runs_lists_filters_and_collects_garbage(tiny_llama: Path, tmp_path: Path) -> None:
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"question": f"q {i}", "choices": ["cat", "dog"], "gold": i % 2,
                                        "split": "test"}) + "\n" for i in range(4)))
    kept = _prune(tiny_llama, "0.5")
    evaluated = run("eval", "--task", f"file:{task}", stdin=json.dumps(kept))
    assert evaluated.code == 0, evaluated.stderr
    parent = _prune(tiny_llama, "0.3")
    child = run("quantize", "-b", "4", stdin=json.dumps(parent)).record  # names `parent`, referenced by nothing
    runs_root = Path(os.environ["JDNA_RUNS"])
    stale = runs_root / "pruned" / ".x.safetensors.abc.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = runs_root / "pruned" / ".y.safetensors.def.tmp"
    fresh.write_bytes(b"partial")

    table = run("runs")
    assert table.code == 0 and kept["path"] in table.stdout and "eval" in table.stdout and "acc=" in table.stdout
    listed = json.loads(run("runs", "--kind", "pruned", "--json").stdout)
    assert {r["path"] for r in listed["runs"]} == {kept["path"], parent["path"]}
    by_task = json.loads(run("runs", "--task", f"file:{task}", "--json").stdout)["runs"]
    assert [r["kind"] for r in by_task] == ["eval"]
    assert "did you mean 'eval'" in run("runs", "--kind", "evl").stderr

    dry = run("runs", "gc")
    assert dry.code == 0 and json.loads(dry.stdout)["dry_run"] is True
    doomed = set(json.loads(dry.stdout)["files"])
    assert doomed == {child["path"], str(stale)}  # the parent is named by the child's header: kept
    assert all(Path(p).exists() for p in doomed)
    done = run("runs", "gc", "--delete")
    assert done.code == 0 and set(json.loads(done.stdout)["files"]) == doomed
    assert not any(Path(p).exists() for p in doomed)
    assert Path(kept["path"]).exists() and Path(parent["path"]).exists() and fresh.exists()
    assert Path(evaluated.record["path"]).exists()
    # The parent is unreferenced now that its child is gone: the next collection takes it.
    assert json.loads(run("runs", "gc").stdout)["files"] == [parent["path"]]


class _Recorder(Reporter):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def progress(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))


def test_scorers_report_progress_per_batch(tiny_llama: Path) -> None:
    from jdna.models import load_model, resolve
    from jdna.scoring import ChoiceRequest, greedy_generate, loglikelihood_choices

    model, tokenizer = load_model(resolve(str(tiny_llama)))
    requests = [ChoiceRequest(f"the cat {i}", [" dog", " red river"]) for i in range(7)]
    reporter = _Recorder()
    quiet = loglikelihood_choices(model, tokenizer, requests, batch_size=2)
    loud = loglikelihood_choices(model, tokenizer, requests, batch_size=2, progress=reporter.stage("scoring"))
    assert [s.logprobs for s in loud] == [s.logprobs for s in quiet]
    done = [d for _, d, _ in reporter.calls]
    assert done == sorted(done) and done[-1] == 7 and {t for _, _, t in reporter.calls} == {7}
    assert done[0] == 0 and len(done) >= 5  # the start, then one report per forward batch of 2
    generated = _Recorder()
    greedy_generate(model, tokenizer, ["the cat"] * 5, 3, ["\n"], batch_size=2, progress=generated.stage("gen"))
    assert [d for _, d, _ in generated.calls] == [0, 2, 4, 5]


def test_meter_rate_and_eta_by_hand() -> None:
    now = [100.0]
    meter = Meter(clock=lambda: now[0])
    meter.update("scoring", 0, 40)
    assert meter.describe() == "0/40 · ETA …"
    now[0] = 110.0
    meter.update("scoring", 10, 40)
    assert meter.rate == pytest.approx(1.0) and meter.eta == pytest.approx(30.0)
    assert meter.describe() == "10/40 · 1.0/s · ETA 30s"
    now[0] = 150.0
    meter.update("scoring", 40, 40)
    assert meter.describe() == "40/40 · 1.2s/it · 50s"  # 0.8/s: slower than one a second
    meter.update("next stage", 1, 4)  # a new stage restarts the clock
    assert meter.elapsed == 0 and meter.eta is None
    now[0] = 152.0
    meter.update("train loss 0.9", 2, 4)  # a running figure in the name: the same stage, the clock runs on
    assert meter.elapsed == 2.0 and meter.rate == pytest.approx(0.5)
    meter.update("pruning blocks", 1, 4)  # back to 1: a new stage
    assert meter.elapsed == 0


def test_progress_goes_to_stderr_only_when_asked(tiny_llama: Path, tmp_path: Path) -> None:
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps({"question": f"q {i}", "choices": ["cat", "dog"], "gold": 0,
                                        "split": "test"}) + "\n" for i in range(6)))
    quiet = run("eval", str(tiny_llama), "--task", f"file:{task}", "--batch-size", "2")
    assert quiet.code == 0 and "scoring:" not in quiet.stderr  # stderr is not a terminal
    loud = run("eval", str(tiny_llama), "--task", f"file:{task}", "--batch-size", "2", "--force", "--progress")
    assert loud.code == 0 and "scoring: 6/6" in loud.stderr and len(loud.stdout.splitlines()) == 1
    assert "scoring:" not in loud.stdout and "ETA" not in loud.stdout


def test_cli_reporter_draws_a_bar_with_eta_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from jdna.commands import common

    buffer = io.StringIO()
    # A console of its own (the shared one writes to whatever sys.stderr is at the time; keep it that way).
    monkeypatch.setattr(common, "console", Console(file=buffer, highlight=False))
    monkeypatch.setattr(common, "progress_forced", None)
    reporter = common.CliReporter("eval")
    reporter.interactive = reporter.enabled = True
    now = [0.0]
    reporter.meter = Meter(clock=lambda: now[0])
    for done in range(0, 5):
        now[0] = float(done)
        reporter.progress("scoring", done, 4)
    text = buffer.getvalue()
    assert "\r" in text and "scoring [" in text and "ETA 2s" in text and text.endswith("4/4 · 1.0/s · 4s\n")
    assert "JDNA_PROGRESS" in inspect.getsource(common.progress_wanted)
