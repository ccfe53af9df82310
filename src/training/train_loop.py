"""The training loop: how a GPT learns, one optimiser step at a time.

    for every step:
        1. set the learning rate            lr_at: linear warm-up, then cosine decay to min_lr
        2. forward -> loss -> backward      over `grad_accum` micro-batches; the gradients add up
        3. clip the gradient norm           one bad batch cannot wreck the weights
        4. optimizer step, zero gradients   AdamW
        5. now and then: validation loss    is the model learning, or memorising?

Sources: the warm-up + cosine schedule of GPT-3 (Brown et al. 2020, appendix B) and nanoGPT;
gradient clipping (Pascanu et al. 2013); AdamW (Loshchilov & Hutter 2019), with weight decay on
the weight matrices only - biases and LayerNorm gains should not be pulled towards zero.

The loop is small on purpose. It receives an iterator of (x, y) batches and a function that
measures the validation loss, and tells `TrainHooks` what happens. Everything a real run needs
around it - the data order and exact resume, checkpoints, TensorBoard, progress bars, Ctrl-C,
early stopping - lives in `src/training/trainer.py` and `src/training/callbacks.py`.
Shapes: B batch size, T block size (tokens per window), V vocabulary size.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from src.config import TrainConfig
from src.training.utils import FP32, Precision

# --- 1. the learning-rate schedule ------------------------------------------------------------


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up to `lr`, then half a cosine from `decay_from_lr` (at step `decay_start`) down to
    `min_lr` (at step `total_steps`); `min_lr` after that. A checkpoint stores it, so a resumed run
    continues on exactly the same curve."""

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    decay_start: int
    decay_from_lr: float

    @classmethod
    def plan(cls, config: TrainConfig, total_steps: int) -> LRSchedule:
        """A fresh run: the cosine starts at the peak `lr` right after warm-up."""
        return cls(config.lr, config.min_lr, config.warmup_steps, total_steps, config.warmup_steps, config.lr)

    # First pass: skip replanned (only --resume with a new end uses it).
    def replanned(self, step: int, total_steps: int) -> LRSchedule:
        """The same run with a new end (e.g. `--resume RUN --epochs 8`): the cosine starts again from
        the learning rate reached at `step`, so the rate never jumps - it only decays more slowly."""
        if total_steps == self.total_steps:
            return self
        if step <= self.warmup_steps:  # still warming up: only the end of the decay moves
            return replace(self, total_steps=total_steps)
        return replace(self, total_steps=total_steps, decay_start=step, decay_from_lr=lr_at(step, self))


def lr_at(step: int, schedule: LRSchedule) -> float:
    """Learning rate for optimiser step `step` (0-based).

    Example: lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110: step 0 -> 1e-4, step 9 -> 1e-3,
    step 60 -> 5.5e-4 (half-way down the cosine), step 110 and later -> 1e-4.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    s = schedule
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if step >= s.total_steps:
        return s.min_lr
    progress = max(0.0, (step - s.decay_start) / (s.total_steps - s.decay_start))  # 0 -> 1
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.decay_from_lr - s.min_lr)


# --- the optimiser ----------------------------------------------------------------------------


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D parameters (matrices, embeddings) only.

    Tied weights (lm_head and token embedding) appear once: `parameters()` skips duplicates.
    The fused kernel updates all parameters in one pass instead of one small operation per tensor
    and per formula term: on CUDA and on the CPU (torch >= 2.4) the optimiser step gets ~5x faster.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused)


# First pass: skip StepReport and TrainHooks (how the loop talks to the product around it).
# --- what the loop reports --------------------------------------------------------------------


@dataclass
class StepReport:
    step: int  # optimiser steps done, including this one
    loss: float  # mean training loss of this step's micro-batches
    lr: float
    grad_norm: float  # before clipping: the number worth watching
    clipped: bool
    tokens: int  # tokens in this step
    seconds: float  # wall time of this step


class TrainHooks:
    """What the loop tells the product around it, and asks it. The defaults do nothing."""

    def on_step(self, report: StepReport) -> None: ...

    def on_eval(self, step: int, val_loss: float) -> None: ...

    def should_evaluate(self, step: int) -> bool:  # besides every `eval_interval` steps (e.g. epoch ends)
        return False

    def should_stop(self) -> bool:  # e.g. Ctrl-C was pressed, or early stopping
        return False


# --- the loop ---------------------------------------------------------------------------------


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    evaluate: Callable[[], float | None],
    config: TrainConfig,
    schedule: LRSchedule,
    *,
    start_step: int = 0,
    hooks: TrainHooks | None = None,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
    forward: nn.Module | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> str:
    """Train `model` (already on its device) up to `schedule.total_steps`; return why it stopped:
    "completed", "stopped" (a hook asked) or "non_finite_loss" (NaN/inf; no update was made).

    `evaluate()` returns the validation loss (None if it was cut short). `forward` is an optional
    wrapper of `model` that shares its weights: `torch.compile`, or DistributedDataParallel (DDP,
    several processes), whose `backward` also averages the gradients of all processes; `no_sync` is
    then its `no_sync`, which skips that averaging for all micro-batches of a step but the last.
    """
    # First pass: skip these defaults (no hooks, no fp16 loss scaling, no compile/DDP wrapper).
    hooks = hooks or TrainHooks()
    scaler = scaler or torch.amp.GradScaler(enabled=False)  # only fp16 needs loss scaling
    forward = forward or model
    no_sync = no_sync or contextlib.nullcontext
    device = next(model.parameters()).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    step = start_step
    if step == 0 and (val_loss := evaluate()) is not None:
        hooks.on_eval(0, val_loss)  # before training: about ln(V) for a fresh model

    while step < schedule.total_steps:
        if hooks.should_stop():
            return "stopped"
        started = time.perf_counter()
        # 1. The learning rate for this step.
        lr = lr_at(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # 2. Forward and backward. Each micro-batch's loss is divided by grad_accum, so the gradients
        #    that `backward` adds up equal those of one batch grad_accum times larger.
        loss_sum = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            x, y = next(batches)  # (B, T), (B, T): y is x shifted left by one token
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # DDP only: average the gradients over the processes once per step, in the last backward.
            with no_sync() if micro < config.grad_accum - 1 else contextlib.nullcontext():
                with precision.autocast(device):
                    _, loss = forward(x, y)  # logits (B, T, V); loss: mean cross-entropy over B*T
                scaler.scale(loss / config.grad_accum).backward()
            loss_sum += loss.detach().float()

        # 3. Clip the true gradients (unscaled first, if fp16 scaled them) to a total norm <= grad_clip.
        scaler.unscale_(optimizer)
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        # Both numbers in one GPU -> CPU copy: every `.item()` makes the CPU wait for the GPU.
        loss_value, grad_norm = torch.stack([loss_sum / config.grad_accum, norm.float()]).tolist()
        # NaN guard: a NaN/inf loss or gradient would poison every weight. (Under fp16 the GradScaler
        # expects inf gradients now and then: it skips that update and lowers its scale.)
        if not math.isfinite(loss_value) or (not math.isfinite(grad_norm) and not scaler.is_enabled()):
            optimizer.zero_grad(set_to_none=True)
            return "non_finite_loss"

        # 4. Update the weights, then forget the gradients.
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        hooks.on_step(StepReport(step, loss_value, lr, grad_norm, clipped=grad_norm > max_norm,
                                 tokens=config.grad_accum * x.numel(), seconds=time.perf_counter() - started))

        # 5. Now and then, and at the end: the loss on text the model never trains on.
        if step % config.eval_interval == 0 or step == schedule.total_steps or hooks.should_evaluate(step):
            val_loss = evaluate()
            if val_loss is not None:
                hooks.on_eval(step, val_loss)
    return "completed"
