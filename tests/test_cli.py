"""The command line `python -m src.main`: end to end in subprocesses (train -> generate -> evaluate),
TensorBoard output, interrupts, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields

import pytest
import torch

from src.config import DataConfig, ModelConfig, TrainConfig
from src.main import main
from src.model import MiniTransformer
from src.training.checkpoints import load_checkpoint, load_model
from src.training.trainer import Callback
from src.training.utils import set_seed
from tests.conftest import REPO_ROOT, make_story

USER_COMMAND = ["--train", "--epochs", "5", "--batch-size", "32", "--max-vocab-size", "256",
                "--logdir", "runs/12books_bigmodel_6heads_e5"]
TINY_SHAPE = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--quiet"]
# Attention pictures are most of a tiny run's time; tests/test_inspect_cli.py and the user's command check them.
TINY = [*TINY_SHAPE, "--no-attention-images"]
TAGS = ["train/loss", "val/loss", "val/perplexity", "val/bpc", "lr", "grad_norm", "tokens_per_sec", "epoch"]


def run_cli(args: list[str], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "src.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def story(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(make_story(n_paragraphs=30), encoding="utf-8")
    return path


def signal_when_ready(args: list[str], cwd, ready, signum: int, poll_s: float = 0.1) -> tuple[int, str]:
    """Start `python -m src.main ARGS`, wait (at most 90 s) until `ready()` is true, send `signum`.

    Returns the exit code and stderr; the process is killed in any case.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "src.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll_s)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    return lines[0]


# --- end to end ---------------------------------------------------------------------------------


def test_users_command_then_generate_then_evaluate(tmp_path, story):
    """The user's exact command line (plus a tiny model and corpus), then --generate and --evaluate."""
    train = run_cli([*USER_COMMAND, "--input", str(story), *TINY_SHAPE, "--max-steps", "20", "--eval-interval", "10",
                     "--log-interval", "5"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    run = tmp_path / "runs" / "12books_bigmodel_6heads_e5"
    assert (tmp_path / "data" / "processed").is_dir()  # the data set was built first, in ./data
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "samples.md", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 5 and config["train"]["batch_size"] == 32
    assert config["data"]["max_vocab_size"] == 256 and config["model"]["n_embd"] == 16
    assert config["command"].startswith("python -m src.main --train --epochs 5") and config["versions"]["torch"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # evaluations: before training, every --eval-interval steps, at each epoch's end, at the last step
    per_epoch = config["steps_per_epoch"]
    expected_evals = sorted({0, 10, 20} | set(range(per_epoch, 21, per_epoch)))
    assert [r["step"] for r in rows if "val/loss" in r] == expected_evals
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 5, 10, 15, 20]
    assert all({"step", "tokens", "time"} <= r.keys() for r in rows)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    assert set(TAGS) <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/loss")] == expected_evals
    assert "samples/prompt_0/text_summary" in events.Tags()["tensors"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")

    prompt = "The cat"
    generate = run_cli(["--generate", "--checkpoint", str(run), "--prompt", prompt, "--temperature", "0",
                        "--max-new-tokens", "40"], cwd=tmp_path)
    assert generate.returncode == 0, generate.stderr
    model, tokenizer = load_model(run)
    idx = torch.tensor([tokenizer.encode(prompt)])
    expected = tokenizer.decode(model.generate(idx, 40, temperature=0.0)[0, idx.size(1):].tolist())
    assert generate.stdout == prompt + expected + "\n"  # greedy and streamed token by token

    evaluate = run_cli(["--evaluate", "--checkpoint", str(run), "--quiet"], cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr
    losses = {}
    for line in evaluate.stdout.splitlines():
        for label in ("this model", "bigram counts", "unigram counts", "uniform (ln V)"):
            if line.startswith(label):
                losses[label] = float(line[len(label):].split()[0])
    assert losses["uniform (ln V)"] == pytest.approx(math.log(tokenizer.vocab_size), abs=1e-4)
    assert losses["bigram counts"] < losses["unigram counts"] < losses["uniform (ln V)"]
    assert "story" in evaluate.stdout  # the per-source row


def test_sigint_saves_and_resume_finishes(tmp_path, story, capsys):
    run = tmp_path / "run"
    args = ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--epochs", "1000",
            "--max-steps", "1000000", "--eval-interval", "1000000", "--log-interval", "1", "--logdir", str(run)]
    metrics = run / "metrics.jsonl"
    returncode, err = signal_when_ready(
        args, tmp_path, lambda: metrics.is_file() and '"train/loss"' in metrics.read_text(), signal.SIGINT
    )
    assert returncode == 130, err
    assert f"--resume {run}" in err
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")
    step = stopped["state"]["step"]
    assert step >= 1
    model, _ = load_model(run)  # the weights saved at the interrupt, after `step` optimiser steps
    weights = model.state_dict()
    assert weights.keys() == stopped["model"].keys()
    assert all(torch.equal(weights[name], stopped["model"][name]) for name in weights)
    set_seed(stopped["train_config"]["seed"])  # as src/cli/train.py does right before building the model
    initial = MiniTransformer(model.config).state_dict()["embeddings.token_embedding.weight"]
    change = (weights["embeddings.token_embedding.weight"] - initial).abs().mean()
    # Trained, not the initial weights: they moved - but only a little (a few steps in the warm-up), far less
    # than the distance to another random initialisation (~1.4x the weights' own size).
    assert 0 < change < 0.5 * initial.abs().mean(), (change, initial.abs().mean())

    assert main(["--train", "--resume", str(run), "--max-steps", str(step + 3), "--quiet"]) == 2  # where is the data?
    assert "pass --data-dir" in one_error_line(capsys.readouterr().err)
    assert main(["--train", "--resume", str(run), "--data-dir", str(tmp_path / "data"), "--max-steps", str(step + 3),
                 "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == step + 3


class SendSignal(Callback):
    """Delivers real signals to this process from inside the loop."""

    def __init__(self, at_step: int, *signals: int) -> None:
        self.at_step, self.signals = at_step, signals

    def on_step(self, ctx, record) -> None:
        if record.step == self.at_step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def test_sigterm_exits_143_and_double_ctrl_c_quits_at_once(tmp_path, story):
    base = ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "50",
            "--eval-interval", "1000"]
    assert main([*base, "--logdir", str(tmp_path / "term")], callbacks=[SendSignal(3, signal.SIGTERM)]) == 143
    assert load_checkpoint(tmp_path / "term" / "checkpoints" / "last.pt")["state"]["step"] == 3

    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN in a background job
    twice = [SendSignal(3, signal.SIGINT, signal.SIGINT)]
    assert main([*base, "--logdir", str(tmp_path / "int")], callbacks=twice) == 130
    assert not (tmp_path / "int" / "checkpoints" / "last.pt").exists()  # quit without saving
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# --- errors: one line, exit code 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--n-embd", "30", "--n-head", "4"], "--n-embd"),
        (["--attention", "magic"], "--attention"),
        (["--dropout", "1.5"], "--dropout"),
        (["--lr", "abc"], "--lr"),
        (["--epohcs", "3"], "--epochs"),  # a typo: unknown flag, with a suggestion
        (["--val-fraction", "2"], "--val-fraction"),
    ],
)
def test_invalid_flags_exit_2_naming_the_flag(tmp_path, capsys, flags, named):
    assert main(["--train", *flags, "--data-dir", str(tmp_path / "data")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert named in line
    assert not (tmp_path / "data").exists()  # rejected before any work


def test_mode_must_be_exactly_one(capsys):
    assert main([]) == 2
    assert "--train" in one_error_line(capsys.readouterr().err)
    assert main(["--train", "--generate"]) == 2
    one_error_line(capsys.readouterr().err)


def test_help_lists_every_flag_with_its_default(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for cls in (ModelConfig, TrainConfig, DataConfig):
        for f in fields(cls):
            if f.name == "vocab_size":
                continue
            flag = "--holdout-book" if f.name == "holdout_books" else "--" + f.name.replace("_", "-")
            assert flag in text, flag
    for flag in ("--train", "--generate", "--evaluate", "--resume", "--preset", "--config", "--prompt",
                 "--temperature", "--top-k", "--top-p", "--num-samples", "--max-new-tokens", "--checkpoint"):
        assert flag in text, flag
    assert "(default: 1.0)" in text and "(default: 5)" in text  # --grad-clip, --epochs


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path, story, capsys, damage):
    run = tmp_path / "run"
    assert main(["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "2",
                 "--logdir", str(run)]) == 0
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(b"garbage" * 100 if damage == "garbage" else data[: len(data) // 3])
    capsys.readouterr()
    assert main(["--generate", "--checkpoint", str(last)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(last) in line and "corrupt" in line
    assert main(["--train", "--resume", str(run)]) == 2
    assert str(last) in one_error_line(capsys.readouterr().err)


def test_generate_reports_unknown_prompt_characters(tmp_path, story, capsys):
    run = tmp_path / "run"
    assert main(["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "1",
                 "--logdir", str(run)]) == 0
    capsys.readouterr()
    assert main(["--generate", "--checkpoint", str(run), "--prompt", "The Zürich cat", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "'ü'" in captured.err and "'Z'" in captured.err and "'T'" not in captured.err
    assert captured.out.startswith("The Zürich cat")


def test_preset_config_file_and_flags_are_layered(tmp_path, story):
    config_file = tmp_path / "settings.toml"
    config_file.write_text('preset = "tiny"\nn-layer = 3\nmax_steps = 1\nsample_tokens = 0\n', encoding="utf-8")
    run = tmp_path / "run"
    assert main(["--train", "--config", str(config_file), "--n-layer", "1", "--n-embd", "32", "--input", str(story),
                 "--data-dir", str(tmp_path / "data"), "--logdir", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "tiny"
    assert config["model"]["n_layer"] == 1  # flag beats file
    assert config["model"]["n_embd"] == 32  # flag beats preset
    assert config["model"]["block_size"] == 64 and config["model"]["n_head"] == 4  # from the preset
    assert config["train"]["max_steps"] == 1  # from the file


def test_unknown_config_file_key_is_an_error(tmp_path, capsys):
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps({"n_layers": 3}), encoding="utf-8")
    assert main(["--train", "--config", str(config_file)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "n_layers" in line and "n_layer" in line


def test_sigterm_while_the_data_set_is_built_exits_143_and_leaves_nothing_behind(tmp_path):
    """Without a handler SIGTERM would kill Python at once and leave a half-built temporary folder."""
    big = tmp_path / "big.txt"
    big.write_text(make_story(n_paragraphs=600, seed=1), encoding="utf-8")
    processed = tmp_path / "data" / "processed"
    args = ["--train", "--input", str(big), "--data-dir", str(tmp_path / "data"), "--tokenizer", "bpe",
            "--max-vocab-size", "400", *TINY, "--logdir", str(tmp_path / "run")]
    # ready once the build has begun writing into its temporary folder
    returncode, err = signal_when_ready(
        args, tmp_path, lambda: processed.is_dir() and any(p.name.startswith(".") for p in processed.iterdir()),
        signal.SIGTERM, poll_s=0.02,
    )
    assert returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert not processed.exists() or not any(processed.iterdir())  # no temporary folder, no data set


def test_config_file_value_for_a_list_setting_may_be_a_single_string(tmp_path, story):
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps({"input": str(story), "max_steps": 1, "sample_tokens": 0}), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["--train", "--config", str(config_file), *TINY, "--data-dir", str(tmp_path / "data"),
                 "--logdir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["input"] == [str(story)]


def test_generate_streams_a_bpe_model_character_by_character(tmp_path, capfd):
    """Byte-level BPE tokens can end inside a multi-byte character (ä = 2 bytes); the stream must print
    exactly the decoded text, never a replacement character in between."""
    text = tmp_path / "umlaute.txt"
    text.write_text(("Die Bären äßen gern Äpfel über Öl. " * 40 + "\n\n") * 10, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["--train", "--input", str(text), "--data-dir", str(tmp_path / "data"), "--tokenizer", "bpe",
                 "--max-vocab-size", "270", *TINY, "--max-steps", "3", "--sample-tokens", "0",
                 "--logdir", str(run)]) == 0
    capfd.readouterr()
    prompt = "Die B"
    assert main(["--generate", "--checkpoint", str(run), "--prompt", prompt, "--max-new-tokens", "80",
                 "--temperature", "1.5", "--top-k", "1000", "--seed", "3"]) == 0
    out = capfd.readouterr().out
    model, tokenizer = load_model(run)
    generator = torch.Generator().manual_seed(3)
    idx = torch.tensor([tokenizer.encode(prompt)])
    ids = model.generate(idx, 80, temperature=1.5, top_k=tokenizer.vocab_size, generator=generator)
    expected = tokenizer.decode(ids[0, idx.size(1):].tolist())
    assert any(len(ch.encode("utf-8")) > 1 for ch in expected)  # the sample does hold multi-byte characters
    assert out == prompt + expected + "\n"


def test_evaluate_on_other_text_uses_the_models_tokenizer(tmp_path, capsys):
    """A run trained on books with a held-out book, evaluated on two files of its own: the stored book
    settings give way to --input, and the text is encoded with the model's tokenizer (a fresh data
    set would train a different one)."""
    from tests.conftest import wrap_paragraphs, write_gutenberg_mirror

    mirror = write_gutenberg_mirror(tmp_path / "mirror", {11: wrap_paragraphs(make_story(12, seed=1)),
                                                         74: wrap_paragraphs(make_story(6, seed=2))})
    run = tmp_path / "run"
    assert main(["--train", "--books", "11", "74", "--holdout-book", "74", "--mirror", str(mirror), "--data-dir",
                 str(tmp_path / "data"), *TINY, "--max-steps", "2", "--sample-tokens", "0", "--logdir", str(run)]) == 0
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(make_story(n_paragraphs=6, seed=5), encoding="utf-8")
    second.write_text(make_story(n_paragraphs=6, seed=6), encoding="utf-8")
    capsys.readouterr()
    assert main(["--evaluate", "--checkpoint", str(run), "--input", str(first), str(second), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("first", "second"))}
    assert set(rows) == {"first.txt", "second.txt"}

    model, tokenizer = load_model(run)
    text = second.read_text(encoding="utf-8")
    from src.dataset import split_point
    from src.training.evaluation import model_nll

    ids = tokenizer.encode_to_array(text[split_point(text, 0.1):])
    nll, count = model_nll(model, ids, 16, 32, torch.device("cpu"))
    assert int(rows["second.txt"][2].replace(",", "")) == len(ids)
    assert float(rows["second.txt"][3]) == pytest.approx(nll / count, abs=1e-4)


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    ("flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni", ["avx512_bf16"]),
    ("flags : fpu avx512f amx_tile amx_bf16 avx512_bf16", ["avx512_bf16", "amx_bf16"]),
    ("flags : fpu sse avx2 avx512f avx512_vnni", []),  # AVX-512 without bf16: emulated, slower than fp32
    ("flags : fpu avx512_bf16x amx_bf16_extra", []),  # whole flags only, not parts of other names
    ("", []),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, expected):
    from src.training.utils import cpu_bf16_flags

    assert cpu_bf16_flags(cpuinfo) == expected


def test_dtype_auto_says_which_dtype_and_why_in_the_start_line(tmp_path, story, capsys):
    """On this machine's real CPU: bf16 where /proc/cpuinfo lists native bf16, else fp32 - and the
    run's start line and config.json say so; an explicit --dtype is named as the reason instead."""
    from src.training.utils import cpu_bf16_flags

    flags = ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "1",
             "--device", "cpu"]
    assert main([*flags, "--logdir", str(tmp_path / "auto")]) == 0
    start = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Training:")]
    native = cpu_bf16_flags()
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    if native:  # the faster of the two at this shape, timed at start-up (issue 20)
        assert re.search(rf"device cpu, (bf16|fp32) \(--dtype auto: this CPU has {native[0]}.*; a training step at "
                         r"this shape took [\d,]+ ms in bf16 and [\d,]+ ms in fp32, so \1\)", start[0]), start[0]
    else:
        assert "device cpu, fp32 (--dtype auto: this CPU has no native bf16" in start[0]
        assert config["dtype"] == "fp32"
    assert config["dtype_reason"].startswith("--dtype auto: ") and config["dtype_reason"] in start[0]
    assert main([*flags, "--dtype", "fp32", "--logdir", str(tmp_path / "fp32")]) == 0
    assert "device cpu, fp32 (--dtype)" in capsys.readouterr().err


def test_device_auto_says_when_it_falls_back_to_the_cpu(tmp_path, story, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --device auto does not fall back here")
    flags = ["--train", "--input", str(story), "--data-dir", str(tmp_path / "data"), *TINY, "--max-steps", "1"]
    assert main([*flags, "--logdir", str(tmp_path / "auto")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "--device auto chose the CPU" in line]
    assert len(notes) == 1 and "because" in notes[0]  # once, with the reason
    assert main([*flags, "--device", "cpu", "--logdir", str(tmp_path / "cpu")]) == 0
    assert "--device auto chose the CPU" not in capsys.readouterr().err  # chosen on purpose: no note
