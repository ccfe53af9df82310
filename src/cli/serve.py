"""--serve: the playground in the browser (src/playground/), for any model --generate accepts."""

from __future__ import annotations

import argparse

from src.cli.common import UsageError


def run_serve(args: argparse.Namespace, flags: dict[str, str]) -> int:
    if not args.checkpoint:
        raise UsageError("--checkpoint: required with --serve (a run directory, a .pt or .safetensors file, or a "
                         "Hugging Face GPT-2 folder)")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: must lie in 1..65535, got {args.port}")
    from src.playground import serve  # imports Gradio (a few seconds): only in this mode

    return serve(args.checkpoint, args.host, args.port, device=args.device or "auto")
