"""Shared fixtures: a tiny model configuration, seeding, and Gutenberg-style test texts.

Everything here is small and CPU-only so that the whole suite runs in a few minutes on 2 cores.
Tests write only below pytest's `tmp_path`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from src.config import ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "gutenberg"

START_MARKER = "*** START OF THE PROJECT GUTENBERG EBOOK {title} ***"
END_MARKER = "*** END OF THE PROJECT GUTENBERG EBOOK {title} ***"


# `python -m pytest -n auto` (pytest-xdist) runs the tests in this many processes: one per CPU core,
# at most MAX_TEST_PROCESSES (each imports torch, transformers and gradio: up to 0.7 GB apiece, measured).
MAX_TEST_PROCESSES = 4


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist; without it installed, nothing calls it
def pytest_xdist_auto_num_workers(config) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_TEST_PROCESSES))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest single-threaded; on a busy 2-core CI machine extra threads only contend.

    The same for the processes the tests start (the CLI, torchrun, notebook kernels): two OpenMP threads
    in a child, while the other core runs a second test, make a 10 s test take 40 to 100 s (measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed every generator and restore torch's global state after each test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(default_dtype)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """The smallest model that still has every part: 2 layers, 2 heads, C=16, T=8, V=11."""
    return ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture
def shared_corpus() -> Path:
    """The local Gutenberg mirror; the test is skipped where it does not exist."""
    if not (SHARED_CORPUS / "MANIFEST.json").is_file():
        pytest.skip(f"{SHARED_CORPUS} is not present")
    return SHARED_CORPUS


def make_story(n_paragraphs: int = 40, seed: int = 0, words_per_paragraph: int = 60) -> str:
    """A deterministic, learnable English-like text: paragraphs of short sentences."""
    rng = random.Random(seed)
    subjects = ["The cat", "A dog", "The old man", "Alice", "The queen", "A bird", "The boy", "Mary"]
    verbs = ["sees", "likes", "finds", "follows", "calls", "watches", "meets", "helps"]
    objects = ["the garden", "a small house", "the river", "her friend", "the moon", "a red apple"]
    paragraphs = []
    for _ in range(n_paragraphs):
        words: list[str] = []
        while len(words) < words_per_paragraph:
            sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
            words.extend(sentence.split())
        paragraphs.append(" ".join(words))
    return "\n\n".join(paragraphs) + "\n"


def wrap_paragraphs(text: str, width: int = 70) -> str:
    """Hard-wrap each paragraph at `width` columns, as Gutenberg's plain-text files are."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, width=width) for p in text.split("\n\n")) + "\n"


def gutenberg_file(
    book_id: int,
    body: str,
    title: str = "A Test Book",
    author: str = "Test Author",
    language: str = "English",
    crlf: bool = False,
    bom: bool = False,
    old_style: bool = False,
) -> bytes:
    """The bytes of a Project-Gutenberg-style plain-text file around `body`.

    Header with title/author/language, the START and END markers ("THE" wording, or the older
    "THIS" wording with `old_style=True`) and a licence footer that must not reach the data set.
    """
    marker_word = "THIS" if old_style else "THE"
    header = (
        f"The Project Gutenberg eBook of {title}\n\n"
        "This ebook is for the use of anyone anywhere in the United States.\n\n"
        f"Title: {title}\n\nAuthor: {author}\n\nLanguage: {language}\n\n"
        f"Release date: January 1, 2000 [eBook #{book_id}]\n\n"
        f"*** START OF {marker_word} PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n"
    )
    footer = (
        f"\n*** END OF {marker_word} PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n"
        "Updated editions will replace the previous one. PROJECT GUTENBERG LICENSE FOOTER.\n"
    )
    text = header + body + footer
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def write_gutenberg_mirror(root: Path, books: dict[int, str], **kwargs) -> Path:
    """Lay out `books` ({id: body}) as Gutenberg's cache: root/cache/epub/<ID>/pg<ID>.txt."""
    for book_id, body in books.items():
        path = root / "cache" / "epub" / str(book_id) / f"pg{book_id}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gutenberg_file(book_id, body, title=f"Book {book_id}", **kwargs))
    return root


# The shape of the tiny run below; tests that check shapes read them from here.
TINY_RUN_SHAPE = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 32}
TINY_RUN_STEPS, TINY_RUN_EVAL_INTERVAL = 30, 15


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One real training run through the CLI (a tiny model on a synthetic story), shared by the tests
    that only read a run: --visualize, --explain, --generate, --export. Do not modify it in a test."""
    from src.main import main

    root = tmp_path_factory.mktemp("tiny_run")
    story = root / "story.txt"
    story.write_text(make_story(n_paragraphs=30), encoding="utf-8")
    run = root / "runs" / "tiny"
    shape = [arg for name, value in TINY_RUN_SHAPE.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    code = main(["--train", "--input", str(story), *shape, "--max-steps", str(TINY_RUN_STEPS),
                 "--eval-interval", str(TINY_RUN_EVAL_INTERVAL), "--batch-size", "8",
                 "--data-dir", str(root / "data"), "--logdir", str(run), "--quiet", "--sample-tokens", "40"])
    assert code == 0
    return run


def wait_until_serving(url: str, seconds: float = 60) -> None:
    """Poll `url` until it answers 200 (a server started in this process), at most `seconds`."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
