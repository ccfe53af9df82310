"""Tests for src/tokenizer.py: round trips, vocabulary caps, a hand-computed BPE example, a
reference encoder, JSON save/load, special tokens, bad input and the teaching CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from src.cli.tokenizer import main
from src.tokenizer import (
    EOT_TOKEN,
    SPLIT_PATTERN,
    UNK_TOKEN,
    BPETokenizer,
    CharTokenizer,
    train_tokenizer,
)
from src.tokenizer_json import load_tokenizer, tokenizer_from_dict
from tests.conftest import REPO_ROOT, make_story

GERMAN = (
    "Es war einmal ein Mädchen, das hieß Rotkäppchen. Die Großmutter wohnte draußen im Wald, "
    "eine halbe Stunde vom Dorf. Über die Straße lief der Wolf; „Grüß Gott“, sagte er.\n"
)
TRAIN_TEXT = make_story(n_paragraphs=30, seed=1) + GERMAN * 20
TRICKY = ["", "a", " ", "\n\n", "äöüß ÄÖÜ ẞ", "😀👍🏽 family: 👨‍👩‍👧", "中文字符 日本語", "\x00\x01\x1b[0m\r\n\t", EOT_TOKEN]

# Any Unicode scalar value, mixed with characters we especially care about: umlauts, emoji with
# modifiers/joiners, CJK and control characters. codec="utf-8" leaves out lone surrogates
# (st.characters() alone sometimes draws them): they are not text, UTF-8 files never contain
# them, and encode rejects them with a ValueError (tested below).
special_chars = st.sampled_from(list("äöüßÄÖÜ€😀👍🏽\u200d中文字日本\x00\x07\x1b\r\n\t ") + [EOT_TOKEN, "<|"])
unicode_text = st.lists(st.one_of(st.characters(codec="utf-8"), special_chars), max_size=60).map("".join)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, vocab_size=420)


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    return CharTokenizer.train(TRAIN_TEXT, max_vocab_size=1000)


def reference_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Deliberately simple: split into chunks, then apply every merge in rank order, one at a time."""
    ids: list[int] = []
    for chunk in regex.findall(SPLIT_PATTERN, text):
        chunk_ids = list(chunk.encode("utf-8"))
        for rank, (a, b) in enumerate(tok.merges):
            out, i = [], 0
            while i < len(chunk_ids):
                if i + 1 < len(chunk_ids) and chunk_ids[i] == a and chunk_ids[i + 1] == b:
                    out.append(256 + rank)
                    i += 2
                else:
                    out.append(chunk_ids[i])
                    i += 1
            chunk_ids = out
        ids.extend(chunk_ids)
    return ids


# --- round trips ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(text=unicode_text)
def test_bpe_round_trip_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.eot_id not in ids  # by default "<|endoftext|>" in the text is plain text


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip_tricky_strings(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.unknown_rate(text) == 0.0


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_char_round_trip_in_vocabulary(char, data):
    text = data.draw(st.text(alphabet=st.sampled_from(char.chars), max_size=80))
    ids = char.encode(text)
    assert char.decode(ids) == text
    assert len(ids) == len(text)
    assert char.unknown_rate(text) == 0.0


def test_char_docstring_example():
    tok = CharTokenizer.train("hello", max_vocab_size=10)
    assert tok.encode("hello") == [3, 2, 4, 4, 5]  # 0 <unk>, 1 <|endoftext|>, then e h l o
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == [UNK_TOKEN, EOT_TOKEN, "e", "h", "l", "o"]


def test_char_out_of_vocabulary_becomes_unk(char):
    text = "Maß 😀 ok ☃"
    ids = char.encode(text)
    unknown = [i for i, ch in enumerate(text) if ch not in char.chars]
    assert unknown == [4, 9]  # the emoji and the snowman never occur in TRAIN_TEXT
    assert [i for i, t in enumerate(ids) if t == char.unk_id] == unknown
    assert char.unknown_rate(text) == pytest.approx(2 / len(text))
    assert char.decode(ids) == "Maß <unk> ok <unk>"


def test_encode_to_array_matches_encode(bpe, char):
    for tok in (bpe, char):
        arr = tok.encode_to_array(GERMAN + EOT_TOKEN + "x", allowed_special="all")
        assert arr.dtype == np.uint16
        assert arr.tolist() == tok.encode(GERMAN + EOT_TOKEN + "x", allowed_special="all")
        assert tok.encode_to_array("").shape == (0,)


# --- vocabulary: caps, determinism, hand-computed merges ---------------------------------------


def test_char_cap_keeps_most_frequent_characters_ties_by_code_point():
    text = "aaaa bbb ccc dd e"  # counts: a4, ' '4, b3, c3, d2, e1
    tok = CharTokenizer.train(text, max_vocab_size=6)  # 2 specials + 4 characters
    assert tok.vocab_size == 6
    assert tok.chars == [" ", "a", "b", "c"]  # b and c tie with 3; d and e are cut
    assert tok.encode("d") == [tok.unk_id]


@pytest.mark.parametrize("cap", [257, 300, 420])
def test_bpe_cap_respected(cap):
    tok = BPETokenizer.train(TRAIN_TEXT, vocab_size=cap)
    assert tok.vocab_size == cap  # enough repeated pairs in TRAIN_TEXT to fill every size here
    assert tok.eot_id == cap - 1
    assert len(tok.merges) == cap - 257


def test_training_is_deterministic(tmp_path):
    for kind in ("char", "bpe"):
        first = train_tokenizer(kind, TRAIN_TEXT, 300)
        second = train_tokenizer(kind, TRAIN_TEXT, 300)
        first.save(tmp_path / "a.json")
        second.save(tmp_path / "b.json")
        assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
        assert first.fingerprint() == second.fingerprint()
    other = train_tokenizer("bpe", TRAIN_TEXT[:-100], 300)
    assert other.fingerprint() != second.fingerprint()


def test_training_does_not_depend_on_the_hash_seed():
    # str hashes differ between processes (PYTHONHASHSEED); iterating a set or dict of strings in
    # hash order during training would make the vocabulary - and the data set - change per run.
    script = (
        "import sys; from src.tokenizer import train_tokenizer; text = sys.stdin.read(); "
        "print(*(train_tokenizer(k, text.split('.'), 320).fingerprint() for k in ('char', 'bpe')))"
    )
    prints = {
        subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                       input=TRAIN_TEXT, encoding="utf-8", env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
        for seed in ("1", "2")
    }
    assert len(prints) == 1
    expected = [train_tokenizer(k, TRAIN_TEXT.split("."), 320).fingerprint() for k in ("char", "bpe")]
    assert prints.pop().split() == expected


def test_char_vocabulary_smaller_than_the_cap():
    tok = CharTokenizer.train("abcab", max_vocab_size=1000)
    assert tok.vocab_size == 5 and tok.chars == ["a", "b", "c"]  # 2 specials + 3 distinct characters
    assert max(tok.encode("cab?")) < tok.vocab_size


def test_bpe_hand_computed_merges():
    # Wikipedia's example "aaabdaaabac" (one chunk). Pair counts, overlaps included:
    #   aa:4 ab:2 bd:1 da:1 ba:1 ac:1          -> merge aa = 256:  Z a b d Z a b a c
    #   Za:2 ab:2 (tie -> smaller pair (97,98)) -> merge ab = 257:  Z Y d Z Y a c
    #   ZY:2                                    -> merge ZY = 258:  X d X a c
    # then every pair occurs once: training stops early (pairs must occur at least twice).
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=1000)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.vocab_size == 256 + 3 + 1
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert tok.id_to_token(258) == "aaab"


def test_bpe_merges_never_cross_chunks_and_counts_are_weighted():
    # chunks: "ab", " ab", " ab" -> (a,b) occurs 3 times -> 256; then (' ', 256) twice -> 257.
    # "b a" would be a pair if merges crossed the word border; it must never be learned.
    tok = BPETokenizer.train("ab ab ab", vocab_size=1000)
    assert tok.merges == [(97, 98), (32, 256)]
    assert tok.encode("ab ab") == [256, 257]


def test_documents_are_separate():
    # "bc" only ever spans the border between two documents, so it must not be learned ...
    tok = BPETokenizer.train(["ab", "cd"] * 3, vocab_size=300)
    assert tok.merges == [(97, 98), (99, 100)]
    # ... while the same letters as one document form one chunk "abcdabcdabcd" with more pairs.
    joined = BPETokenizer.train("abcd" * 3, vocab_size=300)
    assert len(joined.merges) > 2


def test_bpe_training_memory_is_small():
    # Two things used to make training memory grow: a list of all chunks of the text at once
    # (~13x the text for one long string), and a Python set per pair in the index pair -> chunks
    # (~60 bytes per entry). Measured: a long story as one string peaked at 13x its size, now ~1x;
    # a text of ~2,000 distinct invented words (the worst case for the index) at 55x, now ~23x.
    story = make_story(n_paragraphs=150, seed=5)
    rng = random.Random(0)
    syllables = ["ka", "ri", "mo", "ste", "lä", "un", "ber", "ß", "an", "te", "ol", "sch"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20_000)]
    distinct = " ".join(rng.choice(words) + rng.choice(["", "", ",", "."]) for _ in range(4_000))
    for text, bound in ((story, 4), (distinct, 35)):
        tracemalloc.start()
        try:
            BPETokenizer.train(text, vocab_size=260)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < bound * len(text.encode("utf-8")), (bound, peak / len(text.encode("utf-8")))


def test_words_with_umlauts_stay_together():
    assert regex.findall(SPLIT_PATTERN, "Das Mädchen überquert die Straße.") == [
        "Das", " Mädchen", " überquert", " die", " Straße", ".",
    ]
    tok = BPETokenizer.train("Das Mädchen. " * 40, vocab_size=400)
    assert len(tok.encode(" Mädchen")) == 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_bpe_encode_equals_reference_encoder(bpe, seed):
    rng = random.Random(seed)
    # random slices of the training text (many merges apply) mixed with random characters
    start = rng.randrange(len(TRAIN_TEXT))
    text = TRAIN_TEXT[start : start + rng.randrange(1, 300)]
    text += "".join(rng.choice("aeiou äöß,.\n😀中") for _ in range(rng.randrange(30)))
    assert bpe.encode(text) == reference_encode(bpe, text)


# --- save / load --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_gives_identical_encodings(tmp_path, kind, bpe, char):
    tok = {"char": char, "bpe": bpe}[kind]
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert type(loaded) is type(tok)
    assert loaded.kind == kind
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.vocab_size == tok.vocab_size
    for text in TRICKY + [TRAIN_TEXT[:2000]]:
        assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert tokenizer_from_dict(json.loads((tmp_path / "tok.json").read_text("utf-8"))).to_dict() == tok.to_dict()


# --- special tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_tokens_never_split(kind, bpe, char):
    tok = {"char": char, "bpe": bpe}[kind]
    text = f"Ende.{EOT_TOKEN}Anfang"
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("Ende.") + [tok.eot_id] + tok.encode("Anfang")
    assert tok.encode(EOT_TOKEN, allowed_special={EOT_TOKEN}) == [tok.eot_id]
    assert tok.id_to_token(tok.eot_id) == EOT_TOKEN
    assert tok.decode(ids) == text
    # by default the literal is ordinary text: several tokens, none of them the special one
    plain = tok.encode(text)
    assert tok.eot_id not in plain and len(plain) > len(ids)
    if kind == "bpe":  # the char vocabulary lacks "<|>" (they become <unk>), BPE is lossless
        assert tok.decode(plain) == text
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode(text, allowed_special={"<pad>"})
    for bad in (None, "ALL", 1):
        with pytest.raises(ValueError, match="allowed_special must be"):
            tok.encode(text, allowed_special=bad)


def test_bpe_merges_never_produce_special_tokens():
    tok = BPETokenizer.train(f"one{EOT_TOKEN}two{EOT_TOKEN}" * 50, vocab_size=400)
    learned = [tok.token_bytes(256 + r) for r in range(len(tok.merges))]
    assert learned, "expected some merges"
    assert not any(b"<|" in t or b"endoftext" in t or b"|>" in t for t in learned)
    # the specials act as borders: "one" + "two" never merge into "onetwo"
    assert b"onetwo" not in learned and b"twoone" not in learned


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("texts", ["", ["", ""], []])
def test_empty_training_text(kind, texts):
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(kind, texts, 300)


def test_vocabulary_too_small_names_the_minimum():
    with pytest.raises(ValueError, match=r">= 257"):
        BPETokenizer.train("hello", vocab_size=256)
    with pytest.raises(ValueError, match=r">= 3"):
        CharTokenizer.train("hello", max_vocab_size=2)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("word", "hello", 300)
    # train_tokenizer is called with max_vocab_size (the data CLI's --max-vocab-size): say so
    with pytest.raises(ValueError, match=r"^max_vocab_size must be an integer >= 257"):
        train_tokenizer("bpe", "hello", 100)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_lone_surrogates_are_rejected_in_training(kind):
    # Files are decoded from UTF-8, so real input never has them; a str built in code can.
    with pytest.raises(ValueError, match="lone surrogate"):
        train_tokenizer(kind, "ab\udc80cd", 300)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "wordpiece", "version": 1}), "unknown tokenizer type"),
        (json.dumps({"type": "bpe", "version": 99, "merges": []}), "unsupported format version"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": [EOT_TOKEN], "merges": [[300, 1]]}), "does not exist yet"),
        (json.dumps({"type": "char", "version": 1, "special_tokens": [UNK_TOKEN, EOT_TOKEN], "chars": ["ab"]}), "single character"),
        (json.dumps({"type": "char", "version": 1, "special_tokens": [UNK_TOKEN, EOT_TOKEN], "chars": ["a", "b", "a"]}),
         "contains 'a' more than once"),
        (json.dumps({"type": "char", "version": 1, "special_tokens": [UNK_TOKEN, EOT_TOKEN], "chars": ["\ud800"]}),
         "lone surrogate"),
        (json.dumps({"type": "char", "version": 1, "special_tokens": [UNK_TOKEN, EOT_TOKEN], "chars": "abc"}), "must be a list"),
        (json.dumps({"type": ["bpe"], "version": 1}), "unknown tokenizer type"),
        (json.dumps({"type": "bpe", "version": True, "special_tokens": [EOT_TOKEN], "merges": []}), "unsupported format version"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": [EOT_TOKEN], "merges": [[97, 97], [97, 97]]}),
         r"merge \[97, 97\] appears more than once"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": [EOT_TOKEN], "merges": [[97.0, 97]]}), "pair of integer ids"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": [EOT_TOKEN], "merges": [], "pattern": 5}),
         "'pattern' must be a string"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": [EOT_TOKEN], "merges": [], "pattern": r"\p{L}+"}),
         "must match every character"),
        (json.dumps({"type": "bpe", "version": 1, "special_tokens": ["<pad>"], "merges": []}), "special_tokens must be"),
    ],
)
def test_bad_json_files(tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_truncated_file(tmp_path, kind, bpe, char):
    path = tmp_path / "tok.json"
    {"char": char, "bpe": bpe}[kind].save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_ids(tmp_path, bpe):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="not a regular file"):
        load_tokenizer(tmp_path)  # a folder, not a file: named as such, with its path
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(ValueError, match="lone surrogate"):
        bpe.encode("a\ud800b")


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_train_and_show(tmp_path, capsys):
    corpus = tmp_path / "book.txt"
    corpus.write_text(GERMAN * 30, encoding="utf-8")
    out = tmp_path / "tok.json"
    result = subprocess.run(
        [sys.executable, "-m", "src.tokenizer", "train", "--input", str(corpus), "--tokenizer", "bpe",
         "--max-vocab-size", "320", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    tok = load_tokenizer(out)
    assert tok.vocab_size == 320

    assert main(["show", "--tokenizer", str(out), "Es war einmal"]) == 0
    token_line, id_line = capsys.readouterr().out.splitlines()[:2]
    ids = [int(i) for i in id_line.split("|")]
    assert ids == tok.encode("Es war einmal")
    assert [t.strip() for t in token_line.split("|")] == [tok.id_to_token(i).strip() for i in ids]


@pytest.mark.parametrize(("kind", "size", "minimum"), [("bpe", "100", "257"), ("char", "2", "3")])
def test_cli_size_too_small_names_the_flag(tmp_path, capsys, kind, size, minimum):
    corpus = tmp_path / "book.txt"
    corpus.write_text(GERMAN, encoding="utf-8")
    argv = ["train", "--input", str(corpus), "--tokenizer", kind, "--max-vocab-size", size, "--out", str(tmp_path / "t.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --max-vocab-size must be an integer >= {minimum}") and err.count("\n") == 1
    assert not (tmp_path / "t.json").exists()


def test_cli_says_when_the_text_is_too_small_for_the_size(tmp_path, capsys):
    corpus = tmp_path / "book.txt"
    corpus.write_text("aaabdaaabac", encoding="utf-8")
    for kind in ("bpe", "char"):
        out = tmp_path / f"{kind}.json"
        assert main(["train", "--input", str(corpus), "--tokenizer", kind, "--max-vocab-size", "1000", "--out", str(out)]) == 0
        expected = {"bpe": 256 + 3 + 1, "char": 2 + 4}[kind]  # 3 merges (see the hand-computed test); a b c d
        assert load_tokenizer(out).vocab_size == expected
        printed = capsys.readouterr().out
        assert f"with {expected} tokens" in printed and "fewer than --max-vocab-size 1000" in printed
    missing_dir = tmp_path / "no" / "t.json"
    assert main(["train", "--input", str(corpus), "--out", str(missing_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "src.tokenizer", "show", "--tokenizer", str(tmp_path / "missing.json"), "hi"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_fingerprints_of_existing_tokenizers_are_stable():
    """Runs and checkpoints record a tokenizer's fingerprint: the format must not drift (hashes from
    before the GPT-2-format files were added; to_dict of these tokenizers must stay byte-identical)."""
    assert BPETokenizer.train("aaabdaaabac", vocab_size=300).fingerprint() == (
        "e0f11681c17111a7237833f838574416c5728fe96eecc4635a32fd798aeaad15")
    assert CharTokenizer.train("hello", max_vocab_size=10).fingerprint() == (
        "121992670ae41103d7aca9c9a7952ad50f71a7872612eb4468a33339e8d5039e")
