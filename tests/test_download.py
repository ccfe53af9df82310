"""Downloading books from a real HTTP server on 127.0.0.1 (http.server in a thread).

The server serves a temporary Gutenberg-style mirror written with conftest's helpers and counts
the requests, which proves the cache: a second build must not download anything.
"""

from __future__ import annotations

import json
import shutil
import socket
import stat
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from src import gutenberg
from src.cli.dataset import main
from src.tokenizer_json import load_tokenizer
from tests.conftest import make_story, wrap_paragraphs, write_gutenberg_mirror


class MirrorServer:
    """A static file server over `root` that records each request path and User-Agent."""

    def __init__(self, root: Path):
        self.requests: list[tuple[str, str]] = []
        self.fail_next = 0  # answer this many requests with 503 first (to exercise the retries)
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.requests.append((self.path, self.headers.get("User-Agent", "")))
                if server.fail_next > 0:
                    server.fail_next -= 1
                    self.send_error(503, "try again")
                    return
                super().do_GET()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def book_requests(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(gutenberg, "BACKOFF_BASE_S", 0.001)


@pytest.fixture
def mirror(tmp_path):
    root = write_gutenberg_mirror(
        tmp_path / "mirror",
        {1: wrap_paragraphs(make_story(30, seed=1)), 2: wrap_paragraphs(make_story(30, seed=2))},
        crlf=True, bom=True,
    )
    server = MirrorServer(root)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def build(url: str, data_dir: Path, *extra: str) -> int:
    return main(["--books", "1", "2", "--mirror", url, "--data-dir", str(data_dir), "--block-size", "8", "--quiet", *extra])


def test_download_writes_the_cache_and_a_second_build_makes_no_request(mirror, tmp_path, capsys):
    data = tmp_path / "data"
    assert build(mirror.url, data) == 0
    assert sorted(mirror.book_requests()) == ["/cache/epub/1/pg1.txt", "/cache/epub/2/pg2.txt"]
    served = (tmp_path / "mirror" / "cache" / "epub" / "1" / "pg1.txt").read_bytes()
    assert (data / "raw" / "pg1.txt").read_bytes() == served  # the cache holds the file as served
    assert not list((data / "raw").glob(".*"))  # no temporary .part files left
    assert all(agent == gutenberg.USER_AGENT for _, agent in mirror.requests)
    assert stat.S_IMODE((data / "raw" / "pg1.txt").stat().st_mode) == 0o644  # not mkstemp's private 0600
    meta = json.loads(next((data / "processed").glob("*/meta.json")).read_text())
    assert [s["url"] for s in meta["sources"]] == [f"{mirror.url}/cache/epub/{i}/pg{i}.txt" for i in (1, 2)]
    assert [s["path"] for s in meta["sources"]] == [str(data / "raw" / f"pg{i}.txt") for i in (1, 2)]

    assert build(mirror.url, data, "--force") == 0  # rebuilds the data set from the cache
    assert len(mirror.requests) == 2
    capsys.readouterr()
    assert build(mirror.url, data) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "--force" in out
    assert len(mirror.requests) == 2


def test_downloaded_books_are_cleaned_and_tokenized(mirror, tmp_path):
    data = tmp_path / "data"
    assert build(mirror.url, data, "--name", "web") == 0
    out = data / "processed" / "web"
    tokenizer = load_tokenizer(out / "tokenizer.json")
    train = tokenizer.decode(np.fromfile(out / "train.bin", dtype=np.uint16).tolist())
    val = tokenizer.decode(np.fromfile(out / "val.bin", dtype=np.uint16).tolist())
    story1, story2 = make_story(30, seed=1), make_story(30, seed=2)
    # BOM, CRLF, header, footer and hard wraps are gone; books are joined with <|endoftext|>
    train1, train2 = train.split("<|endoftext|>")
    val1, val2 = val.split("<|endoftext|>")
    assert train1 + val1 == story1 and train2 + val2 == story2


def test_server_errors_are_retried(mirror, tmp_path):
    mirror.fail_next = 2  # two 503 answers, then the file
    assert build(mirror.url, tmp_path / "data") == 0
    assert mirror.book_requests().count("/cache/epub/1/pg1.txt") == 3


def test_unknown_book_gives_404_message_and_no_output(mirror, tmp_path, capsys):
    data = tmp_path / "data"
    code = main(["--books", "1", "999999", "--mirror", mirror.url, "--data-dir", str(data), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: book 999999 not found at {mirror.url}/cache/epub/999999/pg999999.txt\n"
    assert mirror.book_requests().count("/cache/epub/999999/pg999999.txt") == 1  # a 404 is not retried
    assert not (data / "processed").exists() or not list((data / "processed").iterdir())


def test_unreachable_server_suggests_mirror_or_input(tmp_path, capsys):
    with socket.socket() as sock:  # a port that nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["--books", "1", "--mirror", f"http://127.0.0.1:{port}", "--data-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"127.0.0.1:{port}" in err and "--mirror" in err and "--input" in err
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())


def test_a_download_without_markers_is_not_cached(tmp_path, capsys):
    root = tmp_path / "mirror"
    page = root / "cache" / "epub" / "5" / "pg5.txt"
    page.parent.mkdir(parents=True)
    page.write_text("<html>Sorry, this page is not available.</html>\n")
    server = MirrorServer(root)
    server.thread.start()
    try:
        code = main(["--books", "5", "--mirror", server.url, "--data-dir", str(tmp_path / "data"), "--quiet"])
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    err = capsys.readouterr().err
    assert code == 2 and "START OF THE PROJECT GUTENBERG" in err and "pg5.txt" in err
    assert not (tmp_path / "data" / "raw" / "pg5.txt").exists()


def test_directory_mirror_is_read_in_place(tmp_path, monkeypatch):
    root = write_gutenberg_mirror(tmp_path / "mirror", {3: make_story(20, seed=3)})
    monkeypatch.setenv("MINI_TRANSFORMER_MIRROR", str(root))  # the default for --mirror
    data = tmp_path / "data"
    assert main(["--books", "3", "--data-dir", str(data), "--block-size", "8", "--quiet"]) == 0
    assert not (data / "raw").exists()  # nothing copied or downloaded


class BadServer:
    """A raw TCP server that answers every request the same broken way: it never answers
    ("hang"), or promises 100000 bytes and closes after 10 ("truncated")."""

    def __init__(self, mode: str):
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open: list[socket.socket] = []
        self.mode = mode
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            if self.mode == "truncated":
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n" + b"x" * 10)
                conn.close()

    def close(self):
        self.sock.close()
        for conn in self.open:
            conn.close()


@pytest.mark.parametrize("mode", ["hang", "truncated"])
def test_a_hanging_or_truncating_server_fails_in_bounded_time(mode, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gutenberg, "TIMEOUT_S", 0.3)
    server = BadServer(mode)
    try:
        start = time.monotonic()
        code = main(["--books", "1", "--mirror", server.url, "--data-dir", str(tmp_path), "--quiet"])
        elapsed = time.monotonic() - start
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    reason = "timed out" if mode == "hang" else "connection closed after 10 of 100000 bytes"
    assert f"cannot download {server.url}/cache/epub/1/pg1.txt ({reason}; 4 attempts)" in err, err
    assert server.connections == gutenberg.RETRIES + 1
    assert elapsed < (gutenberg.RETRIES + 1) * 0.3 + 3.0  # timeouts plus some slack, no endless wait
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())  # nothing cached


def test_a_trickling_download_hits_the_deadline(mirror, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gutenberg, "DEADLINE_S", 0.0)  # every file takes longer than that
    monkeypatch.setattr(gutenberg, "CHUNK_BYTES", 1000)
    code = main(["--books", "1", "--mirror", mirror.url, "--data-dir", str(tmp_path), "--quiet"])
    assert code == 2 and "no complete file after 0 s" in capsys.readouterr().err
    assert len(mirror.requests) == gutenberg.RETRIES + 1


def test_switching_from_a_mirror_folder_to_a_url_checks_the_files(mirror, tmp_path, capsys):
    data = tmp_path / "data"
    folder = tmp_path / "mirror"
    assert build(str(folder), data) == 0
    assert not mirror.requests
    capsys.readouterr()
    assert build(mirror.url, data) == 0  # the same files on the server: downloaded once, compared, reused
    assert "reused" in capsys.readouterr().out and len(mirror.requests) == 2
    assert build(mirror.url, data) == 0 and len(mirror.requests) == 2  # now from the cache

    other = tmp_path / "newer"  # a server with a newer edition of book 2
    write_gutenberg_mirror(other, {1: wrap_paragraphs(make_story(30, seed=1)), 2: wrap_paragraphs(make_story(30, seed=5))},
                           crlf=True, bom=True)
    server = MirrorServer(other)
    server.thread.start()
    fresh = tmp_path / "fresh"  # the same data set copied to a machine without the download cache
    shutil.copytree(data / "processed", fresh / "processed")
    try:
        code = build(server.url, fresh)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "was built from other versions of book(s) 2 than" in err and "--force" in err
    assert len(server.requests) == 2
