"""The experiment switches of ModelConfig (issue 22): each one does what it claims, as a property that
would fail if it were wrong; the defaults stay GPT-2; every variant still generates (KV cache
included), explains itself and loads from an old checkpoint."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from src.analysis import explain_forward, parameter_counts
from src.config import ModelConfig, config_from_dict, config_to_dict
from src.hf_bridge import gpt2_unsupported, to_hf_state_dict
from src.model import MiniTransformer
from src.model.transformer_block import TransformerBlock
from src.tokenizer import CharTokenizer
from src.training.checkpoints import model_from_checkpoint

# Each ablation of `--experiment ablations` as ModelConfig changes (one_head changes n_head instead).
SWITCHES = {
    "no_position": {"pos_encoding": "none"},
    "sinusoidal": {"pos_encoding": "sinusoidal"},
    "no_mask": {"causal": False},
    "no_residual": {"residual": False},
    "no_layernorm": {"norm": "none"},
    "rmsnorm": {"norm": "rmsnorm"},
    "post_norm": {"norm_position": "post"},
    "no_mlp": {"mlp": False},
    "untied": {"tie_weights": False},
}


def build(config: ModelConfig, **changes) -> MiniTransformer:
    torch.manual_seed(0)
    return MiniTransformer(replace(config, **changes)).eval()


def test_defaults_are_gpt2(tiny_config):
    assert (tiny_config.pos_encoding, tiny_config.causal, tiny_config.residual, tiny_config.norm,
            tiny_config.norm_position, tiny_config.mlp, tiny_config.tie_weights) == (
        "learned", True, True, "layernorm", "pre", True, True)
    assert gpt2_unsupported(tiny_config) is None


@pytest.mark.parametrize("changes, named", [
    ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, none"),
    ({"norm_position": "middle"}, "norm_position must be one of pre, post"),
    ({"pos_encoding": "rotary"}, "pos_encoding must be one of learned, sinusoidal, none"),
    ({"causal": "no"}, "causal must be True or False"),
    ({"mlp": 0}, "mlp must be True or False"),
    ({"tie_weights": None}, "tie_weights must be True or False"),
    ({"residual": 1}, "residual must be True or False"),
])
def test_bad_switch_values_name_the_field(tiny_config, changes, named):
    with pytest.raises(ValueError, match=named):
        replace(tiny_config, **changes)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_mask_off_lets_a_future_token_change_earlier_logits(tiny_config, attention):
    idx = torch.randint(0, tiny_config.vocab_size, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % tiny_config.vocab_size  # only the last (future) token differs
    for causal in (True, False):
        model = build(tiny_config, causal=causal, attention=attention)
        before, after = model(idx)[0][:, :-1], model(changed)[0][:, :-1]  # logits of positions 0 .. T-2
        if causal:
            torch.testing.assert_close(before, after, rtol=0, atol=0)  # the mask hides the future exactly
        else:
            assert (before - after).abs().amax(dim=-1).min() > 1e-6  # every earlier position saw the change


def test_no_position_without_mask_is_permutation_equivariant(tiny_config):
    model = build(tiny_config, pos_encoding="none", causal=False)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    perm = torch.randperm(8)
    torch.testing.assert_close(model(idx[:, perm])[0], model(idx)[0][:, perm], rtol=0, atol=1e-5)
    with_positions = build(tiny_config, causal=False)  # learned positions break the symmetry
    assert not torch.allclose(with_positions(idx[:, perm])[0], with_positions(idx)[0][:, perm], atol=1e-4)


def test_no_position_has_no_position_table(tiny_config):
    model = build(tiny_config, pos_encoding="none")
    assert model.embeddings.position_embedding is None
    assert model.num_parameters() == build(tiny_config).num_parameters() - tiny_config.block_size * tiny_config.n_embd
    idx = torch.randint(0, tiny_config.vocab_size, (1, 5))
    expected = model.embeddings.token_embedding(idx)  # the stream starts as the token vectors alone
    torch.testing.assert_close(model.embeddings(idx), expected, rtol=0, atol=0)


def _zero_projections(block: TransformerBlock) -> None:
    with torch.no_grad():
        for linear in (block.attn.c_proj, *( [block.mlp.c_proj] if block.mlp is not None else [])):
            linear.weight.zero_()
            linear.bias.zero_()


def test_residual_off_removes_the_identity_path(tiny_config):
    x = torch.randn(2, 6, tiny_config.n_embd)
    with_residual = TransformerBlock(tiny_config)
    _zero_projections(with_residual)
    assert torch.equal(with_residual(x), x)  # sub-layers that add nothing leave the stream unchanged
    without = TransformerBlock(replace(tiny_config, residual=False))
    _zero_projections(without)
    assert torch.equal(without(x), torch.zeros_like(x))  # no identity path: nothing of x survives


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_the_mlp_gelu_equals_its_formula(tiny_config, gelu):
    """tanh (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); exact: 0.5 x (1 + erf(x / sqrt(2)))."""
    from src.model.transformer_block import FeedForward

    mlp = FeedForward(replace(tiny_config, gelu=gelu))
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    if gelu == "tanh":
        expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        expected = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(mlp.gelu(x), expected, rtol=0, atol=1e-12)


def test_rmsnorm_equals_its_formula(tiny_config):
    block = TransformerBlock(replace(tiny_config, norm="rmsnorm"))
    with torch.no_grad():
        block.ln_1.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, tiny_config.n_embd) * 3 + 1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * block.ln_1.weight  # no mean subtracted
    torch.testing.assert_close(block.ln_1(x), expected, rtol=1e-5, atol=1e-6)
    assert [name for name, _ in block.ln_1.named_parameters()] == ["weight"]  # no bias


def test_no_layernorm_has_no_norm_parameters_and_keeps_the_scale(tiny_config):
    model = build(tiny_config, norm="none")
    assert not any(name.split(".")[-2].startswith("ln") for name, _ in model.named_parameters())
    block = model.blocks[0]
    x = torch.randn(1, 4, tiny_config.n_embd) * 7
    assert torch.equal(block.ln_1(x), x)


def test_post_norm_normalises_after_the_add(tiny_config):
    block = TransformerBlock(replace(tiny_config, norm_position="post"))
    x = torch.randn(2, 6, tiny_config.n_embd) * 5 + 2
    attn = block.attn(x)  # post-LN: attention sees the raw stream
    after_attention = block.ln_1(x + attn)
    expected = block.ln_2(after_attention + block.mlp(after_attention))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-6)
    out = block(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 6), rtol=0, atol=1e-5)  # it ends normalised
    assert isinstance(build(tiny_config, norm_position="post").ln_f, torch.nn.Identity)  # no final LayerNorm
    pre = TransformerBlock(tiny_config)
    assert pre(x).mean(-1).abs().max() > 0.1  # pre-LN leaves the stream itself unnormalised


def test_untied_head_has_its_own_v_times_c_parameters(tiny_config):
    tied, untied = build(tiny_config), build(tiny_config, tie_weights=False)
    assert tied.lm_head.weight is tied.embeddings.token_embedding.weight
    assert untied.lm_head.weight is not untied.embeddings.token_embedding.weight
    assert untied.num_parameters() - tied.num_parameters() == tiny_config.vocab_size * tiny_config.n_embd
    assert untied.flops_per_token() == tied.flops_per_token()  # the same matmuls, only stored twice
    with torch.no_grad():
        untied.lm_head.weight.add_(1.0)
    assert not torch.equal(untied.lm_head.weight, untied.embeddings.token_embedding.weight)


def test_no_mlp_has_no_mlp_parameters(tiny_config):
    model = build(tiny_config, mlp=False)
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if ".mlp." in n or ".ln_2." in n]
    C = tiny_config.n_embd
    per_block = (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * C  # c_fc, c_proj, ln_2
    assert model.num_parameters() == build(tiny_config).num_parameters() - tiny_config.n_layer * per_block


@pytest.mark.parametrize("variant", [v for v in SWITCHES if v != "no_mask"])
def test_kv_cache_gives_the_uncached_logits(tiny_config, variant):
    model = build(tiny_config, **SWITCHES[variant])
    idx = torch.randint(0, tiny_config.vocab_size, (2, 7))
    full = model(idx)[0]  # (B, T, V) in one pass
    cache = model.new_kv_cache()
    first = model(idx[:, :4], kv_cache=cache)[0]
    steps = [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(4, 7)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.generate(idx[:, :3], 5, temperature=0.0),
                               model.generate(idx[:, :3], 5, temperature=0.0, use_cache=False), rtol=0, atol=0)


def test_no_mask_generates_without_cache_and_refuses_one(tiny_config):
    model = build(tiny_config, causal=False)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 3))
    cached = model.generate(idx, 6, temperature=0.0)  # use_cache=True is ignored: nothing stays valid
    # Each step recomputes the whole window: the greedy token is the argmax at the last position.
    context = idx
    for _ in range(6):
        context = torch.cat([context, model(context)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, context)
    with pytest.raises(ValueError, match="without causal mask cannot use a KV cache"):
        model(idx, kv_cache=model.new_kv_cache())


@pytest.mark.parametrize("variant", list(SWITCHES))
def test_every_variant_explains_itself_and_counts_its_parameters(tiny_config, variant):
    tokenizer = CharTokenizer.train("abcdefghi", max_vocab_size=64)
    model = build(replace(tiny_config, vocab_size=tokenizer.vocab_size), **SWITCHES[variant])
    explained = explain_forward(model, tokenizer, "abcdef")
    assert explained.stages and explained.stages[-1].shape  # the whole pass was described
    rows = parameter_counts(model)
    top_level = [r.count for r in rows if r.module in ("embeddings", "ln_f", "lm_head") or r.module.count(".") == 1
                 and r.module.startswith("blocks.")]  # the rows that add up to the whole model
    assert sum(top_level) == model.num_parameters()
    maps = model.attention_maps(torch.randint(0, tokenizer.vocab_size, (1, 6)))
    upper = maps[..., torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)]
    assert (upper.abs().max() > 0) == (variant == "no_mask")  # only the unmasked model looks ahead


@pytest.mark.parametrize("variant", ["no_position", "no_mask", "no_residual", "no_layernorm", "rmsnorm",
                                     "post_norm", "no_mlp", "untied"])
def test_hf_export_refuses_what_gpt2_cannot_represent(tiny_config, variant):
    model = build(tiny_config, **SWITCHES[variant])
    switch = next(iter(SWITCHES[variant]))
    with pytest.raises(ValueError, match=f"GPT-2 cannot represent this model: {switch}="):
        to_hf_state_dict(model)


def test_a_checkpoint_without_switches_loads_with_the_defaults(tiny_config):
    old = {k: v for k, v in config_to_dict(tiny_config).items()
           if k not in ("causal", "residual", "norm", "norm_position", "mlp", "tie_weights")}
    model = build(tiny_config)
    loaded = model_from_checkpoint({"model_config": old, "model": model.state_dict()}, "old.pt")
    assert loaded.config == tiny_config
    idx = torch.randint(0, tiny_config.vocab_size, (1, 5))
    torch.testing.assert_close(loaded.eval()(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert config_from_dict(ModelConfig, config_to_dict(replace(tiny_config, mlp=False))).mlp is False



@pytest.mark.parametrize("variant", list(SWITCHES))
def test_every_variant_plays_in_the_playground(tiny_config, variant):
    import threading

    from src.playground.core import check_settings, generate_steps

    model = build(tiny_config, **SWITCHES[variant])
    tokenizer = CharTokenizer.train("abcdefghij", max_vocab_size=64)  # 12 tokens: ids 0..10 all valid
    settings = check_settings(0, 0, 1.0, 4, 1, tokenizer.vocab_size)  # --serve's generation, greedy
    prompt = [1, 2, 3]
    steps = list(generate_steps(model, tokenizer, prompt, settings, threading.Lock()))
    expected = model.generate(torch.tensor([prompt]), 4, temperature=0.0)[0, 3:].tolist()
    assert [s.token_id for s in steps] == expected


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["no_position", "no_mask", "post_norm", "no_mlp"])  # what the pictures read
def test_variants_draw_their_pictures(tiny_config, variant, tmp_path):
    from src.visualization import write_visualizations

    tokenizer = CharTokenizer.train("abcdefghi", max_vocab_size=64)
    model = build(replace(tiny_config, vocab_size=tokenizer.vocab_size), **SWITCHES[variant])
    written = write_visualizations(model, tokenizer, "abcdef", tmp_path)  # --visualize
    assert {p.name for p in written} >= {"attention_layer0.png", "attention_layer1.png", "embeddings.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


@pytest.mark.parametrize("variant", ["untied", "no_position", "no_mlp", "post_norm"])
def test_safetensors_export_round_trips_every_switch(tiny_config, variant, tmp_path):
    from src.training.checkpoints import export_safetensors, load_model

    tokenizer = CharTokenizer.train("abcdefghi", max_vocab_size=64)
    model = build(replace(tiny_config, vocab_size=tokenizer.vocab_size), **SWITCHES[variant])
    loaded, _ = load_model(export_safetensors(model, tokenizer, tmp_path / "model.safetensors"))
    assert loaded.config == model.config
    idx = torch.randint(0, tokenizer.vocab_size, (1, 6))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    if variant == "untied":
        assert loaded.lm_head.weight is not loaded.embeddings.token_embedding.weight
