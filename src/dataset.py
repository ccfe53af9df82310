"""The data set: books -> cleaned text -> token ids on disk -> (x, y) training windows.

A language model learns to predict the next token. The training data is therefore one long
array of token ids, and each example is a window of it: x = ids[s : s+T], y = ids[s+1 : s+T+1]
(y is x shifted by one, so position t of y is the token that follows x[0..t]).
Example: ids = [5, 6, 7, 8, 9], T = 2 -> windows (x=[5, 6], y=[6, 7]) and (x=[7, 8], y=[8, 9]).

`prepare_dataset` builds the array once (the nanoGPT `prepare.py` recipe,
https://github.com/karpathy/nanoGPT/blob/master/data/shakespeare_char/prepare.py):

1. fetch each book (`src/gutenberg.py`: download + cache, or a local mirror, or your own files)
   and clean it (no licence header/footer, no hard line breaks inside paragraphs);
2. split every book: its last `val_fraction` (cut at a paragraph break) goes to validation,
   so every book is in both splits; `holdout_books` go wholly into validation instead;
3. train the tokenizer on the training split only (validation must stay unseen);
4. encode book by book and append the ids to `train.bin` / `val.bin` (raw uint16 or uint32),
   separating books with the `<|endoftext|>` token id, so memory holds one book's ids at a time.

The result lives in `<data_dir>/processed/<name>/`; it is written into a temporary folder and
renamed at the end, so a failed build leaves nothing half-written behind. One builder at a time:
a second one waits for the first (a lock file beside the folder) and then reuses its result.

A data set is checked, not trusted (`verify_tokens`): on reuse the .bin sizes, the tokenizer's
fingerprint and vocabulary size, every id (below the vocabulary size) and a sha256 are compared
with meta.json - whole for files up to FULL_CHECK_BYTES, by sampled blocks above, always whole
on --resume and --evaluate. A text file larger than STREAM_BYTES is never held in memory: it is
read, cleaned and encoded block by block (`StreamedText`), so a corpus of several GB builds in
bounded memory.
`TokenDataset` reads the .bin file through `np.memmap` (the OS pages it in on demand) and
`make_dataloader` adds the seeded shuffling that makes training resumable mid-epoch.

Left out on purpose: sharding the .bin files, streaming a corpus of many small files (each is
read whole, all at once), document packing/masking across `<|endoftext|>` (the model simply
learns that a new book starts there).

Why one file of ~940 lines: it is the whole pipeline of `python -m src.dataset`, in numbered sections
that follow the steps above; downloading and cleaning live in `src/gutenberg.py`, the command line in
`src/cli/dataset.py`, and the training loop never imports this module (it receives batches).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from src.config import (
    DEFAULT_BOOKS,
    DEFAULT_MIRROR,
    MIRROR_ENV_VAR,
    DataConfig,
    config_to_dict,
)
from src.fileio import FileLock, StructuredFileError, atomic_write_text, describe_os_error, read_json
from src.gutenberg import (
    DataError,
    StreamedText,
    book_url,
    cache_path,
    clean_book,
    fetch_book,
    is_url,
    not_regular,
    not_regular_message,
    parse_header,
    read_raw,
    sha256_of,
)
from src.tokenizer import train_tokenizer
from src.tokenizer_json import load_tokenizer

__all__ = [
    "DataChangedError", "DataError", "PreparedDataset", "TokenDataset", "dataset_name", "load_meta", "load_tokens",
    "make_dataloader", "prepare_dataset", "summary_table",
]

# First pass: skip to TokenDataset (section 5): sections 1-4 build the token files once.

FORMAT_VERSION = 1
PIECE_CHARS = 1 << 17  # characters per tokenizer call (bounds the tokenizer's intermediate lists)
_PIECE_BREAK = re.compile(r"\n(?=[^\W\d_])")  # a line break followed by a letter
# DataConfig fields that change the content of the processed data set (reuse compares them, and
# the sha256 of every source file: the same settings on other files are another data set).
CONTENT_FIELDS = ("books", "input", "unwrap", "val_fraction", "holdout_books", "tokenizer", "max_vocab_size")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # --name becomes a folder name
# Verifying the token files (meta.json records, per split, the sha256 of the whole .bin, the sha256 of
# SAMPLE_BLOCKS evenly spaced blocks of it, and its largest id). Up to FULL_CHECK_BYTES a .bin is hashed
# and scanned whole every time it is reused (the 12 default books: ~15 MB, read once per reuse);
# a larger one only by its sampled blocks (4 MiB read, however large the file), and whole on --resume
# and --evaluate, in chunks of SCAN_BYTES (bounded memory).
FULL_CHECK_BYTES = 64 << 20
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 64, 1 << 16
SCAN_BYTES = 1 << 20
# Big inputs: an --input file larger than STREAM_BYTES is never held in memory (StreamedText): it is
# read gutenberg.BLOCK_BYTES at a time, and its tokenizer is trained on a sample of TOKENIZER_SAMPLE_CHARS.
STREAM_BYTES = 32 << 20
TOKENIZER_SAMPLE_CHARS = 4 << 20
SAMPLE_SPANS = 16  # the sample: this many stretches spread over the training split


class DataChangedError(DataError):
    """A data set exists under this name but was built from other settings or other source files."""


# ---------------------------------------------------------------------------------------------
# 1. Sources: a list of cleaned documents


@dataclass
class Document:
    """One cleaned source text with the facts meta.json records about it."""

    id: int | str  # Gutenberg id, or the file name for --input
    title: str
    author: str | None
    language: str | None
    sha256: str
    location: str  # the file it was read from (for a download: the cached copy)
    text: str
    url: str | None = None  # where a downloaded book came from
    stream: StreamedText | None = None  # a file too large to hold: read from disk piece by piece (text is "")


def resolve_mirror(mirror: str | None) -> str:
    """--mirror, else $MINI_TRANSFORMER_MIRROR, else https://www.gutenberg.org."""
    return mirror or os.environ.get(MIRROR_ENV_VAR) or DEFAULT_MIRROR


def load_documents(config: DataConfig, show_progress: bool = True) -> list[Document]:
    """The cleaned texts of --input files if given, else of the Gutenberg --books."""
    if config.input:
        files = expand_inputs(config.input)
        names = [path.name for path in files]
        # the file name identifies a source (per-book evaluation); the full path only when names repeat
        return [load_input_file(path, config.unwrap, path.name if names.count(path.name) == 1 else str(path))
                for path in files]
    mirror = resolve_mirror(config.mirror)
    raw_dir = config.data_dir / "raw"
    documents = []
    for book_id in config.books:
        raw = fetch_book(book_id, mirror, raw_dir, show_progress)
        text = clean_book(raw.data, raw.location, unwrap=config.unwrap, require_markers=True)
        header = parse_header(raw.data[:20000].decode("utf-8-sig", errors="replace").replace("\r\n", "\n"))
        documents.append(
            Document(
                id=book_id, title=header["title"] or f"Gutenberg book {book_id}", author=header["author"],
                language=header["language"], sha256=raw.sha256, location=raw.location, text=text, url=raw.url,
            )
        )
    return documents


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (every .txt inside, recursively, sorted) and globs -> a list of files.

    Hidden files and folders inside a folder (.git, .ipynb_checkpoints, ...) are skipped: a
    checkpoint copy of a text would otherwise enter the data set twice.
    """
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise DataError(f"--input folder {path} contains no .txt files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"--input pattern {pattern!r} matches no files")
            files.extend(found)
        elif kind := not_regular(path):
            raise DataError(f"--input {not_regular_message(path, kind)}")
        else:
            raise DataError(f"--input {pattern} does not exist (give .txt files, folders or glob patterns)")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique


def load_input_file(path: Path, unwrap: bool, source_id: str | None = None) -> Document:
    """One of the user's own files: title = file name; a Gutenberg header is stripped if present.
    A file larger than STREAM_BYTES is not read into memory but streamed (`StreamedText`)."""
    if path.stat().st_size > STREAM_BYTES:
        stream = StreamedText.open(path, unwrap)
        return Document(id=source_id or path.name, title=path.stem, author=None, language=None, sha256=stream.sha256,
                        location=str(path), text="", stream=stream)
    raw = read_raw(path)
    text = clean_book(raw.data, str(path), unwrap=unwrap, require_markers=False)
    return Document(
        id=source_id or path.name, title=path.stem, author=None, language=None, sha256=raw.sha256,
        location=str(path), text=text,
    )


class StreamedPieces:
    """The pieces of one split of a `StreamedText`; iterating reads them from disk anew each time."""

    def __init__(self, text: StreamedText, start: int, stop: int):
        self.text, self.start, self.stop = text, start, stop

    def __iter__(self) -> Iterator[str]:
        for block in self.text.blocks(self.start, self.stop):
            yield from text_pieces(block)

    def __bool__(self) -> bool:
        return self.stop > self.start

    def sample(self, max_chars: int) -> list[str]:
        """About `max_chars` bytes of the split's text in SAMPLE_SPANS stretches spread evenly over it
        (each starting at a line), or all of it when it is no longer: what the tokenizer is trained on.
        Only the stretches are read, so a split of several GB costs a few MB."""
        length = self.stop - self.start
        if length <= max_chars:
            return list(self)
        pieces = []
        for i in range(SAMPLE_SPANS):
            first = self.text.line_start(self.start + i * length // SAMPLE_SPANS)
            last = self.text.line_start(min(self.stop, first + max_chars // SAMPLE_SPANS))
            for block in self.text.blocks(first, last):
                pieces.extend(text_pieces(block))
        return pieces



# ---------------------------------------------------------------------------------------------
# 2. Splitting


def split_point(text: str, val_fraction: float) -> int:
    """Where validation starts: at a paragraph break near len * (1 - val_fraction).

    The search looks at most half the validation length either way for a blank line, else for
    any whitespace, else cuts exactly. text[:cut] + text[cut:] == text always holds.
    Example: split_point("aaaa\\n\\nbb", 0.3) -> 6 (validation is "bb").
    """
    target = round(len(text) * (1.0 - val_fraction))
    target = min(max(target, 1), len(text) - 1) if len(text) >= 2 else len(text)
    reach = max(1, (len(text) - target) // 2)
    low, high = max(1, target - reach), min(len(text) - 1, target + reach)
    for separator in ("\n\n", "\n", " "):
        before = text.rfind(separator, low, target + len(separator))
        after = text.find(separator, target, high)
        candidates = [i + len(separator) for i in (before, after) if i >= 0]
        candidates = [c for c in candidates if 0 < c < len(text)]
        if candidates:
            return min(candidates, key=lambda c: abs(c - target))
    return target


def split_documents(documents: list[Document], config: DataConfig) -> list[tuple[list[str], list[str]]]:
    """(train pieces, val pieces) for every document, in order; "".join(pieces) is the split's text.

    Each document's text is released (set to "") once it is split, so that memory holds the
    corpus once, not twice; the pieces (see `text_pieces`) bound the tokenizer's working memory.
    """
    parts = []
    for doc in documents:
        if doc.stream is not None:  # a big file: pieces read from disk when needed
            train, val = doc.stream.split(config.val_fraction)
            parts.append((StreamedPieces(doc.stream, *train), StreamedPieces(doc.stream, *val)))
            continue
        if doc.id in config.holdout_books:
            cut = 0
        elif config.val_fraction == 0:  # allowed with --holdout-book: the other books train only
            cut = len(doc.text)
        else:
            cut = split_point(doc.text, config.val_fraction)
        parts.append((list(text_pieces(doc.text[:cut])), list(text_pieces(doc.text[cut:]))))
        doc.text = ""
    return parts


# ---------------------------------------------------------------------------------------------
# 3./4. Building the processed data set


@dataclass
class PreparedDataset:
    """A built (or reused) data set: its folder, its meta.json contents, and whether it was reused."""

    path: Path
    meta: dict
    reused: bool


def dataset_name(config: DataConfig, tokenizer: Any = None) -> str:
    """A name derived from the settings: `gutenberg12-char256` for the defaults.

    Anything else that changes the content (another book list, --input files, --no-unwrap, a
    different --val-fraction or --holdout-book) adds a short hash of those settings, so that
    different data sets never share a folder: e.g. `gutenberg4-bpe1024-3fa2c1`. A given tokenizer
    (fine-tuning a model that brings its own) names itself by its fingerprint: `gutenberg12-bpe50257-1a2b3c4d`.
    """
    kind = f"{config.tokenizer}{config.max_vocab_size}"
    if tokenizer is not None:
        kind = f"{tokenizer.kind}{tokenizer.vocab_size}-{tokenizer.fingerprint()[:8]}"
    settings = {"books": list(config.books), "unwrap": config.unwrap, "val_fraction": config.val_fraction,
                "holdout_books": list(config.holdout_books)}
    if config.input:
        settings = {"input": [str(p) for p in expand_inputs(config.input)], "unwrap": config.unwrap,
                    "val_fraction": config.val_fraction}
        base = f"input{len(settings['input'])}"
    else:
        base = f"gutenberg{len(config.books)}"
        if settings == {"books": list(DEFAULT_BOOKS), "unwrap": True, "val_fraction": 0.1, "holdout_books": []}:
            return f"{base}-{kind}"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
    return f"{base}-{kind}-{digest}"


def prepare_dataset(config: DataConfig, *, block_size: int | None = None, show_progress: bool = True,
                    tokenizer: Any = None, full_check: bool = False) -> PreparedDataset:
    """Build `<data_dir>/processed/<name>/` (or reuse it when it exists with the same settings).

    With `block_size`, each split must hold at least block_size + 1 tokens (one (x, y) window).
    With `tokenizer`, the text is encoded with it instead of a tokenizer trained here (fine-tuning a
    model that brings its own, e.g. GPT-2); `config.tokenizer`/`max_vocab_size` are then not used.
    A reused data set is verified first (`verify_tokens`; `full_check` reads every .bin whole, as
    --resume and --evaluate do). Raises DataError for every problem with the input; nothing is left
    behind on failure.
    """
    if config.name is not None and not NAME_RE.fullmatch(config.name):
        raise DataError(f"--name {config.name!r}: use letters, digits, '.', '_' and '-' only "
                        f"(it becomes a folder in {config.data_dir / 'processed'})")
    name = config.name or dataset_name(config, tokenizer)
    out_dir = config.data_dir / "processed" / name
    processed = out_dir.parent
    created = [folder for folder in (processed, config.data_dir) if not folder.exists()]  # innermost first
    # One builder per data set: a second one waits here, then finds the first one's result and reuses it.
    lock = FileLock(processed / f".{name}.lock", f"the data set {out_dir}")
    locked = False
    try:
        try:
            lock.acquire(wait=True, on_wait=lambda holder: print(
                f"waiting for another process ({holder}) to finish building {out_dir} ...", file=sys.stderr, flush=True))
            locked = True
        except OSError:  # a finished data set on a read-only disk or folder: reused as it is, nothing is written
            if config.force or not (out_dir / "meta.json").is_file():
                raise
        if (out_dir / "meta.json").is_file() and not config.force:
            meta = load_meta(out_dir)
            check_reusable(meta, config, out_dir, show_progress)
            check_files(meta, out_dir)
            if verify_tokens(meta, out_dir, full=full_check) and locked:  # built before checksums: add them
                record_checksums(meta, out_dir)
            if tokenizer is not None and meta["tokenizer"].get("fingerprint") != tokenizer.fingerprint():
                raise DataChangedError(f"{out_dir} was encoded with another tokenizer than the model's; pass --force "
                                       "to rebuild it, or choose another --name")
            check_split_sizes(meta, block_size)
            return PreparedDataset(path=out_dir, meta=meta, reused=True)
        if out_dir.exists() and not is_data_set(out_dir):  # --force replaces only a data set, never other files
            raise DataError(f"{out_dir} exists but is not a data set of this project (no meta.json of ours); nothing "
                            "there was touched - choose another --name or --data-dir")
        check_only_our_files(out_dir)
        documents = load_documents(config, show_progress)
        meta = build_into(out_dir, documents, config, block_size, show_progress, tokenizer)
    except OSError as error:  # e.g. --data-dir on a read-only disk, or a full disk
        raise DataError(f"{describe_os_error(error, error.filename or out_dir)}; choose another --data-dir") from None
    finally:
        lock.release()
        for folder in created:  # a failed first build leaves no empty processed/ or --data-dir behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return PreparedDataset(path=out_dir, meta=meta, reused=False)


def build_into(out_dir: Path, documents: list[Document], config: DataConfig, block_size: int | None,
               show_progress: bool, tokenizer: Any = None) -> dict:
    """`build` into a temporary folder that replaces `out_dir` only when everything succeeded."""
    processed = out_dir.parent
    created = not processed.exists()
    processed.mkdir(parents=True, exist_ok=True)
    tmp_dir = processed / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp_dir.mkdir()
    try:
        meta = build(documents, config, out_dir.name, tmp_dir, show_progress, tokenizer)
        check_split_sizes(meta, block_size)
        replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created and not any(processed.iterdir()):
            processed.rmdir()  # a failed first build leaves no empty processed/ behind
        raise
    return meta


def build(documents: list[Document], config: DataConfig, name: str, out: Path, show_progress: bool,
          tokenizer: Any = None) -> dict:
    """Train the tokenizer (unless one is given), stream the ids into out/{train,val}.bin, write
    tokenizer.json + meta.json."""
    parts = split_documents(documents, config)
    train_texts = [piece for train, _ in parts  # a big file's tokenizer learns from a sample of its text
                   for piece in (train.sample(TOKENIZER_SAMPLE_CHARS) if isinstance(train, StreamedPieces) else train)]
    if not train_texts:
        raise DataError("the training split is empty; hold out fewer books (--holdout-book)")
    try:
        if tokenizer is None:
            tokenizer = train_tokenizer(config.tokenizer, train_texts, config.max_vocab_size)
    except ValueError as error:
        raise DataError(f"--tokenizer {config.tokenizer} --max-vocab-size {config.max_vocab_size}: {error}") from None
    del train_texts
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)

    sources = [source_meta(doc) for doc in documents]
    splits: dict[str, dict[str, Any]] = {}
    unknown_chars = 0.0
    for index, split in enumerate(("train", "val")):
        tokens = characters = 0
        with open(out / f"{split}.bin", "wb") as f:
            for source, pair in tqdm(
                list(zip(sources, parts)), desc=f"encode {split}", unit="book",
                disable=not show_progress, leave=False,
            ):
                pieces = pair[index]
                if tokens and pieces:  # books are separated by <|endoftext|>, as a token id
                    np.array([tokenizer.eot_id], dtype=dtype).tofile(f)
                    tokens += 1
                count = n_chars = 0
                for piece in pieces:  # a big file's pieces are read from disk here (see StreamedText)
                    ids = tokenizer.encode_to_array(piece)
                    ids.astype(dtype, copy=False).tofile(f)
                    count += len(ids)
                    n_chars += len(piece)
                    if split == "val":
                        unknown_chars += tokenizer.unknown_rate(piece) * len(piece)
                source[split] = {"characters": n_chars, "tokens": count, "offset": tokens}
                tokens += count
                characters += n_chars
        splits[split] = {"tokens": tokens, "characters": characters,
                         **token_checksums(out / f"{split}.bin", dtype, whole=True)}

    tokenizer.save(out / "tokenizer.json")
    meta = {
        "version": FORMAT_VERSION,
        "name": name,
        "dtype": dtype.name,
        "tokenizer": {"type": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint()},
        "oov_rate": unknown_chars / max(1, splits["val"]["characters"]),
        "splits": splits,
        "sources": sources,
        "config": config_to_dict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def text_pieces(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[str]:
    """`text` cut into pieces of about `piece_chars` characters, at a line break before a letter.

    Why this cut is exact - encode(a + b) == encode(a) + encode(b) - for both tokenizers:
    the char tokenizer maps every character on its own, and the BPE pre-tokenizer
    (src/tokenizer.py SPLIT_PATTERN) never puts a line break and a following letter into the
    same chunk, nor looks past such a line break to decide a chunk; BPE merges never cross
    chunks. So encoding (and training on) the pieces gives the same ids as the whole text,
    while memory holds only one piece's intermediate lists. tests/test_dataset.py checks it.
    Example: list(text_pieces("ab\ncd\nef", 3)) -> ['ab\ncd\n', 'ef'].
    """
    start = 0
    while start < len(text):
        match = _PIECE_BREAK.search(text, start + piece_chars)
        end = match.end() if match else len(text)
        yield text[start:end]
        start = end


def source_meta(doc: Document) -> dict[str, Any]:
    meta = {"id": doc.id, "title": doc.title, "author": doc.author, "language": doc.language,
            "sha256": doc.sha256, "path": doc.location}
    if doc.url:
        meta["url"] = doc.url
    return meta


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder into place; an old version (--force) is removed only afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_reusable(meta: dict, config: DataConfig, path: Path, show_progress: bool = True) -> None:
    """Reuse only what was built with the same settings from the same files (sha256).

    The files are compared, not the --mirror string: the same books from another mirror (or the
    same mirror spelt as a relative path) are the same data set, while a mirror that holds other
    versions of a book - gutenberg.org updates its files - is not. Comparing costs one read of
    each source: a mirror directory or the download cache; a book that is in neither is
    downloaded (and cached), unless the data set was built from that very URL.
    """
    stored = meta.get("config", {})
    current = config_to_dict(config)
    unused = ("books", "holdout_books") if config.input else ("input",)  # --input replaces --books
    changed = [k for k in CONTENT_FIELDS if k not in unused and stored.get(k) != current[k]]
    if changed:
        raise DataChangedError(
            f"{path} was built with other settings ({', '.join(changed)} differ); "
            f"pass --force to rebuild it, or choose another --name"
        )
    if config.input:
        now = {str(p): sha256_of(p) for p in expand_inputs(config.input)}
        if now != {s.get("path"): s["sha256"] for s in meta.get("sources", [])}:
            raise DataChangedError(f"{path} was built from other versions of the --input files (input file contents differ); "
                            f"pass --force to rebuild it, or choose another --name")
        return
    mirror = resolve_mirror(config.mirror)
    before = {s["id"]: s for s in meta.get("sources", [])}
    differ = []
    for book_id in config.books:
        source = before.get(book_id, {})
        url = book_url(mirror, book_id) if is_url(mirror) else None
        if url and source.get("url") == url and not cache_path(config.data_dir / "raw", book_id).is_file():
            continue  # built from this very URL; its cached copy was deleted since
        try:
            fetched = fetch_book(book_id, mirror, config.data_dir / "raw", show_progress)
        except DataError as error:
            built_from = stored.get("mirror")
            if built_from and built_from != mirror:  # e.g. built with --mirror DIR, now run without it
                raise DataError(f"{path} was built from --mirror {built_from}; checking that its books are "
                                f"unchanged needs them: pass --mirror {built_from} again ({error})") from None
            raise
        if fetched.sha256 != source.get("sha256"):
            differ.append(book_id)
    if differ:
        raise DataChangedError(
            f"{path} was built from other versions of book(s) {', '.join(map(str, differ))} than {mirror} "
            f"holds; pass --force to rebuild it from {mirror}, or choose another --name"
        )


def is_data_set(path: Path) -> bool:
    """True when `path` holds the meta.json of a processed data set (what `build` writes last)."""
    try:
        load_meta(path)
    except DataError:
        return False
    return True


DATA_SET_FILES = ("meta.json", "train.bin", "val.bin", "tokenizer.json")  # what `build` writes, nothing else


def check_only_our_files(path: Path) -> None:
    """DataError when the data set folder `path` holds anything `build` did not write: --force replaces
    the whole folder, and a user's file put there must not go with it."""
    if not path.is_dir():
        return
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in DATA_SET_FILES)
    if foreign:
        raise DataError(f"--force: {path} also holds {len(foreign)} file(s) this project did not write (e.g. "
                        f"{foreign[0]!r}); nothing was touched - move them elsewhere, or choose another --name")


def check_files(meta: dict, path: Path) -> None:
    """The .bin files hold exactly the tokens meta.json counts, and tokenizer.json is the tokenizer the
    ids were made with (same fingerprint): a truncated or swapped file is found before training on it."""
    for split in ("train", "val"):
        check_bin_size(meta, path, split)
    recorded = meta.get("tokenizer")
    if not isinstance(recorded, dict) or not isinstance(meta.get("sources"), list) or not all(
            isinstance(source, dict) for source in meta["sources"]):
        raise DataError(f"{Path(path) / 'meta.json'} lacks or garbles its tokenizer or sources; rebuild with --force")
    tokenizer_file = Path(path) / "tokenizer.json"
    try:
        stored_tokenizer = load_tokenizer(tokenizer_file)
        fingerprint = stored_tokenizer.fingerprint()
    except ValueError as error:
        raise DataError(f"{error}; rebuild the data set with --force") from None
    if fingerprint != recorded.get("fingerprint"):
        raise DataError(f"{tokenizer_file} is not the tokenizer this data set was encoded with (its fingerprint "
                        "differs from meta.json's); rebuild the data set with --force")
    vocab_size = vocab_size_of(meta, path)
    if vocab_size != stored_tokenizer.vocab_size or meta["dtype"] != (
            "uint16" if vocab_size <= 1 << 16 else "uint32"):
        raise DataError(f"{Path(path) / 'meta.json'} records a vocabulary size ({vocab_size:,}) or dtype ({meta['dtype']}) "
                        f"that does not fit {tokenizer_file}: the file was edited; " + REBUILD.format(path=path))


def check_bin_size(meta: dict, path: Path, split: str) -> None:
    """DataError unless <path>/<split>.bin is exactly as long as meta.json's token count says."""
    file = Path(path) / f"{split}.bin"
    tokens = meta["splits"][split]["tokens"]
    expected = tokens * np.dtype(meta["dtype"]).itemsize
    actual = file.stat().st_size if file.is_file() else None
    if actual != expected:
        found = "is missing" if actual is None else f"holds {actual:,} bytes"
        raise DataError(f"{file} {found}, but meta.json counts {tokens:,} tokens ({expected:,} bytes): the data set "
                        "is damaged (truncated or replaced); rebuild it with --force")


REBUILD = "delete the folder {path} and run the same command again (it builds the data set anew from its sources)"


def verify_tokens(meta: dict, path: Path, full: bool = False) -> bool:
    """DataError naming the file unless every split's .bin is the one meta.json describes: the size its
    token count implies, every id below the vocabulary size, and the recorded checksum.

    Cheap by default: a .bin up to FULL_CHECK_BYTES is read whole, a larger one only in its sampled
    blocks (compared with "sample_sha256"); `full=True` (--resume, --evaluate) reads every file whole.
    A data set from before these checksums (no "sha256" in meta.json) has every id checked, and True
    is returned: the caller may record its checksums (`record_checksums`).
    """
    path = Path(path)
    vocab_size, dtype = vocab_size_of(meta, path), np.dtype(meta["dtype"])
    legacy = False
    for split in ("train", "val"):
        check_bin_size(meta, path, split)
        file, info = path / f"{split}.bin", meta["splits"][split]
        legacy = legacy or "sha256" not in info
        whole = full or "sha256" not in info or file.stat().st_size <= FULL_CHECK_BYTES
        found = token_checksums(file, dtype, whole, vocab_size)
        if found["first_bad"] is not None:
            position, value = found["first_bad"]
            raise DataError(f"{file} holds the token id {value:,} at position {position:,}, but the vocabulary has only "
                            f"{vocab_size:,} ids (0 ... {vocab_size - 1:,}): the file is damaged or was edited; "
                            + REBUILD.format(path=path))
        key = "sha256" if whole else "sample_sha256"
        if key in info and found[key] != info[key]:
            raise DataError(f"{file} changed since the data set was built (its sha256 differs from the one in "
                            f"{path / 'meta.json'}): " + REBUILD.format(path=path))
    return legacy


def check_window(window: np.ndarray, vocab_size: int, file: Path, start: int) -> None:
    """The last guard before the embedding: DataError (not an IndexError deep inside the model) when a
    window holds an id >= vocab_size - its .bin changed after `verify_tokens` checked it."""
    if window.max() >= vocab_size:
        raise DataError(f"{file} holds the token id {int(window.max()):,} near position {start:,}, but the vocabulary "
                        f"has only {vocab_size:,} ids: the file is damaged or was edited; "
                        + REBUILD.format(path=file.parent))


def record_checksums(meta: dict, path: Path) -> None:
    """Add the checksums of an older data set's .bin files to its meta.json (after `verify_tokens` checked
    every id); a folder we cannot write (a read-only disk) simply keeps its old meta.json."""
    dtype = np.dtype(meta["dtype"])
    for split in ("train", "val"):
        found = token_checksums(Path(path) / f"{split}.bin", dtype, whole=True)
        meta["splits"][split].update({k: found[k] for k in ("sha256", "sample_sha256", "max_id")})
    try:
        atomic_write_text(Path(path) / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    except ValueError:  # WriteError: no permission, read-only disk - the checks run again next time
        pass


def vocab_size_of(meta: dict, path: Path) -> int:
    """The vocabulary size meta.json records, checked to fit its dtype (a uint16 file holds ids < 65,536)."""
    tokenizer = meta.get("tokenizer")
    vocab_size = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    limit = np.iinfo(np.dtype(meta["dtype"])).max + 1
    if type(vocab_size) is not int or not 0 < vocab_size <= limit:
        raise DataError(f"{Path(path) / 'meta.json'} records the vocabulary size {vocab_size!r}, not a number of ids a "
                        f"{meta['dtype']} file can hold: the file is damaged or was edited; " + REBUILD.format(path=path))
    return vocab_size


def sample_offsets(size: int, itemsize: int) -> list[int]:
    """Where the SAMPLE_BLOCKS blocks of a file of `size` bytes start (evenly spread, on whole ids);
    [0] for a file small enough to be one block: then the sample is the whole file."""
    if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
        return [0]
    last = size - SAMPLE_BLOCK_BYTES
    return [last * i // (SAMPLE_BLOCKS - 1) // itemsize * itemsize for i in range(SAMPLE_BLOCKS)]


def token_checksums(file: Path, dtype: np.dtype, whole: bool, vocab_size: int | None = None) -> dict[str, Any]:
    """The checksums and largest id of a .bin, reading SCAN_BYTES at a time (bounded memory).

    Always "sample_sha256" (of the sampled blocks); with `whole` also "sha256" of the whole file;
    "max_id" over what was read; "first_bad": (position, id) of the first id >= `vocab_size` found, or None.
    Example: a 13 MB train.bin -> {"sample_sha256": "3f...", "sha256": "a1...", "max_id": 97, "first_bad": None}.
    """
    dtype = np.dtype(dtype)
    size = Path(file).stat().st_size
    result: dict[str, Any] = {"max_id": 0, "first_bad": None}

    def scan(data: bytes, start: int) -> None:
        ids = np.frombuffer(data[: len(data) // dtype.itemsize * dtype.itemsize], dtype=dtype)
        if ids.size:
            result["max_id"] = max(result["max_id"], int(ids.max()))
            if vocab_size is not None and result["first_bad"] is None and result["max_id"] >= vocab_size:
                index = int(np.argmax(ids >= vocab_size))
                result["first_bad"] = (start // dtype.itemsize + index, int(ids[index]))

    with open(file, "rb") as handle:
        sample = hashlib.sha256()
        for offset in sample_offsets(size, dtype.itemsize):
            handle.seek(offset)
            block = handle.read(SAMPLE_BLOCK_BYTES if offset or size > SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES else size)
            sample.update(block)
            scan(block, offset)
        result["sample_sha256"] = sample.hexdigest()
        if whole:
            digest, start = hashlib.sha256(), 0
            handle.seek(0)
            while chunk := handle.read(SCAN_BYTES):
                digest.update(chunk)
                scan(chunk, start)
                start += len(chunk)
            result["sha256"] = digest.hexdigest()
    return result


def data_fingerprint(meta: dict) -> str:
    """sha256 of what a data set holds (token counts per source and split, source checksums, tokenizer),
    not where it lies: equal fingerprints <=> the same training data in the same order. (The .bin
    checksums are left out, so a data set keeps its fingerprint when `record_checksums` adds them.)"""
    content = {key: meta[key] for key in ("dtype", "tokenizer")}
    content["splits"] = {split: {k: info[k] for k in ("tokens", "characters") if k in info}
                         for split, info in meta["splits"].items()}
    content["sources"] = [{k: v for k, v in source.items() if k not in ("path", "url")} for source in meta["sources"]]
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=True).encode("ascii")).hexdigest()


def check_split_sizes(meta: dict, block_size: int | None) -> None:
    if block_size is None:
        return
    for split, info in meta["splits"].items():
        if info["tokens"] < block_size + 1:
            raise DataError(
                f"the {split} split has {info['tokens']} tokens, fewer than block_size + 1 = {block_size + 1}; "
                f"use a smaller --block-size (at most {max(1, info['tokens'] - 1)}) or more text"
            )


def load_meta(path: Path) -> dict:
    """The meta.json of a processed data set folder."""
    meta_file = Path(path) / "meta.json"
    if not meta_file.exists() and not meta_file.is_symlink():
        raise DataError(f"{meta_file} not found; build the data set with python -m src.dataset")
    try:  # read with size and nesting caps: the folder may hold a file that `build` did not write
        meta = read_json(meta_file, max_depth=8)
    except StructuredFileError as error:
        raise DataError(f"{error}; rebuild it with --force") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise DataError(f"{meta_file} has format version {version!r}, expected {FORMAT_VERSION}; rebuild with --force")
    splits = meta.get("splits")
    well_formed = meta.get("dtype") in ("uint16", "uint32") and isinstance(splits, dict) and all(
        isinstance(splits.get(k), dict) and type(splits[k].get("tokens")) is int and splits[k]["tokens"] >= 0
        and all(isinstance(splits[k].get(c, ""), str) for c in ("sha256", "sample_sha256"))
        for k in ("train", "val"))
    if not well_formed:
        raise DataError(f"{meta_file} lacks or garbles its dtype or split sizes; rebuild with --force")
    return meta


def load_tokens(path: Path, split: str) -> np.memmap:
    """The token ids of one split as a read-only memory map (dtype from meta.json)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    meta = load_meta(path)
    check_bin_size(meta, path, split)
    return np.memmap(Path(path) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


# ---------------------------------------------------------------------------------------------
# 5. Loading for training


# First pass: read TokenDataset - the (x, y) windows, y = x shifted by one token.
class TokenDataset(Dataset):
    """(x, y) windows of T = block_size tokens over a split's memory-mapped ids.

    Window i starts at s_i = offset + i * T and covers T + 1 tokens: x = ids[s_i : s_i+T] and
    y = ids[s_i+1 : s_i+T+1]. Consecutive windows share one token (the last y of window i is the
    first x of window i+1), so their targets tile the array without gaps or overlap: in one epoch
    every token at positions offset+1 ... offset+n*T is a target exactly once.

    Training: the offset is drawn anew per epoch (`set_epoch`) from [0, T) - bounded by how much
    slack the array leaves -, seeded by (seed, epoch), so the window borders move between epochs.
    The number of windows n stays the same for every offset (n = (N - T) // T, at least 1).
    Validation: offset 0 and n = (N - 1) // T, the same windows every time.
    """

    # First pass: skip __init__ and set_epoch (how many windows, where they start); read __getitem__ below.
    def __init__(self, path: Path | str, split: str, block_size: int, seed: int = 0):
        if block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        self.path, self.split, self.block_size, self.seed = Path(path), split, block_size, seed
        meta = load_meta(self.path)
        self.dtype = np.dtype(meta["dtype"])
        self.vocab_size = vocab_size_of(meta, self.path)
        self.num_tokens = meta["splits"][split]["tokens"] if split in meta["splits"] else -1
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.num_tokens < block_size + 1:
            raise DataError(
                f"the {split} split of {self.path} has {self.num_tokens} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; use a smaller --block-size or more text"
            )
        check_bin_size(meta, self.path, split)  # a truncated file would fail only at its last windows
        T, N = block_size, self.num_tokens
        if split == "train":
            self.num_windows = max(1, (N - T) // T)
            self.max_offset = min(T - 1, N - 1 - self.num_windows * T)
        else:
            self.num_windows, self.max_offset = (N - 1) // T, 0
        self._ids: np.memmap | None = None  # opened lazily, once per process (DataLoader workers)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's start offset (training split only; a pure function of seed and epoch)."""
        self.epoch = epoch
        if self.split == "train" and self.max_offset > 0:
            self.offset = int(np.random.default_rng([self.seed, epoch]).integers(0, self.max_offset + 1))
        else:
            self.offset = 0

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} out of range [0, {self.num_windows})")
        if self._ids is None:
            self._ids = np.memmap(self.path / f"{self.split}.bin", dtype=self.dtype, mode="r")
        start = self.offset + index * self.block_size
        window = self._ids[start : start + self.block_size + 1]
        check_window(window, self.vocab_size, self.path / f"{self.split}.bin", start)
        chunk = torch.from_numpy(window.astype(np.int64))  # (T+1,)
        return chunk[:-1], chunk[1:]  # x (T,), y (T,)

    def __getstate__(self) -> dict:
        # A memmap must not travel to worker processes; each one opens its own.
        state = self.__dict__.copy()
        state["_ids"] = None
        return state


# First pass: skip from here (batches in a resumable order, the summary table).
def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader whose batch order is a pure function of (seed, epoch).

    It calls `dataset.set_epoch(epoch)`, so the windows and their order are fully determined by the
    arguments. `start_batch=k` skips
    the first k batches of that order: resuming a run mid-epoch sees exactly the remaining batches.

    Several processes (DDP, `world_size` > 1): the same order is cut into global batches of
    batch_size * world_size windows, and process `rank` takes slice `rank` of each. The processes see
    disjoint windows which together make exactly the batches of one process with a batch world_size
    times larger, so after a step the weights equal that single process's. Example: order
    [5, 2, 7, 0, 3, 1, 6, 4], batch_size 2, world_size 2: rank 0 gets [5, 2], [3, 1]; rank 1 [7, 0], [6, 4].
    PyTorch's `DistributedSampler` gives each global batch the same windows (rank r takes every
    world_size-th, r, r + W, ...), but draws its own order and cannot start mid-epoch. A last global
    batch without a full share for every process is dropped (in a smaller share each window would
    weigh more in the averaged gradient); `DistributedSampler` repeats windows to fill it instead.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    if shuffle:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        order = torch.randperm(len(dataset), generator=generator).tolist()
    else:
        order = list(range(len(dataset)))
    order = order[start_batch * batch_size * world_size :]
    if world_size > 1:
        whole = len(order) // (batch_size * world_size) * batch_size * world_size
        shares = np.asarray(order[:whole], dtype=np.int64).reshape(-1, world_size, batch_size)  # (batches, W, B)
        order = shares[:, rank].reshape(-1).tolist()  # (batches * B,): this process's windows, batch by batch
    return DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
    )


# ---------------------------------------------------------------------------------------------
# 6. What was built, as a table


def summary_table(prepared: PreparedDataset) -> str:
    """A plain-text table of the sources and totals of a prepared data set."""
    meta = prepared.meta
    rows = [("id", "title", "lang", "train chars", "train tokens", "val chars", "val tokens")]
    for s in meta["sources"]:
        rows.append((str(s["id"]), (s["title"] or "")[:34], (s.get("language") or "?")[:7],
                     f"{s['train']['characters']:,}", f"{s['train']['tokens']:,}",
                     f"{s['val']['characters']:,}", f"{s['val']['tokens']:,}"))
    sp = meta["splits"]
    rows.append((f"{len(meta['sources'])} books", "total", "", f"{sp['train']['characters']:,}",
                 f"{sp['train']['tokens']:,}", f"{sp['val']['characters']:,}", f"{sp['val']['tokens']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
        if n in (0, len(rows) - 2):
            lines.append("  ".join("-" * w for w in widths))
    tok = meta["tokenizer"]
    lines.append(
        f"tokenizer: {tok['type']}, vocabulary {tok['vocab_size']}, dtype {meta['dtype']}, "
        f"OOV rate (validation) {meta['oov_rate']:.4%}"
    )
    lines.append(f"{'reused' if prepared.reused else 'written to'} {prepared.path}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m src.dataset: the command line lives in the shell (src/cli/dataset.py)
    from src.cli.dataset import main

    sys.exit(main())
