"""One Transformer block: attention to mix information *between* positions, then a small MLP
that processes each position *on its own*.

Both sub-layers sit on a residual path: x = x + f(LayerNorm(x)). The residual stream carries the
input through unchanged and each sub-layer only adds a correction, which keeps gradients flowing
through deep stacks (He et al. 2016, "Deep Residual Learning"). LayerNorm (Ba et al. 2016)
rescales each position's vector to zero mean and unit variance before the sub-layer sees it.
Placing it *before* the sub-layer ("pre-LN", as in GPT-2, Radford et al. 2019) rather than after
it (the original Transformer) makes training stable without a long learning-rate warm-up
(Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture").

The MLP widens to 4 C, applies GELU (Hendrycks & Gimpel 2016; the tanh approximation GPT-2 uses,
or the exact erf form with `gelu="exact"`) and projects back to C. Submodule names follow GPT-2 (`ln_1`, `attn`, `ln_2`, `mlp`, `c_fc`,
`c_proj`) so that Hugging Face GPT2LMHeadModel weights map 1:1. Omitted on purpose: SwiGLU
(LLaMA) and parallel attention + MLP (GPT-J).

Switches for experiments (`ModelConfig`; `--experiment ablations` turns each off in turn), all in
`sublayer` and `__init__` below: `residual` (off: x = f(ln(x)), no identity path), `norm`
('layernorm', 'rmsnorm' = x / sqrt(mean(x^2) + eps) * g as in LLaMA, Zhang & Sennrich 2019, or
'none'), `norm_position` ('post': x = ln(x + f(x)), the original Transformer) and `mlp` (off:
attention only).

Shapes: B batch, T time, C = n_embd (legend in attention.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from src.config import ModelConfig
from src.model.attention import KVCache, MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise MLP: (B, T, C) -> (B, T, 4C) -> GELU -> (B, T, C), then dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.gelu(self.c_fc(x))  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(hidden))  # (B, T, 4C) -> (B, T, C)


def make_norm(config: ModelConfig) -> nn.Module:
    """The normalisation layer `config.norm` asks for, over the last dimension C."""
    if config.norm == "rmsnorm":  # no mean subtraction, no bias: x / sqrt(mean(x^2) + eps) * gain
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    if config.norm == "none":  # the stream's scale is left to itself
        return nn.Identity()
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class TransformerBlock(nn.Module):
    """Pre-LN block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). Shape (B, T, C) is kept."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.residual = config.residual
        self.pre_norm = config.norm_position == "pre"
        self.ln_1 = make_norm(config)
        self.attn = MultiHeadAttention(config)
        # mlp off (an experiment): attention only, so no ln_2 either
        self.ln_2 = make_norm(config) if config.mlp else None
        self.mlp = FeedForward(config) if config.mlp else None

    def sublayer(self, x: torch.Tensor, norm: nn.Module, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One sub-layer f (attention or MLP) with its normalisation and residual path: (B, T, C) -> (B, T, C)."""
        if self.pre_norm:  # GPT-2: f sees the normalised stream and adds its correction to the untouched x
            return x + f(norm(x)) if self.residual else f(norm(x))
        return norm(x + f(x) if self.residual else f(x))  # post-LN (Vaswani 2017): normalise after the add

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """Args: x (B, T, C); kv_cache: this layer's cache (see attention.KVCache). Returns (B, T, C)."""
        x = self.sublayer(x, self.ln_1, lambda h: self.attn(h, kv_cache=kv_cache))  # communicate between positions
        if self.mlp is not None and self.ln_2 is not None:
            x = self.sublayer(x, self.ln_2, self.mlp)  # compute at each position
        return x

    def attention_input(self, x: torch.Tensor) -> torch.Tensor:
        """What attention sees of the stream x (B, T, C): ln_1(x) before it (pre-LN), x itself after (post-LN)."""
        return self.ln_1(x) if self.pre_norm else x
