"""A run directory is ours or untouched, and one process at a time writes it.

Training writes config.json, tokenizer.json, metrics.jsonl, samples.md, TensorBoard event files and
checkpoints/ into its run directory - and, when it starts or resumes, empties metrics.jsonl, removes
samples.md and purges TensorBoard events written after the last checkpoint. That is right in a run
of ours and a disaster in a folder of the user's. So:

* A run of ours is marked by its `config.json`, the first file a run writes, with
  `"format": "mini_transformer-run"` (runs from before the tag: by the `command` it records). If
  config.json was damaged, a `checkpoints/last.pt` of ours marks the run instead.
* `--train --logdir DIR` takes a missing or empty folder, or a run of ours that holds no checkpoint
  yet (an attempt stopped before it trained a step: its files are ours to replace). A run with a
  checkpoint needs `--resume`; any other folder is refused before a single file is written.
* `--resume` takes a run directory of ours, or a checkpoint inside its `checkpoints/` folder.
* While a run trains it holds an exclusive lock on `DIR/.lock` (`src.fileio.FileLock`, released by
  the operating system if the process dies), so a second training on the same run is refused with
  the first one's pid instead of interleaving their files.
"""

from __future__ import annotations

from pathlib import Path

from src.fileio import FileLock, LockedError, StructuredFileError, read_json
from src.training.checkpoints import CHECKPOINT_DIR, REQUIRED_KEYS

RUN_FORMAT = "mini_transformer-run"
CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """A folder that is not a run directory of ours, or a run that another process is writing."""


def is_run_dir(path: str | Path) -> bool:
    """True when `path` holds the config.json of a mini_transformer run (our marker), or - config.json
    damaged, e.g. by a full disk - a checkpoints/last.pt of ours."""
    config = Path(path) / CONFIG_NAME
    try:
        values = read_json(config) if config.is_file() else None
    except StructuredFileError:
        values = None
    if isinstance(values, dict):
        legacy = isinstance(values.get("command"), str) and values["command"].startswith("python -m src.main")
        if values.get("format") == RUN_FORMAT or legacy:
            return True
    return _holds_our_checkpoint(Path(path) / CHECKPOINT_DIR / "last.pt")


def _holds_our_checkpoint(path: Path) -> bool:
    """A cheap look at `path`: memory-mapped (tensors are not read) and `weights_only` (no code runs)."""
    import torch

    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any file can lie there; all that matters is "not ours"
        return False
    return isinstance(payload, dict) and all(key in payload for key in REQUIRED_KEYS)


def has_checkpoint(path: str | Path) -> bool:
    folder = Path(path) / CHECKPOINT_DIR
    return any((folder / name).is_file() for name in ("last.pt", "best.pt"))


def check_new_run_dir(path: str | Path, flag: str = "--logdir") -> None:
    """RunDirError unless `path` is missing, empty or a run of ours (see the module docstring); whether
    that run may start afresh is decided under its lock (`RunClaim.take`)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise RunDirError(f"{flag}: {path} is a file, not a folder; choose another {flag}")
    if is_run_dir(path):
        return
    others = sorted(entry.name for entry in path.iterdir() if entry.name != LOCK_NAME)
    if others:
        raise RunDirError(f"{flag}: {path} is not empty ({len(others)} entries, e.g. {others[0]!r}) and is not a "
                          f"mini_transformer run; nothing there was touched - choose a new or empty folder")


def lock_enclosing_run(path: str | Path, flag: str = "--out") -> FileLock | None:
    """Take the lock of the run directory `path` is (or lies directly in), for a command that writes
    there (--export, --visualize): a training of that run would otherwise write it at the same time.
    Returns the held lock (release it when done), None when `path` is not in a run, RunDirError when
    a training holds it. Example: `lock_enclosing_run("runs/x/visualizations")` locks runs/x."""
    for folder in (Path(path), Path(path).parent):
        if folder.is_dir() and is_run_dir(folder):
            try:
                return FileLock(folder / LOCK_NAME, f"the run {folder}").acquire()
            except LockedError as err:
                raise RunDirError(f"{flag}: {err} and would write into it; wait for the training to finish, "
                                  f"or choose an {flag} outside the run") from None
    return None


def resume_target(resume: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) for --resume RUN_DIR or --resume RUN_DIR/checkpoints/NAME.pt."""
    resume = Path(resume)
    if resume.is_file():
        run_dir = resume.parent.parent
        if resume.parent.name != CHECKPOINT_DIR or not is_run_dir(run_dir):
            raise RunDirError(f"--resume: {resume} is not a checkpoint inside a run directory's {CHECKPOINT_DIR}/ "
                              "folder; pass the run directory (a training writes only into one of its own)")
        return run_dir, resume
    if not resume.is_dir():
        raise RunDirError(f"--resume: {resume} does not exist; pass the run directory of the run to continue")
    if not is_run_dir(resume):
        raise RunDirError(f"--resume: {resume} is not a mini_transformer run directory (no {CONFIG_NAME} of a run); "
                          "pass the folder that --train --logdir wrote")
    last = resume / CHECKPOINT_DIR / "last.pt"
    if not last.is_file():
        raise RunDirError(f"--resume: {last} does not exist: this run stopped before its first checkpoint; "
                          f"start it again with --train --logdir {resume}")
    return resume, last


class RunClaim:
    """The lock of one run directory for the length of a training command.

    `take(run_dir)` creates the folder if needed and locks it; `release()` unlocks it and removes a
    folder that this claim created and nothing was written into (a run that failed before it began).
    """

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.created = False
        self._lock: FileLock | None = None

    def take(self, run_dir: str | Path, *, resuming: bool, flag: str = "--logdir") -> None:
        run_dir = Path(run_dir)
        self.created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        lock = FileLock(run_dir / LOCK_NAME, f"the run {run_dir}")
        try:
            self._lock = lock.acquire()
        except LockedError as err:
            raise RunDirError(f"{'--resume' if resuming else flag}: {err}; wait for it to finish, stop it, "
                              f"or choose another {flag}") from None
        if not resuming and has_checkpoint(run_dir):  # decided under the lock: no one writes it meanwhile
            raise RunDirError(f"{flag}: {run_dir} already holds a run; continue it with --resume {run_dir} "
                              f"or choose another {flag}")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.created and self.run_dir is not None and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()
