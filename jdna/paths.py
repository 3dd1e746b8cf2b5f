"""Where jdna keeps things: its home (caches, demo models, data) and the run cache."""

from __future__ import annotations

import os
from pathlib import Path


def jdna_home() -> Path:
    """$JDNA_HOME, default ~/.cache/jdna: demo model caches, BIG-bench data, the hash cache."""
    return Path(os.environ.get("JDNA_HOME", Path.home() / ".cache" / "jdna")).expanduser()


def runs_dir() -> Path:
    """$JDNA_RUNS, default ./runs: the content-addressed store that makes re-running a step free."""
    return Path(os.environ.get("JDNA_RUNS", "runs")).expanduser()


def expand(path: str | os.PathLike[str]) -> Path:
    """`~` expansion that never raises: an unknown `~user` stays literal and fails later as a missing path."""
    return Path(os.path.expanduser(os.fspath(path)))
