"""Settings, layered: dataclass defaults < `--preset` < `--config FILE` < flags typed on the command
line. With `--resume` the run's stored settings replace the first three; settings that would
change the weights' shape, the data or the batch order are locked, the others apply from the
current step and are announced (the groups below say which is which)."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from src.cli.common import UsageError, name_the_flag
from src.config import DataConfig, ModelConfig, TrainConfig
from src.fileio import StructuredFileError, read_json, read_toml

CONFIG_FILE_MAX_BYTES = 1 << 20  # a settings file is a few hundred bytes

MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
DATA_FIELDS = tuple(f.name for f in fields(DataConfig))
LIST_FIELDS = tuple(f.name for f in fields(DataConfig) if "tuple" in str(f.type))  # books, input, holdout_books

PRESETS: dict[str, dict[str, Any]] = {
    # A first run on a 2-core CPU: 0.42 M parameters; `--preset tiny --epochs 1` on the 12 books is
    # 3,397 steps, about 5 minutes. A model this small tolerates (and needs) a higher learning rate:
    # after 1,000 steps, 3e-3 had reached val loss 1.72 where 1e-3 gave 2.1.
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.1,
             "batch_size": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50,
             "eval_interval": 200, "eval_batches": 10},
    # A small GPU or a patient CPU: 3.2 M parameters.
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "dropout": 0.1},
    # The RTX 4080 run: 6 layers, 6 heads, C = 384, T = 256 (10.8 M parameters), the dataclass defaults.
    "default": {},
}

# What `--resume` does with each flag; every flag of the parser is in exactly one of these groups
# (tests/test_resume_flags.py checks it). Nothing is ignored without a word:
#
# * Settings that cannot change: they change the weights' shape, the data or the order of the batches,
#   so "continue exactly" would become meaningless. Refused in one line; so is any setting of the
#   model or of the data not listed as applied below (a new switch is locked until someone decides).
LOCKED_ON_RESUME = (
    "block_size", "n_layer", "n_head", "n_embd", "bias", "pos_encoding", "gelu",
    "causal", "residual", "norm", "norm_position", "mlp", "tie_weights",
    "batch_size", "grad_accum", "seed",
    "books", "input", "unwrap", "val_fraction", "holdout_books", "tokenizer", "max_vocab_size",
)
# * Settings that apply from the current step on: the run says so in one line and config.json's
#   segment records each change (`changed`). A new --lr/--min-lr/--warmup-steps moves the learning
#   rate from where it is, without a jump (LRSchedule.with_new_rates); --weight-decay and the betas go
#   into the optimiser after its state is loaded; a new end (--epochs, --max-steps) re-plans the cosine.
APPLIED_ON_RESUME = (
    "dropout", "attention",
    "epochs", "max_steps", "lr", "min_lr", "weight_decay", "beta1", "beta2", "warmup_steps", "grad_clip",
    "eval_interval", "eval_batches", "early_stopping", "device", "dtype", "compile", "num_workers",
    "log_interval", "sample_tokens",
)
# * Flags about this command, not the run: where the data lives (never stored in a checkpoint),
#   rebuilding it (--force: recorded as a data change), how much the command prints or draws.
THIS_COMMAND_ON_RESUME = ("train", "resume", "data_dir", "mirror", "name", "force", "quiet", "debug",
                          "attention_images")
# * Flags that --resume refuses with their own message: a new run's choices (src/cli/settings.py,
#   src/cli/init_from.py, src/cli/train.py, src/cli/find_batch_size.py) and the other modes (src/main.py).
REFUSED_ELSEWHERE_ON_RESUME = ("preset", "config", "init_from", "logdir", "find_batch_size",
                               "generate", "evaluate", "visualize", "explain", "export", "serve")
# Every other flag belongs to another mode (--temperature, --out, --port, ...): refused by
# `refuse_other_modes_flags`, since --resume would not use it.

def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file; keys are field names (n_layer) or flag names (n-layer)."""
    if not path.exists():
        raise UsageError(f"--config: {path} does not exist")
    reader = read_toml if path.suffix.lower() == ".toml" else read_json
    try:
        values = reader(path, max_bytes=CONFIG_FILE_MAX_BYTES, max_depth=4)
    except StructuredFileError as err:
        raise UsageError(f"--config: {err}") from None
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
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # --resume: name -> (stored, new)

def resolve_settings(args: argparse.Namespace, flags: dict[str, str], stored: dict[str, Any] | None = None) -> Settings:
    """Layer defaults < preset < config file < typed flags (or stored run settings < typed flags)."""
    explicit = {
        name: getattr(args, name)
        for name in (*MODEL_FIELDS, *TRAIN_FIELDS, *DATA_FIELDS)
        if getattr(args, name, None) is not None
    }
    values: dict[str, Any] = {}
    changed: dict[str, tuple[Any, Any]] = {}
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
        for name, value in explicit.items():
            if name in APPLIED_ON_RESUME or name in THIS_COMMAND_ON_RESUME or name == "logdir":
                continue
            if _plain(value) != _plain(values.get(name)):  # LOCKED_ON_RESUME, or a setting not yet classified
                raise UsageError(
                    f"{flags.get(name, name)}: cannot change {name} from {_plain(values.get(name))!r} to "
                    f"{_plain(value)!r} when resuming (weights, data or batch order would no longer fit); "
                    f"start a new run instead (--init-from {args.resume} starts one from this run's weights)"
                )
        changed = {name: (_plain(values.get(name)), _plain(explicit[name])) for name in APPLIED_ON_RESUME
                   if name in explicit and _plain(explicit[name]) != _plain(values.get(name))}
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
    return Settings(model, build(TrainConfig, TRAIN_FIELDS), build(DataConfig, DATA_FIELDS), preset, changed)


def refuse_other_modes_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """--resume: a flag of another mode (--temperature, --out, --port, ...) would do nothing; say so."""
    known = {*MODEL_FIELDS, *TRAIN_FIELDS, *DATA_FIELDS, *THIS_COMMAND_ON_RESUME, *REFUSED_ELSEWHERE_ON_RESUME}
    for action in parser._actions:
        if action.dest in known or not action.option_strings or action.dest == "help":
            continue
        typed = any(arg in action.option_strings or arg.split("=")[0] in action.option_strings
                    for arg in getattr(args, "argv", ()))  # typed, even if equal to the default
        if typed or getattr(args, action.dest, action.default) != action.default:
            flag = next(opt for opt in action.option_strings if opt.startswith("--"))
            raise UsageError(f"{flag}: not used by --resume (it continues training); drop it, or use it with "
                             "the mode it belongs to (see --help)")

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
