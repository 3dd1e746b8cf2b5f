"""One markdown summary of `make evidence`'s experiments, read from their difficulty.json files.

    python scripts/evidence_summary.py docs/evidence > docs/evidence/summary.md

For each experiment folder (holding the difficulty.json `jdna difficulty` wrote): the dense metric per difficulty
level, then one row per compression level with the normalised performance per difficulty level (95% interval),
the slope of the drop on difficulty rank, and the verdict with its reason; then the across-compression verdicts.
Every number is copied from the analysis record; nothing is recomputed here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _num(value: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval(pair: list[float] | None, sign: bool = False) -> str:
    if not pair or pair[0] is None:
        return ""
    return f" [{_num(pair[0], sign=sign)}, {_num(pair[1], sign=sign)}]"


def _point(level: dict[str, Any], i: int) -> str:
    text = _num(level["normalised"][i]) + _interval(level["normalised_ci95"][i])
    return text + (" (dense near chance)" if level["near_chance"][i] else "")


def _group_title(group: dict[str, Any]) -> str:
    parts = [group["task"], f"{group['compression_kind']}/{group['method']}"]
    if group.get("transfer"):
        parts.append(f"{group['transfer']} transfer")
    return " · ".join(parts)


def summarise(name: str, analysis: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    for group in analysis["groups"]:
        levels = group["levels"]
        labels = levels[0]["labels"]
        scale = "chance-corrected share of above-chance skill kept" if group["scale"] == "chance-corrected" \
            else "compressed / dense"
        lines += [f"**{_group_title(group)}**: axis `{group['axis']}` (easiest → hardest: {', '.join(labels)}); "
                  f"normalised = {scale}; metric `{group['metric']}`.", ""]
        lines += ["| level | " + " | ".join(labels) + " | slope of drop [95% CI] | verdict |",
                  "| --- | " + " | ".join("---" for _ in labels) + " | --- | --- |"]
        for level in levels:
            points = [_point(level, i) for i in range(len(labels))]
            slope = _num(level["slope"]["value"], sign=True) + _interval(level["slope"]["ci95"], sign=True)
            seeds = max(level["seeds"]) if level.get("seeds") else 1
            lines.append(f"| {group['level_axis']} {level['level']:g} ({seeds} seed{'s' * (seeds > 1)}) | "
                         + " | ".join(points) + f" | {slope} | **{level['verdict']}**: {level['reason']} |")
        lines.append("")
        across = group.get("across_compression") or []
        if across:
            lines += ["Across compression (is the drop monotone in the compression, at each difficulty level?):", "",
                      "| difficulty | " + " | ".join(across[0]["labels"]) + " | slope [95% CI] | verdict |",
                      "| --- | " + " | ".join("---" for _ in across[0]["labels"]) + " | --- | --- |"]
            for row in across:
                points = [_point(row, i) for i in range(len(row["labels"]))]
                slope = _num(row["slope"]["value"], sign=True) + _interval(row["slope"]["ci95"], sign=True)
                lines.append(f"| {row['label']} | " + " | ".join(points) + f" | {slope} | **{row['verdict']}**: "
                             f"{row['reason']} |")
            lines.append("")
    irreversible = [row for row in analysis.get("irreversibility") or [] if isinstance(row, dict)]
    if irreversible:
        lines += ["Irreversibility (transfer from the pruned model vs dense transfer, per level):", "",
                  "| sparsity | difficulty | dense transfer | pruned transfer | drop [95% CI] | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in irreversible:
            lines.append(f"| {row['level']:g} | {row['label']} | {_num(row['dense_transfer'])} | "
                         f"{_num(row['transfer'])} | {_num(row['drop'], sign=True)}{_interval(row['drop_ci95'], True)}"
                         f" | {row['verdict']} |")
        lines.append("")
    return lines


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/evidence")
    out = ["# make evidence: summary", "",
           "Copied from each experiment's `difficulty.json` by `scripts/evidence_summary.py`; the tables beside "
           "it (`table.txt`) hold power and the full rule.", ""]
    for path in sorted(root.glob("*/difficulty.json")):
        out += summarise(path.parent.name, json.loads(path.read_text()))
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
