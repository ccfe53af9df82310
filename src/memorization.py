"""Memorisation: the longest piece of a generated sample that appears word for word in the training text.

A model that copies long passages of its training text has memorised rather than learned to write.
Carlini et al. 2021 ("Extracting Training Data from Large Language Models") count such verbatim
copies; here `VerbatimIndex` answers "what is the longest substring of this sample that occurs in any
training book?" in about a millisecond per sample over the ~7 million characters of the 12 books,
by a binary search on the length with rolling hashes (Karp & Rabin 1987).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Match:
    """The longest piece of a sample found word for word in a document."""

    text: str
    length: int
    source: str | None  # the name of the document it was found in (None when nothing matched)
    sample_offset: int = 0  # where it starts in the sample
    source_offset: int = 0  # where it starts in the document


# Polynomial rolling hash modulo 2**32 (numpy's uint32 arithmetic wraps around): the hash of
# s[i:i+L] is sum_j s[j] * BASE**(i+L-1-j). BASE is odd, so it has an inverse modulo 2**32, which
# lets one prefix array give the hash of every window: (P[i+L] - P[i]) * BASE**(i+L-1).
# Equal strings always have equal hashes; every hash hit is confirmed by comparing the strings,
# so a collision costs a comparison, never a wrong answer.
_HASH_BASE = 1_000_003
_HASH_INVERSE = pow(_HASH_BASE, -1, 2**32)
_FILTER_BITS = 22  # a table of 2**22 booleans (4 MB) pre-filters the window hashes by their high bits
# The index holds the decoded training text and its hashes (~10 bytes per character): above this many
# training tokens (a corpus of a few hundred MB) the search is skipped, and the note says so.
MAX_INDEX_TOKENS = 50_000_000


def _powers(base: int, n: int) -> np.ndarray:
    """[1, base, base**2, ..., base**(n-1)] modulo 2**32."""
    factors = np.full(n, base, dtype=np.uint32)
    factors[0] = 1
    return np.cumprod(factors, dtype=np.uint32)


class _RollingHash:
    """Hashes of all windows of one length of a text, in a few vectorised numpy operations.

    The arrays are allocated once and reused for every window length (fresh 30 MB arrays per
    query would cost more in page faults than the arithmetic itself).
    """

    def __init__(self, text: str) -> None:
        # The characters as integers, index-aligned with Python's str indexing.
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        n = len(codes)
        self.powers = _powers(_HASH_BASE, n + 1)
        self.prefix = np.zeros(n + 1, dtype=np.uint32)
        np.cumsum(codes * _powers(_HASH_INVERSE, n), dtype=np.uint32, out=self.prefix[1:])
        self._buffer = np.empty(n, dtype=np.uint32)

    def windows(self, length: int) -> np.ndarray:
        """Hash of text[i:i+length] for every i: (n - length + 1,). Valid until the next call."""
        count = len(self.prefix) - length
        out = self._buffer[:count]
        np.subtract(self.prefix[length:], self.prefix[:count], out=out)
        np.multiply(out, self.powers[length - 1 : length - 1 + count], out=out)
        return out


class VerbatimIndex:
    """The training documents prepared once for many `longest_match` queries.

    Binary search on the match length L: "does any L-character piece of the sample occur in the
    documents?" is answered by comparing rolling hashes of all L-windows (numpy, no Python loop
    over the ~7 million characters). A found match is extended character by character, which
    raises the lower bound of the search faster than halving alone.
    """

    def __init__(self, documents: dict[str, str]) -> None:
        self.names = list(documents)
        texts = list(documents.values())
        # A separator that occurs in no document, so that no match can span two documents.
        self.separator = next(chr(c) for c in range(0xD800) if all(chr(c) not in t for t in texts))
        self.text = self.separator.join(texts)
        self.starts = []
        offset = 0
        for t in texts:
            self.starts.append(offset)
            offset += len(t) + 1
        self.max_length = max((len(t) for t in texts), default=0)
        self._hash = _RollingHash(self.text) if self.text else None

    def _source_of(self, position: int) -> int:
        return bisect.bisect_right(self.starts, position) - 1

    def _match_of_length(self, sample: str, sample_hash: _RollingHash, length: int) -> Match | None:
        """Some match of at least `length` characters (extended to its full length), or None."""
        sample_windows = sample_hash.windows(length)  # (m - L + 1,)
        text_windows = self._hash.windows(length)  # (N - L + 1,)
        table = np.zeros(1 << _FILTER_BITS, dtype=bool)
        shift = np.uint32(32 - _FILTER_BITS)  # the high bits of a polynomial hash mix best
        table[sample_windows >> shift] = True
        candidates = np.flatnonzero(table[text_windows >> shift])
        candidates = candidates[np.isin(text_windows[candidates], sample_windows)]
        by_hash: dict[int, list[int]] = {}
        for s, h in enumerate(sample_windows.tolist()):
            by_hash.setdefault(h, []).append(s)
        best = None
        for p in candidates[:256].tolist():
            for s in by_hash[int(text_windows[p])]:
                piece = sample[s : s + length]
                if self.text[p : p + length] != piece or self.separator in piece:
                    continue  # a hash collision, or a window across two documents
                start_s, start_p, end_s, end_p = s, p, s + length, p + length
                while start_s > 0 and start_p > 0 and sample[start_s - 1] == self.text[start_p - 1]:
                    start_s, start_p = start_s - 1, start_p - 1
                while end_s < len(sample) and end_p < len(self.text) and sample[end_s] == self.text[end_p]:
                    end_s, end_p = end_s + 1, end_p + 1
                if best is None or end_s - start_s > best.length:
                    source = self._source_of(start_p)
                    best = Match(sample[start_s:end_s], end_s - start_s, self.names[source], start_s,
                                 start_p - self.starts[source])
        return best

    def longest_match(self, sample: str) -> Match:
        """The longest substring of `sample` that occurs verbatim in one of the documents."""
        if not sample or self._hash is None:
            return Match("", 0, None)
        sample_hash = _RollingHash(sample)
        best = Match("", 0, None)
        low, high = 0, min(len(sample), self.max_length) + 1  # a match of `low` exists, none of `high`
        # Galloping search: start at a length most samples share with their training text; after a
        # hit (already extended to its full length) probe just above it with growing steps, after a
        # miss halve the interval. Usually two or three probes settle it.
        middle, step = min(16, high - 1), 1
        while high - low > 1:
            found = self._match_of_length(sample, sample_hash, middle)
            if found is None:
                high = middle
                middle = (low + high) // 2
            else:
                best, low = found, found.length
                middle, step = min(low + step, high - 1), step * 2
        return best


def longest_verbatim_match(sample: str, documents: dict[str, str]) -> Match:
    """The longest substring of `sample` that appears word for word in `documents` ({name: text}).

    Example: ``longest_verbatim_match("a cat sat", {"book": "the cat sat on"}).text`` -> ``" cat sat"``.
    For several samples against the same documents build one `VerbatimIndex` and reuse it.
    """
    return VerbatimIndex(documents).longest_match(sample)


def format_match(match: Match, max_chars: int = 120) -> str:
    """One line for the CLI / samples.md, e.g. ``longest verbatim match: 8 characters from book: " cat sat"``."""
    if match.length == 0:
        return "longest verbatim match: none (not even one character appears in the training text)"
    shown = match.text if len(match.text) <= max_chars else match.text[: max_chars - 1] + "…"
    return f"longest verbatim match: {match.length} characters from {match.source}: {shown!r}"


def training_texts(processed_dir: str | Path, split: str = "train") -> dict[str, str]:
    """The training text of every source of a processed data set, decoded: {"<id> <title>": text}.

    Reads meta.json (each source's token `offset` and count in the split), tokenizer.json and
    <split>.bin from a folder written by `python -m src.dataset`. Without per-source offsets the
    whole split is returned as one document.
    """
    from src.dataset import load_meta, load_tokens
    from src.tokenizer_json import load_tokenizer

    processed_dir = Path(processed_dir)
    meta_path = processed_dir / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{processed_dir} is not a processed data set (no meta.json); run python -m src.dataset first")
    meta = load_meta(processed_dir)  # DataError (a ValueError) names a damaged meta.json
    tokens = load_tokens(processed_dir, split)
    tokenizer = load_tokenizer(processed_dir / "tokenizer.json")
    documents: dict[str, str] = {}
    for source in meta.get("sources", []):
        part = source.get(split) or {}
        if "offset" not in part or not part.get("tokens"):
            continue
        name = " ".join(str(x) for x in (source.get("id"), source.get("title")) if x not in (None, ""))
        name = name or f"source {len(documents)}"
        offset, count = int(part["offset"]), int(part["tokens"])
        documents[name] = tokenizer.decode(np.asarray(tokens[offset : offset + count]).tolist())
    if not documents:
        documents[split] = tokenizer.decode(np.asarray(tokens).tolist())
    return documents


def memorization_note(data_path: str | Path) -> Callable[[str], str]:
    """A function sample -> one line naming its longest verbatim piece of the training text.

    The index over the training text is built on first use (about a second for the 12 books).
    """
    index: list[Any] = []
    from src.dataset import load_meta

    try:
        tokens = load_meta(Path(data_path))["splits"]["train"]["tokens"]
    except ValueError:
        tokens = 0  # training_texts names the problem on first use
    if isinstance(tokens, int) and tokens > MAX_INDEX_TOKENS:  # a big corpus: never decoded into memory whole
        return lambda sample: (f"longest verbatim match: not searched (the training text has {tokens:,} tokens, more "
                               f"than the {MAX_INDEX_TOKENS:,} this search holds in memory)")

    def note(sample: str) -> str:
        if not index:
            index.append(VerbatimIndex(training_texts(data_path)))
        return format_match(index[0].longest_match(sample))

    return note
