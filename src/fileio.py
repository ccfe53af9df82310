"""Writing files so that a crash, Ctrl-C or full disk never leaves a half-written file behind.

`atomic_write` writes to a temporary file in the same folder, flushes it to disk (fsync) and then
renames it over the target (`os.replace`, atomic on POSIX and Windows): a reader sees the old file
or the new one, never a mixture. If anything fails, the temporary file is removed and the old file
stays as it was. Every file the project writes for the user goes through here (checkpoints,
exports, config.json, tokenizer.json, downloaded books).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write `data` (bytes, or a function that writes into an open binary file) to `path` atomically.

    Example: `atomic_write("out.txt", b"hello")`; `atomic_write("m.pt", lambda f: torch.save(obj, f))`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
