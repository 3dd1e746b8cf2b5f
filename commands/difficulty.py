"""jdna difficulty: normalised performance vs task difficulty, and whether the drop is monotone in difficulty."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from tabulate import tabulate

from jdna.analysis import BaselineTable, analyse, load_records, parse_axis
from jdna.analysis.difficulty import RECOVERY_MARGIN
from jdna.analysis.stats import ALPHA, MIN_LEVELS, MIN_TREND
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


def _slope(level: dict[str, Any]) -> str:
    slope = level.get("slope") or {}
    value, ci = slope.get("value"), slope.get("ci95")
    if value is None:
        return "n/a"
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{value:+.3f}"


def _power(level: dict[str, Any]) -> str:
    """Minimum detectable trend, and what it would take to detect the stated one."""
    power = level.get("power") or {}
    mde = power.get("min_detectable_trend")
    if mde is None:
        return "n/a"
    if not power.get("underpowered"):
        return f"{mde:.3f} ok"
    needs = []
    if power.get("items_needed"):
        needs.append(f"{power['items_needed']} items")
    if power.get("seeds_needed"):
        needs.append(f"or {power['seeds_needed']} seeds" if needs else f"{power['seeds_needed']} seeds")
    return f"{mde:.3f} underpowered" + (f" (needs {' '.join(needs)})" if needs else "")


def _points(level: dict[str, Any]) -> str:
    cells = []
    for i, (label, value) in enumerate(zip(level["labels"], level["normalised"])):
        text = "n/a" if value is None else f"{value:.3f}"
        if level.get("near_chance") and level["near_chance"][i]:
            text += "~"  # dense near chance: left out of the verdict
        cells.append(f"{label}:{text}")
    return "  ".join(cells)


def table(record: dict[str, Any]) -> str:
    """The per-level table a researcher reads: normalised performance easiest → hardest, the slope of the drop
    with its interval, ρ, power and the verdict."""
    rows = []
    for group in record["groups"]:
        name = _group_name(group)
        axis = group["axis"].split(":")[0]
        if group.get("scale") == "chance-corrected":
            axis += " (chance-corrected)"
        for level in group["levels"]:
            x = f"s={level['level']:g}" if group["level_axis"] == "sparsity" else f"{level['level']:g} bpw"
            rows.append([name, x, f"{axis} {_points(level)}", _slope(level), _ci(level["spearman"]),
                         _power(level), level["verdict"]])
            name = ""
    return tabulate(
        rows,
        headers=["group", "level", "normalised (easiest → hardest)", "slope of drop [95% CI]", "Spearman ρ [95% CI]",
                 "min. detectable trend", "verdict"],
        tablefmt="simple",
        disable_numparse=True,
    )


def compression_table(record: dict[str, Any]) -> str:
    """Per difficulty level: is the drop monotone in the amount of compression?"""
    rows = []
    for group in record["groups"]:
        name = _group_name(group)
        for cell in group.get("across_compression", []):
            if len(cell["levels"]) < MIN_LEVELS:
                continue
            points = "  ".join(f"{lv:g}:{'n/a' if v is None else f'{v:.3f}'}"
                               for lv, v in zip(cell["levels"], cell["normalised"]))
            rows.append([name, f"{group['axis'].split(':')[0]}={cell['label']}", points, _slope(cell),
                         _power(cell), cell["verdict"]])
            name = ""
    return tabulate(rows, headers=["group", "difficulty", "normalised (least → most compressed)",
                                   "slope of drop [95% CI]", "min. detectable trend", "verdict"],
                    tablefmt="simple", disable_numparse=True)


def _reasons(record: dict[str, Any]) -> list[str]:
    lines = []
    for group in record["groups"]:
        for level in group["levels"]:
            if level.get("reason") and level["verdict"] != "monotone":
                lines.append(f"{_group_name(group)} level {level['level']:g}: {level['verdict']}: {level['reason']}")
    return lines


def irreversibility_table(record: dict[str, Any]) -> str:
    rows = []
    for r in record["irreversibility"]:
        ci = r.get("drop_ci95")
        drop = f"{r['drop']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        rows.append([r["task"], r["mode"], f"{r['compression_kind']}/{r['method']}", f"{r['level']:g}",
                     f"{r['axis']}={r['label']}", f"{r['transfer']:.3f}", f"{r['dense_transfer']:.3f}",
                     f"{r['gap']:+.3f}", drop,
                     r.get("verdict", "") + (" (dense near chance)" if r.get("near_chance") else "")])
    return tabulate(rows, headers=["task", "transfer", "method", "level", "difficulty", "metric",
                                   "dense transfer", "gap", "drop [95% CI]", "verdict"], tablefmt="simple",
                    disable_numparse=True)


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
    min_trend: Annotated[
        float,
        typer.Option(help="Smallest trend worth detecting (normalised drop per difficulty step): power, items "
                     "needed and the 'underpowered' flag are stated for it."),
    ] = MIN_TREND,
    gap_normalise: Annotated[
        str,
        typer.Option(help="Across-task difficulty: human–LLM gap divided by the dense score ('dense', Fig. 5) or "
                     "by the human score ('human', Appendix B)."),
    ] = "dense",
    recovery_margin: Annotated[
        float,
        typer.Option(help="After fine-tuning, a setting whose drop against dense transfer is significantly below "
                     "this share has 'recovered'."),
    ] = RECOVERY_MARGIN,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Record path (default: content-addressed under ./runs/difficulty/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing -o file.")] = False,
) -> None:
    """Normalised performance by task difficulty, and the Junk DNA hypothesis statistics per compression level.

    Compressed ÷ dense with the same base, task and knobs (dense ÷ compressed for perplexity): 1 = no loss.

    Per level: the slope of the drop over difficulty with a paired bootstrap CI, Spearman ρ, power (items needed)
    and a verdict with error control; the same test per difficulty level across compression; irreversibility
    after fine-tuning.

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
    analysis = analyse(loaded, axes=axes, baselines=table_, n_resamples=resamples, seed=seed, min_trend=min_trend,
                       gap_normalise=gap_normalise, recovery_margin=recovery_margin)
    body = analysis.record()
    record_ids = sorted(str(r.get("id") or r.get("path")) for r in loaded)
    # The baseline table's bytes enter the id even when no gap axis used them: every input is addressed.
    record_id = sha256_text(canonical_json([body, record_ids, table_.inputs] if table_.inputs else [body, record_ids]))
    explicit = out is not None
    out = out if out is not None else runs_dir() / "difficulty" / f"{record_id[:20]}.json"
    claim = claim_record(out, record_id, explicit, force, input_files(records, loaded))
    record = {"kind": "difficulty", "path": str(out), "id": record_id, "n_records": len(loaded), **body}
    if table_.inputs:
        record["inputs"] = {"baselines": table_.inputs}
    write_json_atomic(out, record, claim)

    console.print(table(record), markup=False, highlight=False, soft_wrap=True)
    for line in _reasons(record):
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if any(len(c["levels"]) >= MIN_LEVELS for g in record["groups"] for c in g.get("across_compression", [])):
        console.print("\nacross compression (per difficulty level, is the drop monotone in the compression?):",
                      soft_wrap=True)
        console.print(compression_table(record), markup=False, highlight=False, soft_wrap=True)
    if record["irreversibility"]:
        console.print("\nirreversibility (after fine-tuning, against dense transfer; gap/drop > 0 = worse):")
        console.print(irreversibility_table(record), markup=False, highlight=False, soft_wrap=True)
    console.print(f"\npower: 'min. detectable trend' is the slope (drop per step) detectable with 80% power at "
                  f"α = {ALPHA / 2:g} one-sided; 'underpowered' = above --min-trend {min_trend:g}, with the items per "
                  "level (or seeds) that would reach it", markup=False, highlight=False, soft_wrap=True)
    # soft_wrap: lines go out whole (the terminal wraps them), so the rule can be grepped from a log.
    console.print(f"\nrule: {record['rule']}", markup=False, highlight=False, soft_wrap=True)
    for note in record["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    emit(record)
