"""jdna export: write any model or artifact as a plain Hugging Face model directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from jdna.commands.common import CliReporter, emit, model_from_stdin
from jdna.errors import JdnaError
from jdna.models import load_model, resolve
from jdna.outputs import check_target, dir_mode, is_write_library_error, write_failure
from jdna.paths import expand


def export(
    model: Annotated[
        str | None,
        typer.Argument(help="Artifact path, model name, or '-'/nothing to read a record from stdin."),
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Directory to create (must not exist).")] = "",
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow pickle (.bin) weights. Only for trusted models.")
    ] = False,
) -> None:
    """Materialise a model (base + artifact chain) as a plain HF directory usable by any transformers tool."""
    if not output:
        raise JdnaError("export needs -o DIR (a directory that does not exist yet)")
    target = expand(output)
    if target.exists():
        raise JdnaError(f"'{target}' already exists: choose a new directory for -o")
    if not target.parent.is_dir():
        raise JdnaError(f"output directory '{target.parent}' does not exist: create it first")
    check_target(target, "-o", directory_ok=True)  # the output policy (jdna/outputs.py): a writable directory
    reporter = CliReporter("export")
    ref = resolve(model_from_stdin(model), allow_pickle=allow_pickle)
    reporter.log(f"materialising {ref.display_name}")
    loaded, tokenizer = load_model(ref, allow_pickle=allow_pickle)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work.chmod(dir_mode())  # mkdtemp makes it 0700 whatever the umask
    try:
        loaded.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        work.rename(target)
    except Exception as error:  # the OS's errors, and the writing libraries' own (safetensors, tokenizers)
        if isinstance(error, OSError) or is_write_library_error(error):
            raise write_failure(target, error) from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"path": str(target), "kind": "hf-dir", "source": ref.display_name, "lineage": ref.lineage()}
    record.update(ref.compression())
    emit(record)
