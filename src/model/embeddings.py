"""Embeddings: turn token ids into vectors the Transformer can work with.

A token id is just an index, so each id looks up a learned row of width C = n_embd (the token
embedding). Attention without a mask cannot tell order: shuffle its inputs and its outputs are
shuffled the same way. The causal mask breaks that symmetry - position t sees exactly t + 1 tokens,
so a causal model can even learn positions with no position vector at all (Haviv et al. 2022,
"Transformer Language Models without Positional Encodings Still Learn Positional Information") -
but only indirectly. An explicit vector that depends only on the *position* is added, so order is
easy to use from the first layer on. Two kinds are offered:

* "learned" (GPT-2, Radford et al. 2019): a trainable table with one row per position.
* "sinusoidal" (Vaswani et al. 2017, "Attention Is All You Need", section 3.5): a fixed table of
  sines and cosines with wavelengths from 2*pi to 10000*2*pi, so nearby positions get similar
  vectors and no parameters are needed.

Or none at all (`pos_encoding="none"`, an experiment): then only the causal mask carries order, as
described above; `--experiment ablations` measures what that costs.

Both tables have exactly `block_size` rows, so a longer sequence cannot be embedded: that raises a
ValueError naming both numbers. Omitted on purpose: relative / rotary position encodings (RoPE).

Shapes: B batch, T time (sequence length), C = n_embd, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from src.config import ModelConfig


# First pass: skip to Embeddings below; the fixed sinusoidal table is the alternative to GPT-2's learned one.
def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed position table of Vaswani et al. (2017), shape (num_positions, dim).

    PE[pos, 2i] = sin(pos / 10000^(2i/dim)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)).

    Example: sinusoidal_table(2, 2) -> [[sin 0, cos 0], [sin 1, cos 1]] = [[0, 1], [0.8415, 0.5403]].
    """
    positions = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    even_dims = torch.arange(0, dim, 2, dtype=torch.float64)  # the "2i" of the formula
    frequencies = torch.exp(-math.log(10000.0) * even_dims / dim)  # 1 / 10000^(2i/dim)
    angles = positions * frequencies  # (P, 1) * (ceil(dim/2),) -> (P, ceil(dim/2))
    table = torch.zeros(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])  # an odd dim has one sine more than cosines
    return table.to(torch.get_default_dtype())


class SinusoidalPositionEmbedding(nn.Module):
    """A drop-in for nn.Embedding(block_size, C): the fixed sinusoidal table, scaled to the token vectors' size."""

    def __init__(self, num_positions: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        # The table's entries have RMS 1/sqrt(2); token vectors start at std 0.02 (model/transformer.py).
        # Unscaled, position would drown the tokens 35:1 (measured: a 2-layer model then sat at the unigram
        # loss for 300 steps). Vaswani et al. scale the tokens up by sqrt(C); we scale the table down to std.
        # Not persistent: the table is a pure function of the config, so checkpoints need not store it.
        self.register_buffer("table", sinusoidal_table(num_positions, dim) * std * math.sqrt(2), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]  # (T,) -> (T, C)


class Embeddings(nn.Module):
    """Token embedding + position embedding, then dropout: (B, T) ids -> (B, T, C) vectors."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding: nn.Module | None = None  # "none": token vectors only
        if config.pos_encoding == "learned":
            self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            self.position_embedding = SinusoidalPositionEmbedding(config.block_size, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, idx: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Embed token ids.

        Args:
            idx: (B, T) token ids.
            start_pos: position of idx[:, 0] in the sequence; > 0 when earlier tokens are already
                held in a KV cache and only the new ones are fed in.
        Returns:
            (B, T, C) token vector + position vector (after dropout; no position vector with "none").
        """
        B, T = idx.shape
        end = start_pos + T
        if end > self.block_size:
            seen = f"{start_pos} cached + {T} new tokens = {end}" if start_pos else f"{T}"
            raise ValueError(
                f"sequence length {seen} exceeds block_size {self.block_size}; "
                f"feed at most the last {self.block_size} tokens or train with a larger --block-size"
            )
        positions = torch.arange(start_pos, end, device=idx.device)  # (T,)
        x = self.token_embedding(idx)  # (B, T) -> (B, T, C)
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)  # (B, T, C) + (T, C) -> (B, T, C), broadcast over B
        return self.dropout(x)
