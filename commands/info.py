"""jdna info: describe an artifact (lineage, operation, measured statistics) or a base model."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from tabulate import tabulate

from jdna.commands.common import console, emit, model_from_stdin
from jdna.errors import JdnaError
from jdna.kinds import record as kind_record
from jdna.masks import mask_summary
from jdna.models import ModelRef, resolve


def _matrix_table(stats: dict[str, Any]) -> str:
    rows = [
        [m["name"], "×".join(str(d) for d in m["shape"]), m["numel"], m["pruned"], f"{m['sparsity']:.4f}"]
        for m in stats.get("matrices", [])
    ]
    rows.append(
        [
            "TOTAL",
            "",
            stats.get("prunable_params"),
            stats.get("pruned_params"),
            f"{stats.get('sparsity', 0):.4f}",
        ]
    )
    return tabulate(
        rows,
        headers=["matrix", "shape", "weights", "pruned", "sparsity"],
        tablefmt="simple",
        disable_numparse=True,
    )


def _describe(ref: ModelRef, matrices: bool) -> tuple[list[str], dict[str, Any]]:
    """The tables info prints (lineage, parameters, matrices, statistics) and its record."""
    artifact = ref.top
    assert artifact is not None
    header = artifact.header
    shown: list[str] = []
    stats = header.get("stats", {})
    op = header["operation"]
    shown.append(f"[bold]{artifact.path}[/bold]  kind={artifact.kind}  id={artifact.id[:20]}")
    lineage = [
        [
            step["kind"],
            step.get("operation") or step.get("name"),
            step.get("method") or "",
            "" if step.get("sparsity") is None else f"{step['sparsity']:.4f}",
            "" if step.get("bits_per_weight") is None else f"{step['bits_per_weight']:.3f}",
        ]
        for step in ref.lineage()
    ]
    shown.append(tabulate(lineage, headers=["lineage", "op / name", "method", "sparsity", "bits/weight"]))
    shown.append(tabulate([[k, v] for k, v in op.get("params", {}).items()], headers=["parameter", "value"]))
    if matrices and stats.get("matrices"):
        shown.append(_matrix_table(stats))
    summary = {k: v for k, v in stats.items() if k not in ("matrices",)}
    shown.append(
        tabulate(
            [[k, v] for k, v in summary.items() if not isinstance(v, dict)],
            headers=["statistic", "value"],
            disable_numparse=True,
        )
    )
    invariants = header.get("invariants")
    if isinstance(invariants, dict) and invariants.get("checked"):
        verdict = "passed" if invariants.get("passed") else "FAILED"
        shown.append(
            f"invariant check ({invariants['checked']}): {verdict} — {invariants.get('positions', '?')} pruned "
            f"positions, {invariants.get('violations', 0)} weight and "
            f"{invariants.get('optimizer_state_violations', 0)} optimizer-state violations"
        )
    training = header.get("training")
    if isinstance(training, dict) and int(training.get("world_size") or 1) > 1:
        replicas = {True: "identical", False: "DIFFERENT"}.get(training.get("replicas_identical"), "not compared")
        shown.append(
            f"data-parallel over {training['world_size']} processes ({training.get('backend', '?')}), global "
            f"micro-batch {training.get('micro_batch', '?')}; replicas {replicas}"
        )
    evaluation = header.get("eval")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("metrics"), dict):
        shown.append(
            tabulate(
                [[name, entry.get("value"), entry.get("ci95")] for name, entry in evaluation["metrics"].items()
                 if isinstance(entry, dict)],
                headers=[f"validation ({evaluation.get('n', '?')} items)", "value", "95% CI"],
                disable_numparse=True,
            )
        )
    record = kind_record(artifact, cached=True, detail=False)  # info adds its own details below
    record.pop("cached", None)
    if isinstance(invariants, dict):
        record["invariants"] = invariants
    if isinstance(evaluation, dict):
        record["eval"] = evaluation
    for key in ("task", "mode"):
        if isinstance(header.get(key), str):
            record[key] = header[key]
    record["lineage"] = ref.lineage()
    record["effective_masks"] = masks = mask_summary(ref.chain)
    if masks["matrices"] or "ended_by" in masks:
        ended = masks.get("ended_by")
        shown.append(
            f"pruning masks in force: {masks['matrices']} matrices, sparsity {masks['sparsity']:.4f}"
            + (f" (a {ended['kind']} step rewrote the other pruned matrices densely)" if ended else "")
        )
    record["params"] = op.get("params", {})
    record["per_matrix_sparsity"] = {m["name"]: m["sparsity"] for m in stats.get("matrices", [])}
    return shown, record


def _measured_sparsity(ref: ModelRef, matrices: bool) -> dict[str, Any]:
    """A plain model's own zeros (a model pruned outside jdna shows up here) and its dense parent, if known."""
    from jdna.sparsity import detect_sparsity, model_block_fields

    report = detect_sparsity(ref.base)
    fields = model_block_fields(ref)
    if report.externally_pruned:
        console.print(
            f"[bold]externally pruned[/bold]: {report.sparsity:.4f} of {report.numel} prunable weights are exact "
            f"zeros ({report.pattern})"
        )
        if matrices:
            console.print(_matrix_table({"matrices": report.per_matrix(), "prunable_params": report.numel,
                                         "pruned_params": report.zeros, "sparsity": report.sparsity}))
    return {
        "externally_pruned": report.externally_pruned,
        "detected_sparsity": fields["detected_sparsity"],
        "per_matrix_sparsity": {m["name"]: m["sparsity"] for m in report.per_matrix()},
        "compression": fields.get("compression", ref.compression()),
        "dense_parent": fields["dense_parent"],
    }


def info(
    model: Annotated[
        str | None,
        typer.Argument(help="Artifact path, model name, or '-'/nothing to read a record from stdin."),
    ] = None,
    matrices: Annotated[
        bool,
        typer.Option("--matrices/--summary", help="Show the per-matrix table (default) or only the summary."),
    ] = True,
    verify: Annotated[
        bool, typer.Option(help="Also re-hash the artifact's tensors against its header.")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow pickle (.bin) weights when describing a base model.")
    ] = False,
) -> None:
    """Describe an artifact or a model: lineage, parameters, achieved sparsity and bits per weight."""
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    if ref.top is None:
        base = ref.base
        record = {
            "kind": "base",
            "name": base.name,
            "source": base.source,
            "path": str(base.path),
            "sha256": base.sha256,
            "family": base.family,
            "model_type": base.config.get("model_type"),
            "layers": base.config.get("num_hidden_layers"),
            "hidden_size": base.config.get("hidden_size"),
        }
        record.update(_measured_sparsity(ref, matrices))
        console.print(tabulate([[k, v] for k, v in record.items() if not isinstance(v, dict)], tablefmt="plain"))
        emit(record)
        return
    artifact = ref.top
    if verify:
        from jdna.artifact import read_artifact

        read_artifact(artifact.path, verify=True)
    try:  # everything shown comes from the header: build it all before printing any of it
        shown, record = _describe(ref, matrices)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise JdnaError(
            f"'{artifact.path}' has a malformed jdna header ({type(error).__name__}: {error}): recreate it"
        ) from None
    for text in shown:
        console.print(text)
    if verify:
        record["verified"] = True
    emit(record)
