"""Seeing inside from the command line: attention images in TensorBoard, --visualize, --explain and
--generate --check-memorization, on a real (tiny) training run."""

from __future__ import annotations

import re

import pytest

from src.main import main
from src.memorization import training_texts
from src.training.checkpoints import load_checkpoint
from tests.conftest import TINY_RUN_EVAL_INTERVAL, TINY_RUN_SHAPE, TINY_RUN_STEPS, make_story

N_LAYER, N_HEAD, N_EMBD, BLOCK = (TINY_RUN_SHAPE[k] for k in ("n_layer", "n_head", "n_embd", "block_size"))
SHAPE = ["--n-layer", str(N_LAYER), "--n-head", str(N_HEAD), "--n-embd", str(N_EMBD), "--block-size", str(BLOCK)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def trained_run(tiny_run):
    return tiny_run


def test_training_logs_attention_of_first_and_last_layer_at_evaluations(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run), size_guidance={"images": 0})
    events.Reload()
    eval_steps = [e.step for e in events.Scalars("val/loss")]
    assert eval_steps == list(range(0, TINY_RUN_STEPS + 1, TINY_RUN_EVAL_INTERVAL))
    for tag in ("attention/layer_0", f"attention/layer_{N_LAYER - 1}"):
        images = events.Images(tag)
        steps = [image.step for image in images]
        # Before training and at the end always; in between only within the time budget (EXTRAS_SHARE),
        # which steps of a few milliseconds leave no room for here.
        assert steps[0] == 0 and steps[-1] == TINY_RUN_STEPS and set(steps) <= set(eval_steps)
        assert all(image.encoded_image_string.startswith(PNG_MAGIC) for image in images)


def test_no_attention_images_draws_none_and_never_imports_matplotlib(tmp_path):
    """--no-attention-images: the same run without pictures, and without loading matplotlib at all (its
    import is most of our extra memory next to nanoGPT). A fresh process, so nothing imported it before."""
    import json
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import REPO_ROOT

    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=10), encoding="utf-8")
    argv = ["--train", "--input", str(story), *SHAPE, "--max-steps", "2", "--eval-interval", "1", "--batch-size", "4",
            "--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path / "run"), "--quiet", "--device", "cpu",
            "--no-attention-images"]
    script = ("import json, sys; from src.main import main; code = main(json.loads(sys.argv[1])); "
              "print(json.dumps([code, 'matplotlib' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argv)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0, False], done.stderr[-2000:]
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [0, 1, 2]
    assert events.Tags()["images"] == []


def test_no_attention_images_belongs_to_training(capsys):
    assert main(["--generate", "--checkpoint", "x", "--no-attention-images"]) == 2
    assert "--no-attention-images: only with --train or --experiment" in capsys.readouterr().err


def test_samples_carry_the_memorization_check(trained_run):
    samples = (trained_run / "samples.md").read_text(encoding="utf-8")
    notes = re.findall(r"longest verbatim match: (\d+) characters from (.+?):", samples)
    sampled = samples.count("## Step ")  # the first and the last of three evaluations, or all three
    assert sampled in (2, 3) and len(notes) == sampled * 2  # two prompts each
    assert all(source.startswith("story") for _, source in notes)


def test_visualize_writes_a_png_per_layer_and_the_overviews(trained_run, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert main(["--visualize", "--checkpoint", str(trained_run), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    expected = [f"attention_layer{i}.png" for i in range(N_LAYER)]
    assert names == sorted([*expected, "surprisal.png", "embeddings.png", "training_curves.png"])
    assert all((out / name).read_bytes().startswith(PNG_MAGIC) for name in names)
    assert str(out / "attention_layer0.png") in capsys.readouterr().out


def test_visualize_without_checkpoint_is_one_line_exit_2(capsys):
    assert main(["--visualize"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint" in err[0]


def stage_shapes(output: str) -> dict[str, list[str]]:
    """{stage name: [shape, ...]} from the --explain table (a stage repeats once per block)."""
    shapes: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = re.match(r"\s*(.+?)\s{2,}(\([\d, ]*\))\s", line)
        if match:
            shapes.setdefault(match.group(1), []).append(match.group(2))
    return shapes


def test_explain_fresh_model_prints_every_stage_with_the_configured_shapes(capsys):
    n_layer, n_head, n_embd, prompt = 3, 4, 32, "Hallo"
    code = main(["--explain", "--n-layer", str(n_layer), "--n-head", str(n_head), "--n-embd", str(n_embd),
                 "--block-size", "16", "--prompt", prompt])
    assert code == 0
    out = capsys.readouterr().out
    T, hs = len(prompt.encode("utf-8")), n_embd // n_head
    shapes = stage_shapes(out)
    assert shapes["token embedding"] == [f"(1, {T}, {n_embd})"]
    assert shapes["split into heads"] == [f"(1, {n_head}, {T}, {hs})"] * n_layer
    assert shapes["scores q·kᵀ/√hs"] == [f"(1, {n_head}, {T}, {T})"] * n_layer
    assert shapes["softmax"] == [f"(1, {n_head}, {T}, {T})"] * n_layer
    assert shapes["MLP up-projection"] == [f"(1, {T}, {4 * n_embd})"] * n_layer
    assert shapes["logits"] == [f"(1, {T}, 257)"]  # one token per UTF-8 byte, plus <|endoftext|>
    assert len(re.findall(r"^Block \d+$", out, flags=re.M)) == n_layer
    assert "Most likely next tokens" in out


def test_explain_a_checkpoint_uses_its_tokenizer_and_shape(trained_run, capsys):
    assert main(["--explain", "--checkpoint", str(trained_run), "--prompt", "The cat"]) == 0
    vocab = load_checkpoint(trained_run / "checkpoints" / "last.pt")["model_config"]["vocab_size"]
    shapes = stage_shapes(capsys.readouterr().out)
    assert shapes["logits"] == [f"(1, 7, {vocab})"]
    assert shapes["split into heads"] == [f"(1, {N_HEAD}, 7, {N_EMBD // N_HEAD})"] * N_LAYER


def test_explain_crops_a_long_prompt_to_block_size(capsys):
    assert main(["--explain", "--block-size", "8", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                 "--prompt", "far more than eight bytes"]) == 0
    shapes = stage_shapes(capsys.readouterr().out)
    assert shapes["token ids"] == ["(1, 8)"]  # the model sees at most block_size tokens: the last 8


def brute_force_longest_common(sample: str, text: str) -> int:
    best = 0
    for start in range(len(sample)):
        while start + best < len(sample) and sample[start : start + best + 1] in text:
            best += 1
    return best


def test_generate_check_memorization_reports_the_longest_verbatim_piece(trained_run, capsys):
    prompt = "The cat"
    code = main(["--generate", "--checkpoint", str(trained_run), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "60", "--check-memorization"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    note = re.fullmatch(r"\[longest verbatim match: (\d+) characters from (.+?): .*\]", lines[-1])
    assert note, lines[-1]
    generated = "\n".join(lines[:-1])[len(prompt):]
    data_path = load_checkpoint(trained_run / "checkpoints" / "last.pt")["data_path"]
    (training_text,) = training_texts(data_path).values()
    assert int(note.group(1)) == brute_force_longest_common(generated, training_text) > 0



def test_generate_into_a_closed_pipe_stops_quietly(trained_run):
    """`--generate ... | head -c 5`: the reader leaves early; no traceback, exit 0."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "src.main", "--generate", "--checkpoint", str(trained_run),
                             "--max-new-tokens", "5000", "--prompt", "The"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert len(proc.stdout.read(5)) == 5  # the first bytes arrive while generation goes on
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_warmup_longer_than_the_run_is_warned_about(tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=10), encoding="utf-8")
    code = main(["--train", "--input", str(story), *SHAPE, "--max-steps", "3", "--warmup-steps", "100",
                 "--batch-size", "4", "--data-dir", str(tmp_path / "data"), "--logdir", str(tmp_path / "run"),
                 "--quiet", "--sample-tokens", "0"])
    assert code == 0
    assert "warning: --warmup-steps 100 is not shorter than the run (3 steps)" in capsys.readouterr().err


def test_an_impossible_logdir_is_refused_before_any_work(tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=10), encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    code = main(["--train", "--input", str(story), *SHAPE, "--max-steps", "3", "--batch-size", "4",
                 "--warmup-steps", "1", "--data-dir", str(tmp_path / "data"), "--logdir", str(blocker / "run"),
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --logdir: ") and "a_file is not a folder" in err[0]
    assert not (tmp_path / "data").exists()  # refused before any work was done
