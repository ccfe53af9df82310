"""The command line of `python -m src.tokenizer`: train a tokenizer on text files, or show the tokens of a text.

    python -m src.tokenizer train --input data/raw/pg11.txt --tokenizer bpe --max-vocab-size 1024 --out tok.json
    python -m src.tokenizer show --tokenizer tok.json "Es war einmal"

src/tokenizer.py hands its `python -m` entry point to `main` here, so that the file the learner reads
holds the tokenizers alone. Bad input gives one line on stderr and exit code 2 (`--debug`: traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.tokenizer import BPETokenizer, tokenizer_class, train_tokenizer
from src.tokenizer_json import load_tokenizer


def _display(token: str) -> str:
    """Make whitespace control characters visible: "\\n" -> "\\\\n"."""
    return token.encode("unicode_escape").decode("ascii") if not token.isprintable() else token


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.tokenizer", description="Train a tokenizer or look at what it does.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text files (each file is one document)")
    train.add_argument("--input", nargs="+", required=True, type=Path, metavar="FILE", help="UTF-8 text files")
    train.add_argument("--tokenizer", choices=("char", "bpe"), default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument("--max-vocab-size", type=int, default=1024, help="vocabulary size incl. special tokens")
    train.add_argument("--out", type=Path, required=True, help="where to write the tokenizer JSON")
    show = commands.add_parser("show", help="show the tokens of a text, separated by |, with their ids")
    show.add_argument("--tokenizer", type=Path, required=True, metavar="JSON", help="a saved tokenizer")
    show.add_argument("--allow-special", action="store_true", help="treat '<|endoftext|>' in TEXT as the special token")
    show.add_argument("text", help="the text to tokenize")
    return parser


def _run_train(args: argparse.Namespace) -> None:
    cls = tokenizer_class(args.tokenizer)
    if args.max_vocab_size < cls.min_vocab_size:
        raise ValueError(f"--max-vocab-size must be an integer >= {cls.min_vocab_size} (--tokenizer "
                         f"{args.tokenizer}: {cls.min_vocab_reason}), got {args.max_vocab_size}")
    if not args.out.parent.is_dir():
        raise ValueError(f"the folder of --out {args.out} does not exist; create it first")
    texts = []
    for path in args.input:
        if not path.is_file():
            raise ValueError(f"input file {path} does not exist or is not a file")
        try:
            texts.append(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as err:
            raise ValueError(f"input file {path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    start = time.perf_counter()
    tok = train_tokenizer(args.tokenizer, texts, args.max_vocab_size)
    seconds = time.perf_counter() - start
    tok.save(args.out)
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(tok.encode_to_array(t)) for t in texts)
    print(f"trained a {tok.kind} tokenizer with {tok.vocab_size} tokens on {n_chars:,} characters "
          f"in {seconds:.2f} s -> {args.out}")
    if tok.vocab_size < args.max_vocab_size:
        why = "distinct characters" if tok.kind == "char" else "pairs occurring at least twice"
        print(f"(fewer than --max-vocab-size {args.max_vocab_size}: the text has no more {why})")
    print(f"the training text is {n_tokens:,} tokens ({n_chars / max(n_tokens, 1):.2f} characters per token)")
    if isinstance(tok, BPETokenizer) and tok.merges:
        last = [_display(tok.id_to_token(256 + r)) for r in range(max(0, len(tok.merges) - 8), len(tok.merges))]
        print("last merges learned: " + " | ".join(last))


def _run_show(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text, allowed_special="all" if args.allow_special else "none")
    tokens = [_display(tok.id_to_token(i)) for i in ids]
    widths = [max(len(t), len(str(i))) for t, i in zip(tokens, ids)]
    print("|".join(t.ljust(w) for t, w in zip(tokens, widths)))
    print("|".join(str(i).ljust(w) for i, w in zip(ids, widths)))
    print(f"{len(ids)} tokens for {len(args.text)} characters")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m src.tokenizer`; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        _run_train(args) if args.command == "train" else _run_show(args)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
