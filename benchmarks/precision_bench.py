"""Does bf16 autocast on the CPU train as well as fp32? Validation loss after a fixed number of steps.

`--dtype auto` picks bf16 autocast on CPUs that compute in bf16 natively (AVX512-BF16 or AMX, see
`src/training/utils.py:auto_precision_name`). That is only a good default if the model learns as
well as in fp32. This script trains the same preset twice through the real command line - same
seed, same data, same steps - once with `--dtype fp32` and once with `--dtype bf16`, and compares:

* the validation loss the run logged at its last step (the training-time estimate), and
* the loss on the whole validation split, measured afterwards in fp32 for both models, so the
  comparison is about how well each *trained*, not about how precisely it is *evaluated*,
* the training throughput the run logged (tokens/s, median over its log lines).

The runs alternate (fp32, bf16, fp32, bf16, ... with --rounds > 1) so a slow phase of a shared
machine hits both; the losses are deterministic and the same in every round.

    python -m benchmarks.precision_bench --mirror ../shared/corpus/gutenberg --preset tiny --steps 1000
    python -m benchmarks.precision_bench --mirror ../shared/corpus/gutenberg --preset default --steps 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from src.dataset import load_tokens
from src.main import main
from src.training.checkpoints import load_model
from src.training.evaluation import model_nll
from src.training.utils import auto_precision_name, cpu_bf16_flags


def train_once(preset: str, dtype: str, steps: int, work: Path, mirror: str | None, threads: int) -> dict:
    run = work / f"{preset}-{dtype}-{len(list(work.glob(f'{preset}-{dtype}*')))}"
    argv = ["--train", "--preset", preset, "--max-steps", str(steps), "--eval-interval", str(steps),
            "--dtype", dtype, "--device", "cpu", "--sample-tokens", "0", "--logdir", str(run),
            "--data-dir", str(work / "data"), "--quiet", "--log-interval", "10"]
    if mirror:
        argv += ["--mirror", mirror]
    torch.set_num_threads(threads)
    code = main(argv)
    if code != 0:
        raise SystemExit(f"training failed with exit code {code}: {' '.join(argv)}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    return {
        "run": run,
        "val_estimate": [r["val/loss"] for r in rows if "val/loss" in r][-1],
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r),
        "data_path": config["data_path"],
    }


def whole_split_loss(run: Path, data_path: str) -> float:
    model, _ = load_model(run)  # best.pt, evaluated in fp32
    ids = np.asarray(load_tokens(Path(data_path), "val"), dtype=np.int64)
    nll, count = model_nll(model, ids, model.config.block_size, 64, torch.device("cpu"))
    return nll / count


def main_bench(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", help="tiny, small or default (repeatable; default: tiny)")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps per run (default: 500)")
    parser.add_argument("--rounds", type=int, default=1, help="fp32/bf16 pairs per preset, for the speed median")
    parser.add_argument("--mirror", default=None, help="book mirror (directory or URL), e.g. ../shared/corpus/gutenberg")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    presets = args.preset or ["tiny"]
    name, reason = auto_precision_name(torch.device("cpu"))
    print(f"# precision_bench {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads; bf16 flags: {cpu_bf16_flags() or 'none'}; "
          f"--dtype auto -> {name} ({reason})")
    print("| preset | steps | val loss fp32 (estimate / whole split) | val loss bf16 (estimate / whole split) "
          "| bf16 vs fp32 (whole split) | tokens/s fp32 | tokens/s bf16 | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for preset in presets:
            results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
            for _ in range(args.rounds):
                for dtype in ("fp32", "bf16"):
                    results[dtype].append(train_once(preset, dtype, args.steps, work, args.mirror, args.threads))
            whole = {d: whole_split_loss(results[d][0]["run"], results[d][0]["data_path"]) for d in results}
            speeds = [b["tokens_per_sec"] / a["tokens_per_sec"] for a, b in zip(results["fp32"], results["bf16"])]
            fp32, bf16 = results["fp32"][0], results["bf16"][0]
            print(f"| {preset} | {args.steps} | {fp32['val_estimate']:.4f} / {whole['fp32']:.4f} "
                  f"| {bf16['val_estimate']:.4f} / {whole['bf16']:.4f} "
                  f"| {(whole['bf16'] / whole['fp32'] - 1) * 100:+.2f} % "
                  f"| {statistics.median(r['tokens_per_sec'] for r in results['fp32']):,.0f} "
                  f"| {statistics.median(r['tokens_per_sec'] for r in results['bf16']):,.0f} "
                  f"| {statistics.median(speeds):.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
