"""src/hf_bridge.py and the GPT-2-format tokenizer files: our model and tokenizers against Hugging Face's
GPT2LMHeadModel and GPT2TokenizerFast, in both directions. Everything is made here (tiny models,
tokenizers trained on a short text): nothing is downloaded."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from src.config import ModelConfig
from src.gpt2_tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT2BPETokenizer,
    bytes_to_unicode,
    gpt2_file_texts,
    gpt2_vocab_and_merges,
    read_gpt2_files,
    save_gpt2_files,
)
from src.hf_bridge import (
    LAYER_NORM_EPS,
    OUR_TOKENIZER_FILE,
    export_hf,
    from_hf_state_dict,
    hf_name,
    hf_shapes,
    is_hf_gpt2_dir,
    load_hf_gpt2,
    load_hf_tokenizer,
    model_config_from_hf,
    our_name,
)
from src.model import MiniTransformer
from src.tokenizer import (
    EOT_TOKEN,
    SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
)
from src.tokenizer_json import tokenizer_from_dict
from src.training.checkpoints import CheckpointError, find_checkpoint, load_model
from tests.conftest import make_story

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # noqa: E402

GERMAN = "Es war einmal ein Mädchen. „Grüß Gott“, sagte der Wolf; die Straße war weiß. Öl, Äpfel, Übermut.\n"
NUMBERS = "It's 1999, we'll see: they're 42 and I'm 7. Call 0123456789 or 555 1234 before 2024-12-31.\n"
TEXT = make_story(n_paragraphs=12, seed=3) + GERMAN * 8 + NUMBERS * 6
PROMPT = "The cat sees"

# Text that HF and we must split alike: any assigned character (Hugging Face's regex engine may know
# fewer Unicode characters than `regex`; unassigned ones are left out), plus the tricky pieces.
pieces = st.sampled_from([
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n",
    "123", "4567890", " 42", EOT_TOKEN, "<|", "|>", "ä", "ß", "😀", "👍🏽", "\u200d", "中文", "e\u0301", "\x00",
    "\u00a0", "\u3000", "\x1c", "\x85", " the", " cat", "Mädchen", "don't",
])
assigned = st.characters(codec="utf-8", exclude_categories=("Cs", "Cn"))
varied_text = st.lists(st.one_of(assigned, pieces), max_size=40).map("".join)


# --- helpers --------------------------------------------------------------------------------


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    shape = dict(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return ModelConfig(vocab_size=vocab_size, **{**shape, **overrides})


def trained_model(config: ModelConfig) -> MiniTransformer:
    """Our model with every weight and bias random (not the zero biases of a fresh one)."""
    model = MiniTransformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model.eval()


def hf_logits(folder: Path, idx: torch.Tensor) -> torch.Tensor:
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(input_ids=idx).logits  # (B, T, V)


def random_hf_model(**overrides) -> GPT2LMHeadModel:
    """A randomly initialised Hugging Face GPT-2, large enough weights that greedy steps have no near-ties."""
    config = GPT2Config(**{**dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3,
                                  bos_token_id=None, eos_token_id=None), **overrides})
    return GPT2LMHeadModel(config).eval()


def train_hf_bpe(text: str, vocab_size: int, folder: Path) -> Path:
    """A byte-level BPE trained by Hugging Face `tokenizers`, saved in GPT-2's layout (vocab.json + merges.txt)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    return folder


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ValueError) and "\n" not in message and message
    return message


def readme_code(folder: Path) -> str:
    return (folder / "README.md").read_text(encoding="utf-8").split("```python\n")[1].split("```")[0]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXT, vocab_size=400)


@pytest.fixture(scope="module")
def hf_bpe_dir(tmp_path_factory) -> Path:
    return train_hf_bpe(TEXT, 600, tmp_path_factory.mktemp("hf_bpe"))


@pytest.fixture(scope="module")
def ours_from_files(hf_bpe_dir) -> BPETokenizer:
    return read_gpt2_files(hf_bpe_dir / "vocab.json", hf_bpe_dir / "merges.txt")


@pytest.fixture(scope="module")
def hf_from_files(hf_bpe_dir):
    return GPT2TokenizerFast.from_pretrained(hf_bpe_dir)


@pytest.fixture(scope="module")
def exported(bpe, tmp_path_factory):
    """Our model with our BPE tokenizer, exported once; tests that change it work on a copy."""
    torch.manual_seed(1)
    model = trained_model(tiny_config(bpe.vocab_size))
    out = export_hf(model, bpe, tmp_path_factory.mktemp("export") / "model",
                    card={"data": "a synthetic story", "steps": 30, "val_loss": 2.25})
    return model, out


@pytest.fixture(scope="module")
def auto_from_export(exported):
    return AutoTokenizer.from_pretrained(exported[1])


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    """A random Hugging Face GPT-2 saved with save_pretrained (model.safetensors, no tokenizer)."""
    folder = tmp_path / "hf"
    random_hf_model().save_pretrained(folder)
    return folder


# --- the mapping ----------------------------------------------------------------------------


def test_our_layer_norms_use_gpt2s_epsilon():
    model = MiniTransformer(tiny_config(11))
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {LAYER_NORM_EPS} == {GPT2Config().layer_norm_epsilon}


def test_names_map_both_ways_and_cover_gpt2(tiny_config):
    assert hf_name("blocks.0.attn.c_attn.weight") == "transformer.h.0.attn.c_attn.weight"
    assert our_name("transformer.wte.weight") == "embeddings.token_embedding.weight"
    ours = [n for n in MiniTransformer(tiny_config).state_dict() if n != "lm_head.weight"]
    assert sorted(hf_name(n) for n in ours) == sorted(hf_shapes(tiny_config))
    assert all(our_name(hf_name(n)) == n for n in ours)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=2, n_head=2))
    expected = {n: tuple(t.shape) for n, t in hf.state_dict().items() if n != "lm_head.weight"}
    assert hf_shapes(tiny_config) == expected  # names and (Conv1D) shapes of the real thing


# --- ours -> Hugging Face -> ours -----------------------------------------------------------


def test_export_gives_hf_the_same_logits(exported, bpe):
    model, out = exported
    idx = torch.tensor([bpe.encode("The cat sees the garden. Es war")[:16]])  # (1, T)
    torch.testing.assert_close(hf_logits(out, idx), model(idx)[0], rtol=0, atol=1e-5)


def test_export_files_are_what_hf_expects(exported, bpe):
    model, out = exported
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_positions"], config["n_ctx"], config["n_embd"], config["n_layer"], config["n_head"]) == (16, 16, 16, 2, 2)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["bos_token_id"] == config["eos_token_id"] == bpe.eot_id and config["tie_word_embeddings"] is True
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors and set(tensors) == set(hf_shapes(model.config))  # tied: stored once
    assert torch.equal(tensors["transformer.h.0.attn.c_attn.weight"], model.blocks[0].attn.c_attn.weight.t())
    generation = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == bpe.eot_id
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "a synthetic story" in readme and "| Training steps | 30 |" in readme and "2.2500" in readme


def test_export_loads_back_exactly(exported, bpe):
    model, out = exported
    again, tokenizer = load_hf_gpt2(out)
    assert again.config == model.config and not again.training
    assert again.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))
    assert again.lm_head.weight is again.embeddings.token_embedding.weight
    assert tokenizer.fingerprint() == bpe.fingerprint()


def test_exact_gelu_is_gpt2_with_activation_gelu(tmp_path):
    """gelu="exact" exports as activation_function "gelu"; Hugging Face computes the same logits, and a
    plain GPT-2 config.json with "gelu" (no marker of ours) loads as gelu="exact"."""
    tok = CharTokenizer.train(TEXT, max_vocab_size=40)
    model = trained_model(tiny_config(tok.vocab_size, gelu="exact"))
    out = export_hf(model, tok, tmp_path / "m", card={})
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu"
    idx = torch.tensor([tok.encode(PROMPT)])
    torch.testing.assert_close(hf_logits(out, idx), model(idx)[0], rtol=0, atol=1e-5)
    tanh = trained_model(tiny_config(tok.vocab_size))
    tanh.load_state_dict(model.state_dict())
    assert not torch.allclose(tanh(idx)[0], model(idx)[0], atol=1e-5)  # the two GELUs differ measurably
    hf_only = {k: v for k, v in json.loads((out / "config.json").read_text()).items() if k != "mini_transformer"}
    assert model_config_from_hf(hf_only).gelu == "exact"
    assert model_config_from_hf({**hf_only, "activation_function": "gelu_new"}).gelu == "tanh"


@pytest.mark.parametrize("overrides", [{"bias": False}, {"pos_encoding": "sinusoidal"}],
                         ids=["no-bias", "sinusoidal"])
def test_beyond_gpt2_is_written_as_gpt2_and_restored(overrides, tmp_path):
    tok = CharTokenizer.train(TEXT, max_vocab_size=40)
    model = trained_model(tiny_config(tok.vocab_size, **overrides))
    out = export_hf(model, tok, tmp_path / "m", card={})
    idx = torch.tensor([tok.encode(PROMPT)])
    torch.testing.assert_close(hf_logits(out, idx), model(idx)[0], rtol=0, atol=1e-5)
    again, _ = load_hf_gpt2(out)
    assert again.config == model.config
    assert torch.equal(again(idx)[0], model(idx)[0])

    hf = GPT2LMHeadModel.from_pretrained(out)  # "fine-tuned" in HF: the zero biases / fixed table change
    with torch.no_grad():
        hf.transformer.h[0].ln_1.bias += 0.5
        hf.transformer.wpe.weight[0] += 0.5
    hf.save_pretrained(out)
    changed, _ = load_hf_gpt2(out)
    assert (changed.config.bias, changed.config.pos_encoding) == (True, "learned")
    torch.testing.assert_close(changed(idx)[0], hf_logits(out, idx), rtol=0, atol=1e-5)


def test_char_export_readme_code_runs(tmp_path, capsys):
    tok = CharTokenizer.train(TEXT, max_vocab_size=40)
    model = trained_model(tiny_config(tok.vocab_size))
    out = export_hf(model, tok, tmp_path / "char", card={"data": "story"})
    assert not (out / "vocab.json").exists() and (out / OUR_TOKENIZER_FILE).is_file()
    namespace: dict = {}
    exec(readme_code(out), namespace)  # the lines the model card shows: load, encode, generate, decode
    assert namespace["ids"].tolist() == [tok.encode("The ")]
    assert [namespace["stoi"].get(ch, 0) for ch in "Tor €"] == tok.encode("Tor €")  # € is not in the vocabulary
    generated = namespace["out"][0].tolist()
    assert capsys.readouterr().out == tok.decode(generated) + "\n" and len(generated) > 4
    assert load_hf_gpt2(out)[1].fingerprint() == tok.fingerprint()


def test_bpe_export_readme_code_runs(exported, capsys):
    _, out = exported
    exec(readme_code(out), {})
    assert capsys.readouterr().out.startswith("The ")


# --- Hugging Face -> ours -------------------------------------------------------------------


def test_random_hf_model_gives_the_same_logits_and_greedy_tokens(hf_dir):
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    model, tokenizer = load_hf_gpt2(hf_dir)
    assert tokenizer is None and is_hf_gpt2_dir(hf_dir)
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_hf_tokenizer(hf_dir)
    idx = torch.tensor([[3, 14, 15, 9, 2, 6]])  # (1, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(input_ids=idx).logits, rtol=0, atol=1e-5)
        theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=10, do_sample=False)
    ours = model.generate(idx, 10, temperature=0)
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("layout", ["state_dict", "openai"])
def test_pytorch_model_bin_loads(layout, tmp_path):
    """pytorch_model.bin as transformers 4 wrote it (torch.save of the state dict, the tied head
    included) and in the older layout of OpenAI's GPT-2 files (no "transformer." prefix, the causal
    mask buffers attn.bias / attn.masked_bias stored)."""
    hf = random_hf_model()
    folder = tmp_path / "bin"
    hf.config.save_pretrained(folder)
    state = hf.state_dict()
    if layout == "openai":
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        for i in range(hf.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16))
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    model, _ = load_hf_gpt2(folder)
    idx = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(input_ids=idx).logits, rtol=0, atol=1e-5)


class _NotATensor:
    pass


def test_pytorch_model_bin_with_python_objects_is_refused(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": _NotATensor()}, hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as excinfo:
        load_hf_gpt2(hf_dir)
    assert "pytorch_model.bin" in one_line_error(excinfo) and "refused" in str(excinfo.value)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors")


@pytest.mark.parametrize("damage, expected", [
    (lambda f: _edit_config(f, model_type="llama"), "config.json: model_type is 'llama'; only 'gpt2'"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights (model.safetensors or pytorch_model.bin)"),
    (lambda f: _edit_config(f, n_embd=32), "tensor transformer.wte.weight has shape (50, 16), but config.json implies (50, 32)"),
    (lambda f: _edit_config(f, vocab_size=60), "has shape (50, 16), but config.json implies (60, 16)"),
    (lambda f: _edit_config(f, n_layer=3), "tensor transformer.h.2.ln_1.weight is missing"),
    (lambda f: _drop_tensor(f, "transformer.h.1.mlp.c_fc.bias"), "tensor transformer.h.1.mlp.c_fc.bias is missing"),
    (lambda f: (f / "config.json").unlink(), "config.json: no such file"),
    (lambda f: (f / "config.json").write_text("{oops", encoding="utf-8"), "config.json: not valid JSON"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x10\x00garbage"), "model.safetensors: cannot read"),
    (lambda f: _edit_config(f, activation_function="relu"), "activation_function 'relu' is not supported"),
    (lambda f: _edit_config(f, n_inner=48), "n_inner 48 is not supported"),
    (lambda f: _edit_config(f, layer_norm_epsilon=1e-6), "layer_norm_epsilon 1e-06 is not supported"),
    (lambda f: _edit_config(f, tie_word_embeddings=False), "tie_word_embeddings False is not supported"),
    (lambda f: _edit_config(f, n_embd=None), "n_embd must be a positive integer, got None"),
], ids=["model-type", "no-weights", "shape", "vocab", "layers", "missing-tensor", "no-config", "bad-json",
        "corrupt-weights", "activation", "n-inner", "epsilon", "untied", "n-embd-null"])
def test_wrong_or_incomplete_folder_is_one_clear_line(hf_dir, damage, expected):
    damage(hf_dir)
    with pytest.raises(CheckpointError) as excinfo:
        load_hf_gpt2(hf_dir)
    message = one_line_error(excinfo)
    assert expected in message and str(hf_dir) in message


def test_state_dict_conversion_refuses_what_the_config_cannot_hold():
    hf = dict(random_hf_model().state_dict())
    config = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    assert from_hf_state_dict(hf, replace(config, bias=False)).keys().isdisjoint(  # HF initialises biases to 0
        {"blocks.0.ln_1.bias", "blocks.0.attn.c_attn.bias", "ln_f.bias"})
    hf["transformer.h.0.ln_1.bias"] = hf["transformer.h.0.ln_1.bias"] + 0.1
    with pytest.raises(ValueError, match="biases are not all zero"):
        from_hf_state_dict(hf, replace(config, bias=False))
    with pytest.raises(ValueError, match="not the sinusoidal table"):
        from_hf_state_dict(hf, replace(config, pos_encoding="sinusoidal"))
    ours = from_hf_state_dict(hf, config)
    assert torch.equal(ours["blocks.1.mlp.c_fc.weight"], hf["transformer.h.1.mlp.c_fc.weight"].t())


def test_untied_head_in_the_weights_is_refused(tmp_path):
    hf = random_hf_model()
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="untied LM head is not supported"):
        load_hf_gpt2(tmp_path)


def test_checkpoint_functions_accept_an_hf_folder(exported, bpe, hf_dir, tmp_path):
    _, out = exported
    assert find_checkpoint(out) == out
    model, tokenizer = load_model(out)
    reference, _ = load_hf_gpt2(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))
    assert tokenizer.fingerprint() == bpe.fingerprint()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_model(hf_dir)  # the CLI needs a tokenizer: say why there is none
    run_dir = tmp_path / "run"  # a run folder's config.json (no model_type) is not taken for an HF folder
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"model": {}}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="no checkpoints/best.pt"):
        find_checkpoint(run_dir)


# --- the export folder ----------------------------------------------------------------------


def test_export_refuses_a_folder_with_other_files(exported, bpe, tmp_path):
    model, _ = exported
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError) as excinfo:
        export_hf(model, bpe, folder, card={})
    assert "not empty and not an earlier export" in one_line_error(excinfo)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a folder"):
        export_hf(model, bpe, tmp_path / "file", card={})


def test_export_replaces_an_earlier_export(exported, tmp_path):
    _, out = exported
    folder = tmp_path / "again"
    shutil.copytree(out, folder)
    tok = CharTokenizer.train(TEXT, max_vocab_size=40)
    model = trained_model(tiny_config(tok.vocab_size))
    export_hf(model, tok, folder, card={})
    assert not (folder / "vocab.json").exists() and not (folder / "tokenizer.json").exists()  # BPE files gone
    again, tokenizer = load_hf_gpt2(folder)
    assert tokenizer.fingerprint() == tok.fingerprint() and again.config == model.config
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temporary files left


# --- GPT-2-format tokenizer files -----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=varied_text)
def test_split_patterns_chunk_like_hf(text):
    """Our `regex` and HF's Oniguruma split alike: GPT-2's pattern as in its ByteLevel pre-tokenizer,
    ours as in the Split pre-tokenizer of our tokenizer.json."""
    import regex
    from tokenizers import Regex, pre_tokenizers

    for pattern, hf in ((GPT2_SPLIT_PATTERN, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
                        (SPLIT_PATTERN, pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"))):
        theirs = [text[start:end] for _, (start, end) in hf.pre_tokenize_str(text)]
        assert regex.findall(pattern, text) == theirs


def test_bytes_to_unicode_is_gpt2s():
    from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

    assert bytes_to_unicode() == hf_bytes_to_unicode()
    assert (bytes_to_unicode()[ord("a")], bytes_to_unicode()[ord(" ")], bytes_to_unicode()[ord("\n")]) == ("a", "Ġ", "Ċ")


@settings(max_examples=150, deadline=None)
@given(text=varied_text)
def test_gpt2_files_encode_like_hf(ours_from_files, hf_from_files, text):
    ids = ours_from_files.encode(text, allowed_special="all")
    assert ids == hf_from_files.encode(text)
    assert ours_from_files.decode(ids) == text
    assert hf_from_files.decode(ids) == text


def test_gpt2_files_keep_their_ids(ours_from_files, hf_bpe_dir, hf_from_files):
    vocab = json.loads((hf_bpe_dir / "vocab.json").read_text(encoding="utf-8"))
    assert isinstance(ours_from_files, GPT2BPETokenizer)  # HF's trainer puts <|endoftext|> first: not our order
    assert ours_from_files.vocab_size == len(vocab) and ours_from_files.eot_id == vocab[EOT_TOKEN] == 0
    assert ours_from_files.id_to_token(vocab["Ġthe"]) == " the"
    assert ours_from_files.encode(GERMAN) == hf_from_files.encode(GERMAN)
    assert gpt2_vocab_and_merges(ours_from_files)[0] == vocab


def test_gpt2_tokenizer_round_trips_through_json(ours_from_files):
    data = json.loads(json.dumps(ours_from_files.to_dict()))
    again = tokenizer_from_dict(data)
    assert again.fingerprint() == ours_from_files.fingerprint()
    assert again.encode(TEXT[:2000]) == ours_from_files.encode(TEXT[:2000])


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["vocab_ids"].pop(), "vocab_ids has"),
    (lambda d: d["vocab_ids"].__setitem__(5, 10**9), "vocab_ids must be integers in"),
    (lambda d: d["vocab_ids"].__setitem__(5, "7"), "vocab_ids must be integers in"),
    (lambda d: d["vocab_ids"].__setitem__(5, d["vocab_ids"][6]), "stands for two different tokens"),
    (lambda d: d.__setitem__("vocab_ids", {"a": 1}), "'vocab_ids' must be a list"),
], ids=["length", "range", "type", "duplicate", "structure"])
def test_gpt2_tokenizer_json_is_validated(ours_from_files, change, expected):
    data = json.loads(json.dumps(ours_from_files.to_dict()))
    change(data)
    with pytest.raises(ValueError, match=expected):
        tokenizer_from_dict(data)


def test_a_text_made_by_two_merges_encodes_like_hf(tmp_path):
    """A merges.txt may make one text twice: "ccc" by "c cc" and by "cc c". vocab.json has one id for it,
    and the later merge "ccc b" must follow the maker that encoding actually reaches (the second:
    "ccc" -> "cc c" -> "ccc"), so our second internal id for "ccc" has to be accepted there too."""
    stand_in = bytes_to_unicode()
    vocab = {EOT_TOKEN: 0, **{stand_in[b]: 1 + i for i, b in enumerate(sorted(stand_in, key=stand_in.get))}}
    for text in ("cc", "ccc", "cccb"):
        vocab[text] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nc c\nc cc\ncc c\nccc b\n", encoding="utf-8")
    ours = read_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    hf = GPT2TokenizerFast.from_pretrained(tmp_path)
    assert ours.encode("cccb") == hf.encode("cccb") == [vocab["cccb"]]
    for text in ["ccc", "ccccb", "cccccb", "cccbccc", "bcccb cccb", "ccccccb"]:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("vocab_change, merges, expected", [
    (lambda v: v.pop("Ġ"), None, "vocab.json lacks 1 of the 256 byte tokens (e.g. 'Ġ' for byte 0x20)"),
    (lambda v: v.__setitem__("<pad>", len(v)), None, "neither bytes, nor made by a merge, nor <|endoftext|> (e.g. '<pad>')"),
    (lambda v: v.pop(EOT_TOKEN), None, "vocab.json has no '<|endoftext|>' token"),
    (None, ["x yz"], "merge 1 'x yz' uses 'yz', which is neither a byte nor made by an earlier merge"),
    (None, ["x y"], "merge 1 'x y' makes 'xy', which vocab.json does not hold"),
    (None, ["x y z"], "merges.txt line 2: expected two tokens separated by one space"),
    (lambda v: v.__setitem__("a", 10**6), None, "the ids in vocab.json must be 0 .. N-1"),
], ids=["missing-byte", "extra-token", "no-eot", "unknown-part", "unknown-result", "bad-line", "id-gap"])
def test_bad_gpt2_files_are_one_clear_line(hf_bpe_dir, tmp_path, vocab_change, merges, expected):
    vocab = json.loads((hf_bpe_dir / "vocab.json").read_text(encoding="utf-8"))
    if vocab_change:
        vocab_change(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = merges if merges is not None else (hf_bpe_dir / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError) as excinfo:
        read_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert expected in one_line_error(excinfo)


def test_vocab_json_must_be_an_object_of_ids(tmp_path):
    (tmp_path / "vocab.json").write_text('["a", "b"]', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json: expected a JSON object mapping token texts to integer ids"):
        read_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(ValueError, match="no such file"):
        read_gpt2_files(tmp_path / "missing.json", tmp_path / "merges.txt")


def test_gpt2_file_texts_docstring_example():
    assert gpt2_file_texts({"a": 0}, [("a", "b")]) == ('{"a": 0}\n', "#version: 0.2\na b\n")


def test_our_bpe_in_gpt2_files_comes_back_unchanged(bpe, tmp_path):
    save_gpt2_files(bpe, tmp_path / "vocab.json", tmp_path / "merges.txt")
    again = read_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt", pattern=SPLIT_PATTERN)
    assert type(again) is BPETokenizer and again.fingerprint() == bpe.fingerprint()  # our id order: no table


@settings(max_examples=100, deadline=None)
@given(text=varied_text)
def test_our_exported_bpe_encodes_alike_in_autotokenizer(auto_from_export, bpe, text):
    """Our split pattern travels in tokenizer.json (Split + ByteLevel), which AutoTokenizer follows."""
    ids = bpe.encode(text, allowed_special="all")
    assert auto_from_export.encode(text) == ids
    assert auto_from_export.decode(ids) == text


def test_our_bpe_with_gpt2s_pattern_encodes_alike_in_gpt2_tokenizer_fast(bpe, tmp_path):
    """vocab.json + merges.txt carry no split pattern: GPT2TokenizerFast always uses GPT-2's. With
    that pattern our trained merges give the same ids (our own pattern needs tokenizer.json, above)."""
    tok = BPETokenizer(bpe.merges, pattern=GPT2_SPLIT_PATTERN)
    save_gpt2_files(tok, tmp_path / "vocab.json", tmp_path / "merges.txt")
    model = trained_model(tiny_config(tok.vocab_size))
    export_hf(model, tok, tmp_path / "export", card={})
    samples = [TEXT[:3000], "It's 1234567 o'clock  \n\n we'll\tsee 😀 <|endoftext|> Straße", ""]
    for folder in (tmp_path, tmp_path / "export"):
        hf = GPT2TokenizerFast.from_pretrained(folder)
        for text in samples:
            assert hf.encode(text) == tok.encode(text, allowed_special="all")


def test_hf_saved_tokenizer_json_is_read(hf_from_files, ours_from_files, tmp_path):
    hf_from_files.save_pretrained(tmp_path)  # transformers 5: tokenizer.json only, no vocab.json
    tok = load_hf_tokenizer(tmp_path)
    assert tok.encode(TEXT, allowed_special="all") == hf_from_files.encode(TEXT)
    assert tok.fingerprint() == ours_from_files.fingerprint()


def test_unsupported_tokenizer_is_none_with_a_reason(hf_dir, hf_bpe_dir):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(hf_bpe_dir / name, hf_dir / name)
    (hf_dir / "tokenizer_config.json").write_text('{"add_prefix_space": true}', encoding="utf-8")
    model, tokenizer = load_hf_gpt2(hf_dir)
    assert model is not None and tokenizer is None
    with pytest.raises(CheckpointError, match="add_prefix_space is true"):
        load_hf_tokenizer(hf_dir)
    (hf_dir / "tokenizer_config.json").unlink()
    (hf_dir / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []},
                                                       "pre_tokenizer": {"type": "Whitespace"}}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer.json: pre-tokenizer .*Whitespace.* is not supported"):
        load_hf_tokenizer(hf_dir)  # HF's tokenizer.json comes before vocab.json, as in transformers
    (hf_dir / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ tokens, but config.json says vocab_size 50"):
        load_model(hf_dir)  # the tokenizer is fine, but it does not belong to this model

