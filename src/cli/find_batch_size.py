"""--train ... --find-batch-size: "will it fit?" - the largest micro-batch this device holds, and how fast.

A run's effective batch (what one optimiser step learns from) is --batch-size x --grad-accum: the
same gradients, whether 32 sequences go through the model at once or 4 times 8 one after another
(`train_loop.train` adds up the micro-batches' gradients). Only the micro-batch (--batch-size) decides
the memory the activations need. So this tries a few optimiser steps of the learner's loop at growing
micro-batch sizes 1, 2, 4, ... up to the command's effective batch - the model, dtype, block size and
--compile exactly as the run would use them, on random token ids (memory and speed do not depend on
the text) - and reports each size's peak memory and tokens/s. It stops at the first size that does
not fit (CUDA: `torch.OutOfMemoryError`, caught; the memory is freed before the report) and suggests
--batch-size and --grad-accum that keep the command's effective batch.

What "peak memory" is:
* CUDA: `torch.cuda.max_memory_allocated` - every tensor PyTorch held at the worst moment (weights,
  gradients, optimiser moments, activations), reset before each size; the caching allocator
  reserves a little more.
* CPU: the peak resident memory of this process (`ru_maxrss`: Python, PyTorch, the model and the
  activations, as the operating system counts it). It never goes down, but the sizes only grow,
  so each row shows that size's peak. A CPU has no catchable out-of-memory (the operating system
  ends the process), so a size is not tried when the last one's growth, doubled, would not fit in
  the memory that was available at the start.

It builds (or reuses) the data set like --train, because the vocabulary size comes from the
tokenizer, and writes no run directory.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from src.cli.common import EXIT_OK, UsageError, check_fits, name_the_flag

HEADROOM = 0.9  # suggest only sizes whose peak stays below this share of the device's memory
TIMED_STEPS = 2  # optimiser steps timed per size, after one untimed warm-up step


@dataclass
class SizeResult:
    batch_size: int
    peak_bytes: int | None  # None: did not fit
    tokens_per_sec: float | None


def candidate_sizes(effective: int) -> list[int]:
    """Micro-batch sizes to try: powers of two up to the effective batch, and the effective batch itself.

    Example: candidate_sizes(48) -> [1, 2, 4, 8, 16, 32, 48]; candidate_sizes(8) -> [1, 2, 4, 8].
    """
    sizes = [2**k for k in range(effective.bit_length()) if 2**k <= effective]
    return sizes if sizes[-1] == effective else [*sizes, effective]


def suggest(results: list[SizeResult], effective: int, capacity: int | None) -> tuple[int, int] | None:
    """(--batch-size, --grad-accum) with batch x accum = `effective`: the largest micro-batch that fit,
    divides the effective batch and (when `capacity` is known) peaked below HEADROOM of it; None if none.

    Example: sizes 1..16 fit, 32 did not, effective 32 -> (16, 2).
    """
    fitting = [r.batch_size for r in results if r.peak_bytes is not None and effective % r.batch_size == 0
               and (capacity is None or r.peak_bytes <= HEADROOM * capacity)]
    if not fitting:
        return None
    batch = max(fitting)
    return batch, effective // batch


def try_sizes(sizes: list[int], measure: Callable[[int], tuple[int, float]],
              too_big: Callable[[int, SizeResult], str | None] | None = None) -> tuple[list[SizeResult], str]:
    """Measure each size in turn, print its row, and stop at the first out-of-memory (recorded as a row
    without numbers) or when `too_big(size, last result)` gives a reason; returns (results, why it stopped).

    `measure(size)` returns (peak bytes, tokens/s) or raises the device's out-of-memory error.
    """
    results: list[SizeResult] = []
    for size in sizes:
        reason = too_big(size, results[-1]) if too_big is not None and results else None
        if reason is not None:
            return results, reason
        try:
            peak, speed = measure(size)
        except (RuntimeError, MemoryError) as err:
            if not _is_out_of_memory(err):
                raise
            results.append(SizeResult(size, None, None))
            print(f"| {size} | out of memory | - |", flush=True)
            return results, f"{size} did not fit (out of memory)"
        results.append(SizeResult(size, peak, speed))
        print(f"| {size} | {_gb(peak)} | {speed:,.0f} |", flush=True)
    return results, "every size up to the effective batch fit"


def _gb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e9:.2f} GB"  # 0: not measured (no peak RSS on Windows)


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: torch >= 2.5
    return isinstance(err, (oom, MemoryError)) or (isinstance(err, RuntimeError) and (
        "out of memory" in str(err) or "can't allocate memory" in str(err)))


def _cpu_peak_rss() -> int:
    try:
        import resource
    except ImportError:  # Windows: no peak RSS without extra packages
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux kilobytes


def run_find_batch_size(args: argparse.Namespace, flags: dict[str, str]) -> int:
    """The --find-batch-size report; returns the exit code."""
    import torch

    from src.cli.init_from import load_init_from
    from src.cli.settings import resolve_settings
    from src.cli.train import maybe_compile
    from src.config import ModelConfig
    from src.dataset import prepare_dataset
    from src.model import MiniTransformer
    from src.tokenizer_json import load_tokenizer
    from src.training.train_loop import LRSchedule, build_optimizer, train
    from src.training.utils import (
        dtype_reason,
        enable_tf32,
        free_memory,
        resolve_device,
        resolve_precision,
    )

    if args.resume:
        raise UsageError("--find-batch-size: not with --resume (a resumed run keeps its --batch-size and "
                         "--grad-accum); use it with the settings of a new run")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--find-batch-size: run it as one process (without torchrun); it measures one device, "
                         "and --batch-size is per device")
    settings = resolve_settings(args, flags)
    train_cfg = settings.train
    init = load_init_from(args, flags, settings, None)
    try:
        device = resolve_device(train_cfg.device)
        precision = resolve_precision(train_cfg.dtype, device)
    except ValueError as err:
        raise UsageError(name_the_flag(str(err), flags)) from None
    why = dtype_reason(train_cfg.dtype, device)
    enable_tf32(device)
    prepared = prepare_dataset(settings.data, block_size=settings.model.get("block_size", 256),
                               show_progress=not args.quiet, tokenizer=init.tokenizer if init else None)
    vocab_size = load_tokenizer(prepared.path / "tokenizer.json").vocab_size
    model_cfg = ModelConfig(vocab_size=vocab_size, **settings.model)
    check_fits(model_cfg, device, flags)  # will it fit at all? Before any weight is allocated
    model = MiniTransformer(model_cfg).to(device)
    forward = maybe_compile(model, train_cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    effective = train_cfg.batch_size * train_cfg.grad_accum
    T = model_cfg.block_size

    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
        what = "torch.cuda.max_memory_allocated (all tensors: weights, gradients, optimiser, activations)"
    else:
        available = free_memory(torch.device("cpu"))  # the CPU, and the unified memory of an Apple GPU
        capacity = None if available is None else _cpu_peak_rss() + available
        what = "the peak resident memory of this process (Python, PyTorch, model and activations)"
    print(f"Will it fit? {model.num_parameters() / 1e6:.2f} M parameters, block_size {T}, {precision.name} ({why}), "
          f"device {device}{', torch.compile' if forward is not None else ''}; the command's effective batch: "
          f"{effective} sequences (--batch-size {train_cfg.batch_size} x --grad-accum {train_cfg.grad_accum}).")
    print(f"Each size: {1 + TIMED_STEPS} optimiser steps of the training loop on random tokens (the first not "
          f"timed); peak memory = {what}" + (f", of {_gb(capacity)}" if capacity else "") + ".\n")
    print("| --batch-size | peak memory | tokens/s |\n|---|---|---|", flush=True)

    baseline = _cpu_peak_rss() if device.type == "cpu" else 0

    def measure(size: int) -> tuple[int, float]:
        """(peak bytes, tokens/s) of `size` sequences per step; raises on out-of-memory (memory freed)."""
        config = replace(train_cfg, batch_size=size, grad_accum=1, warmup_steps=0)
        optimizer = build_optimizer(model, config, device)
        x = torch.randint(vocab_size, (size, T), device=device)  # (B, T)
        batches = itertools.repeat((x, torch.roll(x, -1, dims=1)))  # (B, T), (B, T)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for step, count in ((0, 1), (1, TIMED_STEPS)):  # one warm-up step, then the timed ones
                started = time.perf_counter()
                train(model, optimizer, batches, lambda: None, config, LRSchedule.plan(config, step + count),
                      start_step=step, precision=precision, scaler=scaler, forward=forward)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _cpu_peak_rss()
            return peak, TIMED_STEPS * size * T / seconds
        finally:  # after an out-of-memory too: free gradients, optimiser moments and cached blocks
            optimizer.zero_grad(set_to_none=True)
            del optimizer, batches, x
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def too_big(size: int, previous: SizeResult) -> str | None:
        """CPU: the growth over the start (model, optimiser, activations) scaled to `size` - an
        overestimate, since only the activations grow with the batch - must fit."""
        if device.type != "cpu" or capacity is None:
            return None
        predicted = baseline + (previous.peak_bytes - baseline) * size // previous.batch_size
        if predicted > HEADROOM * capacity:
            return f"stopped before {size}: it would need about {_gb(predicted)} of {_gb(capacity)}"
        return None

    results, stopped = try_sizes(candidate_sizes(effective), measure, too_big)
    print(f"\n{stopped.capitalize()}.")
    choice = suggest(results, effective, capacity)
    if choice is None:
        print(f"Not even --batch-size 1 fits with {int(100 * HEADROOM)}% of the memory: use a smaller --block-size "
              "or model (--n-layer, --n-embd), or --dtype bf16.")
        return EXIT_OK
    batch, accum = choice
    peak = next(r.peak_bytes for r in results if r.batch_size == batch)
    print(f"Suggestion: --batch-size {batch} --grad-accum {accum} (effective batch {batch * accum} sequences as in "
          f"this command; peak {_gb(peak)}" + (f" of {_gb(capacity)}" if capacity else "") + ").")
    return EXIT_OK
