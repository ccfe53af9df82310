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

Reading is bounded the same way everywhere: `read_json`, `read_toml` and `read_jsonl` are the one
reader for every structured file the project reads (run config.json, --config files, data set
metadata, metrics.jsonl, Hugging Face config.json/vocab.json/tokenizer.json). Each refuses a file
that is not a regular file (a FIFO would block forever), larger than a size cap (checked before
reading) or nested more deeply than a depth cap, and turns any damage into `StructuredFileError`:
one line naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04): the same parser, published as tomli
    import tomli as tomllib

try:
    import fcntl
except ImportError:  # Windows has no flock: the locks below are skipped there (the project targets Linux)
    fcntl = None


class WriteError(ValueError):
    """Writing a file failed (full disk, no permission, ...); the previous file is unchanged."""


class LockedError(ValueError):
    """Another process holds the lock (a run being trained, a data set being built)."""


class StructuredFileError(ValueError):
    """A JSON/TOML file that is missing, not a regular file, too large, nested too deeply or damaged."""


# Caps for `read_json`/`read_toml`/`read_jsonl`. The largest file we read on purpose is a BPE
# tokenizer.json (GPT-2's: 1.4 MB; a 100k vocabulary: ~5 MB), the deepest a tokenizer.json's
# pre-tokenizer sequence (5 levels). A file beyond these was not written for us.
JSON_MAX_BYTES = 64 << 20
JSONL_MAX_BYTES = 256 << 20  # metrics.jsonl: ~200 bytes a row, a million rows fit
JSONL_MAX_LINE = 1 << 20
MAX_NESTING = 64


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
    created = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        remove_if_empty(created)
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
        remove_if_empty(created)  # e.g. Ctrl-C while writing into a new folder: no empty folders left behind
        if isinstance(err, OSError):  # e.g. ENOSPC while writing: the old file was never touched
            raise WriteError(describe_os_error(err, path) + f"; the previous {path.name} is unchanged") from None
        raise
    _sync_folder(path.parent)
    return path


def missing_folders(folder: str | Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, innermost first (what a mkdir(parents=True) makes)."""
    folder = Path(folder)
    return [f for f in (folder, *folder.parents) if not f.exists()]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of `folders` (innermost first) that exists and is empty: undoing a failed write's mkdir."""
    for folder in folders:
        try:
            folder.rmdir()  # fails (and is left) unless it is an empty folder
        except OSError:
            return


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` for UTF-8 text."""
    return atomic_write(path, text.encode("utf-8"))


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (then they are delivered as usual): for the few
    renames that put a finished set of files in place, which must happen all or not at all."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: nothing to block
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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


# --- reading structured files -------------------------------------------------------------------


def _open_regular(path: Path, max_bytes: int) -> BinaryIO:
    """`path` opened for reading, if it is a regular file of at most `max_bytes`; StructuredFileError otherwise.

    Opened without blocking and checked on the open file (fstat), so a FIFO or device named like a
    config file is refused instead of waiting forever, and a swap between check and read cannot fool it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise StructuredFileError(f"{path}: no such file") from None
    except OSError as err:
        raise StructuredFileError(f"{path}: cannot read: {err.strerror or err}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, socket or device"
        raise StructuredFileError(f"{path}: not a regular file ({kind})")
    if info.st_size > max_bytes:
        os.close(fd)
        raise StructuredFileError(f"{path}: {info.st_size / 1e6:,.1f} MB, more than the {max_bytes >> 20} MB "
                                  "this program reads from such a file (not one written for it?)")
    return os.fdopen(fd, "rb")


def _read_text(path: Path, max_bytes: int) -> str:
    with _open_regular(path, max_bytes) as handle:
        try:
            data = handle.read(max_bytes + 1)  # +1: a file that grew after the check is still caught
        except OSError as err:
            raise StructuredFileError(f"{path}: cannot read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise StructuredFileError(f"{path}: more than the {max_bytes >> 20} MB this program reads from such a file")
    try:
        return data.decode("utf-8-sig")  # -sig: a byte-order mark written by some Windows editors is fine
    except UnicodeDecodeError as err:
        raise StructuredFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def check_nesting(value: Any, name: str | Path, max_depth: int = MAX_NESTING) -> Any:
    """`value` unchanged if its lists/dicts nest at most `max_depth` levels; StructuredFileError otherwise.

    Iterative (no recursion), so a deep value cannot exhaust the stack here either.
    Example: check_nesting([[1]], "x.json", 2) -> [[1]]; check_nesting([[[1]]], "x.json", 2) raises.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise StructuredFileError(f"{name}: nested more than {max_depth} levels deep (not a file written for "
                                      "this program?)")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return value


def parse_json(text: str, name: str | Path, max_depth: int = MAX_NESTING) -> Any:
    """json.loads with the depth cap; a damaged text raises StructuredFileError naming `name`.

    Example: parse_json('{"a": 1}', "x.json") -> {'a': 1}.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise StructuredFileError(f"{name}: not valid JSON ({where}: {err.msg})") from None
    except RecursionError:  # the C parser stops at Python's recursion limit (~1000 levels)
        raise StructuredFileError(f"{name}: nested more than {max_depth} levels deep (not a file written for "
                                  "this program?)") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise StructuredFileError(f"{name}: not valid JSON ({err})") from None
    return check_nesting(value, name, max_depth)


def read_json(path: str | Path, *, max_bytes: int = JSON_MAX_BYTES, max_depth: int = MAX_NESTING) -> Any:
    """The value in the JSON file `path`, read with a size and a nesting cap (see the module docstring).

    Example: read_json("runs/x/config.json")["model"]["n_layer"] -> 6.
    """
    path = Path(path)
    return parse_json(_read_text(path, max_bytes), path, max_depth)


def read_toml(path: str | Path, *, max_bytes: int = JSON_MAX_BYTES, max_depth: int = MAX_NESTING) -> dict[str, Any]:
    """The table in the TOML file `path`, with the same caps as `read_json`."""
    path = Path(path)
    text = _read_text(path, max_bytes)
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise StructuredFileError(f"{path}: not valid TOML ({err})") from None
    except (RecursionError, ValueError) as err:
        raise StructuredFileError(f"{path}: not valid TOML or nested too deeply ({type(err).__name__})") from None
    return check_nesting(value, path, max_depth)


@dataclass
class JsonLines:
    """The JSON objects of a .jsonl file, and how many lines were skipped (not an object, cut short)."""

    rows: list[dict[str, Any]]
    skipped: int

    def note(self, path: str | Path) -> str | None:
        """One line for the user when lines were skipped, else None."""
        if not self.skipped:
            return None
        return (f"note: {path}: skipped {self.skipped} line(s) that are not a JSON object (cut short while "
                "written, or edited); the other rows are used")


def read_jsonl(path: str | Path, *, max_bytes: int = JSONL_MAX_BYTES, max_line: int = JSONL_MAX_LINE,
               max_depth: int = MAX_NESTING) -> JsonLines:
    """Every line of `path` that holds a JSON object; other lines are counted in `skipped`, not fatal.

    A run may be appending to the file right now, so a half-written last line is normal. Read line by
    line (at most `max_line` bytes each), so memory stays bounded by what is kept.
    Example: a file with lines '{"step": 1}', '[1]', '{"st' -> JsonLines(rows=[{'step': 1}], skipped=2).
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    skipped, total = 0, 0
    with _open_regular(path, max_bytes) as handle:
        while total <= max_bytes:  # a file that keeps growing while we read it is still read only this far
            line = handle.readline(max_line + 1)
            total += len(line)
            if not line:
                break
            if len(line) > max_line and not line.endswith(b"\n"):  # an overlong line: skip the rest of it
                while line and not line.endswith(b"\n") and total <= max_bytes:
                    line = handle.readline(max_line + 1)
                    total += len(line)
                skipped += 1
                continue
            if not line.strip():
                continue
            try:
                row = parse_json(line.decode("utf-8"), path, max_depth)
            except (StructuredFileError, UnicodeDecodeError):
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                skipped += 1
    return JsonLines(rows, skipped)
