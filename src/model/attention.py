"""Multi-head masked (causal) self-attention - the heart of the Transformer.

Every position asks a question (query q), advertises what it holds (key k) and offers content
(value v). The output at a position is a weighted mix of the values, weighted by how well its query
matches each key: softmax(Q K^T / sqrt(hs)) V ("Attention Is All You Need", Vaswani et al. 2017,
section 3.2). Dividing by sqrt(hs) keeps the scores near unit variance, so the softmax does not
saturate. In a language model a position must not see the future, so scores of later positions are
set to -inf before the softmax (the causal mask) and get weight exactly 0. Several heads run in
parallel on slices of width hs = C / nh, each free to attend to something different.

Shape legend used throughout `src/model/`:
    B  batch size             T  time: number of positions (tokens) in the sequence
    C  n_embd, model width    nh n_head, number of heads
    hs head_size = C // nh    V  vocab_size

Two interchangeable paths, chosen by `ModelConfig.attention`:
* "manual": `scaled_dot_product_attention` below, written out step by step; it returns the
  attention weights as well, which is what you plot.
* "sdpa": `torch.nn.functional.scaled_dot_product_attention`, the fused kernel (flash attention on
  CUDA). Same mathematics, faster, but the weights are never materialised.

KV cache (incremental decoding): when generating one token at a time, the keys and values of earlier
tokens do not change, so each layer keeps them in a `KVCache` (one preallocated buffer, written in
place) and only the new token's q, k, v are computed. Omitted on purpose: cross-attention,
grouped-query attention, rotary embeddings, paged or quantised caches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig


def build_causal_mask(
    t_query: int, t_key: int | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean (t_query, t_key) mask, True where a query may attend to a key.

    The queries are the *last* t_query of the t_key positions (with a KV cache, earlier positions
    are keys only), so query i sits at position t_key - t_query + i and sees keys 0 .. that position.

    Example: build_causal_mask(3) -> [[1, 0, 0], [1, 1, 0], [1, 1, 1]] (as booleans).
    """
    t_key = t_query if t_key is None else t_key
    ones = torch.ones(t_query, t_key, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=t_key - t_query)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Cut the last dimension into n_head heads of width hs: (B, T, C) -> (B, nh, T, hs).

    Head h gets the channels h*hs .. (h+1)*hs - 1. Moving nh in front of T lets one batched matmul
    run every head at once. Example: x of shape (2, 5, 12) with n_head=3 -> shape (2, 3, 5, 4).
    """
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `split_heads`: put the heads side by side again, (B, nh, T, hs) -> (B, T, C).

    Example: merge_heads(split_heads(x, n_head)) equals x for any n_head dividing C.
    """
    B, nh, T, hs = x.shape
    # transpose only swaps strides; contiguous() copies into (B, T, nh, hs) order so that view can
    # glue the heads into one row of width C = nh * hs.
    return x.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    dropout_p: float = 0.0,
    *,
    causal_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(hs)) V, one step at a time.

    Args:
        q: (B, nh, Tq, hs) queries; k, v: (B, nh, Tk, hs) keys and values (Tk >= Tq with a cache).
        causal: hide future positions (a decoder). False gives full (encoder-style) attention.
        dropout_p: probability of dropping an attention weight (pass 0.0 at inference).
        causal_mask: optional precomputed (Tq, Tk) boolean mask, True = may attend; default
            `build_causal_mask(Tq, Tk)`. MultiHeadAttention passes a slice of its buffer.
    Returns:
        out: (B, nh, Tq, hs) the weighted sums of the values.
        weights: (B, nh, Tq, Tk) the attention distribution (before dropout); each row sums to 1.
    """
    hs = q.size(-1)
    # 1. Scores: how well each query matches each key, scaled by 1/sqrt(hs).
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, Tq, hs) @ (B, nh, hs, Tk) -> (B, nh, Tq, Tk)
    # 2. Causal mask: future positions get -inf, so the softmax gives them weight exactly 0.
    if causal:
        if causal_mask is None:
            causal_mask = build_causal_mask(q.size(-2), k.size(-2), device=q.device)
        scores = scores.masked_fill(~causal_mask, float("-inf"))
    # 3. Softmax over the keys turns each row of scores into probabilities.
    weights = torch.softmax(scores, dim=-1)  # (B, nh, Tq, Tk)
    # 4. Dropout on the weights (training only): randomly ignore some of the attended positions.
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0.0 else weights
    # 5. Weighted sum of the values.
    out = dropped @ v  # (B, nh, Tq, Tk) @ (B, nh, Tk, hs) -> (B, nh, Tq, hs)
    return out, weights


# First pass: skip KVCache (a speed-up for generation) and continue at MultiHeadAttention below.
class KVCache:
    """A preallocated ("static") cache of one attention layer's keys and values, for generation.

    What it buys: when generating token by token, the keys and values of earlier tokens never change
    (the causal mask keeps earlier positions from seeing later ones), so each layer stores them and
    every step computes q, k, v for the one new token only - O(T) work per token instead of
    re-running all T positions.

    Why preallocated: appending with torch.cat would allocate a new (B, nh, length + 1, hs) tensor
    and copy everything stored so far, in every layer, at every token. Instead the first call
    allocates one buffer of the largest size the model can use, (B, nh, max_length, hs) with
    max_length = block_size, and each call writes the new positions into it in place. `length` says
    how much of it is filled; attention gets a view of the filled part only, so the unwritten rest
    (left uninitialised) is never read.

    Usage: `model.new_kv_cache()` makes one per layer; `MultiHeadAttention.forward` calls `update`.
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.k: torch.Tensor | None = None  # (B, nh, max_length, hs), allocated by the first update
        self.v: torch.Tensor | None = None  # (B, nh, max_length, hs)
        self.length = 0  # positions 0 .. length - 1 are filled; the next token goes to `length`

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the T new positions' keys and values, k and v (B, nh, T, hs), after the stored ones.

        Returns all keys and values so far, (B, nh, length, hs): views into the buffer, no copy.
        """
        B, nh, T, hs = k.shape
        start, end = self.length, self.length + T
        if self.k is None or self.v is None:
            # Uninitialised memory is fine: only positions < length are ever read.
            self.k = k.new_empty(B, nh, self.max_length, hs)  # (B, nh, max_length, hs)
            self.v = v.new_empty(B, nh, self.max_length, hs)
        elif self.k.shape[:2] != k.shape[:2] or self.k.dtype != k.dtype:
            raise ValueError(
                f"this KVCache holds batch {self.k.size(0)} x {self.k.size(1)} heads ({self.k.dtype}), "
                f"got {B} x {nh} ({k.dtype}); use a new cache (model.new_kv_cache()) for a new batch"
            )
        if end > self.max_length:
            raise ValueError(
                f"KVCache is full: {start} cached + {T} new positions = {end} > max_length {self.max_length}"
            )
        self.k[:, :, start:end] = k  # written in place: the buffer is never reallocated
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, length, hs) each: the filled part only


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: (B, T, C) -> (B, T, C).

    Submodule names follow GPT-2 (`c_attn`, `c_proj`) so that Hugging Face GPT2LMHeadModel weights
    map 1:1 (their Conv1D stores the same matrices transposed).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.attention = config.attention  # "manual" or "sdpa"
        self.dropout_p = config.dropout
        self.causal = config.causal  # False only in an experiment: every position then sees the future too
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # output projection
        self.resid_dropout = nn.Dropout(config.dropout)
        # Built once instead of on every call; not persistent: it follows from block_size alone.
        self.register_buffer("causal_mask", build_causal_mask(config.block_size), persistent=False)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values split into heads: (B, T, C) -> 3 x (B, nh, T, hs)."""
        C = x.size(-1)
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> 3 x (B, T, C)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Args: x (B, T, C); kv_cache: this layer's cache, updated in place. Returns (B, T, C)."""
        B, T, C = x.shape
        # 1. Project to queries, keys, values and 2. split into heads.
        q, k, v = self.project_qkv(x)  # 3 x (B, nh, T, hs)
        # First pass: skip the cache lines - without a KV cache past = 0 and mask is the (T, T) triangle.
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(k, v)  # (B, nh, past + T, hs): the filled part of the cache
        # Query i sits at position past + i and may see keys 0 .. past + i.
        mask = self.causal_mask[past : past + T, : past + T]  # (T, past + T)
        dropout_p = self.dropout_p if self.training else 0.0
        # 3.-6. Attention proper, steps 1-5 of scaled_dot_product_attention: 3. scores, 4. causal mask,
        # 5. softmax (then dropout on the weights), 6. weighted sum of the values.
        if self.attention == "manual":
            context, _ = scaled_dot_product_attention(q, k, v, self.causal, dropout_p, causal_mask=mask)
        elif past == 0:
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=self.causal)
        else:
            # is_causal=True would align the triangle top-left (query 0 sees key 0 only), wrong with
            # a cache; pass our offset mask instead. A single new token may see everything.
            attn_mask = None if T == 1 else mask
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        # 7. Merge the heads again and mix them with the output projection.
        y = merge_heads(context)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # First pass: skip attention_weights (it feeds the pictures of src/visualization.py).
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The attention distribution of each head, (B, T, C) -> (B, nh, T, T), via the manual path."""
        T = x.size(1)
        q, k, v = self.project_qkv(x)
        _, weights = scaled_dot_product_attention(q, k, v, self.causal, causal_mask=self.causal_mask[:T, :T])
        return weights
