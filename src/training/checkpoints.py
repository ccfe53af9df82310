"""Checkpoints: safe, exact, atomic - and an export of the weights as safetensors.

A checkpoint is everything needed to continue a run as if it had never stopped: the weights of the
*unwrapped* model (never the `torch.compile` wrapper, so keys never carry an `_orig_mod.` prefix),
the optimizer and GradScaler state, the position in the data (epoch and batch), and the state of
every random number generator (python, numpy, torch, CUDA) - the dropout masks and the data order
depend on them. nanoGPT's checkpoints lack the RNG and data position (issues #358, #380), so a
resumed run there is only "roughly" the same run.

Checkpoints hold only tensors and plain Python values (dict, list, str, int, float, bool, None), so
they load with `torch.load(..., weights_only=True)`, which cannot execute code hidden in a file
(see the PyTorch "Serialization semantics" notes). They are written atomically: to a temporary file
in the same folder, flushed to disk (fsync) and then renamed over the old file (`os.replace`), so a
crash or Ctrl-C while saving never leaves a half-written `last.pt` behind.

For sharing a trained model there is also an export to safetensors (`export_safetensors`): only the
weights, plus the model config and tokenizer as JSON in the file header. The format is a JSON header
followed by raw tensor bytes, so reading it can never run code, and other tools (e.g. Hugging Face)
can open it too (https://huggingface.co/docs/safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from src.config import ModelConfig, config_from_dict, config_to_dict
from src.fileio import atomic_write

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = ("format_version", "model", "model_config", "tokenizer")
PROJECT_NAME = "mini_transformer"
SAFETENSORS_FORMAT_VERSION = 1
# Weight tying (Press & Wolf 2017): lm_head.weight *is* the token embedding. safetensors refuses to
# store one tensor under two names, so the export stores it once and the header names the alias.
TIED_WEIGHTS = {"lm_head.weight": "embeddings.token_embedding.weight"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not fit the model/tokenizer."""


# --- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically (see `src.fileio.atomic_write`): the old file stays until the new one is whole."""
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def find_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A .pt file as given, or for a run directory its checkpoints/best.pt, else last.pt.
    A Hugging Face model folder (config.json with a model_type) is returned as it is."""
    from src.hf_bridge import is_hf_model_dir  # imported here: hf_bridge imports this module

    path = Path(path_or_run_dir)
    if path.is_dir() and is_hf_model_dir(path):
        return path
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / CHECKPOINT_DIR / name
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no {CHECKPOINT_DIR}/best.pt or {CHECKPOINT_DIR}/last.pt in this run directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`) and check that it has our layout.

    A `.safetensors` file from `export_safetensors` is read with `load_safetensors` instead, a
    Hugging Face GPT-2 folder with `src.hf_bridge.hf_checkpoint_payload` (into the same layout).
    """
    from src.hf_bridge import hf_checkpoint_payload, is_hf_model_dir

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.is_dir() and is_hf_model_dir(path):
        return hf_checkpoint_payload(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any bytes can arrive here; the unpickler then fails with
        # RuntimeError, EOFError, UnpicklingError, BadZipFile, but also KeyError or IndexError (a text file)
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt or truncated file?): {_load_failure(err)}") from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a mini_transformer checkpoint (top level is {type(payload).__name__})")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a mini_transformer checkpoint (missing {', '.join(missing)})")
    if payload["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload['format_version']!r} is not supported "
            f"(this code reads version {CHECKPOINT_FORMAT_VERSION})"
        )
    return payload


def _load_failure(err: Exception) -> str:
    """A short reason for a failed `torch.load`, without PyTorch's advice to drop weights_only."""
    text = str(err).strip()
    if "Weights only load failed" in text:
        return ("not a PyTorch file, or one holding Python objects besides tensors and plain values "
                "(refused: loading those could run code)")
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first and not isinstance(err, KeyError) else type(err).__name__


def model_from_checkpoint(payload: dict[str, Any], path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild `MiniTransformer` from the stored config and load the stored weights (strictly)."""
    from src.model import MiniTransformer  # imported here so utils stays importable on its own

    try:
        config = config_from_dict(ModelConfig, payload["model_config"])
    except (TypeError, ValueError, AttributeError) as err:  # AttributeError: not a dict at all
        raise CheckpointError(f"{path}: stored model config is not usable: {err}") from err
    model = MiniTransformer(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: weights do not fit the stored model config: {detail}") from err
    return model.to(device)


def tokenizer_from_checkpoint(payload: dict[str, Any], path: str | Path):
    """The tokenizer stored in the checkpoint; its fingerprint must match the recorded one."""
    from src.tokenizer import tokenizer_from_dict

    try:
        tokenizer = tokenizer_from_dict(payload["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: stored tokenizer is not usable: {err}") from err
    expected = payload.get("tokenizer_fingerprint")
    if expected is not None and tokenizer.fingerprint() != expected:
        raise CheckpointError(f"{path}: stored tokenizer does not match its recorded fingerprint (file altered?)")
    return tokenizer


def load_model(path_or_run_dir: str | Path, device: str | torch.device = "cpu"):
    """Load a trained model and its tokenizer: `model, tokenizer = load_model("runs/x")`.

    Accepts a `.pt` file, a run directory (then `checkpoints/best.pt`, else `last.pt`), a
    `.safetensors` file written by `export_safetensors` or a Hugging Face GPT-2 folder. The model
    is returned in `eval()` mode on `device`. Raises `CheckpointError` naming the file and problem.
    """
    path = find_checkpoint(path_or_run_dir)
    payload = load_checkpoint(path, map_location="cpu")
    model = model_from_checkpoint(payload, path, device)
    tokenizer = tokenizer_from_checkpoint(payload, path)
    vocab = model.config.vocab_size if hasattr(model, "config") else payload["model_config"]["vocab_size"]
    if tokenizer.vocab_size != vocab:
        raise CheckpointError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {vocab}"
        )
    model.eval()
    return model, tokenizer


# --- export to safetensors --------------------------------------------------------------------


def export_safetensors(model: torch.nn.Module, tokenizer: Any, path: str | Path) -> Path:
    """Write the model's weights as a safetensors file; `load_model(path)` reads it back.

    The header metadata (str -> str) holds the model config and the tokenizer as JSON, so the file
    alone is enough to generate text. A tied weight (see `TIED_WEIGHTS`) is stored once. Written
    atomically like `save_checkpoint`. Example: `export_safetensors(model, tok, "runs/x/model.safetensors")`.
    """
    from safetensors.torch import save

    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper -> the module with the weights
    state = model.state_dict()
    tied = {alias: source for alias, source in TIED_WEIGHTS.items()
            if alias in state and source in state and state[alias].data_ptr() == state[source].data_ptr()}
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.items() if name not in tied}
    metadata = {
        "format": "pt",  # the safetensors convention for PyTorch tensors
        "project": PROJECT_NAME,
        "format_version": str(SAFETENSORS_FORMAT_VERSION),
        "model_config": json.dumps(config_to_dict(model.config)),
        "tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "tied_weights": json.dumps(tied),
    }
    atomic_write(path, save(tensors, metadata=metadata))
    return path


def load_safetensors(path: str | Path) -> dict[str, Any]:
    """Read a file from `export_safetensors` into the layout of a checkpoint (`model`, `model_config`,
    `tokenizer`, `tokenizer_fingerprint`), so `model_from_checkpoint` and friends work on it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file (corrupt or truncated?): {err}") from err
    if metadata.get("project") != PROJECT_NAME:
        raise CheckpointError(f"{path}: not a {PROJECT_NAME} export (its header has no project={PROJECT_NAME} "
                              "metadata); export a run with: python -m src.main --export --checkpoint RUN_DIR")
    if metadata.get("format_version") != str(SAFETENSORS_FORMAT_VERSION):
        raise CheckpointError(f"{path}: export format version {metadata.get('format_version')!r} is not supported "
                              f"(this code reads version {SAFETENSORS_FORMAT_VERSION})")
    try:
        model_config, tokenizer = json.loads(metadata["model_config"]), json.loads(metadata["tokenizer"])
        tied = json.loads(metadata.get("tied_weights", "{}"))
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: header metadata is incomplete or not valid JSON: {err!r}") from err
    if not isinstance(tied, dict) or not all(isinstance(src, str) and src in tensors for src in tied.values()):
        raise CheckpointError(f"{path}: header metadata 'tied_weights' names tensors the file does not hold")
    for alias, source in tied.items():
        tensors[alias] = tensors[source]  # load_state_dict copies it into the one shared parameter
    return {"model": tensors, "model_config": model_config, "tokenizer": tokenizer,
            "tokenizer_fingerprint": metadata.get("tokenizer_fingerprint")}
