"""MiniTransformer: a decoder-only (GPT) language model.

token ids -> Embeddings -> n_layer x TransformerBlock -> final LayerNorm -> LM head -> logits.
The logits at position t score every vocabulary entry as the token at position t + 1; training
minimises the cross-entropy against the actual next token (Radford et al. 2018/2019, GPT / GPT-2).

Choices from GPT-2 (and why):
* The LM head shares its weight with the token embedding ("weight tying", Press & Wolf 2017): the
  same matrix maps ids to vectors and vectors back to id scores, saving V * C parameters.
* Initialisation normal(0, 0.02), zero biases, and the output projections that write into the
  residual stream (`c_proj`) scaled by 1/sqrt(2 n_layer): each block adds two such terms, so this
  keeps the stream's variance from growing with depth (GPT-2 paper, section 2.3).
* Architecture and submodule names match Hugging Face's GPT2LMHeadModel, so weights map 1:1.

`generate` samples one token at a time (greedy, temperature, top-k, nucleus/top-p; see sampling.py)
and uses a preallocated KV cache (attention.KVCache) while the sequence fits in block_size. Past
block_size the window slides: every position shifts by one, so every cached key is stale, and each
step re-runs the last block_size tokens - exactly what the uncached path computes.

Device and precision are the caller's choice: `model.to(device)` moves every weight and buffer (the
causal mask, the sinusoidal table), forward creates new tensors only on the input's device, and
mixed precision is an outer `torch.autocast` (the training loop's job). For generation only,
`model.to(torch.bfloat16)` halves the bytes of weights each new token must read (the KV cache
follows the weights' dtype; sampling still runs in fp32); fp32 stays the default and is what the
cached and uncached paths agree on token for token. Omitted on purpose:
gradient checkpointing, torch.compile inside the model, mixture-of-experts and other variants.

Switches for experiments (`ModelConfig`, default GPT-2): `tie_weights` (off: a separate V x C LM
head), `norm_position='post'` (no final LayerNorm: each block already ends normalised) and
`causal=False` (no KV cache: without the mask, earlier positions' keys and values change with every
new token, so generation recomputes the window at each step). The others live in embeddings.py,
attention.py and transformer_block.py.

Shapes: B batch, T time, C = n_embd, V = vocab_size (legend in attention.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from src.config import ModelConfig
from src.model.attention import KVCache
from src.model.embeddings import Embeddings
from src.model.sampling import check_generate_args, sample_next_token
from src.model.transformer_block import TransformerBlock, make_norm


class MiniTransformer(nn.Module):
    """GPT-2 style decoder-only Transformer built from a ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.embeddings.token_embedding.weight  # weight tying: one shared tensor
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            if block.mlp is not None:
                nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache: list[KVCache] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args:
            idx: (B, T) token ids, T <= block_size (counting cached tokens).
            targets: (B, T) the next token at each position, or None.
            kv_cache: from `new_kv_cache()`; extended in place by the T new positions.
        Returns:
            logits (B, T, V) and the mean cross-entropy over all positions (None without targets).
        """
        # First pass: skip the kv_cache lines (generation only); without a cache start_pos is 0.
        if kv_cache is not None and len(kv_cache) != len(self.blocks):
            raise ValueError(
                f"kv_cache has {len(kv_cache)} layers, the model {len(self.blocks)}; use model.new_kv_cache()"
            )
        if kv_cache is not None and not self.config.causal:
            raise ValueError("a model without causal mask cannot use a KV cache: new tokens change earlier positions")
        start_pos = kv_cache[0].length if kv_cache is not None else 0
        x = self.embeddings(idx, start_pos=start_pos)  # (B, T) -> (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache=kv_cache[i] if kv_cache is not None else None)  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, C) -> (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # (B*T, V) vs (B*T,)
        return logits, loss

    # First pass: skip new_kv_cache and read generate and _stream below as if use_cache were False.
    def new_kv_cache(self) -> list[KVCache]:
        """An empty KV cache, one KVCache of block_size positions per layer, for `forward(..., kv_cache=...)`.

            cache = model.new_kv_cache()
            logits, _ = model(prompt, kv_cache=cache)  # positions 0 .. T-1, cache[i].length becomes T
            logits, _ = model(next_token, kv_cache=cache)  # position T, attends to the cached k/v

        The buffers are allocated by the first forward (batch size, dtype and device come from it).
        """
        return [KVCache(self.config.block_size) for _ in self.blocks]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue each sequence in idx (B, T) by max_new_tokens tokens -> (B, T + max_new_tokens).

        See `generate_stream` for the arguments.
        """
        stream = self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)
        return torch.cat([idx, *stream], dim=1)  # (B, T) + max_new_tokens x (B, 1) -> (B, T + max_new_tokens)

    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens new tokens, one (B, 1) tensor at a time.

        Args:
            idx: (B, T) prompt token ids (T >= 1; only the last block_size tokens are used).
            temperature: divides the logits; < 1 sharper, > 1 flatter, 0 = greedy (argmax).
            top_k: sample only among the k most likely tokens.
            top_p: nucleus sampling - only among the smallest set of most likely tokens whose
                cumulative probability reaches top_p.
            use_cache: reuse keys/values of earlier tokens while the sequence fits in block_size.
                Beyond it the window slides and every position shifts, so each step then recomputes
                the last block_size tokens; the tokens are the same as with use_cache=False.
            generator: a torch.Generator for reproducible sampling.
        Runs with dropout off (eval semantics) whatever the module's mode.
        """
        check_generate_args(idx, max_new_tokens, temperature, top_k, top_p)  # now, not at the first next()
        return self._stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator)

    @torch.no_grad()
    def _stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        use_cache: bool,
        generator: torch.Generator | None,
    ) -> Iterator[torch.Tensor]:
        """The generation loop. The arguments were checked once, by generate_stream."""
        block_size = self.config.block_size
        context = idx[:, -block_size:]  # (B, T) the tokens the model sees, at most block_size
        cache = self.new_kv_cache() if use_cache and self.config.causal else None  # no mask: nothing stays valid
        fresh = context  # tokens not yet in the cache: the whole prompt at first, then one per step
        for _ in range(max_new_tokens):
            if cache is not None and cache[0].length + fresh.size(1) > block_size:
                cache = None  # the window slides from now on: stale positions, recompute each step
            if cache is None:
                logits = self._eval_logits(context, None)  # (B, T, V), all positions again
            else:
                logits = self._eval_logits(fresh, cache)  # (B, T_fresh, V), only the new positions
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            yield next_token
            context = torch.cat([context, next_token], dim=1)[:, -block_size:]  # (B, <= block_size)
            fresh = next_token

    # First pass: skip from here (evaluation-mode helper, attention maps for pictures, parameter and FLOP counts).
    def _eval_logits(self, idx: torch.Tensor, cache: list[KVCache] | None) -> torch.Tensor:
        """Logits (B, T, V) with dropout off. In eval mode (the usual case) no mode switch is needed."""
        if not self.training:
            return self(idx, kv_cache=cache)[0]
        self.eval()
        try:
            return self(idx, kv_cache=cache)[0]
        finally:
            self.train()

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head: (B, T) -> (n_layer, B, nh, T, T).

        Uses the manual path (whatever config.attention says) and eval semantics (no dropout).
        """
        was_training = self.training
        self.eval()
        try:
            x = self.embeddings(idx)  # (B, T) -> (B, T, C)
            maps = []
            for block in self.blocks:
                maps.append(block.attn.attention_weights(block.attention_input(x)))  # (B, nh, T, T)
                x = block(x)
            return torch.stack(maps)  # n_layer x (B, nh, T, T) -> (n_layer, B, nh, T, T)
        finally:
            self.train(was_training)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (weights, biases, LayerNorm gains; the tied LM head counted once).

        exclude_embeddings=True leaves out the token table and the learned position table (the
        sinusoidal one has no parameters): the "non-embedding" count N of Kaplan et al. (2020,
        "Scaling Laws for Neural Language Models") used in scaling laws.
        """
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= sum(p.numel() for p in self.embeddings.parameters())
        return total

    def flops_per_token(self) -> int:
        """Estimated training FLOPs (forward + backward) per token: 6 N + 12 L C T.

        6 N: a weight used in a matrix multiply costs 2 FLOPs per token (multiply + add) in the
        forward pass and 4 in the backward pass (gradients for the input and for the weight).
        N = num_parameters(exclude_embeddings=True) + V * C: the non-embedding parameters plus the
        LM head, which is a real (V x C) matmul even though its weight is the tied token table; the
        table lookups themselves cost nothing. N also counts biases and LayerNorm gains, which do
        not sit in a matmul - a small overestimate (about 1/C of N), kept for simplicity.
        12 L C T: attention has no weights of its own but, per token and layer, computes the scores
        q K^T and the weighted sum of V over T = block_size positions, 2 * 2 * T * C FLOPs forward,
        times 3 with the backward pass. This term follows PaLM (Chowdhery et al. 2022, appendix B),
        as nanoGPT's estimate_mfu does; it assumes a full context and ignores that the causal mask
        leaves half of the scores unused. Softmax, GELU and LayerNorm arithmetic is ignored.

        Example: the default config (6 layers, C=384, T=256) with V=121 -> 71,241,984 per token.
        """
        cfg = self.config
        tied_head = cfg.vocab_size * cfg.n_embd if cfg.tie_weights else 0  # untied: already in num_parameters
        n_matmul = self.num_parameters(exclude_embeddings=True) + tied_head
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
