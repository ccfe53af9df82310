"""Project Gutenberg texts: download (with a local cache) and cleaning.

A Gutenberg plain-text file is a book wrapped in a licence header and footer, hard-wrapped at
~70 columns for 1990s terminals. A language model should learn the book, not the licence and not
the typesetting, so before tokenization each file goes through:

1. decode as UTF-8 (`utf-8-sig` drops a byte-order mark), CRLF -> LF, Unicode NFC
   (so "ü" is always one code point, never "u" + combining diaeresis);
2. keep only what lies between the `*** START OF THE PROJECT GUTENBERG EBOOK ... ***` and
   `*** END OF ... ***` markers (also the older "THIS PROJECT GUTENBERG EBOOK" wording), and
   drop the transcribers' credits ("Produced by ...") and the "End of Project Gutenberg's ..."
   line that many files keep just inside the markers - they are not part of the book;
3. optionally unwrap: join the hard line breaks inside prose paragraphs (see `unwrap_paragraphs`).

Files are fetched from `<mirror>/cache/epub/<ID>/pg<ID>.txt`, Gutenberg's own layout
(https://www.gutenberg.org/policy/robot_access.html asks robots to use such mirrors and to
identify themselves). A mirror may also be a local directory with the same layout; it is read in
place, nothing is copied. Downloads are cached in `<data_dir>/raw/pg<ID>.txt`, written atomically
(temporary file + `os.replace`) and only after the text was checked, so a broken, truncated or
interrupted download never poisons the cache. Each attempt is bounded in time (TIMEOUT_S per
network operation, DEADLINE_S for the whole file), so a server that hangs or trickles fails after
at most (RETRIES + 1) attempts with one clear message instead of blocking forever.

A text file larger than memory is cleaned the same way, block by block (`StreamedText`, used by
src/dataset.py for big --input files). Only regular files are read (`open_regular`): a FIFO, a
device or a symbolic link loop is named as such, and UTF-16 text gets the iconv command that
converts it.

Left out on purpose: HTML/EPUB formats, zip archives, Gutenberg's robot "harvest" endpoint.

Why one file of ~590 lines: downloading, checking and cleaning one book are one pipeline; the
streamed path for big files must clean exactly like the whole-file path, so both stay side by side.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import http.client
import os
import re
import stat
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from src.fileio import atomic_write

USER_AGENT = "mini_transformer/0.1 (educational GPT; python-urllib; one request per book, cached)"
TIMEOUT_S = 30.0  # seconds one network operation (connect, one read) may take
DEADLINE_S = 300.0  # seconds one attempt at one file may take in all (a 1 MB book at ~4 kB/s)
RETRIES = 3  # attempts after the first one fails with a network error or a 5xx status
BACKOFF_BASE_S = 1.0  # waits 1 s, 2 s, 4 s between attempts; tests set this to ~0
CHUNK_BYTES = 1 << 16
BLOCK_BYTES = 1 << 20  # a streamed text (`StreamedText`) is read this much at a time
TAIL_BYTES = 1 << 16  # where a streamed text's END marker is looked for

# "*** START OF THE PROJECT GUTENBERG EBOOK ALICE ***", "*** START OF THIS PROJECT GUTENBERG
# EBOOK ...", "***START OF THE PROJECT GUTENBERG E-BOOK ...": case, spacing, the "E-BOOK"
# spelling and the number of asterisks vary between releases, so the pattern is forgiving.
# A long title may continue on the next line ("... EBOOK THE ADVENTURES\nOF TOM SAWYER ***");
# the optional second line, which then ends in "***", belongs to the marker.
_MARKER = (r"^[ \t]*\*{{3,}}[ \t]*{kind}[ \t]+OF[ \t]+(?:THE|THIS)[ \t]+PROJECT[ \t]+GUTENBERG[ \t]+E-?BOOK\b"
           r"(?:.*\*{{3}}[ \t]*$|.*$(?:\n[^\n*]{{0,80}}\*{{3,}}[ \t]*$)?)")
START_RE = re.compile(_MARKER.format(kind="START"), re.IGNORECASE | re.MULTILINE)
END_RE = re.compile(_MARKER.format(kind="END"), re.IGNORECASE | re.MULTILINE)
HEADER_FIELD_RE = r"^{field}:[ \t]*(.+(?:\n[ \t]+\S.*)*)"  # a value may continue on indented lines
# Gutenberg's own lines just inside the markers: the transcribers' credits as the first paragraph,
# "End of (the) Project Gutenberg('s) EBook of ..." as the last line.
CREDITS_RE = re.compile(r"\A(?:Produced|Prepared|Transcribed)\b[^\n]*\b(?:by|from)\b.*?\n[ \t]*\n", re.DOTALL | re.IGNORECASE)
END_LINE_RE = re.compile(r"\n[ \t]*End of (?:the |this )?Project Gutenberg\b[^\n]*(?:\n[ \t]*\S[^\n]*)?\s*\Z", re.IGNORECASE)
BLANK_EDGES_RE = re.compile(r"\A(?:[ \t]*\n)+|(?:\n[ \t]*)+\Z")  # whitespace-only lines at either end

# Unwrapping: prose was wrapped at some width W (70-75 in Gutenberg files). A line break is a
# hard wrap when the next word would (nearly) not have fitted on the line; W is estimated per book
# as a high percentile of its line lengths, never below MIN_WRAP_WIDTH (verse-only books have
# short lines). Real files are wrapped by hand or by various tools, not exactly greedily, hence
# WRAP_SLACK columns of tolerance (measured on the 16 mirror books: 10 joins nearly all prose
# paragraphs and none of the verse in Faust, whose prose stage directions it does join).
MIN_WRAP_WIDTH = 60
WRAP_WIDTH_QUANTILE = 0.9
WRAP_SLACK = 10


class DataError(ValueError):
    """A problem with the user's input data (bad file, unknown book, no network, ...).

    The command-line tools print its message as one line and exit with status 2.
    """


@dataclass
class RawBook:
    """The bytes of one source file and where they came from."""

    data: bytes
    location: str  # the file it was read from (a mirror file or the download cache)
    sha256: str
    url: str | None = None  # where a downloaded book came from


# ---------------------------------------------------------------------------------------------
# Fetching


def is_url(mirror: str) -> bool:
    return mirror.startswith(("http://", "https://"))


def book_path(book_id: int) -> str:
    """The relative location of a book in Gutenberg's cache layout: `book_path(11)` ->
    'cache/epub/11/pg11.txt'."""
    return f"cache/epub/{book_id}/pg{book_id}.txt"


def book_url(mirror: str, book_id: int) -> str:
    return f"{mirror.rstrip('/')}/{book_path(book_id)}"


def cache_path(raw_dir: Path, book_id: int) -> Path:
    """Where a downloaded book is cached: `<data_dir>/raw/pg<ID>.txt`."""
    return raw_dir / f"pg{book_id}.txt"


def fetch_book(book_id: int, mirror: str, raw_dir: Path, show_progress: bool = True) -> RawBook:
    """The raw bytes of book `book_id`: from a mirror directory, the download cache, or the web."""
    if is_url(mirror):
        url = book_url(mirror, book_id)
        cached = cache_path(raw_dir, book_id)
        if not cached.is_file():
            data = download(url, book_id, show_progress)
            decode_text(data, url)  # raises before a broken download reaches the cache
            check_markers(data.decode("utf-8-sig", errors="replace"), url)
            atomic_write(cached, data)
        raw = read_raw(cached)
        raw.url = url
        return raw
    root = Path(mirror)
    if not root.is_dir():
        raise DataError(f"--mirror {mirror!r} is neither an http(s) URL nor an existing directory")
    path = root / book_path(book_id)
    if not path.is_file():
        kind = not_regular(path)
        if kind:
            raise DataError(f"book {book_id} in mirror {root}: {not_regular_message(path, kind)}")
        raise DataError(f"book {book_id} not found in mirror {root} (expected {path})")
    return read_raw(path)


def read_raw(path: Path) -> RawBook:
    with open_regular(path) as handle:
        try:
            data = handle.read()
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return RawBook(data=data, location=str(path), sha256=hashlib.sha256(data).hexdigest())


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read CHUNK_BYTES at a time (a multi-GB text never lies in memory whole)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        try:
            while chunk := handle.read(CHUNK_BYTES * 16):
                digest.update(chunk)
        except OSError as error:
            raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def not_regular(path: Path) -> str | None:
    """What `path` is when it exists but is no regular file or folder ("a FIFO (named pipe)", "a symbolic
    link loop", ...); None for a file, a folder, or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return "a symbolic link loop" if error.errno == errno.ELOOP else None
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


def not_regular_message(path: Path, kind: str) -> str:
    """'x.txt is a FIFO (named pipe), not a regular file; ...' with what to do instead."""
    if "loop" in kind:
        return f"{path} is {kind} (it leads back to itself), not a regular file; point it at a .txt file"
    return (f"{path} is {kind}, not a regular file; the text is read more than once (checksums, tokenizer, "
            "encoding), so save it to a .txt file first")


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading, or DataError: a FIFO or device is refused without blocking on it
    (O_NONBLOCK, then fstat), so one swapped in after a check cannot hang the build either."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        kind = "a symbolic link loop" if error.errno == errno.ELOOP else None
        if kind:
            raise DataError(not_regular_message(path, kind)) from None
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise DataError(f"{path} is a folder, not a text file")
        raise DataError(not_regular_message(path, not_regular(path) or "not a regular file"))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def download(url: str, book_id: int, show_progress: bool = True) -> bytes:
    """GET `url` with retries and exponential backoff; 404 and other 4xx fail at once.

    Retried: no connection, a timeout, a connection that breaks or ends before Content-Length
    bytes arrived, and 5xx answers. The worst case is bounded: (RETRIES + 1) attempts of at most
    DEADLINE_S each, plus the backoff waits.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    for attempt in range(RETRIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return _read_with_progress(response, f"pg{book_id}.txt", show_progress)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise DataError(f"book {book_id} not found at {url}") from None
            if error.code < 500 or attempt == RETRIES:
                raise DataError(f"downloading book {book_id} failed: HTTP {error.code} {error.reason} at {url}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            if attempt == RETRIES:
                reason = getattr(error, "reason", error)
                raise DataError(
                    f"cannot download {url} ({reason}; {RETRIES + 1} attempts); check the internet connection, or use "
                    f"--mirror DIR_OR_URL (a local Gutenberg mirror) or --input FILES (your own .txt files)"
                ) from None
        time.sleep(BACKOFF_BASE_S * 2**attempt)
    raise AssertionError("unreachable: the loop returns or raises")


def _read_with_progress(response, label: str, show_progress: bool) -> bytes:
    header = response.headers.get("Content-Length")
    total = int(header) if header and header.isdigit() else None
    deadline = time.monotonic() + DEADLINE_S
    chunks, received = [], 0
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {label}", disable=not show_progress, leave=False) as bar:
        while chunk := response.read(CHUNK_BYTES):
            chunks.append(chunk)
            received += len(chunk)
            bar.update(len(chunk))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete file after {DEADLINE_S:.0f} s")
    if total is not None and received < total:  # urllib returns a cut-off body without complaint
        raise ConnectionError(f"connection closed after {received} of {total} bytes")
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Cleaning


def check_not_utf16_or_binary(data: bytes, source: str, offset: int = 0) -> None:
    """DataError for UTF-16 text (only looked for at the start of the file, `offset` 0) or a NUL byte;
    `offset` is where `data` starts in the file, so the message names the byte in the file."""
    if offset == 0:
        utf16 = utf16_kind(data[:UTF16_PROBE_BYTES])
        if utf16:
            raise DataError(f"{source} is {utf16} text, not UTF-8; convert it, e.g. iconv -f {utf16} -t UTF-8 "
                            f"{source} > {utf8_name(source)}")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{source} looks like a binary file (NUL byte at offset {offset + nul}); expected UTF-8 text")


def decode_text(data: bytes, source: str) -> str:
    """Bytes -> normalised text: `decode_text(b'\\xef\\xbb\\xbfa\\r\\nb', 'x')` -> 'a\\nb'."""
    if not data.strip():
        raise DataError(f"{source} is empty")
    check_not_utf16_or_binary(data, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start + (3 if data.startswith(codecs.BOM_UTF8) else 0)  # utf-8-sig counts after the BOM
        raise DataError(
            f"{source} is not valid UTF-8 (byte offset {offset}: {data[offset:offset + 1]!r}); "
            f"convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


UTF16_PROBE_BYTES = 4096  # how much of a file tells UTF-16 (half its bytes NUL, at one parity) from binary


def utf16_kind(head: bytes) -> str | None:
    """The iconv name of the UTF-16 encoding `head` (a file's first bytes) is in, or None.

    A byte-order mark says it outright ("UTF-16"). Without one, English or German text in UTF-16 has
    a NUL in (nearly) every other byte: at the odd offsets for little-endian ("H\\0e\\0"), the even ones
    for big-endian. Binary files have NULs at both parities, UTF-8 text none at all.
    Example: utf16_kind("Hallo".encode("utf-16-le")) -> 'UTF-16LE'.
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not head.startswith(codecs.BOM_UTF32_LE):
        return "UTF-16"
    pairs = len(head) // 2
    if pairs < 2:
        return None
    odd, even = head[1 : 2 * pairs : 2].count(0), head[0 : 2 * pairs : 2].count(0)
    if odd >= 0.7 * pairs and even <= 0.05 * pairs:
        return "UTF-16LE"
    if even >= 0.7 * pairs and odd <= 0.05 * pairs:
        return "UTF-16BE"
    return None


def utf8_name(source: str) -> str:
    """Where the converted copy of a file could go: 'texts/book.txt' -> 'texts/book-utf8.txt'."""
    path = Path(source)
    return str(path.with_name(f"{path.stem}-utf8{path.suffix or '.txt'}"))


def parse_header(text: str) -> dict[str, str | None]:
    """Title, author and language from the header before the START marker (None if absent)."""
    start = START_RE.search(text)
    header = text[: start.start()] if start else text[:5000]
    fields: dict[str, str | None] = {}
    for key in ("Title", "Author", "Language"):
        match = re.search(HEADER_FIELD_RE.format(field=key), header, re.MULTILINE)
        fields[key.lower()] = " ".join(match.group(1).split()) if match else None
    return fields


def check_markers(text: str, source: str) -> tuple[re.Match, re.Match]:
    start = START_RE.search(text)
    if start is None:
        raise DataError(
            f"{source} has no '*** START OF THE PROJECT GUTENBERG EBOOK ... ***' marker; "
            f"is it a Project Gutenberg plain-text file? (use --input for other texts)"
        )
    end = END_RE.search(text, start.end())
    if end is None:
        raise DataError(f"{source} has a START but no '*** END OF THE PROJECT GUTENBERG EBOOK ... ***' marker")
    return start, end


def strip_gutenberg(text: str, source: str) -> str:
    """The book between the START and END markers, without Gutenberg's credits and closing line
    and without surrounding blank lines."""
    start, end = check_markers(text, source)
    body = BLANK_EDGES_RE.sub("", text[start.end() : end.start()])
    body = BLANK_EDGES_RE.sub("", END_LINE_RE.sub("", CREDITS_RE.sub("", body)))
    if not body.strip():
        raise DataError(f"{source} has no text between its START and END markers")
    return body + "\n"


def has_markers(text: str) -> bool:
    start = START_RE.search(text)
    return start is not None and END_RE.search(text, start.end()) is not None


def unwrap_paragraphs(text: str, width: int | None = None) -> str:
    """Join hard-wrapped prose lines; keep verse, indented blocks and paragraph breaks.

    The text is cut into blocks at blank lines. A block is joined into one line only if
      * its first line is not indented (tables of contents, block quotes, indented poems and
        addresses stay as they are), and
      * every line but the last is "full": the next line's first word would not have fitted,
        up to WRAP_SLACK columns (len(line) + 1 + len(next word) > width - WRAP_SLACK); this is
        where a word-wrapper breaks a line.
    Verse has lines of varying, mostly short length that fail the second rule, so the line breaks
    of a poem survive. Blank lines (paragraph breaks) are never touched.
    Example: unwrap_paragraphs("a bb\\ncc", width=15) -> 'a bb cc'; with width=19 nothing changes.
    """
    lines = text.split("\n")
    if width is None:
        width = estimate_wrap_width(lines)
    result: list[str] = []
    block: list[str] = []
    for line in lines:
        if line.strip():
            block.append(line)
            continue
        if block:
            result.append(_unwrap_block(block, width))
            block = []
        result.append(line)
    if block:
        result.append(_unwrap_block(block, width))
    return "\n".join(result)


def estimate_wrap_width(lines: list[str]) -> int:
    lengths = sorted(len(line.rstrip()) for line in lines if line.strip())
    if not lengths:
        return MIN_WRAP_WIDTH
    return max(MIN_WRAP_WIDTH, lengths[int(WRAP_WIDTH_QUANTILE * (len(lengths) - 1))])


def _unwrap_block(lines: list[str], width: int) -> str:
    """One block of non-blank lines -> the same lines, or one joined line if it is wrapped prose."""
    if len(lines) < 2 or lines[0][:1] in (" ", "\t"):
        return "\n".join(lines)
    for line, following in zip(lines, lines[1:]):
        if len(line.rstrip()) + 1 + len(following.split(maxsplit=1)[0]) <= width - WRAP_SLACK:
            return "\n".join(lines)
    return " ".join(line.strip() for line in lines)


def decode_block(data: bytes, offset: int, source: str) -> str:
    """One block of a streamed file (cut at a line break) -> normalised text, like `decode_text`.

    `offset` is where the block starts in the file: errors name the byte offset in the file, and only
    the block at offset 0 may start with a byte-order mark (or be UTF-16).
    """
    check_not_utf16_or_binary(data, source, offset)
    bom = 3 if offset == 0 and data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as error:
        at = offset + bom + error.start
        raise DataError(f"{source} is not valid UTF-8 (byte offset {at}: {data[bom + error.start:bom + error.start + 1]!r}); "
                        f"convert it, e.g. iconv -f latin1 -t utf-8") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def clean_book(data: bytes, source: str, unwrap: bool, require_markers: bool = True) -> str:
    """Decode, strip the Gutenberg header/footer (if present or required) and optionally unwrap."""
    text = decode_text(data, source)
    if require_markers or has_markers(text):
        text = strip_gutenberg(text, source)
    if unwrap:
        text = unwrap_paragraphs(text)
    if not text.strip():
        raise DataError(f"{source} contains only whitespace")
    return text


# ---------------------------------------------------------------------------------------------
# Streaming a text too large to hold in memory


class StreamedText:
    """A text file too large to hold in memory (several GB): read and cleaned block by block whenever
    its text is needed (`blocks`), so memory holds one block (BLOCK_BYTES) at a time.

    `open` reads the file once: the first block is checked (UTF-16, NUL bytes, UTF-8) before the rest
    is read, then every block, while its sha256 is computed. It finds the Gutenberg markers (START in
    the first block, END in the last TAIL_BYTES), estimates the wrap width from the first block and
    chooses the split: validation starts at the first blank line after (1 - val_fraction) of the
    text's bytes. Blocks are cut at blank lines, so unwrapping them one at a time joins the same lines
    as unwrapping the whole text. Later passes check that the file did not change (size, mtime).
    Differences to a file read whole: the split is placed by bytes, not characters, and an END marker
    or credits line is looked for only near the end or start.
    """

    def __init__(self, path: Path, sha256: str, size: int, mtime_ns: int, body: tuple[int, int], width: int | None):
        self.path, self.sha256, self.size, self.mtime_ns = path, sha256, size, mtime_ns
        self.body, self.width = body, width  # (first, last + 1) byte of the text between the markers

    @classmethod
    def open(cls, path: Path, unwrap: bool) -> StreamedText:
        digest = hashlib.sha256()
        with open_regular(path) as handle:
            info = os.fstat(handle.fileno())
            offset, carry, head = 0, b"", None
            while chunk := handle.read(BLOCK_BYTES):
                digest.update(chunk)
                data = carry + chunk
                cut = _line_cut(data)
                text = decode_block(data[:cut], offset - len(carry), str(path))  # the first: before the rest is read
                if head is None:
                    head, raw_head = text, data[:cut]
                offset, carry = offset + len(chunk), data[cut:]
            if head is None:
                raise DataError(f"{path} is empty")
            decode_block(carry, offset - len(carry), str(path))
            handle.seek(max(0, offset - TAIL_BYTES))
            tail = handle.read()
        width = estimate_wrap_width(head.split("\n")) if unwrap else None
        return cls(path, digest.hexdigest(), offset, info.st_mtime_ns, _gutenberg_body(raw_head, tail, offset), width)

    def line_start(self, offset: int) -> int:
        """The first byte of the line at or after `offset` (the body's ends stay; with no line break
        within BLOCK_BYTES, the next character): where a block may start."""
        if offset <= self.body[0] or offset >= self.body[1]:
            return min(max(offset, self.body[0]), self.body[1])
        with open_regular(self.path) as handle:
            handle.seek(offset - 1)
            window = handle.read(min(BLOCK_BYTES, self.body[1] - offset + 1))
        line = window.find(b"\n")
        if line < 0:  # a line longer than a block: at least not inside a character
            line = next((i for i in range(1, len(window)) if window[i] & 0xC0 != 0x80), len(window)) - 1
        return min(self.body[1], offset + line)

    @property
    def has_markers(self) -> bool:
        return self.body != (0, self.size)

    def split(self, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """The byte ranges (start, stop) of the training and the validation text: the body cut at the
        first blank line after (1 - val_fraction) of it."""
        first, end = self.body
        if val_fraction == 0:
            return (first, end), (end, end)
        target = first + round((end - first) * (1 - val_fraction))
        with open_regular(self.path) as handle:
            handle.seek(target)
            window = handle.read(min(BLOCK_BYTES, end - target))
        cut = _after_blank_line(window)
        if cut is None:  # no paragraph break near the target: the next line break, else the next character
            line = window.find(b"\n")
            cut = line + 1 if line >= 0 else next((i for i, b in enumerate(window) if b & 0xC0 != 0x80), len(window))
        cut = min(end, target + cut)
        return (first, cut), (cut, end)

    def blocks(self, start: int, stop: int) -> Iterator[str]:
        """The cleaned text of bytes [start, stop), one block (at most BLOCK_BYTES, cut at a blank line) at a time."""
        with open_regular(self.path) as handle:
            info = os.fstat(handle.fileno())
            if (info.st_size, info.st_mtime_ns) != (self.size, self.mtime_ns):
                raise DataError(f"{self.path} changed while the data set was being built from it; run the command again")
            handle.seek(start)
            position, carry = start, b""
            while position < stop or carry:
                new = handle.read(min(BLOCK_BYTES, stop - position))
                if not new and position < stop:  # the file ended early: it was cut short meanwhile
                    raise DataError(f"{self.path} changed while the data set was being built from it; run the command again")
                data, position = carry + new, position + len(new)
                cut = len(data) if position >= stop else _last_blank_line(data) or _line_cut(data)
                block, carry = data[:cut], data[cut:]
                block_start = position - len(data)
                text = decode_block(block, block_start, str(self.path))
                if self.has_markers and block_start == self.body[0]:  # like strip_gutenberg: no credits, no blank lines
                    text = _LEADING_BLANKS.sub("", CREDITS_RE.sub("", _LEADING_BLANKS.sub("", text)))
                if self.has_markers and position >= self.body[1] and not carry:  # no "End of Project Gutenberg" line
                    text = BLANK_EDGES_RE.sub("", END_LINE_RE.sub("", text)) + "\n"
                if self.width is not None:
                    text = unwrap_paragraphs(text, self.width)
                yield text


def _after_blank_line(data: bytes) -> int | None:
    """Index just after the first blank line ("\n\n" or "\n\r\n") in `data`, or None."""
    found = [i + len(sep) for sep in (b"\n\n", b"\n\r\n") if (i := data.find(sep)) >= 0]
    return min(found) if found else None


_LEADING_BLANKS = re.compile(r"\A(?:[ \t]*\n)+")


def _line_cut(data: bytes) -> int:
    """Where to cut `data` so that the first part ends with a whole line: after its last line break, or
    (a line longer than a block) before the last character that may be incomplete."""
    line = data.rfind(b"\n")
    if line >= 0:
        return line + 1
    return next((i for i in range(len(data) - 1, max(-1, len(data) - 5), -1) if data[i] & 0xC0 != 0x80), len(data))


def _last_blank_line(data: bytes) -> int | None:
    """Index just after the last blank line in `data` (a paragraph never spans the cut), or None."""
    found = [i + len(sep) for sep in (b"\n\n", b"\n\r\n") if (i := data.rfind(sep)) >= 0]
    return max(found) if found else None


_START_BYTES = re.compile(START_RE.pattern.encode(), re.IGNORECASE | re.MULTILINE)
_END_BYTES = re.compile(END_RE.pattern.encode(), re.IGNORECASE | re.MULTILINE)


def _gutenberg_body(head: bytes, tail: bytes, size: int) -> tuple[int, int]:
    """(first, last + 1) byte of the text between the START marker (in `head`, the file's first block)
    and the END marker (in `tail`, its last bytes); (0, size) for a file without both markers."""
    start = _START_BYTES.search(head)
    ends = list(_END_BYTES.finditer(tail))
    if start is None or not ends:
        return 0, size
    end = size - len(tail) + ends[0].start()
    first = start.end() + 1 if head[start.end() : start.end() + 1] == b"\n" else start.end()
    return (first, end) if end > first else (0, size)
