"""The argument parser: one flag per field of `ModelConfig`, `TrainConfig` and `DataConfig`, so every
default and help text is written down once (in `src/config.py`)."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from src.cli.common import INSPECT_PROMPT, UsageError
from src.cli.settings import MODEL_FIELDS, PRESETS, TRAIN_FIELDS
from src.cli.variants import EXPERIMENTS, VARIANTS
from src.config import (
    ATTENTION_CHOICES,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    GELU_CHOICES,
    NORM_CHOICES,
    NORM_POSITION_CHOICES,
    POS_ENCODING_CHOICES,
    ModelConfig,
    TrainConfig,
)

# The modes, in the order --help lists them; each lives in src/cli/ (see src/main.py).
MODE_HELP: dict[str, str] = {
    "train": "train a model (builds the data set first if needed)",
    "generate": "stream text from a trained model (--checkpoint)",
    "evaluate": "loss, perplexity and bits per character on the validation split, per book, next to count "
                "baselines and the training-time estimate (--checkpoint)",
    "visualize": "write PNGs of a trained model (--checkpoint): attention of every layer for --prompt, per-token "
                 "surprisal, embeddings, training curves (--out)",
    "explain": "run one forward pass on --prompt and print every stage with its tensor shape (--checkpoint, or a "
               "fresh model from the model flags)",
    "export": "write the weights of a trained model (--checkpoint) as a .safetensors file, with its config and "
              "tokenizer as JSON in the header (--out), or as a Hugging Face folder (--format hf)",
    "serve": "open the playground in the browser for a trained model (--checkpoint): write, attention, inside, "
             "training (--host, --port)",
    "experiment": "NAME: train the baseline and variants with one idea switched off each, then write a table, "
                  "curves and runs under --logdir (default runs/ablations); NAME: ablations",
}

CHOICES = {"attention": ATTENTION_CHOICES, "pos_encoding": POS_ENCODING_CHOICES,
           "device": DEVICE_CHOICES, "dtype": DTYPE_CHOICES, "norm": NORM_CHOICES,
           "norm_position": NORM_POSITION_CHOICES, "gelu": GELU_CHOICES}

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
    from src.cli.dataset import add_data_arguments

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
    for name, help_text in MODE_HELP.items():
        if name == "experiment":  # the one mode that takes a value
            modes.add_argument("--experiment", choices=EXPERIMENTS, metavar="NAME", default=None, help=help_text)
        else:
            modes.add_argument(f"--{name}", action="store_true", help=help_text)

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
                          "run directory (best.pt, else last.pt), a .safetensors file from --export, or a "
                          "Hugging Face GPT-2 folder (config.json + model.safetensors or pytorch_model.bin)")
    run.add_argument("--init-from", type=Path, metavar="DIR", default=None,
                     help="--train: start from the weights and tokenizer of a trained model (a run directory, "
                          "an export, or a Hugging Face GPT-2 folder) and fine-tune it on the data; its shape "
                          "and tokenizer are fixed by DIR (default: a fresh model)")
    run.add_argument("--find-batch-size", action="store_true",
                     help="--train: do not train; try a few steps at micro-batch sizes 1, 2, 4, ... up to the "
                          "effective batch (--batch-size x --grad-accum) on the chosen device, report peak memory "
                          "and tokens/s, and suggest --batch-size and --grad-accum; writes no run directory "
                          "(default: off)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    run.add_argument("--attention-images", action=argparse.BooleanOptionalAction, default=True,
                     help="--train, --experiment: draw the attention of the first and the last layer into "
                          "TensorBoard at evaluations (on a CPU about a second per evaluation, at most 6%% of the "
                          "training time besides the first and the last) (default: on)")
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
                     help="sample only from the fewest most likely tokens whose probabilities add up to X (default: off)")
    gen.add_argument("--num-samples", type=int, default=1, metavar="N", help="independent samples (default: 1)")
    gen.add_argument("--check-memorization", action="store_true",
                     help="after each sample, print its longest piece that appears word for word in the "
                          "training text, and from which book (default: off)")

    inside = parser.add_argument_group("seeing inside (--visualize, --explain)")
    inside.add_argument("--out", type=Path, metavar="PATH", default=None,
                        help="folder for the --visualize PNGs (default: RUN_DIR/visualizations for a run's "
                             "checkpoint, else ./visualizations); file for --export (default: "
                             "RUN_DIR/model.safetensors, or the .pt file's name with .safetensors; a folder "
                             "with --format hf)")
    experiment = parser.add_argument_group("experiments (--experiment ablations)")
    experiment.add_argument("--variants", nargs="+", metavar="NAME", default=None,
                            help=f"which variants, in the table's order: {', '.join(VARIANTS)} (default: all)")
    experiment.add_argument("--seeds", type=int, metavar="N", default=1,
                            help="train every variant with N seeds (--seed, --seed + 1, ...); the table compares "
                                 "differences with their spread (default: 1)")
    web = parser.add_argument_group("playground (--serve)")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on; 0.0.0.0 opens the page to the network, without a password "
                          "(default: 127.0.0.1, this computer only)")
    web.add_argument("--port", type=int, default=7860, metavar="N", help="port of the page (default: 7860)")
    inside.add_argument("--format", choices=("safetensors", "hf"), default="safetensors",
                        help="--export: 'safetensors' (one file for this project) or 'hf' (a folder that "
                             "Hugging Face transformers loads as GPT2LMHeadModel, with tokenizer files and a "
                             "model card) (default: safetensors)")
    return parser

def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> its (first long) flag, e.g. 'holdout_books' -> '--holdout-book'."""
    names = {}
    for action in parser._actions:
        longs = [opt for opt in action.option_strings if opt.startswith("--")]
        if longs:
            names[action.dest] = longs[0]
    return names
