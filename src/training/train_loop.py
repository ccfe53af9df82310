"""The training loop: AdamW, warm-up + cosine learning rate, clipping, autocast, accumulation.

One optimiser step:
  1. set the learning rate for this step (`lr_at`: linear warm-up, then cosine decay to `min_lr`,
     as in GPT-3 (Brown et al. 2020, appendix B) and nanoGPT),
  2. run `grad_accum` micro-batches forward and backward, each loss divided by `grad_accum`, so
     the summed gradient equals that of one big batch,
  3. measure the gradient norm (before clipping - the number worth watching) and clip it to
     `grad_clip` (Pascanu et al. 2013), which keeps one bad batch from wrecking the weights,
  4. let AdamW (Loshchilov & Hutter 2019) update the weights; weight decay acts only on matrices
     (>= 2-D), not on biases and LayerNorm gains, which should not be pulled towards zero.

Every `eval_interval` steps, at the end of every epoch and at the last step the loop measures the
validation loss on a fixed set of batches. The loop itself writes no files and prints nothing: it
returns a `History` and reports every step and evaluation to `Callback` objects, which log to
TensorBoard, save checkpoints or draw a progress bar (see `src/training/callbacks.py` and
`src/main.py`). That is what makes it testable without files (minGPT's trainer does the same).
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
from src.training.utils import Precision, preserved_rng

OVERFIT_TOLERANCE = 0.01  # nats above the best validation loss before we call a rise overfitting

# --- learning-rate schedule and optimiser -----------------------------------------------------


def lr_at(step: int, train_config: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimiser step `step` (0-based).

    Linear warm-up over `warmup_steps` (step 0 gets lr/warmup_steps), then half a cosine from `lr`
    down to `min_lr`, reached at `total_steps`; beyond that `min_lr`.
    Example: lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110:
    `lr_at(0, ...)` = 1e-4, `lr_at(9, ...)` = 1e-3, `lr_at(60, ...)` = 5.5e-4, `lr_at(110, ...)` = 1e-4.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    cfg = train_config
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= total_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (total_steps - cfg.warmup_steps)  # 0 -> 1
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(model: nn.Module, train_config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters only; the fused kernel on CUDA.

    Tied weights (lm_head and token embedding) appear once: `named_parameters` skips duplicates.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train_config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=train_config.lr,
        betas=(train_config.beta1, train_config.beta2),
        fused=device.type == "cuda",
    )


# --- what the loop reports --------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a run stands; saved in checkpoints so that a resumed run continues exactly."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    best_step: int = -1
    evals_without_improvement: int = 0
    clipped_steps: int = 0
    elapsed_s: float = 0.0  # training wall time over all segments of the run

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**values)


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


@dataclass
class History:
    steps: list[StepRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    stop_reason: str = "completed"  # completed | early_stopping | interrupted | non_finite_loss
    state: TrainState = field(default_factory=TrainState)
    total_steps: int = 0


@dataclass
class LoopContext:
    """What callbacks see: the unwrapped model, optimiser, state, and a way to ask for a stop."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: TrainConfig
    state: TrainState
    total_steps: int
    steps_per_epoch: int
    device: torch.device
    stop_reason: str | None = None
    stop_detail: str = ""

    def request_stop(self, reason: str, detail: str = "") -> None:
        """Finish the current step, then stop (e.g. reason "interrupted", detail "SIGINT")."""
        if self.stop_reason is None:
            self.stop_reason, self.stop_detail = reason, detail


class Callback:
    """Hooks called by `train`; override the ones you need. Callbacks must not draw random numbers
    from the global generators (use a local `torch.Generator`), or exact resume breaks."""

    def on_train_start(self, ctx: LoopContext) -> None: ...

    def on_epoch_start(self, ctx: LoopContext, epoch: int) -> None: ...

    def on_step(self, ctx: LoopContext, record: StepRecord) -> None: ...

    def on_eval(self, ctx: LoopContext, record: EvalRecord) -> None: ...

    def on_epoch_end(self, ctx: LoopContext, epoch: int) -> None: ...

    def on_train_end(self, ctx: LoopContext, history: History) -> None: ...


# --- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    val_set: torch.utils.data.Dataset,
    batch_size: int,
    max_batches: int,
    device: torch.device,
    precision: Precision | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> float | None:
    """Mean cross-entropy per token over the first `max_batches` validation batches (fixed order).

    Returns None when `should_stop()` turns true midway (Ctrl-C need not wait for a long evaluation).
    """
    from src.dataset import make_dataloader

    precision = precision or Precision("fp32", None, False)
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with preserved_rng(device):
        loader = make_dataloader(val_set, batch_size, shuffle=False)
        for i, (x, y) in enumerate(loader):
            if i >= max_batches:
                break
            if should_stop is not None and should_stop():
                model.train(was_training)
                return None
            x, y = x.to(device), y.to(device)
            with precision.autocast(device):
                _, loss = model(x, y)
            total_loss += loss.float().item() * y.numel()
            total_tokens += y.numel()
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("the validation split has no complete window; use a smaller --block-size or more text")
    return total_loss / total_tokens


# --- the loop ---------------------------------------------------------------------------------


def count_steps(num_windows: int, train_config: TrainConfig) -> tuple[int, int]:
    """(micro-batches per epoch, optimiser steps per epoch) for a training set of `num_windows`."""
    micro_batches = math.ceil(num_windows / train_config.batch_size)
    return micro_batches, micro_batches // train_config.grad_accum


def total_steps_for(steps_per_epoch: int, train_config: TrainConfig) -> int:
    """The run's length: `epochs` full epochs, capped by `max_steps` when given."""
    total = steps_per_epoch * train_config.epochs
    return min(total, train_config.max_steps) if train_config.max_steps else total


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    config: TrainConfig,
    *,
    device: torch.device,
    precision: Precision,
    scaler: torch.amp.GradScaler | None = None,
    state: TrainState | None = None,
    callbacks: Sequence[Callback] = (),
    compiled: nn.Module | None = None,
    tokens_per_char: float = 1.0,
) -> History:
    """Train `model` (already on `device`) and return its history.

    `state` continues a resumed run (epoch, batch position, step ...); the caller restores weights,
    optimiser, scaler and RNG states before calling. `compiled` is an optional `torch.compile`
    wrapper of `model` used for the forward pass; callbacks always get the unwrapped `model`.
    `tokens_per_char` converts nats per token into bits per character.
    """
    state = state or TrainState()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    micro_per_epoch, steps_per_epoch = count_steps(len(train_set), config)
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training split gives only {micro_per_epoch} batch(es) of {config.batch_size}, fewer than "
            f"--grad-accum {config.grad_accum}; use a smaller --grad-accum or more text"
        )
    total = total_steps_for(steps_per_epoch, config)
    ctx = LoopContext(model, optimizer, scaler, config, state, total, steps_per_epoch, device)
    history = History(state=state, total_steps=total)
    runner = compiled if compiled is not None else model
    segment_start = time.perf_counter() - state.elapsed_s
    train_losses_since_eval: list[float] = []

    def emit(hook: str, *args: Any) -> None:
        for callback in callbacks:
            getattr(callback, hook)(ctx, *args)

    def run_eval() -> None:
        val_loss = estimate_loss(model, val_set, config.batch_size, config.eval_batches, device, precision,
                                 should_stop=lambda: ctx.stop_reason == "interrupted")
        if val_loss is None:  # interrupted midway: log no half-measured number
            return
        train_loss = sum(train_losses_since_eval) / len(train_losses_since_eval) if train_losses_since_eval else None
        train_losses_since_eval.clear()
        previous = history.evals[-1] if history.evals else None
        # Overfitting: validation loss climbs (clearly above its best, not just noise) while the
        # training loss still falls - the model starts to memorise the training text.
        overfitting = (
            previous is not None
            and previous.train_loss is not None
            and train_loss is not None
            and val_loss > previous.val_loss
            and val_loss > state.best_val_loss + OVERFIT_TOLERANCE
            and train_loss < previous.train_loss
        )
        improved = val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, state.step, 0
        else:
            state.evals_without_improvement += 1
        state.elapsed_s = time.perf_counter() - segment_start
        record = EvalRecord(
            step=state.step,
            epoch=state.epoch + state.batch_in_epoch / micro_per_epoch,
            val_loss=val_loss,
            perplexity=math.exp(min(val_loss, 700.0)),
            bpc=val_loss / math.log(2) * tokens_per_char,
            train_loss=train_loss,
            improved=improved,
            overfitting=overfitting,
            tokens=state.tokens_seen,
            time=state.elapsed_s,
        )
        history.evals.append(record)
        emit("on_eval", record)
        if config.early_stopping and state.evals_without_improvement >= config.early_stopping:
            ctx.request_stop("early_stopping", f"no improvement in {config.early_stopping} evaluations")

    model.train()
    optimizer.zero_grad(set_to_none=True)
    emit("on_train_start")
    if state.step == 0:
        run_eval()  # the loss before training: close to ln(vocab_size) for a fresh model

    while state.epoch < config.epochs and state.step < total and ctx.stop_reason is None:
        epoch = state.epoch
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        batches = _epoch_batches(train_set, config, epoch, state.batch_in_epoch, device)
        emit("on_epoch_start", epoch)
        for _ in range(steps_per_epoch - state.batch_in_epoch // config.grad_accum):
            if state.step >= total or ctx.stop_reason is not None:
                break
            record = _optimizer_step(runner, model, optimizer, scaler, batches, config, state, total, device, precision)
            if record is None:
                ctx.request_stop("non_finite_loss", f"the loss or gradient became NaN/inf at step {state.step + 1}")
                break
            state.batch_in_epoch += config.grad_accum
            epoch_done = state.batch_in_epoch // config.grad_accum >= steps_per_epoch
            if epoch_done:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            state.elapsed_s = time.perf_counter() - segment_start
            record.epoch = state.epoch + state.batch_in_epoch / micro_per_epoch
            record.time = state.elapsed_s
            history.steps.append(record)
            train_losses_since_eval.append(record.loss)
            emit("on_step", record)
            if state.step % config.eval_interval == 0 or epoch_done or state.step == total:
                run_eval()
            if epoch_done:
                break
        emit("on_epoch_end", epoch)
        del batches  # shuts DataLoader workers down before the next epoch starts its own

    state.elapsed_s = time.perf_counter() - segment_start
    history.stop_reason = ctx.stop_reason or "completed"
    emit("on_train_end", history)
    return history


def _epoch_batches(
    train_set: torch.utils.data.Dataset, config: TrainConfig, epoch: int, start_batch: int, device: torch.device
) -> Iterator:
    """The epoch's shuffled batches from `start_batch` on; the order depends only on (seed, epoch)."""
    from src.dataset import make_dataloader

    with preserved_rng(device):  # creating the iterator must not move the global RNG (exact resume)
        loader = make_dataloader(
            train_set,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            epoch=epoch,
            start_batch=start_batch,
            num_workers=config.num_workers,
        )
        return iter(loader)


def _optimizer_step(
    runner: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator,
    config: TrainConfig,
    state: TrainState,
    total: int,
    device: torch.device,
    precision: Precision,
) -> StepRecord | None:
    """One optimiser step over `grad_accum` micro-batches; None (and no update) on NaN/inf."""
    started = time.perf_counter()
    lr = lr_at(state.step, config, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for _ in range(config.grad_accum):
        x, y = next(batches)
        x = x.to(device, non_blocking=True)  # (B, T)
        y = y.to(device, non_blocking=True)  # (B, T)
        with precision.autocast(device):
            _, loss = runner(x, y)
        loss_sum += loss.detach().float()
        scaler.scale(loss / config.grad_accum).backward()
        tokens += x.numel()
    scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # (NaN gradients stay NaN)
    # One GPU -> CPU synchronisation per step for both numbers: each `.item()` makes the CPU wait
    # until the GPU has caught up, which would leave it idle while the next batch is prepared.
    loss_value, grad_norm = torch.stack([loss_sum / config.grad_accum, norm.float()]).tolist()
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return None
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        # With fp16 the GradScaler skips such a step and lowers its scale; without it, stop here.
        optimizer.zero_grad(set_to_none=True)
        return None
    clipped = config.grad_clip > 0 and grad_norm > config.grad_clip
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += tokens
    state.clipped_steps += int(clipped)
    duration = max(time.perf_counter() - started, 1e-9)
    return StepRecord(
        step=state.step,
        epoch=0.0,  # filled in by the caller once the position is updated
        loss=loss_value,
        lr=lr,
        grad_norm=grad_norm,
        clipped=clipped,
        tokens=state.tokens_seen,
        tokens_per_sec=tokens / duration,
        time=0.0,
    )
