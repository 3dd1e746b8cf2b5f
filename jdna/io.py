"""Atomic writes and content hashing: nothing partial is ever visible under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

from jdna.errors import JdnaError
from jdna.outputs import Claim, unguarded
from jdna.paths import jdna_home

_CHUNK = 1 << 22
# Below this size a file is hashed afresh every time: small inputs (task files, calibration text, baseline
# tables) are edited in place, and an edit that keeps the size within one mtime tick would hit a stale memo.
_MEMO_MIN_BYTES = 64 << 20


@contextlib.contextmanager
def atomic_path(final: Path, claim: Claim | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    The policy (permissions, fsync, racing writers, library write errors) lives in jdna.outputs; `claim`
    is the command's claim on an output it was given, absent for internal files such as caches.
    """
    with (claim or unguarded(Path(final))).write() as tmp:
        yield tmp


def write_text_atomic(final: Path, text: str, claim: Claim | None = None) -> None:
    with (claim or unguarded(Path(final))).write() as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_json(path: Path) -> None:
    """What was written reads back (a short write would not parse)."""
    json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(final: Path, payload: object, claim: Claim | None = None) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    with (claim or unguarded(Path(final))).write(verify=_check_json) as tmp:
        tmp.write_text(text, encoding="utf-8")


def finite_json(value: object) -> object:
    """`value` with every NaN or infinite float replaced by None, so it serialises as standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def sha256_file(path: Path) -> str:
    """sha256 of a file; large ones (model weights) memoised in $JDNA_HOME/hashes.json by (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < _MEMO_MIN_BYTES:
        return _digest(path)
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = jdna_home() / "hashes.json"
    cache: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    if key in cache:
        return cache[key]
    value = _digest(path)
    cache[key] = value
    with contextlib.suppress(OSError, JdnaError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, cache)
    return value


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(payload: object) -> str:
    """JSON with sorted keys and no whitespace: the form that content hashes are taken over."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))
