"""jdna difficulty: normalised performance vs task difficulty, and whether the drop is monotone in difficulty."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from tabulate import tabulate

from jdna.analysis import BaselineTable, analyse, load_records, parse_axis
from jdna.commands.common import console, emit
from jdna.errors import JdnaError, check_seed
from jdna.io import canonical_json, sha256_text, write_json_atomic
from jdna.outputs import check_target, claim_record, input_files
from jdna.paths import expand, runs_dir


def _ci(stat: dict[str, Any]) -> str:
    value, ci = stat.get("value"), stat.get("ci95")
    if value is None:
        return "n/a"
    text = f"{value:+.2f}"
    return f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else text


def _group_name(group: dict[str, Any]) -> str:
    task = group["task"] or "across " + ", ".join(group["tasks"])
    parts = [task, f"{group['compression_kind']}/{group['method']}"]
    if group.get("transfer"):
        parts.append(f"{group['transfer']} transfer")
    return " · ".join(parts)


def table(record: dict[str, Any]) -> str:
    """The per-level table a researcher reads: normalised performance easiest → hardest, ρ, τ, verdict."""
    rows = []
    for group in record["groups"]:
        name = _group_name(group)
        axis = group["axis"].split(":")[0]
        for level in group["levels"]:
            x = f"s={level['level']:g}" if group["level_axis"] == "sparsity" else f"{level['level']:g} bpw"
            points = "  ".join(f"{label}:{value:.3f}" for label, value in zip(level["labels"], level["normalised"]))
            rows.append([name, x, f"{axis} {points}", _ci(level["spearman"]), _ci(level["kendall"]),
                         len(level["violations"]), level["verdict"]])
            name = ""
    return tabulate(
        rows,
        headers=["group", "level", "normalised (easiest → hardest)", "Spearman ρ [95% CI]", "Kendall τ [95% CI]",
                 "violations", "verdict"],
        tablefmt="simple",
    )


def irreversibility_table(record: dict[str, Any]) -> str:
    rows = [
        [r["task"], r["mode"], f"{r['compression_kind']}/{r['method']}", f"{r['level']:g}",
         f"{r['axis']}={r['label']}", f"{r['transfer']:.3f}", f"{r['dense_transfer']:.3f}", f"{r['gap']:+.3f}"]
        for r in record["irreversibility"]
    ]
    return tabulate(rows, headers=["task", "transfer", "method", "level", "difficulty", "metric",
                                   "dense transfer", "gap"], tablefmt="simple", disable_numparse=True)


def difficulty(
    records: Annotated[
        list[str] | None,
        typer.Argument(help="Eval record files, globs or directories (e.g. runs/eval), or '-'/nothing for stdin."),
    ] = None,
    axis: Annotated[
        list[str] | None,
        typer.Option(
            "--axis",
            help="Difficulty axis NAME[:harder=lower|higher] (repeatable): train_examples, train_fraction, shots, "
            "context_tokens, options, or gap (across tasks: the normalised human–LLM gap). Default: the knob "
            "that varies within each task, with the study's directions.",
        ),
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(help="Human baselines (.csv: task,metric,human[,citation]; or .json), overriding the shipped "
                     "table for across-task difficulty."),
    ] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples over items and seeds.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Record path (default: content-addressed under ./runs/difficulty/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing -o file.")] = False,
) -> None:
    """Normalised performance by task difficulty, and the Junk DNA hypothesis statistics per compression level.

    Compressed ÷ dense with the same base, task and knobs (dense ÷ compressed for perplexity): 1 = no loss.

    Per level: Spearman ρ and Kendall τ of difficulty vs drop, bootstrap 95% CIs over items and seeds, violations.

    Methods are grouped apart; fine-tuned records are compared with dense transfer. See docs/analysis.md.
    """
    check_seed(seed)
    axes = [parse_axis(a) for a in axis] if axis else None
    table_ = BaselineTable.load(baselines)
    out = expand(output) if output else None
    if out is not None and out.is_dir():
        raise JdnaError(f"-o '{output}' is a directory: give a file path ending in .json")
    if out is not None:
        check_target(out, "-o")
    loaded = load_records(records or [], stdin=sys.stdin, kinds=("eval",))
    analysis = analyse(loaded, axes=axes, baselines=table_, n_resamples=resamples, seed=seed)
    body = analysis.record()
    record_id = sha256_text(canonical_json([body, sorted(str(r.get("id") or r.get("path")) for r in loaded)]))
    explicit = out is not None
    out = out if out is not None else runs_dir() / "difficulty" / f"{record_id[:20]}.json"
    claim = claim_record(out, record_id, explicit, force, input_files(records, loaded))
    record = {"kind": "difficulty", "path": str(out), "id": record_id, "n_records": len(loaded), **body}
    write_json_atomic(out, record, claim)

    console.print(table(record), markup=False, highlight=False, soft_wrap=True)
    if record["irreversibility"]:
        console.print("\nirreversibility (after fine-tuning, against dense transfer; gap > 0 = worse):")
        console.print(irreversibility_table(record), markup=False, highlight=False, soft_wrap=True)
    # soft_wrap: lines go out whole (the terminal wraps them), so the rule can be grepped from a log.
    console.print(f"\nrule: {record['rule']}", markup=False, highlight=False, soft_wrap=True)
    for note in record["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    emit(record)
