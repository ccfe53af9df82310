"""Tests for src/analysis.py: the explained forward pass, surprisal, head patterns, verbatim matches."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import pytest
import torch

from src.analysis import (
    _word_starts,
    byte_tokenizer,
    explain_forward,
    format_explanation,
    head_pattern_scores,
    parameter_counts,
    token_surprisal,
)
from src.config import ModelConfig
from src.memorization import VerbatimIndex, format_match, longest_verbatim_match
from src.model import MiniTransformer
from src.tokenizer import CharTokenizer
from tests.conftest import make_story

BLOCK_STAGES = ["ln_1", "qkv", "qkv_heads", "scores", "mask", "softmax", "weighted_sum", "merge", "attn_proj",
                "residual_1", "ln_2", "mlp_up", "gelu", "mlp_down", "residual_2"]


@pytest.fixture
def byte_model() -> MiniTransformer:
    """A fresh model over the 256 byte tokens; n_head=3 and C=24 so that nh, hs and C all differ."""
    config = ModelConfig(vocab_size=256, block_size=16, n_layer=2, n_head=3, n_embd=24, dropout=0.1)
    return MiniTransformer(config)


def test_byte_tokenizer_docstring_example_and_round_trip():
    tok = byte_tokenizer()
    assert tok.encode("Hä") == [72, 195, 164]
    assert tok.decode(tok.encode("Grüße, Öl!")) == "Grüße, Öl!"
    assert tok.id_to_token(72) == "H" and tok.id_to_token(195) == "\\xc3"  # half a character: shown as a byte
    assert tok.vocab_size == 257 and tok.id_to_token(tok.eot_id) == "<|endoftext|>"


def test_explain_has_every_stage_with_shapes_from_the_config(byte_model):
    cfg = byte_model.config
    B, T, C, nh, hs, V = 1, 5, cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size
    explanation = explain_forward(byte_model, None, "Hallo")  # 5 bytes = 5 tokens
    shapes = {s.key: s.shape for s in explanation.stages}
    expected_block = {
        "ln_1": (B, T, C), "qkv": (B, T, 3 * C), "qkv_heads": (B, nh, T, hs), "scores": (B, nh, T, T),
        "mask": (T, T), "softmax": (B, nh, T, T), "weighted_sum": (B, nh, T, hs), "merge": (B, T, C),
        "attn_proj": (B, T, C), "residual_1": (B, T, C), "ln_2": (B, T, C), "mlp_up": (B, T, 4 * C),
        "gelu": (B, T, 4 * C), "mlp_down": (B, T, C), "residual_2": (B, T, C),
    }
    assert shapes["token_ids"] == (B, T)
    assert shapes["tok_emb"] == (B, T, C)
    assert shapes["pos_emb"] == (T, C)
    assert shapes["embeddings"] == (B, T, C)
    for i in range(cfg.n_layer):
        for name, shape in expected_block.items():
            assert shapes[f"block{i}.{name}"] == shape, f"block{i}.{name}"
    assert shapes["logits"] == (B, T, V)
    assert shapes["probabilities"] == (V,)
    # Stages come in forward order: embeddings, block 0 in order, block 1, ..., logits.
    keys = [s.key for s in explanation.stages]
    order = [f"block{i}.{name}" for i in range(cfg.n_layer) for name in BLOCK_STAGES]
    assert [k for k in keys if k.startswith("block")] == order
    assert keys.index("embeddings") < keys.index("block0.ln_1") and keys.index("block1.residual_2") < keys.index("logits")

    text = format_explanation(explanation)
    for stage in explanation.stages:
        assert stage.name in text
    assert f"(1, {nh}, 5, {hs})" in text and f"(1, 5, {V})" in text and f"(1, 5, {4 * C})" in text
    assert "Block 0" in text and "Block 1" in text
    assert len(explanation.next_tokens) == 5 and "Most likely next tokens" in text
    assert f"({V},)" in text


def test_explain_crops_a_long_prompt_to_block_size(byte_model):
    explanation = explain_forward(byte_model, None, "x" * 40)
    block_size = byte_model.config.block_size
    shapes = {s.key: s.shape for s in explanation.stages}
    assert shapes["token_ids"] == (1, block_size)
    assert shapes["block0.softmax"] == (1, byte_model.config.n_head, block_size, block_size)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_explain_reads_the_real_forward_pass(attention):
    """The captured tensors are the model's own: the attention rebuilt from captured q, k, v equals
    attention_maps and the input of c_proj; the probabilities equal softmax(model(idx))."""
    config = ModelConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=16, attention=attention)
    model = MiniTransformer(config)
    model.train()  # explain must switch dropout off itself and restore the mode
    explanation = explain_forward(model, None, "Guten Tag")
    assert model.training
    stages = {s.key: s for s in explanation.stages}
    idx = torch.tensor([list(b"Guten Tag")])
    maps = model.attention_maps(idx)  # (n_layer, B, nh, T, T)
    for i in range(config.n_layer):
        torch.testing.assert_close(stages[f"block{i}.softmax"].value, maps[i], rtol=0, atol=1e-6)
        context = stages[f"block{i}.weighted_sum"].value  # (B, nh, T, hs)
        merged = context.transpose(1, 2).reshape(1, idx.shape[1], config.n_embd)
        torch.testing.assert_close(merged, stages[f"block{i}.merge"].value, rtol=0, atol=1e-5)
        weights = stages[f"block{i}.softmax"].value
        assert torch.all(weights.triu(diagonal=1) == 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    model.eval()
    logits, _ = model(idx)
    probabilities = torch.softmax(logits[0, -1], dim=-1)
    torch.testing.assert_close(stages["probabilities"].value, probabilities)
    top = torch.topk(probabilities, 5)
    assert [t.token_id for t in explanation.next_tokens] == top.indices.tolist()
    assert [t.probability for t in explanation.next_tokens] == pytest.approx(top.values.tolist())


def test_parameter_counts_add_up_and_name_the_tied_head(byte_model):
    rows = {r.module: r for r in parameter_counts(byte_model)}
    C, V, T = byte_model.config.n_embd, byte_model.config.vocab_size, byte_model.config.block_size
    assert rows["embeddings.token_embedding"].count == V * C
    assert rows["embeddings.position_embedding"].count == T * C
    assert rows["blocks.0.attn.c_attn"].count == C * 3 * C + 3 * C
    assert rows["blocks.0.mlp.c_fc"].count == C * 4 * C + 4 * C
    assert rows["lm_head"].count == 0 and "tied" in rows["lm_head"].note
    top_level = ["embeddings", "ln_f", "lm_head"] + [f"blocks.{i}" for i in range(byte_model.config.n_layer)]
    assert sum(rows[name].count for name in top_level) == byte_model.num_parameters()
    assert explain_forward(byte_model, None, "a").total_parameters == byte_model.num_parameters()


def test_explain_rejects_bad_prompts(tiny_config):
    model = MiniTransformer(tiny_config)  # vocabulary of 11: bytes do not fit
    with pytest.raises(ValueError, match="outside the model's vocabulary of 11"):
        explain_forward(model, None, "Hallo")
    with pytest.raises(ValueError, match="empty"):
        explain_forward(MiniTransformer(ModelConfig(vocab_size=256, block_size=8, n_layer=1, n_head=1, n_embd=8)),
                        None, "")


def test_token_surprisal_matches_the_model_loss():
    text = make_story(3, seed=1)
    tokenizer = CharTokenizer.train(text, max_vocab_size=64)
    model = MiniTransformer(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    result = token_surprisal(model, tokenizer, text)
    ids = tokenizer.encode(text)[:33]
    assert result.ids == ids and len(result.bits) == 32 and len(result.tokens) == 33
    model.eval()
    _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    # Mean surprisal in bits, converted to nats, is the model's own mean cross-entropy.
    assert np.mean(result.bits) * math.log(2) == pytest.approx(loss.item(), rel=1e-5)
    for alternatives in result.alternatives:
        probs = [p for _, p in alternatives]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        token_surprisal(model, tokenizer, "T")


def test_word_starts_docstring_example():
    assert _word_starts(["a", " b", "c"]) == [True, True, False]
    assert _word_starts(["H", "i", " ", "d", "u"]) == [True, False, False, True, False]


def test_head_pattern_scores_recognise_planted_patterns():
    T = 6
    tokens = list("ab cde")
    previous = torch.zeros(T, T)
    previous[0, 0] = 1.0
    previous[torch.arange(1, T), torch.arange(0, T - 1)] = 1.0  # each token looks one back
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)  # causal average
    weights = torch.stack([previous, uniform]).unsqueeze(0)  # (n_layer=1, nh=2, T, T)
    scores = head_pattern_scores(weights, tokens)
    assert scores[0].previous == pytest.approx(1.0) and scores[0].pattern() == "previous token"
    assert scores[1].first == pytest.approx(np.mean([1 / (t + 1) for t in range(1, T)]))
    assert scores[1].pattern() == "mixed"
    with pytest.raises(ValueError, match="T = 5"):
        head_pattern_scores(weights, tokens[:5])


def _brute_force_longest(sample: str, documents: dict[str, str]) -> int:
    best = 0
    for i in range(len(sample)):
        for j in range(i + best + 1, len(sample) + 1):
            if not any(sample[i:j] in d for d in documents.values()):
                break
            best = j - i
    return best


def test_longest_verbatim_match_docstring_example():
    match = longest_verbatim_match("a cat sat", {"book": "the cat sat on"})
    assert (match.text, match.length, match.source) == (" cat sat", 8, "book")
    assert format_match(match) == "longest verbatim match: 8 characters from book: ' cat sat'"
    assert longest_verbatim_match("xyz", {"book": "abc"}).length == 0
    assert longest_verbatim_match("", {"book": "abc"}).source is None


def test_longest_verbatim_match_finds_a_planted_passage():
    planted = "Zebras quietly jump over the lazy fjord at dawn"
    books = {"11 Alice": make_story(30, seed=1), "74 Tom Sawyer": make_story(30, seed=2)}
    cut = len(books["74 Tom Sawyer"]) // 2
    books["74 Tom Sawyer"] = books["74 Tom Sawyer"][:cut] + planted + books["74 Tom Sawyer"][cut:]
    sample = "#@" * 20 + planted + "%&" * 20  # the filler never occurs in the books
    match = longest_verbatim_match(sample, books)
    assert match.text == planted and match.length == len(planted)
    assert match.source == "74 Tom Sawyer" and match.source_offset == cut and match.sample_offset == 40


def test_longest_verbatim_match_agrees_with_brute_force():
    rng = random.Random(0)
    for _ in range(40):
        documents = {f"d{k}": "".join(rng.choice("ab c") for _ in range(rng.randrange(0, 60))) for k in range(3)}
        sample = "".join(rng.choice("ab cd") for _ in range(rng.randrange(1, 40)))
        match = longest_verbatim_match(sample, documents)
        assert match.length == _brute_force_longest(sample, documents), (sample, documents)
        if match.length:
            assert match.text in sample and match.text in documents[match.source]
            assert documents[match.source][match.source_offset:].startswith(match.text)


def test_a_match_never_spans_two_documents():
    match = longest_verbatim_match("hello world", {"a": "hello", "b": " world"})
    assert match.text == " world" and match.source == "b"


def test_longest_verbatim_match_is_fast_on_seven_megabytes():
    rng = np.random.default_rng(0)
    alphabet = np.array([ord(c) for c in "abcdefghijklmnopqrstuvwxyz     ,.\näöü"], dtype=np.uint32)

    def random_text(n: int) -> str:
        return rng.choice(alphabet, n).tobytes().decode("utf-32-le")

    books = {f"book {k}": random_text(1_000_000) for k in range(7)}
    planted = books["book 4"][123_456:123_456 + 60]
    sample = random_text(220) + planted + random_text(220)
    start = time.perf_counter()
    index = VerbatimIndex(books)
    match = index.longest_match(sample)
    elapsed = time.perf_counter() - start
    assert match.length >= 60 and planted in match.text and match.source == "book 4"
    assert elapsed < 5.0, f"7 MB took {elapsed:.1f} s"


def test_training_texts_of_a_prepared_data_set_find_the_planted_book(tmp_path):
    from src.config import DataConfig
    from src.dataset import prepare_dataset
    from src.memorization import training_texts
    from tests.conftest import wrap_paragraphs, write_gutenberg_mirror

    planted = "Zebras quietly jump over the lazy fjord at dawn."
    story = make_story(20, seed=5)
    books = {11: make_story(20, seed=4), 74: story[: len(story) // 3] + planted + " " + story[len(story) // 3 :]}
    mirror = write_gutenberg_mirror(tmp_path / "mirror", {k: wrap_paragraphs(v) for k, v in books.items()})
    config = DataConfig(books=(11, 74), mirror=str(mirror), data_dir=tmp_path / "data", tokenizer="char",
                        max_vocab_size=64)
    prepared = prepare_dataset(config, show_progress=False)
    documents = training_texts(prepared.path)
    assert sorted(documents) == ["11 Book 11", "74 Book 74"]
    assert planted in documents["74 Book 74"].replace("\n", " ")
    assert documents["11 Book 11"].startswith(make_story(20, seed=4)[:40])
    match = longest_verbatim_match("##" + planted + "##", documents)
    assert match.source == "74 Book 74" and match.length >= len("Zebras quietly jump over the lazy")
    with pytest.raises(ValueError, match="no meta.json"):
        training_texts(tmp_path)
