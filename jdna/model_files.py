"""Model files and directories jdna reads besides artifacts: GGUF checkpoints (loaded), records (explained),
jdna export metadata, and compressed-tensors checkpoints (loaded decompressed).

A GGUF file is dequantized once by transformers (``gguf_file=``), the same path the ``smollm2-135m`` demo takes,
and cached as safetensors under ``$JDNA_HOME/models/gguf-<sha256[:16]>``; later runs use the cache. A JSON file
(an eval record, a difficulty table) is refused with a line saying what it is instead of "corrupt".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jdna import demo
from jdna.errors import JdnaError
from jdna.io import sha256_file
from jdna.paths import jdna_home
from jdna.sparse_formats import LAST_SPARSE_READER, read_sparse_directory, sparse_format_of

GGUF_MAGIC = b"GGUF"
# A jdna export's metadata (docs/artifacts.md, "Exports"): read here, where every MODEL directory is looked at,
# so that resolving a model does not need the exporter.
EXPORT_METADATA_FILE = "jdna.json"
CONFIG_KEY = "jdna"
EXPORT_FORMAT_NAME = "jdna-export"


def is_gguf_file(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_cache_dir(path: Path) -> Path:
    return jdna_home() / "models" / f"gguf-{sha256_file(path)[:16]}"


def gguf_directory(path: Path) -> Path:
    """The safetensors directory a GGUF file converts to, converting it on first use."""
    cache = gguf_cache_dir(path)
    if not (cache / "model.safetensors").is_file():
        try:
            demo.convert_gguf(path.resolve(), cache)
        except Exception as error:  # the GGUF reader raises many types for files it cannot read
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise JdnaError(
                f"'{path}' is a GGUF file that transformers could not convert ({reason}); transformers reads "
                "GGUF for a fixed set of architectures and quantization types: convert it to a Hugging Face "
                "directory with the tool that made it, and pass that directory"
            ) from None
    return cache


def read_export_metadata(directory: Path) -> dict[str, Any] | None:
    """jdna.json of an export directory, or the ``jdna`` entry of its config.json; None for other directories."""
    for path, pick in ((directory / EXPORT_METADATA_FILE, lambda d: d), (directory / "config.json",
                                                                        lambda d: d.get(CONFIG_KEY))):
        if not path.is_file():
            continue
        try:
            data = pick(json.loads(path.read_text()))
        except (json.JSONDecodeError, AttributeError, OSError):
            continue
        if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT_NAME:
            return data
    return None


def not_a_model_error(path: Path) -> JdnaError | None:
    """A precise error for a JSON file given as a model (an eval record, another record), else None."""
    try:
        with path.open("rb") as handle:
            start = handle.read(64).lstrip()
        if not start.startswith((b"{", b"[")):
            return None
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    records = payload if isinstance(payload, list) else [payload]
    first = records[0] if records and isinstance(records[0], dict) else {}
    kind = first.get("kind")
    if kind == "eval":
        model = first.get("model") if isinstance(first.get("model"), dict) else {}
        return JdnaError(
            f"'{path}' is a jdna eval record (task {first.get('task')!r}), not a model: pass the model it "
            f"evaluated ({model.get('name')!r}), or give the record to 'jdna difficulty' / 'jdna plot'"
        )
    what = f"a jdna '{kind}' record" if isinstance(kind, str) else "a JSON file"
    return JdnaError(
        f"'{path}' is {what}, not a model: pass a jdna artifact (.safetensors), a Hugging Face model directory, "
        "a .gguf file, an HF hub id or a demo name"
    )


def require_compressed_tensors() -> str:
    """The installed compressed-tensors version, or a JdnaError saying how to install it."""
    try:
        import compressed_tensors
    except ImportError:
        raise JdnaError(
            "--format compressed-tensors needs the compressed-tensors package: pip install 'jdna[export]' "
            "(or pip install compressed-tensors)"
        ) from None
    return str(compressed_tensors.__version__)


def loading_kwargs(config: dict[str, Any], directory: Path | None = None) -> dict[str, Any]:
    """from_pretrained arguments for a compressed-tensors checkpoint: decompress on load, so jdna sees (and
    prunes, measures, fine-tunes) ordinary dense weights. Empty for any other checkpoint.

    The sparse layouts are decompressed by jdna itself (no installed compressed-tensors >= 0.15 reads them):
    the dense state dict and the config without its ``quantization_config`` go to from_pretrained."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compressed-tensors":
        return {}
    if sparse_format_of(config) is not None:
        if quantization.get("config_groups"):
            raise JdnaError(
                f"'{directory}' stacks {sparse_format_of(config)} on quantization, which only compressed-tensors "
                f"<= {LAST_SPARSE_READER} reads: load it there and save it dense"
            )
        if directory is None:
            raise JdnaError("a sparse compressed-tensors checkpoint needs its directory to be read")
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(str(directory))
        if hasattr(hf_config, "quantization_config"):
            del hf_config.quantization_config
        return {"config": hf_config, "state_dict": read_sparse_directory(directory)}
    require_compressed_tensors()
    import warnings

    from transformers import CompressedTensorsConfig

    # transformers warns that the config's own quantization_config wins; only `dequantize` is ours to set.
    warnings.filterwarnings("ignore", message=".*already has a `quantization_config` attribute.*")
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def pretrained_source(model_class: Any, directory: Path, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """(class, path) to call ``from_pretrained`` with: for a sparse checkpoint jdna decompressed itself
    (``state_dict`` in `kwargs`), the concrete architecture class and no path, since transformers 5 refuses a
    ``state_dict`` together with a path and the Auto classes need one."""
    if "state_dict" not in kwargs:
        return model_class, str(directory)
    mapping = getattr(model_class, "_model_mapping", None)
    config = kwargs["config"]
    return (mapping[type(config)] if mapping is not None else model_class), None
