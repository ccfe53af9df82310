"""The Hugging Face bridges through the command line: --export --format hf, --checkpoint HF_DIR, --init-from.

Nothing is downloaded: the GPT-2 folders are made here (a random GPT2LMHeadModel saved with
`save_pretrained`, and byte-level BPE files trained with Hugging Face `tokenizers`).
"""

from __future__ import annotations

import json

import pytest
import torch

from src.main import main
from src.training.checkpoints import load_checkpoint, load_model
from tests.conftest import make_story
from tests.test_hf_bridge import random_hf_model, train_hf_bpe


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A small GPT-2 folder as `huggingface-cli download` would leave it: config, weights, vocab and merges."""
    folder = tmp_path_factory.mktemp("gpt2")
    train_hf_bpe(make_story(n_paragraphs=30, seed=5), vocab_size=300, folder=folder)
    vocab_size = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    torch.manual_seed(0)
    random_hf_model(vocab_size=vocab_size, n_positions=32, initializer_range=0.02).save_pretrained(folder)
    return folder


def test_export_hf_loads_in_transformers_with_equal_logits(tiny_run, tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "hf"
    assert main(["--export", "--format", "hf", "--checkpoint", str(tiny_run), "--out", str(out)]) == 0
    assert "GPT2LMHeadModel.from_pretrained" in capsys.readouterr().out
    ours, tokenizer = load_model(tiny_run)
    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.tensor([tokenizer.encode("The cat sat on the mat.")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx)[0], atol=1e-5, rtol=0)
    card = (out / "README.md").read_text(encoding="utf-8")
    step = load_checkpoint(tiny_run / "checkpoints" / "best.pt")["state"]["step"]
    assert str(step) in card  # the model card says how long it trained

    capsys.readouterr()  # transformers' own loading messages
    assert main(["--export", "--format", "hf", "--checkpoint", str(tiny_run)]) == 2  # a folder needs a name
    assert "--out" in one_error_line(capsys.readouterr().err)


def test_a_gpt2_folder_works_as_checkpoint(gpt2_dir, tmp_path, capsys):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    prompt = "The cat sees the river"
    assert main(["--generate", "--checkpoint", str(gpt2_dir), "--prompt", prompt, "--temperature", "0",
                 "--max-new-tokens", "12"]) == 0
    text = capsys.readouterr().out
    hf_tok = GPT2TokenizerFast.from_pretrained(gpt2_dir)
    ids = torch.tensor([hf_tok.encode(prompt)])
    hf_out = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval().generate(
        ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert text == hf_tok.decode(hf_out[0].tolist()) + "\n"  # our code on GPT-2's files = Hugging Face's greedy text

    capsys.readouterr()
    assert main(["--explain", "--checkpoint", str(gpt2_dir), "--prompt", "The cat"]) == 0
    assert "Block 1" in capsys.readouterr().out
    assert main(["--export", "--checkpoint", str(gpt2_dir)]) == 2  # would overwrite HF's model.safetensors
    assert "Hugging Face folder" in one_error_line(capsys.readouterr().err)
    assert (gpt2_dir / "config.json").is_file()


def test_fine_tuning_from_a_gpt2_folder(gpt2_dir, tmp_path, capsys):
    """--init-from: GPT-2's weights and tokenizer, our data and loop. The loss falls, the run keeps the
    folder's tokenizer, and the fine-tuned model goes back to Hugging Face."""
    from transformers import GPT2LMHeadModel

    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=30, seed=1), encoding="utf-8")
    run = tmp_path / "run"
    flags = ["--train", "--init-from", str(gpt2_dir), "--input", str(story), "--data-dir", str(tmp_path / "data"),
             "--max-steps", "40", "--eval-interval", "20", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5",
             "--sample-tokens", "0", "--quiet", "--no-attention-images", "--logdir", str(run)]
    assert main(flags) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert val[-1] < val[0] - 0.5, val  # it learned the story
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"] and config["model"]["n_embd"] == 16 and config["model"]["block_size"] == 32
    _, tokenizer = load_model(run)
    from src.hf_bridge import load_hf_tokenizer

    assert tokenizer.fingerprint() == load_hf_tokenizer(gpt2_dir).fingerprint()  # GPT-2's tokenizer, not a new one

    capsys.readouterr()
    assert main(["--evaluate", "--checkpoint", str(run), "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    assert "Training-time estimate" in capsys.readouterr().out
    assert main(["--export", "--format", "hf", "--checkpoint", str(run), "--out", str(tmp_path / "back")]) == 0
    ours, tok = load_model(run)
    idx = torch.tensor([tok.encode("The cat sees the river.")])
    with torch.no_grad():
        theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()(idx).logits
        torch.testing.assert_close(theirs, ours(idx)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("extra", "expected"), [
    (["--n-layer", "3"], "--n-layer"),
    (["--block-size", "64"], "--block-size"),
    (["--tokenizer", "bpe"], "--tokenizer"),
])
def test_fine_tuning_refuses_settings_that_contradict_the_weights(gpt2_dir, tmp_path, capsys, extra, expected):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=5), encoding="utf-8")
    code = main(["--train", "--init-from", str(gpt2_dir), "--input", str(story), "--data-dir", str(tmp_path / "d"),
                 "--logdir", str(tmp_path / "run"), "--quiet", *extra])
    assert code == 2 and one_error_line(capsys.readouterr().err).startswith(f"error: {expected}")
    assert not (tmp_path / "run").exists()


def test_init_from_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=5), encoding="utf-8")
    code = main(["--train", "--init-from", str(tmp_path / "other"), "--input", str(story), "--logdir",
                 str(tmp_path / "run"), "--quiet"])
    assert code == 2 and "llama" in one_error_line(capsys.readouterr().err)
