"""Command line: train a model, generate text with it, or evaluate it.

    python -m src.main --train --preset tiny --epochs 1           # a first run on a CPU (~5 min)
    python -m src.main --train --epochs 5 --batch-size 32 --max-vocab-size 256 --logdir runs/NAME
    python -m src.main --train --resume runs/NAME                 # continue exactly where it stopped
    python -m src.main --generate --checkpoint runs/NAME --prompt "Alice was" --temperature 0.8
    python -m src.main --evaluate --checkpoint runs/NAME          # loss per book vs. baselines
    python -m src.main --export --checkpoint runs/NAME            # weights as runs/NAME/model.safetensors

This is the only module that parses arguments and prints. The flags are built from the fields of
`ModelConfig`, `TrainConfig` (src/config.py) and `DataConfig` (via `src.dataset.add_data_arguments`),
so every default is written down once. Settings are layered: dataclass defaults < `--preset` <
`--config FILE` < flags typed on the command line; with `--resume` the run's stored settings replace
the first three. Bad input ends with one line on stderr and exit code 2 (`--debug` shows the
traceback). Exit codes: 0 success, 2 usage or input error, 3 training diverged (NaN/inf loss),
130 / 143 interrupted by SIGINT (Ctrl-C) / SIGTERM.

Adding a mode: write `run_<mode>(args) -> int`, add a `Mode` to `MODES` (and its flags in
`build_parser`). Adding something to TensorBoard at every evaluation: return a hook from `eval_hooks`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from src.config import (
    ATTENTION_CHOICES,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    POS_ENCODING_CHOICES,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_to_dict,
)
from src.training.train_loop import Callback

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (Ubuntu 22.04): the same parser, published as tomli
    import tomli as tomllib

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED = 0, 2, 3
# What --visualize/--explain look at by default, and what TensorBoard's attention images show.
INSPECT_PROMPT = "The cat sat on the mat."
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

# Model shapes (and a few matching training settings); flags given on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    # A first run on a 2-core CPU: 0.42 M parameters; `--preset tiny --epochs 1` on the 12 books is
    # 3,398 steps, about 5 minutes. A model this small tolerates (and needs) a higher learning rate:
    # 3e-3 reached val loss 1.72 where 1e-3 gave 2.1.
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
    "batch_size", "grad_accum", "seed",
    "books", "input", "unwrap", "val_fraction", "holdout_books", "tokenizer", "max_vocab_size",
)
MODEL_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_FIELDS = tuple(f.name for f in fields(TrainConfig))
DATA_FIELDS = tuple(f.name for f in fields(DataConfig))
LIST_FIELDS = tuple(f.name for f in fields(DataConfig) if "tuple" in str(f.type))  # books, input, holdout_books
CHOICES = {"attention": ATTENTION_CHOICES, "pos_encoding": POS_ENCODING_CHOICES,
           "device": DEVICE_CHOICES, "dtype": DTYPE_CHOICES}


class UsageError(ValueError):
    """A bad flag or flag combination (exit code 2)."""


class Interrupted(KeyboardInterrupt):
    """A signal that ends the command at once (outside the training steps, or a second Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = [opt for action in self._actions for opt in action.option_strings]
            hints = []
            for arg in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                hints.append(f"{arg} (did you mean {close[0]}?)" if close and arg.startswith("-") else arg)
            message = "unrecognized arguments: " + " ".join(hints)
        raise UsageError(message)


# --- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    help: str
    run: Callable[..., int]


def _modes() -> dict[str, Mode]:
    return {
        "train": Mode("train a model (builds the data set first if needed)", run_train),
        "generate": Mode("stream text from a trained model (--checkpoint)", run_generate),
        "evaluate": Mode("loss, perplexity and bits per character on the validation split, "
                         "per book, next to count baselines (--checkpoint)", run_evaluate),
        "visualize": Mode("write PNGs of a trained model (--checkpoint): attention of every layer for "
                          "--prompt, per-token surprisal, embeddings, training curves (--out)", run_visualize),
        "explain": Mode("run one forward pass on --prompt and print every stage with its tensor shape "
                        "(--checkpoint, or a fresh model from the model flags)", run_explain),
        "export": Mode("write the weights of a trained model (--checkpoint) as a .safetensors file, with its "
                       "config and tokenizer as JSON in the header (--out)", run_export),
    }


# --- the parser -------------------------------------------------------------------------------


def _field_type(annotation: str) -> type:
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("Path", Path)):
        if name in annotation:
            return kind
    return str


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, names: Sequence[str]) -> None:
    """One flag per dataclass field; default None means "not given" so that layering works."""
    defaults = {f.name: f.default for f in fields(cls)}
    for f in fields(cls):
        if f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults[f.name]
        help_text = f.metadata["help"]
        if "default" not in help_text:  # e.g. --logdir explains its own default
            help_text += f" (default: {'off' if default is None else default})"
        kind = _field_type(str(f.type))
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in CHOICES:
            group.add_argument(flag, choices=CHOICES[f.name], default=None, help=help_text)
        else:
            metavar = {int: "N", float: "X", Path: "DIR"}.get(kind, "VALUE")
            group.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    from src.dataset import add_data_arguments

    parser = _Parser(
        prog="python -m src.main",
        description="Train, sample from and evaluate a small GPT (mini_transformer).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Exit codes: 0 ok, 2 usage/input error, 3 training diverged (NaN/inf), 130/143 interrupted.\n"
        "Example: python -m src.main --train --preset tiny --epochs 1\n"
        "Then:    tensorboard --logdir runs",
    )
    modes = parser.add_argument_group("mode (exactly one)")
    for name, mode in _modes().items():
        modes.add_argument(f"--{name}", action="store_true", help=mode.help)

    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="model shape preset: tiny (CPU), small, default (RTX 4080); flags override it "
                          "(default: none, i.e. the default shape)")
    run.add_argument("--config", type=Path, metavar="FILE", default=None,
                     help="JSON or TOML file with settings (keys as the flags, e.g. n_layer or n-layer); "
                          "command-line flags override it (default: none)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                     help="continue a run exactly from RUN_DIR/checkpoints/last.pt (implies --train)")
    run.add_argument("--checkpoint", metavar="PATH_OR_RUN_DIR", default=None,
                     help="model for --generate/--evaluate/--visualize/--explain/--export: a .pt file, a "
                          "run directory (best.pt, else last.pt) or a .safetensors file from --export")
    run.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    run.add_argument("--debug", action="store_true", help="show full tracebacks on errors (default: off)")

    _add_dataclass_flags(parser.add_argument_group("model shape"), ModelConfig, MODEL_FIELDS)
    _add_dataclass_flags(parser.add_argument_group("training"), TrainConfig, TRAIN_FIELDS)
    add_data_arguments(parser)

    gen = parser.add_argument_group("generation (--generate)")
    gen.add_argument("--prompt", default=None,
                     help="text to continue (--generate; default: a newline) or to look at "
                          f"(--visualize/--explain; default: {INSPECT_PROMPT!r})")
    gen.add_argument("--max-new-tokens", type=int, default=500, metavar="N", help="tokens to generate (default: 500)")
    gen.add_argument("--temperature", type=float, default=0.8, metavar="X",
                     help="< 1 sharper, > 1 wilder, 0 = greedy (default: 0.8)")
    gen.add_argument("--top-k", type=int, default=200, metavar="N",
                     help="sample only from the k most likely tokens (default: 200)")
    gen.add_argument("--top-p", type=float, default=None, metavar="X",
                     help="nucleus sampling: the smallest set of tokens with probability >= p (default: off)")
    gen.add_argument("--num-samples", type=int, default=1, metavar="N", help="independent samples (default: 1)")
    gen.add_argument("--check-memorization", action="store_true",
                     help="after each sample, print its longest piece that appears word for word in the "
                          "training text, and from which book (default: off)")

    inside = parser.add_argument_group("seeing inside (--visualize, --explain)")
    inside.add_argument("--out", type=Path, metavar="PATH", default=None,
                        help="folder for the --visualize PNGs (default: RUN_DIR/visualizations for a run's "
                             "checkpoint, else ./visualizations); file for --export (default: "
                             "RUN_DIR/model.safetensors, or the .pt file's name with .safetensors)")
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> its (first long) flag, e.g. 'holdout_books' -> '--holdout-book'."""
    names = {}
    for action in parser._actions:
        longs = [opt for opt in action.option_strings if opt.startswith("--")]
        if longs:
            names[action.dest] = longs[0]
    return names


def _name_the_flag(message: str, flags: dict[str, str]) -> str:
    """'n_embd (384) must be ...' -> '--n-embd: n_embd (384) must be ...'."""
    words = message.split(maxsplit=1)
    if not words or words[0].rstrip(":,") not in flags:
        return message
    flag = flags[words[0].rstrip(":,")]
    if words[0].endswith(":"):  # "device: cuda was requested ..." -> "--device: cuda was requested ..."
        return f"{flag}: {words[1] if len(words) > 1 else ''}"
    return f"{flag}: {message}"


# --- settings ---------------------------------------------------------------------------------


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
        values.update(stored["data_config"])
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
            raise UsageError(_name_the_flag(str(err), flags)) from None

    model = {k: values[k] for k in MODEL_FIELDS if k in values}
    build(ModelConfig, MODEL_FIELDS, {"vocab_size": 1})  # validate the shape before any data work
    return Settings(model, build(TrainConfig, TRAIN_FIELDS), build(DataConfig, DATA_FIELDS), preset)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# --- extension points -------------------------------------------------------------------------


def eval_hooks(args: argparse.Namespace, tokenizer: Any) -> list[Callable[[int, Any, Any], None]]:
    """Functions called after every evaluation as hook(step, model, writer) (writer: SummaryWriter).

    Here: the attention of the first and the last layer for a fixed prompt, as images.
    """
    from src.visualization import AttentionImageHook

    return [AttentionImageHook(tokenizer, INSPECT_PROMPT, layers=(0, -1))]


def memorization_note(data_path: str | Path) -> Callable[[str], str]:
    """A function sample -> one line naming its longest verbatim piece of the training text.

    The index over the training text is built on first use (about a second for the 12 books).
    """
    from src.analysis import VerbatimIndex, format_match, training_texts

    index: list[Any] = []

    def note(sample: str) -> str:
        if not index:
            index.append(VerbatimIndex(training_texts(data_path)))
        return format_match(index[0].longest_match(sample))

    return note


# --- --train ----------------------------------------------------------------------------------


class ProgressBar(Callback):
    """A tqdm bar per epoch (loss, lr, tokens/s, ETA) and one line per evaluation (stderr)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def on_epoch_start(self, ctx, epoch: int) -> None:
        from tqdm import tqdm

        done = ctx.state.batch_in_epoch // ctx.config.grad_accum
        total = min(ctx.steps_per_epoch, done + ctx.total_steps - ctx.state.step)
        self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{ctx.config.epochs}", unit="step",
                        disable=not self.enabled, dynamic_ncols=True, file=sys.stderr, leave=True)

    def on_step(self, ctx, record) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"loss {record.loss:.3f}, lr {record.lr:.2e}, {record.tokens_per_sec:,.0f} tok/s", refresh=False
        )

    def on_eval(self, ctx, record) -> None:
        train = f", train loss {record.train_loss:.4f}" if record.train_loss is not None else ""
        mark = "  (best)" if record.improved and record.step > 0 else ""
        self._write(f"step {record.step}: val loss {record.val_loss:.4f}, perplexity {record.perplexity:.2f}, "
                    f"{record.bpc:.3f} bits/char{train}{mark}")
        if record.overfitting:
            self._write("warning: validation loss rose while training loss fell - the model starts to "
                        "memorise the training text; consider more --dropout, fewer --epochs or --early-stopping")

    def on_epoch_end(self, ctx, epoch: int) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, ctx, history) -> None:
        self.on_epoch_end(ctx, -1)

    def _write(self, line: str) -> None:
        from tqdm import tqdm

        if self.enabled:
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


class SignalStop(Callback):
    """SIGINT/SIGTERM: finish the current step, save, stop. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.ctx = None
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook setups): keep the default
                pass

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)  # second signal: stop now, without saving
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving checkpoints/last.pt "
              "(press Ctrl-C again to quit at once, without saving)", file=sys.stderr, flush=True)
        if self.ctx is not None:
            self.ctx.request_stop("interrupted", signal.Signals(signum).name)

    # as a training callback
    def on_train_start(self, ctx) -> None:
        self.ctx = ctx
        if self.signum is not None:
            ctx.request_stop("interrupted", signal.Signals(self.signum).name)


def _resume_checkpoint(resume: Path) -> tuple[Path, Path]:
    """(run dir, last.pt) for --resume RUN_DIR (or a .pt file inside RUN_DIR/checkpoints)."""
    from src.training.checkpoints import CHECKPOINT_DIR, CheckpointError

    if resume.is_file():
        return resume.parent.parent, resume
    last = resume / CHECKPOINT_DIR / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"{last}: no checkpoint to resume from (is {resume} a run directory?)")
    return resume, last


def _check_can_create(folder: Path, flag: str) -> None:
    """UsageError unless `folder` exists as a writable folder or could be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise UsageError(f"{flag}: cannot create {folder}: {existing} {what}; choose another {flag}")


def _default_run_dir() -> Path:
    return Path("runs") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def run_train(args: argparse.Namespace, flags: dict[str, str], callbacks: Sequence[Any] = ()) -> int:
    import torch

    from src.dataset import TokenDataset, prepare_dataset
    from src.model import MiniTransformer
    from src.tokenizer import load_tokenizer
    from src.training.callbacks import CheckpointSaver, RunLogger
    from src.training.checkpoints import CheckpointError, load_checkpoint
    from src.training.train_loop import TrainState, build_optimizer, count_steps, total_steps_for, train
    from src.training.utils import (
        enable_tf32,
        library_versions,
        resolve_device,
        resolve_precision,
        restore_rng_state,
        set_seed,
    )

    stored = None
    if args.resume:
        run_dir, last = _resume_checkpoint(args.resume)
        stored = load_checkpoint(last)
        for key in ("train_config", "data_config", "optimizer", "state", "rng"):
            if key not in stored:
                raise CheckpointError(f"{last}: cannot resume: the checkpoint has no {key!r}")
    settings = resolve_settings(args, flags, stored)
    train_cfg, data_cfg = settings.train, settings.data
    if stored is not None:
        if args.logdir is not None and Path(args.logdir).resolve() != run_dir.resolve():
            raise UsageError(f"--logdir: a resumed run stays in {run_dir}; drop --logdir")
        train_cfg.logdir = run_dir
    else:
        run_dir = train_cfg.logdir or _default_run_dir()
        train_cfg.logdir = run_dir
        if (run_dir / "checkpoints").exists():
            raise UsageError(f"--logdir: {run_dir} already holds a run; continue it with --resume {run_dir} "
                             "or choose another --logdir")
        _check_can_create(run_dir, "--logdir")  # fail now, not after building the data set
    try:
        device = resolve_device(train_cfg.device)
        precision = resolve_precision(train_cfg.dtype, device)
    except ValueError as err:
        raise UsageError(_name_the_flag(str(err), flags)) from None
    enable_tf32(device)

    prepared = prepare_dataset(data_cfg, block_size=settings.model.get("block_size", 256),
                               show_progress=not args.quiet)
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    splits = prepared.meta.get("splits", {})
    print(f"Data set {prepared.path} ({'reused' if prepared.reused else 'built'}): "
          f"{splits.get('train', {}).get('tokens', 0):,} training and {splits.get('val', {}).get('tokens', 0):,} "
          f"validation tokens, {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens",
          file=sys.stderr, flush=True)
    if stored is not None and tokenizer.fingerprint() != stored.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{last}: the data set {prepared.path} has a different tokenizer than the run; "
                              "it was rebuilt differently - resume with the original data")
    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **settings.model)

    set_seed(train_cfg.seed)
    model = MiniTransformer(model_cfg).to(device)
    train_set = TokenDataset(prepared.path, "train", model_cfg.block_size, seed=train_cfg.seed)
    val_set = TokenDataset(prepared.path, "val", model_cfg.block_size)
    optimizer = build_optimizer(model, train_cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    state = TrainState()
    if stored is not None:
        try:
            model.load_state_dict(stored["model"])
            optimizer.load_state_dict(stored["optimizer"])
            if stored.get("scaler") and precision.use_grad_scaler:
                scaler.load_state_dict(stored["scaler"])
            state = TrainState.from_dict(stored["state"])
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{last}: cannot resume: {str(err).splitlines()[0]}") from None

    _, steps_per_epoch = count_steps(len(train_set), train_cfg)
    total_steps = total_steps_for(max(steps_per_epoch, 1), train_cfg)
    if train_cfg.warmup_steps >= total_steps:
        print(f"warning: --warmup-steps {train_cfg.warmup_steps} is not shorter than the run ({total_steps} "
              f"steps): the learning rate never reaches --lr {train_cfg.lr:g}; use a smaller --warmup-steps",
              file=sys.stderr)
    val_split = splits.get("val", {})
    tokens_per_char = val_split.get("tokens", 1) / max(val_split.get("characters", 1), 1)
    static = {
        "model_config": config_to_dict(model_cfg),
        "train_config": config_to_dict(train_cfg),
        "data_config": config_to_dict(data_cfg),
        "data_path": str(prepared.path),
        "preset": settings.preset,
        "tokenizer": tokenizer.to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
    }
    _write_run_files(run_dir, args, static, tokenizer, model, device, precision.name,
                     steps_per_epoch, total_steps, state.step, library_versions())

    compiled = _maybe_compile(model, train_cfg, device)
    hparams = {**static["model_config"], **{k: v for k, v in static["train_config"].items() if k != "logdir"},
               "preset": settings.preset or "none", "tokenizer": tokenizer.kind,
               "books": len(data_cfg.books) or len(data_cfg.input)}
    stopper = SignalStop()
    saver = CheckpointSaver(run_dir, static)
    all_callbacks = [
        stopper,
        RunLogger(run_dir, tokenizer, hparams=hparams, eval_hooks=eval_hooks(args, tokenizer),
                  describe_sample=memorization_note(prepared.path)),
        saver,
        ProgressBar(enabled=not args.quiet),
        *callbacks,
    ]
    n_params = model.num_parameters()
    verb = f"Resuming at step {state.step}" if stored is not None else "Training"
    print(f"{verb}: {n_params / 1e6:.2f} M parameters, {model.flops_per_token() / 1e6:.1f} MFLOPs/token, "
          f"device {device.type} ({precision.name}), {steps_per_epoch} steps/epoch, {total_steps} steps in all; "
          f"run directory {run_dir}", file=sys.stderr, flush=True)
    if stored is not None:
        restore_rng_state(stored["rng"])  # last: everything above may have drawn random numbers
    stopper.install()
    try:
        history = train(model, optimizer, train_set, val_set, train_cfg, device=device, precision=precision,
                        scaler=scaler, state=state, callbacks=all_callbacks, compiled=compiled,
                        tokens_per_char=tokens_per_char)
    finally:
        stopper.uninstall()
    return _report(history, run_dir, train_cfg, precision.name, stopper, saver)


def _write_run_files(run_dir: Path, args: argparse.Namespace, static: dict[str, Any], tokenizer: Any,
                     model: Any, device: Any, dtype: str, steps_per_epoch: int, total_steps: int,
                     start_step: int, versions: dict[str, Any]) -> None:
    """config.json (resolved settings, command line, versions) and tokenizer.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    segments = []
    if start_step > 0 and config_path.is_file():
        try:  # config.json only documents the run (last.pt holds what resuming needs): never fail on it
            segments = list(json.loads(config_path.read_text(encoding="utf-8")).get("segments", []))
        except (ValueError, AttributeError, TypeError):
            print(f"warning: {config_path} was unreadable; writing it anew (earlier segments are not listed)",
                  file=sys.stderr)
    segments.append({"argv": list(args.argv), "started": dt.datetime.now().isoformat(timespec="seconds"),
                     "from_step": start_step})
    config = {
        "command": "python -m src.main " + shlex.join(args.argv),
        "preset": static["preset"],
        "model": static["model_config"],
        "train": static["train_config"],
        "data": static["data_config"],
        "data_path": static["data_path"],
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "fingerprint": static["tokenizer_fingerprint"]},
        "device": str(device),
        "dtype": dtype,
        "parameters": model.num_parameters(),
        "flops_per_token": model.flops_per_token(),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "versions": versions,
        "segments": segments,
    }
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tmp.replace(config_path)
    tokenizer.save(run_dir / "tokenizer.json")


def _maybe_compile(model: Any, train_cfg: TrainConfig, device: Any) -> Any:
    """torch.compile where it works (CUDA on Linux); otherwise a warning and eager mode."""
    import torch

    if not train_cfg.compile:
        return None
    if sys.platform == "win32" or device.type != "cuda":
        print(f"warning: --compile is used only on CUDA under Linux (here: {sys.platform}, {device.type}); "
              "running eagerly", file=sys.stderr)
        return None
    return torch.compile(model)


def _report(history: Any, run_dir: Path, train_cfg: TrainConfig, dtype: str, stopper: SignalStop,
            saver: Any) -> int:
    """The end-of-run summary; returns the exit code."""
    state = history.state
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    minutes, seconds = divmod(int(state.elapsed_s), 60)
    lines = [
        f"\nStopped: {history.stop_reason} after {state.step} step(s) ({state.tokens_seen:,} tokens) in {minutes}m{seconds:02d}s.",
    ]
    if math.isfinite(state.best_val_loss):
        lines.append(f"Best val loss {state.best_val_loss:.4f} (perplexity {math.exp(state.best_val_loss):.2f}) "
                     f"at step {state.best_step}; {state.clipped_steps} steps had their gradient clipped.")
    saved = [str(p) for p in (best, last) if p.is_file()]
    if saved:
        lines.append("Checkpoints: " + ", ".join(saved))
    lines.append(f"TensorBoard: tensorboard --logdir {run_dir.parent}")
    if history.stop_reason == "non_finite_loss":
        print("\n".join(lines), file=sys.stderr)
        print(f"error: training stopped: {_divergence_advice(history, last, saver.saved_step, train_cfg, dtype)}", file=sys.stderr)
        return EXIT_DIVERGED
    if history.stop_reason == "interrupted":
        if last.is_file():
            lines.append(f"Resume with: python -m src.main --train --resume {shlex.quote(str(run_dir))}")
        else:
            lines.append("Nothing was trained yet, so there is nothing to resume: run the same command again.")
        print("\n".join(lines), file=sys.stderr, flush=True)
        return EXIT_SIGNAL.get(stopper.signum, 130)
    if history.stop_reason == "completed" and not history.steps and state.step > 0:
        lines.append("This run had already finished; to train on, pass a larger --epochs or --max-steps "
                     "with --resume.")
    lines.append(f"Sample: python -m src.main --generate --checkpoint {shlex.quote(str(run_dir))} --prompt \"The \"")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return EXIT_OK


def _divergence_advice(history: Any, last: Path, saved_step: int | None, train_cfg: TrainConfig, dtype: str) -> str:
    """What happened after a NaN/inf loss, where the last good weights are, and what to try."""
    state = history.state
    if last.is_file():
        good = f"the last good checkpoint is {last}" + (f" (step {saved_step})" if saved_step else "")
    else:
        good = "no checkpoint was written before it"
    tips = [f"a lower --lr (now {train_cfg.lr:g}, e.g. {train_cfg.lr / 3:.2g})"]
    if dtype == "fp16":
        tips.append("--dtype bf16 or fp32")
    elif dtype == "bf16":
        tips.append("--dtype fp32")
    tips.append(f"a longer --warmup-steps (now {train_cfg.warmup_steps})")
    if not 0 < train_cfg.grad_clip <= 1.0:
        tips.append("--grad-clip 1.0")
    return (f"the loss became NaN/inf at step {state.step + 1}; {good}. Try " + ", ".join(tips[:-1])
            + f" or {tips[-1]}.")


# --- --generate -------------------------------------------------------------------------------


def _load_for_inference(args: argparse.Namespace, flags: dict[str, str]):
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
        raise UsageError(_name_the_flag(str(err), flags)) from None
    enable_tf32(device)
    path = find_checkpoint(args.checkpoint)
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path, device).eval()
    tokenizer = tokenizer_from_checkpoint(payload, path)
    return path, payload, model, tokenizer, device


def unknown_characters(tokenizer: Any, text: str) -> list[str]:
    """Characters of `text` that the tokenizer cannot represent (they would become <unk>)."""
    return [ch for ch in dict.fromkeys(text) if tokenizer.decode(tokenizer.encode(ch)) != ch]


def run_generate(args: argparse.Namespace, flags: dict[str, str]) -> int:
    import torch

    for name, ok, rule in (("max_new_tokens", args.max_new_tokens >= 1, "a positive integer"),
                           ("temperature", args.temperature >= 0, ">= 0 (0 = greedy)"),
                           ("top_k", args.top_k >= 1, "a positive integer"),
                           ("num_samples", args.num_samples >= 1, "a positive integer"),
                           ("top_p", args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise UsageError(f"{flags[name]}: must be {rule}, got {getattr(args, name)}")
    path, payload, model, tokenizer, device = _load_for_inference(args, flags)
    prompt = "\n" if args.prompt is None else args.prompt
    note_memorization = None
    if args.check_memorization:
        if "data_path" not in payload:
            raise UsageError(f"--check-memorization: {path} does not record its training data")
        note_memorization = memorization_note(payload["data_path"])
    unknown = unknown_characters(tokenizer, prompt)
    if unknown:
        print(f"note: the tokenizer does not know these prompt characters (they become <unk>): "
              f"{' '.join(repr(c) for c in unknown)}", file=sys.stderr)
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    top_k = min(args.top_k, tokenizer.vocab_size)
    seed = args.seed if args.seed is not None else TrainConfig.__dataclass_fields__["seed"].default
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"{'' if i == 0 else chr(10)}----- sample {i + 1}/{args.num_samples} -----\n")
        generator = torch.Generator(device=device).manual_seed(seed + i)
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        out.write(prompt)
        out.flush()
        new_ids: list[int] = []
        pending: list[int] = []  # generated but not printed yet
        with torch.no_grad():
            for token in model.generate_stream(idx, args.max_new_tokens, temperature=args.temperature,
                                               top_k=top_k, top_p=args.top_p, generator=generator):
                pending.append(int(token[0, 0]))
                text = tokenizer.decode(pending)
                if text.endswith("\ufffd"):
                    continue  # a BPE token ended inside a multi-byte character: wait for the rest
                # Decoding only the pending ids keeps each step O(1); it is safe because the printed
                # text ended with a whole character, where UTF-8 decoding starts afresh.
                out.write(text)
                out.flush()
                new_ids += pending
                pending.clear()
        new_ids += pending
        out.write(tokenizer.decode(pending) + "\n")
        if note_memorization is not None:
            out.write(f"[{note_memorization(tokenizer.decode(new_ids))}]\n")
        out.flush()
    return EXIT_OK


# --- --visualize and --explain ----------------------------------------------------------------


def run_visualize(args: argparse.Namespace, flags: dict[str, str]) -> int:
    from src.visualization import write_visualizations

    path, _, model, tokenizer, _ = _load_for_inference(args, flags)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    out = args.out or ((run_dir or Path(".")) / "visualizations")
    prompt = INSPECT_PROMPT if args.prompt is None else args.prompt
    written = write_visualizations(model, tokenizer, prompt, out, run_dir=run_dir)
    print(f"Wrote {len(written)} picture(s) for the prompt {prompt!r}:")
    for picture in written:
        print(f"  {picture}")
    return EXIT_OK


def run_explain(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """One forward pass, stage by stage. Without --checkpoint: a fresh (untrained) model whose
    vocabulary is the 256 byte values, shaped by the model flags (--n-layer, --preset, ...)."""
    import torch

    from src.analysis import explain_forward, format_explanation

    if args.checkpoint:
        _, _, model, tokenizer, _ = _load_for_inference(args, flags)
        origin = f"checkpoint {args.checkpoint}"
    else:
        from src.analysis import ByteTokenizer
        from src.model import MiniTransformer

        settings = resolve_settings(args, flags)
        torch.manual_seed(settings.train.seed)
        model = MiniTransformer(ModelConfig(vocab_size=ByteTokenizer.vocab_size, **settings.model)).eval()
        tokenizer = None
        origin = "a fresh, untrained model (no --checkpoint), one token per UTF-8 byte"
    prompt = INSPECT_PROMPT if args.prompt is None else args.prompt
    print(f"Explaining {origin}, prompt {prompt!r}\n")
    print(format_explanation(explain_forward(model, tokenizer, prompt, top_k=5)))
    return EXIT_OK


# --- --export ---------------------------------------------------------------------------------


def run_export(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """Weights only, as safetensors: safe to share and to load anywhere (no pickle, no optimizer)."""
    from src.training.checkpoints import export_safetensors

    out = args.out
    if out is None and args.checkpoint:
        source = Path(args.checkpoint)
        out = source / "model.safetensors" if source.is_dir() else source.with_suffix(".safetensors")
    if out is not None and out.suffix != ".safetensors":  # load_model recognises the format by it
        raise UsageError(f"--out: the export file must end in .safetensors, got {out}")
    path, _, model, tokenizer, _ = _load_for_inference(args, flags)
    if out.resolve() == path.resolve():
        raise UsageError(f"--out: {path} is already the export; give another --out to copy it")
    written = export_safetensors(model, tokenizer, out)
    size = written.stat().st_size
    shown = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
    print(f"Wrote {written} ({shown}, {model.num_parameters():,} parameters) from {path}")
    return EXIT_OK


# --- --evaluate -------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """By default the validation split of the data set the model was trained on; with data flags
    (--input, --books, ...) that text instead, read and encoded with the model's own tokenizer."""
    from tqdm import tqdm

    from src.dataset import load_documents, load_tokens, prepare_dataset, split_documents
    from src.training.checkpoints import CheckpointError
    from src.training.evaluation import CountBaselines, SplitScore, encode_documents, model_nll, source_slices

    path, payload, model, tokenizer, device = _load_for_inference(args, flags)
    data_flags = {name: getattr(args, name) for name in DATA_FIELDS if getattr(args, name, None) is not None}
    stored_data = payload.get("data_config")
    if stored_data is None and not data_flags:
        raise UsageError(f"--books/--input: {path} does not record its data set; pass the data flags")
    values = {**(stored_data or {}), "force": False, **data_flags}
    if "input" in data_flags or "books" in data_flags:  # new sources replace the stored ones entirely
        values["input"] = data_flags.get("input", ())
        values["books"] = data_flags.get("books", () if data_flags.get("input") else values["books"])
        values["holdout_books"] = data_flags.get("holdout_books", ())
    try:
        data_cfg = DataConfig(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(_name_the_flag(str(err), flags)) from None
    block_size = payload["model_config"]["block_size"]
    if {"books", "input", "holdout_books", "val_fraction", "unwrap"} & data_flags.keys():  # other text
        documents = load_documents(data_cfg, show_progress=not args.quiet)
        train_ids, val_ids, slices = encode_documents(documents, split_documents(documents, data_cfg), tokenizer)
        data_label = ", ".join(str(doc.id) for doc in documents)
        if len(val_ids) < 2:
            raise UsageError("--val-fraction: the validation part of this text is empty; raise --val-fraction")
    else:
        prepared = prepare_dataset(data_cfg, show_progress=not args.quiet)
        if prepared.meta["tokenizer"]["fingerprint"] != tokenizer.fingerprint():
            raise CheckpointError(f"{path}: the data set {prepared.path} uses a different tokenizer than the model; "
                                  "evaluate on the data set the model was trained on")
        val_ids, train_ids = load_tokens(prepared.path, "val"), load_tokens(prepared.path, "train")
        slices = source_slices(prepared.meta, "val", len(val_ids))
        data_label = str(prepared.path)
    baselines = CountBaselines(train_ids, tokenizer.vocab_size)
    batch_size = args.batch_size or 32
    rows: list[tuple[str, int, SplitScore, dict[str, float]]] = []
    for label, start, stop, characters in tqdm(slices, desc="evaluating", unit="book", disable=args.quiet,
                                              file=sys.stderr):
        ids = val_ids[start:stop]
        nll, count = model_nll(model, ids, block_size, batch_size, device)
        rows.append((label, stop - start, SplitScore(label, nll, count, characters), baselines.nll(ids)))
    print(format_evaluation(path, payload, data_label, rows))
    return EXIT_OK


def format_evaluation(path: Path, payload: dict[str, Any], data_label: str, rows: list) -> str:
    """The --evaluate tables: overall model vs. baselines, then per book."""
    total_tokens = sum(r[1] for r in rows)
    total_chars = sum(r[2].characters for r in rows)
    count = sum(r[2].count for r in rows)
    overall = {"model": sum(r[2].nll for r in rows) / count}
    for name in ("bigram", "unigram", "uniform"):
        overall[name] = sum(r[3][name] for r in rows) / count
    step = payload.get("state", {}).get("step", "?")
    lines = [f"Checkpoint {path} (step {step}), validation split of {data_label}: {total_tokens:,} tokens, "
             f"{len(rows)} source(s)", "", f"{'model':<16}{'loss':>8}{'perplexity':>12}{'bits/char':>11}"]
    for name, loss in overall.items():
        label = {"model": "this model", "bigram": "bigram counts", "unigram": "unigram counts",
                 "uniform": "uniform (ln V)"}[name]
        bpc = loss / math.log(2) * total_tokens / max(total_chars, 1)
        lines.append(f"{label:<16}{loss:>8.4f}{math.exp(min(loss, 700)):>12.2f}{bpc:>11.3f}")
    lines += ["", f"{'source':<40}{'tokens':>10}{'loss':>8}{'ppl':>9}{'bpc':>7}{'bigram':>9}{'unigram':>9}"]
    for label, tokens, score, base in rows:
        name = label if len(label) <= 38 else label[:37] + "…"
        lines.append(f"{name:<40}{tokens:>10,}{score.loss:>8.4f}{score.perplexity:>9.2f}{score.bpc(tokens):>7.3f}"
                     f"{base['bigram'] / score.count:>9.4f}{base['unigram'] / score.count:>9.4f}")
    lines.append("(loss in nats per token; lower is better. A model that barely beats 'bigram counts' has "
                 "learned little beyond pairs of characters.)")
    return "\n".join(lines)


# --- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, callbacks: Sequence[Any] = ()) -> int:
    """Run the command line; returns the exit code. `callbacks` are extra training callbacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    flags = flag_names(parser)
    # SIGTERM (e.g. `kill`, a job scheduler) while the data set is built or the model loads: unwind like
    # Ctrl-C, so that `finally` blocks remove half-written files; the training steps install their own.
    try:
        previous_sigterm, installed = signal.signal(signal.SIGTERM, _raise_interrupted), True
    except ValueError:  # not the main thread: leave signals alone
        previous_sigterm, installed = None, False
    try:
        return _run(argv, parser, flags, debug, callbacks)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return EXIT_SIGNAL.get(signum, 130)
    except BrokenPipeError:  # e.g. `python -m src.main --generate ... | head`: the reader has left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_OK
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous_sigterm or signal.SIG_DFL)


def _run(argv: list[str], parser: argparse.ArgumentParser, flags: dict[str, str], debug: bool,
         callbacks: Sequence[Any]) -> int:
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help
            return int(done.code or 0)
        args.argv = argv
        chosen = [name for name in _modes() if getattr(args, name)]
        if not chosen and args.resume:
            chosen = ["train"]
        if len(chosen) != 1:
            modes = " / ".join(f"--{name}" for name in _modes())
            raise UsageError(f"choose exactly one mode: {modes}" + (f" (got {len(chosen)})" if chosen else ""))
        mode = chosen[0]
        if args.resume and mode != "train":
            raise UsageError("--resume: only with --train")
        handler = _modes()[mode].run
        if mode == "train":
            return handler(args, flags, callbacks)
        return handler(args, flags)
    except (ValueError, OSError) as err:  # UsageError, DataError, CheckpointError, bad values, file system
        if debug or isinstance(err, BrokenPipeError):
            raise
        message = " ".join(str(err).split("\n")).strip() or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
