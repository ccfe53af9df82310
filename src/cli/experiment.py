"""--experiment ablations: understand each idea of the Transformer by taking it away.

    python -m src.main --experiment ablations --preset tiny --logdir runs/ablations
    python -m src.main --experiment ablations --variants baseline no_mask --seeds 2 --logdir runs/ablations

Trains the baseline (GPT-2 as in the reading path) and each variant - the same model with one idea
switched off (`ModelConfig`'s switches) - on the same data, with the same steps, seeds and settings,
one after another. Each is an ordinary run directory, `<logdir>/<variant>[-seed<k>]`, trained by the
normal `--train` path (`src/cli/train.py`), so TensorBoard overlays the curves and every run can be
resumed, generated from, evaluated or served like any other. After training, each run's final
weights are scored on every window of the validation split (`--evaluate`'s measure) and the result
goes to `<run>/ablation.json`; when all are done, `results.json`, `results.md` (a German table) and
`curves.png` are written into `--logdir`.

A rerun with the same settings reuses finished variants (their ablation.json) and resumes an
interrupted one (`--resume`), so Ctrl-C loses at most the current variant's last few steps.

The experiment's own defaults (EXPERIMENT_DEFAULTS) sit above `--preset` and below `--config` and
typed flags: without the causal mask, the model learns to copy the next character from the future.
That "cheat" appears abruptly, like a phase change, and only after a few hundred steps at a high
learning rate, a short window and no dropout; a shorter or gentler run would show no cheat at all and
the table would teach the opposite of the truth.

Why one file of ~520 lines: it is one command read top-down (plan the jobs, train each through
`run_train`, measure, write the table and the curves); the variant list lives apart in variants.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from src.cli.common import EXIT_DIVERGED, EXIT_OK, UsageError
from src.cli.variants import VARIANTS, Variant
from src.config import ModelConfig, config_from_dict, config_to_dict
from src.fileio import atomic_write_text

RESULT_FILE = "ablation.json"  # per run: what the experiment measured on it
SAMPLE_PROMPT = "It was a "
SAMPLE_TOKENS = 60
# Above --preset, below --config and typed flags. Chosen so that the no_mask cheat shows reliably
# (issue 22: around step 250-500 at lr 3e-3, block 32, no dropout; here at step 100) and eleven variants
# of `--preset tiny` fit in 15 minutes on a 2-core CPU (measured: 12.2 min, benchmarks/README.md).
EXPERIMENT_DEFAULTS: dict[str, Any] = {
    "max_steps": 600, "block_size": 32, "dropout": 0.0, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 50,
    "eval_interval": 50, "eval_batches": 10, "sample_tokens": 0,
}
# A drop of the validation loss by this many nats between two evaluations, once the warm-up is over,
# counts as an abrupt change (the cheat's phase change; ordinary learning is far slower by then:
# measured with --preset tiny, the baseline fell 0.16 nats from step 50 to 100, no_mask 2.29).
ABRUPT_DROP = 0.5
MAX_JSON_BYTES = 16 * 2**20  # ablation.json, config.json, results.json: a few KB; a bigger file is not ours
MAX_METRICS_BYTES = 256 * 2**20  # metrics.jsonl: about 200 bytes per logged step
SWITCH_FIELDS = ("pos_encoding", "causal", "residual", "norm", "norm_position", "mlp", "tie_weights")
NOT_WITH_EXPERIMENT = ("resume", "checkpoint", "init_from", "find_batch_size", "force")


def run_name(variant: str, seed_index: int, seeds: int) -> str:
    """The run directory's name: "no_mask" for one seed, "no_mask-seed2" for the 2nd of several."""
    return variant if seeds == 1 else f"{variant}-seed{seed_index + 1}"


def check_variants(names: list[str] | None) -> list[str]:
    """The variants to run, in the table's order; UsageError for an unknown name (with a suggestion)."""
    if not names:
        return list(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            close = difflib.get_close_matches(name, list(VARIANTS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"--variants: unknown variant {name!r}{hint}; choose from {', '.join(VARIANTS)}")
    chosen = set(names)
    return [name for name in VARIANTS if name in chosen]


def abrupt_step(curve: list[tuple[int, float]], after: int, drop: float = ABRUPT_DROP) -> int | None:
    """The first evaluation step whose loss fell by >= drop nats since the previous evaluation, counting
    only pairs that start at step >= after (pass the warm-up: the first steps of every run fall fast).

    Example: abrupt_step([(0, 4.7), (50, 2.5), (100, 2.4), (150, 0.4)], after=50) -> 150 (2.0 in 50 steps).
    """
    for (start, before), (step, now) in zip(curve, curve[1:]):
        if start >= after and math.isfinite(before) and math.isfinite(now) and before - now >= drop:
            return step
    return None


def read_val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of every evaluation in the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.stat().st_size > MAX_METRICS_BYTES:
        return []
    curve = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash: the rest is still good
            if isinstance(row, dict) and isinstance(row.get("val/loss"), (int, float)):
                curve.append((int(row["step"]), float(row["val/loss"])))
    return curve


# --- the command -------------------------------------------------------------------------------


def run_experiment(args: argparse.Namespace, flags: dict[str, str], callbacks: Sequence[Any] = ()) -> int:
    """--experiment ablations: train, evaluate and tabulate every chosen variant. `callbacks` are
    handed to every training run (as `--train` takes them)."""
    from src.cli.settings import read_config_file, resolve_settings

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would train and write every variant
        raise UsageError("--experiment runs in one process: start it with python -m src.main, not torchrun")
    for name in NOT_WITH_EXPERIMENT:
        if getattr(args, name, None):
            why = ("every variant must train on the same data; rebuild it once with python -m src.dataset --force"
                   if name == "force" else "each variant is a new run of its own")
            raise UsageError(f"{flags.get(name, name)}: not with --experiment ({why})")
    for name in SWITCH_FIELDS:
        if getattr(args, name, None) is not None:
            raise UsageError(f"{flags.get(name, name)}: --experiment sets the model's switches itself, one variant at "
                             "a time; drop the flag (a changed baseline would change what every row compares)")
    names = check_variants(args.variants)
    if isinstance(args.seeds, bool) or not isinstance(args.seeds, int) or not 1 <= args.seeds <= 20:
        raise UsageError(f"--seeds: give a number of seeds from 1 to 20, got {args.seeds}")
    logdir = Path(args.logdir) if args.logdir is not None else Path("runs") / "ablations"
    _check_logdir(logdir)
    in_file = set(read_config_file(args.config)) if args.config else set()
    base = _base_argv(args, flags, in_file)
    settings = resolve_settings(_parse(["--train", *base]), flags)
    if "one_head" in names and settings.model.get("n_head", ModelConfig.__dataclass_fields__["n_head"].default) == 1:
        raise UsageError("--variants: one_head needs a model with several heads (here --n-head 1: it would equal the "
                         "baseline); drop one_head or choose --n-head 2 or more")
    seed0 = settings.train.seed
    jobs = [(name, k) for k in range(args.seeds) for name in names]  # seed by seed: one full table comes first
    started = time.perf_counter()
    print(f"Ablation experiment: {len(names)} variant(s) x {args.seeds} seed(s) = {len(jobs)} runs under {logdir}; "
          f"{settings.train.max_steps} steps each (settings: {_settings_line(settings)})", file=sys.stderr, flush=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for i, (name, k) in enumerate(jobs, start=1):
        run_dir = logdir / run_name(name, k, args.seeds)
        argv = [*base, *_variant_flags(VARIANTS[name], flags), "--seed", str(seed0 + k), "--logdir", str(run_dir)]
        print(f"variant {i} of {len(jobs)}: {run_dir.name} (removed: {VARIANTS[name].removed})", file=sys.stderr,
              flush=True)
        outcome = _run_variant(argv, run_dir, flags, _output_flags(args), callbacks)
        if isinstance(outcome, int):  # interrupted (or another stop): what is finished stays
            print(f"stopped at variant {i} of {len(jobs)}; finished runs are kept in {logdir}. Run the same command "
                  "again to continue (finished variants are reused, the interrupted one resumes)", file=sys.stderr)
            return outcome
        results[name].append(outcome)
    summary = summarize(results, names)
    meta = {"experiment": "ablations", "command": "python -m src.main " + shlex.join(args.argv),
            "date": dt.date.today().isoformat(), "seeds": [seed0 + k for k in range(args.seeds)],
            "variants": names, "prompt": SAMPLE_PROMPT, **_settings_dict(settings)}
    write_results(logdir, summary, meta, {name: [r["curve"] for r in results[name]] for name in names},
                  unigram_loss(settings))
    minutes = (time.perf_counter() - started) / 60
    print(f"Done in {minutes:.1f} min: {logdir / 'results.md'}, results.json, curves.png "
          f"(tensorboard --logdir {logdir} overlays every run)", file=sys.stderr)
    return EXIT_OK


def _parse(argv: list[str]) -> argparse.Namespace:
    from src.cli.parser import build_parser

    args = build_parser().parse_args(argv)
    args.argv = argv
    return args


def _check_logdir(logdir: Path) -> None:
    """Refuse a --logdir that holds anything but this experiment's runs and result files."""
    if not logdir.exists():
        return
    if not logdir.is_dir():
        raise UsageError(f"--logdir: {logdir} is a file; choose a folder for the experiment")
    ours = {"results.json", "results.md", "curves.png"}
    for entry in sorted(logdir.iterdir()):
        variant = entry.name.split("-seed")[0]
        if entry.name in ours or (entry.is_dir() and variant in VARIANTS):
            continue
        raise UsageError(f"--logdir: {logdir} holds {entry.name!r}, which is not part of an ablation experiment; "
                         "choose a new or empty folder, or the folder of an earlier --experiment ablations")
    results = logdir / "results.json"
    if results.is_file():
        stored = _read_json(results) or {}
        ok = isinstance(stored.get("settings"), dict) and stored["settings"].get("experiment") == "ablations"
        if not ok:
            raise UsageError(f"--logdir: {results} was not written by --experiment ablations; choose another folder")


def _base_argv(args: argparse.Namespace, flags: dict[str, str], in_file: set[str]) -> list[str]:
    """The --train command line every variant shares: the typed settings, then the experiment's defaults
    for what neither a flag nor --config sets (they override --preset)."""
    from src.cli.settings import DATA_FIELDS, MODEL_FIELDS, TRAIN_FIELDS

    argv: list[str] = []
    if args.preset:
        argv += ["--preset", args.preset]
    if args.config:
        argv += ["--config", str(args.config)]
    argv += _output_flags(args)
    for name in (*MODEL_FIELDS, *TRAIN_FIELDS, *DATA_FIELDS):
        value = getattr(args, name, None)
        if value is None or name in ("logdir", "seed"):
            continue
        argv += _flag(flags[name], value)
    for name, value in EXPERIMENT_DEFAULTS.items():
        if getattr(args, name, None) is None and name not in in_file:
            argv += _flag(flags[name], value)
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]  # the first seed; each run's own follows it (the last flag wins)
    return argv


def _output_flags(args: argparse.Namespace) -> list[str]:
    """What this command prints and draws (--quiet, --no-attention-images): for new and resumed runs alike."""
    return ["--quiet"] * args.quiet + ["--no-attention-images"] * (not args.attention_images)


def _flag(flag: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, (list, tuple)):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


def _variant_flags(variant: Variant, flags: dict[str, str]) -> list[str]:
    argv: list[str] = []
    for name, value in variant.changes.items():
        argv += _flag(flags[name], value)
    return argv


def _settings_dict(settings: Any) -> dict[str, Any]:
    model = {k: v for k, v in config_to_dict(ModelConfig(vocab_size=1, **settings.model)).items() if k != "vocab_size"}
    return {"preset": settings.preset, "model": model,
            "train": {k: v for k, v in config_to_dict(settings.train).items() if k not in ("logdir", "seed")},
            "data": {k: v for k, v in config_to_dict(settings.data).items() if k not in ("force", "mirror")}}


def _settings_line(settings: Any) -> str:
    m, t = settings.model, settings.train
    return (f"{m.get('n_layer')} layers, {m.get('n_head')} heads, n_embd {m.get('n_embd')}, block {m.get('block_size')}, "
            f"dropout {m.get('dropout')}, lr {t.lr:g}, batch {t.batch_size}")


def _comparable(model: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """What must be equal for a stored run to count as this experiment's run."""
    skip = {"logdir", "vocab_size", "device", "num_workers", "compile", "dtype"}
    return {"model": {k: v for k, v in model.items() if k not in skip},
            "train": {k: v for k, v in train.items() if k not in skip}}


def _run_variant(argv: list[str], run_dir: Path, flags: dict[str, str], output_flags: list[str],
                 callbacks: Sequence[Any] = ()) -> dict[str, Any] | int:
    """Train (or reuse, or resume) one run and measure it; an int is the exit code of a stopped run."""
    from src.cli.settings import resolve_settings
    from src.cli.train import run_train
    from src.training.run_dir import has_checkpoint

    args = _parse(["--train", *argv])
    settings = resolve_settings(args, flags)
    full_model = config_to_dict(ModelConfig(vocab_size=1, **settings.model))  # every field, as config.json has them
    wanted = _comparable(full_model, config_to_dict(settings.train))
    stored = _read_json(run_dir / RESULT_FILE)
    if stored is not None:
        if stored.get("settings") != wanted:
            raise UsageError(_other_settings(run_dir, stored.get("settings"), wanted))
        print(f"  reused: {run_dir} was finished earlier", file=sys.stderr, flush=True)
        return stored
    config = _read_json(run_dir / "config.json")
    if config is not None and has_checkpoint(run_dir):
        found = _comparable(config.get("model", {}), config.get("train", {}))
        if found != wanted:
            raise UsageError(_other_settings(run_dir, found, wanted))
        resume = ["--train", "--resume", str(run_dir), "--data-dir", str(settings.data.data_dir)]
        if settings.data.mirror:
            resume += ["--mirror", settings.data.mirror]
        args = _parse(resume + output_flags)
        print(f"  resuming the interrupted run {run_dir}", file=sys.stderr, flush=True)
    outcome = _outcome_callback()
    code = run_train(args, flags, [outcome, *callbacks])
    if code not in (EXIT_OK, EXIT_DIVERGED) or (code == EXIT_DIVERGED and outcome.diverged_at is None):
        return code or 1
    result = measure(run_dir, settings, outcome.diverged_at, outcome.steps)
    result["settings"] = wanted
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def _other_settings(run_dir: Path, found: Any, wanted: dict[str, Any]) -> str:
    diffs = []
    for part in ("model", "train"):
        have = (found or {}).get(part, {}) if isinstance(found, dict) else {}
        diffs += [f"{k} {have.get(k)!r} there, {wanted[part].get(k)!r} now" for k in sorted({*have, *wanted[part]})
                  if have.get(k) != wanted[part].get(k)]
    return (f"--logdir: {run_dir} was trained with other settings ({'; '.join(diffs[:3]) or 'unreadable'}); use a new "
            "--logdir, or the same flags as before to continue that experiment")


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object of ours, or None (missing, too big, unreadable or not an object)."""
    if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return value if isinstance(value, dict) else None


def _outcome_callback() -> Any:
    """A training callback that remembers how the run ended: `.diverged_at` (None unless NaN/inf stopped it)."""
    from src.training.trainer import DIVERGED, Callback

    class Outcome(Callback):
        diverged_at: int | None = None
        steps = 0  # completed optimiser steps

        def on_train_end(self, ctx: Any, history: Any) -> None:
            self.steps = ctx.state.step
            if history.stop_reason in DIVERGED:  # "non_finite_loss": the loss of the next step was NaN/inf
                self.diverged_at = ctx.state.step + (1 if history.stop_reason == "non_finite_loss" else 0)

    return Outcome()


# --- measuring one run -------------------------------------------------------------------------


def measure(run_dir: Path, settings: Any, diverged_at: int | None, steps: int) -> dict[str, Any]:
    """Final whole-split validation loss (and, without the mask, the same weights with it), a sample,
    parameters, steps (completed: `steps` from the training, at least the checkpoint's), seconds and
    the validation curve of one finished run."""
    import torch

    from src.dataset import load_tokens, prepare_dataset
    from src.model import MiniTransformer
    from src.training.checkpoints import load_checkpoint, model_from_checkpoint, tokenizer_from_checkpoint
    from src.training.utils import resolve_device

    started = time.perf_counter()
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():  # diverged before its first checkpoint: count the parameters of its config
        config = config_from_dict(ModelConfig, (_read_json(run_dir / "config.json") or {}).get("model", {}))
        return {"run_dir": str(run_dir), "steps": steps, "params": MiniTransformer(config).num_parameters(),
                "val_loss": None, "val_loss_causal": None, "diverged_at": diverged_at,
                "seconds": round(time.perf_counter() - started, 1), "sample": "", "curve": read_val_curve(run_dir)}
    payload = load_checkpoint(last)
    model = model_from_checkpoint(payload, last)
    tokenizer = tokenizer_from_checkpoint(payload, last)
    device = resolve_device(settings.train.device)
    model.to(device)
    val_loss = val_loss_causal = None
    sample = ""
    if diverged_at is None:
        prepared = prepare_dataset(replace(settings.data, force=False), show_progress=False)
        val_ids = load_tokens(prepared.path, "val")
        val_loss = whole_split_loss(model, val_ids, device)
        val_loss_causal = val_loss
        if not model.config.causal:  # the honest number: the same weights, now forbidden to look ahead
            masked = MiniTransformer(replace(model.config, causal=True)).to(device)
            masked.load_state_dict(model.state_dict())
            val_loss_causal = whole_split_loss(masked, val_ids, device)
        generator = torch.Generator(device=device).manual_seed(settings.train.seed)
        prompt = torch.tensor([tokenizer.encode(SAMPLE_PROMPT)], dtype=torch.long, device=device)
        out = model.eval().generate(prompt, SAMPLE_TOKENS, temperature=0.8, top_k=200, generator=generator)
        sample = tokenizer.decode(out[0, prompt.size(1):].tolist())  # the continuation only
    state = payload.get("state", {})
    return {"run_dir": str(run_dir), "steps": max(steps, int(state.get("step", 0))), "params": model.num_parameters(),
            "val_loss": val_loss, "val_loss_causal": val_loss_causal, "diverged_at": diverged_at,
            "seconds": round(float(state.get("elapsed_s", 0.0)) + time.perf_counter() - started, 1),
            "sample": sample, "curve": read_val_curve(run_dir)}


def unigram_loss(settings: Any) -> float:
    """The validation loss of a "model" that knows only how often each token occurs in the training split
    (no context at all; add-one counts, so an unseen token still gets a probability). A variant near this
    number learned the letter frequencies and nothing of the context - the floor a Transformer must beat."""
    import numpy as np

    from src.dataset import load_tokens, prepare_dataset

    prepared = prepare_dataset(replace(settings.data, force=False), show_progress=False)
    train, val = load_tokens(prepared.path, "train"), load_tokens(prepared.path, "val")
    counts = np.bincount(train, minlength=int(max(train.max(), val.max())) + 1) + 1.0
    log_probs = np.log(counts / counts.sum())
    return round(float(-log_probs[val].mean()), 4)


def whole_split_loss(model: Any, ids: Any, device: Any, batch_size: int = 64) -> float:
    """Mean cross-entropy over every window of the split (non-overlapping, block_size long)."""
    from src.training.evaluation import model_nll

    nll, count = model_nll(model, ids, model.config.block_size, batch_size, device)
    return round(nll / max(count, 1), 4)


# --- the tables and the figure -----------------------------------------------------------------


def summarize(results: dict[str, list[dict[str, Any]]], names: list[str]) -> list[dict[str, Any]]:
    """One entry per variant with exactly results.json's fields (means over seeds)."""
    rows = []
    for name in names:
        runs = results[name]
        losses = [r["val_loss"] for r in runs if r["val_loss"] is not None]
        causal = [r["val_loss_causal"] for r in runs if r["val_loss_causal"] is not None]
        diverged = [r["diverged_at"] for r in runs if r["diverged_at"] is not None]
        rows.append({
            "name": name,
            "run_dirs": [r["run_dir"] for r in runs],
            "steps": max(r["steps"] for r in runs),
            "params": runs[0]["params"],
            "val_loss": round(sum(losses) / len(losses), 4) if losses else None,
            "val_loss_spread": round(max(losses) - min(losses), 4) if losses else None,
            "val_loss_causal": round(sum(causal) / len(causal), 4) if causal else None,
            "diverged_at": min(diverged) if diverged else None,
            "seconds": round(sum(r["seconds"] for r in runs) / len(runs), 1),
            "sample": runs[0]["sample"],
        })
    return rows


def write_results(logdir: Path, rows: list[dict[str, Any]], settings: dict[str, Any],
                  curves: dict[str, list[list[tuple[int, float]]]], unigram: float | None = None) -> None:
    from src.visualization import plot_ablation_curves, save_figure

    logdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(logdir / "results.json", json.dumps(
        {"variants": rows, "settings": settings, "unigram_val_loss": unigram}, indent=2, ensure_ascii=False) + "\n")
    warmup = int(settings.get("train", {}).get("warmup_steps", 0))
    jumps = {name: [abrupt_step(c, after=warmup) for c in runs] for name, runs in curves.items()}
    atomic_write_text(logdir / "results.md", results_markdown(rows, settings, jumps, unigram))
    figure = plot_ablation_curves({name: runs[0] for name, runs in curves.items() if runs})
    save_figure(figure, logdir / "curves.png")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}".replace(".", ",")


# A variant whose loss is within this many nats of the unigram loss learned (almost) nothing of the context.
NEAR_UNIGRAM = 0.1


def verdict(row: dict[str, Any], base: dict[str, Any] | None, seeds: int,
            unigram: float | None = None) -> tuple[str, str, str]:
    """(difference to the baseline, beyond the seed spread?, what it shows) for one table row, in German."""
    variant = VARIANTS[row["name"]]
    if row["diverged_at"] is not None:
        return "–", "–", f"{variant.idea}: das Training divergierte bei Schritt {row['diverged_at']} (Loss NaN/inf)."
    if row["name"] == "baseline" or base is None or base["val_loss"] is None or row["val_loss"] is None:
        return "–", "–", f"{variant.idea}."
    diff = row["val_loss"] - base["val_loss"]
    spread = max(row["val_loss_spread"] or 0.0, base["val_loss_spread"] or 0.0)
    beyond = "unbekannt (1 Seed)" if seeds < 2 else ("ja" if abs(diff) > spread else "nein")
    signed = ("+" if diff >= 0 else "−") + _number(abs(diff))
    if row["name"] == "no_mask":
        honest = row["val_loss_causal"] - base["val_loss"]
        shows = (f"{variant.idea}: Loss {_number(row['val_loss'])} im Training, mit Maske gemessen aber "
                 f"{_number(row['val_loss_causal'])} ({'+' if honest >= 0 else '−'}{_number(abs(honest))} zur Basis) - "
                 "gelernt hat es das Abschreiben, nicht die Sprache.")
    elif beyond == "nein" or abs(diff) < 0.005:
        shows = f"{variant.idea}: kein Unterschied jenseits der Seed-Streuung."
    else:
        shows = f"{variant.idea}: {'schlechter' if diff > 0 else 'besser'} um {_number(abs(diff))} nats."
    if unigram is not None and row["name"] != "no_mask" and row["val_loss"] >= unigram - NEAR_UNIGRAM:
        shows += (f" Das ist die Token-Häufigkeit allein (Unigramm {_number(unigram)}): Das Modell nutzt den Kontext "
                  "nicht, das Training ist steckengeblieben.")
    return signed, beyond, shows


def results_markdown(rows: list[dict[str, Any]], settings: dict[str, Any],
                     jumps: dict[str, list[int | None]] | None = None, unigram: float | None = None) -> str:
    """The German table of results.md (README section "Was passiert ohne ...?" shows one)."""
    jumps = jumps or {}
    seeds = len(settings.get("seeds", [1]))
    base = next((r for r in rows if r["name"] == "baseline"), None)
    lines = [
        "# Was passiert ohne ...? (Ablationen)", "",
        f"Befehl: `{settings.get('command', '')}` am {settings.get('date', '')}, {seeds} Seed(s). "
        "Val-Loss: Kreuzentropie in nats pro Token auf dem ganzen Validierungsteil, nach dem letzten Schritt "
        "(Mittel über die Seeds). Streuung: größter minus kleinster Wert über die Seeds.", "",
        "| Variante | Was fehlt | Val-Loss | Δ zur Basis | Δ > Streuung? | Parameter | Zeit | Textprobe | Was es zeigt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        diff, beyond, shows = verdict(row, base, seeds, unigram)
        loss = _number(row["val_loss"])
        if row["name"] == "no_mask" and row["val_loss_causal"] is not None:
            loss += f" (mit Maske {_number(row['val_loss_causal'])})"
        jump = next((s for s in jumps.get(row["name"], []) if s is not None), None)
        if jump is not None:
            shows += f" Die Kurve fiel abrupt (bei Schritt {jump})."
        sample = " ".join(row["sample"].split()).replace("|", "/")[:50]  # one line; "|" would end the cell
        params = f"{row['params']:,}".replace(",", ".")  # German thousands separator
        lines.append(f"| `{row['name']}` | {VARIANTS[row['name']].removed} | {loss} | {diff} | {beyond} | {params} | "
                     f"{row['seconds']:.0f} s | „{SAMPLE_PROMPT}{sample}“ | {shows} |")
    if unigram is not None:
        lines += ["", f"Zum Vergleich: Wer nur weiß, wie oft jedes Token im Trainingsteil vorkommt (Unigramm, ohne "
                  f"jeden Kontext), erreicht {_number(unigram)} nats; näher als {_number(NEAR_UNIGRAM)} daran heißt: "
                  "vom Kontext nichts gelernt."]
    lines += ["", f"Textprobe: Fortsetzung von „{SAMPLE_PROMPT}“ mit Temperatur 0,8, Seed {settings.get('seeds', [0])[0]}.",
              "Kurven: `curves.png` (Validierungs-Loss über die Schritte) und `tensorboard --logdir` auf diesen Ordner.", ""]
    return "\n".join(lines)
