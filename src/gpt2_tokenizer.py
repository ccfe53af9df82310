"""GPT-2-format tokenizer files: vocab.json + merges.txt, as OpenAI and Hugging Face ship byte-level BPE.

OpenAI's GPT-2 and every Hugging Face byte-level BPE ship a tokenizer as two text files:
* merges.txt - after a "#version" line, one merge per line in the order learned: "Ġt he".
* vocab.json - {token text: id}. A token's text is its bytes, each written as a printable
  stand-in character (`bytes_to_unicode`: a space is "Ġ", a newline "Ċ"), as the file is text.
The merges are our `merges`, written with texts instead of ids. The ids are another matter. Ours
follow the merge order ("internal ids": bytes 0-255, merge r -> 256 + r, then <|endoftext|>).
GPT-2's vocab.json orders the bytes by their stand-ins ("!" is 0) and puts <|endoftext|> last
(50256); Hugging Face's trainer puts the special tokens first. A model only knows the ids it was
trained with, so a tokenizer read from files must hand out the files' ids. `GPT2BPETokenizer`
does so with one table, vocab_ids[internal id] = file id: it encodes with the unchanged BPE
machinery and translates at the border (encode: internal -> file id, decode: back). Its JSON (saved
with a data set or a checkpoint) adds that table, and src/tokenizer_json.py rebuilds it. Files in
our own order (written by `save_gpt2_files`) give a plain BPETokenizer.

A merges.txt may make one text twice, e.g. "ccc" by "c cc" and by "cc c" (our trainer never did on
16 books): vocab.json holds one id for it, we two internal ids. Both map to that file id, and the
merges that continue from the text accept either (extra `_merge_ids` entries). Hugging Face merges
one occurrence of the best pair at a time, we all of its occurrences at once; that is the same for
files from a trainer, and with texts made twice a random search over small merge lists found no
difference either (it cannot be ruled out for every hand-made file).

The split pattern: Hugging Face runs GPT2_SPLIT_PATTERN (or ours) with the Oniguruma regex engine,
we with `regex`. They agree on every character assigned up to Unicode 14 (checked for all code
points); a few characters of the newest Unicode versions (e.g. U+0C5C) fall into other chunks.

A learner can skip this file: it only translates between our `BPETokenizer` (src/tokenizer.py) and
the files other people's models come with (src/hf_bridge.py reads and writes them with a model).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from src.fileio import StructuredFileError, atomic_write_text, parse_json
from src.tokenizer import EOT_TOKEN, MAX_MERGES, BPETokenizer

# GPT-2's split pattern (openai/gpt-2, src/encoder.py), the one GPT-2-format files are used with
# (Hugging Face's ByteLevel pre-tokenizer): no limit on digits, no special case for line breaks.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_GPT2_FILE_LIMIT = 64 << 20  # bytes; GPT-2's own vocab.json is 1 MB, merges.txt 0.5 MB


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 characters stand for themselves,
    the other 68 bytes (control characters, space, ...) become chr(256), chr(257), ... in byte order.

    Example: bytes_to_unicode()[ord("a")] -> "a", [ord(" ")] -> "Ġ" (U+0120), [ord("\\n")] -> "Ċ".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = chr(256 + len(stand_in) - len(printable))
    return dict(sorted(stand_in.items()))


class GPT2BPETokenizer(BPETokenizer):
    """A BPETokenizer whose ids are those of a GPT-2-format vocab.json (src/gpt2_tokenizer.py explains).

    `vocab_ids[i]` is the file id of internal token i (0-255 bytes, 256 + r merge r, then
    `<|endoftext|>`); encode returns file ids and decode takes them.
    """

    def __init__(self, merges: Sequence[Sequence[int]], pattern: str, vocab_ids: Sequence[int]):
        super().__init__(merges, pattern)
        n_internal = len(self._token_bytes)
        if len(vocab_ids) != n_internal:
            raise ValueError(f"vocab_ids has {len(vocab_ids)} entries, but the merges and special tokens "
                             f"make {n_internal} tokens")
        bad = [i for i in vocab_ids if type(i) is not int or not 0 <= i < n_internal]
        if bad:
            raise ValueError(f"vocab_ids must be integers in [0, {n_internal}), got {bad[0]!r}")
        first_of: dict[int, int] = {}  # file id -> the first internal id with it
        id_of_bytes: dict[bytes, int] = {}
        for internal, file_id in enumerate(vocab_ids):
            token = self._token_bytes[internal]
            if self._token_bytes[first_of.setdefault(file_id, internal)] != token:
                raise ValueError(f"file id {file_id} stands for two different tokens")
            if id_of_bytes.setdefault(token, file_id) != file_id:
                raise ValueError(f"the token {token!r} has two file ids, {id_of_bytes[token]} and {file_id}")
        if len(first_of) != max(first_of) + 1:
            missing = min(set(range(max(first_of) + 1)) - set(first_of))
            raise ValueError(f"file id {missing} belongs to no token: the ids must be 0 .. N-1 without gaps")
        self.vocab_ids = list(vocab_ids)
        self._file_ids = np.array(vocab_ids, dtype=np.int64)  # internal id -> file id
        self._internal_ids = [first_of[f] for f in range(len(first_of))]  # file id -> internal id
        self._special_ids = {s: vocab_ids[i] for s, i in self._special_ids.items()}
        # A text made by two merges: the merges continuing from it accept its second internal id too.
        repeats = defaultdict(list)
        for internal, file_id in enumerate(vocab_ids):
            if first_of[file_id] != internal:
                repeats[first_of[file_id]].append(internal)
        pairs = sum((1 + len(repeats.get(a, ()))) * (1 + len(repeats.get(b, ()))) for a, b in self.merges) if repeats else 0
        if pairs > 2 * MAX_MERGES:  # each repeated text multiplies the pairs: bounded before building them
            raise ValueError(f"the repeated tokens would make {pairs:,} merge pairs, more than the "
                             f"{2 * MAX_MERGES:,} this code builds; not a real tokenizer")
        for rank, (a, b) in enumerate(self.merges if repeats else []):
            for left in (a, *repeats.get(a, ())):
                for right in (b, *repeats.get(b, ())):
                    self._merge_ids.setdefault((left, right), 256 + rank)

    @property
    def vocab_size(self) -> int:
        return len(self._internal_ids)

    def _encode_plain(self, text: str) -> np.ndarray:
        return self._file_ids[super()._encode_plain(text)]  # internal ids -> file ids

    def _table_indices(self, ids: Iterable[int]) -> list[int]:
        """A GPT-2 file's ids -> positions in the byte table (its order differs), after the range check;
        BPETokenizer's decode, id_to_token and token_bytes then work unchanged."""
        return [self._internal_ids[i] for i in super()._table_indices(ids)]

    def to_dict(self) -> dict:
        return {**super().to_dict(), "vocab_ids": list(self.vocab_ids)}


def tokenizer_from_gpt2_vocab(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], pattern: str = GPT2_SPLIT_PATTERN
) -> BPETokenizer:
    """GPT-2-format data ({token text: id}, [(text, text) per merge]) -> a tokenizer with its ids.

    Needs all 256 byte tokens and `<|endoftext|>`; every other token must be made by a merge.
    Example: vocab {"a": 2, "b": 3, "ab": 1, ...} with merges [("a", "b")] encodes "ab" as [1].
    """
    stand_in = bytes_to_unicode()
    internal_of = {stand_in[b]: b for b in range(256)}  # token text -> internal id
    missing = [(b, text) for b, text in stand_in.items() if text not in vocab]
    if missing:
        raise ValueError(f"vocab.json lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0][1]!r} for "
                         f"byte {missing[0][0]:#04x}); a byte-level BPE vocabulary holds every byte")
    if len(merges) > MAX_MERGES:
        raise ValueError(f"{len(merges):,} merges is more than the {MAX_MERGES:,} this code reads")
    texts = list(internal_of)  # the text of each internal id, in internal order
    internal_merges = []
    for rank, (a, b) in enumerate(merges):
        for part in (a, b):
            if part not in internal_of:
                raise ValueError(f"merge {rank + 1} '{a} {b}' uses {part!r}, which is neither a byte "
                                 "nor made by an earlier merge")
        if a + b not in vocab:
            raise ValueError(f"merge {rank + 1} '{a} {b}' makes {a + b!r}, which vocab.json does not hold")
        internal_merges.append((internal_of[a], internal_of[b]))
        internal_of.setdefault(a + b, 256 + rank)  # a text made a second time keeps its first id
        texts.append(a + b)
    if EOT_TOKEN not in vocab:
        raise ValueError(f"vocab.json has no {EOT_TOKEN!r} token")
    texts.append(EOT_TOKEN)
    extra = [text for text in vocab if text not in internal_of and text != EOT_TOKEN]
    if extra:
        raise ValueError(f"vocab.json has {len(extra)} tokens that are neither bytes, nor made by a merge, "
                         f"nor {EOT_TOKEN} (e.g. {extra[0]!r}); such extra tokens are not supported")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("the ids in vocab.json must be 0 .. N-1, each used once")
    vocab_ids = [vocab[text] for text in texts]
    if vocab_ids == list(range(len(vocab_ids))):
        return BPETokenizer(internal_merges, pattern)  # the files are in our order
    return GPT2BPETokenizer(internal_merges, pattern, vocab_ids)


def gpt2_vocab_and_merges(tok: BPETokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The inverse of `tokenizer_from_gpt2_vocab`: ({token text: id} sorted by id, merges as texts)."""
    stand_in = bytes_to_unicode()
    n_plain = len(tok._token_bytes) - len(tok.special_tokens)
    texts = ["".join(stand_in[b] for b in tok._token_bytes[i]) for i in range(n_plain)]
    texts += list(tok.special_tokens)
    file_ids = tok.vocab_ids if isinstance(tok, GPT2BPETokenizer) else range(len(texts))
    vocab: dict[str, int] = {}
    for text, file_id in zip(texts, file_ids, strict=True):
        if vocab.setdefault(text, file_id) != file_id:
            raise ValueError(f"ids {vocab[text]} and {file_id} are the same token {tok.id_to_token(file_id)!r}; "
                             "GPT-2-format files (vocab.json) cannot hold one token under two ids")
    merges = [(texts[a], texts[b]) for a, b in tok.merges]
    return dict(sorted(vocab.items(), key=lambda item: item[1])), merges


def _read_gpt2_file(path: str | Path, what: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file ({what})")
    size = path.stat().st_size
    if size > _GPT2_FILE_LIMIT:
        raise ValueError(f"{path}: {size / 1e6:.0f} MB is too large for {what} (this code reads up to "
                         f"{_GPT2_FILE_LIMIT >> 20} MB)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None


def read_gpt2_vocab(path: str | Path) -> dict[str, int]:
    """vocab.json -> {token text: id}; raises ValueError naming the file for anything else."""
    try:
        vocab = parse_json(_read_gpt2_file(path, "a GPT-2 vocab.json"), path)
    except StructuredFileError as err:
        raise ValueError(str(err)) from None
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise ValueError(f"{path}: expected a JSON object mapping token texts to integer ids")
    return vocab


def read_gpt2_merges(path: str | Path) -> list[tuple[str, str]]:
    """merges.txt -> [(text, text), ...] in rank order; the "#version" line and blank lines are skipped."""
    merges = []
    for number, line in enumerate(_read_gpt2_file(path, "a GPT-2 merges.txt").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path} line {number}: expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_gpt2_files(vocab_json: str | Path, merges_txt: str | Path, pattern: str = GPT2_SPLIT_PATTERN) -> BPETokenizer:
    """Read a GPT-2-format tokenizer. It encodes like Hugging Face's `GPT2TokenizerFast` with the
    same files (`encode(text, allowed_special="all")`: HF always treats "<|endoftext|>" as special)
    and returns the files' ids. Raises ValueError naming the file and the problem."""
    vocab, merges = read_gpt2_vocab(vocab_json), read_gpt2_merges(merges_txt)
    try:
        return tokenizer_from_gpt2_vocab(vocab, merges, pattern)
    except ValueError as err:
        folder = Path(vocab_json).parent
        where = folder if folder == Path(merges_txt).parent else f"{vocab_json} + {merges_txt}"
        raise ValueError(f"{where}: {err}") from None


def save_gpt2_files(tok: BPETokenizer, vocab_json: str | Path, merges_txt: str | Path) -> None:
    """Write vocab.json and merges.txt. They do not record the split pattern: readers assume
    GPT-2's (`GPT2_SPLIT_PATTERN`), so pass `pattern=` to `read_gpt2_files` for any other."""
    vocab_text, merges_text = gpt2_file_texts(*gpt2_vocab_and_merges(tok))
    atomic_write_text(vocab_json, vocab_text)
    atomic_write_text(merges_txt, merges_text)


def gpt2_file_texts(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """The texts of vocab.json and merges.txt for GPT-2-format data.

    Example: gpt2_file_texts({"a": 0}, [("a", "b")]) -> ('{"a": 0}\\n', '#version: 0.2\\na b\\n').
    """
    return (json.dumps(vocab, ensure_ascii=False) + "\n",
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
