"""Attention: the step-by-step function against a direct formula and PyTorch's fused kernel,
splitting and merging heads, the two MultiHeadAttention paths against each other, the
preallocated KV cache, and causality of the model."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from src.config import ModelConfig
from src.model import MiniTransformer
from src.model.attention import (
    KVCache,
    MultiHeadAttention,
    build_causal_mask,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)


def random_qkv(B: int = 2, nh: int = 3, T: int = 5, hs: int = 4, t_key: int | None = None):
    t_key = T if t_key is None else t_key
    return torch.randn(B, nh, T, hs), torch.randn(B, nh, t_key, hs), torch.randn(B, nh, t_key, hs)


def test_build_causal_mask_docstring_example():
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.equal(build_causal_mask(3), expected)


def test_build_causal_mask_with_cached_keys_aligns_queries_at_the_end():
    # 2 new queries at positions 2 and 3 of 4 keys: they see keys 0..2 and 0..3.
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(build_causal_mask(2, 4), expected)


def test_manual_attention_equals_direct_formula():
    q, k, v = random_qkv()
    hs, T = q.size(-1), q.size(-2)
    out, weights = scaled_dot_product_attention(q, k, v)
    # The same formula written with explicit loops for the mask.
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(hs)
    for i in range(T):
        for j in range(i + 1, T):
            scores[:, :, i, j] = float("-inf")
    expected_weights = torch.exp(scores) / torch.exp(scores).sum(dim=-1, keepdim=True)
    expected_out = torch.einsum("bhij,bhjd->bhid", expected_weights, v)
    assert out.shape == (2, 3, 5, 4) and weights.shape == (2, 3, 5, 5)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_manual_attention_equals_torch_sdpa(causal):
    q, k, v = random_qkv(T=7, hs=8)
    out, _ = scaled_dot_product_attention(q, k, v, causal=causal)
    reference = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


def test_attention_with_cached_keys_equals_torch_sdpa_with_offset_mask():
    q, k, v = random_qkv(T=3, t_key=7)
    out, weights = scaled_dot_product_attention(q, k, v)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=build_causal_mask(3, 7))
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    assert torch.all(weights[..., 0, 5:] == 0) and torch.all(weights[..., 0, :5] > 0)


def test_weights_rows_sum_to_one_and_are_exactly_zero_above_the_diagonal():
    q, k, v = random_qkv(T=6)
    _, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 3, 6), rtol=0, atol=1e-6)
    above = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(weights[..., above] == 0.0)
    assert torch.all(weights[..., ~above] > 0.0)


def make_attention_pair(config: ModelConfig) -> tuple[MultiHeadAttention, MultiHeadAttention]:
    manual = MultiHeadAttention(replace(config, attention="manual"))
    sdpa = MultiHeadAttention(replace(config, attention="sdpa"))
    sdpa.load_state_dict(manual.state_dict())
    return manual, sdpa


@pytest.mark.parametrize("T", [1, 5, 8])  # shorter than block_size (8) and full length
def test_manual_and_sdpa_paths_agree_on_outputs_and_gradients(tiny_config, T):
    manual, sdpa = make_attention_pair(tiny_config)
    x = torch.randn(3, T, tiny_config.n_embd)
    upstream = torch.randn(3, T, tiny_config.n_embd)
    results = []
    for module in (manual, sdpa):
        x_in = x.clone().requires_grad_(True)
        y = module(x_in)
        (y * upstream).sum().backward()
        results.append((y, x_in.grad, {n: p.grad for n, p in module.named_parameters()}))
    (y_m, gx_m, gp_m), (y_s, gx_s, gp_s) = results
    assert y_m.shape == (3, T, tiny_config.n_embd)
    torch.testing.assert_close(y_m, y_s, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_m, gx_s, rtol=0, atol=1e-6)
    assert gp_m.keys() == gp_s.keys() == {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}
    for name in gp_m:
        torch.testing.assert_close(gp_m[name], gp_s[name], rtol=0, atol=1e-6, msg=name)


def test_split_heads_docstring_example_and_channel_order():
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).view(2, 5, 12)  # (B, T, C)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)  # (B, nh, T, hs)
    for h in range(3):  # head h holds channels h*hs .. (h+1)*hs - 1 of every position
        assert torch.equal(heads[:, h], x[:, :, 4 * h : 4 * (h + 1)])


@pytest.mark.parametrize("n_head", [1, 2, 3, 6])
def test_merge_heads_inverts_split_heads(n_head):
    x = torch.randn(2, 5, 12)
    assert torch.equal(merge_heads(split_heads(x, n_head)), x)
    assert merge_heads(torch.randn(2, n_head, 5, 12 // n_head)).shape == (2, 5, 12)


def test_project_qkv_uses_split_heads_on_the_three_thirds_of_c_attn(tiny_config):
    module = MultiHeadAttention(tiny_config)
    x = torch.randn(2, 6, tiny_config.n_embd)
    q, k, v = module.project_qkv(x)
    qkv = module.c_attn(x)  # (B, T, 3C): queries | keys | values
    C = tiny_config.n_embd
    for got, part in zip((q, k, v), (qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]), strict=True):
        assert torch.equal(got, split_heads(part, tiny_config.n_head))


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_kv_cache_in_chunks_equals_one_full_pass(tiny_config, attention):
    config = replace(tiny_config, attention=attention)
    module = MultiHeadAttention(config).eval()
    x = torch.randn(2, 8, config.n_embd)
    full = module(x)
    cache = KVCache(config.block_size)
    chunks = [module(x[:, :3], kv_cache=cache)]
    # The unfilled part of the buffer must never be read: poison it, any read would give nan.
    cache.k[:, :, 3:] = float("nan")
    cache.v[:, :, 3:] = float("nan")
    chunks += [module(x[:, a:b], kv_cache=cache) for a, b in [(3, 6), (6, 7), (7, 8)]]
    assert cache.length == 8 and cache.k.shape == (2, config.n_head, config.block_size, config.head_size)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-6)


def test_kv_cache_writes_in_place_into_one_buffer_and_returns_the_filled_part():
    cache = KVCache(max_length=6)
    k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)  # (B, nh, T, hs)
    keys, values = cache.update(k[:, :, :3], v[:, :, :3])
    buffers = (cache.k.data_ptr(), cache.v.data_ptr())
    assert cache.k.shape == cache.v.shape == (2, 3, 6, 5)  # (B, nh, max_length, hs), allocated once
    assert keys.shape == (2, 3, 3, 5) and torch.equal(keys, k[:, :, :3]) and torch.equal(values, v[:, :, :3])
    keys, values = cache.update(k[:, :, 3:], v[:, :, 3:])  # one more position
    assert cache.length == 4 and torch.equal(keys, k) and torch.equal(values, v)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == buffers  # the same memory, not a new tensor
    assert keys.data_ptr() == cache.k.data_ptr() and values.data_ptr() == cache.v.data_ptr()  # views, no copy


def test_kv_cache_rejects_overflow_and_a_different_batch():
    cache = KVCache(max_length=4)
    cache.update(torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5))
    with pytest.raises(ValueError, match="3 cached \\+ 2 new positions = 5 > max_length 4"):
        cache.update(torch.randn(1, 2, 2, 5), torch.randn(1, 2, 2, 5))
    with pytest.raises(ValueError, match="holds batch 1 x 2 heads .* got 3 x 2"):
        cache.update(torch.randn(3, 2, 1, 5), torch.randn(3, 2, 1, 5))  # would silently broadcast otherwise
    assert cache.length == 3  # a refused update changes nothing


def test_attention_weights_method_equals_the_function_on_projected_heads(tiny_config):
    module = MultiHeadAttention(tiny_config)
    x = torch.randn(2, 6, tiny_config.n_embd)
    q, k, v = module.project_qkv(x)
    assert q.shape == (2, tiny_config.n_head, 6, tiny_config.head_size)
    _, expected = scaled_dot_product_attention(q, k, v)
    assert torch.equal(module.attention_weights(x), expected)


@pytest.mark.parametrize("attention, atol", [("manual", 0.0), ("sdpa", 1e-6)])
def test_causality_by_perturbation(tiny_config, attention, atol):
    """Changing tokens after position t must not change the logits at positions <= t."""
    config = replace(tiny_config, attention=attention)
    model = MiniTransformer(config).eval()
    idx = torch.randint(0, config.vocab_size, (3, config.block_size))
    logits, _ = model(idx)
    for t in range(config.block_size - 1):
        perturbed = idx.clone()
        shift = torch.randint(1, config.vocab_size, perturbed[:, t + 1 :].shape)
        perturbed[:, t + 1 :] = (idx[:, t + 1 :] + shift) % config.vocab_size  # every future token differs
        new_logits, _ = model(perturbed)
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], rtol=0, atol=atol)
        assert not torch.allclose(new_logits[:, t + 1 :], logits[:, t + 1 :])  # the future did change
