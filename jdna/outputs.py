"""The output policy, in one place: where a command may write, and how every file reaches its final name.

Every writer (artifacts, records, --log-samples, figures, exports, checkpoints) goes through this module:

- an existing file is never replaced unless the caller says so (``--force``); a command's own input, or any
  artifact in its lineage, is never replaced at all; nothing is written through a FIFO, a device node or a
  directory;
- the bytes go to a temporary file in the target directory, are flushed to disk and checked, and only then
  renamed over the final name, so a reader sees the old file or the complete new one and nothing between;
- files get the permissions the umask asks for (mkstemp alone would make them 0600);
- a claim remembers what was at the path when the command started: if another command wrote there in the
  meantime, the later one fails instead of exiting 0 with a record that describes someone else's file;
- nothing is created (not even a directory) before the write itself, so a refused command leaves no debris.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jdna.errors import JdnaError

FileState = tuple[int, int, int, int]
_UNCHECKED = (-1, -1, -1, -1)  # a claim that does not guard against concurrent writers
_WRITE_LIBRARIES = ("safetensors", "PIL", "matplotlib", "tokenizers", "transformers")


def _state(path: Path) -> FileState | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def file_mode() -> int:
    """The mode a new regular file gets under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def dir_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _existing_ancestor(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_target(path: Path, flag: str = "-o", directory_ok: bool = False) -> Path:
    """The checks that need nothing but the path; the CLI calls this before loading anything.

    The path's directory may not exist yet (a run-store folder is created at write time), but its nearest
    existing ancestor must be a writable directory.
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise JdnaError(f"{flag} '{path}' cannot be used: {error.strerror or error}") from None
    if info is not None:
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            with contextlib.suppress(OSError):
                mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode) and not directory_ok:
            raise JdnaError(f"{flag} '{path}' is a directory: give a file path")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or (directory_ok and stat.S_ISDIR(mode))):
            raise JdnaError(
                f"{flag} '{path}' is not a regular file (a FIFO, socket or device): jdna only writes regular files"
            )
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise JdnaError(f"output directory '{path.parent}' is not a directory ('{ancestor}' is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise JdnaError(f"output directory '{ancestor}' is not writable: choose another {flag} path")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def is_write_library_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in _WRITE_LIBRARIES


def write_failure(path: Path, error: BaseException) -> JdnaError:
    """A one-line 'could not write' for an OSError or a writer library's own error type."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        # safetensors wraps the OS error in its own text ("... IoError(Os { code: 27, kind: FileTooLarge ...")
        for code, name in ((28, "No space left on device"), (27, "File too large"), (13, "Permission denied"),
                           (122, "Disk quota exceeded"), (30, "Read-only file system")):
            if f"code: {code}," in text or f"Errno {code}]" in text:
                text = name
                break
        reason = text[:200]
    return JdnaError(f"could not write '{path}': {reason}")


@dataclass
class Claim:
    """Permission to write one path, with what was there when it was granted."""

    path: Path
    flag: str = "-o"
    before: FileState | None = _UNCHECKED
    # Called with the final path when another writer got there first: True if that file is as good as ours
    # (the same content address), in which case our copy is dropped and the command succeeds.
    accept_existing: Callable[[Path], bool] | None = None
    directory: bool = False
    created_parents: list[Path] = field(default_factory=list)

    def _mkdirs(self) -> None:
        parent = self.path.parent
        missing = []
        current = parent
        while not current.exists() and current != current.parent:
            missing.append(current)
            current = current.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_failure(self.path, error) from None
        self.created_parents = missing

    def _remove_created_parents(self) -> None:
        for directory in self.created_parents:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()

    @contextlib.contextmanager
    def _directory_lock(self) -> Iterator[None]:
        """Serialise the check-then-rename of writers in one directory (advisory; skipped where unsupported)."""
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _commit(self, tmp: Path) -> bool:
        """Rename `tmp` over the final path; False if an equivalent file won the race and `tmp` was dropped."""
        with self._directory_lock():
            if self.before != _UNCHECKED:
                now = _state(self.path)
                if now != self.before:
                    if now is not None and self.accept_existing is not None and self.accept_existing(self.path):
                        return False
                    raise JdnaError(
                        f"{self.flag} '{self.path}' was written by another command while this one ran: nothing "
                        "was written; rerun, or give each command its own path"
                    )
            if self.directory:
                if self.path.exists():
                    shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
                os.rename(tmp, self.path)
            else:
                os.replace(tmp, self.path)
        return True

    @contextlib.contextmanager
    def write(self, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
        """Yield a temporary path beside the target; fsync, `verify` and rename it into place on success."""
        check_target(self.path, self.flag, directory_ok=self.directory)
        self._mkdirs()
        try:
            if self.directory:
                tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
                os.chmod(tmp, dir_mode())
            else:
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
                os.fchmod(fd, file_mode())
                os.close(fd)
                tmp = Path(name)
        except OSError as error:
            self._remove_created_parents()
            raise write_failure(self.path, error) from None
        renamed = False
        try:
            yield tmp
            # Again after the block: a writer that recreates the file (safetensors does) resets the mode.
            os.chmod(tmp, dir_mode() if self.directory else file_mode())
            _fsync(tmp)
            if verify is not None:
                verify(tmp)
            renamed = self._commit(tmp)
        except JdnaError:
            self._remove_created_parents_after(tmp)
            raise
        except OSError as error:
            self._remove_created_parents_after(tmp)
            raise write_failure(self.path, error) from None
        except Exception as error:
            self._remove_created_parents_after(tmp)
            if is_write_library_error(error):
                raise write_failure(self.path, error) from None
            raise
        except BaseException:
            self._remove_created_parents_after(tmp)
            raise
        finally:
            if not renamed:
                _remove(tmp)

    def _remove_created_parents_after(self, tmp: Path) -> None:
        _remove(tmp)
        self._remove_created_parents()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    if path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim_output(
    path: Path,
    *,
    flag: str = "-o",
    replace: bool = False,
    protected: Iterable[Path] = (),
    accept_existing: Callable[[Path], bool] | None = None,
    directory: bool = False,
) -> Claim:
    """Check that a command may write `path` and remember what is there now.

    `replace`: an existing file may be replaced (``--force``, or a content-addressed cache file that is
    unreadable or stale). `protected`: the command's inputs and their lineage, never replaced.
    """
    path = Path(path)
    check_target(path, flag, directory_ok=directory)
    for source in protected:
        if source and _same_file(path, Path(source)):
            raise JdnaError(
                f"{flag} '{path}' is this command's own input (or an artifact it derives from): refusing to "
                "replace it, even with --force; choose another path"
            )
    before = _state(path)
    if before is not None and not replace:
        raise JdnaError(f"{flag} '{path}' already exists: pass --force to replace it, or choose another path")
    return Claim(path=path, flag=flag, before=before, accept_existing=accept_existing, directory=directory)


def unguarded(path: Path) -> Claim:
    """A claim for internal files (caches, checkpoints) that only needs the atomic write."""
    return Claim(path=Path(path))


def model_inputs(ref: object) -> list[Path]:
    """The files a command reading the model `ref` (a jdna.models.ModelRef) must never replace: the base
    model's files and every artifact in its chain."""
    paths: list[Path] = []
    base_dir = getattr(getattr(ref, "base", None), "path", None)
    if base_dir is not None and Path(base_dir).is_dir():
        paths.extend(p for p in Path(base_dir).iterdir() if p.is_file())
    paths.extend(Path(artifact.path) for artifact in getattr(ref, "chain", []))
    return paths


def claim_record(
    path: Path,
    identity: str,
    explicit: bool,
    force: bool,
    protected: Iterable[Path] = (),
    flag: str = "-o",
) -> Claim:
    """The output policy for a JSON record with a content address: a named -o holding anything but this very
    step's record is never replaced without --force; a stale or unreadable file in the run store is."""
    import json

    def same_step(existing: Path) -> bool:
        try:
            record = json.loads(Path(existing).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("id") == identity

    replace = force or not explicit or same_step(path)
    return claim_output(path, flag=flag, replace=replace, protected=protected, accept_existing=same_step)


def input_files(sources: Iterable[str] | None, records: Iterable[dict]) -> list[Path]:
    """The record files an analysis read (named on the command line, or named by the records themselves)."""
    paths = [Path(os.path.expanduser(s)) for s in sources or [] if s != "-"]
    paths.extend(Path(os.path.expanduser(r["path"])) for r in records if isinstance(r.get("path"), str))
    return [p for p in paths if p.is_file()]
