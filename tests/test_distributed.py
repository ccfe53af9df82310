"""Several processes: DistributedDataParallel under torchrun, on the CPU with gloo.

The end-to-end tests start `python -m torch.distributed.run --standalone --nproc_per_node=2 -m src.main`
(torchrun; `--standalone` picks a free port) on a tiny model and text and check what a user relies on:
one run directory written by rank 0 alone, weights equal to one process with the same global batch,
an exact resume, a checkpoint that loads without DDP, and a SIGTERM to one process that stops both.
The in-process tests check the pieces: the data split, the helpers without torchrun, and that with
gradient accumulation DDP averages the gradients once per step (`no_sync`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from src.config import TrainConfig
from src.dataset import make_dataloader
from src.main import main
from src.training import distributed
from src.training.checkpoints import load_checkpoint
from src.training.trainer import steps_per_epoch_for
from tests.conftest import REPO_ROOT, make_story

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this PyTorch build has no gloo backend")
needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' pids in /proc (Linux)")

# A tiny model in fp32 (exact comparisons), a flat learning rate (a resume may change --max-steps
# without changing a single update), gradient accumulation (so `no_sync` is on the path).
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--device", "cpu",
        "--dtype", "fp32", "--grad-accum", "2", "--warmup-steps", "0", "--lr", "1e-3", "--min-lr", "1e-3",
        "--epochs", "1000", "--eval-batches", "2", "--eval-interval", "1000", "--sample-tokens", "8",
        "--log-interval", "1", "--quiet", "--no-attention-images"]
PER_DEVICE = 4  # --batch-size under torchrun; one process gets 2 x 4 = 8


def torchrun_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "src.main",
            *args]


def torchrun_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def torchrun(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(*args), cwd=cwd, env=torchrun_env(), capture_output=True, text=True,
                          timeout=timeout)


def exit_codes(torchrun_output: str) -> list[int]:
    """The exit code of every failed rank, from torchrun's closing report."""
    return [int(code) for code in re.findall(r"^\s+exitcode\s+:\s+(-?\d+)", torchrun_output, flags=re.MULTILINE)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture
def story(tmp_path) -> Path:
    path = tmp_path / "story.txt"
    path.write_text(make_story(n_paragraphs=30), encoding="utf-8")
    return path


# --- the pieces, in one process ------------------------------------------------------------------


class Numbered(torch.utils.data.Dataset):
    """Window i is the tensor [i]: shows which windows a DataLoader hands out."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([i]), torch.tensor([i])


def windows(loader) -> list[list[int]]:
    return [x[:, 0].tolist() for x, _ in loader]


def test_each_global_batch_is_split_into_disjoint_shares():
    """Rank r takes slice r of every global batch of the one seeded order: the shares are disjoint and
    together are exactly the batches of one process with a batch world_size times larger."""
    data, B, W = Numbered(23), 3, 2
    one = windows(make_dataloader(data, B * W, shuffle=True, seed=5, epoch=1))
    ranks = [windows(make_dataloader(data, B, shuffle=True, seed=5, epoch=1, rank=r, world_size=W)) for r in range(W)]
    assert len(ranks[0]) == len(ranks[1]) == 23 // (B * W) == 3  # the incomplete last global batch is dropped
    for step, (first, second) in enumerate(zip(ranks[0], ranks[1], strict=True)):
        assert not set(first) & set(second)  # disjoint
        assert first + second == one[step]  # together: the single process's batch, in order
    # reshuffled per epoch from the seed, and a mid-epoch start continues the same shares
    assert windows(make_dataloader(data, B, shuffle=True, seed=5, epoch=2, rank=0, world_size=W)) != ranks[0]
    assert windows(make_dataloader(data, B, shuffle=True, seed=5, epoch=1, start_batch=1, rank=1,
                                   world_size=W)) == ranks[1][1:]


def test_docstring_example_of_the_split():
    """make_dataloader's example: order [5, 2, 7, 0, 3, 1, 6, 4], batch_size 2, world_size 2."""
    order = [5, 2, 7, 0, 3, 1, 6, 4]
    shares = np.asarray(order).reshape(-1, 2, 2)  # (batches, W, B), as make_dataloader cuts it
    assert shares[:, 0].tolist() == [[5, 2], [3, 1]] and shares[:, 1].tolist() == [[7, 0], [6, 4]]


def test_steps_per_epoch_follow_from_the_global_batch():
    cfg = TrainConfig(batch_size=8)
    assert steps_per_epoch_for(100, cfg) == 12  # only whole batches: 96 windows, 4 wait for the next shuffle
    assert steps_per_epoch_for(100, cfg, world_size=2) == 6  # 6 x 16 = 96 windows; 4 are left over
    # The README's promise: W processes with --batch-size B/W make as many steps as one with B.
    for windows in (100, 97, 64, 1000):
        for world, accum in ((2, 1), (4, 1), (2, 3)):
            one = steps_per_epoch_for(windows, TrainConfig(batch_size=8 * world, grad_accum=accum))
            assert steps_per_epoch_for(windows, TrainConfig(batch_size=8, grad_accum=accum), world_size=world) == one
    with pytest.raises(ValueError, match="x 4 processes"):
        steps_per_epoch_for(20, cfg, world_size=4)


def test_effective_batch_docstring_example():
    from src.cli.train import effective_batch

    batch = effective_batch(TrainConfig(batch_size=32, grad_accum=4), world_size=2, block_size=256)
    assert (batch["sequences"], batch["tokens"]) == (256, 65_536)


def test_without_torchrun_every_helper_is_one_process():
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.max_over_ranks(True, 15) == [1, 15]
    assert distributed.mean_over_ranks(2.5, weight=300) == 2.5
    state = {"a": torch.arange(3)}
    assert distributed.all_gather_states(state) == [state]
    assert distributed.main_first(lambda: 42, what="answer") == 42
    distributed.check_same_everywhere("abc", "the data set")  # nothing to compare with
    device = torch.device("cpu")
    assert distributed.setup(device) == device and not dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group():
    """A real gloo process group of one process, so that DDP can be built in this test."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@needs_gloo
@pytest.mark.parametrize("grad_accum", [1, 3])
def test_ddp_averages_the_gradients_once_per_step(one_process_group, tiny_config, grad_accum):
    """With gradient accumulation the loop runs every micro-batch but the last inside `no_sync`, so DDP
    communicates once per optimiser step, not once per micro-batch."""
    from torch.nn.parallel import DistributedDataParallel

    from src.model import MiniTransformer
    from src.training.train_loop import LRSchedule, build_optimizer, train

    model = MiniTransformer(tiny_config)
    ddp = DistributedDataParallel(model)
    communications = []

    def count(state, bucket):  # a DDP communication hook: called for each gradient all-reduce
        communications.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    ddp.register_comm_hook(None, count)
    cfg = TrainConfig(batch_size=2, grad_accum=grad_accum, eval_interval=100, warmup_steps=0)
    x = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    batches = iter([(x, x)] * (3 * grad_accum))
    train(model, build_optimizer(model, cfg, torch.device("cpu")), batches, lambda: None, cfg,
          LRSchedule.plan(cfg, 3), forward=ddp, no_sync=ddp.no_sync)
    buckets = len(set(communications))
    assert len(communications) == 3 * buckets  # 3 steps: one all-reduce per bucket and step


def test_every_micro_batch_counts_its_tokens(tiny_config):
    """A step with --grad-accum 3 whose micro-batches differ in size counts the tokens of each."""
    from src.model import MiniTransformer
    from src.training.train_loop import LRSchedule, TrainHooks, build_optimizer, train

    class Tokens(TrainHooks):
        def on_step(self, report) -> None:
            self.tokens = report.tokens

    model, cfg, hooks = MiniTransformer(tiny_config), TrainConfig(batch_size=4, grad_accum=3, warmup_steps=0), Tokens()
    sizes = [4, 4, 1]  # e.g. the last, smaller batch of an epoch
    batches = iter([(x, x) for x in (torch.randint(0, tiny_config.vocab_size, (b, tiny_config.block_size))
                                     for b in sizes)])
    train(model, build_optimizer(model, cfg, torch.device("cpu")), batches, lambda: None, cfg, LRSchedule.plan(cfg, 1),
          hooks=hooks)
    assert hooks.tokens == sum(sizes) * tiny_config.block_size  # 9 windows, not 3 x the last one


# --- torchrun with two processes -----------------------------------------------------------------


@needs_gloo
@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(tmp_path, story, capsys):
    """DDP with 2 x 4 sequences equals one process with 8 (same seed, same windows) within 1e-5 after
    10 steps with --grad-accum 2; rank 0 alone writes one run directory; the data set is built once;
    the checkpoint loads in a plain single-process --generate."""
    steps = ["--max-steps", "10", "--dropout", "0"]
    data = ["--input", str(story), "--data-dir", str(tmp_path / "data")]
    ddp = torchrun(["--train", *data, *TINY, *steps, "--batch-size", str(PER_DEVICE),
                    "--logdir", str(tmp_path / "runs" / "ddp")], cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    run = tmp_path / "runs" / "ddp"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # exactly one run directory
    assert ddp.stderr.count("Data set ") == 1 and "(built)" in ddp.stderr  # rank 0 speaks, and built it
    assert len(list((tmp_path / "data" / "processed").iterdir())) == 1  # once, nothing left half-written
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # one set of TensorBoard event files
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["train"]["batch_size"] == PER_DEVICE
    assert config["effective_batch"] == {"per_device": 4, "devices": 2, "grad_accum": 2, "sequences": 16,
                                         "tokens": 256}
    assert "Effective batch: 4 sequences per device" in ddp.stderr and "= 16 sequences" in ddp.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 11))  # written once, by rank 0
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["state"]["tokens_seen"] == 10 * 16 * 16  # steps x sequences x tokens: all processes
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # the unwrapped model

    assert main(["--train", *data, *TINY, *steps, "--batch-size", str(2 * PER_DEVICE),
                 "--logdir", str(tmp_path / "one")]) == 0
    one, two = weights(tmp_path / "one"), weights(run)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)

    capsys.readouterr()
    assert main(["--generate", "--checkpoint", str(run), "--prompt", "The ", "--max-new-tokens", "10",
                 "--temperature", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("The ")


@needs_gloo
@needs_proc
@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_resume_continues_exactly(tmp_path, story, capsys):
    """SIGTERM to rank 1 only: both processes agree to stop after the same step, rank 0 saves one
    checkpoint with both ranks' RNG states, both exit 143. Resuming under torchrun then gives weights
    bit-identical to an uninterrupted run (dropout on, so each rank's RNG state matters; with two
    processes gloo's sum a + b has one order, so no tolerance is needed)."""
    data = ["--input", str(story), "--data-dir", str(tmp_path / "data")]
    flags = [*data, *TINY, "--batch-size", str(PER_DEVICE), "--dropout", "0.1"]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(torchrun_command("--train", *flags, "--max-steps", "100000", "--logdir", str(stopped)),
                            cwd=tmp_path, env=torchrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        metrics, deadline = stopped / "metrics.jsonl", time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (
                metrics.is_file() and '"train/loss":' in metrics.read_text()):
            time.sleep(0.05)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ranks = {}
        for pid in children:
            env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            ranks[int(env["RANK"])] = int(pid)
        os.kill(ranks[1], signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert exit_codes(err) == [143, 143], err  # torchrun reports each rank's exit code
    assert "rank 1: SIGTERM received" in err and "rank 0: SIGTERM" not in err
    assert "Resume with: torchrun --standalone --nproc_per_node=2 -m src.main --train --resume" in err
    checkpoint = load_checkpoint(stopped / "checkpoints" / "last.pt")
    step = checkpoint["state"]["step"]
    assert step >= 1 and checkpoint["world_size"] == 2
    rng = checkpoint["rng_per_rank"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank its own dropout

    capsys.readouterr()  # a different number of processes cannot continue it exactly
    assert main(["--train", "--resume", str(stopped), "--data-dir", str(tmp_path / "data")]) == 2
    assert "trained by 2 process(es)" in capsys.readouterr().err

    end = ["--max-steps", str(step + 6)]
    resumed = torchrun(["--train", "--resume", str(stopped), "--data-dir", str(tmp_path / "data"), "--quiet", "--no-attention-images", *end],
                       cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    straight = torchrun(["--train", *flags, *end, "--logdir", str(tmp_path / "straight")], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    after, reference = weights(stopped), weights(tmp_path / "straight")
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["state"]["step"] == step + 6
    assert all(torch.equal(after[name], reference[name]) for name in reference)


POISON_RANK_0 = """
import signal
import sys
from src.main import main
from src.training.trainer import Callback


class PoisonLoss(Callback):
    # From step 3 on, this process's loss is NaN while its gradients stay finite (a constant added
    # to the loss has no gradient): only the loss, not the all-reduced gradients, shows the trouble.
    def on_step(self, ctx, record):
        if record.step == 2:
            ctx.model.register_forward_hook(lambda module, args, out: (out[0], out[1] + float("nan")))


code = main(sys.argv[1:], callbacks=[PoisonLoss()])  # callbacks run on rank 0 only
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as src/main.py under torchrun: keep this exit code
sys.exit(code)
"""


@needs_gloo
@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_both_at_once(tmp_path, story):
    """Rank 0 alone sees a NaN loss: both processes stop after the same step with exit code 3 and the
    divergence message, instead of rank 1 waiting in the next all-reduce until the collective timeout."""
    driver = tmp_path / "poison.py"
    driver.write_text(POISON_RANK_0, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver),
               "--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "50",
               "--batch-size", str(PER_DEVICE), "--logdir", str(tmp_path / "run")]
    started = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, env=torchrun_env(), capture_output=True, text=True, timeout=170)
    assert exit_codes(result.stderr) == [3, 3], result.stderr
    assert "the loss became NaN/inf at step 3" in result.stderr
    assert time.monotonic() - started < 160  # long before the collective timeout (an hour)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # nothing saved after the NaN
