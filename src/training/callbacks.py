"""Callbacks of a training run: files (logs, samples, checkpoints), the progress bar and Ctrl-C.

* `RunLogger` writes TensorBoard event files (scalars `train/loss`, `val/loss`, `val/perplexity`,
  `val/bpc`, `lr`, `grad_norm`, `tokens_per_sec`, `epoch`; text samples; hyperparameters with the
  final metrics), `metrics.jsonl` (one JSON object per line) and `samples.md`. At evaluations
  it samples text from fixed prompts with a fixed seed, a time-lapse of how the model learns to
  write, and calls the `eval_hooks` (e.g. to add attention images) - at every evaluation while
  these extras cost at most `EXTRAS_SHARE` of the training time, else at fewer (`extras_due`).
* `CheckpointSaver` writes `checkpoints/last.pt` at every evaluation and at the end, and
  `checkpoints/best.pt` whenever the validation loss improves.
* `ProgressBar` draws a tqdm bar per epoch and one line per evaluation (stderr).
* `SignalStop` turns SIGINT (Ctrl-C) and SIGTERM into "finish this step, save, stop".

None of them draws from the global random generators, so they never change what the model learns.
Under DDP (several processes, `src/training/distributed.py`) the CLI installs `RunLogger` and
`ProgressBar` on rank 0 only; `SignalStop` and `CheckpointSaver` run on every process (each handles
its own signals, and each hands its random-generator state to the checkpoint that rank 0 writes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.fileio import atomic_write_text, read_jsonl
from src.model.eval_mode import evaluating
from src.training import distributed
from src.training.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT_VERSION,
    non_finite_tensors,
    save_checkpoint,
)
from src.training.run_dir import RunDirError, is_run_dir
from src.training.trainer import DIVERGED, Callback, EvalRecord, History, LoopContext, StepRecord
from src.training.utils import capture_rng_state

SAMPLE_PROMPTS: tuple[str, ...] = ("The ", "Once upon a time")
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 50

# An evaluation hook gets (step, unwrapped model, SummaryWriter) after every evaluation.
EvalHook = Callable[[int, nn.Module, Any], None]

# The extras of an evaluation - text samples with their memorisation check, and the eval hooks'
# pictures - may take at most this share of the time spent in training steps, so that an evaluation
# costs <= 10% of the training between two (issue 15). On a GPU, or with the tiny preset, a few
# hundred steps take seconds and drawing two attention figures alone takes one or two, so there some
# evaluations skip them. The validation loss and the checkpoints are never skipped.
EXTRAS_SHARE = 0.06


def extras_due(spent_s: float, steps_s: float, last: bool, share: float = EXTRAS_SHARE) -> bool:
    """Whether this evaluation writes samples and pictures: always at the run's last step, otherwise
    while they have taken at most `share` of the training steps' time so far.

    Example (share 0.06): 5 s of extras after 100 s of steps -> True; 7 s -> False, until the steps
    reach 117 s. The evaluation before the first step (0 s of each) -> True.
    """
    return last or spent_s <= share * steps_s


def sample_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    device: torch.device,
    seed: int,
    temperature: float = SAMPLE_TEMPERATURE,
    top_k: int | None = SAMPLE_TOP_K,
) -> str:
    """Prompt + continuation, sampled with a private generator (the global RNG stays untouched)."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    with evaluating(model):
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return tokenizer.decode(out[0].tolist())


class RunLogger(Callback):
    """TensorBoard + metrics.jsonl + samples.md for one run directory."""

    def __init__(
        self,
        run_dir: Path,
        tokenizer: Any,
        *,
        hparams: dict[str, Any],
        eval_hooks: Sequence[EvalHook] = (),
        prompts: Sequence[str] = SAMPLE_PROMPTS,
        describe_sample: Callable[[str], str] | None = None,
        notes: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.notes = dict(notes or {})  # tag -> text shown once in TensorBoard's Text tab (what a number means)
        self.tokenizer = tokenizer
        self.hparams = hparams
        self.eval_hooks = list(eval_hooks)
        self.prompts = list(prompts)
        self.describe_sample = describe_sample  # e.g. the memorisation check: sample -> one line
        self.writer = None
        self._window_tokens = 0
        self._window_seconds = 0.0
        self._prev_tokens = 0
        self._last_train_loss: float | None = None

    # -- lifecycle --
    def on_train_start(self, ctx: LoopContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not is_run_dir(self.run_dir):  # it truncates and deletes files below: only ever in a run of ours
            raise RunDirError(f"{self.run_dir} is not a mini_transformer run directory (no config.json of a run); "
                              "refusing to write logs into it")
        step = ctx.state.step
        # TensorBoard drops every event at or after `purge_step` that earlier files of this folder hold:
        # after a resume from step s, what a stopped segment wrote after its checkpoint (s + 1 on);
        # in a fresh run, the leftovers of an attempt interrupted before its first step (0 on).
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=step + 1 if step > 0 else 0)
        _truncate_metrics(self.run_dir / "metrics.jsonl", step if step > 0 else -1)
        if step == 0:
            (self.run_dir / "samples.md").unlink(missing_ok=True)
            for tag, text in self.notes.items():
                self.writer.add_text(tag, text, 0)
        self._prev_tokens = ctx.state.tokens_seen

    def on_step(self, ctx: LoopContext, record: StepRecord) -> None:
        # tokens/s averaged over the steps since the last log line (evaluation time excluded)
        step_tokens = record.tokens - self._prev_tokens
        self._prev_tokens = record.tokens
        self._window_tokens += step_tokens
        self._window_seconds += step_tokens / record.tokens_per_sec
        self._last_train_loss = record.loss
        if record.step % ctx.config.log_interval and record.step != 1:
            return
        scalars = {
            "train/loss": record.loss,
            "lr": record.lr,
            "grad_norm": record.grad_norm,
            "tokens_per_sec": self._window_tokens / max(self._window_seconds, 1e-9),
            "epoch": record.epoch,
        }
        self._window_tokens, self._window_seconds = 0, 0.0
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record.step)
        self._append_metrics(
            {"step": record.step, "tokens": record.tokens, "time": round(record.time, 3), **scalars,
             "clipped": record.clipped}
        )

    def on_eval(self, ctx: LoopContext, record: EvalRecord) -> None:
        scalars = {"val/loss": record.val_loss, "val/perplexity": record.perplexity, "val/bpc": record.bpc}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record.step)
        self._append_metrics(
            {"step": record.step, "tokens": record.tokens, "time": round(record.time, 3), **scalars,
             "epoch": record.epoch, "train/loss_mean": record.train_loss, "improved": record.improved,
             "overfitting": record.overfitting, "val/windows": record.windows}
        )
        if ctx.stop_reason == "interrupted":  # Ctrl-C: save and stop soon, skip the slow extras
            self.writer.flush()
            return
        timing = ctx.timing
        if (ctx.config.sample_tokens > 0 or self.eval_hooks) and extras_due(
                timing.extras_s, timing.steps_s, last=record.step == ctx.total_steps):
            started = time.perf_counter()
            if ctx.config.sample_tokens > 0:
                self._write_samples(ctx, record)
            if self.eval_hooks:
                with evaluating(ctx.model):  # hooks must not change the training run
                    for hook in self.eval_hooks:
                        hook(record.step, ctx.model, self.writer)
            timing.extras_s += time.perf_counter() - started
            timing.extras += 1
        self.writer.flush()

    def on_train_end(self, ctx: LoopContext, history: History) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        final_eval = history.evals[-1] if history.evals else None
        metrics = {
            "hparam/best_val_loss": _finite_or_nan(ctx.state.best_val_loss),
            "hparam/final_val_loss": final_eval.val_loss if final_eval else math.nan,
            "hparam/final_train_loss": self._last_train_loss if self._last_train_loss is not None else math.nan,
            "hparam/steps": float(ctx.state.step),
        }
        exp, ssi, sei = hparams_summary(_tensorboard_hparams(self.hparams), metrics)
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary, ctx.state.step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, ctx.state.step)
        self.writer.close()

    # -- helpers --
    def _append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")

    def _write_samples(self, ctx: LoopContext, record: EvalRecord) -> None:
        parts = [f"## Step {record.step} (epoch {record.epoch:.2f}, val loss {record.val_loss:.4f})\n"]
        for i, prompt in enumerate(self.prompts):
            text = sample_text(
                ctx.model, self.tokenizer, prompt, ctx.config.sample_tokens, ctx.device, seed=ctx.config.seed + i
            )
            block = _markdown_block(text)
            if self.describe_sample is not None:
                block += f"\n\n{self.describe_sample(text[len(prompt):])}"
            self.writer.add_text(f"samples/prompt_{i}", block, record.step)
            parts.append(f"Prompt {prompt!r}:\n\n{block}\n")
        with open(self.run_dir / "samples.md", "a", encoding="utf-8") as handle:
            handle.write("\n".join(parts) + "\n")


class CheckpointSaver(Callback):
    """checkpoints/last.pt at every evaluation and at the end; best.pt on a new best val loss.

    `static` holds what never changes during the run (configs as dicts, tokenizer, data path).
    After a NaN/inf loss nothing is written, so last.pt stays the last good state.
    """

    def __init__(self, run_dir: Path, static: dict[str, Any]) -> None:
        self.dir = Path(run_dir) / CHECKPOINT_DIR
        self.static = static
        self.last_path = self.dir / "last.pt"
        self.best_path = self.dir / "best.pt"
        self.saved_step: int | None = None

    def on_eval(self, ctx: LoopContext, record: EvalRecord) -> None:
        if record.step == 0:
            return  # nothing trained yet
        payload = checkpoint_payload(ctx, self.static)
        if non_finite_tensors(payload["model"]):
            return  # never "last good": the run stops (RunBook's NaN guard), last.pt keeps the previous state
        self.saved_step = record.step
        if distributed.is_main():  # DDP: every process took part in the payload; rank 0 writes it
            save_checkpoint(self.last_path, payload)
            if record.improved and not _link_into_place(self.last_path, self.best_path):
                save_checkpoint(self.best_path, payload)

    def on_train_end(self, ctx: LoopContext, history: History) -> None:
        if history.stop_reason in DIVERGED or ctx.state.step == 0:
            return
        if self.saved_step != ctx.state.step:
            payload = checkpoint_payload(ctx, self.static)
            if non_finite_tensors(payload["model"]):
                return  # e.g. interrupted right after an update that overflowed: last.pt stays the last good
            self.saved_step = ctx.state.step
            if distributed.is_main():
                save_checkpoint(self.last_path, payload)


def _link_into_place(source: Path, target: Path) -> bool:
    """Make `target` a second name of `source`'s file (a hard link, swapped in atomically); False where
    the file system has no hard links (then the caller writes a copy).

    An evaluation that improves the loss would otherwise serialise and write the same checkpoint twice
    (last.pt and best.pt): half of the checkpoint time of such an evaluation. Safe because
    `save_checkpoint` never rewrites a file in place: the next last.pt is a new file renamed over the
    name, and best.pt keeps this one.
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(source, temporary)
        os.replace(temporary, target)
        return True
    except OSError:
        temporary.unlink(missing_ok=True)
        return False


def checkpoint_payload(ctx: LoopContext, static: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to resume exactly - only tensors and plain Python values.

    Under DDP every process must call it (a collective): `rng_per_rank` holds each process's random
    generators (its own dropout masks), `rng` rank 0's. The model, optimiser and state are the same
    on every process.
    """
    rng = capture_rng_state()
    rng_per_rank = distributed.all_gather_states(rng) if distributed.world_size() > 1 else None
    return {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        **static,
        "model": ctx.model.state_dict(),  # the unwrapped module: no `_orig_mod.` or DDP `module.` keys
        "optimizer": ctx.optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict(),
        "schedule": dataclasses.asdict(ctx.schedule),  # a resumed run continues on the same curve
        "state": ctx.state.to_dict(),
        "rng": rng,
        **({"rng_per_rank": rng_per_rank} if rng_per_rank is not None else {}),
    }


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metrics.jsonl rows written after `last_step` (by a segment that did not save them), and
    rows that are not valid JSON (a line cut short when a process was killed while writing it)."""
    if not path.is_file():
        return
    rows = read_jsonl(path).rows  # bounded; lines that are not a JSON object are dropped
    kept = [json.dumps(row, allow_nan=True) for row in rows
            if isinstance(row.get("step"), int) and row["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))  # a full disk must not lose the old rows


def _finite_or_nan(value: float) -> float:
    return value if math.isfinite(value) else math.nan


def _markdown_block(text: str) -> str:
    """Text inside a fenced block; TensorBoard renders add_text as Markdown."""
    return "```\n" + text.replace("```", "`\u200b``") + "\n```"


def _tensorboard_hparams(values: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's hparams plugin takes only numbers, strings and booleans."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (bool, int, float, str)):
            plain[key] = value
        elif value is None:
            plain[key] = "None"
        else:
            plain[key] = str(value)
    return plain


class ProgressBar(Callback):
    """A tqdm bar per epoch (loss, lr, tokens/s, ETA) and one line per evaluation, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def on_step(self, ctx: LoopContext, record: StepRecord) -> None:
        from tqdm import tqdm

        epoch, done = divmod(record.step - 1, ctx.steps_per_epoch)  # the epoch this step belongs to
        if self.bar is None:
            total = min(ctx.steps_per_epoch, done + ctx.total_steps - record.step + 1)
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{ctx.config.epochs}", unit="step",
                            disable=not self.enabled, dynamic_ncols=True, file=sys.stderr, leave=True)
        self.bar.update(1)
        self.bar.set_postfix_str(f"loss {record.loss:.3f}, lr {record.lr:.2e}, {record.tokens_per_sec:,.0f} tok/s",
                                 refresh=False)
        if done + 1 == ctx.steps_per_epoch or record.step == ctx.total_steps:
            self._close()

    def on_eval(self, ctx: LoopContext, record: EvalRecord) -> None:
        train = f", train loss {record.train_loss:.4f}" if record.train_loss is not None else ""
        mark = "  (best)" if record.improved and record.step > 0 else ""
        self._write(f"step {record.step}: val loss {record.val_loss:.4f}, perplexity {record.perplexity:.2f}, "
                    f"{record.bpc:.3f} bits/char{train}{mark}")
        if record.overfitting:
            self._write("warning: validation loss rose while training loss fell - the model starts to "
                        "memorise the training text; consider more --dropout, fewer --epochs or --early-stopping")

    def on_train_end(self, ctx: LoopContext, history: History) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _write(self, line: str) -> None:
        from tqdm import tqdm

        if self.enabled:
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


class Interrupted(KeyboardInterrupt):
    """A signal that ends the command at once (outside the training steps, or a second Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalStop(Callback):
    """SIGINT/SIGTERM: finish the current step, save, stop. A second signal stops at once, unsaved."""

    def __init__(self) -> None:
        self.ctx: LoopContext | None = None
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
        who = f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
        print(f"\n{who}{signal.Signals(signum).name} received: finishing this step and saving checkpoints/last.pt "
              "(press Ctrl-C again to quit at once, without saving)", file=sys.stderr, flush=True)
        if self.ctx is not None:
            self.ctx.request_stop("interrupted", signum)

    def on_train_start(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        if self.signum is not None:
            ctx.request_stop("interrupted", self.signum)
