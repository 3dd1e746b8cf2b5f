"""Fetch the BIG-bench JSON tasks into $JDNA_HOME/bigbench/benchmark_tasks (run by `make data`).

The tasks ship inside the `bigbench==1.0.0` source distribution on PyPI, so this downloads that sdist
with pip (never installs it: its dependency pins would wreck the environment) and extracts only the
`bigbench/benchmark_tasks/**/task.json` files.

Why the pip dance: pip >= 26 refuses to even *download* a PyPI sdist whose metadata declares a
direct-URL dependency (bigbench depends on `bleurt @ file://...`), even with `--no-deps`. In that
case a pip < 26 is installed into a throwaway directory and run from there, leaving the venv's pip
alone. `--no-build-isolation` makes pip prepare the metadata with the venv's setuptools and wheel
instead of fetching them, so both must be installed.

Extraction goes to a temporary directory next to the destination and is renamed into place, so an
interrupted run never leaves a half-filled tree; a completed tree is detected and left alone.

Usage: python scripts/fetch_bigbench.py [--force] [--sdist PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "1.0.0"
TASKS_PREFIX = "bigbench/benchmark_tasks/"
# Written last inside the tree, so its presence means the extraction finished.
COMPLETE_MARKER = ".jdna_complete"
# The last pip release that still downloads sdists declaring direct-URL dependencies.
LEGACY_PIP = "pip<26"


def jdna_home() -> Path:
    return Path(os.environ.get("JDNA_HOME") or Path.home() / ".cache" / "jdna").expanduser()


def destination() -> Path:
    """Where the tasks go: $JDNA_BIGBENCH when set (what the loader reads), else under $JDNA_HOME."""
    override = os.environ.get("JDNA_BIGBENCH")
    if override:
        return Path(override).expanduser()
    return jdna_home() / "bigbench" / "benchmark_tasks"


def fail(message: str) -> None:
    print(f"fetch_bigbench: {message}", file=sys.stderr)
    raise SystemExit(1)


def pip_major() -> int:
    from importlib.metadata import version

    return int(version("pip").split(".")[0])


def download_sdist(workdir: Path) -> Path:
    """Download bigbench's sdist into `workdir` with pip and return its path."""
    missing = [name for name in ("setuptools", "wheel") if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"{' and '.join(missing)} missing: run '{sys.executable} -m pip install setuptools wheel' first")
    env = dict(os.environ)
    if pip_major() >= 26:
        legacy = workdir / "legacy-pip"
        print(f"fetch_bigbench: installing {LEGACY_PIP} into a temporary directory", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(legacy), LEGACY_PIP],
            check=True,
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(legacy), env.get("PYTHONPATH")]))
    downloads = workdir / "sdist"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--no-build-isolation", f"bigbench=={VERSION}", "-d", str(downloads),
    ]  # fmt: skip
    print(f"fetch_bigbench: downloading bigbench=={VERSION} (~358 MB)", file=sys.stderr)
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        fail(f"pip download of bigbench=={VERSION} failed (exit {result.returncode}); is PyPI reachable?")
    archives = sorted(downloads.glob("bigbench-*.tar.gz"))
    if not archives:
        fail(f"pip reported success but no bigbench sdist is in {downloads}")
    return archives[0]


def extract_tasks(archive: Path, target: Path) -> int:
    """Extract every task.json under benchmark_tasks into `target` atomically; return how many."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bigbench-extract-", dir=target.parent))
    # mkdtemp makes the directory private; the renamed tree should read like any other data.
    staging.chmod(0o755)
    count = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                # Members look like bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<subtask>]/task.json.
                _, _, inner = member.name.partition("/")
                if not (member.isfile() and inner.startswith(TASKS_PREFIX) and inner.endswith("/task.json")):
                    continue
                relative = Path(inner[len(TASKS_PREFIX) :])
                if relative.is_absolute() or ".." in relative.parts:
                    continue
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # isfile() members always have a payload
                with source, open(out, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                count += 1
        if count == 0:
            fail(f"no {TASKS_PREFIX}**/task.json inside {archive}")
        (staging / COMPLETE_MARKER).write_text(f"bigbench=={VERSION} task.json files: {count}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-fetch even if the tasks are present")
    parser.add_argument("--sdist", type=Path, help="use an already downloaded bigbench sdist")
    args = parser.parse_args(argv)

    target = destination()
    if (target / COMPLETE_MARKER).exists() and not args.force:
        print(f"fetch_bigbench: tasks already in {target} (use --force to re-fetch)", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="jdna-bigbench-") as tmp:
        archive = args.sdist if args.sdist else download_sdist(Path(tmp))
        if not archive.is_file():
            fail(f"sdist {archive} not found")
        count = extract_tasks(archive, target)
    print(f"fetch_bigbench: {count} task.json files in {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
