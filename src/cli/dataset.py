"""The command line of `python -m src.dataset`: build (or reuse) a data set and print its summary.

    python -m src.dataset                                   # the 12 default books, char tokenizer
    python -m src.dataset --input my_texts/*.txt --tokenizer bpe --max-vocab-size 1024

src/dataset.py hands its `python -m` entry point to `main` here, so that the file the learner reads
holds the data pipeline alone. `add_data_arguments` lends the same data flags to `python -m src.main`.
Bad input gives one line on stderr and exit code 2 (`--debug`: traceback); SIGTERM and Ctrl-C leave
no half-written folder behind (exit codes 143 and 130).
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from src.config import TOKENIZER_CHOICES, DataConfig, ModelConfig
from src.dataset import DataError, prepare_dataset, summary_table


def _field_help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(DataConfig) if f.name == name)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The DataConfig flags, shared by `python -m src.dataset` and `python -m src.main`."""
    d = DataConfig()
    g = parser.add_argument_group("data")
    g.add_argument("--books", type=int, nargs="+", metavar="ID", default=None,
                   help=f"{_field_help('books')} (default: the 12 English books {' '.join(map(str, d.books))})")
    g.add_argument("--mirror", metavar="URL_OR_DIR", default=None, help=_field_help("mirror"))
    g.add_argument("--input", nargs="+", metavar="PATH", default=None,
                   help=f"{_field_help('input')}; UTF-8; quote globs, e.g. 'texts/*.txt'")
    g.add_argument("--data-dir", type=Path, metavar="DIR", default=None, help=f"{_field_help('data_dir')} (default: {d.data_dir})")
    g.add_argument("--unwrap", action=argparse.BooleanOptionalAction, default=None,
                   help=f"{_field_help('unwrap')} (default: on)")
    g.add_argument("--val-fraction", type=float, metavar="F", default=None,
                   help=f"{_field_help('val_fraction')} (default: {d.val_fraction})")
    g.add_argument("--holdout-book", dest="holdout_books", type=int, nargs="+", action="extend", metavar="ID",
                   default=None, help=f"{_field_help('holdout_books')} (only with --books; with --val-fraction 0 "
                   "the other books train only)")
    g.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default=None, help=f"{_field_help('tokenizer')} (default: {d.tokenizer})")
    g.add_argument("--max-vocab-size", type=int, metavar="N", default=None,
                   help=f"{_field_help('max_vocab_size')} (default: {d.max_vocab_size}; at least 3 for char, 257 for bpe)")
    g.add_argument("--name", default=None, help=f"{_field_help('name')}; letters, digits, '.', '_', '-'")
    g.add_argument("--force", action="store_true", default=None,
                   help=f"{_field_help('force')} (a data set is reused only with the same settings and source files)")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """DataConfig from parsed flags; unset flags keep the dataclass defaults. --input replaces --books."""
    values = {
        name: getattr(args, name)
        for name in ("books", "mirror", "input", "data_dir", "unwrap", "val_fraction", "holdout_books",
                     "tokenizer", "max_vocab_size", "name", "force")
        if getattr(args, name, None) is not None
    }
    if values.get("input") and "books" not in values:
        values["books"] = ()
    try:
        return DataConfig(**values)
    except ValueError as error:
        raise DataError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.dataset",
        description="Download, clean and tokenize books into <data-dir>/processed/<name>/ "
        "(train.bin, val.bin, tokenizer.json, meta.json).",
    )
    add_data_arguments(parser)
    block_default = next(f.default for f in fields(ModelConfig) if f.name == "block_size")
    parser.add_argument("--block-size", type=int, default=block_default, metavar="T",
                        help=f"check that each split holds at least T + 1 tokens (default: {block_default}; 0 = no check)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that `finally` blocks remove half-written files."""


def main(argv: list[str] | None = None) -> int:
    """`python -m src.dataset`: build (or reuse) the data set and print its summary; exit code."""
    args = build_parser().parse_args(argv)

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    # SIGTERM (`kill`, a job scheduler) unwinds like Ctrl-C, so the temporary folder of a build is removed
    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        config = data_config_from_args(args)
        prepared = prepare_dataset(config, block_size=args.block_size or None, show_progress=not args.quiet)
    except (ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"interrupted ({'SIGTERM' if isinstance(stop, _Terminated) else 'SIGINT'}); nothing was written",
              file=sys.stderr)
        return 143 if isinstance(stop, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(summary_table(prepared))
    if prepared.reused:
        print("(nothing was rebuilt: same settings and source files; use --force to rebuild)")
    return 0

