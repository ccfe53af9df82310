"""A training run around the learner's loop: bookkeeping, exact resume, and callbacks.

`train_loop.train` knows only batches, a learning rate and an evaluation function. A run needs more:

* **Position and exact resume.** A run's position is its step: with `steps_per_epoch` steps per
  epoch, step s lies in epoch s // steps_per_epoch. `epoch_batches` yields the training batches from
  any step on in exactly the order an uninterrupted run would see them (the order of an epoch is a
  pure function of seed and epoch), and creating them never moves the global RNG.
* **What the numbers mean.** `RunBook` (the loop's `TrainHooks`) counts tokens and clipped steps,
  keeps the best validation loss, flags overfitting, asks for early stopping and for an evaluation
  at every epoch end, and turns the loop's reports into `StepRecord`/`EvalRecord`.
* **Callbacks** (`Callback`) get every record: TensorBoard and metrics.jsonl, checkpoints, the
  progress bar and Ctrl-C handling live in `src/training/callbacks.py`. A callback must not draw
  from the global random generators (use a private `torch.Generator`), or exact resume breaks.
* **Several processes** (DDP under torchrun, `src/training/distributed.py`): every process runs this
  same code on its share of each batch (`epoch_batches`); the forward pass goes through the DDP
  wrapper, the validation loss is averaged over the processes, and every decision that ends a step
  differently - a stop - is agreed by all of them in `RunBook.should_stop`, so no process is left
  waiting in a collective. The numbers in the records (loss, tokens) are those of all processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from src.config import TrainConfig
from src.training import distributed
from src.training.evaluation import bits_per_character, loss_on_batches, sample_batches, validation_sample
from src.training.train_loop import LRSchedule, StepReport, TrainHooks, train
from src.training.utils import FP32, Precision, preserved_rng

OVERFIT_TOLERANCE = 0.01  # nats above the best validation loss before a rise counts as overfitting
# Stop reasons of a diverged run: NaN/inf in the training loss or gradient (the loop's guard), in the
# validation loss, or in the weights about to be saved (CheckpointSaver). Nothing is saved after them.
DIVERGED = ("non_finite_loss", "non_finite_val_loss", "non_finite_weights")


@dataclass
class TrainState:
    """Where a run stands; saved in checkpoints so that a resumed run continues exactly."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (0-based), derived from step
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed, derived from step
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    clipped_steps: int = 0
    elapsed_s: float = 0.0  # training wall time over all segments of the run
    last_eval_step: int = -1  # the step of the last completed evaluation

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class StepRecord:
    step: int  # steps done after this one (1 for the first step)
    epoch: float  # fractional epoch, e.g. 1.25
    loss: float
    lr: float
    grad_norm: float  # before clipping
    clipped: bool
    tokens: int  # tokens seen so far
    tokens_per_sec: float
    time: float  # seconds of training so far


@dataclass
class EvalRecord:
    step: int
    epoch: float
    val_loss: float
    perplexity: float
    bpc: float  # bits per character
    train_loss: float | None  # mean training loss since the previous evaluation
    improved: bool
    overfitting: bool  # validation loss rose while training loss fell
    tokens: int
    time: float
    windows: int = 0  # validation windows measured (a fixed sample spread over the whole split)


@dataclass
class TimeSplit:
    """Where this command's training time went (for a resumed run: this segment only).

    Evaluations cost time the steps do not learn from; the final report shows their share, and
    `RunLogger` keeps its extras (samples, images) within `EXTRAS_SHARE` of the steps' time.
    """

    steps_s: float = 0.0  # the optimiser steps: batches, forward, backward, update
    evals_s: float = 0.0  # the evaluations: validation loss and every callback's on_eval (samples, checkpoints)
    evals: int = 0
    first_step_s: float | None = None  # the first step alone (with --compile: mostly compiling)
    extras_s: float = 0.0  # the part of evals_s spent on samples, memorisation checks and images
    extras: int = 0  # evaluations that drew them


@dataclass
class History:
    steps: list[StepRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    stop_reason: str = "completed"  # completed | early_stopping | interrupted | one of DIVERGED (non_finite_...)
    stop_signal: int | None = None  # the signal behind "interrupted" (any process's, under DDP)
    state: TrainState = field(default_factory=TrainState)
    total_steps: int = 0
    timing: TimeSplit = field(default_factory=TimeSplit)


@dataclass
class LoopContext:
    """What callbacks see: the unwrapped model, optimiser, state, and a way to ask for a stop."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: TrainConfig
    state: TrainState
    schedule: LRSchedule
    steps_per_epoch: int
    device: torch.device
    stop_reason: str | None = None
    stop_signal: int | None = None  # e.g. signal.SIGTERM when a signal asked for the stop
    timing: TimeSplit = field(default_factory=TimeSplit)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def request_stop(self, reason: str, signum: int | None = None) -> None:
        """Finish the current step, then stop (reason e.g. "interrupted" or "early_stopping"; `signum`
        the signal that asked, if one did)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if signum is not None and self.stop_signal is None:
            self.stop_signal = signum


class Callback:
    """Hooks of a run; override the ones you need."""

    def on_train_start(self, ctx: LoopContext) -> None: ...

    def on_step(self, ctx: LoopContext, record: StepRecord) -> None: ...

    def on_eval(self, ctx: LoopContext, record: EvalRecord) -> None: ...

    def on_train_end(self, ctx: LoopContext, history: History) -> None: ...


# --- the run's length and its batches ---------------------------------------------------------


def steps_per_epoch_for(num_windows: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimiser steps per epoch for a training set of `num_windows` windows: only whole batches count.

    A micro-batch takes `batch_size` windows on each of `world_size` processes (DDP); a last batch too
    small to fill it, and micro-batches that do not fill a whole step, are skipped this epoch (the next
    epoch's shuffle sees those windows again). So every step learns from the same number of windows,
    and one process with batch_size B x W makes as many steps per epoch as W processes with B each.
    Example: 100 windows, batch_size 8: 12 steps in one process (96 windows), 6 with two (6 x 16 = 96).
    """
    micro_batches = num_windows // (config.batch_size * world_size)
    steps = micro_batches // config.grad_accum
    if steps == 0:
        per_batch = f"{config.batch_size}" + (f" x {world_size} processes" if world_size > 1 else "")
        raise ValueError(
            f"the training split gives only {micro_batches} batch(es) of {per_batch}, fewer than "
            f"--grad-accum {config.grad_accum}; use a smaller --grad-accum or --batch-size, or more text"
        )
    return steps


def total_steps_for(steps_per_epoch: int, config: TrainConfig) -> int:
    """The run's length: `epochs` full epochs, capped by `max_steps` when given."""
    total = steps_per_epoch * config.epochs
    return min(total, config.max_steps) if config.max_steps else total


def epoch_batches(
    train_set: torch.utils.data.Dataset, config: TrainConfig, steps_per_epoch: int, start_step: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches from `start_step` on, epoch after epoch, in the order of an uninterrupted run.

    Under DDP each process gets its own `batch_size` share of every global batch."""
    from src.dataset import make_dataloader  # the data layer sits beside training, not below it

    epoch, steps_done = divmod(start_step, steps_per_epoch)
    while True:
        with preserved_rng(device):  # creating the iterator must not move the global RNG (exact resume)
            loader = iter(make_dataloader(train_set, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                                          start_batch=steps_done * config.grad_accum, num_workers=config.num_workers,
                                          rank=distributed.rank(), world_size=distributed.world_size(),
                                          pin_memory=device.type == "cuda"))  # page-locked: non_blocking copies
        for _ in range((steps_per_epoch - steps_done) * config.grad_accum):
            yield next(loader)
        del loader  # shuts DataLoader workers down before the next epoch starts its own
        epoch, steps_done = epoch + 1, 0


# --- the run ----------------------------------------------------------------------------------


class RunBook(TrainHooks):
    """The loop's hooks for a real run: keeps `TrainState`, makes records, calls the callbacks."""

    def __init__(self, ctx: LoopContext, history: History, callbacks: Sequence[Callback], tokens_per_char: float,
                 eval_windows: int):
        self.ctx, self.history, self.callbacks = ctx, history, list(callbacks)
        self.tokens_per_char, self.eval_windows = tokens_per_char, eval_windows
        self.train_losses: list[float] = []  # since the previous evaluation
        self.segment_start = time.perf_counter() - ctx.state.elapsed_s

    def emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self.ctx, *args)

    def timed(self, evaluate: Callable[[], float | None]) -> Callable[[], float | None]:
        """`evaluate` with its wall time counted in the evaluations' share (`TimeSplit.evals_s`)."""

        def timed_evaluate() -> float | None:
            started = time.perf_counter()
            try:
                return evaluate()
            finally:
                self.ctx.timing.evals_s += time.perf_counter() - started

        return timed_evaluate

    def elapsed(self) -> float:
        self.ctx.state.elapsed_s = time.perf_counter() - self.segment_start
        return self.ctx.state.elapsed_s

    def fractional_epoch(self) -> float:
        return self.ctx.state.step / self.ctx.steps_per_epoch

    def should_stop(self) -> bool:
        ctx = self.ctx
        # DDP: all processes must stop after the same step, or the others wait forever in the next
        # gradient all-reduce. A signal may reach one process only (and some callbacks run on rank 0
        # only), so they agree here: if any process stops, all do, for the lowest rank's reason.
        # Only the agreed answer counts: a signal may arrive while they agree.
        if distributed.world_size() > 1:
            stop, signum = distributed.max_over_ranks(ctx.stop_reason is not None, ctx.stop_signal or 0)
            if stop:
                reasons = [s["reason"] for s in distributed.all_gather_states({"reason": ctx.stop_reason or ""})]
                ctx.request_stop(next(reason for reason in reasons if reason), signum or None)
            return bool(stop)
        return ctx.stop_reason is not None

    def step_loss(self, loss: float) -> float:
        # DDP: the mean over all processes, so that a NaN/inf on one of them stops every one of them
        # after the same step (alone, it would leave the others waiting in the next all-reduce).
        return distributed.mean_over_ranks(loss)

    def should_evaluate(self, step: int) -> bool:
        return step % self.ctx.steps_per_epoch == 0  # every epoch end

    def evaluation_was_cut_short(self) -> bool:
        """True after a resume at a step whose evaluation did not finish (e.g. Ctrl-C during it)."""
        step, config = self.ctx.state.step, self.ctx.config
        due = step % config.eval_interval == 0 or step == self.ctx.total_steps or self.should_evaluate(step)
        return 0 < step and due and self.ctx.state.last_eval_step != step

    def on_step(self, report: StepReport) -> None:
        state, ctx = self.ctx.state, self.ctx
        # DDP: the loss is already the mean over the processes (`step_loss`); the tokens are this
        # process's share of the step, and the records count all processes.
        loss, tokens = report.loss, report.tokens * distributed.world_size()
        state.step = report.step
        state.epoch, steps_done = divmod(report.step, ctx.steps_per_epoch)
        state.batch_in_epoch = steps_done * ctx.config.grad_accum
        state.tokens_seen += tokens
        state.clipped_steps += int(report.clipped)
        record = StepRecord(report.step, self.fractional_epoch(), loss, report.lr, report.grad_norm,
                            report.clipped, state.tokens_seen, tokens / max(report.seconds, 1e-9), self.elapsed())
        self.history.steps.append(record)
        self.train_losses.append(loss)
        self.ctx.timing.steps_s += report.seconds
        if self.ctx.timing.first_step_s is None:
            self.ctx.timing.first_step_s = report.seconds
        self.emit("on_step", record)

    def on_eval(self, step: int, val_loss: float) -> None:
        # NaN guard for what gets saved: a NaN/inf validation loss or weight stops the run before any
        # callback sees this evaluation, so no checkpoint keeps these weights as "last good".
        if not math.isfinite(val_loss) or not _all_finite(self.ctx.model):
            self.ctx.request_stop("non_finite_val_loss" if not math.isfinite(val_loss) else "non_finite_weights")
            return
        state, previous = self.ctx.state, (self.history.evals[-1] if self.history.evals else None)
        train_loss = sum(self.train_losses) / len(self.train_losses) if self.train_losses else None
        self.train_losses.clear()
        # Overfitting: the validation loss climbs (clearly above its best, not just noise) while the
        # training loss still falls - the model starts to memorise the training text.
        overfitting = (previous is not None and previous.train_loss is not None and train_loss is not None
                       and val_loss > previous.val_loss and val_loss > state.best_val_loss + OVERFIT_TOLERANCE
                       and train_loss < previous.train_loss)
        improved = val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, step, 0
        else:
            state.evals_without_improvement += 1
        state.last_eval_step = step
        record = EvalRecord(step, self.fractional_epoch(), val_loss, math.exp(min(val_loss, 700.0)),
                            bits_per_character(val_loss, self.tokens_per_char),
                            train_loss, improved, overfitting, state.tokens_seen, self.elapsed(), self.eval_windows)
        self.history.evals.append(record)
        started = time.perf_counter()
        self.emit("on_eval", record)  # samples, images, checkpoints: part of the evaluation's cost
        self.ctx.timing.evals_s += time.perf_counter() - started
        self.ctx.timing.evals += 1
        patience = self.ctx.config.early_stopping
        if patience and state.evals_without_improvement >= patience:
            self.ctx.request_stop("early_stopping")


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    config: TrainConfig,
    *,
    device: torch.device,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
    state: TrainState | None = None,
    schedule: LRSchedule | None = None,
    callbacks: Sequence[Callback] = (),
    compiled: nn.Module | None = None,
    tokens_per_char: float = 1.0,
    steps_per_epoch: int | None = None,
) -> History:
    """Train `model` (already on `device`) with the learner's loop and return the run's history.

    `state` and `schedule` continue a resumed run; the caller restores weights, optimiser, scaler and
    RNG states before calling. `compiled` is an optional `torch.compile` wrapper used for the forward
    pass; callbacks always get the unwrapped `model`. `tokens_per_char` turns nats per token into bits
    per character. Under torchrun (`distributed.setup` done) the forward pass runs through DDP.
    `steps_per_epoch` overrides `steps_per_epoch_for` (a run resumed with the count it was planned with).
    """
    state = state or TrainState()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    steps_per_epoch = steps_per_epoch or steps_per_epoch_for(len(train_set), config, distributed.world_size())
    schedule = schedule or LRSchedule.plan(config, total_steps_for(steps_per_epoch, config))
    ctx = LoopContext(model, optimizer, scaler, config, state, schedule, steps_per_epoch, device)
    history = History(state=state, total_steps=schedule.total_steps, timing=ctx.timing)
    sample = validation_sample(len(val_set), config.eval_batches * config.batch_size, config.seed)
    book = RunBook(ctx, history, callbacks, tokens_per_char, len(sample))
    # DDP: every process measures its share of the sample and the losses are averaged, weighted by
    # windows. A Ctrl-C does not cut the evaluation short then: the processes would part ways.
    share = sample[distributed.rank() :: distributed.world_size()]
    cut_short = (lambda: ctx.stop_reason == "interrupted") if distributed.world_size() == 1 else None

    val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # the sample's batches, read at the first evaluation

    def evaluate() -> float | None:
        if len(share) == 0:  # DDP with fewer validation windows than processes: this one has none
            return distributed.mean_over_ranks(0.0, weight=0)
        if not val_batches:
            val_batches[:] = sample_batches(val_set, share, config.batch_size, device, should_stop=cut_short) or []
        loss = loss_on_batches(model, val_batches, precision, should_stop=cut_short) if val_batches else None
        return None if loss is None else distributed.mean_over_ranks(loss, weight=len(share))

    evaluate = book.timed(evaluate)  # its time counts as evaluation (the final report's split)
    forward, no_sync = compiled, None
    if distributed.world_size() > 1:  # DDP: `backward` averages the gradients of all processes
        forward = distributed.data_parallel(compiled or model, device)
        no_sync = forward.no_sync
    book.emit("on_train_start")
    if book.evaluation_was_cut_short() and not book.should_stop():
        val_loss = evaluate()
        if val_loss is not None:
            book.on_eval(state.step, val_loss)
    reason = "stopped"
    if not book.should_stop():
        batches = epoch_batches(train_set, config, steps_per_epoch, state.step, device)
        reason = train(model, optimizer, batches, evaluate, config, schedule, start_step=state.step, hooks=book,
                       precision=precision, scaler=scaler, forward=forward, no_sync=no_sync)
    if reason == "completed":
        book.should_stop()  # DDP: a signal during the last step ends every process alike
    book.elapsed()
    history.stop_reason = ctx.stop_reason or ("completed" if reason == "stopped" else reason)
    history.stop_signal = ctx.stop_signal
    book.emit("on_train_end", history)
    return history
