"""Reliability as a hostile or unlucky user meets it (issue 11), one fresh case per class:

1. a run directory is ours or untouched (unrelated folders, a .pt outside a run);
2. one writer per run and per data set (two trainings, two builders);
3. every loader bounded and validated (memory bombs in tokenizers, crafted checkpoints, damaged data sets);
4. guards without holes (NaN weights and validation loss, inf flags, resume on changed data, an
   evaluation cut short);
5. signals and full disks in every mode.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from src.fileio import FileLock, LockedError, WriteError, atomic_write
from src.main import main
from src.training.checkpoints import load_checkpoint
from src.training.trainer import Callback
from tests.conftest import REPO_ROOT, make_story
from tests.test_cli import TINY, one_error_line

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `folder` (folders as 'dir')."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def error_line(text: str) -> str:
    """The one `error:` line of a failed command (notes and progress lines may precede it), no traceback."""
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


def train_args(tmp_path: Path, story: Path, run: Path, *extra: str) -> list[str]:
    return ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--logdir", str(run),
            "--sample-tokens", "0", *extra]


@pytest.fixture
def story(tmp_path) -> Path:
    path = tmp_path / "story.txt"
    path.write_text(make_story(n_paragraphs=30), encoding="utf-8")
    return path


def wait_for(condition, timeout: float = 90, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def catches_sigterm(pid: int) -> bool:
    """True once process `pid` has installed a SIGTERM handler (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


# --- 1. a run directory is ours or untouched ------------------------------------------------------


def test_logdir_with_unrelated_files_is_refused_and_left_byte_for_byte(tmp_path, story, capsys):
    folder = tmp_path / "my_project"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("my own measurements\n")
    (folder / "samples.md").write_text("# my notes\n")
    (folder / "config.json").write_text(json.dumps({"name": "not a run"}))
    (folder / "events.out.tfevents.1.host").write_bytes(b"\x00\x01 someone else's events")
    (folder / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 not ours either")
    before = snapshot(folder)
    assert main(train_args(tmp_path, story, folder)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--logdir" in line and "not a mini_transformer run" in line
    assert snapshot(folder) == before
    assert not (tmp_path / "data").exists()  # refused before any work


def test_resume_refuses_a_checkpoint_outside_a_run_and_a_folder_that_is_not_one(tmp_path, tiny_run, capsys):
    outside = tmp_path / "downloads" / "models" / "model.pt"  # its grandparent holds the user's files
    outside.parent.mkdir(parents=True)
    shutil.copy(tiny_run / "checkpoints" / "last.pt", outside)
    (tmp_path / "downloads" / "config.json").write_text("{}")
    (tmp_path / "downloads" / "metrics.jsonl").write_text("keep me\n")
    before = snapshot(tmp_path / "downloads")
    assert main(["--train", "--resume", str(outside)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--resume" in line and "not a checkpoint inside a run directory" in line
    assert main(["--train", "--resume", str(tmp_path / "downloads")]) == 2
    assert "not a mini_transformer run directory" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "downloads") == before


def test_a_run_with_a_checkpoint_needs_resume_and_an_empty_attempt_may_start_again(tmp_path, story, capsys):
    run = tmp_path / "run"
    assert main(train_args(tmp_path, story, run, "--max-steps", "2")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "mini_transformer-run" and config["exact_continuation"] is True
    assert not (run / ".lock").exists()  # let go at the end
    capsys.readouterr()
    assert main(train_args(tmp_path, story, run, "--max-steps", "2")) == 2
    assert f"--resume {run}" in one_error_line(capsys.readouterr().err)
    shutil.rmtree(run / "checkpoints")  # as after an attempt stopped before its first checkpoint
    assert main(train_args(tmp_path, story, run, "--max-steps", "2")) == 0


# --- 2. one writer per run, one builder per data set ---------------------------------------------------


@pytest.mark.slow  # subprocesses: several seconds
def test_a_second_training_on_a_running_run_exits_2_naming_the_first(tmp_path, story, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "src.main", *train_args(tmp_path, story, run, "--epochs", "1000",
                              "--max-steps", "1000000", "--eval-interval", "2", "--log-interval", "1")],
                             cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (run / "checkpoints" / "last.pt").is_file()), "the first training did not start"
        before = (run / "config.json").read_bytes()
        assert main(train_args(tmp_path, story, run, "--max-steps", "2")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {first.pid}" in line and "in use by another process" in line
        assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data")]) == 2
        assert f"pid {first.pid}" in one_error_line(capsys.readouterr().err)
        assert (run / "config.json").read_bytes() == before  # the second wrote nothing
        assert first.poll() is None  # and the first trains on
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err


def test_file_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    path = tmp_path / "x" / ".lock"
    holder = FileLock(path, "the thing").acquire()
    with pytest.raises(LockedError, match=f"the thing is in use by another process \\(pid {os.getpid()} on"):
        FileLock(path, "the thing").acquire()
    holder.release()
    assert not path.exists()
    with FileLock(path, "the thing"):
        assert path.is_file()


@pytest.mark.slow  # subprocesses: several seconds
def test_two_builders_of_one_data_set_one_builds_the_other_waits_and_reuses(tmp_path, story):
    """The test holds the data set's lock while both builders start, so both must wait; then one builds."""
    processed = tmp_path / "data" / "processed"
    args = [sys.executable, "-m", "src.dataset", "--input", str(story), "--data-dir", str(tmp_path / "data"),
            "--name", "shared", "--quiet", "--block-size", "16"]
    held = FileLock(processed / ".shared.lock", "the data set").acquire()
    builders = []
    try:
        for i in range(2):
            out, err = tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt"
            with open(out, "w") as out_file, open(err, "w") as err_file:
                builders.append((subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=out_file, stderr=err_file),
                                 out, err))
        assert wait_for(lambda: all("waiting for another process" in err.read_text() for _, _, err in builders))
        assert not (processed / "shared").exists()
    finally:
        held.release()
    for proc, _, _ in builders:
        assert proc.wait(timeout=120) == 0
    texts = [out.read_text() for _, out, _ in builders]
    assert sum("\nwritten to " in text for text in texts) == 1  # one built it,
    assert sum("\nreused " in text for text in texts) == 1  # the other reused the finished set
    assert sorted(p.name for p in processed.iterdir()) == ["shared"]  # no temporary folder, no lock file


# --- 3. every loader bounded and validated -----------------------------------------------------------


def chained_merges(n: int = 60) -> list[list[int]]:
    """Merge 0 makes 'aa' (id 256), merge i joins token 255+i with itself: token 256+i has 2**(i+1) bytes."""
    return [[97, 97]] + [[255 + i, 255 + i] for i in range(1, n)]


def bomb_tokenizer() -> dict:
    return {"type": "bpe", "version": 1, "special_tokens": ["<|endoftext|>"], "merges": chained_merges()}


@functools.cache
def address_space_after_import() -> int:
    """Bytes of address space a Python process maps once `src.main` and torch are imported (VmSize).

    The CPU build of torch maps about 0.6 GB, the CUDA build several GB of libraries it may never
    touch: a fixed limit that fits one fails the other, so limits are set on top of this.
    """
    script = "import src.main, torch; print(open('/proc/self/status').read())"
    status = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120,
                            check=True).stdout
    return int(re.search(r"^VmSize:\s+(\d+) kB", status, flags=re.MULTILINE).group(1)) * 1024


def run_limited(args: list[str], cwd: Path, extra: int = 1 << 30) -> subprocess.CompletedProcess:
    """`python ARGS` with at most `extra` bytes of address space beyond what importing torch maps
    (building the tokens naively needs 2**60)."""
    memory = address_space_after_import() + extra

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=60,
                          preexec_fn=limit)


def test_chained_merges_fail_fast_with_one_line_from_a_file_a_checkpoint_and_a_safetensors_header(tmp_path, tiny_run):
    from safetensors.torch import save_file

    tokenizer_file = tmp_path / "tokenizer.json"
    tokenizer_file.write_text(json.dumps(bomb_tokenizer()))
    payload = load_checkpoint(tiny_run / "checkpoints" / "last.pt")
    crafted_pt = tmp_path / "crafted.pt"
    torch.save({**payload, "tokenizer": bomb_tokenizer(), "tokenizer_fingerprint": None}, crafted_pt)
    crafted_st = tmp_path / "crafted.safetensors"  # real weights, a crafted tokenizer in the header
    tied = {"lm_head.weight": "embeddings.token_embedding.weight"}
    save_file({name: t.contiguous() for name, t in payload["model"].items() if name not in tied}, crafted_st,
              metadata={"format": "pt", "project": "mini_transformer", "format_version": "1",
                        "model_config": json.dumps(payload["model_config"]), "tokenizer": json.dumps(bomb_tokenizer()),
                        "tied_weights": json.dumps(tied)})
    script = ("import sys\n"
              "from src.main import main\n"
              "from src.tokenizer_json import load_tokenizer\n"
              "codes = [main(['--generate', '--checkpoint', path]) for path in sys.argv[1:3]]\n"
              "try:\n"
              "    load_tokenizer(sys.argv[3])\n"
              "except ValueError as err:\n"
              "    print(f'error: {err}', file=sys.stderr)\n"
              "    codes.append(2)\n"
              "print(codes)\n")
    started = time.monotonic()
    result = run_limited(["-c", script, str(crafted_pt), str(crafted_st), str(tokenizer_file)], tmp_path)
    assert time.monotonic() - started < 30  # fast: the sizes are computed, nothing is built
    assert result.stdout.strip() == "[2, 2, 2]" and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 3  # one line per file
    for line, crafted in zip(lines, (crafted_pt, crafted_st, tokenizer_file), strict=True):
        assert line.startswith("error: ") and str(crafted) in line and "refused before building it" in line


def tampered_checkpoint(tiny_run: Path, tmp_path: Path, change) -> Path:
    """A copy of the shared tiny run with its last.pt changed by `change(payload)`."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    change(payload)
    torch.save(payload, last)
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    return run


def add_a_token(payload: dict) -> None:
    payload["tokenizer"]["chars"].append("\u2603")  # one token more than the model has rows for
    payload["tokenizer_fingerprint"] = None


@pytest.mark.parametrize(("change", "expected", "modes"), [
    (lambda p: p.update(model=[1, 2, 3]), "entry 'model' is a list", ("resume", "generate")),
    (lambda p: p["model"].update({"lm_head.weight": "weights"}), "are a str, not a tensor", ("resume", "generate")),
    (lambda p: p["state"].update(step="12"), "state 'step' is '12', not an integer", ("resume",)),
    (lambda p: p.update(rng={"python": 1}), "random generator state is not usable", ("resume",)),
    (lambda p: p["optimizer"]["state"][0].update(exp_avg="x"), "optimizer's state is not tensors", ("resume",)),
    (add_a_token, "tokenizer has", ("generate",)),
])
def test_crafted_checkpoints_are_one_line_for_resume_and_generate(tmp_path, tiny_run, capsys, change, expected,
                                                                  modes):
    run = tampered_checkpoint(tiny_run, tmp_path, change)
    last = run / "checkpoints" / "last.pt"
    commands = {"resume": ["--train", "--resume", str(run), "--data-dir", str(tiny_run.parent.parent / "data")],
                "generate": ["--generate", "--checkpoint", str(last), "--max-new-tokens", "3"]}
    for mode in modes:
        assert main(commands[mode]) == 2, mode
        line = one_error_line(capsys.readouterr().err)
        assert str(last) in line and expected in line, line


def test_nan_weights_are_refused_by_generate_with_one_line(tmp_path, tiny_run, capsys):
    def poison(payload):
        name = next(name for name, tensor in payload["model"].items() if tensor.is_floating_point())
        payload["model"][name].view(-1)[0] = math.nan

    last = tampered_checkpoint(tiny_run, tmp_path, poison) / "checkpoints" / "last.pt"
    assert main(["--generate", "--checkpoint", str(last), "--max-new-tokens", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(last) in line and "NaN or infinite" in line


def test_damaged_data_sets_are_found_on_reuse(tmp_path, story, capsys):
    from src.cli.dataset import main as dataset_main

    args = ["--input", str(story), "--data-dir", str(tmp_path / "data"), "--quiet", "--block-size", "16"]
    assert dataset_main(args) == 0
    folder = next((tmp_path / "data" / "processed").iterdir())
    train_bin = folder / "train.bin"
    whole = train_bin.read_bytes()
    train_bin.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert dataset_main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(train_bin) in line and "truncated or replaced" in line
    train_bin.write_bytes(whole)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["chars"] = tokenizer["chars"][::-1]  # same characters, other ids: a swapped tokenizer.json
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert dataset_main(args) == 2
    assert "not the tokenizer this data set was encoded with" in one_error_line(capsys.readouterr().err)


# --- 4. guards without holes ---------------------------------------------------------------------


def test_inf_is_rejected_wherever_nan_is(tmp_path, capsys):
    for flag in ("--lr", "--min-lr", "--weight-decay", "--grad-clip"):
        for value in ("inf", "nan"):
            assert main(["--train", flag, value, "--data-dir", str(tmp_path / "data")]) == 2
            assert flag in one_error_line(capsys.readouterr().err)
    assert main(["--generate", "--checkpoint", str(tmp_path), "--temperature", "inf"]) == 2
    assert "--temperature" in one_error_line(capsys.readouterr().err)


class PoisonWeights(Callback):
    """Makes the output layer NaN right after step `at_step` (as an overflowing update would)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step(self, ctx, record) -> None:
        if record.step == self.at_step:
            with torch.no_grad():
                ctx.model.lm_head.weight[0, 0] = math.nan


def test_nan_validation_loss_stops_the_run_and_last_pt_stays_the_last_good(tmp_path, story, capsys):
    run = tmp_path / "run"
    code = main(train_args(tmp_path, story, run, "--max-steps", "8", "--eval-interval", "2"),
                callbacks=[PoisonWeights(at_step=4)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "the validation loss became NaN/inf after step 4" in err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 2  # the evaluation at step 4 saw NaN: nothing was saved from it on
    assert all(bool(torch.isfinite(t).all()) for t in last["model"].values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [0, 2]


def test_resume_on_changed_data_is_refused_and_with_force_recorded(tmp_path, story, capsys):
    run, data = tmp_path / "run", ["--data-dir", str(tmp_path / "data")]
    assert main(train_args(tmp_path, story, run, "--max-steps", "2", "--eval-interval", "2")) == 0
    story.write_text(make_story(n_paragraphs=30, seed=7), encoding="utf-8")  # other text, same characters
    capsys.readouterr()
    before = snapshot(run)
    assert main(["--train", "--resume", str(run), *data, "--max-steps", "4", "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: --resume:") and "--force" in line and "exactly" in line
    assert snapshot(run) == before  # refused before the run was touched

    assert main(["--train", "--resume", str(run), *data, "--max-steps", "4", "--quiet", "--force"]) == 0
    err = capsys.readouterr().err
    assert "no longer an exact continuation" in err and "Not an exact continuation" in err
    config = json.loads((run / "config.json").read_text())
    assert config["exact_continuation"] is False and [c["step"] for c in config["data_changes"]] == [2]
    assert config["segments"][-1]["data_changed"] is True
    assert load_checkpoint(run / "checkpoints" / "last.pt")["data_changes"][0]["step"] == 2  # carried on


def test_resume_refuses_a_data_set_rebuilt_behind_its_back(tmp_path, story, capsys):
    from src.cli.dataset import main as dataset_main

    run, data = tmp_path / "run", ["--data-dir", str(tmp_path / "data")]
    assert main(train_args(tmp_path, story, run, "--max-steps", "2", "--eval-interval", "2")) == 0
    story.write_text(make_story(n_paragraphs=30, seed=7), encoding="utf-8")
    assert dataset_main(["--input", str(story), *data, "--force", "--quiet", "--block-size", "16"]) == 0
    capsys.readouterr()
    assert main(["--train", "--resume", str(run), *data, "--max-steps", "4", "--quiet"]) == 2
    line = error_line(capsys.readouterr().err)
    assert "is not the one this run trained on up to step 2" in line


class InterruptEvaluation(Callback):
    """SIGINT right before the evaluation of step `at_step`: the loop asks it to stop, it is cut short."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step(self, ctx, record) -> None:
        if record.step == self.at_step:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_evaluation_cut_short_is_redone_once_after_resume(tmp_path, story, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = train_args(tmp_path, story, run, "--max-steps", "6", "--eval-interval", "3", "--log-interval", "1")
    assert main(args, callbacks=[InterruptEvaluation(at_step=3)]) == 130
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert stopped["step"] == 3 and stopped["last_eval_step"] == 0  # saved, but its evaluation never finished
    assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/loss" in r] == [0, 3, 6]
    events = EventAccumulator(str(run))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [0, 3, 6]


# --- 5. signals and full disks --------------------------------------------------------------------


def test_sigterm_during_a_data_set_build_exits_143_and_leaves_no_temporary_folder(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(make_story(n_paragraphs=600, seed=1), encoding="utf-8")
    processed = tmp_path / "data" / "processed"
    proc = subprocess.Popen([sys.executable, "-m", "src.dataset", "--input", str(big), "--data-dir",
                             str(tmp_path / "data"), "--tokenizer", "bpe", "--max-vocab-size", "400", "--quiet"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = wait_for(lambda: processed.is_dir() and any(".tmp-" in p.name for p in processed.iterdir()))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert started and proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert not processed.exists() or not any(processed.iterdir())


@pytest.mark.parametrize("mode", ["--evaluate", "--visualize", "--export"])
def test_sigterm_in_every_mode_exits_143_without_temporary_files(tmp_path, tiny_run, mode):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    extra = {"--evaluate": ["--data-dir", str(tmp_path / "fresh_data"), "--quiet"],  # builds the data set anew
             "--visualize": ["--out", str(tmp_path / "pictures")], "--export": []}[mode]
    proc = subprocess.Popen([sys.executable, "-m", "src.main", mode, "--checkpoint", str(run), *extra],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: catches_sigterm(proc.pid) or proc.poll() is not None, poll=0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not leftovers


def test_a_failed_write_names_the_file_and_the_free_space_and_keeps_the_old_file(tmp_path):
    """RLIMIT_FSIZE makes every write past 64 kB fail (EFBIG), as a full disk fails with ENOSPC."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"old contents")
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "from src.fileio import atomic_write, WriteError\n"
            "try:\n"
            f"    atomic_write({str(target)!r}, b'x' * 200000)\n"
            "except WriteError as err:\n"
            "    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"cannot write {target}: File too large" in result.stdout and "free on its disk" in result.stdout
    assert "previous model.bin is unchanged" in result.stdout
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # no temporary file left
    assert issubclass(WriteError, ValueError) and atomic_write  # the CLI turns it into one line


@contextlib.contextmanager
def tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A real, small file system at `disk` (a tmpfs of `size`, e.g. "1m"); skips the test where mounting
    is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not allowed here (e.g. a container without CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.slow  # subprocesses: several seconds
def test_a_full_disk_during_training_is_one_line_and_last_pt_stays_intact(tmp_path, story):
    """A real full file system: a 1 MB tmpfs (needs root and mount; skipped elsewhere)."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        run = disk / "run"
        assert main([*train_args(tmp_path, story, run, "--max-steps", "2", "--eval-interval", "2"), "--quiet"]) == 0
        last = run / "checkpoints" / "last.pt"
        before = last.read_bytes()
        with open(disk / "filler", "wb") as filler:  # leave 48 kB: enough for the run's text files, not for a checkpoint
            free = shutil.disk_usage(disk).free
            filler.write(b"\0" * max(0, free - 48 * 1024))
        resumed = subprocess.run([sys.executable, "-m", "src.main", "--train", "--resume", str(run), "--data-dir",
                                  str(tmp_path / "data"), "--max-steps", "4", "--quiet"], cwd=tmp_path, env=ENV,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 2, resumed.stderr
        line = error_line(resumed.stderr)
        assert "No space left on device" in line and "free on its disk" in line and str(run) in line
        assert last.read_bytes() == before
        assert not [p for p in run.rglob("*.tmp")]


def test_export_never_replaces_a_file_that_is_not_an_export_of_ours(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    foreign = run / "model.safetensors"  # the default --out of --export --checkpoint RUN
    foreign.write_bytes(b"somebody else's model")
    assert main(["--export", "--checkpoint", str(run)]) == 2
    assert "is not an export of this project" in one_error_line(capsys.readouterr().err)
    assert foreign.read_bytes() == b"somebody else's model"
    foreign.unlink()
    assert main(["--export", "--checkpoint", str(run)]) == 0
    assert main(["--export", "--checkpoint", str(run)]) == 0  # an export of ours may be written again


def test_a_finished_data_set_on_a_read_only_disk_is_reused_without_a_lock(tmp_path, story, capsys):
    """A shared, read-only copy of a data set: reusing it writes nothing, so it needs no lock file."""
    from src.cli.dataset import main as dataset_main

    with tmpfs(tmp_path / "disk", "4m") as disk:
        args = ["--input", str(story), "--data-dir", str(disk / "data"), "--quiet", "--block-size", "16"]
        assert dataset_main(args) == 0
        assert subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        capsys.readouterr()
        assert dataset_main(args) == 0
        assert "nothing was rebuilt" in capsys.readouterr().out
        assert dataset_main([*args, "--force"]) == 2  # a rebuild must write: one line naming the folder
        assert "choose another --data-dir" in one_error_line(capsys.readouterr().err)


def test_a_data_set_name_that_is_someone_elses_folder_is_never_replaced(tmp_path, story, capsys):
    from src.cli.dataset import main as dataset_main

    folder = tmp_path / "data" / "processed" / "notes"
    folder.mkdir(parents=True)
    (folder / "todo.txt").write_text("my list\n")
    for extra in ([], ["--force"]):
        assert dataset_main(["--input", str(story), "--data-dir", str(tmp_path / "data"), "--name", "notes",
                             "--quiet", *extra]) == 2
        assert "is not a data set of this project" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path / "data") == {"processed": "dir", "processed/notes": "dir",
                                           "processed/notes/todo.txt": hashlib.sha256(b"my list\n").hexdigest()}


# --- memory -------------------------------------------------------------------------------------


def test_a_model_too_large_for_this_machine_is_refused_before_anything_is_allocated(tmp_path, story, capsys):
    """64 layers of width 8192 need ~800 GiB to train: one line naming the flags, nothing written."""
    from src.training.utils import free_memory

    if free_memory(torch.device("cpu")) is None:
        pytest.skip("no /proc/meminfo: free memory unknown, nothing is checked")
    run = tmp_path / "big"
    code = main(["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                 "--n-layer", "64", "--n-embd", "8192", "--n-head", "8", "--logdir", str(run), "--quiet"])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and "GiB to train" in line and "--n-layer or --n-embd" in line
    assert not run.exists()


class AllocateTooMuch(Callback):
    """Asks the real CPU allocator for 2**50 bytes (a petabyte) during the first step."""

    def on_step(self, ctx, record) -> None:
        torch.empty(2**50, dtype=torch.uint8)


def test_running_out_of_memory_during_training_is_one_line_exit_2(tmp_path, story, capsys):
    code = main(train_args(tmp_path, story, tmp_path / "run", "--max-steps", "3"),
                callbacks=[AllocateTooMuch()])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("error: out of memory (") and "--batch-size" in line
