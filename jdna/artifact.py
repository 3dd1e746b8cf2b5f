"""The artifact file: one .safetensors whose header metadata describes what it is and where it came from.

Layout (see docs/artifacts.md): tensors hold only what the operation produced (bit-packed masks, updated
weights, integer codes, factors); the metadata key ``jdna`` holds a JSON header with the format version, kind,
base model reference, parent reference, operation and parameters, statistics and versions. Loading a model
resolves the parent chain back to the hashed base weights.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jdna import __version__
from jdna.errors import JdnaError
from jdna.io import atomic_path, canonical_json, sha256_file, sha256_text
from jdna.paths import runs_dir

FORMAT_NAME = "jdna-artifact"
FORMAT_VERSION = 1
METADATA_KEY = "jdna"
ARTIFACT_KINDS = ("pruned", "quantized", "lowrank", "finetuned")


@dataclass
class Artifact:
    """An artifact on disk: its header, and lazy access to its tensors."""

    path: Path
    header: dict[str, Any]
    tensor_names: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def id(self) -> str:
        return self.header["id"]

    def tensor(self, name: str) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(name)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Tensors whose name starts with `prefix`, keyed by the rest of the name."""
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(self.path), framework="pt") as handle:
            for name in handle.keys():
                if name.startswith(prefix):
                    out[name[len(prefix) :]] = handle.get_tensor(name)
        return out


def versions() -> dict[str, str]:
    import transformers

    return {
        "jdna": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def artifact_id(parent_identity: str, operation: str, params: dict[str, Any]) -> str:
    """The content address of a step: the same parent, operation and parameters give the same id."""
    payload = {"format": FORMAT_VERSION, "parent": parent_identity, "operation": operation, "params": params}
    return sha256_text(canonical_json(payload))


def default_output_path(kind: str, identity: str) -> Path:
    return runs_dir() / kind / f"{identity[:20]}.safetensors"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash over tensor names, dtypes, shapes and bytes; independent of header fields such as the time."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def write_artifact(path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write atomically; fills in format, versions, time and the tensor hash. Returns the full header."""
    full = dict(header)
    full["format"] = FORMAT_NAME
    full["version"] = FORMAT_VERSION
    full["versions"] = versions()
    full["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    contiguous = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    full["tensors_sha256"] = tensors_sha256(contiguous)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={METADATA_KEY: json.dumps(full, sort_keys=True)})
    return full


def is_artifact_file(path: Path) -> bool:
    try:
        read_artifact(path)
    except JdnaError:
        return False
    return True


def read_header_raw(path: Path) -> dict[str, str] | None:
    """The raw safetensors metadata, or a JdnaError for a file that is not readable safetensors."""
    path = Path(path)
    if not path.is_file():
        raise JdnaError(f"'{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata()
    except Exception as error:  # safetensors raises several error types for damaged files
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise JdnaError(
            f"'{path}' is not a readable safetensors file ({reason}): it may be truncated or corrupt; "
            "recreate it"
        ) from None


def read_artifact(path: Path, verify: bool = False) -> Artifact:
    """Open an artifact; with `verify`, also check the tensor hash recorded at write time."""
    path = Path(path)
    metadata = read_header_raw(path)
    if not metadata or METADATA_KEY not in metadata:
        raise JdnaError(
            f"'{path}' is a safetensors file but not a jdna artifact (no '{METADATA_KEY}' header)"
        )
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        raise JdnaError(f"'{path}' has a corrupt jdna header (invalid JSON): recreate the artifact") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise JdnaError(f"'{path}' has a header that is not a jdna artifact header")
    if header.get("version") != FORMAT_VERSION:
        raise JdnaError(
            f"'{path}' uses artifact format version {header.get('version')}, this jdna reads {FORMAT_VERSION}"
        )
    for key in ("kind", "id", "base", "operation"):
        if key not in header:
            raise JdnaError(f"'{path}' has an incomplete jdna header (missing '{key}')")
    expected = {"kind": str, "id": str, "base": dict, "operation": dict, "parent": (dict, type(None)),
                "stats": dict}
    for key, types in expected.items():
        if key in header and not isinstance(header[key], types):
            raise JdnaError(f"'{path}' has a malformed jdna header ('{key}' has the wrong type): recreate it")
    references = {"base": header["base"], "parent": header.get("parent") or {}}
    for key, reference in references.items():
        fields = ("name", "path", "source", "sha256") if key == "base" else ("path", "file", "id", "sha256")
        missing_name = key == "base" and "name" not in reference
        if missing_name or not all(isinstance(reference.get(f, ""), str) for f in fields):
            raise JdnaError(f"'{path}' has a malformed jdna header ('{key}' reference): recreate it")
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
    artifact = Artifact(path=path, header=header, tensor_names=names)
    if verify:
        actual = tensors_sha256(artifact.tensors())
        if actual != header.get("tensors_sha256"):
            raise JdnaError(
                f"'{path}' is corrupt: its tensors do not match the hash in its header; recreate it"
            )
    return artifact


def parent_reference(parent: Artifact) -> dict[str, Any]:
    return {
        "path": str(parent.path.resolve()),
        "file": parent.path.name,
        "id": parent.id,
        "kind": parent.kind,
        "sha256": sha256_file(parent.path),
    }


def resolve_parent(artifact: Artifact) -> Artifact | None:
    """Find the parent artifact: at its recorded path, else by file name beside this artifact's run store.

    The fallback only looks in this artifact's directory and its sibling directories, by a plain file name,
    so a header can never point a load outside the run store it was found in.
    """
    reference = artifact.header.get("parent")
    if not reference:
        return None
    candidates = []
    recorded = Path(reference.get("path", ""))
    if recorded.is_absolute():
        candidates.append(recorded)
    name = reference.get("file", "")
    if name and Path(name).name == name and name not in (".", ".."):
        here = artifact.path.resolve().parent
        candidates.append(here / name)
        candidates.extend(sorted(here.parent.glob(f"*/{name}")))
    for candidate in candidates:
        if candidate.is_file():
            parent = read_artifact(candidate)
            if parent.id != reference.get("id"):
                continue
            if sha256_file(candidate) != reference.get("sha256"):
                raise JdnaError(
                    f"parent artifact '{candidate}' of '{artifact.path}' changed since it was used "
                    "(sha256 mismatch): recreate the child"
                )
            return parent
    raise JdnaError(
        f"parent artifact '{reference.get('path')}' of '{artifact.path}' is missing: restore it or rerun that step"
    )


def artifact_chain(artifact: Artifact) -> list[Artifact]:
    """The chain from the artifact nearest the base model to `artifact` itself."""
    chain = [artifact]
    seen = {artifact.id}
    while (parent := resolve_parent(chain[-1])) is not None:
        if parent.id in seen:
            raise JdnaError(f"artifact '{artifact.path}' has a cyclic parent chain")
        seen.add(parent.id)
        chain.append(parent)
    return list(reversed(chain))


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """Bit-pack a boolean mask (little-endian bit order) into uint8."""
    flat = keep.detach().reshape(-1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat if flat.dtype == np.bool_ else flat.astype(bool), bitorder="little"))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    numel = int(np.prod(shape)) if len(shape) else 1
    bits = np.unpackbits(packed.numpy(), count=numel, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_)).reshape(tuple(shape))


def cached_artifact(path: Path, identity: str, explicit: bool, force: bool, reporter: Any = None) -> Artifact | None:
    """The artifact already at `path` if it is readable and has the content address `identity`.

    Every artifact-producing step calls this before doing work: a hit makes re-running a step free. An
    unreadable file at a content-addressed path (not one the user named) is reported and then overwritten.
    """
    if force or not Path(path).exists():
        return None
    try:
        existing = read_artifact(path)
    except JdnaError:
        existing = None
    if existing is not None and existing.id == identity:
        if reporter is not None:
            reporter.log(f"cache hit: {path}")
        return existing
    if existing is None and not explicit and reporter is not None:
        reporter.log(f"replacing unreadable cached file {path}")
    return None


class PackedMasks(MutableMapping):
    """Keep-masks held at one bit per weight; reading a name unpacks just that mask.

    Pruning a 7B model would otherwise hold 6.5 GB of boolean masks at once.
    """

    def __init__(self) -> None:
        self._packed: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def __setitem__(self, name: str, keep: torch.Tensor) -> None:
        self._packed[name] = pack_mask(keep)
        self._shapes[name] = tuple(keep.shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        return unpack_mask(self._packed[name], self._shapes[name])

    def __delitem__(self, name: str) -> None:
        del self._packed[name]
        del self._shapes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)

    def packed(self, name: str) -> torch.Tensor:
        return self._packed[name]

    def set_packed(self, name: str, packed: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Store a mask that is already bit-packed (as `pack_mask` packs it)."""
        self._packed[name] = packed
        self._shapes[name] = tuple(shape)
