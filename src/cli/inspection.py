"""--visualize and --explain: pictures of a trained model, and one forward pass stage by stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.cli.common import EXIT_OK, INSPECT_PROMPT, check_encodable, load_for_inference
from src.cli.settings import resolve_settings
from src.config import ModelConfig


def run_visualize(args: argparse.Namespace, flags: dict[str, str]) -> int:
    from src.training.run_dir import lock_enclosing_run
    from src.visualization import write_visualizations

    path, _, model, tokenizer, _ = load_for_inference(args, flags)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    out = args.out or ((run_dir or Path(".")) / "visualizations")
    prompt = INSPECT_PROMPT if args.prompt is None else args.prompt
    check_encodable(out, "--out")
    lock = lock_enclosing_run(out)  # e.g. runs/x/visualizations while runs/x is being trained
    try:
        written = write_visualizations(model, tokenizer, prompt, out, run_dir=run_dir)
    finally:
        if lock is not None:
            lock.release()
    if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        note = _metrics_note(run_dir / "metrics.jsonl")
        if note:
            print(note, file=sys.stderr)
    print(f"Wrote {len(written)} picture(s) for the prompt {prompt!r}:")
    for picture in written:
        print(f"  {picture}")
    return EXIT_OK

def _metrics_note(path: Path) -> str | None:
    """One line when metrics.jsonl has lines that are not a JSON object (skipped by the pictures too)."""
    from src.fileio import StructuredFileError, read_jsonl

    try:
        return read_jsonl(path).note(path)
    except StructuredFileError as err:
        return f"note: {err}; the training curves are drawn without a tokens axis"


def run_explain(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """One forward pass, stage by stage. Without --checkpoint: a fresh (untrained) model whose
    vocabulary is the 256 byte values, shaped by the model flags (--n-layer, --preset, ...)."""
    import torch

    from src.analysis import explain_forward, format_explanation

    if args.checkpoint:
        _, _, model, tokenizer, _ = load_for_inference(args, flags)
        origin = f"checkpoint {args.checkpoint}"
    else:
        from src.analysis import byte_tokenizer
        from src.model import MiniTransformer

        settings = resolve_settings(args, flags)
        torch.manual_seed(settings.train.seed)
        model = MiniTransformer(ModelConfig(vocab_size=byte_tokenizer().vocab_size, **settings.model)).eval()
        tokenizer = None
        origin = "a fresh, untrained model (no --checkpoint), one token per UTF-8 byte"
    prompt = INSPECT_PROMPT if args.prompt is None else args.prompt
    print(f"Explaining {origin}, prompt {prompt!r}\n")
    print(format_explanation(explain_forward(model, tokenizer, prompt, top_k=5)))
    return EXIT_OK
