"""Side by side with nanoGPT on its own benchmark: the same text, the same settings, one run (issue 20).

nanoGPT (`karpathy/nanoGPT`, MIT) is the reference a learner compares this project with. Its README's
"baby GPT" for CPUs - 4 layers, 4 heads, n_embd 128, block 64, batch 12, dropout 0, no bias, lr 1e-3 ->
1e-4, beta2 0.99, 20 evaluation batches every 250 steps, 2,000 steps - and our `tiny` preset are trained
by both programs, unchanged, each in its own process, on the same character text:

1. Text: a few books of the local Gutenberg mirror (cleaned by `src.gutenberg`), written to nanoGPT's
   `data/shakespeare_char/input.txt` and prepared by its own `prepare.py` (sorted characters, the first
   90 % of the characters for training, the rest for validation). Ours builds its data set from the same
   file (`--input FILE --no-unwrap --val-fraction 0.1`): one document, cut at a paragraph break near
   90 %. Characters that occur only in the last 10 % are dropped from the file first, so that both
   tokenizers know every character.
2. Runs, interleaved A B A B (a slow phase of a shared machine hits both sides alike): nanoGPT's
   `train.py config/train_shakespeare_char.py` with the settings as flags, on a scratch copy of
   `../shared/anchors/nanoGPT` (never imported by `src/`); ours through `src.main.main` with the same
   settings and nanoGPT's activation (`--gelu exact`: its nn.GELU() is the exact one; GPT-2's tanh
   approximation, our default, costs about 2x as much on a CPU), in fp32 and with `--dtype auto`,
   doing the same work as nanoGPT: no text samples and no attention pictures (`--sample-tokens 0
   --no-attention-images`), which nanoGPT does not make. A
   third run of ours, "ours fp32 + extras", keeps our defaults (samples with their memorisation check
   and pictures at evaluations), so that what they cost is measured, not subtracted. Measured per run:
   whole-process time (start to exit, imports included), the median steady-state step time, the
   evaluation time (validation loss and checkpoint; the extras counted apart) and the peak RSS of the
   process (`os.wait4`).
3. Quality: after all runs ONE evaluation function measures both final checkpoints in fp32 on the
   same text - the validation characters both splits share (nanoGPT's last 10 % and ours end at the
   same character) - cut into non-overlapping windows of block_size, every character predicted once.
   Both checkpoints load with `weights_only=True`: nanoGPT's `ckpt.pt` holds only tensors, dicts and
   plain numbers, so nothing is unpickled beyond those.

    python -m benchmarks.nanogpt_bench --quick         # baby GPT, 200 steps per run: ~2 min
    python -m benchmarks.nanogpt_bench                 # baby GPT, 2,000 steps (the benchmark): ~13 min
    python -m benchmarks.nanogpt_bench --settings tiny # our tiny preset, 2,000 steps: ~27 min
(times with --threads 1 on a 2-core AMD EPYC without AVX-512, where a step of the baby GPT takes ~180 ms;
both programs use the same threads, torch's default unless --threads is given)

nanoGPT's `prepare.py` imports `requests` (to download Shakespeare when input.txt is missing); the
benchmark gives it an empty stand-in module, since input.txt is always there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ANCHOR = REPO_ROOT.parent / "shared" / "anchors" / "nanoGPT"
DEFAULT_MIRROR = REPO_ROOT.parent / "shared" / "corpus" / "gutenberg"
DEFAULT_BOOKS = (11, 74, 84)  # Alice, Tom Sawyer, Frankenstein: ~0.9 M characters, like tiny Shakespeare
FULL_STEPS, QUICK_STEPS = 2000, 200
RUN_TIMEOUT_S = 1800  # one training process may take at most this long (a hung run ends the benchmark)


@dataclass(frozen=True)
class Setting:
    """One benchmark shape with the settings both programs get."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float
    bias: bool
    lr: float
    min_lr: float
    warmup_steps: int
    eval_interval: int
    eval_batches: int  # ours: validation batches per evaluation; nanoGPT: eval_iters (it runs train AND val)


SETTINGS = {
    # nanoGPT README, "baby GPT" on a CPU (its eval_iters=20; the rest from config/train_shakespeare_char.py)
    "baby": Setting("baby", 4, 4, 128, 64, 12, 0.0, False, 1e-3, 1e-4, 100, 250, 20),
    # our `--preset tiny` (src/cli/settings.py), given to nanoGPT as flags
    "tiny": Setting("tiny", 2, 4, 128, 64, 32, 0.1, True, 3e-3, 3e-4, 50, 200, 10),
}


@dataclass
class RunResult:
    program: str  # "nanoGPT" | "ours fp32" | "ours auto" | "ours fp32 + extras"
    setting: str
    wall_s: float  # whole process, start to exit
    peak_rss_mb: float
    step_ms: float  # median steady-state step
    steps: int
    loop_s: float  # training steps + evaluations
    evals: int
    eval_s: float  # validation loss + checkpoint of all evaluations
    eval_batches: int  # forward passes of all evaluations
    extras_s: float = 0.0  # ours: text samples, memorisation check, attention pictures
    dtype: str = "fp32"
    dtype_reason: str = ""
    checkpoint: str = ""
    loss: float | None = None  # on the shared validation text, filled in at the end
    log: list[str] = field(default_factory=list)

    @property
    def eval_share(self) -> float:
        return self.eval_s / max(self.loop_s, 1e-9)

    @property
    def eval_ms_per_batch(self) -> float:
        return 1000 * self.eval_s / max(self.eval_batches, 1)


# --- the text, prepared the nanoGPT way ---------------------------------------------------------


def book_text(books: tuple[int, ...], mirror: Path, data_dir: Path) -> str:
    """The cleaned books, one after another, without the characters that occur only in the last 10 %."""
    sys.path.insert(0, str(REPO_ROOT))
    from src.config import DataConfig
    from src.dataset import load_documents

    docs = load_documents(DataConfig(books=books, mirror=str(mirror), data_dir=data_dir), show_progress=False)
    text = "\n\n".join(doc.text for doc in docs)
    known = set(text[: int(len(text) * 0.9)])
    return "".join(ch for ch in text if ch in known)


def prepare(work: Path, anchor: Path, text: str) -> tuple[Path, Path]:
    """A scratch copy of nanoGPT with `text` prepared by its prepare.py; returns (nanoGPT dir, input.txt)."""
    nano = work / "nanoGPT"
    shutil.copytree(anchor, nano)
    data = nano / "data" / "shakespeare_char"
    (data / "input.txt").write_text(text, encoding="utf-8")
    stub = work / "stub"  # prepare.py imports requests only to download a missing input.txt
    stub.mkdir()
    (stub / "requests.py").write_text('"""Stand-in: the benchmark never downloads."""\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(stub)}
    subprocess.run([sys.executable, str(data / "prepare.py")], cwd=data, env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=300)
    return nano, data / "input.txt"


# --- one training process ------------------------------------------------------------------------


def run_process(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout + stderr) of one process, start to exit."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + RUN_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise RuntimeError(f"{' '.join(command[:3])} ran longer than {RUN_TIMEOUT_S} s")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        log = out.read().decode("utf-8", errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed with exit code {process.returncode}:\n{log[-2000:]}")
    return wall, usage.ru_maxrss / 1024, log  # ru_maxrss: KiB on Linux


def nanogpt_flags(s: Setting, steps: int, out_dir: Path) -> list[str]:
    return ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", f"--out_dir={out_dir}",
            f"--n_layer={s.n_layer}", f"--n_head={s.n_head}", f"--n_embd={s.n_embd}", f"--block_size={s.block_size}",
            f"--batch_size={s.batch_size}", f"--dropout={s.dropout}", f"--bias={s.bias}",
            f"--learning_rate={s.lr}", f"--min_lr={s.min_lr}", f"--warmup_iters={s.warmup_steps}",
            f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={s.eval_interval}",
            f"--eval_iters={s.eval_batches}", "--log_interval=1",
            "--always_save_checkpoint=True"]  # the checkpoint of the last step, not of the best evaluation


def run_nanogpt(nano: Path, s: Setting, steps: int, env: dict[str, str], tag: str) -> RunResult:
    out_dir = nano / f"out-{tag}"
    wall, rss, log = run_process([sys.executable, "train.py", *nanogpt_flags(s, steps, out_dir)], nano, env)
    # "iter N: loss X, time Y ms": Y is the whole iteration, at N % eval_interval == 0 with the evaluation.
    times = {int(n): float(ms) for n, ms in re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", log, re.M)}
    eval_iters = [n for n in times if n % s.eval_interval == 0]
    plain = [ms for n, ms in sorted(times.items()) if n % s.eval_interval]
    step_ms = statistics.median(plain[10:] if len(plain) > 20 else plain)  # steady state: after 10 warm-up steps
    eval_s = sum(max(times[n] - step_ms, 0.0) for n in eval_iters) / 1000
    return RunResult("nanoGPT", s.name, wall, rss, step_ms, len(times), sum(times.values()) / 1000, len(eval_iters),
                     eval_s, len(eval_iters) * 2 * s.eval_batches, checkpoint=str(out_dir / "ckpt.pt"))


def our_flags(s: Setting, steps: int, input_txt: Path, data_dir: Path) -> list[str]:
    return ["--train", "--quiet", "--input", str(input_txt), "--no-unwrap", "--val-fraction", "0.1",
            "--tokenizer", "char", "--data-dir", str(data_dir), "--device", "cpu",
            "--n-layer", str(s.n_layer), "--n-head", str(s.n_head), "--n-embd", str(s.n_embd),
            "--block-size", str(s.block_size), "--batch-size", str(s.batch_size), "--dropout", str(s.dropout),
            "--bias" if s.bias else "--no-bias", "--gelu", "exact",  # nanoGPT's nn.GELU(): the exact (erf) one
            "--lr", str(s.lr), "--min-lr", str(s.min_lr),
            "--warmup-steps", str(s.warmup_steps), "--weight-decay", "0.1", "--beta2", "0.99", "--grad-clip", "1.0",
            "--eval-interval", str(s.eval_interval), "--eval-batches", str(s.eval_batches),
            "--max-steps", str(steps), "--epochs", "1000"]


def run_ours(work: Path, s: Setting, steps: int, program: str, input_txt: Path, env: dict[str, str],
             tag: str) -> RunResult:
    """`program`: "ours fp32" / "ours auto" (nanoGPT's work: no samples, no pictures) or "ours fp32 + extras"
    (our defaults)."""
    run_dir, report = work / "runs" / tag, work / f"{tag}.json"
    extras = program.endswith("+ extras")
    command = [sys.executable, "-c", "import sys; from benchmarks.nanogpt_bench import child_main; "
               "sys.exit(child_main(sys.argv[1:]))", str(report),
               *our_flags(s, steps, input_txt, work / "data"), "--dtype", program.split()[1],
               "--logdir", str(run_dir), *([] if extras else ["--sample-tokens", "0", "--no-attention-images"])]
    wall, rss, _ = run_process(command, REPO_ROOT, env)
    r = json.loads(report.read_text(encoding="utf-8"))
    return RunResult(program, s.name, wall, rss, r["step_ms"], r["steps"], r["steps_s"] + r["evals_s"],
                     r["evals"], r["evals_s"] - r["extras_s"], r["evals"] * s.eval_batches, r["extras_s"],
                     r["dtype"], r["dtype_reason"], str(run_dir / "checkpoints" / "last.pt"))


def child_main(argv: list[str]) -> int:
    """Inside our training process: `src.main.main` with one more callback that writes where the time
    went (the run's `TimeSplit`, the median step) to the JSON file argv[0]."""
    from src.main import main
    from src.training.trainer import Callback

    report = Path(argv[0])

    class TimeReport(Callback):
        def on_train_end(self, ctx: Any, history: Any) -> None:
            # steady state: steps after the first 10 (allocator and kernel warm-up)
            tokens = [0] + [r.tokens for r in history.steps]  # r.tokens: seen so far
            seconds = [(tokens[i + 1] - tokens[i]) / r.tokens_per_sec for i, r in enumerate(history.steps)] or [0.0]
            timing = ctx.timing
            config = json.loads((ctx.config.logdir / "config.json").read_text(encoding="utf-8"))
            report.write_text(json.dumps({
                "step_ms": 1000 * statistics.median(seconds[10:] or seconds), "steps": len(history.steps),
                "steps_s": timing.steps_s, "evals_s": timing.evals_s, "evals": timing.evals,
                "extras_s": timing.extras_s, "extras": timing.extras, "dtype": config.get("dtype", "?"),
                "dtype_reason": config.get("dtype_reason", "")}), encoding="utf-8")

    return main(argv[1:], callbacks=[TimeReport()])


# --- one evaluation for both checkpoints ---------------------------------------------------------


def shared_validation_text(input_txt: Path, data_dir: Path) -> str:
    """The validation characters of both splits: nanoGPT's last 10 % and ours end at the file's end."""
    text = input_txt.read_text(encoding="utf-8")
    nano_val = len(text) - int(len(text) * 0.9)
    metas = sorted((data_dir / "processed").glob("*/meta.json"))
    our_val = json.loads(metas[0].read_text(encoding="utf-8"))["splits"]["val"]["characters"]
    return text[len(text) - min(nano_val, our_val):]


def mean_nll(logits_of: Any, ids: Any, block_size: int, batch_size: int = 32) -> float:
    """Mean cross-entropy (nats per character) of ids[1:] given the ids before them, in windows of
    block_size that do not overlap: every character after the first is predicted exactly once."""
    import torch
    from torch.nn import functional as F

    ids = torch.as_tensor(ids, dtype=torch.long)
    n = len(ids) - 1
    starts = list(range(0, n, block_size))
    total = 0.0
    with torch.no_grad():
        for first in range(0, len(starts), batch_size):
            group = starts[first:first + batch_size]
            lengths = {min(block_size, n - s) for s in group}
            for length in lengths:  # full windows together, the shorter tail window alone
                chosen = [s for s in group if min(block_size, n - s) == length]
                x = torch.stack([ids[s:s + length] for s in chosen])  # (B, T)
                y = torch.stack([ids[s + 1:s + length + 1] for s in chosen])  # (B, T)
                logits = logits_of(x, y)  # (B, T, V)
                total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                         reduction="sum").item()
    return total / n


def checkpoint_loss(result: RunResult, text: str, nano: Path, input_txt: Path) -> float:
    import torch

    if result.program == "nanoGPT":
        import importlib.util

        spec = importlib.util.spec_from_file_location("nanogpt_model", nano / "model.py")
        module = importlib.util.module_from_spec(spec)
        # nanoGPT's ckpt.pt holds only tensors, dicts and plain numbers: weights_only=True reads it.
        payload = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "number of parameters"
            spec.loader.exec_module(module)
            model = module.GPT(module.GPTConfig(**payload["model_args"]))
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in payload["model"].items()})
        model.eval()
        chars = sorted(set(input_txt.read_text(encoding="utf-8")))  # prepare.py's vocabulary
        stoi = {ch: i for i, ch in enumerate(chars)}
        ids = [stoi[ch] for ch in text]
        block = payload["model_args"]["block_size"]
        return mean_nll(lambda x, y: model(x, y)[0], ids, block)  # with targets: logits at every position
    from src.training.checkpoints import load_model

    model, tokenizer = load_model(result.checkpoint)
    ids = tokenizer.encode(text)
    if len(ids) != len(text):
        raise RuntimeError(f"our tokenizer made {len(ids)} tokens of {len(text)} characters")
    return mean_nll(lambda x, y: model(x)[0], ids, model.config.block_size)


# --- the report ----------------------------------------------------------------------------------


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def table(results: list[RunResult], setting: str, reference: RunResult) -> list[str]:
    rows = ["| program | dtype | whole process (s) | ms/step | evaluation share | eval ms/batch | samples + "
            "pictures (s) | peak RSS (MB) | val loss (shared text) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        rows.append(f"| {r.program} | {r.dtype} | {r.wall_s:.1f} | {r.step_ms:.1f} | {100 * r.eval_share:.1f} % | "
                    f"{r.eval_ms_per_batch:.1f} | {r.extras_s:.1f} | {r.peak_rss_mb:.0f} | {loss} |")
    rows += ["", f"| {setting}: ours / nanoGPT | speed, whole process | speed, per step | evaluation per batch "
             "| peak RSS | val loss |", "|---|---|---|---|---|---|"]
    for r in results:
        if r is reference:
            continue
        loss = (f"{100 * (r.loss / reference.loss - 1):+.2f} %"
                if r.loss is not None and reference.loss is not None else "-")
        rows.append(f"| {r.program} ({r.dtype}) | {ratio(reference.wall_s, r.wall_s)} | "
                    f"{ratio(reference.step_ms, r.step_ms)} | "
                    f"{ratio(r.eval_ms_per_batch, reference.eval_ms_per_batch)} cost | "
                    f"{ratio(r.peak_rss_mb, reference.peak_rss_mb)} | {loss} |")
    return rows


def median_result(runs: list[RunResult]) -> RunResult:
    """With --repeats > 1: the run with the median whole-process time stands for its program."""
    return sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nanogpt_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per run instead of {FULL_STEPS}")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (overrides --quick)")
    parser.add_argument("--eval-interval", type=int, default=None,
                        help="evaluate every N steps (default: the setting's, 250 / 200; --quick: 100)")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["baby"],
                        help="baby (nanoGPT's README) and/or tiny (our preset; with 2,000 steps ~2x the baby's time) "
                             "(default: baby)")
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "auto", "bf16"), default=["fp32", "auto"],
                        help="our runs; 'auto' is skipped where it means fp32 (no native bf16 on this CPU)")
    parser.add_argument("--no-extras-run", action="store_true",
                        help="skip the run of ours with samples and pictures (their cost is then not measured)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of A B A B (default: 1)")
    parser.add_argument("--books", type=int, nargs="+", default=list(DEFAULT_BOOKS))
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--anchor", type=Path, default=DEFAULT_ANCHOR, help="the nanoGPT files (../shared/anchors)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every run (default: unset)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder, "
                        "removed at the end)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.anchor / "train.py").is_file():
        print(f"error: nanoGPT not found at {args.anchor} (expected train.py there); pass --anchor DIR",
              file=sys.stderr)
        return 2
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    interval = args.eval_interval or (100 if args.quick else None)
    settings = [SETTINGS[name] for name in args.settings]
    if interval:
        settings = [Setting(**{**s.__dict__, "eval_interval": interval}) for s in settings]
    sys.path.insert(0, str(REPO_ROOT))
    from src.training.utils import cpu_bf16_flags

    dtypes = [d for d in args.dtypes if not (d == "auto" and not cpu_bf16_flags())]
    if dtypes != args.dtypes:
        print("note: --dtype auto is fp32 on this CPU (no AVX512-BF16/AMX), so its run is skipped")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    own_work = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="nanogpt_bench_")) if own_work else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        text = book_text(tuple(args.books), args.mirror, work / "raw")
        nano, input_txt = prepare(work, args.anchor, text)
        subprocess.run([sys.executable, "-m", "src.dataset", "--input", str(input_txt), "--no-unwrap",
                        "--val-fraction", "0.1", "--tokenizer", "char", "--data-dir", str(work / "data"), "--quiet"],
                       cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
        print(f"Text: books {', '.join(map(str, args.books))}, {len(text):,} characters; {steps} steps per run, "
              f"threads {args.threads or 'default'}; work folder {work}", flush=True)
        runs: dict[tuple[str, str], list[RunResult]] = {}
        extras_run = [] if args.no_extras_run else ["ours fp32 + extras"]
        programs = ["nanoGPT", *[f"ours {d}" for d in dtypes], *extras_run]
        for round_ in range(args.repeats):
            for s in settings:
                order = programs[round_ % len(programs):] + programs[:round_ % len(programs)]  # A B, then B A
                for program in order:
                    tag = f"{s.name}-{program.replace(' + ', '-').replace(' ', '-')}-{round_}"
                    if program == "nanoGPT":
                        result = run_nanogpt(nano, s, steps, env, tag)
                    else:
                        result = run_ours(work, s, steps, program, input_txt, env, tag)
                    runs.setdefault((s.name, program), []).append(result)
                    print(f"  {tag}: {result.wall_s:.1f} s, {result.step_ms:.1f} ms/step, eval "
                          f"{result.eval_s:.1f} s, RSS {result.peak_rss_mb:.0f} MB", flush=True)
        shared = shared_validation_text(input_txt, work / "data")
        chosen = {key: median_result(value) for key, value in runs.items()}
        for result in chosen.values():
            result.loss = checkpoint_loss(result, shared, nano, input_txt)
        lines = [f"nanoGPT benchmark, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, "
                 f"{time.perf_counter() - started:.0f} s in all; validation text {len(shared):,} characters", ""]
        for s in settings:
            results = [chosen[(s.name, p)] for p in programs]
            lines += [f"### {s.name} ({s.n_layer} layers, {s.n_head} heads, n_embd {s.n_embd}, block {s.block_size}, "
                      f"batch {s.batch_size}, {steps} steps, {s.eval_batches} eval batches every {s.eval_interval})",
                      "", *table(results, s.name, results[0]), ""]
            lines += [f"{r.program}: dtype {r.dtype} ({r.dtype_reason})" for r in results[1:]] + [""]
        print("\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in chosen.values()], indent=1), encoding="utf-8")
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
