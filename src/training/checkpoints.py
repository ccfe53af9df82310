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
from src.errors import CheckpointError  # noqa: F401 - raised here, and imported from here by callers
from src.fileio import StructuredFileError, atomic_write, parse_json
from src.hf_bridge import hf_checkpoint_payload, hf_declared, is_hf_model_dir, read_hf_config

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = ("format_version", "model", "model_config", "tokenizer")
PROJECT_NAME = "mini_transformer"
SAFETENSORS_FORMAT_VERSION = 1
# Weight tying (Press & Wolf 2017): lm_head.weight *is* the token embedding. safetensors refuses to
# store one tensor under two names, so the export stores it once and the header names the alias.
TIED_WEIGHTS = {"lm_head.weight": "embeddings.token_embedding.weight"}




# --- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically (see `src.fileio.atomic_write`): the old file stays until the new one is whole."""
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def find_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A .pt file as given, or for a run directory its checkpoints/best.pt, else last.pt.
    A Hugging Face model folder (config.json with a model_type) is returned as it is."""

    path = Path(path_or_run_dir)
    if path.is_dir() and is_hf_model_dir(path):
        return path
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / CHECKPOINT_DIR / name
            if candidate.is_file():
                return candidate
        if (path / "config.json").is_file() and not (path / CHECKPOINT_DIR).exists():
            read_hf_config(path)  # a model folder whose config.json is damaged: this error names the file
        raise CheckpointError(f"{path}: no {CHECKPOINT_DIR}/best.pt or {CHECKPOINT_DIR}/last.pt in this run directory")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (`weights_only=True`) and check that it has our layout.

    A `.safetensors` file from `export_safetensors` is read with `load_safetensors` instead, a
    Hugging Face GPT-2 folder with `src.hf_bridge.hf_checkpoint_payload` (into the same layout).
    """

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.is_dir() and is_hf_model_dir(path):
        declared = hf_declared(path)  # config.json against the weights' header: nothing is read yet
        if declared is not None:
            check_loadable(declared[0], path, sum(_nbytes(shape, dtype) for shape, dtype in declared[1].values()))
        return hf_checkpoint_payload(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_declared_checkpoint(path)
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
    if type(payload["format_version"]) is not int or payload["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload['format_version']!r} is not supported "
            f"(this code reads version {CHECKPOINT_FORMAT_VERSION})"
        )
    check_entries(payload, path)
    return payload


def check_declared_checkpoint(path: Path) -> None:
    """Before a .pt file is read: its stored model configuration against its tensors' shapes and dtypes,
    and whether the model fits in memory (`check_declared`). The file is mapped into memory
    (`mmap=True`), which reads the tensors' shapes but not their data; a file that cannot be mapped
    (an old format, or not a checkpoint at all) is left to the full read and its messages."""
    try:
        lazy = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the full read below names what is wrong
        return
    weights = lazy.get("model") if isinstance(lazy, dict) else None
    if not isinstance(weights, dict) or not isinstance(lazy.get("model_config"), dict) or not all(
            isinstance(name, str) and torch.is_tensor(t) for name, t in weights.items()) or (
            lazy.get("format_version") != CHECKPOINT_FORMAT_VERSION):
        return  # not our layout: load_checkpoint says so
    try:
        config_from_dict(ModelConfig, lazy["model_config"])
    except (TypeError, ValueError):
        return  # no usable configuration, so nothing can be built from it: model_from_checkpoint says so
    found = {name: (tuple(t.shape), t.dtype) for name, t in weights.items()}
    check_declared(lazy["model_config"], found, path, path.stat().st_size)


def check_declared(model_config: Any, found: dict[str, tuple[tuple[int, ...], torch.dtype]], path: str | Path,
                   load_bytes: int) -> ModelConfig:
    """CheckpointError naming `path` unless the stored configuration implies exactly the tensors `found`
    (name -> (shape, dtype), floating-point weights) and the model plus `load_bytes` (what reading the
    file allocates) fit into free memory; the configuration otherwise. Nothing is built or allocated."""
    from src.model.weights import weights_mismatch

    try:
        config = config_from_dict(ModelConfig, model_config)
    except (TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: stored model config is not usable: {err}") from None
    try:
        problem = weights_mismatch(config, found)
    except ValueError as err:  # shapes beyond counting
        problem = str(err)
    if problem is not None:
        raise CheckpointError(f"{path}: its stored configuration (n_layer {config.n_layer:,}, n_embd {config.n_embd:,}, "
                              f"block_size {config.block_size:,}, vocab_size {config.vocab_size:,}) does not match its "
                              f"tensors: {problem}; the file is damaged or was edited - use another checkpoint of the "
                              "run, or train or export it again")
    check_loadable(config, path, load_bytes)
    return config


def check_loadable(config: ModelConfig, path: str | Path, load_bytes: int) -> None:
    """CheckpointError when the model of `config` (its weights and buffers, counted on the meta device)
    plus `load_bytes` exceed the free memory, before anything is allocated."""
    from src.model.weights import model_bytes
    from src.training.utils import free_memory

    try:
        need = model_bytes(config) + load_bytes
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}; nothing was loaded") from None
    free = free_memory(torch.device("cpu"))
    if free is not None and need > free:
        raise CheckpointError(f"{path}: loading its model needs about {need / 2**30:,.1f} GiB (weights and buffers of "
                              f"n_layer {config.n_layer:,}, n_embd {config.n_embd:,}, block_size {config.block_size:,}, "
                              f"vocab_size {config.vocab_size:,}, plus the file's tensors), but this machine has "
                              f"{free / 2**30:,.1f} GiB free; nothing was loaded - load it on a machine with more memory")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * dtype.itemsize


# What each entry of a checkpoint must be, checked before anything is built from it: a file that
# passes `weights_only=True` can still hold a list where weights belong, or a string as the step.
ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict, "model_config": dict, "tokenizer": dict, "tokenizer_fingerprint": (str, type(None)),
    "train_config": dict, "data_config": dict, "data_path": str, "data_fingerprint": (str, type(None)),
    "optimizer": dict, "scaler": (dict, type(None)), "schedule": (dict, type(None)), "state": dict, "rng": dict,
    "preset": (str, type(None)), "data_changes": list,
}
RESUME_KEYS = ("train_config", "data_config", "optimizer", "state", "rng")


def check_entries(payload: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming the first entry of the wrong type or a weight that is not a tensor."""
    for key, kind in ENTRY_TYPES.items():
        if key in payload and not isinstance(payload[key], kind):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(payload[key]).__name__}, not what a "
                                  "mini_transformer checkpoint holds there (damaged or crafted file?)")
    weights = payload["model"]
    wrong = next((name for name, value in weights.items() if not isinstance(name, str) or not torch.is_tensor(value)), None)
    if wrong is not None:
        raise CheckpointError(f"{path}: the weights {wrong!r} are a {type(weights[wrong]).__name__}, not a tensor "
                              "(damaged or crafted file?)")


def check_finite_weights(weights: dict[str, Any], path: str | Path) -> None:
    """CheckpointError when weights hold NaN/inf: a model with them computes only NaN (a diverged run)."""
    bad = non_finite_tensors(weights)
    if bad:
        raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({len(bad)} of {len(weights)} "
                              f"tensors, e.g. {bad[0]!r}): this model cannot compute anything; use an earlier "
                              "checkpoint (e.g. best.pt) or train again with a lower --lr")


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `state` that hold NaN or inf; [] when all are finite."""
    return [name for name, value in state.items()
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def check_resumable(payload: dict[str, Any], path: str | Path) -> None:
    """CheckpointError unless `payload` holds everything an exact resume needs, each of the right type:
    the settings, the optimizer (tensors and numbers per parameter), the run's position (numbers)
    and the random generators (restored once on trial, then put back)."""
    from dataclasses import fields

    from src.config import DataConfig, TrainConfig
    from src.training.trainer import TrainState
    from src.training.utils import capture_rng_state, restore_rng_state

    def refuse(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: cannot resume: {what} (damaged or crafted file?)")

    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: cannot resume: the checkpoint has no {', '.join(map(repr, missing))}")
    check_finite_weights(payload["model"], path)
    for cls, key in ((TrainConfig, "train_config"), (DataConfig, "data_config")):
        known = {f.name for f in fields(cls)}  # a key of an older version is dropped, as resuming does
        try:
            config_from_dict(cls, {k: v for k, v in payload[key].items() if k in known})
        except (TypeError, ValueError) as err:
            raise refuse(f"stored {key} is not usable: {err}") from None
    optimizer = payload["optimizer"]
    groups, per_param = optimizer.get("param_groups"), optimizer.get("state")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise refuse("the optimizer's param_groups are not a list of groups")
    if not isinstance(per_param, dict) or not all(
            isinstance(v, dict) and all(torch.is_tensor(x) or _is_number(x) for x in v.values())
            for v in per_param.values()):
        raise refuse("the optimizer's state is not tensors and numbers per parameter")
    kinds = {f.name: type(f.default) for f in fields(TrainState)}
    for name, value in payload["state"].items():
        if name in kinds and not (_is_number(value) and (kinds[name] is float or type(value) is int)):
            raise refuse(f"state {name!r} is {value!r}, not {'an integer' if kinds[name] is int else 'a number'}")
    if payload.get("schedule") is not None and not all(_is_number(v) for v in payload["schedule"].values()):
        raise refuse("the stored learning-rate schedule holds values that are not numbers")
    before = capture_rng_state()
    try:
        restore_rng_state(payload["rng"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as err:
        raise refuse(f"the random generator state is not usable ({type(err).__name__}: {str(err)[:80]})") from None
    finally:
        restore_rng_state(before)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    from src.model import MiniTransformer

    try:
        config = config_from_dict(ModelConfig, payload["model_config"])
    except (TypeError, ValueError, AttributeError) as err:  # AttributeError: not a dict at all
        raise CheckpointError(f"{path}: stored model config is not usable: {err}") from err
    if not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: the weights are a {type(payload.get('model')).__name__}, not a dict of tensors")
    check_finite_weights(payload["model"], path)
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
    from src.tokenizer_json import tokenizer_from_dict

    try:
        tokenizer = tokenizer_from_dict(payload["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: stored tokenizer is not usable: {err}") from err
    expected = payload.get("tokenizer_fingerprint")
    if expected is not None and tokenizer.fingerprint() != expected:
        raise CheckpointError(f"{path}: stored tokenizer does not match its recorded fingerprint (file altered?)")
    vocab = payload.get("model_config", {}).get("vocab_size") if isinstance(payload.get("model_config"), dict) else None
    if vocab is not None and tokenizer.vocab_size != vocab:  # ids the model cannot embed, or cannot decode
        raise CheckpointError(f"{path}: the stored tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"expects {vocab}")
    return tokenizer


def load_model(path_or_run_dir: str | Path, device: str | torch.device = "cpu"):
    """Load a trained model and its tokenizer: `model, tokenizer = load_model("runs/x")`.

    Accepts a `.pt` file, a run directory (then `checkpoints/best.pt`, else `last.pt`), a
    `.safetensors` file written by `export_safetensors` or a Hugging Face GPT-2 folder. The model
    is returned in evaluation mode (dropout off) on `device`. Raises `CheckpointError` naming the file and problem.
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

    from src.model.weights import safetensors_shapes

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            found = safetensors_shapes(handle)
            model_config, tokenizer, tied = _check_export_header(metadata, found, path)  # before a tensor is read
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file (corrupt or truncated?): {err}") from err
    for alias, source in tied.items():
        tensors[alias] = tensors[source]  # load_state_dict copies it into the one shared parameter
    return {"model": tensors, "model_config": model_config, "tokenizer": tokenizer,
            "tokenizer_fingerprint": metadata.get("tokenizer_fingerprint")}


def _check_export_header(metadata: dict[str, str], found: dict[str, tuple[tuple[int, ...], torch.dtype]],
                         path: Path) -> tuple[Any, Any, dict[str, str]]:
    """An export's header: ours, a supported version, valid JSON, and a model configuration that implies
    exactly its tensors (`check_declared`) - all from the header, before the tensors are read.
    Returns (model config, tokenizer, tied weights) as stored."""
    if metadata.get("project") != PROJECT_NAME:
        raise CheckpointError(f"{path}: not a {PROJECT_NAME} export (its header has no project={PROJECT_NAME} "
                              "metadata); export a run with: python -m src.main --export --checkpoint RUN_DIR")
    if metadata.get("format_version") != str(SAFETENSORS_FORMAT_VERSION):
        raise CheckpointError(f"{path}: export format version {metadata.get('format_version')!r} is not supported "
                              f"(this code reads version {SAFETENSORS_FORMAT_VERSION})")
    try:  # the project's JSON reader: nesting capped, a damaged value is one line
        model_config, tokenizer = (parse_json(metadata[key], f"its header's {key}")
                                   for key in ("model_config", "tokenizer"))
        tied = parse_json(metadata.get("tied_weights", "{}"), "its header's tied_weights")
    except (KeyError, StructuredFileError) as err:
        raise CheckpointError(f"{path}: header metadata is incomplete or not valid JSON: {err}") from None
    if not isinstance(tied, dict) or not all(isinstance(src, str) and src in found for src in tied.values()):
        raise CheckpointError(f"{path}: header metadata 'tied_weights' names tensors the file does not hold")
    load_bytes = sum(_nbytes(shape, dtype) for shape, dtype in found.values())
    check_declared(model_config, {**found, **{alias: found[source] for alias, source in tied.items()}}, path, load_bytes)
    return model_config, tokenizer, tied
