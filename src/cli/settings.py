"""Settings, layered: dataclass defaults < `--preset` < `--config FILE` < flags typed on the command
line. With `--resume` the run's stored settings replace the first three, and settings that would
change the weights' shape, the data or the batch order are locked."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from src.cli.common import UsageError, name_the_flag
from src.config import DataConfig, ModelConfig, TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04): the same parser, published as tomli
    import tomli as tomllib

MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
DATA_FIELDS = tuple(f.name for f in fields(DataConfig))
LIST_FIELDS = tuple(f.name for f in fields(DataConfig) if "tuple" in str(f.type))  # books, input, holdout_books

PRESETS: dict[str, dict[str, Any]] = {
    # A first run on a 2-core CPU: 0.42 M parameters; `--preset tiny --epochs 1` on the 12 books is
    # 3,398 steps, about 5 minutes. A model this small tolerates (and needs) a higher learning rate:
    # after 1,000 steps, 3e-3 had reached val loss 1.72 where 1e-3 gave 2.1.
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.1,
             "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50,
             "eval_interval": 200, "eval_batches": 10},
    # A small GPU or a patient CPU: 3.2 M parameters.
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "dropout": 0.1},
    # The RTX 4080 run: 6 layers, 6 heads, C = 384, T = 256 (10.8 M parameters), the dataclass defaults.
    "default": {},
}

# Settings that cannot change when resuming: they change the weights' shape, the data or the order
# of the batches, so "continue exactly" would become meaningless.

LOCKED_ON_RESUME = (
    "block_size", "n_layer", "n_head", "n_embd", "bias", "pos_encoding",
    "causal", "residual", "norm", "norm_position", "mlp", "tie_weights",
    "batch_size", "grad_accum", "seed",
    "books", "input", "unwrap", "val_fraction", "holdout_books", "tokenizer", "max_vocab_size",
)

def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file; keys are field names (n_layer) or flag names (n-layer)."""
    if not path.is_file():
        raise UsageError(f"--config: {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"--config: {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {err}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config: {path} must hold one object/table of settings")
    known = set(MODEL_FIELDS) | set(TRAIN_FIELDS) | set(DATA_FIELDS) | {"preset"}
    settings = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--config: {path}: unknown setting {key!r}{hint}")
        if name in LIST_FIELDS and not isinstance(value, list):
            value = [value]  # `input = "book.txt"` means one file, not a list of its characters
        settings[name] = value
    return settings

@dataclass
class Settings:
    model: dict[str, Any]  # ModelConfig fields without vocab_size (it comes from the tokenizer)
    train: TrainConfig
    data: DataConfig
    preset: str | None

def resolve_settings(args: argparse.Namespace, flags: dict[str, str], stored: dict[str, Any] | None = None) -> Settings:
    """Layer defaults < preset < config file < typed flags (or stored run settings < typed flags)."""
    explicit = {
        name: getattr(args, name)
        for name in (*MODEL_FIELDS, *TRAIN_FIELDS, *DATA_FIELDS)
        if getattr(args, name, None) is not None
    }
    values: dict[str, Any] = {}
    given = dict(explicit)  # what this command line (and config file) says about the data sources
    preset = args.preset
    if stored is not None:
        if args.preset or args.config:
            raise UsageError("--resume uses the run's stored settings; drop --preset/--config and pass single flags")
        values.update({k: v for k, v in stored["model_config"].items() if k != "vocab_size"})
        values.update(stored["train_config"])
        values.update(data_sources(stored["data_config"], explicit, flags))
        values["force"] = False
        preset = stored.get("preset")
        for name in LOCKED_ON_RESUME:
            if name in explicit and _plain(explicit[name]) != _plain(values.get(name)):
                raise UsageError(
                    f"{flags.get(name, name)}: cannot change {name} from {_plain(values.get(name))!r} to "
                    f"{_plain(explicit[name])!r} when resuming (weights, data or batch order would no longer "
                    "fit); start a new run instead"
                )
    else:
        file_values = read_config_file(args.config) if args.config else {}
        preset = preset or file_values.pop("preset", None)
        file_values.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise UsageError(f"--preset: unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
        values.update(PRESETS.get(preset, {}) if preset else {})
        values.update(file_values)
        given = {**file_values, **explicit}
    values.update(explicit)
    if given.get("input") and "books" not in given:
        values["books"] = ()  # --input replaces the default book list

    def build(cls: type, names: Sequence[str], extra: dict[str, Any] | None = None) -> Any:
        chosen = {k: values[k] for k in names if k in values}
        try:
            return cls(**(extra or {}), **chosen)
        except (TypeError, ValueError) as err:
            raise UsageError(name_the_flag(str(err), flags)) from None

    model = {k: values[k] for k in MODEL_FIELDS if k in values}
    build(ModelConfig, MODEL_FIELDS, {"vocab_size": 1})  # validate the shape before any data work
    return Settings(model, build(TrainConfig, TRAIN_FIELDS), build(DataConfig, DATA_FIELDS), preset)

def data_sources(stored_data: dict[str, Any], explicit: dict[str, Any], flags: dict[str, str],
                 needs_location: bool = True) -> dict[str, Any]:
    """A stored data config without its locations: where data lives (--data-dir, --mirror) comes from
    this command line or the defaults, never from a file being loaded - a checkpoint must not choose
    where the program reads and writes. A run built elsewhere says which --data-dir to pass."""
    stored_dir = stored_data.get("data_dir")
    default_dir = DataConfig.__dataclass_fields__["data_dir"].default
    if needs_location and "data_dir" not in explicit and stored_dir is not None and Path(str(stored_dir)) != Path(default_dir):
        raise UsageError(f"{flags.get('data_dir', '--data-dir')}: this run's data set was built under {stored_dir}; "
                         f"pass --data-dir {stored_dir} (data locations are never taken from a checkpoint)")
    return {k: v for k, v in stored_data.items() if k not in ("data_dir", "mirror")}


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value
