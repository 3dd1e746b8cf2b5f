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
import math
import os
import platform
import random
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from jdna import __version__
from jdna.bitmask import count_kept, pack_mask, unpack_mask
from jdna.errors import JdnaError, nearest
from jdna.io import canonical_json, sha256_file, sha256_text
from jdna.kinds import KINDS
from jdna.kinds.base import dims
from jdna.outputs import Claim, claim_output, unguarded
from jdna.paths import runs_dir

FORMAT_NAME = "jdna-artifact"
FORMAT_VERSION = 1
METADATA_KEY = "jdna"


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


def dense_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with standard row-major strides.

    `.contiguous()` alone is not enough: a [n, 1] factor counts as contiguous whatever the stride of its
    size-1 dimension, and then cannot be viewed as bytes (a rank-1 low-rank factor did exactly that).
    """
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dim() and tensor.stride(-1) != 1:
        tensor = tensor.reshape(-1).clone().reshape(tensor.shape)
    return tensor


def _digest_tensor(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = dense_tensor(tensor)
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash over tensor names, dtypes, shapes and bytes; independent of header fields such as the time."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _digest_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def tensor_sha256(name: str, tensor: torch.Tensor) -> str:
    """One tensor's hash, recorded per tensor so a cache hit on a large artifact can check a sample cheaply."""
    digest = hashlib.sha256()
    _digest_tensor(digest, name, tensor)
    return digest.hexdigest()


def header_sha256(header: dict[str, Any]) -> str:
    """The hash of every header field but itself: an edited header no longer matches it."""
    return sha256_text(canonical_json({k: v for k, v in header.items() if k != "header_sha256"}))


def _check_written(expected: dict[str, Any], names: set[str]) -> Any:
    """Read back what was just written: the header and the tensor names must be what was meant."""

    def check(tmp: Path) -> None:
        with safe_open(str(tmp), framework="pt") as handle:
            metadata = handle.metadata() or {}
            written = set(handle.keys())
        if written != names or json.loads(metadata.get(METADATA_KEY, "null")) != expected:
            raise JdnaError(f"the artifact written to '{tmp}' does not read back as written: disk or filesystem fault")

    return check


def write_artifact(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], claim: Claim | None = None
) -> dict[str, Any]:
    """Write atomically; fills in format, versions, time and the hashes. Returns the full header.

    `claim` is the command's claim on the path (jdna.outputs); without it the write is only atomic.
    """
    full = dict(header)
    full["format"] = FORMAT_NAME
    full["version"] = FORMAT_VERSION
    full["versions"] = versions()
    full["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    contiguous = {name: dense_tensor(t) for name, t in tensors.items()}
    full["tensors_sha256"] = tensors_sha256(contiguous)
    full["tensor_sha256"] = {name: tensor_sha256(name, t) for name, t in contiguous.items()}
    full["header_sha256"] = header_sha256(full)
    text = json.dumps(full, sort_keys=True)
    expected = json.loads(text)
    with (claim or unguarded(Path(path))).write(verify=_check_written(expected, set(contiguous))) as tmp:
        save_file(contiguous, str(tmp), metadata={METADATA_KEY: text})
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
    if header["kind"] not in KINDS:
        suggestion = nearest(header["kind"], KINDS.names())
        hint = f" (did you mean '{suggestion}'?)" if suggestion else f" (known: {', '.join(KINDS.names())})"
        raise JdnaError(
            f"'{path}' has an unknown artifact kind {str(header['kind'])[:40]!r}{hint}: recreate it"
        )
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        layout = {name: (handle.get_slice(name).get_dtype(), list(handle.get_slice(name).get_shape()))
                  for name in names}
    check_layout(path, header, layout)
    artifact = Artifact(path=path, header=header, tensor_names=names)
    if verify:
        recorded = header.get("header_sha256")
        if recorded is not None and recorded != header_sha256(header):
            raise JdnaError(f"'{path}' is corrupt: its header was edited after it was written; recreate it")
        actual = tensors_sha256(artifact.tensors())
        if actual != header.get("tensors_sha256"):
            raise JdnaError(
                f"'{path}' is corrupt: its tensors do not match the hash in its header; recreate it"
            )
    return artifact


# --- the header must describe the tensors it sits on ---------------------------------------------------


def check_layout(path: Path, header: dict[str, Any], layout: dict[str, tuple[str, list[int]]]) -> None:
    """Refuse a header that does not describe its tensors, before any tensor is read or allocated.

    Declared masks must exist as uint8 streams of exactly the packed size their shape needs (a shape that
    asks for 931 GiB fails here, not in an allocation), the tensors must be ones the kind produces, and the
    kind's own check (:class:`jdna.kinds.ArtifactKind` ``check_layout``: quantized codes and scales, low-rank
    factors with matching sizes...) must pass.
    """
    kind = KINDS.get(header["kind"])

    def bad(reason: str) -> JdnaError:
        return JdnaError(f"'{path}' has a header that does not match its tensors ({reason}): recreate it")

    for name in layout:
        if not name.startswith(kind.tensor_prefixes):
            raise bad(f"a {kind.name} artifact does not hold a tensor like '{name[:60]}'")
    masks = header.get("masks", None if kind.masks_table_required else {})
    if not isinstance(masks, dict):
        raise bad("'masks' is missing or not a table")
    mask_tensors = {name[5:] for name in layout if name.startswith("mask.")}
    if set(masks) != mask_tensors:
        extra = sorted(set(masks) - mask_tensors) or sorted(mask_tensors - set(masks))
        raise bad(f"mask '{extra[0][:60]}' is declared but not stored, or stored but not declared")
    for name, shape in masks.items():
        shape_dims = dims(shape)
        if shape_dims is None:
            raise bad(f"mask '{name[:60]}' has an invalid shape")
        dtype, stored = layout[f"mask.{name}"]
        needed = (math.prod(shape_dims) + 7) // 8
        if dtype != "U8" or len(stored) != 1 or stored[0] != needed:
            raise bad(f"mask '{name[:60]}' declares shape {shape_dims} but stores {stored} {dtype}")
    if kind.check_layout is not None:
        kind.check_layout(header, layout, bad)


# --- verifying a cache hit -----------------------------------------------------------------------------

FULL_VERIFY_BYTES = 256 << 20  # below this a cache hit re-hashes every tensor
SAMPLE_VERIFY_BYTES = 64 << 20  # above it, tensors drawn at random up to this many bytes


def verify_for_reuse(artifact: Artifact) -> bool:
    """Whether a cached artifact's tensors still match its header: every tensor of a small file, a random
    sample of a large one (each checked against its own recorded hash)."""
    try:
        size = os.path.getsize(artifact.path)
        recorded = artifact.header.get("header_sha256")
        if recorded is not None and recorded != header_sha256(artifact.header):
            return False
        per_tensor = artifact.header.get("tensor_sha256")
        if size <= FULL_VERIFY_BYTES or not isinstance(per_tensor, dict):
            return tensors_sha256(artifact.tensors()) == artifact.header.get("tensors_sha256")
        names = list(artifact.tensor_names)
        random.shuffle(names)
        budget = SAMPLE_VERIFY_BYTES
        with safe_open(str(artifact.path), framework="pt") as handle:
            for name in names:
                tensor = handle.get_tensor(name)
                if tensor_sha256(name, tensor) != per_tensor.get(name):
                    return False
                budget -= tensor.numel() * tensor.element_size()
                if budget <= 0:
                    break
        return True
    except Exception:  # an unreadable tensor is as bad as a wrong one
        return False


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


def cached_artifact(
    path: Path,
    identity: str,
    explicit: bool,
    force: bool,
    reporter: Any = None,
    reusable: Callable[[Artifact], bool] | None = None,
) -> Artifact | None:
    """The artifact already at `path` if it is readable, has the content address `identity` and its tensors
    still match their recorded hashes.

    Every artifact-producing step calls this before doing work: a hit makes re-running a step free. An
    unreadable or corrupt file at a content-addressed path (not one the user named) is reported and then
    recomputed; one the user named needs --force (see `claim_artifact_output`). `reusable` adds the step's
    own condition: an artifact it rejects is recomputed, without a line.
    """
    if force or not Path(path).is_file():
        return None
    try:
        existing = read_artifact(path)
    except JdnaError:
        existing = None
    if existing is not None and existing.id == identity:
        if verify_for_reuse(existing):
            if reusable is not None and not reusable(existing):
                return None
            if reporter is not None:
                reporter.log(f"cache hit: {path}")
            return existing
        if reporter is not None:
            reporter.log(f"cached {path} is corrupt (its tensors no longer match their hashes): recomputing it")
        return None
    if existing is None and not explicit and reporter is not None:
        reporter.log(f"replacing unreadable cached file {path}")
    return None


def claim_artifact_output(
    path: Path, identity: str, explicit: bool, force: bool, protected: list[Path] | None = None
) -> Claim:
    """The output policy for an artifact: a named -o is never replaced without --force (a corrupt cache of
    this very step is, since it is ours), and never when it is one of the command's inputs."""
    def same_step(existing: Path) -> bool:
        try:
            return read_artifact(existing).id == identity
        except JdnaError:
            return False

    replace = force or not explicit or same_step(path)
    return claim_output(path, flag="-o", replace=replace, protected=protected or [], accept_existing=same_step)


def lineage_paths(chain: list[Artifact]) -> list[Path]:
    """The files a command reading `chain` must never replace."""
    return [artifact.path for artifact in chain]


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

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def kept(self, name: str) -> int:
        """How many weights the mask keeps, counted on the packed bits (no unpacking)."""
        return count_kept(self._packed[name])

    def set_packed(self, name: str, packed: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Store a mask that is already bit-packed (as `pack_mask` packs it)."""
        self._packed[name] = packed
        self._shapes[name] = tuple(shape)
