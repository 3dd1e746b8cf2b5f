"""Export a model (base + artifact chain) as a directory other tools load: plain HF, or compressed-tensors.

Every export carries its jdna lineage twice: a ``jdna`` entry in ``config.json`` (so it travels with the config
wherever the model goes) and the full ``jdna.json`` beside it (lineage, compression, measured sparsity, the dense
parent's identity, versions). A sentence-transformers model keeps its pipeline files (``modules.json``,
``1_Pooling/``...). The directory is built in a temporary sibling and renamed into place at the end, so a
directory under the final name is always complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from jdna.errors import JdnaError
from jdna.model_files import CONFIG_KEY, EXPORT_FORMAT_NAME, EXPORT_METADATA_FILE
from jdna.model_files import read_export_metadata as read_export_metadata  # re-exported (moved there)
from jdna.models import ModelRef, dense_parent_of, load_model
from jdna.outputs import dir_mode
from jdna.progress import Reporter
from jdna.registry import Registry

EXPORT_FORMAT_VERSION = 1

# sentence-transformers keeps its pipeline (module list, pooling, normalisation) beside the transformer weights.
SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)

# A writer saves the loaded model's weights and config.json into the work directory and returns what it did
# (format details that go into jdna.json).
Writer = Callable[[ModelRef, nn.Module, Path, Reporter], dict[str, Any]]
FORMATS: Registry[Writer] = Registry("export format")


@FORMATS.register("hf")
def write_hf(ref: ModelRef, model: nn.Module, work: Path, reporter: Reporter) -> dict[str, Any]:
    """Dense weights exactly as jdna evaluates them (pruned positions are zeros, quantized/low-rank decoded)."""
    model.save_pretrained(work, safe_serialization=True)
    notes = []
    kinds = {artifact.kind for artifact in ref.chain}
    if "quantized" in kinds:
        notes.append("quantized matrices are stored dequantized (scale * (code - zero)), not as integer codes")
    details: dict[str, Any] = {"weights": "dense", "notes": notes}
    if "lowrank" in kinds:
        notes.append("low-rank matrices are stored as the dense product left @ right, not as factors")
        factored = [a for a in ref.chain if a.kind == "lowrank"][-1]
        entries = factored.header.get("lowrank", {})
        details["lowrank_ranks"] = {name: entry.get("rank") for name, entry in entries.items()}
    if "pruned" in kinds:
        notes.append("pruned positions are stored as exact zeros in dense matrices")
    return details


def _register_compressed_tensors() -> None:
    # The module imports nothing heavy at import time; compressed-tensors itself is imported when it writes.
    from jdna.compressed_tensors_export import write_compressed_tensors, write_compressed_tensors_sparse

    if "compressed-tensors" not in FORMATS:
        FORMATS.add("compressed-tensors", write_compressed_tensors)
        FORMATS.add("compressed-tensors-sparse", write_compressed_tensors_sparse)


_register_compressed_tensors()


def copy_sentence_transformers_extras(source: Path, work: Path) -> list[str]:
    """Copy a sentence-transformers pipeline's files (modules.json and the module folders it names)."""
    copied: list[str] = []
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, work / name)
            copied.append(name)
    modules_file = source / "modules.json"
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text())
        except json.JSONDecodeError:
            modules = []
        for module in modules if isinstance(modules, list) else []:
            folder = str(module.get("path") or "") if isinstance(module, dict) else ""
            # Only plain sub-folder names: a crafted modules.json must not copy files from elsewhere.
            if folder and Path(folder).name == folder and folder not in (".", "..") and (source / folder).is_dir():
                shutil.copytree(source / folder, work / folder, dirs_exist_ok=True)
                copied.append(folder + "/")
    return copied


def export_metadata(ref: ModelRef, export_format: str, details: dict[str, Any], sparsity: dict[str, Any]) -> dict:
    from jdna.artifact import versions

    return {
        "format": EXPORT_FORMAT_NAME,
        "version": EXPORT_FORMAT_VERSION,
        "export_format": export_format,
        "source": ref.display_name,
        "id": ref.identity,
        "base": ref.base.reference(),
        "dense_parent": dense_parent_of(ref),
        "lineage": ref.lineage(),
        "compression": ref.compression(),
        "measured_sparsity": sparsity,
        "details": details,
        "versions": versions(),
    }


def _config_entry(metadata: dict[str, Any]) -> dict[str, Any]:
    """The short form that goes into config.json (the full form is jdna.json)."""
    keys = ("format", "version", "export_format", "source", "id", "dense_parent", "compression")
    entry = {key: metadata[key] for key in keys}
    entry["base"] = {"name": metadata["base"]["name"], "sha256": metadata["base"]["sha256"]}
    entry["lineage"] = [
        {k: v for k, v in step.items() if k in ("kind", "name", "id", "operation", "method", "sparsity")}
        for step in metadata["lineage"]
    ]
    return entry


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def export_model(
    ref: ModelRef,
    target: Path,
    export_format: str = "hf",
    reporter: Reporter | None = None,
    allow_pickle: bool = False,
    dtype: Any = "auto",
) -> dict[str, Any]:
    """Write `ref` to the new directory `target` in `export_format`; returns the metadata plus file sizes.

    `dtype` is the precision the weights are materialised (and written) in, as `load_model` takes it: "auto" is
    the checkpoint's own, so the export holds exactly the weights jdna evaluates at that precision."""
    from jdna.sparsity import measure_model

    reporter = reporter or Reporter()
    writer = FORMATS.get(export_format)
    if target.exists():
        raise JdnaError(f"'{target}' already exists: choose a new directory for -o")
    if not target.parent.is_dir():
        raise JdnaError(f"output directory '{target.parent}' does not exist: create it first")
    reporter.log(f"materialising {ref.display_name}")
    model, tokenizer = load_model(ref, dtype=dtype, allow_pickle=allow_pickle)
    sparsity = measure_model(model).summary()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work.chmod(dir_mode())  # mkdtemp makes it 0700 whatever the umask; the export follows the umask
    try:
        details = writer(ref, model, work, reporter)
        tokenizer.save_pretrained(work)
        details["sentence_transformers"] = copy_sentence_transformers_extras(ref.base.path, work)
        metadata = export_metadata(ref, export_format, details, sparsity)
        config_path = work / "config.json"
        config = json.loads(config_path.read_text())
        config[CONFIG_KEY] = _config_entry(metadata)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (work / EXPORT_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        work.rename(target)
    except OSError as error:
        raise JdnaError(f"could not write '{target}': {error.strerror or error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metadata["size_bytes"] = directory_size(target)
    return metadata
