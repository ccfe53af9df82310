"""Writing files so that a crash, Ctrl-C or full disk never leaves a half-written file behind.

`atomic_write` writes to a temporary file in the same folder, flushes it to disk (fsync) and then
renames it over the target (`os.replace`, atomic on POSIX and Windows): a reader sees the old file
or the new one, never a mixture. If anything fails, the temporary file is removed and the old file
stays as it was. Every file the project writes for the user goes through here (checkpoints,
exports, config.json, tokenizer.json, downloaded books, pictures). A write that fails (a full disk,
no permission) raises `WriteError`: one line naming the file and the free space on its disk.

`FileLock` makes sure one process at a time writes a run or builds a data set: an exclusive
`fcntl.flock` on a small lock file, released by the operating system when the process ends in any
way (even `kill -9`), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows has no flock: the locks below are skipped there (the project targets Linux)
    fcntl = None


class WriteError(ValueError):
    """Writing a file failed (full disk, no permission, ...); the previous file is unchanged."""


class LockedError(ValueError):
    """Another process holds the lock (a run being trained, a data set being built)."""


def free_space(path: str | Path) -> str:
    """The free space on the disk that holds `path` (or its nearest existing folder), e.g. '1.2 GB free'."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def describe_os_error(err: OSError, path: str | Path | None = None, action: str = "cannot write") -> str:
    """One line for a failed file operation, with the free space (a full disk is the usual cause):
    'cannot write runs/x/metrics.jsonl: No space left on device (12.0 kB free on its disk)'."""
    path = path or err.filename or "a file"
    return f"{action} {path}: {err.strerror or err} ({free_space(path)} on its disk)"


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write `data` (bytes, or a function that writes into an open binary file) to `path` atomically.

    Example: `atomic_write("out.txt", b"hello")`; `atomic_write("m.pt", lambda f: torch.save(obj, f))`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(describe_os_error(err, path) + "; nothing was changed") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, (bytes, bytearray, memoryview)):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; these are ordinary readable files
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # e.g. ENOSPC while writing: the old file was never touched
            raise WriteError(describe_os_error(err, path) + f"; the previous {path.name} is unchanged") from None
        raise
    _sync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` for UTF-8 text."""
    return atomic_write(path, text.encode("utf-8"))


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the folder entry is flushed too)."""
    if sys.platform == "win32":
        return
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileLock:
    """An exclusive lock on `path`, held until `release()` or the end of the process.

    The lock file holds who has it (pid, start time, host), so a second process can say whom it
    waits for. `release()` removes the file; a process that locked a file which was removed
    meanwhile notices (another inode at `path`) and locks the new file instead.
    Example: `with FileLock("runs/x/.lock", "the run runs/x"): ...`.
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._handle = None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> FileLock:
        """Take the lock; if another process has it: wait (`wait=True`, calling `on_wait(holder)` once)
        or raise `LockedError` naming that process."""
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        told = False
        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while locked
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(handle)
                handle.close()
                if not wait:
                    raise LockedError(f"{self.what} is in use by another process ({holder})") from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                time.sleep(0.2)
                continue
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # released and removed between our open() and flock(): take the new file
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")
            handle.flush()
            self._handle = handle
            return self

    def release(self) -> None:
        """Remove the lock file and let go (a no-op when not held)."""
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: no one else can be between open and flock
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @staticmethod
    def _holder(handle) -> str:
        handle.seek(0)
        try:
            info = json.loads(handle.read(4096) or "{}")
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError):
            return "its pid is not written yet"
