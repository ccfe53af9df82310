"""One Transformer block: attention to mix information *between* positions, then a small MLP
that processes each position *on its own*.

Both sub-layers sit on a residual path: x = x + f(LayerNorm(x)). The residual stream carries the
input through unchanged and each sub-layer only adds a correction, which keeps gradients flowing
through deep stacks (He et al. 2016, "Deep Residual Learning"). LayerNorm (Ba et al. 2016)
rescales each position's vector to zero mean and unit variance before the sub-layer sees it.
Placing it *before* the sub-layer ("pre-LN", as in GPT-2, Radford et al. 2019) rather than after
it (the original Transformer) makes training stable without a long learning-rate warm-up
(Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture").

The MLP widens to 4 C, applies GELU (Hendrycks & Gimpel 2016; the tanh approximation GPT-2 uses)
and projects back to C. Submodule names follow GPT-2 (`ln_1`, `attn`, `ln_2`, `mlp`, `c_fc`,
`c_proj`) so that Hugging Face GPT2LMHeadModel weights map 1:1. Omitted on purpose: the newer
RMSNorm and SwiGLU variants (LLaMA) and parallel attention + MLP (GPT-J).

Shapes: B batch, T time, C = n_embd (legend in attention.py).
"""

from __future__ import annotations

import torch
from torch import nn

from src.config import ModelConfig
from src.model.attention import KVCache, MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise MLP: (B, T, C) -> (B, T, 4C) -> GELU -> (B, T, C), then dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gelu(self.c_fc(x))  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(hidden))  # (B, T, 4C) -> (B, T, C)


class TransformerBlock(nn.Module):
    """Pre-LN block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). Shape (B, T, C) is kept."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Args: x (B, T, C); kv_cache: this layer's cache (see attention.KVCache). Returns (B, T, C)."""
        x = x + self.attn(self.ln_1(x), kv_cache=kv_cache)  # communicate between positions
        x = x + self.mlp(self.ln_2(x))  # compute at each position
        return x
