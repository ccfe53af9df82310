"""Generation's fast path: the preallocated KV cache is really used (one new token per forward while
the sequence fits in block_size, then the whole sliding window), its buffers are allocated once,
each cached step gives the logits of a full forward pass, the tokens equal the uncached path, and a
model cast to bf16 generates like the fp32 one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from src.model import MiniTransformer
from tests.test_transformer_end_to_end import trained_model


class ForwardLog:
    """Records every call of model.forward: how many tokens went in, and the cache's state after it."""

    def __init__(self, model: MiniTransformer) -> None:
        self.calls: list[tuple[int, bool]] = []  # (T fed in, with a cache?)
        self.buffers: list[list[tuple[int, int]]] = []  # data_ptr of (k, v) per layer, after each cached call
        self.caches: list[list] = []
        self.handle = model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output) -> None:
        cache = kwargs.get("kv_cache")
        self.calls.append((args[0].size(1), cache is not None))
        if cache is not None:
            self.caches.append(cache)
            self.buffers.append([(layer.k.data_ptr(), layer.v.data_ptr()) for layer in cache])


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_cached_generation_feeds_one_token_per_step_until_the_window_slides(tiny_config, attention):
    model = MiniTransformer(replace(tiny_config, attention=attention)).eval()
    log = ForwardLog(model)
    stream = model.generate_stream(torch.randint(0, 11, (2, 3)), 8, temperature=0.0)
    next(stream)
    assert log.calls == [(3, True)]  # streaming: one token costs one forward, nothing is computed ahead
    list(stream)
    # block_size 8: the prompt (3), then one new token per step up to 8 cached positions; after that
    # every position would shift, so each step re-runs the last 8 tokens without a cache.
    assert log.calls == [(3, True)] + [(1, True)] * 5 + [(8, False)] * 2


def test_uncached_generation_reruns_the_whole_context_every_step(tiny_config):
    model = MiniTransformer(tiny_config).eval()
    log = ForwardLog(model)
    model.generate(torch.randint(0, 11, (2, 3)), 8, temperature=0.0, use_cache=False)
    assert log.calls == [(3, False), (4, False), (5, False), (6, False), (7, False), (8, False), (8, False), (8, False)]


def test_cache_buffers_are_allocated_once_not_per_token(tiny_config):
    model = MiniTransformer(tiny_config).eval()
    log = ForwardLog(model)
    model.generate(torch.randint(0, 11, (2, 2)), 6, temperature=0.0)  # 2 + 6 = 8: cached throughout
    assert len(log.buffers) == 6 and all(cache is log.caches[0] for cache in log.caches)  # one cache per run
    assert all(pointers == log.buffers[0] for pointers in log.buffers)  # same memory at every step
    nh, hs = tiny_config.n_head, tiny_config.head_size
    assert all(layer.k.shape == (2, nh, tiny_config.block_size, hs) for layer in log.caches[0])
    assert [layer.length for layer in log.caches[0]] == [7] * tiny_config.n_layer  # the 8th token is never fed


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_each_cached_step_gives_the_last_logits_of_a_full_forward(tiny_config, attention, pos_encoding):
    model = trained_model(replace(tiny_config, attention=attention, pos_encoding=pos_encoding), steps=20)
    sequence = torch.randint(0, 11, (3, 2))
    cache = model.new_kv_cache()
    with torch.no_grad():
        step_logits = model(sequence, kv_cache=cache)[0][:, -1]  # (B, V) after the prompt
        while True:
            full_logits = model(sequence)[0][:, -1]  # (B, V): every position recomputed
            torch.testing.assert_close(step_logits, full_logits, rtol=0, atol=2e-6)
            if sequence.size(1) == tiny_config.block_size:
                break
            next_token = full_logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            sequence = torch.cat([sequence, next_token], dim=1)
            step_logits = model(next_token, kv_cache=cache)[0][:, -1]  # only the new token goes in
    assert cache[0].length == tiny_config.block_size


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 0.9, "top_k": 5}])
def test_prompt_longer_than_block_size_gives_the_uncached_tokens(tiny_config, attention, sampling):
    model = trained_model(replace(tiny_config, attention=attention), steps=20)
    prompt = torch.randint(0, 11, (2, 13))  # cropped to the last 8: the cache is full after the prompt
    cached, uncached = (
        model.generate(prompt, 6, use_cache=use_cache, generator=torch.Generator().manual_seed(3), **sampling)
        for use_cache in (True, False)
    )
    assert torch.equal(cached, uncached)


def counting_model(config) -> MiniTransformer:
    """A model trained to count: after token i comes (i + 1) % V. Confident, so greedy is unambiguous."""
    model = MiniTransformer(config)
    starts = torch.arange(config.vocab_size).unsqueeze(1)  # (V, 1): one sequence per start token
    data = (starts + torch.arange(config.block_size + 1)) % config.vocab_size  # (V, T + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model(data[:, :-1], data[:, 1:])[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_bf16_weights_generate_like_fp32(tiny_config, attention):
    """model.to(torch.bfloat16) halves the bytes each generated token reads; the cache follows the
    weights' dtype, the logits stay close to fp32 and the model still counts, past block_size too."""
    config = replace(tiny_config, attention=attention)
    fp32 = counting_model(config)
    bf16 = MiniTransformer(config).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16.to(torch.bfloat16)
    idx = torch.randint(0, 11, (4, config.block_size))
    with torch.no_grad():
        logits_fp32, logits_bf16 = fp32(idx)[0], bf16(idx)[0]
        cache = bf16.new_kv_cache()
        parts = [bf16(idx[:, :3], kv_cache=cache)[0]] + [bf16(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(3, 8)]
    assert logits_bf16.dtype == torch.bfloat16 and cache[0].k.dtype == torch.bfloat16
    scale = logits_fp32.abs().max().item()  # bf16 keeps ~3 significant digits: compare relative to the logits' size
    torch.testing.assert_close(logits_bf16.float(), logits_fp32, rtol=0, atol=0.015 * scale)
    torch.testing.assert_close(torch.cat(parts, dim=1).float(), logits_bf16.float(), rtol=0, atol=0.015 * scale)
    prompt = torch.tensor([[3], [9]])
    counting = (prompt + torch.arange(15)) % 11  # (2, 15): the prompt and 14 more, past block_size 8
    assert torch.equal(fp32.generate(prompt, 14, temperature=0.0), counting)  # the fp32 model did learn
    assert torch.equal(bf16.generate(prompt, 14, temperature=0.0), counting)
