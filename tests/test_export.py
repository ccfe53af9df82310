"""--export: a trained run as a .safetensors file (weights only, config and tokenizer as JSON in the
header) that loads without pickle and gives the very same model back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from src.config import config_to_dict
from src.main import main
from src.training.checkpoints import CheckpointError, load_checkpoint, load_model

PROMPT = "The "


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A copy of the shared tiny run: the export writes model.safetensors into the run folder."""
    import shutil

    copy = tmp_path_factory.mktemp("export") / "tiny"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def exported(run_dir):
    assert main(["--export", "--checkpoint", str(run_dir)]) == 0
    return run_dir / "model.safetensors"


def greedy(model, tokenizer, steps: int = 30) -> list[int]:
    idx = torch.tensor([tokenizer.encode(PROMPT)], dtype=torch.long)  # (1, T)
    return model.generate(idx, steps, temperature=0)[0].tolist()


def test_export_prints_path_and_size_and_writes_the_default_file(run_dir, tmp_path, capsys):
    out = tmp_path / "copy.safetensors"
    assert main(["--export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "kB" in printed
    assert out.read_bytes()[8:].startswith(b"{")  # safetensors: 8-byte header length, then JSON
    assert list(tmp_path.iterdir()) == [out]  # the temporary file is gone


def test_export_is_plain_safetensors_with_our_metadata(run_dir, exported):
    tensors = load_file(exported)  # the safetensors loader: no pickle involved
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    stored = checkpoint["model"]
    assert set(tensors) == set(stored) - {"lm_head.weight"}  # the tied weight is stored once
    for name, tensor in tensors.items():
        assert torch.equal(tensor, stored[name]), name
    with safe_open(str(exported), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["project"] == "mini_transformer" and metadata["format_version"] == "1"
    assert json.loads(metadata["model_config"]) == checkpoint["model_config"]
    assert json.loads(metadata["tied_weights"]) == {"lm_head.weight": "embeddings.token_embedding.weight"}


def test_loaded_export_is_the_same_model(run_dir, exported):
    model, tokenizer = load_model(run_dir)
    again, again_tokenizer = load_model(exported)
    assert config_to_dict(again.config) == config_to_dict(model.config)
    assert again_tokenizer.fingerprint() == tokenizer.fingerprint()
    assert again_tokenizer.to_dict() == tokenizer.to_dict()
    assert again.lm_head.weight is again.embeddings.token_embedding.weight  # tying survives
    idx = torch.tensor([tokenizer.encode("Once upon a time the")], dtype=torch.long)  # (1, T)
    with torch.no_grad():
        assert torch.equal(again(idx)[0], model(idx)[0])  # bit-identical logits
    assert greedy(again, again_tokenizer) == greedy(model, tokenizer)


def test_generate_from_the_export_equals_generate_from_the_run(run_dir, exported, capsys):
    texts = []
    for checkpoint in (run_dir, exported):
        args = ["--generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", "30",
                "--temperature", "0"]
        assert main(args) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith(PROMPT)


def test_export_from_a_pt_file_lands_next_to_it(run_dir, tmp_path):
    pt = tmp_path / "step.pt"
    pt.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    assert main(["--export", "--checkpoint", str(pt)]) == 0
    model, _ = load_model(tmp_path / "step.safetensors")
    stored = load_checkpoint(pt)["model"]
    assert all(torch.equal(tensor, stored[name]) for name, tensor in model.state_dict().items())


def truncated(exported, path):
    path.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])


def foreign(exported, path):
    save_file({"weight": torch.ones(3, 3)}, str(path))  # valid safetensors, but not ours


def text(exported, path):
    path.write_text("hello, I am not a model\n" * 5)


@pytest.mark.parametrize(("make", "reason"), [(truncated, "corrupt or truncated"),
                                              (foreign, "not a mini_transformer export"),
                                              (text, "corrupt or truncated")])
def test_bad_safetensors_file_is_one_line_exit_2(exported, tmp_path, capsys, make, reason):
    bad = tmp_path / "bad.safetensors"
    make(exported, bad)
    with pytest.raises(CheckpointError, match=reason):
        load_model(bad)
    assert main(["--generate", "--checkpoint", str(bad), "--max-new-tokens", "5"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and reason in err[0]
    assert captured.out == ""


def test_export_refuses_an_out_that_is_not_safetensors(run_dir, tmp_path, capsys):
    out = tmp_path / "model.bin"
    assert main(["--export", "--checkpoint", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and ".safetensors" in err[0]
    assert not out.exists()
