"""--train: build (or reuse) the data set, build the model, and run the training with its callbacks.

Read top-down from `run_train`: settings, data set, model, resume, the run's files, the callbacks.
Beside it: `src/cli/init_from.py` (--init-from: fine-tuning a trained model) and `src/cli/report.py`
(the final report). The loop itself is `src/training/train_loop.py`, the bookkeeping
`src/training/trainer.py`.

Why one file of ~440 lines: `run_train` is one command in the order it happens; the --resume rules
live in settings.py, fine-tuning in init_from.py and the final report in report.py already.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from src.cli.common import (
    INSPECT_PROMPT,
    UsageError,
    check_encodable,
    check_fits,
    cpu_fallback_note,
    name_the_flag,
)
from src.cli.init_from import load_init_from
from src.cli.parser import build_parser
from src.cli.report import data_location_flags, final_report, time_split_line
from src.cli.settings import refuse_other_modes_flags, resolve_settings
from src.config import ModelConfig, TrainConfig, config_to_dict
from src.fileio import atomic_write_text, read_json


def eval_hooks(args: argparse.Namespace, tokenizer: Any) -> list[Callable[[int, Any, Any], None]]:
    """Functions called after every evaluation as hook(step, model, writer) (writer: SummaryWriter).

    Here: the attention of the first and the last layer for a fixed prompt, as images (none with
    --no-attention-images, which also spares importing matplotlib).
    """
    if not args.attention_images:
        return []
    from src.visualization import AttentionImageHook

    return [AttentionImageHook(tokenizer, INSPECT_PROMPT, layers=(0, -1))]

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
    """--train: the run directory is locked for the whole command (one writer per run) and let go at the end.

    Under torchrun (several processes, DDP) every process runs this; they join one process group
    (`distributed.setup`), rank 0 alone locks the run directory, prints and writes files.
    """
    from src.training import distributed
    from src.training.run_dir import RunClaim

    claim = RunClaim()
    try:
        code = _train(args, flags, callbacks, claim)
        distributed.shutdown()  # DDP: wait for every process (rank 0 may still be saving), then leave
        return code
    finally:
        distributed.shutdown(wait=False)  # after an error: leave at once (a no-op when already left)
        claim.release()

def _train(args: argparse.Namespace, flags: dict[str, str], callbacks: Sequence[Any], claim: Any) -> int:
    started = time.perf_counter()  # the report splits the time into start-up, steps and evaluations
    import torch

    from src.dataset import DataChangedError, TokenDataset, data_fingerprint, prepare_dataset
    from src.memorization import memorization_note
    from src.model import MiniTransformer
    from src.tokenizer_json import load_tokenizer
    from src.training import distributed
    from src.training.callbacks import CheckpointSaver, ProgressBar, RunLogger, SignalStop
    from src.training.checkpoints import CheckpointError, check_resumable, load_checkpoint
    from src.training.run_dir import check_new_run_dir, resume_target
    from src.training.train_loop import LRSchedule, build_optimizer
    from src.training.trainer import TrainState, run_training, steps_per_epoch_for, total_steps_for
    from src.training.utils import (
        choose_cpu_precision,
        dtype_reason,
        enable_tf32,
        library_versions,
        resolve_device,
        resolve_precision,
        restore_rng_state,
        set_seed,
    )

    stored = None
    if args.resume:
        refuse_other_modes_flags(args, build_parser())  # e.g. --temperature: --resume would not use it
        run_dir, last = resume_target(args.resume)
        if distributed.is_main():  # DDP: one lock per run, held by the process that writes
            claim.take(run_dir, resuming=True)  # before reading: another process may be writing this checkpoint
        stored = load_checkpoint(last)
        check_resumable(stored, last)
    settings = resolve_settings(args, flags, stored)
    train_cfg, data_cfg = settings.train, settings.data
    if stored is not None and "max_steps" in settings.changed:  # before any data work; --epochs: below
        _refuse_an_end_before(stored["state"].get("step", 0), train_cfg.max_steps, stored, flags["max_steps"])
    init = load_init_from(args, flags, settings, stored)  # --init-from: a trained model's weights and tokenizer
    if stored is not None:
        if args.logdir is not None and Path(args.logdir).resolve() != run_dir.resolve():
            raise UsageError(f"--logdir: a resumed run stays in {run_dir}; drop --logdir")
        train_cfg.logdir = run_dir
    else:
        run_dir = train_cfg.logdir or _default_run_dir()
        train_cfg.logdir = run_dir
        check_encodable(run_dir, "--logdir")  # before any folder is made: a name the disk cannot store
        check_new_run_dir(run_dir)  # ours or untouched: a folder of the user's is refused before any work
        _check_can_create(run_dir, "--logdir")
        if distributed.is_main():
            claim.take(run_dir, resuming=False)
    try:
        device = resolve_device(train_cfg.device)
        precision = resolve_precision(train_cfg.dtype, device)
        why_dtype = dtype_reason(train_cfg.dtype, device)
        device = distributed.setup(device)  # torchrun: join the other processes; CUDA: this process's GPU
    except ValueError as err:
        raise UsageError(name_the_flag(str(err), flags)) from None
    enable_tf32(device)
    main_process = distributed.is_main()  # DDP: rank 0 prints and writes for all processes
    if (note := cpu_fallback_note(train_cfg.device, device)) is not None and main_process:
        print(note, file=sys.stderr, flush=True)

    try:  # DDP: rank 0 builds the data set (or finds it built) while the others wait, then they reuse it
        prepared = distributed.main_first(lambda: prepare_dataset(
            data_cfg if main_process else dataclasses.replace(data_cfg, force=False),
            block_size=settings.model.get("block_size", 256), show_progress=not args.quiet and main_process,
            tokenizer=init.tokenizer if init else None, full_check=stored is not None),
            what="prepare the data set")
        distributed.check_same_everywhere(data_fingerprint(prepared.meta), "the data set")
    except DataChangedError as err:
        if stored is None:
            raise
        raise DataChangedError(f"--resume: {str(err).split('; ')[0]}; {_RESUME_ON_OTHER_DATA}") from None
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    splits = prepared.meta.get("splits", {})
    if main_process:
        print(f"Data set {prepared.path} ({'reused' if prepared.reused else 'built'}): "
              f"{splits.get('train', {}).get('tokens', 0):,} training and {splits.get('val', {}).get('tokens', 0):,} "
              f"validation tokens, {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens",
              file=sys.stderr, flush=True)
    if stored is not None and tokenizer.fingerprint() != stored.get("tokenizer_fingerprint"):
        raise CheckpointError(f"{last}: the data set {prepared.path} has a different tokenizer than the run; "
                              "it was rebuilt differently - resume with the original data")
    data_changes = _data_changes(stored, data_fingerprint(prepared.meta), prepared.path, data_cfg.force)
    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **settings.model)

    check_fits(model_cfg, device, flags)  # will it fit at all? Before any weight is allocated
    set_seed(train_cfg.seed)
    model = MiniTransformer(model_cfg).to(device)
    if init is not None and stored is None:
        init.load_weights(model)
    world_size = distributed.world_size()
    if distributed.rank() > 0:  # DDP: own dropout masks per process (the weights are rank 0's in any case)
        set_seed(train_cfg.seed + distributed.rank())
    if stored is not None and stored.get("world_size", 1) != world_size:
        raise UsageError(f"--resume: {run_dir} was trained by {stored.get('world_size', 1)} process(es), this "
                         f"command started {world_size}; resume it with as many (e.g. torchrun --nproc_per_node="
                         f"{stored.get('world_size', 1)}): the data order and the effective batch depend on it")
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
        _apply_optimizer_settings(optimizer, train_cfg)  # the loaded state holds the stored values

    if train_cfg.dtype == "auto" and device.type == "cpu" and world_size == 1:  # DDP: the flag rule, alike everywhere
        if stored is not None and stored.get("dtype") in ("fp32", "bf16") and stored["train_config"].get("dtype") == "auto":
            # a resumed run keeps what --dtype auto chose at its start
            precision, why_dtype = resolve_precision(stored["dtype"], device), stored.get("dtype_reason", why_dtype)
        else:  # bf16 or fp32, whichever trains faster at this shape (a short probe on CPUs with native bf16)
            precision, why_dtype = choose_cpu_precision(model, train_cfg.batch_size, model_cfg.block_size,
                                                        model_cfg.vocab_size)
    steps_per_epoch = steps_per_epoch_for(len(train_set), train_cfg, world_size)
    if stored is not None and "steps_per_epoch" not in stored and world_size == 1:
        # A run from before only whole batches counted kept the last, smaller batch of each epoch:
        # it continues with the count it was planned with, or its epochs would shift.
        steps_per_epoch = -(-len(train_set) // train_cfg.batch_size) // train_cfg.grad_accum
    total_steps = total_steps_for(steps_per_epoch, train_cfg)
    schedule = LRSchedule.plan(train_cfg, total_steps)
    if stored is not None:
        schedule = _resumed_schedule(stored, schedule, state.step, last, train_cfg, settings.changed, flags)
    if train_cfg.warmup_steps >= total_steps and main_process:
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
        "world_size": world_size,  # processes (DDP); --batch-size is per process
        "steps_per_epoch": steps_per_epoch,  # only whole batches count (a run from before: see above)
        "tokenizer": tokenizer.to_dict(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "data_fingerprint": data_fingerprint(prepared.meta),
        "data_changes": data_changes,  # steps where a resume continued on other data (--force): not exact
        "init_from": init.source if init else None,  # fine-tuned from this model (None: trained from scratch)
        "dtype_reason": why_dtype,  # why this dtype: "--dtype", or what --dtype auto found
        "dtype": precision.name,  # what --dtype auto chose is kept on --resume
    }
    val_windows = (min(train_cfg.eval_batches * train_cfg.batch_size, len(val_set)), len(val_set))
    val_note = (f"val/loss is measured during training on {val_windows[0]:,} of the {val_windows[1]:,} validation "
                "windows: a fixed, seeded sample spread evenly over the whole split, so every book counts in "
                "proportion to its validation text. `--evaluate` measures every window, book by book.")
    batch = effective_batch(train_cfg, world_size, model_cfg.block_size)
    if main_process:
        _write_run_files(run_dir, args, static, tokenizer, model, device, precision.name,
                         steps_per_epoch, schedule, state.step, library_versions(), val_note, batch,
                         settings.changed)

    compiled = maybe_compile(model, train_cfg, device)
    hparams = {**static["model_config"], **{k: v for k, v in static["train_config"].items() if k != "logdir"},
               "preset": settings.preset or "none", "tokenizer": tokenizer.kind,
               "books": len(data_cfg.books) or len(data_cfg.input), "world_size": world_size,
               "effective_batch": batch["sequences"]}
    stopper = SignalStop()
    saver = CheckpointSaver(run_dir, static)  # on every process: each hands in its RNG state, rank 0 writes
    all_callbacks = [
        stopper,
        *([RunLogger(run_dir, tokenizer, hparams=hparams, eval_hooks=eval_hooks(args, tokenizer),
                     notes={"about/val_loss": val_note},
                     describe_sample=memorization_note(prepared.path))] if main_process else []),
        saver,
        *([ProgressBar(enabled=not args.quiet), *callbacks] if main_process else []),
    ]
    n_params = model.num_parameters()
    verb = f"Resuming at step {state.step}" if stored is not None else "Training"
    if main_process:
        if settings.changed:  # --resume with new values: say what changes from here on
            print(f"Changed from step {state.step} on: " + ", ".join(
                f"{flags.get(name, name)} {new} (was {old})" for name, (old, new) in settings.changed.items())
                + " (recorded in config.json)", file=sys.stderr, flush=True)
        print(batch["line"], file=sys.stderr, flush=True)
        print(f"{verb}: {n_params / 1e6:.2f} M parameters, {model.flops_per_token() / 1e6:.1f} MFLOPs/token, "
              f"device {device.type}, {precision.name} ({why_dtype}), {steps_per_epoch} steps/epoch, {total_steps} "
              f"steps in all; run directory {run_dir}", file=sys.stderr, flush=True)
    if stored is not None:  # last: everything above may have drawn random numbers. DDP: each its own
        restore_rng_state(stored.get("rng_per_rank", [stored["rng"]])[distributed.rank()])
    stopper.install()
    startup_s = time.perf_counter() - started
    try:
        history = run_training(model, optimizer, train_set, val_set, train_cfg, device=device, precision=precision,
                               scaler=scaler, state=state, schedule=schedule, callbacks=all_callbacks,
                               compiled=compiled, tokens_per_char=tokens_per_char, steps_per_epoch=steps_per_epoch)
    finally:
        stopper.uninstall()
    return final_report(history, run_dir, train_cfg, precision.name, stopper, saver, data_changes,
                        time_split=time_split_line(history.timing, startup_s, compiled is not None),
                        data_flags=data_location_flags(data_cfg))


_RESUME_ON_OTHER_DATA = ("this run trained on the data as it was, so resuming on other data would no longer "
                         "continue it exactly. Start a new run, or pass --force to rebuild the data set and "
                         "continue anyway (config.json and the report then say the run is no longer an exact "
                         "continuation)")


def _data_changes(stored: dict[str, Any] | None, fingerprint: str, data_path: Path, force: bool) -> list[dict]:
    """The run's record of resumes on other data; refuses a new one unless --force (DataChangedError)."""
    from src.dataset import DataChangedError

    if stored is None:
        return []
    changes = list(stored.get("data_changes", []))
    if stored.get("data_fingerprint") in (None, fingerprint):  # None: a checkpoint from before fingerprints
        return changes
    step = stored["state"].get("step", 0)
    if not force:
        raise DataChangedError(f"--resume: the data set {data_path} is not the one this run trained on up to step "
                               f"{step} (it was rebuilt since); {_RESUME_ON_OTHER_DATA}")
    print(f"warning: the data set {data_path} changed since step {step}; continuing on it (--force): from here on "
          "this run is no longer an exact continuation (recorded in config.json)", file=sys.stderr, flush=True)
    return [*changes, {"step": step, "data_path": str(data_path), "data_fingerprint": fingerprint}]


def _apply_optimizer_settings(optimizer: Any, train_cfg: TrainConfig) -> None:
    """--weight-decay, --beta1, --beta2 into a loaded AdamW (its state dict brought the stored values).
    The first group holds the matrices (build_optimizer): only it decays."""
    for i, group in enumerate(optimizer.param_groups):
        group["betas"] = (train_cfg.beta1, train_cfg.beta2)
        group["weight_decay"] = train_cfg.weight_decay if i == 0 else 0.0


def _refuse_an_end_before(step: int, total_steps: int | None, stored: dict[str, Any], flag: str) -> None:
    """--resume with a new end at or before the current step would train nothing and rewrite the plan."""
    if total_steps is not None and total_steps <= step:
        planned = (stored.get("schedule") or {}).get("total_steps", "unchanged")
        raise UsageError(f"{flag}: this run is already at step {step}, and the new end ({total_steps} steps) is not "
                         f"later; pass a larger {flag} to train on (its plan stays {planned} steps)")


def _resumed_schedule(stored: dict[str, Any], planned: Any, step: int, path: Path, train_cfg: TrainConfig,
                      changed: dict[str, Any], flags: dict[str, str]) -> Any:
    """The learning-rate schedule a resumed run continues on.

    Same settings: the stored schedule, unchanged (exact resume). A new end (a larger or smaller
    --epochs/--max-steps): the stored schedule re-planned at the current step, so the cosine decays
    from the rate reached so far to --min-lr at the new end - the rate never jumps up. A new --lr,
    --min-lr or --warmup-steps: `LRSchedule.with_new_rates` (from the current rate, without a jump).
    An end at or before the current step is refused: it would rewrite the stored plan and train nothing.
    """
    from src.training.checkpoints import CheckpointError
    from src.training.train_loop import LRSchedule

    values = stored.get("schedule")
    if values is None:  # a checkpoint from before schedules were stored: its plan was the planned one
        schedule = LRSchedule(**{**planned.__dict__, "total_steps": stored.get("lr_schedule", {}).get(
            "total_steps", planned.total_steps)})
    else:
        try:
            schedule = LRSchedule(**values)
        except TypeError as err:
            raise CheckpointError(f"{path}: stored learning-rate schedule is not usable: {err}") from None
    if planned.total_steps != schedule.total_steps:
        flag = flags["max_steps"] if planned.total_steps == train_cfg.max_steps else flags["epochs"]
        _refuse_an_end_before(step, planned.total_steps, stored, flag)
    if {"lr", "min_lr", "warmup_steps"} & set(changed):
        if set(changed) & {"lr", "min_lr", "warmup_steps"} == {"warmup_steps"} and step >= schedule.warmup_steps:
            raise UsageError(f"{flags['warmup_steps']}: the warm-up of this run ended at step {schedule.warmup_steps} "
                             f"(now step {step}), so a new length changes nothing; drop it (with a new --lr it "
                             "sets how many steps the rate takes to get there)")
        return schedule.with_new_rates(step, train_cfg, planned.total_steps)
    if schedule.total_steps != planned.total_steps:
        from src.training import distributed

        replanned = schedule.replanned(step, planned.total_steps)
        if distributed.is_main():
            print(f"note: the run's length changes from {schedule.total_steps} to {planned.total_steps} steps; the "
                  f"learning rate decays from its current {replanned.decay_from_lr:.3g} to --min-lr "
                  f"{replanned.min_lr:g} over the remaining steps (no jump)", file=sys.stderr)
        schedule = replanned
    return schedule

def effective_batch(train_cfg: TrainConfig, world_size: int, block_size: int) -> dict[str, Any]:
    """What one optimiser step learns from: --batch-size per process x processes x --grad-accum.

    Example: batch_size 32, 2 GPUs, grad_accum 4, block_size 256: 256 sequences = 65,536 tokens per step.
    """
    sequences = train_cfg.batch_size * world_size * train_cfg.grad_accum
    line = (f"Effective batch: {train_cfg.batch_size} sequences per device (--batch-size) x {world_size} device(s) x "
            f"{train_cfg.grad_accum} micro-step(s) (--grad-accum) = {sequences} sequences = "
            f"{sequences * block_size:,} tokens per optimiser step")
    return {"per_device": train_cfg.batch_size, "devices": world_size, "grad_accum": train_cfg.grad_accum,
            "sequences": sequences, "tokens": sequences * block_size, "line": line}

def _write_run_files(run_dir: Path, args: argparse.Namespace, static: dict[str, Any], tokenizer: Any,
                     model: Any, device: Any, dtype: str, steps_per_epoch: int, schedule: Any,
                     start_step: int, versions: dict[str, Any], val_note: str,
                     batch: dict[str, Any] | None = None, changed: dict[str, Any] | None = None) -> None:
    """config.json (resolved settings, command line, versions) and tokenizer.json."""
    from src.training.run_dir import RUN_FORMAT

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    segments = []
    if start_step > 0 and config_path.is_file():
        try:  # config.json only documents the run (last.pt holds what resuming needs): never fail on it
            segments = list(read_json(config_path).get("segments", []))
        except (ValueError, AttributeError, TypeError):  # StructuredFileError is a ValueError
            print(f"warning: {config_path} was unreadable; writing it anew (earlier segments are not listed)",
                  file=sys.stderr)
    segments.append({"argv": list(args.argv), "started": dt.datetime.now().isoformat(timespec="seconds"),
                     "from_step": start_step})
    if start_step > 0 and static["data_changes"] and static["data_changes"][-1]["step"] == start_step:
        segments[-1]["data_changed"] = True  # this segment continued on other data (--resume --force)
    if changed:  # --resume with new values: what this segment does differently, from its first step
        segments[-1]["changed"] = {name: {"from": old, "to": new} for name, (old, new) in changed.items()}
    config = {
        "format": RUN_FORMAT,  # marks the folder as a run of ours (src/training/run_dir.py)
        "command": "python -m src.main " + shlex.join(args.argv),
        "preset": static["preset"],
        "model": static["model_config"],
        "train": static["train_config"],
        "data": static["data_config"],
        "data_path": static["data_path"],
        "init_from": static["init_from"],
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "fingerprint": static["tokenizer_fingerprint"]},
        "device": str(device),
        "dtype": dtype,
        "dtype_reason": static["dtype_reason"],
        "parameters": model.num_parameters(),
        "flops_per_token": model.flops_per_token(),
        "world_size": static.get("world_size", 1),  # processes (DDP under torchrun); 1 without
        "effective_batch": {k: v for k, v in (batch or {}).items() if k != "line"},
        "steps_per_epoch": steps_per_epoch,
        "total_steps": schedule.total_steps,
        "lr_schedule": dict(schedule.__dict__),
        "validation_estimate": val_note,
        "exact_continuation": not static["data_changes"],
        "data_changes": static["data_changes"],
        "versions": versions,
        "segments": segments,
    }
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    tokenizer.save(run_dir / "tokenizer.json")

def maybe_compile(model: Any, train_cfg: TrainConfig, device: Any) -> Any:
    """torch.compile where it works and pays (CUDA on Linux); otherwise a warning and eager mode. On a CPU
    Inductor compiled for one to two minutes and the steps were then 15-25% slower (benchmarks/README.md)."""
    import torch

    if not train_cfg.compile:
        return None
    if sys.platform == "win32" or device.type != "cuda":
        print(f"warning: --compile is used only on CUDA under Linux (here: {sys.platform}, {device.type}); "
              "running eagerly", file=sys.stderr)
        return None
    return torch.compile(model)
