"""--resume and every flag of the parser: applied from the current step (one line, recorded in
config.json's segment) or refused in one line naming the flag - never silently ignored.

One tiny run, stopped after 2 of 3 steps, is built once; each case resumes a copy of it in-process.
The table `CASES` must name every flag the parser has, so a new flag needs a decision here.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from src.cli.parser import build_parser
from src.cli.settings import APPLIED_ON_RESUME, LOCKED_ON_RESUME, THIS_COMMAND_ON_RESUME
from src.main import main
from src.training.checkpoints import load_checkpoint
from src.training.train_loop import lr_at
from tests.conftest import make_story
from tests.test_training import StopAtStep

BASE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-batches", "2", "--eval-interval", "100", "--sample-tokens", "0", "--quiet", "--dropout", "0",
        "--lr", "1e-3", "--min-lr", "1e-4", "--warmup-steps", "3", "--max-steps", "3", "--log-interval", "1",
        "--device", "cpu", "--dtype", "fp32", "--no-attention-images"]

# dest -> the flags to add to `--resume RUN --data-dir DATA` (each differs from the run's value).
CASES: dict[str, list[str]] = {
    "help": [],  # prints help and exits 0 before anything: nothing to resume
    "train": ["--train"], "generate": ["--generate"], "evaluate": ["--evaluate"], "visualize": ["--visualize"],
    "explain": ["--explain"], "export": ["--export"], "serve": ["--serve"],
    "preset": ["--preset", "tiny"], "config": ["--config", "settings.json"], "resume": [],
    "checkpoint": ["--checkpoint", "x.pt"], "init_from": ["--init-from", "RUN"],
    "find_batch_size": ["--find-batch-size"], "quiet": ["--quiet"], "debug": ["--debug"],
    "block_size": ["--block-size", "8"], "n_layer": ["--n-layer", "2"], "n_head": ["--n-head", "4"],
    "n_embd": ["--n-embd", "32"], "dropout": ["--dropout", "0.1"], "bias": ["--no-bias"],
    "attention": ["--attention", "manual"], "pos_encoding": ["--pos-encoding", "sinusoidal"], "gelu": ["--gelu", "exact"],
    "batch_size": ["--batch-size", "2"], "epochs": ["--epochs", "1"], "max_steps": ["--max-steps", "4"],
    "lr": ["--lr", "5e-4"], "min_lr": ["--min-lr", "5e-5"], "weight_decay": ["--weight-decay", "0.05"],
    "beta1": ["--beta1", "0.8"], "beta2": ["--beta2", "0.95"], "warmup_steps": ["--warmup-steps", "5"],
    "grad_clip": ["--grad-clip", "0.5"], "grad_accum": ["--grad-accum", "2"],
    "eval_interval": ["--eval-interval", "3"], "eval_batches": ["--eval-batches", "1"],
    "early_stopping": ["--early-stopping", "2"], "seed": ["--seed", "7"], "device": ["--device", "auto"],
    "dtype": ["--dtype", "auto"], "compile": ["--compile"], "num_workers": ["--num-workers", "1"],
    "logdir": ["--logdir", "elsewhere"], "log_interval": ["--log-interval", "2"],
    "sample_tokens": ["--sample-tokens", "4"], "books": ["--books", "11"], "mirror": ["--mirror", "MIRROR"],
    "input": ["--input", "other.txt"], "data_dir": [], "unwrap": ["--no-unwrap"],
    "val_fraction": ["--val-fraction", "0.2"], "holdout_books": ["--holdout-book", "11"],
    "tokenizer": ["--tokenizer", "bpe"], "max_vocab_size": ["--max-vocab-size", "100"],
    "name": [], "force": ["--force"], "attention_images": ["--attention-images"],
    "prompt": ["--prompt", "Hi"], "max_new_tokens": ["--max-new-tokens", "500"],  # equal to the default: typed
    "temperature": ["--temperature", "0"], "top_k": ["--top-k", "5"], "top_p": ["--top-p", "0.9"],
    "num_samples": ["--num-samples", "2"], "check_memorization": ["--check-memorization"],
    "out": ["--out", "pictures"], "host": ["--host", "0.0.0.0"], "port": ["--port", "7861"],
    "format": ["--format", "hf"],
    # the ablation switches (locked: they change the model) and the experiment's own flags
    "causal": ["--no-causal"], "residual": ["--no-residual"], "norm": ["--norm", "rmsnorm"],
    "norm_position": ["--norm-position", "post"], "mlp": ["--no-mlp"], "tie_weights": ["--no-tie-weights"],
    "experiment": ["--experiment", "ablations"], "variants": ["--variants", "no_mask"], "seeds": ["--seeds", "2"],
}
# Flags that need no case of their own: --help exits first; --resume and --data-dir are in every command;
# --name picks another folder for the same data (the data-change check covers it, tests/test_reliability.py).
SELF_EVIDENT = {"help", "resume", "data_dir", "name"}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run of 3 planned steps, stopped after 2 (exit 130, last.pt at step 2), and its data folder."""
    root = tmp_path_factory.mktemp("resume_flags")
    story = root / "story.txt"
    story.write_text(make_story(n_paragraphs=7), encoding="utf-8")
    run, data = root / "run", root / "data"
    assert main(["--train", "--input", str(story), "--data-dir", str(data), *BASE, "--logdir", str(run)],
                callbacks=[StopAtStep(2)]) == 130
    return run, data


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    run, data = stopped_run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("*.lock"))
    return tmp_path / "run", data


def test_every_flag_of_the_parser_has_a_case():
    dests = {action.dest for action in build_parser()._actions}
    assert dests == set(CASES), f"classify the new flag(s) for --resume: {sorted(dests ^ set(CASES))}"


def resume(run, data, flags, capsys) -> tuple[int, str]:
    capsys.readouterr()
    # Each resume ends with an evaluation whose attention pictures would take ~90% of its time; they are
    # not what these tests are about (tests/test_visualization.py covers them): --no-attention-images.
    code = main(["--train", "--resume", str(run), "--data-dir", str(data), "--quiet", "--no-attention-images", *flags])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("dest", sorted(set(APPLIED_ON_RESUME)))
def test_an_applied_flag_is_announced_recorded_and_used(run_copy, capsys, dest):
    run, data = run_copy
    flags = CASES[dest]
    code, err = resume(run, data, flags, capsys)
    assert code == 0, err
    announced = [line for line in err.splitlines() if line.startswith("Changed from step 2 on: ")]
    assert len(announced) == 1 and f"{flags[0]} " in announced[0] and "(was " in announced[0]
    config = json.loads((run / "config.json").read_text())
    segment = config["segments"][-1]
    assert segment["from_step"] == 2 and list(segment["changed"]) == [dest]
    new = segment["changed"][dest]["to"]
    section = "model" if dest in ("dropout", "attention") else "train"
    assert config[section][dest] == new != segment["changed"][dest]["from"]  # config.json says what runs
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint[f"{section}_config"][dest] == new  # ... and so does the next --resume's starting point
    assert checkpoint["state"]["step"] == config["total_steps"]  # it trained on to the (possibly new) end
    if dest in ("weight_decay", "beta1", "beta2"):  # the optimiser uses the new value, not the stored one
        groups = checkpoint["optimizer"]["param_groups"]
        if dest == "weight_decay":
            assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
        else:
            assert all(g["betas"][dest == "beta2"] == float(flags[1]) for g in groups)


@pytest.mark.parametrize("dest", sorted(set(CASES) - set(APPLIED_ON_RESUME) - set(THIS_COMMAND_ON_RESUME)
                                        - SELF_EVIDENT))
def test_every_other_flag_is_refused_in_one_line_naming_it(run_copy, capsys, dest):
    run, data = run_copy
    before = (run / "config.json").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes()
    code, err = resume(run, data, CASES[dest], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert CASES[dest][0].replace("--no-", "--") in err, err
    if dest in LOCKED_ON_RESUME:  # the way to get what the user asked for: a new run from these weights
        assert f"--init-from {run}" in err
    assert before == ((run / "config.json").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes())


def test_a_new_lr_moves_from_the_current_rate_without_a_jump(run_copy, capsys):
    """--lr at step 2 (still warming up towards 1e-3 over 3 steps): the rate goes from where it is to the
    new peak over --warmup-steps steps, then decays to --min-lr at the end; metrics.jsonl shows it."""
    run, data = run_copy
    old = load_checkpoint(run / "checkpoints" / "last.pt")["schedule"]
    code, err = resume(run, data, ["--lr", "5e-4", "--max-steps", "8"], capsys)
    assert code == 0, err
    assert "Changed from step 2 on: --max-steps 8 (was 3), --lr 0.0005 (was 0.001)" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    from src.training.train_loop import LRSchedule

    now = lr_at(2, LRSchedule(**old))  # what the stored plan would have used next: 1e-3
    assert now == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx(now + (5e-4 - now) / 3)  # one third of the way: no jump
    assert lrs[5] == pytest.approx(5e-4)  # the new peak after --warmup-steps (3) steps (the 5th step's rate)
    assert lrs[3] > lrs[4] > lrs[5] == lrs[6] > lrs[7] > lrs[8] > 1e-4 - 1e-12  # then the cosine down
    schedule = load_checkpoint(run / "checkpoints" / "last.pt")["schedule"]
    assert schedule["lr"] == 5e-4 and schedule["total_steps"] == 8
    assert json.loads((run / "config.json").read_text())["lr_schedule"] == schedule  # no contradiction


def test_with_new_rates_is_continuous_and_reaches_the_new_values():
    from src.config import TrainConfig
    from src.training.train_loop import LRSchedule

    old = LRSchedule.plan(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10), 110)
    for lr, min_lr, warmup in ((2e-4, 1e-5, 10), (3e-3, 1e-4, 20), (1e-3, 1e-5, 10)):
        new = old.with_new_rates(60, TrainConfig(lr=lr, min_lr=min_lr, warmup_steps=warmup), 110)
        now = lr_at(60, old)
        assert abs(lr_at(60, new) - now) <= abs(lr - now) / warmup + 1e-12  # one step's worth at most
        if lr != old.lr:
            assert lr_at(60 + warmup, new) == pytest.approx(lr)
        assert lr_at(110, new) == pytest.approx(min_lr)
        assert all(math.isfinite(lr_at(s, new)) for s in range(60, 120))


@pytest.mark.parametrize("flags", [["--max-steps", "1"], ["--max-steps", "2"]])
def test_an_end_not_after_the_current_step_is_refused_and_the_plan_kept(run_copy, capsys, flags):
    run, data = run_copy
    before = (run / "config.json").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes()
    code, err = resume(run, data, flags, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --max-steps: this run is already at step 2") and "stays 3 steps" in err
    assert before == ((run / "config.json").read_bytes(), (run / "checkpoints" / "last.pt").read_bytes())


def test_a_new_warmup_after_the_warmup_is_refused(run_copy):
    from src.cli.common import UsageError
    from src.cli.parser import flag_names
    from src.cli.train import _resumed_schedule
    from src.config import TrainConfig
    from src.training.train_loop import LRSchedule

    stored = {"schedule": LRSchedule.plan(TrainConfig(warmup_steps=3), 10).__dict__}
    flags = flag_names(build_parser())
    with pytest.raises(UsageError, match="--warmup-steps: the warm-up of this run ended at step 3"):
        _resumed_schedule(stored, LRSchedule.plan(TrainConfig(warmup_steps=5), 10), 4, run_copy[0],
                          TrainConfig(warmup_steps=5), {"warmup_steps": (3, 5)}, flags)
    moved = _resumed_schedule(stored, LRSchedule.plan(TrainConfig(warmup_steps=5), 10), 2, run_copy[0],
                              TrainConfig(warmup_steps=5), {"warmup_steps": (3, 5)}, flags)
    assert moved.warmup_steps == 5  # still warming up at step 2: the warm-up now ends at step 5


def test_a_run_from_before_whole_batches_keeps_its_steps_per_epoch(run_copy, capsys):
    """Checkpoints without `steps_per_epoch` come from when an epoch also counted its last, smaller
    batch: such a run continues with that count, so its epochs do not shift."""
    import torch

    from src.dataset import TokenDataset

    run, data = run_copy
    last = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    del payload["steps_per_epoch"]
    torch.save(payload, last)
    windows = len(TokenDataset(json.loads((run / "config.json").read_text())["data_path"], "train", 16))
    assert windows % 4, "the test needs a last, smaller batch"
    code, err = resume(run, data, [], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["steps_per_epoch"] == math.ceil(windows / 4)
    assert load_checkpoint(last)["steps_per_epoch"] == math.ceil(windows / 4)  # from now on it is stored
