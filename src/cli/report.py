"""The end of a training run: what happened, where the checkpoints are, how to go on, and the exit code.

`final_report` prints the summary (stopped why, after how many steps, best validation loss, the time
split of `time_split_line`) and, by how the run ended, how to resume, what to try after a divergence,
or how to sample from the model.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.cli.common import EXIT_DIVERGED, EXIT_OK, EXIT_SIGNAL
from src.config import TrainConfig


def _duration(seconds: float) -> str:
    """'4m10s', '25s', '0.4s' (hours as minutes: '75m00s')."""
    if seconds >= 60:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes}m{rest:02d}s"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def time_split_line(timing: Any, startup_s: float, compiled: bool = False) -> str:
    """Where this command's time went, e.g. "Time: 4m10s steps, 25s in 18 evaluations (9%), 3.1s start-up."

    The share is that of the evaluations (validation loss, samples, pictures, checkpoints) in steps +
    evaluations. `timing` is the run's `TimeSplit`; `startup_s` the time before the first step
    (data set, model, run files).
    """
    from src.training.callbacks import EXTRAS_SHARE

    share = timing.evals_s / max(timing.steps_s + timing.evals_s, 1e-9)
    line = (f"Time: {_duration(timing.steps_s)} steps, {_duration(timing.evals_s)} in {timing.evals} "
            f"evaluation(s) ({100 * share:.0f}%), {_duration(startup_s)} start-up.")
    if 0 < timing.extras < timing.evals:
        line += (f" Samples and pictures at {timing.extras} of {timing.evals} evaluations (they may take "
                 f"{100 * EXTRAS_SHARE:.0f}% of the step time).")
    if compiled and timing.first_step_s is not None:
        line += f" The first step took {_duration(timing.first_step_s)} (torch.compile compiles then)."
    return line


def final_report(history: Any, run_dir: Path, train_cfg: TrainConfig, dtype: str, stopper: Any,
                 saver: Any, data_changes: Sequence[dict] = (), time_split: str | None = None,
                 data_flags: Sequence[str] = ()) -> int:
    """The end-of-run summary (rank 0 only under DDP); returns the exit code.

    Every command it prints works when pasted as is: paths are quoted for the shell, and "Resume with:"
    carries `data_flags` (`data_location_flags`: --data-dir/--mirror, which a checkpoint never supplies).
    """
    from src.training import distributed
    from src.training.trainer import DIVERGED

    signum = stopper.signum or history.stop_signal  # DDP: a signal to any process ends all with its code
    if not distributed.is_main():
        if history.stop_reason in DIVERGED:
            return EXIT_DIVERGED
        return EXIT_SIGNAL.get(signum, 130) if history.stop_reason == "interrupted" else EXIT_OK

    state = history.state
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    minutes, seconds = divmod(int(state.elapsed_s), 60)
    lines = [
        f"\nStopped: {history.stop_reason} after {state.step} step(s) ({state.tokens_seen:,} tokens) in {minutes}m{seconds:02d}s.",
    ]
    if math.isfinite(state.best_val_loss):
        lines.append(f"Best val loss {state.best_val_loss:.4f} (perplexity {math.exp(state.best_val_loss):.2f}) "
                     f"at step {state.best_step}; {state.clipped_steps} steps had their gradient clipped.")
    saved = [str(p) for p in (best, last) if p.is_file()]
    if saved:
        lines.append("Checkpoints: " + ", ".join(saved))
    if time_split:
        lines.append(time_split)
    lines.append(f"TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir.parent))}")
    if data_changes:
        steps = ", ".join(str(change["step"]) for change in data_changes)
        lines.append(f"Not an exact continuation: the data changed at step {steps} (resumed with --force); "
                     "config.json records it.")
    if history.stop_reason in DIVERGED:
        print("\n".join(lines), file=sys.stderr)
        print(f"error: training stopped: {_divergence_advice(history, last, saver.saved_step, train_cfg, dtype)}", file=sys.stderr)
        return EXIT_DIVERGED
    if history.stop_reason == "interrupted":
        if last.is_file():
            lines.append(f"Resume with: {_launcher(distributed.world_size())} --train --resume {shlex.quote(str(run_dir))}"
                         + "".join(f" {shlex.quote(flag)}" for flag in data_flags))
        else:
            lines.append("Nothing was trained yet, so there is nothing to resume: run the same command again.")
        print("\n".join(lines), file=sys.stderr, flush=True)
        return EXIT_SIGNAL.get(signum, 130)
    if history.stop_reason == "completed" and not history.steps and state.step > 0:
        lines.append("This run had already finished; to train on, pass a larger --epochs or --max-steps "
                     "with --resume.")
    lines.append(f"Sample: python -m src.main --generate --checkpoint {shlex.quote(str(run_dir))} --prompt \"The \"")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return EXIT_OK


def data_location_flags(data_cfg: Any) -> list[str]:
    """The flags that say where this run's data lives, as given: what a later command needs again.

    Example: DataConfig(data_dir=Path("/data"), mirror="../gutenberg") -> ["--data-dir", "/data",
    "--mirror", "../gutenberg"]; the defaults (data/, no --mirror) -> [].
    """
    from src.config import DataConfig

    flags = []
    if Path(data_cfg.data_dir) != DataConfig.__dataclass_fields__["data_dir"].default:
        flags += ["--data-dir", str(data_cfg.data_dir)]
    if data_cfg.mirror is not None:  # from $MINI_TRANSFORMER_MIRROR: the same shell still has it
        flags += ["--mirror", str(data_cfg.mirror)]
    return flags


def _launcher(world_size: int) -> str:
    """How to start the same kind of run again: one process, or torchrun with as many processes."""
    if world_size == 1:
        return "python -m src.main"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if per_node == world_size:
        return f"torchrun --standalone --nproc_per_node={world_size} -m src.main"
    return f"torchrun --nnodes={world_size // per_node} --nproc_per_node={per_node} ... (as before) -m src.main"


def _divergence_advice(history: Any, last: Path, saved_step: int | None, train_cfg: TrainConfig, dtype: str) -> str:
    """What happened after a NaN/inf loss, where the last good weights are, and what to try."""
    state = history.state
    if last.is_file():
        good = f"the last good checkpoint is {last}" + (f" (step {saved_step})" if saved_step else "")
    else:
        good = "no checkpoint was written before it"
    tips = [f"a lower --lr (now {train_cfg.lr:g}, e.g. {train_cfg.lr / 3:.2g})"]
    if dtype == "fp16":
        tips.append("--dtype bf16 or fp32")
    elif dtype == "bf16":
        tips.append("--dtype fp32")
    tips.append(f"a longer --warmup-steps (now {train_cfg.warmup_steps})")
    if not 0 < train_cfg.grad_clip <= 1.0:
        tips.append("--grad-clip 1.0")
    what = {"non_finite_val_loss": f"the validation loss became NaN/inf after step {state.step}",
            "non_finite_weights": f"the weights became NaN/inf by step {state.step}"}.get(
        history.stop_reason, f"the loss became NaN/inf at step {state.step + 1}")
    return f"{what}; {good}. Try " + ", ".join(tips[:-1]) + f" or {tips[-1]}."
