"""--export: a trained model as a single .safetensors file, or as a Hugging Face GPT-2 folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from src.cli.common import EXIT_OK, UsageError, check_encodable, load_for_inference


def run_export(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """Weights only (no optimiser, no pickle): safe to share and to load anywhere."""
    from src.hf_bridge import is_hf_model_dir

    if not args.checkpoint:
        raise UsageError("--checkpoint: required with --export (a run directory, a .pt or .safetensors file, or a "
                         "Hugging Face GPT-2 folder)")
    source = Path(args.checkpoint)
    if args.format == "hf":
        if args.out is None:
            raise UsageError("--out: --format hf writes a folder; name it, e.g. --out exports/my-gpt")
        check_encodable(args.out, "--out")
        return _export_hf(args, flags)
    out = args.out
    if out is None:
        if is_hf_model_dir(source):  # its model.safetensors is Hugging Face's: never overwrite it
            raise UsageError(f"--out: {source} is a Hugging Face folder; name the export file with --out")
        out = source / "model.safetensors" if source.is_dir() else source.with_suffix(".safetensors")
    check_encodable(out, "--out")
    if out.suffix != ".safetensors":  # load_model recognises the format by it
        raise UsageError(f"--out: the export file must end in .safetensors, got {out}")
    _check_replaceable(out)
    from src.training.checkpoints import export_safetensors
    from src.training.run_dir import lock_enclosing_run

    lock = lock_enclosing_run(out.parent)  # e.g. runs/x/model.safetensors while runs/x is being trained
    try:
        path, _, model, tokenizer, _ = load_for_inference(args, flags)
        if out.resolve() == path.resolve():
            raise UsageError(f"--out: {path} is already the export; give another --out to copy it")
        _check_replaceable(out)  # again: a file may have appeared while the model loaded
        written = export_safetensors(model, tokenizer, out)
    finally:
        if lock is not None:
            lock.release()
    print(f"Wrote {written} ({_size(written.stat().st_size)}, {model.num_parameters():,} parameters) from {path}")
    return EXIT_OK


def _check_replaceable(out: Path) -> None:
    """UsageError unless `out` is free or an earlier export of ours: a file of the user's is never replaced."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UsageError(f"--out: {out} exists and is not a plain file (left untouched); name a new export file")
    if out.is_file() and not _is_our_export(out):
        raise UsageError(f"--out: {out} exists and is not an export of this project (left untouched); "
                         "name a new export file with --out")


def _export_hf(args: argparse.Namespace, flags: dict[str, str]) -> int:
    from src.hf_bridge import export_hf
    from src.training.run_dir import lock_enclosing_run

    lock = lock_enclosing_run(args.out)  # an --out folder inside a run that is being trained
    try:
        path, payload, model, tokenizer, _ = load_for_inference(args, flags)
        written = export_hf(model, tokenizer, args.out, card=model_card_facts(payload))
    finally:
        if lock is not None:
            lock.release()
    files = sorted(p for p in written.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"Wrote {written}/ ({len(files)} files, {_size(total)}, {model.num_parameters():,} parameters) from {path}")
    print(f"Load it with: transformers.GPT2LMHeadModel.from_pretrained({str(written)!r})")
    return EXIT_OK


def model_card_facts(payload: dict[str, Any]) -> dict[str, Any]:
    """What the model card says about training: data, steps, validation loss (when the checkpoint knows)."""
    data = payload.get("data_config") or {}
    state = payload.get("state") or {}
    facts: dict[str, Any] = {}
    if data.get("input") or data.get("books"):
        facts["data"] = (f"your own text files ({len(data['input'])})" if data.get("input")
                         else f"Project Gutenberg books {', '.join(map(str, data['books']))}")
    if isinstance(state.get("step"), int):
        facts["steps"] = state["step"]
    best = state.get("best_val_loss")
    if isinstance(best, float) and best == best and best != float("inf"):
        facts["val_loss"] = round(best, 4)
    if payload.get("init_from"):
        facts["fine-tuned from"] = str(payload["init_from"])
    return facts


def _is_our_export(path: Path) -> bool:
    """True for a .safetensors file whose header names this project (an earlier --export)."""
    from safetensors import safe_open

    from src.training.checkpoints import PROJECT_NAME

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return (handle.metadata() or {}).get("project") == PROJECT_NAME
    except Exception:  # noqa: BLE001 - any file may lie there; all that matters is "not ours"
        return False


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.1f} kB"
