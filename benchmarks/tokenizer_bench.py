"""Benchmark our tokenizers against Hugging Face `tokenizers` (Rust) on the same text.

Measures, in one run: BPE training time (ours vs HF ByteLevel BPE with the same vocabulary size),
encode throughput in MB/s of UTF-8 text, compression in bytes per token, and the throughput of
our character tokenizer (the fast, repeatable encodes: best of 3 runs, since a busy machine only
ever makes a run slower). Text: the 12 English books of ../shared/corpus/gutenberg when present
(Gutenberg header and licence footer cut off at the START/END markers), else a generated text.

    python -m benchmarks.tokenizer_bench [--vocab-size 4096] [--mirror DIR]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from src.config import DEFAULT_BOOKS
from src.tokenizer import EOT_TOKEN, BPETokenizer, CharTokenizer
from src.tokenizer_json import tokenizer_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO_ROOT.parent / "shared" / "corpus" / "gutenberg"


def strip_gutenberg(text: str) -> str:
    """Keep only the part between the '*** START OF ...' and '*** END OF ...' lines (roughly)."""
    text = text.replace("\r\n", "\n")
    start = text.find("*** START OF")
    if start != -1:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END OF")
    return (text[:end] if end != -1 else text).strip() + "\n"


def load_books(mirror: Path) -> tuple[list[str], str]:
    books = []
    for book_id in DEFAULT_BOOKS:
        path = mirror / "cache" / "epub" / str(book_id) / f"pg{book_id}.txt"
        if path.is_file():
            books.append(strip_gutenberg(path.read_text(encoding="utf-8-sig")))
    if books:
        return books, f"{len(books)} Gutenberg books from {mirror}"
    rng = random.Random(0)
    words = "the a of and to in was he she it that his her with said Mädchen Straße über".split()
    text = " ".join(rng.choice(words) + ("." if rng.random() < 0.1 else "") for _ in range(1_000_000))
    return [text], "generated text (no Gutenberg mirror found)"


def timed(fn, repeat: int = 1):
    """(result, seconds): the fastest of `repeat` runs - other processes can only make a run slower."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def train_hf(books: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(books, trainer=trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    args = parser.parse_args()

    books, source = load_books(args.mirror)
    text = "\n".join(books)
    mb = len(text.encode("utf-8")) / 1e6
    print(f"text: {source}, {mb:.2f} MB UTF-8, vocabulary size {args.vocab_size}\n")

    ours, ours_train = timed(lambda: BPETokenizer.train(books, args.vocab_size))
    hf, hf_train = timed(lambda: train_hf(books, args.vocab_size))

    fresh = tokenizer_from_dict(ours.to_dict())  # empty chunk cache: a cold encode
    ours_ids, ours_cold = timed(lambda: fresh.encode_to_array(text))
    _, ours_warm = timed(lambda: fresh.encode_to_array(text), repeat=3)
    if fresh.decode(ours_ids.tolist()) != text:
        raise SystemExit("round trip failed: decode(encode(text)) != text")
    hf_enc, hf_single = timed(lambda: hf.encode(text))
    hf_batch, hf_batched = timed(lambda: hf.encode_batch(books))
    hf_tokens = sum(len(e.ids) for e in hf_batch)

    char, char_train = timed(lambda: CharTokenizer.train(books, 256))
    char_ids, char_enc = timed(lambda: char.encode_to_array(text), repeat=3)

    rows = [
        ("BPE train time (s)", f"{ours_train:.2f}", f"{hf_train:.2f}", f"{ours_train / hf_train:.1f}x HF's time", "<= 10x HF"),
        ("BPE encode, cold cache (MB/s)", f"{mb / ours_cold:.2f}", f"{mb / hf_single:.2f} (encode)",
         f"{hf_single / ours_cold:.1f}x HF's speed", ">= 1 MB/s"),
        ("BPE encode, warm cache (MB/s)", f"{mb / ours_warm:.2f}", f"{mb / hf_batched:.2f} (encode_batch)",
         f"{hf_batched / ours_warm:.1f}x HF's speed", ""),
        ("bytes per token", f"{mb * 1e6 / len(ours_ids):.3f}", f"{mb * 1e6 / hf_tokens:.3f}",
         f"{hf_tokens / len(ours_ids):.3f}x HF's", "higher is better"),
        ("vocabulary size", str(ours.vocab_size), str(hf.get_vocab_size()), "", ""),
        ("char train time (s), vocab 256", f"{char_train:.2f}", "-", "", ""),
        ("char encode (MB/s)", f"{mb / char_enc:.1f}", "-", "", ">= 20 MB/s"),
        ("char bytes per token / OOV rate", f"{mb * 1e6 / len(char_ids):.3f} / {char.unknown_rate(text):.5f}",
         "-", "", ""),
    ]
    header = ("metric", "ours", "HF tokenizers", "ratio", "target")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
