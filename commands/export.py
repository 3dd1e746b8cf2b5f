"""jdna export: write any model or artifact as a Hugging Face directory (plain, or compressed-tensors)."""

from __future__ import annotations

from typing import Annotated

import typer

from jdna.commands.common import CliReporter, emit, model_from_stdin, placement_for
from jdna.errors import JdnaError
from jdna.exporting import FORMATS, export_model
from jdna.models import resolve
from jdna.outputs import check_target, is_write_library_error, write_failure
from jdna.paths import expand


def export(
    model: Annotated[
        str | None,
        typer.Argument(help="Artifact path, model name, or '-'/nothing to read a record from stdin."),
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to create (must not exist).")] = "",
    export_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="hf: dense weights as jdna evaluates them, loadable everywhere. compressed-tensors: quantized "
            "models as pack-quantized integer codes (llm-compressor's format, loadable by transformers/vLLM), "
            "pruned ones dense with their zeros (as llm-compressor saves them). compressed-tensors-sparse: the "
            "same, but pruned matrices in the legacy sparse-24-bitmask (2:4) / sparse-bitmask layouts, smaller, "
            "read only by jdna and compressed-tensors <= 0.14.0.1 (transformers < 5): transformers 5 loads them "
            "with random weights. Low-rank is refused by both compressed-tensors formats.",
        ),
    ] = "hf",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto (the checkpoint's dtype), float32, bfloat16 or float16: the precision the weights are "
            "written in (a sparse export is smaller than float16 only with 16-bit values).",
        ),
    ] = "auto",
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow pickle (.bin) weights. Only for trusted models.")
    ] = False,
) -> None:
    """Materialise a model (base + artifact chain) as an HF directory, with its jdna lineage in jdna.json."""
    FORMATS.get(export_format)  # an unknown format fails before anything is loaded
    if not output:
        raise JdnaError("export needs -o DIR (a directory that does not exist yet)")
    target = expand(output)
    if target.exists():
        raise JdnaError(f"'{target}' already exists: choose a new directory for -o")
    if not target.parent.is_dir():
        raise JdnaError(f"output directory '{target.parent}' does not exist: create it first")
    if export_format.startswith("compressed-tensors"):
        from jdna.compressed_tensors_export import require_compressed_tensors

        require_compressed_tensors()
    check_target(target, "-o", directory_ok=True)  # the output policy (jdna/outputs.py): a writable directory
    reporter = CliReporter("export")
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    placement = placement_for(ref, "cpu", dtype)  # a bad --dtype fails before anything is loaded
    try:
        metadata = export_model(ref, target, export_format, reporter, allow_pickle=allow_pickle,
                                dtype=placement.dtype)
    except Exception as error:  # the OS's errors, and the writing libraries' own (safetensors, tokenizers)
        if isinstance(error, OSError) or is_write_library_error(error):
            raise write_failure(target, error) from None
        raise
    reporter.log(f"wrote {target} ({metadata['size_bytes'] / 1e6:.1f} MB, {export_format})")
    record = {
        "path": str(target),
        "kind": "hf-dir",
        "format": export_format,
        "source": ref.display_name,
        "lineage": ref.lineage(),
        "size_bytes": metadata["size_bytes"],
        "dense_parent": metadata["dense_parent"],
        "measured_sparsity": metadata["measured_sparsity"],
    }
    compression = ref.compression()
    # The flat figures as before, but "kind" stays "hf-dir": the compression kind is in the block.
    record.update({key: value for key, value in compression.items() if key != "kind"})
    record["compression"] = compression
    emit(record)
