"""jdna tasks: the task library, with each task's kind, source, knobs and whether it loads offline now."""

from __future__ import annotations

from typing import Annotated

import typer
from tabulate import tabulate

from jdna.commands.common import console, emit
from jdna.tasks import list_tasks


def tasks(
    bigbench: Annotated[
        bool, typer.Option("--bigbench", help="Also list every BIG-bench task found in the local tree.")
    ] = False,
) -> None:
    """List the tasks jdna eval can run: a table on stderr, one JSON line {"kind": "tasks", ...} on stdout.

    Any BIG-bench task in the local tree (bigbench:NAME[/SUBTASK]), any JSON-lines file (file:PATH) and any
    simple lm-eval task YAML over local files (lmeval:PATH.yaml) work too; see docs/tasks.md.
    """
    rows = list_tasks(include_bigbench=bigbench)
    table = [
        [
            row["name"],
            row["kind"] or "?",
            row["source"],
            ",".join(row["knobs"]) or "-",
            "yes" if row["offline"] else "no",
            row["description"],
        ]
        for row in rows
    ]
    console.print(
        tabulate(table, headers=["task", "kind", "source", "knobs", "offline", "description"], disable_numparse=True),
        markup=False,
        soft_wrap=True,
    )
    emit({"kind": "tasks", "n": len(rows), "tasks": rows})
