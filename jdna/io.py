"""Atomic writes and content hashing: nothing partial is ever visible under a final name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jdna.errors import JdnaError
from jdna.paths import jdna_home

_CHUNK = 1 << 22
# Below this size a file is hashed afresh every time: small inputs (task files, calibration text, baseline
# tables) are edited in place, and an edit that keeps the size within one mtime tick would hit a stale memo.
_MEMO_MIN_BYTES = 64 << 20


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it over `final` only if the block succeeds.

    The temporary file lives in the same directory so the rename is atomic on POSIX; two processes
    writing the same content-addressed file both succeed and readers see one complete file.
    """
    final = Path(final)
    directory = final.parent
    if not directory.is_dir():
        raise JdnaError(f"output directory '{directory}' does not exist: create it or choose another -o path")
    if not os.access(directory, os.W_OK):
        raise JdnaError(f"output directory '{directory}' is not writable: choose another -o path")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise JdnaError(f"could not write '{final}': {error.strerror or error}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: Path, payload: object) -> None:
    write_text_atomic(final, json.dumps(payload, indent=2, sort_keys=True) + "\n")


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
