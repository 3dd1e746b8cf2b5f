"""Print BIG-bench's human rater scores as rows of jdna's baseline table (jdna/data/human_baselines.csv).

BIG-bench 1.0.0 ships the human evaluation of its tasks as `bigbench/benchmark_tasks/task_human_eval.pkl`
inside the sdist (Srivastava et al. 2022, "Beyond the Imitation Game"): a pickle of
{"average": {task: {metric: percent}}, "expert": {...}} -- the mean over human raters and the best (max)
rater -- whose numbers are numpy float64 scalars. This script reads that pickle straight from the sdist
tarball (or from an extracted copy) with a restricted unpickler: `find_class` resolves only the two globals
such a pickle names, numpy.core.multiarray.scalar and numpy.dtype, and refuses every other one, so no other
code can run while it loads. jdna itself never unpickles anything: the CSV rows are the shipped data.

Output (stdout): CSV with jdna's columns task,metric,human,citation,note. `human` is the average rater as a
fraction (jdna's metric scale); the note gives the expert (max) rater. Metrics are renamed to jdna's:
multiple_choice_grade -> acc (multiple-choice accuracy), exact_str_match -> exact_match; other metrics
(BLEU, ROUGE, calibration, task-specific scores) have no jdna counterpart and are left out. By default only
tasks that jdna loads from the local BIG-bench tree as the metric's kind are printed (`bigbench:NAME`, the
name jdna records carry); --all prints every task.

Usage: python scripts/extract_bigbench_human.py [--sdist PATH | --pkl PATH] [--root DIR] [--all]
Without --sdist/--pkl the sdist is downloaded with pip as scripts/fetch_bigbench.py does (358 MB).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import pickle
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

MEMBER = "bigbench/benchmark_tasks/task_human_eval.pkl"
CITATION = 'Srivastava et al. (2022), "Beyond the Imitation Game" (BIG-bench), task_human_eval.pkl in bigbench 1.0.0'
# BIG-bench metric -> (jdna metric name, the task kind jdna scores it under).
METRICS = {
    "multiple_choice_grade": ("acc", "multiple_choice"),
    "exact_str_match": ("exact_match", "generation"),
}
# The only globals task_human_eval.pkl names (numpy 1.x pickled float64 scalars as scalar(dtype, bytes)).
ALLOWED_GLOBALS = frozenset({("numpy.core.multiarray", "scalar"), ("numpy", "dtype")})


def _resolve(module: str, name: str) -> Any:
    if (module, name) == ("numpy", "dtype"):
        import numpy

        return numpy.dtype
    # numpy 2 moved numpy.core to numpy._core (the old path is a deprecated alias).
    for where in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name} in this numpy")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ALLOWED_GLOBALS; any other global raises UnpicklingError."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: task_human_eval.pkl names only "
                + ", ".join(f"{m}.{n}" for m, n in sorted(ALLOWED_GLOBALS))
            )
        return _resolve(module, name)


def load_human_eval(data: bytes) -> dict[str, dict[str, dict[str, float]]]:
    """{"average"|"expert": {task: {metric: percent}}} from the pickle's bytes, with plain floats."""
    raw = RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(raw, dict) or not {"average", "expert"} <= set(raw):
        raise ValueError("not a BIG-bench task_human_eval.pkl: expected a dict with 'average' and 'expert'")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for rater in ("average", "expert"):
        table[rater] = {
            str(task): {str(metric): float(value) for metric, value in scores.items()}
            for task, scores in raw[rater].items()
        }
    return table


def read_from_sdist(archive: Path) -> bytes:
    """The pickle's bytes from the bigbench sdist tarball (bigbench-1.0.0/bigbench/benchmark_tasks/...)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.partition("/")[2] == MEMBER:
                handle = tar.extractfile(member)
                assert handle is not None
                with handle:
                    return handle.read()
    raise SystemExit(f"extract_bigbench_human: no {MEMBER} inside {archive}")


def loads_as(root: Path | None) -> Callable[[str, str], bool]:
    """A check whether jdna loads bigbench:NAME as the given kind from the local tree."""
    from jdna.errors import JdnaError
    from jdna.tasks import load_task

    cache: dict[tuple[str, str], bool] = {}

    def check(name: str, kind: str) -> bool:
        if (name, kind) not in cache:
            try:
                task = load_task(f"bigbench:{name}", as_kind=kind, root=root)
                cache[(name, kind)] = task.kind == kind
            except JdnaError:
                cache[(name, kind)] = False
        return cache[(name, kind)]

    return check


def rows(
    table: dict[str, dict[str, dict[str, float]]], loadable: Callable[[str, str], bool] | None = None
) -> list[dict[str, str]]:
    """Baseline rows, one per (task, mapped metric) with an average-rater score, sorted by task."""
    out = []
    for name in sorted(table["average"]):
        for metric, (jdna_metric, kind) in METRICS.items():
            average = table["average"][name].get(metric)
            if average is None or (loadable is not None and not loadable(name, kind)):
                continue
            expert = table["expert"].get(name, {}).get(metric)
            note = f"BIG-bench {metric}: average human rater {average:.2f}% (the human column)"
            note += f", expert (max) rater {expert:.2f}% = {expert / 100:.4f}" if expert is not None else ", no expert"
            out.append(
                {
                    "task": f"bigbench:{name}",
                    "metric": jdna_metric,
                    "human": f"{average / 100:.4f}",
                    "citation": CITATION,
                    "note": note,
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--sdist", type=Path, help="bigbench-1.0.0.tar.gz (downloaded with pip when omitted)")
    source.add_argument("--pkl", type=Path, help="an extracted task_human_eval.pkl")
    parser.add_argument("--root", type=Path, help="BIG-bench tasks tree (default: the one jdna reads)")
    parser.add_argument("--all", action="store_true", help="every task, loadable by jdna or not")
    args = parser.parse_args(argv)

    if args.pkl:
        data = args.pkl.read_bytes()
    elif args.sdist:
        data = read_from_sdist(args.sdist)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fetch_bigbench import download_sdist

        with tempfile.TemporaryDirectory(prefix="bigbench-sdist-") as workdir:
            data = read_from_sdist(download_sdist(Path(workdir)))
    table = load_human_eval(data)
    selected = rows(table, None if args.all else loads_as(args.root))
    writer = csv.DictWriter(sys.stdout, fieldnames=["task", "metric", "human", "citation", "note"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(selected)
    print(f"extract_bigbench_human: {len(selected)} rows from {len(table['average'])} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
