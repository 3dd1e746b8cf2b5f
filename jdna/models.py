"""Model references: what a MODEL argument names, and how to turn it into a loaded transformers model.

A MODEL is a jdna artifact (.safetensors with a jdna header), a local Hugging Face directory, a demo name
(``minilm-l6``, ``smollm2-135m``) or a Hugging Face hub id. Artifacts resolve their parent chain down to a
base model whose weights are identified by sha256 and verified on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jdna.artifact import Artifact, artifact_chain, read_artifact
from jdna.demo import DEMO_MODELS, demo_model_dir
from jdna.errors import JdnaError
from jdna.io import sha256_file
from jdna.kinds import KINDS, kind_of
from jdna.model_files import (
    gguf_directory,
    is_gguf_file,
    loading_kwargs,
    not_a_model_error,
    pretrained_source,
    read_export_metadata,
)

# Re-exported: callers name the model layer for canonical names (jdna.naming holds them, below the kinds).
from jdna.naming import canonical_name as canonical_name
from jdna.naming import canonical_parameters as canonical_parameters

_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*.bin")


@dataclass
class BaseModel:
    """A pretrained model directory, identified by the sha256 of its weight files."""

    name: str
    source: str  # "demo" | "local" | "hub"
    path: Path
    sha256: str
    family: str  # "causal_lm" | "encoder"
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    def reference(self) -> dict[str, Any]:
        ref = {"name": self.name, "source": self.source, "sha256": self.sha256, "family": self.family}
        ref["path"] = str(self.path.resolve())
        ref["model_type"] = self.config.get("model_type")
        return ref


@dataclass
class ModelRef:
    """A base model plus the artifacts applied on top of it, oldest first."""

    base: BaseModel
    chain: list[Artifact] = field(default_factory=list)
    # The dense model this one was compressed from, when it is not in `chain` (an export, an externally pruned
    # model): {"name", "id", "source"}, from --dense-parent or a jdna export's metadata. See docs/records.md.
    dense_parent: dict[str, Any] | None = None

    @property
    def top(self) -> Artifact | None:
        return self.chain[-1] if self.chain else None

    @property
    def identity(self) -> str:
        """What a child's content address is computed from."""
        return self.top.id if self.top else self.base.sha256

    @property
    def display_name(self) -> str:
        return str(self.top.path) if self.top else self.base.name

    def lineage(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = [{"kind": "base", "name": self.base.name, "sha256": self.base.sha256}]
        for artifact in self.chain:
            op = artifact.header["operation"]
            stats = artifact.header.get("stats", {})
            steps.append(
                {
                    "kind": artifact.kind,
                    "path": str(artifact.path),
                    "id": artifact.id,
                    "operation": op.get("name"),
                    "method": op.get("params", {}).get("method"),
                    "sparsity": stats.get("sparsity"),
                    "bits_per_weight": stats.get("bits_per_weight"),
                }
            )
        return steps

    def compression(self) -> dict[str, Any]:
        """The figures that place this model on the compression axis (the newest compressing step wins)."""
        summary: dict[str, Any] = {"method": "dense", "sparsity": 0.0, "bits_per_weight": 16.0}
        for artifact in self.chain:
            stats = artifact.header.get("stats", {})
            op = artifact.header["operation"]
            if kind_of(artifact).compresses:
                summary = {
                    "kind": artifact.kind,
                    "method": op.get("params", {}).get("method", artifact.kind),
                    "sparsity": stats.get("sparsity", summary.get("sparsity", 0.0)),
                    "bits_per_weight": stats.get("bits_per_weight"),
                    "target_sparsity": op.get("params", {}).get("sparsity"),
                }
        return summary


def _weight_files(directory: Path, allow_pickle: bool) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for pattern in _PICKLE_WEIGHTS for p in directory.glob(pattern))
    if pickles and not allow_pickle:
        raise JdnaError(
            f"'{directory}' holds only pickle weights ({pickles[0].name}), which can run code when loaded: "
            "convert them to safetensors, or pass --allow-pickle if you trust the source"
        )
    if pickles:
        return pickles
    raise JdnaError(f"'{directory}' has no model weights (*.safetensors)")


def weights_sha256(directory: Path, allow_pickle: bool = False) -> str:
    files = _weight_files(directory, allow_pickle)
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def model_family(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    if any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures):
        return "causal_lm"
    if config.get("is_decoder") or config.get("model_type") in {"llama", "mistral", "gpt2", "qwen2", "gemma"}:
        return "causal_lm"
    return "encoder"


def base_from_dir(name: str, source: str, directory: Path, allow_pickle: bool) -> BaseModel:
    """The base model a Hugging Face directory holds, identified by its weights' sha256."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise JdnaError(f"'{directory}' is not a Hugging Face model directory (no config.json)")
    config = json.loads(config_path.read_text())
    return BaseModel(
        name=name,
        source=source,
        path=directory,
        sha256=weights_sha256(directory, allow_pickle),
        family=model_family(config),
        config=config,
    )


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "*.tiktoken", "merges.txt"]
    if allow_pickle:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        where = "the local HF cache (HF_HUB_OFFLINE is set)" if offline else "the Hugging Face hub"
        fix = (
            "download it once with network access (HF_HUB_OFFLINE unset)"
            if offline
            else "offline, set HF_HUB_OFFLINE=1 to use only the local HF cache"
        )
        raise JdnaError(
            f"model '{repo_id}' is not a local path, jdna artifact or demo name, and {where} could not provide it "
            f"({reason}); {fix}, or pass a local model directory or a demo name ({', '.join(DEMO_MODELS)})"
        ) from None


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith((".safetensors", ".json", ".gguf"))
        or os.sep * 2 in spec
    )


def resolve_base(name: str, allow_pickle: bool = False) -> BaseModel:
    """Resolve a non-artifact model name: local directory, demo name, or hub id."""
    path = Path(os.path.expanduser(name))  # unlike Path.expanduser, never raises
    if path.is_dir():
        return base_from_dir(str(path), "local", path, allow_pickle)
    if path.is_file() and is_gguf_file(path):
        return base_from_dir(str(path.resolve()), "gguf", gguf_directory(path), allow_pickle)
    if name in DEMO_MODELS:
        return base_from_dir(name, "demo", demo_model_dir(name), allow_pickle)
    if _looks_like_path(name):
        raise JdnaError(f"model not found: '{name}' does not exist")
    return base_from_dir(name, "hub", _hub_snapshot(name, allow_pickle), allow_pickle)


def _base_from_reference(reference: dict[str, Any], artifact_path: Path, allow_pickle: bool) -> BaseModel:
    source = reference.get("source")
    if source == "demo":
        base = resolve_base(reference["name"], allow_pickle)
    elif source == "local":
        directory = Path(reference.get("path", ""))
        if not directory.is_dir():
            raise JdnaError(f"base model directory '{directory}' of '{artifact_path}' is missing: restore it")
        base = base_from_dir(reference["name"], "local", directory, allow_pickle)
    else:
        base = resolve_base(reference["name"], allow_pickle)
    if base.sha256 != reference.get("sha256"):
        raise JdnaError(
            f"the base weights of '{artifact_path}' ({reference.get('name')}) no longer match the sha256 recorded "
            "in the artifact: the base model changed; restore it or recreate the artifact"
        )
    return base


def resolve(spec: str, allow_pickle: bool = False) -> ModelRef:
    """Resolve any MODEL argument into a base model and an artifact chain."""
    if not spec:
        raise JdnaError("no model given: pass a MODEL (path, HF id or demo name) or pipe a jdna record")
    path = Path(os.path.expanduser(spec))
    if path.is_file() and not is_gguf_file(path):
        try:
            artifact = read_artifact(path)
        except JdnaError as error:
            raise not_a_model_error(path) or error from None
        chain = artifact_chain(artifact)
        base = _base_from_reference(chain[0].header["base"], chain[0].path, allow_pickle)
        for item in chain[1:]:
            if item.header["base"].get("sha256") != base.sha256:
                raise JdnaError(f"artifact '{item.path}' names a different base model than its parent")
        return ModelRef(base=base, chain=chain)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO, socket or device: never a hub id
        raise JdnaError(f"model '{spec}' is not a regular file or a model directory")
    base = resolve_base(spec, allow_pickle)
    exported = read_export_metadata(base.path)
    return ModelRef(base=base, dense_parent=(exported or {}).get("dense_parent"))


# --- loading -----------------------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def apply_artifact(model: nn.Module, artifact: Artifact) -> None:
    """Change `model` as the artifact's kind declares (jdna.kinds): masks, new weights, dequantized codes..."""
    if artifact.kind not in KINDS:
        raise JdnaError(f"artifact '{artifact.path}' has kind '{artifact.kind}', which this jdna cannot load")
    kind_of(artifact).apply(model, artifact)


def dense_parent_of(ref: ModelRef) -> dict[str, Any] | None:
    """The dense model `ref` was compressed from: the one named by --dense-parent or export metadata, else the
    base of a chain with a compressing step (a kind declared ``compresses``); None for a dense model."""
    if ref.dense_parent is not None:
        return ref.dense_parent
    if not any(kind_of(artifact).compresses for artifact in ref.chain):
        return None
    base = ref.base
    return {"name": base.name, "id": base.sha256, "source": base.source}


def head_of(ref: ModelRef) -> dict[str, Any] | None:
    """The task head recorded by the newest fine-tuned artifact in the chain, if any."""
    for artifact in reversed(ref.chain):
        head = artifact.header.get("head")
        if head:
            return head
    return None


def load_model(
    ref: ModelRef,
    head: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str = "auto",
    allow_pickle: bool = False,
    device_map: str | None = None,
) -> tuple[nn.Module, Any]:
    """Materialise `ref` as a transformers model (eval mode) and its tokenizer.

    `head` selects a task head, e.g. ``{"type": "sequence_classification", "num_labels": 2}``; by default a
    head recorded in the chain is used, else the base model's own class (causal LM or bare encoder).
    `device_map` (e.g. ``"auto"``) lets accelerate spread the layers over the GPUs and CPU memory instead of
    putting the whole model on `device`.
    """
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    # jdna reports its own progress; transformers' per-load bars would interleave with it on stderr.
    hf_logging.disable_progress_bar()
    head = head or head_of(ref)
    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": not allow_pickle}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if head and head.get("type") == "sequence_classification":
        kwargs["num_labels"] = int(head["num_labels"])
        if head.get("problem_type"):
            kwargs["problem_type"] = head["problem_type"]
        model_class: Any = AutoModelForSequenceClassification
    elif head and head.get("type") == "multiple_choice":
        model_class = AutoModelForMultipleChoice  # (question, option) pair scorer: jdna.finetune.multiple_choice
    elif ref.base.family == "causal_lm":
        model_class = AutoModelForCausalLM
    else:
        model_class = AutoModel
    kwargs.update(loading_kwargs(ref.base.config, ref.base.path))  # a compressed-tensors export loads decompressed
    try:
        load_class, source = pretrained_source(model_class, ref.base.path, kwargs)
        model = load_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise JdnaError(f"could not load model '{ref.base.name}': {reason}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(ref.base.path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if ref.chain and device_map is not None and any(p.device.type == "meta" for p in model.parameters()):
        raise JdnaError(
            f"--device-map {device_map} offloaded part of '{ref.display_name}' (it does not fit in GPU and CPU "
            "memory together), and an artifact's weights cannot be applied to offloaded layers: use more GPUs "
            "or a machine with more memory"
        )
    for artifact in ref.chain:
        apply_artifact(model, artifact)
    model.eval()
    if device is not None and device_map is None:
        model.to(device)
    return model, tokenizer
