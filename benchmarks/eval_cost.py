"""What one evaluation of a training run costs, part by part, against the training between two of them.

At every evaluation a run does more than measure the validation loss (`src/training/trainer.py`):
`RunLogger` samples text from two prompts (`sample_tokens` each), names the longest verbatim piece of
each sample in the training text (`src/memorization.py`; its index is built at the first evaluation of
a run), and draws attention images (`src/visualization.py:AttentionImageHook`); `CheckpointSaver` writes
`last.pt` (and `best.pt` when the loss improved). This script times each part with the run's own
functions and settings (preset, dtype, batch size, eval_batches, sample_tokens) on the run's data,
and compares it with `eval_interval` training steps of the learner's loop:

    share = one evaluation / (eval_interval steps + one evaluation)

The target of issue 15: <= 10 % at the default settings. A real run prints the same split for its
whole length in its final report ("Time: ... steps, ... evaluations (x %), ... start-up").

    python -m benchmarks.eval_cost --preset tiny --mirror ../shared/corpus/gutenberg
    python -m benchmarks.eval_cost --preset default --steps 3 --mirror ../shared/corpus/gutenberg
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.model_bench import machine_description
from src.cli.common import INSPECT_PROMPT
from src.cli.settings import PRESETS
from src.config import DataConfig, ModelConfig, TrainConfig
from src.dataset import TokenDataset, prepare_dataset
from src.memorization import VerbatimIndex, format_match, training_texts
from src.model import MiniTransformer
from src.tokenizer_json import load_tokenizer
from src.training.callbacks import SAMPLE_PROMPTS, sample_text
from src.training.checkpoints import save_checkpoint
from src.training.evaluation import estimate_loss, validation_sample
from src.training.train_loop import LRSchedule, TrainHooks, build_optimizer, train
from src.training.trainer import epoch_batches, steps_per_epoch_for
from src.training.utils import resolve_precision
from src.visualization import AttentionImageHook


def timed(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class StepTimes(TrainHooks):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step(self, report) -> None:
        self.seconds.append(report.seconds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--mirror", default=None, help="Gutenberg mirror (a folder), as for --train")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--dtype", default="auto", help="as --dtype of --train (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed (after 2 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each evaluation part (median)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    model_keys = {"block_size", "n_layer", "n_head", "n_embd", "dropout"}
    train_cfg = TrainConfig(**{k: v for k, v in preset.items() if k not in model_keys}, dtype=args.dtype,
                            device="cpu" if not torch.cuda.is_available() else "cuda")
    device = torch.device(train_cfg.device)
    precision = resolve_precision(train_cfg.dtype, device)
    data_cfg = DataConfig(mirror=args.mirror, data_dir=args.data_dir)
    model_shape = {k: v for k, v in preset.items() if k in model_keys}
    prepared = prepare_dataset(data_cfg, block_size=model_shape.get("block_size", 256), show_progress=False)
    tokenizer = load_tokenizer(prepared.path / "tokenizer.json")
    model_cfg = ModelConfig(vocab_size=tokenizer.vocab_size, **model_shape)
    torch.manual_seed(train_cfg.seed)
    model = MiniTransformer(model_cfg).to(device)
    optimizer = build_optimizer(model, train_cfg, device)
    train_set = TokenDataset(prepared.path, "train", model_cfg.block_size, seed=train_cfg.seed)
    val_set = TokenDataset(prepared.path, "val", model_cfg.block_size)

    # 1. Training steps, exactly as the run takes them (the learner's loop, its batches and precision).
    steps_per_epoch = steps_per_epoch_for(len(train_set), train_cfg)
    warmup = 2
    schedule = LRSchedule.plan(train_cfg, args.steps + warmup)
    hooks = StepTimes()
    train(model, optimizer, epoch_batches(train_set, train_cfg, steps_per_epoch, 0, device), lambda: None,
          train_cfg, schedule, hooks=hooks, precision=precision)
    step_s = statistics.median(hooks.seconds[warmup:])
    interval_s = train_cfg.eval_interval * step_s

    # 2. The parts of one evaluation.
    sample = validation_sample(len(val_set), train_cfg.eval_batches * train_cfg.batch_size, train_cfg.seed)
    parts: dict[str, float] = {}
    parts["validation loss"] = timed(
        lambda: estimate_loss(model, val_set, sample, train_cfg.batch_size, precision), args.repeats)
    samples = [sample_text(model, tokenizer, p, train_cfg.sample_tokens, device, seed=i)
               for i, p in enumerate(SAMPLE_PROMPTS)]
    parts[f"text samples ({len(SAMPLE_PROMPTS)} x {train_cfg.sample_tokens} tokens)"] = timed(
        lambda: [sample_text(model, tokenizer, p, train_cfg.sample_tokens, device, seed=i)
                 for i, p in enumerate(SAMPLE_PROMPTS)], args.repeats)
    start = time.perf_counter()
    index = VerbatimIndex(training_texts(prepared.path))
    index_s = time.perf_counter() - start
    parts["memorisation check (index built)"] = timed(
        lambda: [format_match(index.longest_match(s)) for s in samples], args.repeats)
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(log_dir=tmp)
        hook = AttentionImageHook(tokenizer, INSPECT_PROMPT, layers=(0, -1))
        parts["attention images (2 layers)"] = timed(lambda: hook(0, model, writer), args.repeats)
        writer.close()
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        parts["checkpoint last.pt (model + optimiser)"] = timed(
            lambda: save_checkpoint(Path(tmp) / "last.pt", payload), args.repeats)
    evaluation_s = sum(parts.values())

    threads = torch.get_num_threads()
    print(f"# eval_cost {datetime.date.today().isoformat()}")
    print(f"machine: {machine_description(device)}, torch {torch.__version__}, {threads} thread(s)")
    print(f"preset {args.preset}: {model.num_parameters():,} parameters, T={model_cfg.block_size}, "
          f"batch {train_cfg.batch_size}, {precision.name}, eval_interval {train_cfg.eval_interval}, "
          f"eval_batches {train_cfg.eval_batches}, sample_tokens {train_cfg.sample_tokens}")
    print(f"one training step: {1000 * step_s:.1f} ms (median of {len(hooks.seconds) - warmup}); "
          f"{train_cfg.eval_interval} steps between two evaluations: {interval_s:.1f} s\n")
    print("| part of one evaluation | seconds | share of eval_interval steps + evaluation |")
    print("|---|---|---|")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.3f} | {100 * seconds / (interval_s + evaluation_s):.1f} % |")
    print(f"| **one evaluation** | **{evaluation_s:.3f}** | **{100 * evaluation_s / (interval_s + evaluation_s):.1f} %** |")
    print(f"\nonce per run: the memorisation index over the training text, {index_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
