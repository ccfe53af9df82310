"""Reliability, round two (issue 19, items 1, 3 and 5): what the project *reads* is checked, not trusted.

1. a built data set is verified before use: ids below the vocabulary size, sizes and dtype as meta.json
   says, a changed .bin noticed by its checksum (cheaply on every reuse, whole on --resume/--evaluate);
3. a checkpoint, export or Hugging Face folder whose configuration does not match its tensors, whose
   weights are not floating point, or whose model would not fit, is refused before anything is built;
5. big texts stream through the data set build in bounded memory; a FIFO, a device or a symlink loop is
   "not a regular file"; UTF-16 text is named as such, with the command that converts it.

Every case is a real file or process; each checks one readable line (exit 2, no traceback) naming the
file, and that the files we did not create are byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import src.dataset as dataset
import src.gutenberg as gutenberg
from src.dataset import DataError, TokenDataset, data_fingerprint, load_meta
from src.cli.dataset import main as dataset_main
from src.main import main
from tests.conftest import REPO_ROOT, make_story
from tests.test_cli import TINY, one_error_line
from tests.test_reliability import error_line, snapshot

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture
def story(tmp_path) -> Path:
    path = tmp_path / "story.txt"
    path.write_text(make_story(n_paragraphs=30), encoding="utf-8")
    return path


def build(tmp_path: Path, story: Path) -> tuple[list[str], Path]:
    """`python -m src.dataset` on the story (in process); (its arguments, the data set folder)."""
    args = ["--input", str(story), "--data-dir", str(tmp_path / "data"), "--quiet", "--block-size", "16"]
    assert dataset_main(args) == 0
    return args, next(p for p in (tmp_path / "data" / "processed").iterdir() if p.is_dir())


def tree(folder: Path) -> dict[str, str]:
    """Like `snapshot`, but a FIFO, link or device is recorded by its kind, never opened."""
    import hashlib
    import stat

    def state(p: Path) -> str:
        mode = p.lstat().st_mode
        if stat.S_ISREG(mode):
            return hashlib.sha256(p.read_bytes()).hexdigest()
        return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else oct(stat.S_IFMT(mode))

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))}


def poke(file: Path, position: int, value: int) -> None:
    """Overwrite the uint16 token id at `position` in place (the file keeps its size)."""
    ids = np.fromfile(file, dtype=np.uint16)
    ids[position] = value
    ids.tofile(file)


# --- 1. data sets are checked, not trusted -------------------------------------------------------------


def test_an_id_beyond_the_vocabulary_or_a_changed_bin_is_one_line_naming_the_file(tmp_path, story, capsys):
    args, folder = build(tmp_path, story)
    meta = load_meta(folder)
    assert {"sha256", "sample_sha256", "max_id"} <= meta["splits"]["train"].keys()
    vocab = meta["tokenizer"]["vocab_size"]
    train_bin = folder / "train.bin"
    original = train_bin.read_bytes()
    poke(train_bin, 100, 60000)  # same size, an id the embedding does not have
    capsys.readouterr()
    assert dataset_main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(train_bin) in line and "60,000 at position 100" in line and f"only {vocab} ids" in line
    assert f"delete the folder {folder}" in line
    train_bin.write_bytes(original)
    poke(train_bin, 100, (int(np.fromfile(train_bin, dtype=np.uint16)[100]) + 1) % vocab)  # a valid id, other text
    before = snapshot(tmp_path)
    assert dataset_main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(train_bin) in line and "changed since the data set was built" in line
    assert snapshot(tmp_path) == before  # refused, nothing rewritten
    train_bin.write_bytes(original)
    assert dataset_main(args) == 0  # the same bytes again: accepted


def test_meta_json_claims_are_checked_against_the_files_before_anything_is_sized_by_them(tmp_path, story, capsys):
    args, folder = build(tmp_path, story)
    meta_file = folder / "meta.json"
    original = meta_file.read_text()
    for edit, expected in (
        (lambda m: m["tokenizer"].update(vocab_size=10**12), "vocabulary size 1000000000000"),
        (lambda m: m["tokenizer"].update(vocab_size=m["tokenizer"]["vocab_size"] + 1), "does not fit"),
        (lambda m: m.update(dtype="uint32"), "counts"),  # the sizes disagree
        (lambda m: m["splits"]["val"].update(tokens=10**15), "2,000,000,000,000,000 bytes"),
    ):
        meta = json.loads(original)
        edit(meta)
        meta_file.write_text(json.dumps(meta))
        assert dataset_main(args) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(folder) in line and expected in line, line
    meta_file.write_text(original)
    assert dataset_main(args) == 0


@pytest.mark.slow
def test_cheap_checks_sample_a_big_file_and_resume_and_evaluate_read_it_whole(tmp_path, story, capsys, monkeypatch):
    """A .bin above FULL_CHECK_BYTES is only sampled on reuse; --resume and --evaluate hash it whole."""
    monkeypatch.setattr(dataset, "FULL_CHECK_BYTES", 0)  # every file counts as big
    monkeypatch.setattr(dataset, "SAMPLE_BLOCKS", 2)
    monkeypatch.setattr(dataset, "SAMPLE_BLOCK_BYTES", 64)  # the first and the last 64 bytes
    run = tmp_path / "run"
    train = ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "2",
             "--eval-interval", "2", "--sample-tokens", "0"]
    assert main([*train, "--logdir", str(run)]) == 0
    folder = next(p for p in (tmp_path / "data" / "processed").iterdir() if p.is_dir())
    val_bin = folder / "val.bin"
    middle = val_bin.stat().st_size // 4
    poke(val_bin, middle, (int(np.fromfile(val_bin, dtype=np.uint16)[middle]) + 1) % 10)
    before = snapshot(tmp_path / "data")
    reuse = ["--input", str(story), "--data-dir", str(tmp_path / "data"), "--quiet", "--block-size", "16"]
    assert dataset_main(reuse) == 0  # the cheap check: the change is not in the sampled blocks
    capsys.readouterr()
    assert main(["--evaluate", "--checkpoint", str(run), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(val_bin) in line and "changed since the data set was built" in line
    assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data"), "--max-steps", "4", "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(val_bin) in line and "changed since the data set was built" in line
    assert snapshot(tmp_path / "data") == before


def test_the_last_guard_before_the_embedding_is_a_data_error_not_an_index_error(tmp_path, story):
    _, folder = build(tmp_path, story)
    windows = TokenDataset(folder, "val", block_size=16)  # window i covers positions 16 i ... 16 i + 16
    poke(folder / "val.bin", 40, 65535)  # changed after it was verified
    windows[0]  # a window without it still loads
    with pytest.raises(DataError, match=r"val\.bin holds the token id 65,535 near position 32"):
        windows[2]


def test_an_older_data_set_without_checksums_is_checked_whole_and_gets_them(tmp_path, story, capsys):
    args, folder = build(tmp_path, story)
    meta = load_meta(folder)
    fingerprint = data_fingerprint(meta)
    for split in meta["splits"].values():
        for key in ("sha256", "sample_sha256", "max_id"):
            del split[key]
    (folder / "meta.json").write_text(json.dumps(meta))
    poke(folder / "val.bin", 3, 65535)
    assert dataset_main(args) == 2  # every id is checked, with or without checksums
    assert "65,535 at position 3" in one_error_line(capsys.readouterr().err)
    _, good = build(tmp_path / "again", story)
    (folder / "val.bin").write_bytes((good / "val.bin").read_bytes())
    assert dataset_main(args) == 0
    upgraded = load_meta(folder)
    assert upgraded["splits"]["val"]["sha256"] == load_meta(good)["splits"]["val"]["sha256"]
    assert data_fingerprint(upgraded) == fingerprint  # a resumed run still recognises its data


# --- 5. big inputs stream; what is not a regular UTF-8 file is named as such ---------------------------


def hostile_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a path that is no readable UTF-8 text file, what its one line must say)."""
    folder.mkdir()
    fifo = folder / "pipe.txt"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: it must never be opened so
    loop = folder / "loop.txt"
    loop.symlink_to(loop.name)
    text = make_story(n_paragraphs=5)
    cases = {"fifo": (fifo, "is a FIFO (named pipe), not a regular file"),
             "loop": (loop, "is a symbolic link loop (it leads back to itself), not a regular file"),
             "device": (Path("/dev/zero"), "is a character device, not a regular file")}
    for name, data, expected in (("bom", text.encode("utf-16"), "iconv -f UTF-16 -t UTF-8"),
                                 ("le", text.encode("utf-16-le"), "iconv -f UTF-16LE -t UTF-8"),
                                 ("be", text.encode("utf-16-be"), "iconv -f UTF-16BE -t UTF-8")):
        (folder / f"{name}.txt").write_bytes(data)
        cases[name] = (folder / f"{name}.txt", f"is {expected.split()[2]} text, not UTF-8; convert it, e.g. {expected}")
    return cases


@pytest.mark.parametrize("case", ["fifo", "loop", "device", "bom", "le", "be"])
def test_a_fifo_a_device_a_link_loop_or_utf16_is_named_for_what_it_is(tmp_path, case, capsys):
    path, expected = hostile_inputs(tmp_path / "inputs")[case]
    before = tree(tmp_path)
    assert dataset_main(["--input", str(path), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and expected in line and "does not exist" not in line, line
    assert tree(tmp_path) == before  # no data folder left behind, the input untouched


def test_a_streamed_text_gives_the_same_ids_as_one_read_whole(tmp_path, monkeypatch):
    """Block by block (here 4 kB blocks) the cleaning - markers, credits, CRLF, unwrapping - is exact."""
    from src.config import DataConfig
    from src.tokenizer_json import load_tokenizer
    from tests.conftest import END_MARKER, START_MARKER, wrap_paragraphs

    book = tmp_path / "book.txt"
    book.write_bytes((f"Title: T\r\n\r\n{START_MARKER.format(title='T')}\r\n\r\nProduced by a kind volunteer\r\n\r\n"
                      + wrap_paragraphs(make_story(n_paragraphs=150)).replace("\n", "\r\n")
                      + f"\r\nEnd of the Project Gutenberg EBook of T\r\n\r\n{END_MARKER.format(title='T')}\r\nlicence"
                      ).encode("utf-8"))

    def text_of(stream: bool) -> tuple[str, dict]:
        if stream:
            monkeypatch.setattr(dataset, "STREAM_BYTES", 0)
            monkeypatch.setattr(gutenberg, "BLOCK_BYTES", 4096)
        config = DataConfig(input=(str(book),), books=(), data_dir=tmp_path / ("streamed" if stream else "whole"))
        prepared = dataset.prepare_dataset(config, show_progress=False)
        tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
        return "".join(tokenizer.decode(np.fromfile(prepared.path / f"{split}.bin", dtype=np.uint16).tolist())
                       for split in ("train", "val")), prepared.meta

    whole, whole_meta = text_of(stream=False)
    streamed, streamed_meta = text_of(stream=True)
    assert streamed == whole and whole.startswith("The") and "Produced" not in whole and "licence" not in whole
    assert streamed_meta["sources"][0]["sha256"] == whole_meta["sources"][0]["sha256"]
    assert 0.85 < streamed_meta["splits"]["train"]["tokens"] / len(streamed) < 0.95  # about 90 % train


MEMORY_PROBE = """
import json, resource, sys
from src.cli.dataset import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; torch and numpy are imported by now
code = main(["--input", sys.argv[1], "--data-dir", sys.argv[2], "--quiet"])
print(json.dumps({"code": code, "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


@pytest.mark.slow
def test_a_text_of_tens_of_megabytes_is_built_in_bounded_memory(tmp_path):
    """A 40 MB text: read whole it would need ~170 MB beyond the imports; streamed its peak grows by far
    less than the file's own size (measured ~14 MB)."""
    paragraphs = make_story(n_paragraphs=2000)
    big = tmp_path / "big.txt"
    big.write_text(paragraphs * (40_000_000 // len(paragraphs) + 1), encoding="utf-8")
    size = big.stat().st_size
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(big), str(tmp_path / "data")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    assert result["grew_kib"] * 1024 < size / 2, (result, size)
    folder = next((tmp_path / "data" / "processed").iterdir())
    meta = load_meta(folder)
    assert meta["splits"]["train"]["characters"] + meta["splits"]["val"]["characters"] == size  # nothing lost
    from src.tokenizer_json import load_tokenizer

    head = np.fromfile(folder / "train.bin", dtype=np.uint16, count=2000).tolist()
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    assert tokenizer.decode(head) == paragraphs[:2000]
    assert tokenizer.vocab_size == len(set(paragraphs)) + 2  # the sampled stretches saw every character
    assert meta["oov_rate"] == 0


@pytest.mark.parametrize("head, expected", [
    ("Hallo Welt.\n".encode("utf-16-le") * 100, "is UTF-16LE text"),
    (b"Hello world.\n" * 100 + b"\x00", "NUL byte at offset 1300"),
])
def test_a_huge_sparse_file_is_refused_by_its_first_block_in_a_moment(tmp_path, head, expected, capsys):
    """A 1 TB file (sparse: it takes no disk space) whose first block is not UTF-8 text: the checks on
    the first block answer before the rest is read (reading it would take hours)."""
    huge = tmp_path / "huge.txt"
    huge.write_bytes(head)
    os.truncate(huge, 10**12)
    started = time.monotonic()
    assert dataset_main(["--input", str(huge), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    assert time.monotonic() - started < 10  # reading 1 TB of zeros would take hours
    line = one_error_line(capsys.readouterr().err)
    assert str(huge) in line and expected in line
    assert not (tmp_path / "data").exists()


# --- 3. declared sizes are checked before anything is allocated ----------------------------------------

DECLARED_PROBE = """
import contextlib, io, json, resource, sys, time
import torch  # before measuring: the CUDA build of torch alone maps ~3 GB of address space (CPU build ~1 GB)
import src.cli.generate, src.hf_bridge, src.training.checkpoints  # what --generate imports lazily
from src.main import main
status = open("/proc/self/status").read()
mapped = int(status.split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), resource.RLIM_INFINITY))  # 2 GiB beyond the imports
results = {}
for path in sys.argv[1:]:
    err, started = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err):
        code = main(["--generate", "--checkpoint", path, "--max-new-tokens", "2", "--device", "cpu", "--quiet"])
    results[path] = {"code": code, "err": err.getvalue(), "s": time.monotonic() - started}
print(json.dumps(results))
"""


def declared_cases(tiny_run: Path, folder: Path) -> dict[Path, str]:
    """Files whose declared configuration lies about their tensors -> what their one line must say."""
    from dataclasses import fields

    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from src.config import ModelConfig
    from src.hf_bridge import export_hf
    from src.training.checkpoints import export_safetensors, load_model

    folder.mkdir()
    good = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    position_field = next(f.name for f in fields(ModelConfig) if f.name.startswith("pos"))
    cases = {}

    def checkpoint(name: str, expected: str, config: dict | None = None, weights=None) -> None:
        payload = {**good, "model_config": {**good["model_config"], **(config or {})}}
        if weights is not None:
            payload["model"] = weights(good["model"])
        torch.save(payload, folder / name)
        cases[folder / name] = expected

    checkpoint("wider.pt", "tensor embeddings.token_embedding.weight has shape", {"n_embd": 32})
    checkpoint("deeper.pt", "n_layer 1,000,000,000 cannot fit a file of", {"n_layer": 10**9})
    checkpoint("integers.pt", "is int64, not a floating-point dtype",
               weights=lambda w: {name: t.to(torch.int64) for name, t in w.items()})
    checkpoint("sinusoidal.pt", "needs about", {position_field: "sinusoidal", "block_size": 10**9},
               weights=lambda w: {name: t for name, t in w.items() if "position_embedding" not in name})
    model, tokenizer = load_model(tiny_run)
    export = export_safetensors(model, tokenizer, folder / "export.safetensors")
    with safe_open(str(export), framework="pt") as handle:
        tensors, metadata = {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata()
    for name, change, expected in (
            ("vocab.safetensors", {"vocab_size": 500}, "but the configuration implies (500, 16)"),
            ("deep.safetensors", {"n_layer": 10**9}, "n_layer 1,000,000,000 cannot fit")):
        config = {**json.loads(metadata["model_config"]), **change}
        (folder / name).write_bytes(save(tensors, metadata={**metadata, "model_config": json.dumps(config)}))
        cases[folder / name] = expected
    (folder / "half.safetensors").write_bytes(save({n: t.to(torch.int16) for n, t in tensors.items()}, metadata=metadata))
    cases[folder / "half.safetensors"] = "is int16, not a floating-point dtype"
    for name, change, expected in (("hf-deep", {"n_layer": 10**9}, "n_layer 1,000,000,000 in config.json cannot fit"),
                                   ("hf-long", {"n_positions": 10**10, "n_ctx": 10**10},
                                    "but config.json implies (10000000000, 16)")):
        hf = export_hf(model, tokenizer, folder / name, card={})
        hf_config = json.loads((hf / "config.json").read_text())
        (hf / "config.json").write_text(json.dumps({**hf_config, **change}))
        cases[hf] = expected
    return cases


@pytest.mark.slow
def test_declared_sizes_that_lie_are_refused_before_the_model_is_built(tmp_path, tiny_run):
    """Each crafted file in a process that may allocate only 2 GiB more than its imports: a model built
    from the declaration (10**9 layers, a sinusoidal table of 10**10 positions) would fail or hang."""
    cases = declared_cases(tiny_run, tmp_path / "files")
    before = tree(tmp_path / "files")
    done = subprocess.run([sys.executable, "-c", DECLARED_PROBE, *map(str, cases)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for path, expected in cases.items():
        result = results[str(path)]
        line = error_line(result["err"])
        assert result["code"] == 2 and str(path) in line and expected in line, (path, result)
        assert "--n-layer" not in line and "--block-size" not in line  # the file is named, not training flags
        assert result["s"] < 60, (path, result)  # building 10**9 layers would take hours
    assert tree(tmp_path / "files") == before


def test_the_memorization_note_never_decodes_a_big_corpus_into_memory(tmp_path, story, monkeypatch):
    import src.memorization as memorization

    _, folder = build(tmp_path, story)
    assert memorization.memorization_note(folder)("The cat sees").startswith("longest verbatim match: 12 characters")
    monkeypatch.setattr(memorization, "MAX_INDEX_TOKENS", 1000)  # as if the corpus were several GB
    monkeypatch.setattr(memorization, "training_texts", lambda *a: pytest.fail("the corpus was decoded"))
    assert "not searched (the training text has 8,480 tokens" in memorization.memorization_note(folder)("The cat")
