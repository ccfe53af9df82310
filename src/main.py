"""Command line: train a model, generate text with it, evaluate it, look inside it, export it.

    python -m src.main --train --preset tiny --epochs 1           # a first run on a CPU (~5 min)
    python -m src.main --train --epochs 5 --batch-size 32 --max-vocab-size 256 --logdir runs/NAME
    python -m src.main --train --resume runs/NAME                 # continue exactly where it stopped
    python -m src.main --generate --checkpoint runs/NAME --prompt "Alice was" --temperature 0.8
    python -m src.main --evaluate --checkpoint runs/NAME          # loss per book vs. baselines
    python -m src.main --export --checkpoint runs/NAME            # weights as runs/NAME/model.safetensors
    python -m src.main --serve --checkpoint runs/NAME             # the playground at http://127.0.0.1:7860
    python -m src.main --experiment ablations --preset tiny       # switch each idea off, compare (~15 min)

This file only dispatches: each mode lives in `src/cli/<mode>.py` as `run(args, flags) -> int`, the
flags in `src/cli/parser.py`, the layering of settings in `src/cli/settings.py`. Bad input ends with
one line on stderr and exit code 2 (`--debug` shows the traceback). Exit codes: 0 success, 2 usage or
input error, 3 training diverged (NaN/inf loss), 130 / 143 interrupted by SIGINT (Ctrl-C) / SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from src.cli.common import EXIT_OK, EXIT_SIGNAL, EXIT_USAGE, UsageError
from src.cli.parser import MODE_HELP, build_parser, flag_names
from src.cli.settings import PRESETS  # noqa: F401 - re-exported for benchmarks and notebooks


def _handler(mode: str):
    """The `run` function of a mode, imported only when that mode runs (fast `--help`)."""
    if mode == "train":
        from src.cli.train import run_train as run
    elif mode == "generate":
        from src.cli.generate import run_generate as run
    elif mode == "evaluate":
        from src.cli.evaluate import run_evaluate as run
    elif mode == "visualize":
        from src.cli.inspection import run_visualize as run
    elif mode == "explain":
        from src.cli.inspection import run_explain as run
    elif mode == "serve":
        from src.cli.serve import run_serve as run
    elif mode == "experiment":
        from src.cli.experiment import run_experiment as run
    else:
        from src.cli.export import run_export as run
    return run


def main(argv: Sequence[str] | None = None, *, callbacks: Sequence[Any] = ()) -> int:
    """Run the command line; returns the exit code. `callbacks` are extra training callbacks."""
    from src.training.callbacks import Interrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    # SIGTERM (e.g. `kill`, a job scheduler) while the data set is built or the model loads: unwind like
    # Ctrl-C, so that `finally` blocks remove half-written files; the training steps install their own.
    try:
        previous_sigterm, installed = signal.signal(signal.SIGTERM, raise_interrupted), True
    except ValueError:  # not the main thread: leave signals alone
        previous_sigterm, installed = None, False
    try:
        return _run(argv, debug, callbacks)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return EXIT_SIGNAL.get(signum, 130)
    except BrokenPipeError:  # e.g. `python -m src.main --generate ... | head`: the reader has left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous_sigterm or signal.SIG_DFL)


def _run(argv: list[str], debug: bool, callbacks: Sequence[Any]) -> int:
    try:
        parser = build_parser()
        flags = flag_names(parser)
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        args.argv = argv
        chosen = [name for name in MODE_HELP if getattr(args, name)]
        if not chosen and args.resume:
            chosen = ["train"]
        if len(chosen) != 1:
            modes = " / ".join(f"--{name}" for name in MODE_HELP)
            raise UsageError(f"choose exactly one mode: {modes}" + (f" (got {len(chosen)})" if chosen else ""))
        mode = chosen[0]
        if args.resume and mode != "train":
            raise UsageError("--resume: only with --train")
        if args.find_batch_size and mode != "train":
            raise UsageError("--find-batch-size: only with --train")
        if not args.attention_images and mode not in ("train", "experiment"):
            raise UsageError("--no-attention-images: only with --train or --experiment (they draw while training)")
        if mode == "train" and args.find_batch_size:  # "will it fit?": trains nothing, writes no run
            from src.cli.find_batch_size import run_find_batch_size

            return run_find_batch_size(args, flags)
        if mode in ("train", "experiment"):  # the experiment hands them to each of its training runs
            return _handler(mode)(args, flags, callbacks)
        return _handler(mode)(args, flags)
    except (ValueError, OSError) as err:  # UsageError, DataError, CheckpointError, bad values, file system
        if debug or isinstance(err, BrokenPipeError):
            raise
        if isinstance(err, OSError) and err.filename:  # e.g. a full disk while appending to metrics.jsonl
            from src.fileio import describe_os_error

            err = ValueError(describe_os_error(err, action="file error at"))
        message = " ".join(str(err).split("\n")).strip() or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if debug or not _out_of_memory(err):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: out of memory ({first[:200]}); choose a smaller model (--n-layer, --n-embd), --batch-size or "
              "--block-size (--grad-accum keeps the effective batch; --train ... --find-batch-size tries sizes)",
              file=sys.stderr)
        return EXIT_USAGE


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    text = str(err)
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


if __name__ == "__main__":
    exit_code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun, one of several processes
        # torchrun sends SIGTERM to the others as soon as one exits (after a stop, all of them are
        # leaving anyway): ignoring it now keeps each process's own exit code, e.g. 143.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(exit_code)
