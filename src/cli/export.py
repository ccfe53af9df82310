"""--export: the weights of a trained model as a .safetensors file (safe to share, no pickle)."""

from __future__ import annotations

import argparse
from pathlib import Path

from src.cli.common import EXIT_OK, UsageError, load_for_inference


def run_export(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """Weights only, as safetensors: safe to share and to load anywhere (no pickle, no optimizer)."""
    from src.training.checkpoints import export_safetensors

    out = args.out
    if out is None and args.checkpoint:
        source = Path(args.checkpoint)
        out = source / "model.safetensors" if source.is_dir() else source.with_suffix(".safetensors")
    if out is not None and out.suffix != ".safetensors":  # load_model recognises the format by it
        raise UsageError(f"--out: the export file must end in .safetensors, got {out}")
    path, _, model, tokenizer, _ = load_for_inference(args, flags)
    if out.resolve() == path.resolve():
        raise UsageError(f"--out: {path} is already the export; give another --out to copy it")
    written = export_safetensors(model, tokenizer, out)
    size = written.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
    print(f"Wrote {written} ({shown}, {model.num_parameters():,} parameters) from {path}")
    return EXIT_OK
