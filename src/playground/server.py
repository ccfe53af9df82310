"""Start the playground: load a checkpoint, serve the page on 127.0.0.1, stop cleanly on Ctrl-C.

    python -m src.playground --checkpoint runs/NAME [--host 127.0.0.1] [--port 7860]

Local only, offline: no share link (that would open a tunnel through gradio.app), no analytics,
no server-side rendering (Node), no MCP server; the page works with no internet at all. Binding to
another host than 127.0.0.1 (e.g. 0.0.0.0) makes the page reachable from the network - there is no
password, so do that only on a network you trust.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from src.playground.app import CSS, build_app
from src.playground.core import load_model, run_dir_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


class PlaygroundError(ValueError):
    """The playground cannot start (bad checkpoint, port taken); the message says how to fix it."""


def launch_app(demo: gr.Blocks, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Start `demo` in background threads and return its URL; `demo.close()` stops it.

    These settings are the playground's offline, local-only promise; the tests launch through here too.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PlaygroundError(f"port must be an integer from 1 to 65535, got {port!r}")
    try:
        demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    quiet=True, show_error=True, allowed_paths=[], ssr_mode=False, pwa=False, mcp_server=False,
                    enable_monitoring=False, footer_links=["api"], css=CSS)
    except OSError as err:
        raise PlaygroundError(f"cannot serve on {host}:{port} ({err.strerror or 'port in use?'}); "
                              "choose another port with --port") from None
    return f"http://{host}:{demo.server_port}/"


def serve(checkpoint: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, device: str = "auto") -> int:
    """Load `checkpoint` (run directory, .pt or .safetensors), serve the playground until Ctrl-C or
    SIGTERM, then close the server and return 0. Raises ValueError (CheckpointError, PlaygroundError)
    for a checkpoint that cannot be loaded or a port that cannot be used."""
    import matplotlib

    from src.training.utils import resolve_device

    matplotlib.use("Agg")  # Gradio draws figures in worker threads: no GUI backend in this process
    model, tokenizer = load_model(checkpoint, device=resolve_device(device))
    demo = build_app(model, tokenizer, run_dir=run_dir_of(checkpoint), checkpoint_label=str(checkpoint))
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers only work there
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        url = launch_app(demo, host, port)
        print(f"Playground for {checkpoint} running at {url} (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        print("Stopping the playground ...", flush=True)
    finally:
        demo.close()
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
