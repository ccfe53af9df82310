"""Start the playground: load a checkpoint, serve the page on 127.0.0.1, stop cleanly on Ctrl-C.

    python -m src.playground --checkpoint runs/NAME [--host 127.0.0.1] [--port 7860]

Local only, offline: no share link (that would open a tunnel through gradio.app), no analytics,
no server-side rendering (Node), no MCP server; the page works with no internet at all. Binding to
another host than 127.0.0.1 (e.g. 0.0.0.0) makes the page reachable from the network - there is no
password, so do that only on a network you trust.

Gradio's file route serves what lies in Gradio's temp folder, by default one shared by every
Gradio program of every user on the machine (/tmp/gradio). The playground gives its server a
private one instead (`private_temp_dir`: created for it, readable only by its user, removed on
exit), blocks the shared one and allows no other path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import gradio as gr

from src.playground.app import CSS, build_app
from src.playground.core import load_model, run_dir_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class PlaygroundError(ValueError):
    """The playground cannot start (bad checkpoint, port taken); the message says how to fix it."""


# Gradio's temp folder when GRADIO_TEMP_DIR is not set: shared by every Gradio program on the machine.
SHARED_GRADIO_TEMP = Path(tempfile.gettempdir()) / "gradio"


@contextlib.contextmanager
def private_temp_dir() -> Iterator[Path]:
    """A temp folder for one playground server: created for it (mode 0700: only this user can read
    it), set as GRADIO_TEMP_DIR (Gradio reads it when the page is built and when it is launched) and
    removed with everything in it on exit. Wrap both `build_app` and `launch_app` in it."""
    folder = Path(tempfile.mkdtemp(prefix="mini_transformer-playground-"))  # mkdtemp: 0700, a fresh name
    saved = {name: os.environ.get(name) for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")}
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "examples")  # else .gradio/ below the current folder
    try:
        yield folder
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def check_host(host: str) -> None:
    """PlaygroundError unless `host` is a name or address this machine can listen on (checked by
    binding a socket to it on a free port), so a typo is named as such, not as a port problem."""
    advice = "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"
    if not host or not host.isprintable() or any(ch.isspace() for ch in host):
        raise PlaygroundError(f"--host {host!r}: not a host name or address; {advice}")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError; idna fails with UnicodeError
        raise PlaygroundError(f"--host {host}: not a host name or address this machine can resolve "
                              f"({getattr(err, 'strerror', None) or err}); {advice}") from None
    with socket.socket(family, kind) as probe:
        try:
            probe.bind((address[0], 0))
        except OSError as err:
            raise PlaygroundError(f"--host {host}: not an address of this machine ({err.strerror or err}); "
                                  f"{advice}") from None


def launch_app(demo: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Start `demo` in background threads and return its URL; `demo.close()` stops it.

    These settings are the playground's offline, local-only promise; the tests launch through here too.
    Gradio's shared temp folder is blocked (the page itself keeps its files in `private_temp_dir`).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PlaygroundError(f"port must be an integer from 1 to 65535, got {port!r}")
    check_host(host)
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    quiet=True, show_error=True, allowed_paths=[], blocked_paths=_blocked_paths(), ssr_mode=False,
                    pwa=False, mcp_server=False, enable_monitoring=False, footer_links=["api"], css=CSS)
    except OSError as err:
        raise PlaygroundError(f"cannot serve on {host}:{port} ({err.strerror or 'port in use?'}); "
                              "choose another port with --port") from None
    return f"http://{host}:{demo.server_port}/"


def _blocked_paths() -> list[str]:
    """The shared Gradio temp folder, unless this server was (unwisely) told to use it after all."""
    own = Path(os.environ.get("GRADIO_TEMP_DIR") or SHARED_GRADIO_TEMP).resolve()
    shared = SHARED_GRADIO_TEMP.resolve()
    return [] if own == shared or shared in own.parents else [str(shared)]


def serve(checkpoint: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, device: str = "auto") -> int:
    """Load `checkpoint` (run directory, .pt or .safetensors), serve the playground until Ctrl-C or
    SIGTERM, then close the server and return 0. Raises ValueError (CheckpointError, PlaygroundError)
    for a checkpoint that cannot be loaded or a port that cannot be used."""
    import matplotlib

    from src.training.utils import resolve_device

    matplotlib.use("Agg")  # Gradio draws figures in worker threads: no GUI backend in this process
    check_host(host)  # before the model loads: a typo is reported at once
    model, tokenizer = load_model(checkpoint, device=resolve_device(device))
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers only work there
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        with private_temp_dir():
            demo = build_app(model, tokenizer, run_dir=run_dir_of(checkpoint), checkpoint_label=str(checkpoint))
            try:
                url = launch_app(demo, host, port)
                print(f"Playground for {checkpoint} running at {url} (Ctrl-C to stop)", flush=True)
                while not stop.wait(0.5):
                    pass
                print("Stopping the playground ...", flush=True)
            finally:
                demo.close()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src.playground",
        description="A local web page to play with a trained model: generate, look at attention, "
                    "look inside the forward pass, see the training run.")
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory (then checkpoints/best.pt, else last.pt), a .pt or a .safetensors file")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on; 0.0.0.0 makes the page reachable from other machines "
                             "(no password!) (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="where the model runs (default: %(default)s = cuda, then mps, then cpu)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; bad input ends with one `error: ...` line and exit code 2."""
    args = build_parser().parse_args(argv)
    if not Path(args.checkpoint).exists():
        print(f"error: --checkpoint {args.checkpoint}: no such run directory or file", file=sys.stderr)
        return 2
    try:
        return serve(args.checkpoint, args.host, args.port, device=args.device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the model was still loading
        return 130
