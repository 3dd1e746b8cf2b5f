"""Where jdna keeps things: its home (caches, demo models, data) and the run cache."""

from __future__ import annotations

import os
from pathlib import Path


def jdna_home() -> Path:
    """$JDNA_HOME, default ~/.cache/jdna: demo model caches, BIG-bench data, the hash cache."""
    return _directory("JDNA_HOME", expand(os.environ.get("JDNA_HOME") or Path.home() / ".cache" / "jdna"))


def runs_dir() -> Path:
    """$JDNA_RUNS, default ./runs: the content-addressed store that makes re-running a step free."""
    return _directory("JDNA_RUNS", expand(os.environ.get("JDNA_RUNS") or "runs"))


def _directory(variable: str, path: Path) -> Path:
    """`path`, unless something other than a directory is there (it may not exist yet)."""
    if path.exists() and not path.is_dir():
        from jdna.errors import JdnaError

        raise JdnaError(f"${variable} '{path}' is not a directory: point it at a directory (it may not exist yet)")
    return path


def expand(path: str | os.PathLike[str]) -> Path:
    """`~` expansion that never raises: an unknown `~user` stays literal and fails later as a missing path."""
    return Path(os.path.expanduser(os.fspath(path)))
