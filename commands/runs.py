"""jdna runs: list the run store (./runs or $JDNA_RUNS) as a table, and clean up what nothing references."""

from __future__ import annotations

from typing import Annotated

import typer
from tabulate import tabulate

from jdna.commands.common import console, emit
from jdna.paths import runs_dir
from jdna.runs import Run, garbage, remove, scan, select

app = typer.Typer(
    help="List the runs under ./runs (or $JDNA_RUNS), or clean up what nothing references.",
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
)

KINDS = ("eval", "pruned", "quantized", "lowrank", "finetuned", "difficulty", "lmc", "partial", "unreadable")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _table(runs: list[Run]) -> str:
    rows = [
        [
            run.kind,
            (run.id or "")[:12],
            (run.created or "")[:19].replace("T", " "),
            run.task or "",
            run.model or "",
            f"{run.metric}={run.value:.4f}" if run.metric and isinstance(run.value, (int, float)) else "",
            _size(run.size),
            str(run.path),
        ]
        for run in runs
    ]
    return tabulate(
        rows, headers=["kind", "id", "created (UTC)", "task", "model", "result", "size", "path"], disable_numparse=True
    )


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help=f"Only runs of this kind: {', '.join(KINDS)}.")] = None,
    task: Annotated[
        str | None, typer.Option(help="Only runs of this task (e.g. mmlu, or 'bigbench:' for all).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line {\"kind\": \"runs\", ...} instead of a table.")
    ] = False,
) -> None:
    """List the runs under ./runs (or $JDNA_RUNS), or clean up what nothing references.

    Without a subcommand: a table of every artifact and record, oldest first (--json: one JSON line).
    'jdna runs gc' lists what nothing references; 'jdna runs gc --delete' removes it.
    """
    if ctx.invoked_subcommand is not None:
        return
    if kind is not None and kind not in KINDS:
        from jdna.errors import unknown_name_error

        raise unknown_name_error("run kind", kind, KINDS)
    root = runs_dir()
    chosen = select(scan(root), kind=kind, task=task)
    if as_json:
        emit({"kind": "runs", "root": str(root), "n": len(chosen), "runs": [run.row() for run in chosen]})
        return
    if not chosen:
        what = " ".join(f"--{k} {v}" for k, v in (("kind", kind), ("task", task)) if v)
        console.print(f"no runs under {root}" + (f" matching {what}" if what else ""), markup=False)
        return
    typer.echo(_table(chosen))


@app.command("gc")
def gc(
    delete: Annotated[
        bool, typer.Option("--delete", help="Remove the files (default: only list what would be removed).")
    ] = False,
) -> None:
    """List (or with --delete remove) artifacts no record or artifact references, and stale partial writes.

    Records are results and are kept; anything a lineage, parent or record names is kept.
    """
    root = runs_dir()
    found = scan(root)
    doomed = garbage(found)
    total = sum(run.size for run in doomed)
    if doomed:
        console.print(_table(doomed), markup=False, soft_wrap=True)
    verb = "removed" if delete else "would remove"
    freed = remove(doomed) if delete else 0
    console.print(
        f"{verb} {len(doomed)} of {len(found)} files ({_size(total)})"
        + ("" if delete or not doomed else "; rerun with --delete to remove them"),
        markup=False,
    )
    emit({
        "kind": "runs-gc",
        "root": str(root),
        "dry_run": not delete,
        "files": [str(run.path) for run in doomed],
        "bytes": freed if delete else total,
    })
