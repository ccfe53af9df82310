"""MiniTransformer as a whole: parameter count, weight tying, initialisation, the loss of a fresh
model, learning, generation (greedy, sampling, KV cache, beyond block_size), attention maps and the
Hugging Face GPT-2 reference."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from src.config import ModelConfig
from src.model import MiniTransformer
from src.model.attention import scaled_dot_product_attention
from src.model.sampling import filter_top_k, filter_top_p, sample_next_token


def closed_form_parameter_count(cfg: ModelConfig) -> int:
    C, b = cfg.n_embd, int(cfg.bias)
    per_block = (
        (C + b * C)  # ln_1
        + (C * 3 * C + b * 3 * C)  # attn.c_attn
        + (C * C + b * C)  # attn.c_proj
        + (C + b * C)  # ln_2
        + (C * 4 * C + b * 4 * C)  # mlp.c_fc
        + (4 * C * C + b * C)  # mlp.c_proj
    )
    positions = cfg.block_size * C if cfg.pos_encoding == "learned" else 0
    return cfg.vocab_size * C + positions + cfg.n_layer * per_block + (C + b * C)  # + ln_f; lm_head is tied


@pytest.mark.parametrize(
    "changes", [{}, {"bias": False}, {"pos_encoding": "sinusoidal"}, {"n_layer": 3, "n_head": 4, "n_embd": 32}]
)
def test_num_parameters_equals_closed_form(tiny_config, changes):
    cfg = replace(tiny_config, **changes)
    model = MiniTransformer(cfg)
    assert model.num_parameters() == closed_form_parameter_count(cfg)
    embedding_tables = cfg.vocab_size * cfg.n_embd + (cfg.block_size * cfg.n_embd if cfg.pos_encoding == "learned" else 0)
    assert model.num_parameters(exclude_embeddings=True) == closed_form_parameter_count(cfg) - embedding_tables


def test_lm_head_shares_storage_with_token_embedding(tiny_config):
    model = MiniTransformer(tiny_config)
    token_table = model.embeddings.token_embedding.weight
    assert model.lm_head.weight is token_table
    assert model.lm_head.weight.data_ptr() == token_table.data_ptr()
    with torch.no_grad():
        token_table[3, 0] = 42.0
    assert model.lm_head.weight[3, 0] == 42.0


def test_gpt2_initialisation():
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=4, n_head=4, n_embd=64, dropout=0.0)
    model = MiniTransformer(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in model.blocks:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.mlp.c_fc.bias == 0)
    assert model.embeddings.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(model.ln_f.weight == 1) and torch.all(model.ln_f.bias == 0)


@pytest.mark.parametrize("vocab_size", [11, 256])
def test_fresh_model_loss_is_log_vocab_size(tiny_config, vocab_size):
    model = MiniTransformer(replace(tiny_config, vocab_size=vocab_size))
    idx = torch.randint(0, vocab_size, (16, tiny_config.block_size))
    targets = torch.randint(0, vocab_size, (16, tiny_config.block_size))
    logits, loss = model(idx, targets)
    assert logits.shape == (16, tiny_config.block_size, vocab_size)
    assert abs(loss.item() - math.log(vocab_size)) < 0.1
    assert model(idx)[1] is None


def test_overfits_one_small_batch(tiny_config):
    model = MiniTransformer(tiny_config)
    tokens = torch.randint(0, tiny_config.vocab_size, (4, tiny_config.block_size + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first_loss = model(x, y)[1].item()
    for _ in range(300):
        _, loss = model(x, y)
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first_loss > 2.0 and loss.item() < 0.05


def test_gradients_reach_every_parameter_of_the_model(tiny_config):
    model = MiniTransformer(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    model(idx, torch.roll(idx, -1, dims=1))[1].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_forward_rejects_too_long_input(tiny_config):
    model = MiniTransformer(tiny_config)
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="kv_cache has 1 layers"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=model.new_kv_cache()[:1])


# --- generation --------------------------------------------------------------------------------


def trained_model(config: ModelConfig, steps: int = 60) -> MiniTransformer:
    """A briefly trained model: confident predictions, so greedy choices are far from ties."""
    model = MiniTransformer(config)
    data = torch.randint(0, config.vocab_size, (8, config.block_size + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(data[:, :-1], data[:, 1:])[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def model(tiny_config) -> MiniTransformer:
    return trained_model(tiny_config)


def test_greedy_generation_equals_step_by_step_argmax(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (2, 3))
    out = model.generate(prompt, max_new_tokens=12, temperature=0.0)  # 15 > block_size 8
    assert out.shape == (2, 15) and torch.equal(out[:, :3], prompt)
    expected = prompt
    for _ in range(12):
        logits, _ = model(expected[:, -tiny_config.block_size :])
        expected = torch.cat([expected, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize(
    "sampling", [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 4, "top_p": 0.9}]
)
def test_kv_cache_generation_equals_no_cache_generation(tiny_config, attention, sampling):
    model = trained_model(replace(tiny_config, attention=attention), steps=20)
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 2))
    outputs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        outputs.append(model.generate(prompt, 20, use_cache=use_cache, generator=generator, **sampling))
    assert outputs[0].shape == (3, 22)  # continues well past block_size 8
    assert torch.equal(outputs[0], outputs[1])


def test_forward_with_kv_cache_equals_full_forward(model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    full, _ = model(idx)
    cache = model.new_kv_cache()
    parts = [model(idx[:, :5], kv_cache=cache)[0]] + [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, 8)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="8 cached \\+ 1 new tokens = 9 exceeds block_size 8"):
        model(idx[:, :1], kv_cache=cache)


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (4, 3))
    sample = lambda seed, **kw: model.generate(prompt, 10, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1, temperature=2.0), sample(2, temperature=2.0))
    assert torch.equal(sample(3, top_k=1), model.generate(prompt, 10, temperature=0.0))


def test_top_k_filter_docstring_example():
    expected = torch.tensor([[float("-inf"), 3.0, 2.0]])
    assert torch.equal(filter_top_k(torch.tensor([[1.0, 3.0, 2.0]]), 2), expected)


@pytest.mark.parametrize(
    "p, kept",
    [(0.4, {2}), (0.5, {2}), (0.75, {2, 0}), (0.79, {2, 0}), (0.81, {2, 0, 3}), (0.96, {2, 0, 3, 1}), (1.0, {2, 0, 3, 1})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = torch.tensor([[0.3, 0.05, 0.5, 0.15]])  # sorted: token 2 (0.5), 0 (0.3), 3 (0.15), 1 (0.05)
    filtered = filter_top_p(probs.log(), p)
    assert {i for i in range(4) if filtered[0, i] > float("-inf")} == kept
    kept_ids = sorted(kept)
    torch.testing.assert_close(filtered[0, kept_ids], probs.log()[0, kept_ids], rtol=0, atol=0)


def test_top_p_sampling_draws_only_from_the_nucleus(tiny_config):
    model = MiniTransformer(tiny_config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # also zeroes the tied token table: uniform logits over 11 tokens
    prompt = torch.zeros(200, 1, dtype=torch.long)
    draws = model.generate(prompt, 1, top_p=0.5, generator=torch.Generator().manual_seed(0))[:, 1]
    # 11 equally likely tokens: 5 of them hold 5/11 < 0.5 of the mass, so the nucleus has 6 tokens.
    assert len(set(draws.tolist())) == 6


def test_generate_stream_yields_the_tokens_of_generate(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (2, 4))
    steps = list(model.generate_stream(prompt, 5, temperature=0.0))
    assert len(steps) == 5 and all(step.shape == (2, 1) for step in steps)
    assert torch.equal(torch.cat([prompt, *steps], dim=1), model.generate(prompt, 5, temperature=0.0))


def test_generation_uses_eval_semantics_and_keeps_the_mode(tiny_config):
    model = MiniTransformer(replace(tiny_config, dropout=0.5)).train()
    prompt = torch.randint(0, tiny_config.vocab_size, (2, 3))
    assert torch.equal(model.generate(prompt, 10, temperature=0.0), model.generate(prompt, 10, temperature=0.0))
    assert model.training


def test_long_prompt_is_cropped_to_block_size(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (2, 20))
    out = model.generate(prompt, 3, temperature=0.0)
    cropped = model.generate(prompt[:, -tiny_config.block_size :], 3, temperature=0.0)
    assert torch.equal(out[:, 20:], cropped[:, tiny_config.block_size :])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_generate_rejects_bad_arguments(tiny_config, kwargs, message):
    model = MiniTransformer(tiny_config)
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **kwargs)
    with pytest.raises(ValueError, match=message):
        model.generate_stream(torch.zeros(1, 2, dtype=torch.long), **kwargs)  # raises before the first token


# --- looking inside ------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_attention_maps_match_weights_rebuilt_from_forward_hooks(tiny_config, attention):
    model = MiniTransformer(replace(tiny_config, attention=attention))
    idx = torch.randint(0, tiny_config.vocab_size, (2, 6))
    maps = model.attention_maps(idx)
    assert maps.shape == (tiny_config.n_layer, 2, tiny_config.n_head, 6, 6)
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(maps.shape[:-1]), rtol=0, atol=1e-6)
    # The recipe for explanations: a hook on c_attn sees the fused q/k/v of every layer.
    captured = []
    hooks = [b.attn.c_attn.register_forward_hook(lambda m, i, out: captured.append(out)) for b in model.blocks]
    model.eval()
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    C, nh = tiny_config.n_embd, tiny_config.n_head
    for layer, qkv in enumerate(captured):
        q, k, v = (t.view(2, 6, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=2))
        _, weights = scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(maps[layer], weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_logits_equal_hugging_face_gpt2(tiny_config, attention):
    transformers = pytest.importorskip("transformers")
    cfg = replace(tiny_config, attention=attention)
    model = trained_model(cfg, steps=5)  # trained a little so that biases and LayerNorms are not trivial
    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )  # fmt: skip
    hf_model = transformers.GPT2LMHeadModel._from_config(hf_config, attn_implementation="eager").eval()
    renamed = {
        "embeddings.token_embedding.weight": "transformer.wte.weight",
        "embeddings.position_embedding.weight": "transformer.wpe.weight",
    }
    hf_state = {}
    for name, tensor in model.state_dict().items():
        hf_name = renamed.get(name, name.replace("blocks.", "transformer.h.").replace("ln_f.", "transformer.ln_f."))
        is_linear = any(f".{n}.weight" in hf_name for n in ("c_attn", "c_proj", "c_fc"))
        hf_state[hf_name] = tensor.T if is_linear else tensor  # HF's Conv1D stores (in, out)
    missing, unexpected = hf_model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(".attn.bias" in m or ".attn.masked_bias" in m for m in missing), missing
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        ours, _ = model(idx)
        reference = hf_model(idx).logits
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


# --- generation edge cases -------------------------------------------------------------------------


def test_max_new_tokens_zero_returns_the_prompt(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (2, 3))
    out = model.generate(prompt, 0)
    assert torch.equal(out, prompt)
    assert list(model.generate_stream(prompt, 0)) == []


def test_top_k_larger_than_the_vocabulary_keeps_every_token(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 2))
    sample = lambda **kw: model.generate(prompt, 10, generator=torch.Generator().manual_seed(5), **kw)  # noqa: E731
    assert torch.equal(sample(top_k=10 * tiny_config.vocab_size), sample())
    logits = torch.randn(2, 5)
    assert torch.equal(filter_top_k(logits, 7), logits)


def test_top_p_one_keeps_every_token_even_when_probabilities_round():
    # softmax([20, 0, -10, ...]) puts 1 - 2e-9 on token 0: in float32 the running sum is exactly 1.0
    # after it, so "drop once the mass before reaches p" would drop every other token for p = 1.
    logits = torch.tensor([[20.0, 0.0, -10.0, -30.0, -60.0, -100.0]])
    assert torch.equal(filter_top_p(logits, 1.0), logits)
    assert torch.isinf(filter_top_p(logits, 0.999)[0, 1:]).all()  # just below 1 the tail does go


def test_top_p_one_samples_like_no_top_p(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 2))
    sample = lambda **kw: model.generate(prompt, 10, generator=torch.Generator().manual_seed(5), **kw)  # noqa: E731
    assert torch.equal(sample(top_p=1.0), sample())


def test_temperature_zero_is_greedy_whatever_top_k_and_top_p_say(model, tiny_config):
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 2))
    greedy = model.generate(prompt, 10, temperature=0.0)
    assert torch.equal(model.generate(prompt, 10, temperature=0.0, top_k=3, top_p=0.2), greedy)


def test_low_precision_logits_are_sampled_in_float32():
    logits = (torch.randn(500, 256) * 2).bfloat16()
    draw = lambda x: sample_next_token(x, top_p=0.9, generator=torch.Generator().manual_seed(0))  # noqa: E731
    # bf16 softmax and cumsum would round the nucleus and the probabilities differently.
    assert torch.equal(draw(logits), draw(logits.float()))


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_kv_cache_generation_with_sinusoidal_positions(tiny_config, attention):
    model = trained_model(replace(tiny_config, attention=attention, pos_encoding="sinusoidal"), steps=20)
    prompt = torch.randint(0, tiny_config.vocab_size, (3, 2))
    cached, uncached = (model.generate(prompt, 12, temperature=0.0, use_cache=c) for c in (True, False))
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": "0.5"}, "temperature must be a number"),
        ({"temperature": None}, "temperature must be a number"),
        ({"top_p": "0.9"}, "top_p must be a number"),
        ({"top_k": 2.0}, "top_k must be a positive integer"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ],
)
def test_generate_rejects_wrong_types_with_value_error(tiny_config, kwargs, message):
    model = MiniTransformer(tiny_config)
    with pytest.raises(ValueError, match=message):
        model.generate(torch.zeros(1, 2, dtype=torch.long), **{"max_new_tokens": 3, **kwargs})


def test_generate_rejects_a_float_prompt(tiny_config):
    model = MiniTransformer(tiny_config)
    with pytest.raises(ValueError, match=r"idx must hold integer token ids .* got dtype torch.float32"):
        model.generate(torch.zeros(1, 2), 3)


def test_flops_per_token_docstring_example():
    with torch.device("meta"):  # no memory, no initialisation cost: only the shapes matter
        model = MiniTransformer(ModelConfig(vocab_size=121))
    assert model.flops_per_token() == 71_241_984


# --- devices -----------------------------------------------------------------------------------------


class TensorDevices(TorchFunctionMode):
    """Records the device type of every tensor that a torch function or Tensor method returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.seen.add(value.device.type)
        return out


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_no_tensor_is_created_on_the_cpu_when_the_model_lives_elsewhere(tiny_config, attention, pos_encoding):
    """What CUDA needs, checked without a GPU: on the "meta" device (shapes only, no data) every
    tensor made in forward, generation (with and without cache), attention_maps and the loss must
    follow the model and the input; a stray `torch.arange(T)` or `torch.ones(T, T)` would be "cpu"."""
    cfg = replace(tiny_config, attention=attention, pos_encoding=pos_encoding, dropout=0.1)
    model = MiniTransformer(cfg).to("meta")
    assert {b.device.type for b in model.buffers()} == {"meta"}  # causal masks (and sinusoidal table)
    idx = torch.zeros(2, 5, dtype=torch.long, device="meta")
    devices = TensorDevices()
    with devices:
        torch.arange(3)  # the recorder does see a CPU tensor when one is made
    assert devices.seen == {"cpu"}
    devices = TensorDevices()
    with devices:
        model.train()(idx, targets=idx)[1]  # dropout paths
        model.eval()
        cache = model.new_kv_cache()
        model(idx[:, :3], kv_cache=cache)
        model(idx[:, 3:], kv_cache=cache)  # 2 new tokens with 3 cached: the offset causal mask
        model.generate(idx, 6, temperature=0.0)  # with the cache, then past block_size
        model.generate(idx, 2, temperature=0.8, top_k=3, top_p=0.9, use_cache=False)
        model.attention_maps(idx)
    assert devices.seen == {"meta"}


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
        ),
    ],
)
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_bf16_autocast_forward_backward_and_generation(tiny_config, device, pos_encoding):
    """The training loop runs the model under bf16 autocast on an RTX 4080: both attention paths agree,
    the loss stays float32, gradients are finite, and cached generation matches uncached logits."""
    cfg = replace(tiny_config, pos_encoding=pos_encoding)
    manual = trained_model(replace(cfg, attention="manual"), steps=20).to(device)
    sdpa = MiniTransformer(replace(cfg, attention="sdpa")).to(device).eval()
    sdpa.load_state_dict(manual.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size), device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        logits_manual, loss = manual(idx, targets=idx)
        logits_sdpa, _ = sdpa(idx)
        cache = sdpa.new_kv_cache()
        parts = [sdpa(idx[:, :3], kv_cache=cache)[0]] + [sdpa(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 8)]
        generator = torch.Generator(device=device).manual_seed(0)
        out = sdpa.generate(idx[:, :2], 12, temperature=0.8, top_k=5, top_p=0.9, generator=generator)
    assert logits_manual.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(logits_sdpa.float(), logits_manual.float(), rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), logits_sdpa.float(), rtol=2e-2, atol=5e-2)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in manual.parameters())
    assert out.shape == (3, 14) and out.device.type == device
    assert out.min() >= 0 and out.max() < cfg.vocab_size
