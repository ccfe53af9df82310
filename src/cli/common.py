"""What every mode of the command line shares: exit codes, the usage error, naming the flag in an
error message, and loading a trained model for inference."""

from __future__ import annotations

import argparse
import signal
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
# What --visualize/--explain look at by default, and what TensorBoard's attention images show.
INSPECT_PROMPT = "The cat sat on the mat."


class UsageError(ValueError):
    """A bad flag or flag combination (exit code 2)."""

def name_the_flag(message: str, flags: dict[str, str]) -> str:
    """'n_embd (384) must be ...' -> '--n-embd: n_embd (384) must be ...'."""
    words = message.split(maxsplit=1)
    if not words or words[0].rstrip(":,") not in flags:
        return message
    flag = flags[words[0].rstrip(":,")]
    if words[0].endswith(":"):  # "device: cuda was requested ..." -> "--device: cuda was requested ..."
        return f"{flag}: {words[1] if len(words) > 1 else ''}"
    return f"{flag}: {message}"

def check_encodable(path: Any, flag: str) -> None:
    """UsageError unless `path` can be a file name on this system: a string holding a lone surrogate
    (e.g. "\\ud800" from a JSON --config file) has no bytes on a UTF-8 file system."""
    import os
    import sys

    try:
        os.fsencode(path)
    except UnicodeEncodeError as err:
        raise UsageError(f"{flag}: {str(path)!r} cannot be a file name here (character {err.object[err.start]!r} "
                         f"has no {sys.getfilesystemencoding()} encoding); choose a name of ordinary "
                         "characters") from None


def load_for_inference(args: argparse.Namespace, flags: dict[str, str]):
    from src.training.checkpoints import (
        find_checkpoint,
        load_checkpoint,
        model_from_checkpoint,
        tokenizer_from_checkpoint,
    )
    from src.training.utils import enable_tf32, resolve_device

    if not args.checkpoint:
        raise UsageError("--checkpoint: required with --generate/--evaluate/--visualize/--export "
                         "(a run directory or a .pt file)")
    try:
        device = resolve_device(args.device or "auto")
    except ValueError as err:
        raise UsageError(name_the_flag(str(err), flags)) from None
    enable_tf32(device)
    path = find_checkpoint(args.checkpoint)
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path, device).eval()
    tokenizer = tokenizer_from_checkpoint(payload, path)
    return path, payload, model, tokenizer, device


def cpu_fallback_note(requested: str, device: Any) -> str | None:
    """One line when `--device auto` lands on the CPU, saying why, so that a job meant for the GPU
    does not silently run many times slower; None when the device was chosen explicitly or is a GPU."""
    import torch

    if requested != "auto" or device.type != "cpu":
        return None
    if torch.version.cuda is None:
        why = f"this PyTorch ({torch.__version__}) is a CPU-only build"
    else:
        why = (f"PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no CUDA GPU (driver "
               "missing or too old, or CUDA_VISIBLE_DEVICES hides it)")
    return (f"note: --device auto chose the CPU because {why}. Training runs many times slower than on a GPU; "
            "README section 'Installation' shows how to check the GPU. --device cpu hides this note.")


def check_fits(model_config: Any, device: Any, flags: dict[str, str]) -> None:
    """UsageError, before a single weight is allocated, when training this model cannot fit on `device`
    (`check_model_fits`). The parameters are counted on PyTorch's "meta" device, which records shapes
    but allocates nothing."""
    import torch

    from src.model import MiniTransformer
    from src.training.utils import check_model_fits

    with torch.device("meta"):
        n_parameters = MiniTransformer(model_config).num_parameters()
    try:
        check_model_fits(n_parameters, device)
    except ValueError as err:
        raise UsageError(name_the_flag(str(err), flags)) from None
