"""Train a small GPT on one text file, core only: `python examples/train_minimal.py TEXT [--steps N]`.

Character tokenizer, random training windows, `MiniTransformer`, `build_optimizer`, `LRSchedule` and
the loop `train()` - no run directory, checkpoints or TensorBoard (`python -m src.main --train` wraps
the same loop in those). The script to copy and change: the schedule, optimiser, what `Printer` prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import src` also when run as a script
from src.config import ModelConfig, TrainConfig  # noqa: E402
from src.model import MiniTransformer  # noqa: E402
from src.tokenizer import CharTokenizer  # noqa: E402
from src.training.train_loop import LRSchedule, StepReport, TrainHooks, build_optimizer, train  # noqa: E402

def random_windows(ids: torch.Tensor, block_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of random windows: x (B, T) and y (B, T), y being x shifted left by one token."""
    while True:
        starts = torch.randint(0, len(ids) - block_size, (batch_size,))
        x = torch.stack([ids[s : s + block_size] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1 : s + block_size + 1] for s in starts])  # (B, T): the next tokens
        yield x, y

@torch.no_grad()
def validation_loss(model: MiniTransformer, ids: torch.Tensor, block_size: int, batches: int = 4) -> float:
    """Mean loss on a few random windows of the validation text, with dropout off."""
    model.eval()
    device, windows = next(model.parameters()).device, random_windows(ids, block_size, batch_size=16)
    loss = sum(model(*(t.to(device) for t in next(windows)))[1].item() for _ in range(batches)) / batches
    model.train()
    return loss

class Printer(TrainHooks):
    """What the loop reports: print a line now and then (add your own prints here)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step(self, report: StepReport) -> None:
        if report.step % self.every == 0 or report.step == 1:
            print(f"step {report.step} loss {report.loss:.4f} lr {report.lr:.2e}", flush=True)

    def on_eval(self, step: int, val_loss: float) -> None:
        print(f"step {step} val loss {val_loss:.4f}", flush=True)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a small GPT on one text file with the core only.")
    parser.add_argument("text_file", type=Path, help="a UTF-8 text file (a few hundred kB is plenty)")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps (default: 500)")
    return parser

def main() -> int:
    args = build_parser().parse_args()
    try:
        text = args.text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:  # one line, not a traceback
        print(f"error: cannot read {args.text_file}: {err}; pass a UTF-8 text file", file=sys.stderr)
        return 2
    if args.steps < 1 or len(text) < 1000:  # the validation tenth must hold a few windows of 64 tokens
        print(f"error: need --steps >= 1 and 1000+ characters ({args.text_file}: {len(text)})", file=sys.stderr)
        return 2
    torch.manual_seed(1337)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # train() moves each batch there

    # 1. Tokenizer: one id per character; 90% of the text to train on, the rest to validate.
    tokenizer = CharTokenizer.train(text, max_vocab_size=256)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(0.9 * len(ids))
    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=128,
                            dropout=0.1)

    # 2. Model and optimiser; the schedule warms up, then decays along a cosine to min_lr.
    train_cfg = TrainConfig(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=min(50, args.steps // 10),
                            eval_interval=max(1, args.steps // 5))
    model = MiniTransformer(model_cfg).to(device)
    optimizer = build_optimizer(model, train_cfg, device)
    schedule = LRSchedule.plan(train_cfg, total_steps=args.steps)
    print(f"{model.num_parameters() / 1e6:.2f} M parameters, {len(ids):,} tokens, {args.steps} steps on {device}",
          flush=True)

    # 3. The loop: batches in, a learning rate per step, the validation loss now and then.
    batches = random_windows(ids[:split], model_cfg.block_size, train_cfg.batch_size)
    train(model, optimizer, batches, lambda: validation_loss(model, ids[split:], model_cfg.block_size),
          train_cfg, schedule, hooks=Printer(every=max(1, args.steps // 10)))

    # 4. What it learned: continue a prompt.
    prompt = torch.tensor([tokenizer.encode(text[:8])], dtype=torch.long, device=device)  # (1, T)
    sample = model.generate(prompt, max_new_tokens=200, temperature=0.8, top_k=50)
    print("sample:\n" + tokenizer.decode(sample[0].tolist()))
    return 0

if __name__ == "__main__":
    sys.exit(main())
