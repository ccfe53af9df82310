"""The training loop and its helpers: schedule, optimiser groups, RNG state, checkpoints, learning,
exact resume and the NaN guard. Everything runs in-process on the CPU with tiny models."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from src.config import TrainConfig
from src.main import main
from src.model import MiniTransformer
from src.training.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint
from src.training.train_loop import LRSchedule, build_optimizer, lr_at
from src.training.trainer import Callback
from src.training.utils import capture_rng_state, restore_rng_state
from tests.conftest import make_story

PATTERN = "the quick brown fox jumps over the lazy dog. "


def tiny_flags(text_file, data_dir, *extra: str) -> list[str]:
    """A model of a few thousand parameters on a text the test wrote itself."""
    return [
        "--input", str(text_file), "--data-dir", str(data_dir), "--n-layer", "1", "--n-head", "2",
        "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--eval-batches", "2",
        "--sample-tokens", "8", "--quiet", "--no-attention-images", *extra,
    ]


class StopAtStep(Callback):
    """Asks the loop to stop after `step` steps, as SIGINT does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, ctx, record) -> None:
        if record.step == self.step:
            ctx.request_stop("interrupted")


# --- learning-rate schedule ---------------------------------------------------------------------


def test_lr_schedule_docstring_example():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, LRSchedule.plan(cfg, 110)) == pytest.approx(1e-4)
    assert lr_at(9, LRSchedule.plan(cfg, 110)) == pytest.approx(1e-3)
    assert lr_at(10, LRSchedule.plan(cfg, 110)) == pytest.approx(1e-3)
    assert lr_at(60, LRSchedule.plan(cfg, 110)) == pytest.approx(5.5e-4)
    assert lr_at(110, LRSchedule.plan(cfg, 110)) == pytest.approx(1e-4)
    assert lr_at(500, LRSchedule.plan(cfg, 110)) == pytest.approx(1e-4)


def test_lr_schedule_rises_linearly_then_falls_monotonically():
    cfg = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=20)
    lrs = [lr_at(s, LRSchedule.plan(cfg, 200)) for s in range(200)]
    warmup, decay = lrs[:20], lrs[19:]
    assert np.allclose(np.diff(warmup), 3e-3 / 20)  # linear
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert max(lrs) == pytest.approx(3e-3) and min(decay) > 3e-4 and decay[-1] == pytest.approx(3e-4, rel=0.01)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, LRSchedule.plan(cfg, 200))


@pytest.mark.parametrize(("at_step", "new_total"), [(5, 150), (40, 150), (40, 300), (40, 90), (100, 300),
                                                  (110, 300), (130, 300), (100, 105)])
def test_replanned_schedule_never_jumps(at_step, new_total):
    """Extending (or shortening) a run re-plans the cosine from the current rate: continuous at the
    resume step, never above the rate reached there, and at --min-lr at the new end."""
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    old = LRSchedule.plan(cfg, 110)
    new = old.replanned(at_step, new_total)
    before, after = lr_at(at_step - 1, old), lr_at(at_step, new)
    assert after == pytest.approx(lr_at(at_step, old))  # the step the run resumes at keeps its rate
    assert abs(after - before) <= 1e-3 / 10 + 1e-12  # no larger change than one warm-up increment
    rates = [lr_at(s, new) for s in range(max(at_step, 10), new_total + 5)]
    assert all(a >= b - 1e-15 for a, b in zip(rates, rates[1:]))  # after warm-up: only falls
    assert lr_at(new_total, new) == pytest.approx(1e-4)
    assert old.replanned(at_step, 110) is old  # the same length: exactly the stored schedule


def test_lr_schedule_without_warmup_starts_at_peak():
    cfg = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0)
    assert lr_at(0, LRSchedule.plan(cfg, 100)) == pytest.approx(1e-3)
    assert lr_at(50, LRSchedule.plan(cfg, 100)) == pytest.approx(5e-4)


# --- optimiser ----------------------------------------------------------------------------------


def test_weight_decay_only_on_matrices(tiny_config):
    model = MiniTransformer(tiny_config)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    assert id(model.lm_head.weight) in grouped  # the tied matrix, once, with decay
    assert any(p is model.lm_head.weight for p in decay["params"])


def test_cpu_optimizer_is_fused_and_updates_like_the_per_tensor_adamw(tiny_config):
    model = MiniTransformer(tiny_config)
    reference = copy.deepcopy(model)
    cfg = TrainConfig(weight_decay=0.1)
    fused = build_optimizer(model, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True  # one kernel for all parameters (issue 15: ~5x faster step)
    groups = [{"params": [p for p in reference.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in reference.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    plain = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    for _ in range(3):
        for m, opt in ((model, fused), (reference, plain)):
            opt.zero_grad()
            m(idx, idx)[1].backward()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# --- RNG state and checkpoint files -------------------------------------------------------------


def test_rng_state_round_trip():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_checkpoint_round_trip_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    payload = {"format_version": 1, "model": {"w": torch.arange(4.0)}, "model_config": {"a": 1},
               "tokenizer": {"type": "char"}, "rng": capture_rng_state()}
    save_checkpoint(path, payload)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert torch.equal(loaded["rng"]["torch"], payload["rng"]["torch"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "text", "not_ours", "wrong_version"])
def test_damaged_checkpoint_names_file_and_problem(tmp_path, damage):
    path = tmp_path / "best.pt"
    good = {"format_version": 1, "model": {"w": torch.ones(1000)}, "model_config": {}, "tokenizer": {}}
    save_checkpoint(path, good)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":  # the weights-only unpickler fails with a KeyError on these bytes
        path.write_text("hello", encoding="utf-8")
    elif damage == "not_ours":
        torch.save({"state_dict": {}}, path)
    else:
        save_checkpoint(path, {**good, "format_version": 99})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    expected = {"truncated": "corrupt", "garbage": "corrupt", "empty": "corrupt", "text": "corrupt",
                "not_ours": "missing", "wrong_version": "version"}[damage]
    assert expected in message


def test_load_model_missing_run_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/best.pt"):
        load_model(tmp_path)


# --- learning, resume, NaN guard (through main(), in-process) -----------------------------------


def test_loss_falls_and_greedy_generation_reproduces_the_pattern(tmp_path):
    text_file = tmp_path / "pattern.txt"
    text_file.write_text(PATTERN * 300, encoding="utf-8")
    run = tmp_path / "run"
    flags = tiny_flags(text_file, tmp_path / "data", "--n-layer", "2", "--n-embd", "32", "--block-size", "32",
                       "--batch-size", "16", "--dropout", "0", "--lr", "1e-2", "--min-lr", "1e-3",
                       "--warmup-steps", "10", "--max-steps", "150", "--eval-interval", "50")
    assert main(["--train", *flags, "--logdir", str(run)]) == 0

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert val[0] == pytest.approx(math.log(len(set(PATTERN)) + 2), rel=0.15)  # ~ln V before training
    assert val[-1] < 0.1 < val[0] / 20  # the pattern is (almost) fully predictable

    model, tokenizer = load_model(run)
    prompt = "the quick brown "
    idx = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(idx, max_new_tokens=len(PATTERN) * 2, temperature=0.0)
    continuation = tokenizer.decode(out[0, idx.size(1):].tolist())
    assert continuation == (PATTERN * 3)[len(prompt) : len(prompt) + len(PATTERN) * 2]


def test_resume_is_bit_identical(tmp_path):
    """N steps, stop mid-epoch, resume, N more == 2N uninterrupted steps, to the last bit (dropout on)."""
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=4, seed=3), encoding="utf-8")
    flags = tiny_flags(text_file, tmp_path / "data", "--dropout", "0.2", "--grad-accum", "2", "--max-steps", "30",
                       "--eval-interval", "4", "--warmup-steps", "5")
    assert main(["--train", *flags, "--logdir", str(tmp_path / "full")]) == 0
    assert main(["--train", *flags, "--logdir", str(tmp_path / "part")], callbacks=[StopAtStep(15)]) == 130

    stopped = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    steps_per_epoch = json.loads((tmp_path / "full" / "config.json").read_text())["steps_per_epoch"]
    assert stopped["state"]["step"] == 15 and stopped["state"]["batch_in_epoch"] > 0  # stopped mid-epoch ...
    assert stopped["state"]["epoch"] >= 1 and steps_per_epoch < 15  # ... after crossing an epoch boundary
    assert not any(k.startswith("_orig_mod.") for k in stopped["model"])

    assert main(["--train", "--resume", str(tmp_path / "part"), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    resumed = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["state"]["step"] == full["state"]["step"] == 30
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert resumed["state"]["best_val_loss"] == full["state"]["best_val_loss"]
    # The weights after 15 steps differ from the final ones: the comparison above is not vacuous.
    assert not torch.equal(stopped["model"]["lm_head.weight"], full["model"]["lm_head.weight"])

    # Extending the run is allowed; changing the model shape is not.
    assert main(["--train", "--resume", str(tmp_path / "part"), "--data-dir", str(tmp_path / "data"), "--quiet", "--max-steps", "33"]) == 0
    assert load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["state"]["step"] == 33


def test_resume_refuses_a_different_model_shape(tmp_path, capsys):
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=4), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["--train", *tiny_flags(text_file, tmp_path / "data", "--max-steps", "2"), "--logdir", str(run)]) == 0
    capsys.readouterr()
    assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data"), "--n-layer", "3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --n-layer: cannot change n_layer from 1 to 3") and "\n" not in err


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=8), encoding="utf-8")
    run = tmp_path / "run"
    flags = tiny_flags(text_file, tmp_path / "data", "--lr", "100", "--min-lr", "0", "--warmup-steps", "0",
                       "--max-steps", "200", "--eval-interval", "2", "--sample-tokens", "0")
    assert main(["--train", *flags, "--logdir", str(run)]) == 3
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "--lr" in err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["state"]["step"] < 200
    assert all(torch.isfinite(t).all() for t in last["model"].values())  # the kept weights are good


def test_overfitting_warning_and_early_stopping(tmp_path, capsys):
    """Training text is one repeated sentence, validation text is different: the model memorises the
    sentence, validation loss climbs while training loss falls, and --early-stopping ends the run."""
    rng = random.Random(0)
    words = PATTERN.split()
    other = " ".join(rng.choice(words) for _ in range(len(PATTERN) * 8)) + " "  # same words, shuffled
    text_file = tmp_path / "memorise.txt"
    text_file.write_text(PATTERN * 360 + other, encoding="utf-8")  # the last ~10 % (validation) is `other`
    run = tmp_path / "run"
    flags = tiny_flags(text_file, tmp_path / "data", "--n-embd", "32", "--dropout", "0", "--lr", "1e-2",
                       "--warmup-steps", "0", "--max-steps", "400", "--eval-interval", "10", "--early-stopping", "3",
                       "--sample-tokens", "0")
    assert main(["--train", *flags, "--logdir", str(run)]) == 0
    err = capsys.readouterr().err
    assert "Stopped: early_stopping" in err and "warning: validation loss rose" in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert state["step"] < 400 and state["evals_without_improvement"] == 3
    assert state["best_step"] > 0  # it did improve at first ...
    assert load_checkpoint(run / "checkpoints" / "best.pt")["state"]["step"] == state["best_step"]


def eval_steps(run) -> tuple[list[int], list[int]]:
    """Steps of the validation losses in metrics.jsonl and in the TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run))
    events.Reload()
    return [r["step"] for r in rows if "val/loss" in r], [e.step for e in events.Scalars("val/loss")]


def test_resume_survives_damaged_logs_and_keeps_the_checkpoint_steps_evaluation(tmp_path, capsys):
    """A run killed while writing leaves a cut-off metrics line; config.json may be damaged too. Neither
    holds what resuming needs, so resume repairs them; TensorBoard keeps the evaluation at the step
    the run resumes from (only later events of the stopped segment are dropped)."""
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=4), encoding="utf-8")
    run = tmp_path / "run"
    flags = tiny_flags(text_file, tmp_path / "data", "--max-steps", "6", "--eval-interval", "3")
    assert main(["--train", *flags, "--logdir", str(run)]) == 0
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 7, "train/lo')  # cut off mid-line
    (run / "config.json").write_text("{not json", encoding="utf-8")
    capsys.readouterr()

    assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data"), "--max-steps", "9", "--quiet"]) == 0
    assert "config.json was unreadable" in capsys.readouterr().err
    assert eval_steps(run) == ([0, 3, 6, 9], [0, 3, 6, 9])
    config = json.loads((run / "config.json").read_text())
    assert config["segments"][-1]["from_step"] == 6 and config["train"]["max_steps"] == 9


class SignalAtEval(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_eval(self, ctx, record) -> None:
        if record.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupt_before_the_first_step_then_the_same_command_starts_clean(tmp_path, capsys):
    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=4), encoding="utf-8")
    run = tmp_path / "run"
    command = ["--train", *tiny_flags(text_file, tmp_path / "data", "--max-steps", "4", "--eval-interval", "2"),
               "--logdir", str(run)]
    assert main(command, callbacks=[SignalAtEval(0)]) == 130  # Ctrl-C during the evaluation at step 0
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--resume" not in err
    assert not (run / "checkpoints").exists()

    assert main(command) == 0  # the same command again: a clean run, no leftovers of the first attempt
    assert eval_steps(run) == ([0, 2, 4], [0, 2, 4])
    assert (run / "samples.md").read_text().count("## Step 0 ") == 1


def test_interrupt_during_evaluation_stops_it_midway(tmp_path):
    """Ctrl-C during a long evaluation (minutes on a CPU for the default model) must not wait for
    all --eval-batches: the evaluation is abandoned and no half-measured loss is recorded."""
    from src.config import DataConfig, ModelConfig
    from src.dataset import TokenDataset, prepare_dataset
    from src.training.trainer import run_training

    class InterruptAfterReads(TokenDataset):
        """Validation windows; the `limit`-th read asks the loop to stop, as the SIGINT handler does."""

        def __init__(self, *args, holder: dict, limit: int) -> None:
            super().__init__(*args)
            self.holder, self.limit, self.reads = holder, limit, 0

        def __getitem__(self, index):
            self.reads += 1
            if self.reads == self.limit:
                self.holder["ctx"].request_stop("interrupted")
            return super().__getitem__(index)

    class Remember(Callback):
        def __init__(self, holder: dict) -> None:
            self.holder = holder

        def on_train_start(self, ctx) -> None:
            self.holder["ctx"] = ctx

    text_file = tmp_path / "story.txt"
    text_file.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    prepared = prepare_dataset(DataConfig(input=(str(text_file),), data_dir=tmp_path / "data"), show_progress=False)
    holder: dict = {}
    val_set = InterruptAfterReads(prepared.path, "val", 8, holder=holder, limit=3)
    cfg = TrainConfig(batch_size=2, eval_batches=20, max_steps=5, sample_tokens=0)
    model = MiniTransformer(ModelConfig(vocab_size=prepared.meta["tokenizer"]["vocab_size"], block_size=8, n_layer=1,
                                        n_head=2, n_embd=16))
    history = run_training(model, build_optimizer(model, cfg, torch.device("cpu")),
                           TokenDataset(prepared.path, "train", 8), val_set, cfg, device=torch.device("cpu"),
                           callbacks=[Remember(holder)])
    assert len(val_set) >= 2 * 20  # a full evaluation would read 40 windows ...
    assert val_set.reads <= 2 * 2  # ... it stopped within the batch after the request
    assert history.evals == [] and history.stop_reason == "interrupted" and history.state.step == 0
