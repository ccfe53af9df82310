"""Tokenizers: turn text into a sequence of integer ids and back, trained on your own books.

A language model never sees letters, only ids from a fixed vocabulary. Two classic choices:

* `CharTokenizer` - one id per character (as in nanoGPT's shakespeare_char). The vocabulary is the
  special tokens plus the most frequent characters of the training text; every other character
  becomes `<unk>`. Tiny vocabulary, but long sequences (~1 token per character).
* `BPETokenizer` - byte-level Byte Pair Encoding (Sennrich et al. 2016, "Neural Machine Translation
  of Rare Words with Subword Units"; byte-level as in GPT-2, Radford et al. 2019). Start from the
  256 possible bytes of UTF-8, then repeatedly merge the most frequent adjacent pair into a new
  token. Any Unicode string can be encoded (there is no `<unk>`), and frequent words become one
  token, so sequences are ~4x shorter than with characters.

How BPE training stays fast (seconds for ~7 MB of text, pure Python):
1. A regex splits the text into chunks (words with their leading space, numbers, punctuation,
   whitespace), like GPT-4's cl100k pattern. Merges never cross a chunk border, so " the" can
   become one token but "the cat" cannot. `\\p{L}` keeps words with umlauts and ß together.
2. Training works on the *distinct* chunks weighted by how often they occur: the 12 default
   books (7.85 MB) have ~1.75 M chunks but only ~57 k distinct ones.
3. Pair counts are updated incrementally: an index pair -> chunks containing it tells which
   chunks a merge touches, and only their pair counts change. A heap finds the best pair.
   Training state for those books peaks at ~28 MB (~3.5x the text; the text itself not counted).
Encoding applies the learned merges in the order they were learned (lowest rank first) and
caches the result for each distinct chunk.

Special tokens (`<|endoftext|>` separates books; `<unk>` for unknown characters) are never split
and never produced by merges. The literal text "<|endoftext|>" inside user text is plain text
unless `encode(..., allowed_special="all")` is requested (as in OpenAI's tiktoken).

Tokenizers are saved as JSON with a "type" and a format "version" - never pickle; src/tokenizer_json.py
reads them back (`load_tokenizer`). GPT-2-format files (`vocab.json` + `merges.txt`, as OpenAI and
Hugging Face ship byte-level BPE) are read and written by src/gpt2_tokenizer.py. The command line
`python -m src.tokenizer {train,show}` lives in src/cli/tokenizer.py.

Left out on purpose: normalisation (NFC etc.), byte fallback for the char tokenizer, parallel
training. `id_to_token` shows bytes directly; GPT-2's printable stand-ins for bytes ("Ġ" for a
space) appear only inside GPT-2-format files.

Why both tokenizers in one file: they share the chunking, the special tokens, the JSON format and
the checks (`_TokenizerBase`), and the learner reads the BPE algorithm top-down in one place
(training: `_learn_merges`, encoding: `_encode_chunk`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import regex

from src.fileio import atomic_write_text

UNK_TOKEN = "<unk>"
EOT_TOKEN = "<|endoftext|>"
FORMAT_VERSION = 1

# GPT-4's (cl100k) split pattern: contractions, words (an optional leading non-letter such as a
# space, then letters \p{L} - so "Mädchen" and "Straße" stay one chunk), numbers of up to 3
# digits, punctuation runs, newlines and other whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

_CHAR_SPECIALS = (UNK_TOKEN, EOT_TOKEN)
_BPE_SPECIALS = (EOT_TOKEN,)
_BPE_MIN_PAIR_COUNT = 2  # a pair seen only once is memorisation, not a useful subword
_CACHE_LIMIT = 1 << 20  # distinct chunks kept by the encode cache before it is cleared
# The bytes of all tokens together; GPT-2's 50,257 tokens hold ~0.3 MB. Each merge can double a token's
# length, so a few MB of crafted merges could otherwise ask for tens of GB (checked before building).
_MAX_VOCAB_BYTES = 1 << 26
MAX_MERGES = 1 << 21  # no real tokenizer comes near; keeps a malformed file from exhausting memory
# Letters with umlauts and accents, digits, punctuation, spaces, line breaks, tabs, control
# characters, combining marks, emoji with joiners, CJK: a split pattern must cover all of them.
_PATTERN_PROBE = "Es war einmal: Mädchen, STRASSE 1234567.89 -- ok?!\n\r\n\t  x \x00\x1b[0m e\u0301 👨\u200d👩 中文\n\n "


# First pass: skip to CharTokenizer below; these helpers serve both tokenizers.
def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype `encode_to_array` uses: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _as_documents(texts: str | Sequence[str]) -> list[str]:
    """One string or a sequence of documents -> a list of documents; empty input is an error."""
    documents = [texts] if isinstance(texts, str) else list(texts)
    for doc in documents:
        if not isinstance(doc, str):
            raise TypeError(f"training texts must be str, got {type(doc).__name__}")
    if not any(documents):
        raise ValueError("the training text is empty: pass at least one non-empty text")
    for doc in documents:
        _check_unicode(doc)
    return documents


def _check_unicode(text: str) -> None:
    """Lone surrogates (e.g. from surrogateescape decoding) are not Unicode and have no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text contains a lone surrogate {text[err.start]!r} at position {err.start}; "
            "read files with encoding='utf-8' (errors='replace') to get valid Unicode"
        ) from None


def _check_size(name: str, value: int, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({what}), got {value!r}")


def _resolve_allowed(allowed_special: set[str] | str, specials: Sequence[str]) -> list[str]:
    """'all' | 'none' | a set of special tokens -> the specials to recognise in the text."""
    if allowed_special == "all":
        return list(specials)
    if allowed_special == "none":
        return []
    if isinstance(allowed_special, str) or not isinstance(allowed_special, (set, frozenset, list, tuple)):
        raise ValueError(f"allowed_special must be 'all', 'none' or a set of tokens, got {allowed_special!r}")
    unknown = set(allowed_special) - set(specials)
    if unknown:
        raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has {list(specials)}")
    return [s for s in specials if s in allowed_special]


def _split_specials(text: str, allowed: list[str]) -> list[str]:
    """Split `text` around the allowed special tokens, keeping them: "a<|endoftext|>b" -> [a, <..>, b]."""
    if not allowed:
        return [text]
    pattern = "(" + "|".join(regex.escape(s) for s in allowed) + ")"
    return [part for part in regex.split(pattern, text) if part]


def _chunks(pattern: regex.Pattern, text: str) -> Iterator[str]:
    """The regex chunks of `text`, one at a time (a list of all chunks of a whole book would take
    ~13x the memory of its text: one small str object per ~4.5 characters)."""
    return map(regex.Match.group, pattern.finditer(text))


def _canonical_json(data: dict) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def _write_json(path: str | Path, data: dict) -> None:
    """One top-level key per line (long lists stay on one line), keys sorted: a stable, diffable file."""
    lines = [f"  {json.dumps(key)}: {json.dumps(data[key], ensure_ascii=False)}" for key in sorted(data)]
    atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


class _TokenizerBase:
    """What both tokenizers share: the id <-> token tables, specials, save/fingerprint."""

    kind = ""
    special_tokens: tuple[str, ...] = ()

    def encode(self, text: str, allowed_special: set[str] | str = "none") -> list[int]:
        """Text -> list of token ids."""
        return self.encode_to_array(text, allowed_special).tolist()

    def encode_to_array(self, text: str, allowed_special: set[str] | str = "none") -> np.ndarray:
        """Text -> 1-D array of ids with dtype `dtype_for_vocab(vocab_size)` (uint16 or uint32)."""
        dtype = dtype_for_vocab(self.vocab_size)
        allowed = _resolve_allowed(allowed_special, self.special_tokens)
        parts = []
        for part in _split_specials(text, allowed):
            if part in allowed:
                parts.append(np.array([self._special_ids[part]], dtype=dtype))
            else:
                parts.append(self._encode_plain(part).astype(dtype, copy=False))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    @property
    def eot_id(self) -> int:
        """The id of `<|endoftext|>`, placed between documents."""
        return self._special_ids[EOT_TOKEN]

    def _table_indices(self, ids: Iterable[int]) -> list[int]:
        """Token ids -> positions in this tokenizer's token table (the same here), checked to be in range."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return ids

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON (read it back with `load_tokenizer`)."""
        _write_json(path, self.to_dict())

    def fingerprint(self) -> str:
        """sha256 hex digest of the canonical JSON: equal fingerprints <=> identical tokenizers."""
        return hashlib.sha256(_canonical_json(self.to_dict()).encode("ascii")).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"

    # subclasses provide: vocab_size, _special_ids, _encode_plain, decode, id_to_token, to_dict


class CharTokenizer(_TokenizerBase):
    """One token per character. Ids: 0 = `<unk>`, 1 = `<|endoftext|>`, then characters by code point.

    >>> tok = CharTokenizer.train("hello", max_vocab_size=10)
    >>> tok.encode("hello"), tok.encode("hex")
    ([3, 2, 4, 4, 5], [3, 2, 0])
    """

    kind = "char"
    special_tokens = _CHAR_SPECIALS
    min_vocab_size = len(_CHAR_SPECIALS) + 1
    min_vocab_reason = f"{len(_CHAR_SPECIALS)} special tokens + at least 1 character"

    # First pass: skip __init__ (checks, a fast lookup table); train, _encode_plain and decode are the idea.
    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"every vocabulary entry must be a single character, got {ch!r}")
        if len(set(chars)) != len(chars):
            duplicate = next(ch for ch, n in Counter(chars).items() if n > 1)
            raise ValueError(f"the character vocabulary contains {duplicate!r} more than once")
        _check_unicode("".join(chars))
        self.chars = chars
        self._itos = list(self.special_tokens) + chars
        self._special_ids = {s: i for i, s in enumerate(self.special_tokens)}
        self.unk_id = self._special_ids[UNK_TOKEN]
        # Lookup table code point -> id, one slot past the largest code point for "unknown":
        # encoding is then a single vectorised gather, table[min(code_point, last)].
        n_specials = len(self.special_tokens)
        code_points = np.array([ord(ch) for ch in chars], dtype=np.int64)
        self._table = np.full(int(code_points.max(initial=-1)) + 2, self.unk_id, dtype=np.int64)
        self._table[code_points] = np.arange(n_specials, n_specials + len(chars))

    @classmethod
    def train(cls, texts: str | Sequence[str], max_vocab_size: int) -> CharTokenizer:
        """Keep the most frequent characters (ties: lower code point first) up to `max_vocab_size`.

        `max_vocab_size` counts the 2 special tokens, so it must be at least 3.
        """
        _check_size("max_vocab_size", max_vocab_size, cls.min_vocab_size, cls.min_vocab_reason)
        counts: Counter[int] = Counter()
        for doc in _as_documents(texts):
            code_points, freq = np.unique(_code_points(doc), return_counts=True)
            counts.update(dict(zip(code_points.tolist(), freq.tolist())))
        ranked = sorted(counts, key=lambda cp: (-counts[cp], cp))
        kept = sorted(ranked[: max_vocab_size - len(cls.special_tokens)])
        return cls([chr(cp) for cp in kept])

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def _encode_plain(self, text: str) -> np.ndarray:
        code_points = _code_points(text)
        return self._table[np.minimum(code_points, len(self._table) - 1)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; the special tokens come back as their names, e.g. "<unk>"."""
        return "".join(self._itos[i] for i in self._table_indices(ids))

    def id_to_token(self, i: int) -> str:
        """The character (or special token name) behind id `i`."""
        return self._itos[self._table_indices([i])[0]]

    def unknown_rate(self, text: str) -> float:
        """Fraction of the characters of `text` that are not in the vocabulary (become `<unk>`)."""
        ids = self._encode_plain(text)
        return float(np.mean(ids == self.unk_id)) if len(ids) else 0.0

    def to_dict(self) -> dict:
        return {"type": self.kind, "version": FORMAT_VERSION,
                "special_tokens": list(self.special_tokens), "chars": self.chars}


# First pass: skip from here (byte-level BPE, loading a saved tokenizer, the GPT-2 tokenizer, the command line).
def _check_merges(merges: Sequence[tuple[int, int]]) -> None:
    """Merges refer only to earlier ids, and the tokens they make fit in `_MAX_VOCAB_BYTES`, computed
    from lengths alone (linear time, small numbers) before a single byte string is built.

    Example: _check_merges([(256, 256)]) raises - token 256 does not exist before merge 0 makes it.
    """
    if len(merges) > MAX_MERGES:
        raise ValueError(f"{len(merges):,} merges is more than the {MAX_MERGES:,} this code reads")
    lengths, total = [1] * 256, 256
    for rank, (a, b) in enumerate(merges):
        if not (0 <= a < 256 + rank and 0 <= b < 256 + rank):
            raise ValueError(f"merge {rank} {[a, b]} refers to a token that does not exist yet")
        lengths.append(lengths[a] + lengths[b])
        total += lengths[-1]
        if total > _MAX_VOCAB_BYTES:
            raise ValueError(f"the tokens made by the first {rank + 1:,} merges already hold more than "
                             f"{_MAX_VOCAB_BYTES >> 20} MB of text (merge {rank} makes a token of "
                             f"{lengths[-1]:,} bytes); not a real tokenizer - refused before building it")


def _code_points(text: str) -> np.ndarray:
    """str -> its code points as int64 (UTF-32 is exactly one 4-byte unit per character)."""
    # surrogatepass: a lone surrogate becomes its code point and then simply an unknown character
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)


class BPETokenizer(_TokenizerBase):
    """Byte-level BPE. Ids: 0-255 the bytes, 256.. the merges in learned order, then `<|endoftext|>`.

    >>> tok = BPETokenizer.train("aaabdaaabac", vocab_size=300)
    >>> tok.merges  # aa -> 256, then ab -> 257, then (aa)(ab) -> 258
    [(97, 97), (97, 98), (256, 257)]
    """

    kind = "bpe"
    special_tokens = _BPE_SPECIALS
    min_vocab_size = 256 + len(_BPE_SPECIALS)
    min_vocab_reason = f"256 bytes + {len(_BPE_SPECIALS)} special token"

    def __init__(self, merges: Sequence[Sequence[int]], pattern: str = SPLIT_PATTERN):
        self.merges = [(int(a), int(b)) for a, b in merges]
        _check_merges(self.merges)  # sizes first: a crafted chain of merges would need GBs
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        if "".join(_chunks(self._regex, _PATTERN_PROBE)) != _PATTERN_PROBE:
            raise ValueError("the split pattern must match every character (its chunks must join to the text)")
        # pair -> id of the merged token; a lower id means it was learned earlier (lower rank)
        self._merge_ids = {pair: 256 + rank for rank, pair in enumerate(self.merges)}
        if len(self._merge_ids) != len(self.merges):
            duplicate = next(pair for pair, n in Counter(self.merges).items() if n > 1)
            raise ValueError(f"the merge {list(duplicate)} appears more than once")
        self._token_bytes = [bytes([b]) for b in range(256)]
        for rank, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + rank and 0 <= b < 256 + rank):
                raise ValueError(f"merge {rank} {[a, b]} refers to a token that does not exist yet")
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        first_special = len(self._token_bytes)
        self._special_ids = {s: first_special + i for i, s in enumerate(self.special_tokens)}
        self._token_bytes += [s.encode("utf-8") for s in self.special_tokens]
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def train(cls, texts: str | Sequence[str], vocab_size: int) -> BPETokenizer:
        """Learn up to `vocab_size - 256 - 1` merges (fewer if no pair occurs twice any more)."""
        _check_size("vocab_size", vocab_size, cls.min_vocab_size, cls.min_vocab_reason)
        chunk_counts = _count_chunks(_as_documents(texts), regex.compile(SPLIT_PATTERN), cls.special_tokens)
        merges = _learn_merges(chunk_counts, vocab_size - cls.min_vocab_size)
        return cls(merges)

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    def _encode_plain(self, text: str) -> np.ndarray:
        _check_unicode(text)
        ids: list[int] = []
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for chunk in _chunks(self._regex, text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = cache[chunk] = self._encode_chunk(chunk)
            ids.extend(chunk_ids)
        return np.array(ids, dtype=np.int64)

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Bytes of one chunk -> ids: repeatedly merge the adjacent pair that was learned first."""
        ids = list(chunk.encode("utf-8"))
        merge_ids = self._merge_ids
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: merge_ids.get(p, 1 << 62))
            if pair not in merge_ids:
                break  # no adjacent pair was ever merged: done
            ids = _merge(ids, pair, merge_ids[pair])
        return tuple(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. A sequence that cuts a character's bytes apart decodes with U+FFFD there."""
        return b"".join(self._token_bytes[i] for i in self._table_indices(ids)).decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        """The text of token `i`; bytes that are not valid UTF-8 on their own appear as \\xNN."""
        return self._token_bytes[self._table_indices([i])[0]].decode("utf-8", errors="backslashreplace")

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes of token `i`."""
        return self._token_bytes[self._table_indices([i])[0]]

    def unknown_rate(self, text: str) -> float:
        """Always 0.0: every string is made of bytes, and all 256 bytes are in the vocabulary."""
        return 0.0

    def to_dict(self) -> dict:
        return {"type": self.kind, "version": FORMAT_VERSION, "pattern": self.pattern,
                "special_tokens": list(self.special_tokens), "merges": [list(p) for p in self.merges]}

def _count_chunks(documents: list[str], pattern: regex.Pattern, specials: Sequence[str]) -> Counter[str]:
    """How often each distinct chunk occurs; special tokens in the text act as borders, not text."""
    counts: Counter[str] = Counter()
    for doc in documents:
        for part in _split_specials(doc, list(specials)):
            if part not in specials:
                counts.update(_chunks(pattern, part))
    return counts


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right: ([1,1,1], (1,1), 9) -> [9,1]."""
    out = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i + 1 < n and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _learn_merges(chunk_counts: Counter[str], n_merges: int) -> list[tuple[int, int]]:
    """The BPE training loop on distinct chunks weighted by their counts.

    Ties between equally frequent pairs go to the smaller pair (a, b) - deterministic.
    """
    # 1. Each distinct chunk of >= 2 bytes as a list of byte ids; single bytes can never merge.
    words: list[list[int]] = []
    weights: list[int] = []
    for chunk, count in chunk_counts.items():
        ids = list(chunk.encode("utf-8"))
        if len(ids) >= 2:
            words.append(ids)
            weights.append(count)

    # 2. Initial pair counts and the index pair -> chunks that contain it. The index holds plain
    #    lists (each chunk once per pair, in increasing order): a set per pair would cost ~7x the
    #    memory (~60 bytes per entry instead of ~9) for the ~350 k entries of a dozen books.
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: defaultdict[tuple[int, int], list[int]] = defaultdict(list)
    for w_idx, (word, weight) in enumerate(zip(words, weights)):
        pairs = list(zip(word, word[1:]))
        for pair in pairs:
            pair_counts[pair] += weight
        for pair in dict.fromkeys(pairs):  # each distinct pair once (dict keeps the order)
            where[pair].append(w_idx)

    # 3. A max-heap of (-count, pair). Entries go stale when a count changes; a fresh entry is
    #    pushed for every change, and a popped entry is used only if its count is still current.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale entry
        if -neg_count < _BPE_MIN_PAIR_COUNT:
            break
        new_id = 256 + len(merges)
        merges.append(pair)

        # 4. Re-merge only the chunks that contain the pair and collect the change of each count.
        #    Every new adjacent pair contains new_id, so only those need new index entries.
        delta: Counter[tuple[int, int]] = Counter()
        for w_idx in where.pop(pair):
            word = words[w_idx]
            merged = _merge(word, pair, new_id)
            if len(merged) == len(word):
                continue  # index entry from before an earlier merge changed this chunk
            weight = weights[w_idx]
            for old in zip(word, word[1:]):
                delta[old] -= weight
            new_pairs = list(zip(merged, merged[1:]))
            for new in new_pairs:
                delta[new] += weight
            for new in dict.fromkeys(new_pairs):
                if new_id in new:
                    where[new].append(w_idx)
            words[w_idx] = merged
        for changed, diff in delta.items():
            if diff:
                count = pair_counts[changed] + diff
                if count > 0:
                    pair_counts[changed] = count
                    heapq.heappush(heap, (-count, changed))
                else:
                    del pair_counts[changed]
    return merges


# ---------------------------------------------------------------------------------------------
# Training by name. Reading a saved tokenizer.json back: src/tokenizer_json.py (it knows every kind,
# also the tokenizer read from GPT-2 files in src/gpt2_tokenizer.py).


def train_tokenizer(kind: str, texts: str | Sequence[str], max_vocab_size: int) -> CharTokenizer | BPETokenizer:
    """`kind` "char" or "bpe" -> a tokenizer trained on `texts` with at most `max_vocab_size` ids."""
    cls = tokenizer_class(kind)
    _check_size("max_vocab_size", max_vocab_size, cls.min_vocab_size, cls.min_vocab_reason)
    return cls.train(texts, max_vocab_size)


def tokenizer_class(kind: object) -> type[CharTokenizer] | type[BPETokenizer]:
    """"char" -> CharTokenizer, "bpe" -> BPETokenizer; anything else is a ValueError."""
    if kind == "char":
        return CharTokenizer
    if kind == "bpe":
        return BPETokenizer
    raise ValueError(f"unknown tokenizer kind {kind!r}: use 'char' or 'bpe'")


if __name__ == "__main__":  # python -m src.tokenizer {train,show}: the command line lives in the shell
    from src.cli.tokenizer import main

    sys.exit(main())
