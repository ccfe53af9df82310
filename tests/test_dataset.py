"""The data pipeline: cleaning, splitting, the token files, TokenDataset and the dataloader,
and one clear error line (exit code 2, nothing half-written) for every kind of bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from src.cli.dataset import build_parser, main
from src.config import DataConfig
from src.dataset import (
    DataError,
    TokenDataset,
    dataset_name,
    load_tokens,
    make_dataloader,
    prepare_dataset,
    split_point,
    text_pieces,
)
from src.gutenberg import clean_book, decode_text, parse_header, strip_gutenberg, unwrap_paragraphs
from src.tokenizer import EOT_TOKEN, train_tokenizer
from src.tokenizer_json import load_tokenizer
from tests.conftest import gutenberg_file, make_story, wrap_paragraphs, write_gutenberg_mirror

STORIES = {1: make_story(30, seed=1), 2: make_story(30, seed=2), 3: make_story(30, seed=3)}


@pytest.fixture
def mirror(tmp_path) -> Path:
    books = {i: wrap_paragraphs(story) for i, story in STORIES.items()}
    return write_gutenberg_mirror(tmp_path / "mirror", books, crlf=True, bom=True)


def config(mirror: Path, tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(**{"books": (1, 2, 3), "mirror": str(mirror), "data_dir": tmp_path / "data", **kw})


def nothing_written(data_dir: Path) -> bool:
    return not data_dir.exists()  # not even an empty --data-dir or processed/ folder


# --- cleaning -------------------------------------------------------------------------------


@pytest.mark.parametrize("crlf,bom,old_style", [(False, False, False), (True, True, False), (True, False, True)])
def test_cleaning_keeps_exactly_the_book(crlf, bom, old_style):
    story = make_story(5)
    data = gutenberg_file(7, wrap_paragraphs(story), crlf=crlf, bom=bom, old_style=old_style)
    assert clean_book(data, "pg7.txt", unwrap=True) == story
    assert clean_book(data, "pg7.txt", unwrap=False) == wrap_paragraphs(story)


def test_marker_variants_are_recognised():
    text = ("Title: X\n\n***START OF THE PROJECT GUTENBERG E-BOOK X***\nBody line.\n"
            "            *** end of the project gutenberg ebook x ***\nlicence\n")
    assert strip_gutenberg(text, "x.txt") == "Body line.\n"


def test_odd_marker_variants_credits_and_closing_line_are_removed():
    body = "Chapter 1\n\nIt was a dark night.\n"
    text = ("Title: Tom\n\n**** START OF THIS PROJECT GUTENBERG EBOOK THE ADVENTURES\nOF TOM SAWYER ****\n\n"
            "   \n\nProduced by Jane Doe and the Online Distributed\nProofreading Team at http://www.pgdp.net\n\n\n"
            + body + "\n\n\nEnd of the Project Gutenberg EBook of The Adventures of\nTom Sawyer, by Mark Twain\n"
            "        \n*** END OF THIS PROJECT GUTENBERG EBOOK THE ADVENTURES OF TOM SAWYER ***\nlicence\n")
    assert strip_gutenberg(text, "pg74.txt") == body
    # a paragraph that merely mentions production, later in the book, stays
    kept = "Produced by a storm, the wave rose.\n\nMore text.\n"
    assert strip_gutenberg(f"*** START OF THE PROJECT GUTENBERG EBOOK X ***\nIntro.\n\n{kept}*** END OF THE PROJECT GUTENBERG EBOOK X ***",
                           "x") == "Intro.\n\n" + kept


def test_missing_markers_name_the_file():
    with pytest.raises(DataError, match=r"pg9\.txt has no .*START"):
        strip_gutenberg("just some text\n", "pg9.txt")


def test_header_fields_are_parsed():
    text = decode_text(gutenberg_file(4, "Hallo.\n", title="Die Verwandlung", author="Franz Kafka", language="German"), "x")
    assert parse_header(text) == {"title": "Die Verwandlung", "author": "Franz Kafka", "language": "German"}


def test_decoding_normalises_to_nfc_and_reports_bad_bytes():
    assert decode_text("Mu\u0308he\r\n".encode(), "x") == "M\u00fche\n"  # u + combining diaeresis -> ü
    with pytest.raises(DataError, match=r"bad\.txt is not valid UTF-8 \(byte offset 7"):
        decode_text(b"Gr\xc3\xbc\xc3\x9f \xfc!", "bad.txt")
    with pytest.raises(DataError, match=r"bom\.txt is not valid UTF-8 \(byte offset 4: b'\\xff'"):
        decode_text(b"\xef\xbb\xbfa\xff", "bom.txt")  # the offset counts the BOM too
    with pytest.raises(DataError, match=r"bin\.dat looks like a binary file \(NUL byte at offset 2\)"):
        decode_text(b"PK\x00\x03", "bin.dat")


def test_unwrap_joins_prose_but_keeps_verse_and_indented_blocks():
    prose = make_story(3, words_per_paragraph=80)
    verse = "Der Worte sind genug gewechselt,\nLaßt mich auch endlich Taten sehn!\nIndes ihr Komplimente drechselt,\n"
    contents = " CHAPTER I.     Down the Rabbit-Hole\n CHAPTER II.    The Pool of Tears\n"
    text = wrap_paragraphs(prose) + "\n" + verse + "\n" + contents
    unwrapped = unwrap_paragraphs(text)
    assert unwrapped == prose + "\n" + verse + "\n" + contents
    assert unwrap_paragraphs("a bb\ncc", width=15) == "a bb cc"  # the docstring example
    assert unwrap_paragraphs("a bb\ncc", width=19) == "a bb\ncc"


# --- splitting ------------------------------------------------------------------------------


def test_split_point_cuts_at_a_paragraph_break_near_the_fraction():
    text = make_story(40)
    cut = split_point(text, 0.1)
    assert text[cut - 2 : cut] == "\n\n"  # validation starts with a paragraph
    assert 0.05 < (len(text) - cut) / len(text) < 0.15
    assert split_point("aaaa\n\nbb", 0.3) == 6


def test_text_pieces_are_exact_for_both_tokenizers():
    text = wrap_paragraphs(make_story(30)) + "Zahlen 123 und Ümläute:\n«Ja!»\n   Eingerückt.\n"
    pieces = list(text_pieces(text, piece_chars=50))
    assert len(pieces) > 10 and "".join(pieces) == text
    for kind, size in (("char", 64), ("bpe", 300)):
        whole = train_tokenizer(kind, [text], size)
        split = train_tokenizer(kind, pieces, size)
        assert whole.fingerprint() == split.fingerprint()
        assert np.array_equal(np.concatenate([whole.encode_to_array(p) for p in pieces]), whole.encode_to_array(text))


# --- building -------------------------------------------------------------------------------


def test_build_writes_token_files_that_decode_to_the_cleaned_books(mirror, tmp_path):
    prepared = prepare_dataset(config(mirror, tmp_path), block_size=8, show_progress=False)
    meta = prepared.meta
    assert not prepared.reused and prepared.path.name == meta["name"]
    assert meta["dtype"] == "uint16" and load_tokens(prepared.path, "train").dtype == np.uint16
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    assert meta["tokenizer"] == {"type": "char", "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint()}
    for split in ("train", "val"):
        ids = load_tokens(prepared.path, split)
        assert len(ids) == meta["splits"][split]["tokens"]
        texts = [tokenizer.decode(ids[s[split]["offset"] : s[split]["offset"] + s[split]["tokens"]].tolist())
                 for s in meta["sources"]]
        assert tokenizer.decode(ids.tolist()) == EOT_TOKEN.join(texts)  # one separator between books
        assert [len(t) for t in texts] == [s[split]["characters"] for s in meta["sources"]]
    for source in meta["sources"]:
        story = STORIES[source["id"]]
        ratio = source["val"]["characters"] / len(story)
        assert source["train"]["characters"] + source["val"]["characters"] == len(story)
        assert 0.05 < ratio < 0.15
        assert source["title"] == f"Book {source['id']}" and source["language"] == "English"
    assert meta["oov_rate"] == 0.0


def test_bpe_build_equals_encoding_each_book_at_once(mirror, tmp_path):
    prepared = prepare_dataset(config(mirror, tmp_path, tokenizer="bpe", max_vocab_size=300), show_progress=False)
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    ids = load_tokens(prepared.path, "train")
    for source in prepared.meta["sources"]:
        text = STORIES[source["id"]][: source["train"]["characters"]]
        start = source["train"]["offset"]
        assert np.array_equal(ids[start : start + source["train"]["tokens"]], tokenizer.encode_to_array(text))
    assert ids[prepared.meta["sources"][1]["train"]["offset"] - 1] == tokenizer.eot_id


def test_holdout_book_goes_wholly_to_validation(mirror, tmp_path):
    meta = prepare_dataset(config(mirror, tmp_path, holdout_books=(2,)), show_progress=False).meta
    book2 = meta["sources"][1]
    assert book2["train"]["characters"] == 0 and book2["val"]["characters"] == len(STORIES[2])
    assert meta["sources"][0]["train"]["characters"] > 0


def test_val_fraction_zero_with_holdout_keeps_the_other_books_wholly_in_training(mirror, tmp_path):
    meta = prepare_dataset(config(mirror, tmp_path, val_fraction=0.0, holdout_books=(3,)), show_progress=False).meta
    assert [s["val"]["characters"] for s in meta["sources"]] == [0, 0, len(STORIES[3])]
    assert [s["train"]["characters"] for s in meta["sources"]] == [len(STORIES[1]), len(STORIES[2]), 0]


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.95])
def test_val_fraction_edge_values_split_every_book(mirror, tmp_path, fraction):
    meta = prepare_dataset(config(mirror, tmp_path, val_fraction=fraction), show_progress=False).meta
    for source in meta["sources"]:
        total = len(STORIES[source["id"]])
        assert source["train"]["characters"] + source["val"]["characters"] == total
        assert source["val"]["characters"] > 0 and source["train"]["characters"] > 0
        assert abs(source["val"]["characters"] / total - fraction) < 0.05


def test_reuse_compares_the_source_files_not_the_mirror_string(mirror, tmp_path, monkeypatch):
    first = prepare_dataset(config(mirror, tmp_path), show_progress=False)
    copy = tmp_path / "elsewhere"
    shutil.copytree(mirror, copy)
    assert prepare_dataset(config(copy, tmp_path), show_progress=False).reused  # same files, other mirror
    monkeypatch.chdir(tmp_path)
    assert prepare_dataset(config(Path("elsewhere"), tmp_path), show_progress=False).reused  # relative path
    book2 = copy / "cache" / "epub" / "2" / "pg2.txt"
    book2.write_bytes(gutenberg_file(2, wrap_paragraphs(make_story(30, seed=9)), title="Book 2"))  # a newer edition
    with pytest.raises(DataError, match=r"other versions of book\(s\) 2 than .*elsewhere.*--force"):
        prepare_dataset(config(copy, tmp_path), show_progress=False)
    rebuilt = prepare_dataset(config(copy, tmp_path, force=True), show_progress=False)
    assert rebuilt.path == first.path and rebuilt.meta["sources"][1]["sha256"] != first.meta["sources"][1]["sha256"]
    with pytest.raises(DataError, match="book\\(s\\) 2 than"):  # and the old mirror is now the mismatch
        prepare_dataset(config(mirror, tmp_path), show_progress=False)


def test_reuse_without_the_mirror_it_was_built_from_names_that_mirror(mirror, tmp_path):
    """Built with --mirror A, later run with a mirror that lacks the books (e.g. no --mirror and no
    internet): one line that says to pass --mirror A again, not only that a download failed."""
    prepare_dataset(config(mirror, tmp_path), show_progress=False)
    empty = tmp_path / "other"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"was built from --mirror {re.escape(str(mirror))}.*pass --mirror "
                                        rf"{re.escape(str(mirror))} again \(book 1 not found in mirror"):
        prepare_dataset(config(empty, tmp_path), show_progress=False)
    assert prepare_dataset(config(mirror, tmp_path), show_progress=False).reused


def test_rebuild_is_reused_and_force_rebuilds(mirror, tmp_path):
    first = prepare_dataset(config(mirror, tmp_path, name="set"), show_progress=False)
    again = prepare_dataset(config(mirror, tmp_path, name="set"), show_progress=False)
    assert again.reused and again.meta == first.meta
    forced = prepare_dataset(config(mirror, tmp_path, name="set", force=True), show_progress=False)
    assert not forced.reused and forced.meta["created"] >= first.meta["created"]
    with pytest.raises(DataError, match="max_vocab_size differ.*--force"):
        prepare_dataset(config(mirror, tmp_path, name="set", max_vocab_size=100), show_progress=False)


def test_dataset_names_follow_the_settings(mirror, tmp_path):
    assert dataset_name(DataConfig()) == "gutenberg12-char256"
    assert dataset_name(DataConfig(tokenizer="bpe", max_vocab_size=1024)) == "gutenberg12-bpe1024"
    custom = dataset_name(DataConfig(books=(1, 2, 3)))
    assert custom.startswith("gutenberg3-char256-") and custom == dataset_name(DataConfig(books=(1, 2, 3)))
    assert custom != dataset_name(DataConfig(books=(1, 2, 4))) != dataset_name(DataConfig(books=(1, 2, 3), unwrap=False))


def test_input_folder_uses_the_files_as_they_are(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text(make_story(20, seed=5), encoding="utf-8")
    (folder / "b.txt").write_text(make_story(20, seed=6), encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    prepared = prepare_dataset(DataConfig(books=(), input=(str(folder),), data_dir=tmp_path / "d"), show_progress=False)
    assert [s["title"] for s in prepared.meta["sources"]] == ["a", "b"]
    # src.main passes the default --books along with --input; it is the same data set
    assert prepare_dataset(DataConfig(input=(str(folder),), data_dir=tmp_path / "d"), show_progress=False).reused
    (folder / "b.txt").write_text(make_story(20, seed=7), encoding="utf-8")
    with pytest.raises(DataError, match="input file contents differ"):
        prepare_dataset(DataConfig(input=(str(folder),), data_dir=tmp_path / "d"), show_progress=False)
    assert [s["language"] for s in prepared.meta["sources"]] == [None, None]
    assert all(s["path"] == str((folder / f"{s['title']}.txt").resolve()) and "url" not in s for s in prepared.meta["sources"])
    assert prepared.meta["splits"]["train"]["characters"] + prepared.meta["splits"]["val"]["characters"] == sum(
        len(make_story(20, seed=s)) for s in (5, 6))


def test_input_mixes_files_folders_and_globs_once_each_skipping_hidden(tmp_path):
    texts = tmp_path / "texts"
    (texts / "more").mkdir(parents=True)
    (texts / ".ipynb_checkpoints").mkdir()
    for path, seed in ((texts / "a.txt", 1), (texts / "more" / "a.txt", 2), (texts / "b.txt", 3),
                       (texts / ".ipynb_checkpoints" / "a-checkpoint.txt", 1), (tmp_path / "c.txt", 4)):
        path.write_text(make_story(10, seed=seed), encoding="utf-8")
    inputs = (str(texts), str(tmp_path / "*.txt"), str(texts / "b.txt"))  # b.txt twice: once in the folder
    meta = prepare_dataset(DataConfig(books=(), input=inputs, data_dir=tmp_path / "d"), show_progress=False).meta
    assert [s["title"] for s in meta["sources"]] == ["a", "b", "a", "c"]  # folder sorted, then the glob
    ids = [s["id"] for s in meta["sources"]]
    assert ids[1] == "b.txt" and ids[3] == "c.txt" and ids[0] == str((texts / "a.txt").resolve())  # a.txt twice: paths
    assert len(set(ids)) == 4
    assert meta["splits"]["train"]["characters"] + meta["splits"]["val"]["characters"] == sum(
        len(make_story(10, seed=s)) for s in (1, 2, 3, 4))


# --- loading for training -------------------------------------------------------------------


def write_positions(tmp_path: Path, n_train: int, n_val: int = 50) -> Path:
    """A processed folder whose token at position p has the value p: y values reveal positions."""
    out = tmp_path / "positions"
    out.mkdir()
    np.arange(n_train, dtype=np.uint16).tofile(out / "train.bin")
    np.arange(n_val, dtype=np.uint16).tofile(out / "val.bin")
    meta = {"version": 1, "dtype": "uint16", "tokenizer": {"type": "char", "vocab_size": 1 << 16},
            "splits": {"train": {"tokens": n_train, "characters": n_train}, "val": {"tokens": n_val, "characters": n_val}}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_y_is_x_shifted_by_one(tmp_path):
    ds = TokenDataset(write_positions(tmp_path, 100), "train", block_size=8)
    x, y = ds[3]
    assert x.shape == y.shape == (8,) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[1:], y[:-1]) and torch.equal(y, x + 1)
    assert int(x[0]) == ds.offset + 3 * 8


@pytest.mark.parametrize("n", [17, 100, 1003])
def test_one_epoch_covers_each_target_exactly_once(tmp_path, n):
    T = 8
    ds = TokenDataset(write_positions(tmp_path, n), "train", block_size=T, seed=3)
    offsets = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        targets = torch.cat([ds[i][1] for i in range(len(ds))]).tolist()
        assert sorted(targets) == list(range(ds.offset + 1, ds.offset + len(ds) * T + 1))  # no gap, no repeat
        assert len(targets) >= n - 2 * T + 1 and 0 <= ds.offset < T
        offsets.add(ds.offset)
    assert len(offsets) > 1 if n >= 2 * T else offsets == {0}


def test_validation_windows_are_fixed(tmp_path):
    ds = TokenDataset(write_positions(tmp_path, 100, n_val=50), "val", block_size=8)
    starts = [int(ds[i][0][0]) for i in range(len(ds))]
    ds.set_epoch(5)
    assert starts == [int(ds[i][0][0]) for i in range(len(ds))] == [0, 8, 16, 24, 32, 40]


def first_x(loader) -> list[int]:
    return [int(x[0]) for xb, _ in loader for x in xb]


def test_dataloader_order_is_seeded_and_resumable(tmp_path):
    ds = TokenDataset(write_positions(tmp_path, 1000), "train", block_size=8, seed=1)
    full = first_x(make_dataloader(ds, 4, shuffle=True, seed=7, epoch=2))
    assert full == first_x(make_dataloader(ds, 4, shuffle=True, seed=7, epoch=2))
    assert full != first_x(make_dataloader(ds, 4, shuffle=True, seed=7, epoch=3))
    assert full != first_x(make_dataloader(ds, 4, shuffle=True, seed=8, epoch=2))
    assert first_x(make_dataloader(ds, 4, shuffle=True, seed=7, epoch=2, start_batch=5)) == full[5 * 4 :]
    assert first_x(make_dataloader(ds, 4, shuffle=False)) == sorted(first_x(make_dataloader(ds, 4, shuffle=False)))
    assert make_dataloader(ds, 4, shuffle=True).pin_memory == torch.cuda.is_available()


def test_dataloader_with_workers_gives_the_same_batches(tmp_path):
    ds = TokenDataset(write_positions(tmp_path, 1000), "train", block_size=8)
    with_workers = first_x(make_dataloader(ds, 4, shuffle=True, seed=2, num_workers=1))
    assert with_workers == first_x(make_dataloader(ds, 4, shuffle=True, seed=2))
    assert ds._ids is not None and ds.__getstate__()["_ids"] is None  # a memmap never travels to workers


class WhoReads(TokenDataset):
    """Also returns which process read the window and whether its memmap was open before."""

    def __getitem__(self, index):
        was_open = self._ids is not None
        x, y = super().__getitem__(index)
        return x, y, os.getpid(), was_open


def test_two_workers_each_open_their_own_memmap(tmp_path):
    ds = WhoReads(write_positions(tmp_path, 1000), "train", block_size=8, seed=4)
    batches = list(make_dataloader(ds, 4, shuffle=True, seed=5, num_workers=2))
    pids = {int(p) for _, _, pid, _ in batches for p in pid}
    assert len(pids) == 2 and os.getpid() not in pids  # both workers read, the main process did not
    assert ds._ids is None  # nothing was opened in the parent (so nothing could leak into workers)
    first_reads = [bool(w) for _, _, _, was_open in batches for w in was_open].count(False)
    assert first_reads == 2  # each worker opened the file exactly once
    x = torch.cat([xb for xb, _, _, _ in batches])
    assert sorted(x[:, 0].tolist()) == [ds.offset + i * 8 for i in range(len(ds))]  # every window once


# --- command line and bad input ---------------------------------------------------------------


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ("--books", "--mirror", "--input", "--data-dir", "--unwrap", "--no-unwrap", "--val-fraction",
                 "--holdout-book", "--tokenizer", "--max-vocab-size", "--name", "--force", "--block-size"):
        assert flag in text


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*args, "--quiet"])
    return code, capsys.readouterr().err


def expect_one_line_error(capsys, data_dir: Path, *args: str, match: str) -> None:
    code, err = run_cli(capsys, *args, "--data-dir", str(data_dir))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert match in err, err
    assert nothing_written(data_dir)


def test_bad_input_files_fail_with_one_line_and_a_fixed_rerun_succeeds(tmp_path, capsys):
    data, folder = tmp_path / "data", tmp_path / "texts"
    folder.mkdir()
    missing = tmp_path / "nope.txt"
    expect_one_line_error(capsys, data, "--input", str(missing), match=f"--input {missing} does not exist")
    expect_one_line_error(capsys, data, "--input", str(folder), match=f"--input folder {folder} contains no .txt files")
    empty = folder / "empty.txt"
    empty.write_text("")
    expect_one_line_error(capsys, data, "--input", str(empty), match=f"{empty} is empty")
    empty.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    expect_one_line_error(capsys, data, "--input", str(empty), match=f"{empty} looks like a binary file (NUL byte at offset 8)")
    empty.write_bytes("Schöne Grüße\n".encode("latin-1"))
    expect_one_line_error(capsys, data, "--input", str(empty), match=f"{empty} is not valid UTF-8 (byte offset 3")

    empty.write_text(make_story(20), encoding="utf-8")  # fixed: now the same command succeeds
    code, err = run_cli(capsys, "--input", str(empty), "--data-dir", str(data), "--block-size", "8")
    assert code == 0, err


def test_too_short_split_names_sizes_and_suggests_block_size(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("A short text. " * 20, encoding="utf-8")
    expect_one_line_error(capsys, tmp_path / "data", "--input", str(text), "--block-size", "64",
                          match="the val split has 28 tokens, fewer than block_size + 1 = 65; use a smaller --block-size")
    code, _ = run_cli(capsys, "--input", str(text), "--block-size", "16", "--data-dir", str(tmp_path / "data"))
    assert code == 0


def test_vocabulary_below_minimum_and_gutenberg_file_without_markers(mirror, tmp_path, capsys):
    data = tmp_path / "data"
    expect_one_line_error(capsys, data, "--books", "1", "--mirror", str(mirror), "--max-vocab-size", "2", match="max_vocab_size must be an integer >= 3")
    plain = mirror / "cache" / "epub" / "8" / "pg8.txt"
    plain.parent.mkdir(parents=True)
    plain.write_text(make_story(5))
    expect_one_line_error(capsys, data, "--books", "8", "--mirror", str(mirror), match=f"{plain} has no '*** START OF THE PROJECT GUTENBERG")
    expect_one_line_error(capsys, data, "--books", "99", "--mirror", str(mirror), match="book 99 not found in mirror")
    code, err = run_cli(capsys, "--books", "1", "--mirror", str(mirror), "--data-dir", str(data), "--block-size", "8")
    assert code == 0, err


def test_invalid_settings_fail_with_one_line(tmp_path, capsys):
    expect_one_line_error(capsys, tmp_path / "data", "--val-fraction", "1.5", match="val_fraction must lie in")
    expect_one_line_error(capsys, tmp_path / "data", "--books", "1", "--holdout-book", "2", match="holdout_books [2] are not among")
    text = tmp_path / "own.txt"
    text.write_text(make_story(20), encoding="utf-8")
    expect_one_line_error(capsys, tmp_path / "data", "--input", str(text), "--holdout-book", "11",
                          match="--holdout-book takes whole Gutenberg books; it cannot be combined with --input")
    for bad in ("../escape", "a/b", "", ".hidden"):
        expect_one_line_error(capsys, tmp_path / "data", "--input", str(text), "--name", bad, match=f"--name {bad!r}: use letters")
    assert not (tmp_path.parent / "escape").exists()
    short = tmp_path / "short.txt"  # fails after the build began: the data set folders it made are gone again
    short.write_text("hello world, a text far too short for one window\n\nand a second paragraph\n", encoding="utf-8")
    expect_one_line_error(capsys, tmp_path / "data", "--input", str(short), "--block-size", "64",
                          match="fewer than block_size + 1")
    code, err = run_cli(capsys, "--input", str(text), "--name", "own-1.0", "--data-dir", str(tmp_path), "--block-size", "8")
    assert code == 0 and (tmp_path / "processed" / "own-1.0" / "meta.json").is_file(), err


def test_unwritable_data_dir_fails_with_one_line(tmp_path, capsys):
    text = tmp_path / "own.txt"
    text.write_text(make_story(20), encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    expect_one_line_error(capsys, blocker / "data", "--input", str(text), match=f"cannot write {blocker / 'data' / 'processed'}")


# --- the real corpus ------------------------------------------------------------------------


@pytest.mark.corpus
def test_default_twelve_books_from_the_shared_mirror(shared_corpus, tmp_path, capsys):
    assert main(["--mirror", str(shared_corpus), "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert "12 books" in capsys.readouterr().out
    out = tmp_path / "processed" / "gutenberg12-char256"
    meta = json.loads((out / "meta.json").read_text())
    manifest = {b["id"]: b for b in json.loads((shared_corpus / "MANIFEST.json").read_text())}
    assert [s["id"] for s in meta["sources"]] == list(DataConfig().books)
    for source in meta["sources"]:
        assert source["sha256"] == manifest[source["id"]]["sha256"]
        assert source["title"] == manifest[source["id"]]["title"] and source["language"] == "English"
    tokenizer = load_tokenizer(out / "tokenizer.json")
    ids = load_tokens(out, "train")
    assert meta["splits"]["train"]["tokens"] == meta["splits"]["train"]["characters"] + 11  # + 11 separators
    for source in meta["sources"]:  # no licence text at either end of any book
        start, n = source["train"]["offset"], source["train"]["tokens"]
        edges = tokenizer.decode(ids[start : start + 300].tolist()) + tokenizer.decode(ids[start + n - 300 : start + n].tolist())
        assert "PROJECT GUTENBERG" not in edges.upper()


@pytest.mark.corpus
def test_german_books_keep_their_umlauts(shared_corpus, tmp_path):
    prepared = prepare_dataset(DataConfig(books=(2229, 22367), mirror=str(shared_corpus), data_dir=tmp_path), show_progress=False)
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    vocabulary = {tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)}
    assert set("äöüßÄÖÜ") <= vocabulary
    assert not any(unicodedata.combining(ch) for ch in vocabulary if len(ch) == 1)  # NFC: no separate combining marks
    assert [s["language"] for s in prepared.meta["sources"]] == ["German", "German"]
