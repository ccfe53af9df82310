"""Saved tokenizers back from JSON: `load_tokenizer("tokenizer.json")` rebuilds whatever kind wrote it.

A tokenizer saves itself (`save()`, `to_dict()` in src/tokenizer.py) as JSON with a "type" ("char" or
"bpe") and a format "version" - never pickle, as a tokenizer file may come from someone else. Reading
one back must know every kind, including the BPE tokenizer read from GPT-2 files, whose ids follow
those files (`GPT2BPETokenizer`, src/gpt2_tokenizer.py; its JSON has a "vocab_ids" list). So the
loader sits here, above both tokenizer modules, and each of them stays free of the other.

Everything a file says is checked before it is used: the type and version, the special tokens, the
shape of each field, and sizes (the file is read with a size and nesting cap; merges are capped).
"""

from __future__ import annotations

from pathlib import Path

import regex

from src.fileio import StructuredFileError, read_json
from src.gpt2_tokenizer import GPT2BPETokenizer
from src.tokenizer import (
    FORMAT_VERSION,
    MAX_MERGES,
    SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    tokenizer_class,
)

_MAX_TOKENIZER_FILE = 256 << 20  # bytes of a tokenizer.json read from disk


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    """Read a tokenizer saved with `save()`; dispatches on its "type"."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"tokenizer file {path} does not exist")
    try:  # size and nesting caps: a tokenizer.json is data someone else may have written
        data = read_json(path, max_bytes=_MAX_TOKENIZER_FILE)
    except StructuredFileError as err:
        raise ValueError(str(err)) from None
    try:
        return tokenizer_from_dict(data)
    except ValueError as err:
        raise ValueError(f"tokenizer file {path}: {err}") from None


def tokenizer_from_dict(data: dict) -> CharTokenizer | BPETokenizer:
    """The inverse of `to_dict()`; raises ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    kind, version = data.get("type"), data.get("version")
    if kind not in ("char", "bpe"):
        raise ValueError(f"unknown tokenizer type {kind!r}: expected 'char' or 'bpe'")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"unsupported format version {version!r}: this code reads version {FORMAT_VERSION}")
    cls = tokenizer_class(kind)
    if data.get("special_tokens") != list(cls.special_tokens):
        raise ValueError(f"special_tokens must be {list(cls.special_tokens)}, got {data.get('special_tokens')!r}")
    try:
        if cls is CharTokenizer:
            return CharTokenizer(_require_list(data, "chars"))
        merges = _require_list(data, "merges")
        if len(merges) > MAX_MERGES:
            raise ValueError(f"{len(merges):,} merges is more than the {MAX_MERGES:,} this code reads")
        if not all(isinstance(m, list) and len(m) == 2 and all(type(x) is int for x in m) for m in merges):
            raise ValueError("every merge must be a pair of integer ids like [101, 32]")
        pattern = data.get("pattern", SPLIT_PATTERN)
        if not isinstance(pattern, str):
            raise ValueError(f"field 'pattern' must be a string, got {type(pattern).__name__}")
        if "vocab_ids" not in data:
            return BPETokenizer(merges, pattern=pattern)
        return GPT2BPETokenizer(merges, pattern, _require_list(data, "vocab_ids"))  # read from GPT-2 files
    except regex.error as err:
        raise ValueError(f"invalid split pattern: {err}") from None


def _require_list(data: dict, key: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a list, got {type(value).__name__}")
    return value
