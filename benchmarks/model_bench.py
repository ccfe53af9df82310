"""Benchmark our MiniTransformer against Hugging Face `GPT2LMHeadModel` of exactly the same shape.

Both are GPT-2: learned positions, pre-LN blocks, GELU (tanh approximation), fused q/k/v projection,
LM head tied to the token embedding. We build the HF model from the same numbers (n_layer, n_head,
n_embd, block_size, vocab_size, dropout 0), copy our weights into it and check that both give the
same logits, so every difference in speed comes from the implementation, not from the model.

Measured side by side in one run (repetitions interleaved, medians reported, because a shared
machine is noisy and numbers from different runs are not comparable):

1. Training step throughput (issue 15), ours exactly as a run takes its steps - the learner's loop
   `train_loop.train` with `Precision.autocast`, the fused AdamW of `build_optimizer`, clipping - vs
   HF's GPT2LMHeadModel stepped by hand the same way (autocast, clipping, fused AdamW as HF's Trainer
   uses by default): fp32 vs fp32 and bf16 vs bf16 (target >= 1.0x), ours with `--dtype auto` vs HF
   fp32 (bf16 on a CPU with AVX512-BF16/AMX: target >= 1.7x), and on CUDA ours bf16 + torch.compile
   vs HF bf16 eager (target >= 1.3x; the time to the first, compiling step printed apart). From it the
   achieved FLOP/s (`MiniTransformer.flops_per_token()` x tokens/s) and, with a known or given bf16
   peak, the MFU (model FLOPs utilisation, PaLM paper, Chowdhery et al. 2022, appendix B).
   --attention-table adds one plain step of ours sdpa/manual vs HF sdpa/eager attention;
   --lm-head-padding times the LM head alone with V and V padded to a multiple of 64.
2. Greedy generation, batch 1, N new tokens (default 200) from the same prompt: ours with the KV
   cache vs HF `generate` with its cache, in fp32 and with the weights cast to bf16
   (`model.to(torch.bfloat16)`); tokens/s and ours / HF.
3. KV cache vs no cache until the sequence fills block_size: ours and HF, the speed-up of each.

Ratios are medians over rounds of the two times measured back to back in the same round (A B A B),
so a slow phase of a shared machine hits both sides of a ratio alike.

    python -m benchmarks.model_bench [--device cpu|cuda] [--preset tiny|small|default] [--threads N]
    python -m benchmarks.model_bench --preset default --batch-size 8 --skip-generation   # training only
    python -m benchmarks.model_bench --preset default --skip-training   # generation only
    python -m benchmarks.model_bench --device cuda --n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 \
        --vocab-size 50257 --batch-size 8 --skip-generation           # GPT-2 small on a GPU, with MFU
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from src.cli.settings import PRESETS
from src.config import ModelConfig, TrainConfig
from src.model import MiniTransformer
from src.training.train_loop import LRSchedule, build_optimizer, train
from src.training.utils import FP32, Precision, auto_precision_name, enable_tf32, resolve_precision

DEFAULT_BATCH_SIZE = next(f.default for f in fields(TrainConfig) if f.name == "batch_size")


# ---------------------------------------------------------------------------------------------------
# Building the two models
# ---------------------------------------------------------------------------------------------------

def model_config(preset: str, vocab_size: int, attention: str, block_size: int | None,
                 **overrides: int | None) -> ModelConfig:
    """The preset's shape from src/main.py with dropout 0 (HF and we then compute the same thing);
    `block_size` and `overrides` (n_layer, n_head, n_embd) replace the preset's values where not None."""
    shape = {k: v for k, v in PRESETS[preset].items() if k in ("n_layer", "n_head", "n_embd", "block_size")}
    for name, value in {"block_size": block_size, **overrides}.items():
        if value is not None:
            shape[name] = value
    return ModelConfig(vocab_size=vocab_size, dropout=0.0, attention=attention, **shape)


def import_transformers():
    try:
        import transformers
    except ImportError:
        sys.exit("error: this benchmark needs Hugging Face transformers: pip install -r requirements-dev.txt")
    return transformers


def build_hf(config: ModelConfig, attn_implementation: str) -> nn.Module:
    """GPT2LMHeadModel with our shape: GELU-tanh (fused kernel, like our nn.GELU), no dropout, tied head."""
    transformers = import_transformers()
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu_pytorch_tanh", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None, attn_implementation=attn_implementation,
    )
    return transformers.GPT2LMHeadModel(hf_config)


@torch.no_grad()
def copy_weights_to_hf(ours: MiniTransformer, hf: nn.Module) -> None:
    """Our nn.Linear stores (out, in), HF's Conv1D (in, out): the same matrices, transposed."""
    t = hf.transformer
    t.wte.weight.copy_(ours.embeddings.token_embedding.weight)  # the tied LM head follows
    t.wpe.weight.copy_(ours.embeddings.position_embedding.weight)
    for ours_block, hf_block in zip(ours.blocks, t.h, strict=True):
        pairs = [(ours_block.ln_1, hf_block.ln_1), (ours_block.ln_2, hf_block.ln_2)]
        linears = [(ours_block.attn.c_attn, hf_block.attn.c_attn), (ours_block.attn.c_proj, hf_block.attn.c_proj),
                   (ours_block.mlp.c_fc, hf_block.mlp.c_fc), (ours_block.mlp.c_proj, hf_block.mlp.c_proj)]
        for src, dst in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        for src, dst in linears:
            dst.weight.copy_(src.weight.t())
            dst.bias.copy_(src.bias)
    t.ln_f.weight.copy_(ours.ln_f.weight)
    t.ln_f.bias.copy_(ours.ln_f.bias)


@torch.no_grad()
def max_logit_difference(ours: MiniTransformer, hf: nn.Module, idx: torch.Tensor) -> float:
    ours.eval()
    hf.eval()
    return (ours(idx)[0] - hf(input_ids=idx).logits).abs().max().item()  # (B, T, V) each


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """One row of a table: a name and a function doing one unit of work (`work` tokens)."""

    name: str
    run: Callable[[], object]
    work: int  # tokens processed (training) or generated (inference) per call
    seconds: list[float] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_sec(self) -> float:
        return self.work / self.median_seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_interleaved(variants: list[Variant], repeats: int, calls: int, warmup: int, device: torch.device) -> None:
    """Time every variant `repeats` times (`calls` calls each), rotating the order each round.

    Interleaving spreads slow phases of a shared machine over all variants instead of hitting the
    one that happened to run during them; the median then ignores the outliers.
    """
    for variant in variants:
        for _ in range(warmup):
            variant.run()
    for r in range(repeats):
        for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                variant.run()
            synchronize(device)
            variant.seconds.append((time.perf_counter() - start) / calls)


def paired_speedup(variant: Variant, reference: Variant) -> float:
    """How many times faster `variant` is than `reference`: the median over rounds of the ratio of
    their times in the same round (measure_interleaved runs them back to back)."""
    return statistics.median(r / v for v, r in zip(variant.seconds, reference.seconds, strict=True))


# ---------------------------------------------------------------------------------------------------
# 1. Training step
# ---------------------------------------------------------------------------------------------------

def make_train_step(model: nn.Module, is_hf: bool, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None,
                    device: torch.device) -> Callable[[], torch.Tensor]:
    """forward + mean cross-entropy over all B*T positions + backward + AdamW, identically for both.

    The loss is computed here for HF as well (not via `labels=`, which drops the last position), so
    both do exactly the same work.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    model.train()

    def loss_fn() -> torch.Tensor:
        if is_hf:
            logits = model(input_ids=x).logits  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return model(x, y)[1]

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_loop_steps(model: MiniTransformer, x: torch.Tensor, y: torch.Tensor, precision: Precision, steps: int,
                    device: torch.device, forward: nn.Module | None = None) -> Callable[[], None]:
    """`steps` optimiser steps of ours exactly as a run takes them: the learner's loop
    (`train_loop.train`: learning rate, autocast via `Precision.autocast`, backward, gradient clipping,
    one loss/norm sync per step), the optimiser from `build_optimizer` (fused AdamW), and `forward` a
    `torch.compile` wrapper as `--compile` makes it. Every call continues where the last one stopped."""
    config = TrainConfig(batch_size=x.size(0), lr=1e-4, min_lr=1e-5, warmup_steps=0, grad_clip=1.0)
    optimizer = build_optimizer(model, config, device)
    batches = itertools.repeat((x, y))  # (B, T), (B, T): the same batch, already on the device
    done = [0]

    def run() -> None:
        schedule = LRSchedule.plan(config, done[0] + steps)  # ends after `steps` more steps
        train(model, optimizer, batches, lambda: None, config, schedule, start_step=done[0], precision=precision,
              forward=forward)
        done[0] += steps

    return run


def make_hf_steps(hf: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, steps: int,
                  device: torch.device) -> Callable[[], None]:
    """`steps` steps of GPT2LMHeadModel as a Hugging Face user trains it: autocast, cross-entropy over all
    B*T positions, backward, gradient clipping to 1.0 and the optimiser of HF's Trainer for torch >= 2.8
    (`adamw_torch_fused`), one loss sync per step - the same work as our loop."""
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    hf.train()

    def run() -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = hf(input_ids=x).logits  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            loss.backward()
            nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

    return run


def bench_lm_head_padding(config: ModelConfig, batch: int, repeats: int, device: torch.device) -> None:
    """The LM head alone (forward + cross-entropy + backward) with V rows and with V padded to a multiple
    of 64 (nanoGPT pads GPT-2's 50,257 to 50,304), the padded logits masked to -inf before the loss.

    GPU matrix units work on tiles of 8-128 rows; a V that is not a multiple of them leaves a ragged
    last tile. This measures whether padding would pay before the model gets a flag for it."""
    C, V = config.n_embd, config.vocab_size
    padded = -(-V // 64) * 64
    x = torch.randn(batch * config.block_size, C, device=device)  # (B*T, C)
    y = torch.randint(V, (batch * config.block_size,), device=device)  # (B*T,)
    weight = (0.02 * torch.randn(V, C, device=device)).requires_grad_()  # (V, C), as the tied table
    masked = torch.arange(padded, device=device) >= V  # (V_pad,)

    def head(pad: bool, dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                w = F.pad(weight, (0, 0, 0, padded - V)) if pad else weight  # (V_pad, C) or (V, C)
                logits = F.linear(x, w).float()  # (B*T, V_pad) or (B*T, V)
                if pad:
                    logits = logits.masked_fill(masked, float("-inf"))  # padded ids can never be predicted
                loss = F.cross_entropy(logits, y)
            loss.backward()
            weight.grad = None
        return run

    rows = []
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        plain = Variant(f"V = {V}, {name}", head(False, dtype), batch * config.block_size)
        pad = Variant(f"V padded to {padded}, {name}", head(True, dtype), batch * config.block_size)
        measure_interleaved([plain, pad], repeats, 3, warmup=1, device=device)
        rows += [(pad, plain), (plain, None)]
    print(f"\n## LM head alone (forward + cross-entropy + backward), B*T = {batch * config.block_size}, C = {C}; "
          f"median of {repeats} interleaved rounds\n")
    print("| LM head | tokens/s | ms per call | padded / plain |\n|---|---|---|---|")
    for variant, reference in rows:
        ratio = f"{paired_speedup(variant, reference):.2f}x" if reference else ""
        print(f"| {variant.name} | {variant.tokens_per_sec:,.0f} | {1000 * variant.median_seconds:.2f} | {ratio} |")


# ---------------------------------------------------------------------------------------------------
# 2. Generation
# ---------------------------------------------------------------------------------------------------

def make_hf_generate(
    hf: nn.Module, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> Callable[[], torch.Tensor]:
    transformers = import_transformers()
    generation_config = transformers.GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
        pad_token_id=0, eos_token_id=None, bos_token_id=None,
    )
    attention_mask = torch.ones_like(prompt)
    return lambda: hf.generate(prompt, attention_mask=attention_mask, generation_config=generation_config)


# ---------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------

def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} logical cores"


def format_si(value: float, unit: str) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def training_table(rows: list[tuple[Variant, Variant | None]], flops_per_token: int, peak_tflops: float | None) -> str:
    head = "| training step | tokens/s | ms/step | achieved FLOP/s |"
    sep = "|---|---|---|---|"
    if peak_tflops:
        head, sep = head + " MFU |", sep + "---|"
    head, sep = head + " ours / HF |", sep + "---|"
    lines = [head, sep]
    for variant, reference in rows:
        flops = variant.tokens_per_sec * flops_per_token
        line = (f"| {variant.name} | {variant.tokens_per_sec:,.0f} | {1000 * variant.median_seconds:.1f} | "
                f"{format_si(flops, 'FLOP/s')} |")
        if peak_tflops:
            line += f" {100 * flops / (peak_tflops * 1e12):.1f} % |"
        ratio = f"{variant.tokens_per_sec / reference.tokens_per_sec:.2f}x {reference.name}" if reference else ""
        lines.append(line + f" {ratio} |")
    return "\n".join(lines)


def generation_table(rows: list[tuple[Variant, Variant | None]], ratio_header: str = "ours / HF") -> str:
    """One row per variant; the ratio column compares it with its reference, paired per round."""
    lines = [f"| greedy generation | tokens/s | ms/token | {ratio_header} |", "|---|---|---|---|"]
    for variant, reference in rows:
        ratio = f"{paired_speedup(variant, reference):.2f}x {reference.name}" if reference else ""
        lines.append(f"| {variant.name} | {variant.tokens_per_sec:,.0f} | "
                     f"{1000 * variant.median_seconds / variant.work:.2f} | {ratio} |")
    return "\n".join(lines)


def same_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading positions where two (1, T) token sequences agree."""
    differ = (a != b).flatten().nonzero()
    return a.numel() if differ.numel() == 0 else int(differ[0])


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (default: auto = cuda if available, else cpu)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="model shape from src/main.py PRESETS (default: tiny; 'default' = RTX 4080 shape)")
    parser.add_argument("--vocab-size", type=int, default=121, help="vocabulary size V (default: 121, a char vocab)")
    parser.add_argument("--block-size", type=int, default=None, help="override the preset's block size T")
    parser.add_argument("--n-layer", type=int, default=None, help="override the preset's n_layer")
    parser.add_argument("--n-head", type=int, default=None, help="override the preset's n_head")
    parser.add_argument("--n-embd", type=int, default=None,
                        help="override the preset's n_embd (GPT-2 small: --n-layer 12 --n-head 12 --n-embd 768 "
                             "--block-size 1024 --vocab-size 50257)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"training batch B (default: the preset's, else {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="autocast dtype of --attention-table, the same for both models (default: fp32)")
    parser.add_argument("--attention-table", action="store_true",
                        help="also time one step of ours sdpa/manual against HF sdpa/eager attention")
    parser.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                        help="time ours bf16 + torch.compile (auto: on CUDA only; on a CPU compiling takes "
                             "minutes and did not pay here)")
    parser.add_argument("--lm-head-padding", action="store_true",
                        help="also time the LM head alone with V and with V padded to a multiple of 64")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads for CPU runs (default: 1, the most reproducible on a shared "
                             f"machine; this one has {os.cpu_count()} logical cores)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="interleaved timing rounds; medians reported (default: 7)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round and variant (default: 3)")
    parser.add_argument("--new-tokens", type=int, default=200,
                        help="tokens to generate (default: 200, capped so prompt + new tokens fit in block_size)")
    parser.add_argument("--prompt-length", type=int, default=8, help="prompt tokens for generation (default: 8)")
    parser.add_argument("--peak-size", type=int, default=2048, metavar="N",
                        help="matrix size of the product that measures the matmul peak (default: 2048)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak TFLOP/s, to print MFU (default: looked up for known "
                             "GPUs, e.g. RTX 4080 ~97.5 with fp32 accumulate, H100/H200 SXM 989)")
    parser.add_argument("--skip-training", action="store_true",
                        help="only the generation tables (the training table takes minutes at --preset default)")
    parser.add_argument("--skip-generation", action="store_true", help="only the training tables")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("vocab_size", "threads", "repeats", "steps", "new_tokens", "prompt_length", "batch_size",
                 "n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops must be a positive number, got {args.peak_tflops}")
    return args


def bench_attention_implementations(ours: dict[str, MiniTransformer], hf: dict[str, nn.Module], batch: int,
                                    args: argparse.Namespace, device: torch.device) -> None:
    """--attention-table: one training step (plain AdamW, no loop) of ours sdpa/manual and HF sdpa/eager."""
    cfg = ours["sdpa"].config
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device=device)  # (B, T)
    y = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device=device)  # (B, T)
    tokens = batch * cfg.block_size
    ours_sdpa, ours_manual, hf_sdpa, hf_eager = (
        Variant(name, make_train_step(model, is_hf, x, y, dtype, device), tokens)
        for name, model, is_hf in (("ours sdpa", ours["sdpa"], False), ("ours manual", ours["manual"], False),
                                   ("HF sdpa", hf["sdpa"], True), ("HF eager", hf["eager"], True))
    )
    start = time.perf_counter()
    measure_interleaved([ours_sdpa, ours_manual, hf_sdpa, hf_eager], args.repeats, args.steps, warmup=2, device=device)
    print(f"\n## Attention implementations, one training step: B={batch}, T={cfg.block_size}, {tokens:,} tokens/step, "
          f"AdamW, {args.dtype}; median of {args.repeats} interleaved rounds x {args.steps} steps "
          f"({time.perf_counter() - start:.0f} s)\n")
    rows = [(ours_sdpa, hf_sdpa), (ours_manual, hf_eager), (hf_sdpa, None), (hf_eager, None)]
    print(training_table(rows, ours["sdpa"].flops_per_token(), args.peak_tflops))


# Dense bf16 peak TFLOP/s (tensor cores, fp32 accumulate) from the vendors' spec sheets, for MFU.
KNOWN_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "RTX 4090": 165.2, "RTX 4080": 97.5,
                          "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, repeats: int = 5) -> float:
    """FLOP/s of one large square matrix product (size x size x size) in `dtype`, best of `repeats`:
    what this device's matrix kernels reach here and now, with the benchmark's threads - the practical
    limit for a training step, whose FLOPs are nearly all such products (on a CPU with AMX the bf16
    limit is several times the fp32 one; without native bf16, bf16 is emulated and below fp32)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=generator, device=device).to(dtype)
    b = torch.randn(size, size, generator=generator, device=device).to(dtype)
    best = math.inf
    for i in range(repeats + 1):  # the first one only warms the kernel up
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i > 0:
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """--peak-tflops, else the table's value for this GPU's name (H100 PCIe is lower: pass it), else None."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in KNOWN_PEAK_BF16_TFLOPS.items() if key in name), None)


def bench_training(ours: MiniTransformer, hf: nn.Module, batch: int, args: argparse.Namespace,
                   device: torch.device) -> None:
    """Table 1 (issue 15): our training step as the loop runs it against HF's, paired per round.

    Rows: fp32 vs fp32 and bf16 vs bf16 (the same dtype: target >= 1.0x), ours with --dtype auto vs HF
    fp32 (bf16 on a CPU with AVX512-BF16/AMX: target >= 1.7x), and - on CUDA, or with --compile yes -
    ours bf16 + torch.compile vs HF bf16 eager (target >= 1.3x on a GPU).
    """
    cfg = ours.config
    x = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device=device)  # (B, T)
    y = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device=device)  # (B, T)
    work = args.steps * batch * cfg.block_size
    bf16 = resolve_precision("bf16", device)
    auto_name, why = auto_precision_name(device)
    variants = {
        "ours fp32": Variant("ours fp32", make_loop_steps(copy.deepcopy(ours), x, y, FP32, args.steps, device), work),
        "HF fp32": Variant("HF fp32", make_hf_steps(copy.deepcopy(hf), x, y, None, args.steps, device), work),
        "ours bf16": Variant("ours bf16", make_loop_steps(copy.deepcopy(ours), x, y, bf16, args.steps, device), work),
        "HF bf16": Variant("HF bf16", make_hf_steps(copy.deepcopy(hf), x, y, torch.bfloat16, args.steps, device),
                           work),
    }
    compile_it = args.compile == "yes" or (args.compile == "auto" and device.type == "cuda")
    first_step = None
    if compile_it:
        model = copy.deepcopy(ours)
        compiled = torch.compile(model)
        synchronize(device)
        start = time.perf_counter()
        make_loop_steps(model, x, y, bf16, 1, device, forward=compiled)()  # the first step compiles
        synchronize(device)
        first_step = time.perf_counter() - start
        variants["ours bf16 + compile"] = Variant(
            "ours bf16 + compile", make_loop_steps(model, x, y, bf16, args.steps, device, forward=compiled), work)
    start = time.perf_counter()
    measure_interleaved(list(variants.values()), args.repeats, 1, warmup=1, device=device)
    v = variants
    auto = v["ours bf16"] if auto_name == "bf16" else v["ours fp32"]
    auto_target = ">= 1.7x (a CPU with native bf16)" if device.type == "cpu" and auto_name == "bf16" else (
        "n/a: fp32 here" if auto_name == "fp32" else "")
    rows = [("fp32 vs fp32", v["ours fp32"], v["HF fp32"], ">= 1.0x"),
            ("bf16 autocast vs bf16 autocast", v["ours bf16"], v["HF bf16"], ">= 1.0x"),
            (f"ours --dtype auto ({auto_name}: {why}) vs HF fp32", auto, v["HF fp32"], auto_target)]
    if compile_it:
        rows.append(("ours bf16 + torch.compile vs HF bf16 eager", v["ours bf16 + compile"], v["HF bf16"],
                     ">= 1.3x (GPU)"))
    print(f"## Training step: B={batch}, T={cfg.block_size}, {batch * cfg.block_size:,} tokens/step; median of "
          f"{args.repeats} interleaved rounds x {args.steps} steps ({time.perf_counter() - start:.0f} s)")
    print("ours: the learner's loop (train_loop.train, Precision.autocast, fused AdamW from build_optimizer, "
          "clipping); HF: GPT2LMHeadModel (sdpa), autocast, clipping, fused AdamW (HF Trainer's default)"
          + ("; fp32 matmuls in TF32 on both (enable_tf32, as --train does)" if device.type == "cuda" else "") + "\n")
    print("| training step | ours tokens/s | HF tokens/s | ours / HF | target |\n|---|---|---|---|---|")
    for name, mine, theirs, target in rows:
        print(f"| {name} | {mine.tokens_per_sec:,.0f} | {theirs.tokens_per_sec:,.0f} | "
              f"{paired_speedup(mine, theirs):.2f}x | {target} |")
    if not compile_it:
        print("| ours bf16 + torch.compile vs HF bf16 eager | skipped: CUDA only (--compile yes to time it here) "
              "| | | >= 1.3x (GPU) |")
    flops = ours.flops_per_token()
    peak = peak_tflops(device, args.peak_tflops)
    achieved = ", ".join(f"{name} {format_si(variant.tokens_per_sec * flops, 'FLOP/s')}"
                         + (f" = {100 * variant.tokens_per_sec * flops / (peak * 1e12):.1f} % MFU"
                            if peak and "bf16" in name else "")
                         for name, variant in variants.items())
    print(f"\nachieved ({flops:,} FLOPs/token" + (f", bf16 peak {peak:g} TFLOP/s" if peak else "") + f"): {achieved}")
    fractions = []
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        limit = matmul_peak(dtype, device, args.peak_size)
        fractions.append(f"{name} {format_si(limit, 'FLOP/s')}: ours {name} at "
                         f"{100 * v[f'ours {name}'].tokens_per_sec * flops / limit:.1f} %")
    print(f"fraction of the measured matmul peak ({args.peak_size}^3 products, best of 5, "
          f"{torch.get_num_threads()} thread(s)): {'; '.join(fractions)}")
    if first_step is not None:
        print(f"time to the first step with torch.compile (compiling): {first_step:.1f} s")


def bench_generation(model: MiniTransformer, hf: nn.Module, args: argparse.Namespace, device: torch.device) -> None:
    """Tables 2 and 3: greedy generation from the same prompt, batch 1, sdpa attention."""
    cfg = model.config
    prompt_length = min(args.prompt_length, cfg.block_size - 1)
    prompt = torch.randint(cfg.vocab_size, (1, prompt_length), device=device)  # (1, T)

    def greedy(m: MiniTransformer, n: int, use_cache: bool = True) -> Callable[[], torch.Tensor]:
        return lambda: m.generate(prompt, n, temperature=0.0, use_cache=use_cache)

    # Table 2: ours vs HF generate, both with their KV cache, in fp32 and with bf16 weights.
    new_tokens = min(args.new_tokens, cfg.block_size - prompt_length)  # HF has no sliding window
    ours_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    ours = Variant("ours, KV cache", greedy(model, new_tokens), new_tokens)
    ours_b = Variant("ours, KV cache, bf16 weights", greedy(ours_bf16, new_tokens), new_tokens)
    theirs = Variant("HF generate, cache", make_hf_generate(hf, prompt, new_tokens, True), new_tokens)
    theirs_b = Variant("HF generate, cache, bf16 weights", make_hf_generate(hf_bf16, prompt, new_tokens, True),
                       new_tokens)
    same_hf = torch.equal(ours.run(), theirs.run())
    bf16_agree = same_prefix(ours_b.run()[:, prompt_length:], ours.run()[:, prompt_length:])
    start = time.perf_counter()
    with torch.no_grad():
        measure_interleaved([ours, theirs, ours_b, theirs_b], args.repeats, 1, warmup=1, device=device)
    capped = " (capped: prompt + new tokens must fit in block_size)" if new_tokens < args.new_tokens else ""
    print(f"\n## Greedy generation with KV cache: batch 1, prompt {prompt_length} tokens, {new_tokens} new "
          f"tokens{capped}, sdpa attention; median of {args.repeats} interleaved rounds "
          f"({time.perf_counter() - start:.0f} s)\n")
    print(generation_table([(ours, theirs), (ours_b, theirs), (ours_b, theirs_b), (theirs, None), (theirs_b, None)]))
    print(f"\nsame tokens, ours vs HF (fp32): "
          f"{'yes' if same_hf else 'no (float rounding can flip an argmax of near-equal logits)'}; "
          f"bf16 weights vs fp32: the first {bf16_agree} of {new_tokens} new tokens agree"
          + (" (an untrained model's logits are nearly tied: rounding can pick another token)"
             if bf16_agree < new_tokens else ""))

    # Table 3: the cache against recomputing everything, until the sequence fills block_size.
    long_tokens = cfg.block_size - prompt_length
    ours_cache = Variant("ours, KV cache", greedy(model, long_tokens), long_tokens)
    ours_plain = Variant("ours, no cache", greedy(model, long_tokens, use_cache=False), long_tokens)
    hf_cache = Variant("HF generate, cache", make_hf_generate(hf, prompt, long_tokens, True), long_tokens)
    hf_plain = Variant("HF generate, no cache", make_hf_generate(hf, prompt, long_tokens, False), long_tokens)
    same_ours = torch.equal(ours_cache.run(), ours_plain.run())
    start = time.perf_counter()
    with torch.no_grad():
        measure_interleaved([ours_cache, ours_plain, hf_cache, hf_plain], args.repeats, 1, warmup=0, device=device)
    print(f"\n## KV cache vs no cache: prompt {prompt_length} + {long_tokens} new tokens = block_size "
          f"{cfg.block_size}, fp32; median of {args.repeats} interleaved rounds "
          f"({time.perf_counter() - start:.0f} s)\n")
    print(generation_table([(ours_cache, ours_plain), (ours_plain, None), (hf_cache, hf_plain), (hf_plain, None)],
                           ratio_header="cache / no cache"))
    print(f"\nsame tokens, ours with vs without cache: {'yes' if same_ours else 'NO'}; "
          f"ours with cache vs HF with cache: {paired_speedup(ours_cache, hf_cache):.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is available; use --device cpu", file=sys.stderr)
        return 2
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    enable_tf32(device)  # as --train does: on CUDA fp32 matmuls use TF32 (for HF as well)
    transformers = import_transformers()
    transformers.logging.set_verbosity_error()
    try:
        configs = {a: model_config(args.preset, args.vocab_size, a, args.block_size, n_layer=args.n_layer,
                                   n_head=args.n_head, n_embd=args.n_embd) for a in ("sdpa", "manual")}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cfg = configs["sdpa"]
    batch = args.batch_size or PRESETS[args.preset].get("batch_size", DEFAULT_BATCH_SIZE)

    # Identical starting weights everywhere: ours manual loads ours sdpa, HF gets a transposed copy.
    ours = {a: MiniTransformer(c).to(device) for a, c in configs.items()}
    ours["manual"].load_state_dict(ours["sdpa"].state_dict())
    hf = {impl: build_hf(cfg, impl).to(device) for impl in ("sdpa", "eager")}
    for model in hf.values():
        copy_weights_to_hf(ours["sdpa"], model)
    probe = torch.randint(cfg.vocab_size, (4, cfg.block_size), device=device)  # (B, T)
    diffs = {impl: max_logit_difference(ours["sdpa"], model, probe) for impl, model in hf.items()}

    threads = f", torch.set_num_threads({args.threads})" if device.type == "cpu" else ""
    print(f"# model_bench {datetime.date.today().isoformat()}")
    print(f"machine: {machine_description(device)}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}{threads}")
    print(f"model: preset {args.preset}: n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"block_size={cfg.block_size} vocab_size={cfg.vocab_size} dropout=0; "
          f"{ours['sdpa'].num_parameters():,} parameters (HF: {sum(p.numel() for p in hf['sdpa'].parameters()):,})")
    print("same logits as HF after copying the weights: max |difference| "
          + ", ".join(f"{d:.1e} ({impl})" for impl, d in diffs.items()))
    print(f"flops_per_token() = {ours['sdpa'].flops_per_token():,} (training, forward + backward)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if device.type == "cpu" and args.threads > 1 and load > (os.cpu_count() or 1):
        print(f"note: the machine is busy (load average {load:.1f} on {os.cpu_count()} cores); with more threads "
              "than free cores every parallel operation waits for a descheduled thread - try --threads 1")
    print()

    if not args.skip_training:
        bench_training(ours["sdpa"], hf["sdpa"], batch, args, device)  # on copies: these stay as they are
        if args.attention_table:
            bench_attention_implementations(ours, hf, batch, args, device)
            # Training changed the weights differently in each model: copy ours into HF again.
            copy_weights_to_hf(ours["sdpa"], hf["sdpa"])
        if args.lm_head_padding:
            bench_lm_head_padding(cfg, batch, args.repeats, device)
    if not args.skip_generation:
        ours["sdpa"].eval()
        hf["sdpa"].eval()
        print()
        bench_generation(ours["sdpa"], hf["sdpa"], args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
