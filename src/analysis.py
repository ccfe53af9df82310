"""Analysis without pictures: a forward pass explained step by step, surprisal, head patterns, memorisation.

* `explain_forward` runs ONE forward pass of the real model with forward hooks on its submodules
  (`embeddings`, `blocks[i].ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.*`, `ln_f`,
  `lm_head`) and records every intermediate tensor with its shape and a one-line meaning. The
  attention weights are obtained by handing the captured q, k, v to the model's own
  `scaled_dot_product_attention`, so nothing of the model's maths is written twice here.
* `token_surprisal`: -log2 p(next token) for every position of a text, with the model's top guesses.
* `head_pattern_scores`: simple numbers that tell what a head attends to (previous token, itself,
  the first token, the start of a word) - the patterns described by Olsson et al. 2022,
  "In-context Learning and Induction Heads", and Clark et al. 2019, "What Does BERT Look At?".
* `longest_verbatim_match`: the longest piece of a generated sample that appears word for word in
  the training text - a quick memorisation check (Carlini et al. 2021, "Extracting Training Data
  from Large Language Models", count such verbatim copies).

Shape notation: B batch, T time, C = n_embd, nh heads, hs head size, V vocabulary.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# A byte-level stand-in tokenizer (for `--explain` without a checkpoint)
# ---------------------------------------------------------------------------------------------


class ByteTokenizer:
    """Each UTF-8 byte is one token (vocabulary 256): ``ByteTokenizer().encode("Hä")`` -> ``[72, 195, 164]``.

    Used when a fresh, untrained model is explained and no trained tokenizer exists.
    """

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str, allowed_special: set[str] | str = "none") -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < 256:
            raise ValueError(f"byte token ids lie in 0..255, got {i}")
        return chr(i) if 32 <= i < 127 else f"<0x{i:02X}>"


# ---------------------------------------------------------------------------------------------
# One forward pass, explained
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One step of the forward pass: a tensor, its shape (numbers and letters) and what it means."""

    key: str  # stable id, e.g. "block0.qkv_heads"
    name: str  # short human name
    shape: tuple[int, ...]
    symbolic: str  # the same shape in letters, e.g. "(B, nh, T, hs)"
    meaning: str
    module: str | None = None  # qualified name of the submodule that produced it
    block: int | None = None
    # The captured tensor (None where the model never materialises it, e.g. the fused scores);
    # for "split into heads" a stack (3, B, nh, T, hs) of q, k and v.
    value: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class TokenProbability:
    token_id: int
    token: str
    probability: float


@dataclass
class ParameterCount:
    module: str
    count: int
    note: str = ""


@dataclass
class Explanation:
    """What `explain_forward` found: the stages in order, the likeliest next tokens, parameter counts."""

    prompt: str
    tokens: list[str]
    stages: list[Stage]
    next_tokens: list[TokenProbability]
    parameters: list[ParameterCount]
    total_parameters: int


def _first_tensor(output: Any) -> torch.Tensor:
    """Modules may return a tensor or a tuple (e.g. output and cache); the first tensor is the activation."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"cannot find a tensor in module output of type {type(output).__name__}")


def _register_hooks(model: torch.nn.Module, captured: dict[str, torch.Tensor]) -> list[Any]:
    """Forward hooks that copy the outputs (and two inputs) of the model's submodules into `captured`."""

    def save_output(key: str):
        def hook(module, inputs, output):
            captured[key] = _first_tensor(output).detach()

        return hook

    def save_input(key: str):
        def hook(module, inputs):
            captured[key] = _first_tensor(inputs).detach()

        return hook

    handles = []
    embeddings = model.embeddings
    handles.append(embeddings.token_embedding.register_forward_hook(save_output("tok_emb")))
    if isinstance(embeddings.position_embedding, torch.nn.Module):
        handles.append(embeddings.position_embedding.register_forward_hook(save_output("pos_emb")))
    handles.append(embeddings.register_forward_hook(save_output("embeddings")))
    for i, block in enumerate(model.blocks):
        handles += [
            block.ln_1.register_forward_hook(save_output(f"{i}.ln_1")),
            block.attn.c_attn.register_forward_hook(save_output(f"{i}.c_attn")),
            # The input of the output projection is the merged heads: the attention result itself.
            block.attn.c_proj.register_forward_pre_hook(save_input(f"{i}.merged")),
            block.attn.c_proj.register_forward_hook(save_output(f"{i}.attn_proj")),
            # The input of ln_2 is x + attention: the residual stream after the first add.
            block.ln_2.register_forward_pre_hook(save_input(f"{i}.residual_1")),
            block.ln_2.register_forward_hook(save_output(f"{i}.ln_2")),
            block.mlp.c_fc.register_forward_hook(save_output(f"{i}.c_fc")),
            block.mlp.gelu.register_forward_hook(save_output(f"{i}.gelu")),
            block.mlp.c_proj.register_forward_hook(save_output(f"{i}.mlp_proj")),
            block.register_forward_hook(save_output(f"{i}.out")),
        ]
    handles.append(model.ln_f.register_forward_hook(save_output("ln_f")))
    handles.append(model.lm_head.register_forward_hook(save_output("logits")))
    return handles


def parameter_counts(model: torch.nn.Module) -> list[ParameterCount]:
    """Parameters per module: embeddings, every block (block 0 with its parts), ln_f, lm_head.

    Each top-level row is followed by its parts (names with one more dot). A weight shared by two
    modules (the tied LM head) is counted at the first one only, so the top-level rows add up to
    `model.num_parameters()`.
    """
    seen: set[int] = set()

    def own(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def top_level(name: str, module: torch.nn.Module, parts: list[str]) -> list[ParameterCount]:
        fresh = [p for p in module.parameters() if id(p) not in seen]
        shared = len(fresh) < len(list(module.parameters()))
        note = "tied to embeddings.token_embedding" if shared else ""
        rows = [ParameterCount(name, sum(p.numel() for p in fresh), note)]
        rows += [ParameterCount(f"{name}.{part}", own(module.get_submodule(part))) for part in parts]
        seen.update(id(p) for p in module.parameters())
        return rows

    embedding_parts = [n for n in ("token_embedding", "position_embedding")
                       if own(getattr(model.embeddings, n)) > 0]  # a sinusoidal table has no parameters
    rows = top_level("embeddings", model.embeddings, embedding_parts)
    block_parts = ["ln_1", "attn", "attn.c_attn", "attn.c_proj", "ln_2", "mlp", "mlp.c_fc", "mlp.c_proj"]
    for i, block in enumerate(model.blocks):
        rows += top_level(f"blocks.{i}", block, block_parts if i == 0 else [])
    rows += top_level("ln_f", model.ln_f, [])
    rows += top_level("lm_head", model.lm_head, [])
    return rows


def _encode_prompt(model: torch.nn.Module, tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty after tokenization; pass a non-empty --prompt")
    too_big = [i for i in ids if i >= model.config.vocab_size]
    if too_big:
        raise ValueError(
            f"token id {too_big[0]} is outside the model's vocabulary of {model.config.vocab_size}; "
            "use the tokenizer that belongs to this model (the checkpoint's run directory)"
        )
    return ids[-model.config.block_size :]  # the model sees at most block_size tokens


@torch.no_grad()
def explain_forward(model: torch.nn.Module, tokenizer: Any | None, prompt: str, top_k: int = 5) -> Explanation:
    """Run one forward pass on `prompt` and describe every stage (shape and meaning).

    Args:
        model: a MiniTransformer (any device); it is put into eval mode for the pass and restored.
        tokenizer: the model's tokenizer, or None for the byte-level `ByteTokenizer` (V must be >= 256).
        prompt: the text; only its last block_size tokens are used.
        top_k: how many likely next tokens to report.
    """
    from src.model.attention import build_causal_mask, scaled_dot_product_attention

    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    config = model.config
    ids = _encode_prompt(model, tokenizer, prompt)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (B, T) with B = 1
    B, T = idx.shape
    C, nh, hs, V = config.n_embd, config.n_head, config.head_size, config.vocab_size

    captured: dict[str, torch.Tensor] = {}
    handles = _register_hooks(model, captured)
    was_training = model.training
    model.eval()
    try:
        model(idx)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    tokens = [tokenizer.id_to_token(i) for i in ids]
    stages: list[Stage] = []

    def add(key: str, name: str, value: torch.Tensor | tuple[int, ...], symbolic: str, meaning: str,
            module: str | None = None, block: int | None = None) -> None:
        """Record a stage; `value` is the captured tensor, or just a shape where none is materialised."""
        tensor = value if isinstance(value, torch.Tensor) else None
        shape = tuple(value.shape) if tensor is not None else tuple(value)
        stages.append(Stage(key, name, shape, symbolic, meaning, module, block, tensor))

    shown_ids = ", ".join(str(i) for i in ids[:12]) + (", ..." if T > 12 else "")
    add("token_ids", "token ids", idx, "(B, T)", f"the prompt as {T} token ids: [{shown_ids}]")
    add("tok_emb", "token embedding", captured["tok_emb"], "(B, T, C)",
        f"each id picks its row of the ({V}, {C}) embedding table", "embeddings.token_embedding")
    if "pos_emb" in captured:
        pos = captured["pos_emb"]
        add("pos_emb", "position embedding", pos, "(T, C)" if pos.dim() == 2 else "(B, T, C)",
            f"one vector per position 0..{T - 1} ({config.pos_encoding}), so word order is visible",
            "embeddings.position_embedding")
    add("embeddings", "token + position embedding", captured["embeddings"], "(B, T, C)",
        "their sum starts the residual stream that every block reads and adds to", "embeddings")

    for i in range(config.n_layer):
        block = f"blocks.{i}"
        qkv = captured[f"{i}.c_attn"]  # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, T, C) -> (B, nh, T, hs)
        # The model's own attention function on the captured q, k, v: the weights it used, not a copy.
        context, weights = scaled_dot_product_attention(q, k, v, causal=True)  # (B, nh, T, hs), (B, nh, T, T)
        add(f"block{i}.ln_1", "LayerNorm 1", captured[f"{i}.ln_1"], "(B, T, C)",
            "each token vector rescaled to mean 0, variance 1 (then a learned gain and bias)", f"{block}.ln_1", i)
        add(f"block{i}.qkv", "q, k, v projection", qkv, "(B, T, 3C)",
            "one Linear C -> 3C computes query, key and value for every token at once", f"{block}.attn.c_attn", i)
        add(f"block{i}.qkv_heads", "split into heads", torch.stack((q, k, v)), "(B, nh, T, hs)",
            f"q, k and v each cut into {nh} heads of width {hs}; every head attends on its own", f"{block}.attn", i)
        stages[-1].shape = tuple(q.shape)  # the stacked value holds all three; the shape is that of each
        add(f"block{i}.scores", "scores q·kᵀ/√hs", (B, nh, T, T), "(B, nh, T, T)",
            f"how well each query matches each key, divided by sqrt({hs}) to keep the softmax soft",
            f"{block}.attn", i)
        add(f"block{i}.mask", "causal mask", build_causal_mask(T), "(T, T)",
            "scores above the diagonal (keys in the future) are set to -inf: no peeking ahead", f"{block}.attn", i)
        add(f"block{i}.softmax", "softmax", weights, "(B, nh, T, T)",
            "each row turns into attention weights >= 0 that sum to 1 (future weights are exactly 0)",
            f"{block}.attn", i)
        add(f"block{i}.weighted_sum", "weighted sum of values", context, "(B, nh, T, hs)",
            "each token's new vector: the attention-weighted average of the value vectors", f"{block}.attn", i)
        add(f"block{i}.merge", "merge heads", captured[f"{i}.merged"], "(B, T, C)",
            f"the {nh} heads side by side again: (B, nh, T, hs) -> (B, T, C)", f"{block}.attn", i)
        add(f"block{i}.attn_proj", "output projection", captured[f"{i}.attn_proj"], "(B, T, C)",
            "a Linear C -> C mixes what the heads found", f"{block}.attn.c_proj", i)
        add(f"block{i}.residual_1", "residual add", captured[f"{i}.residual_1"], "(B, T, C)",
            "x + attention(ln_1(x)): the block adds to the stream instead of replacing it", block, i)
        add(f"block{i}.ln_2", "LayerNorm 2", captured[f"{i}.ln_2"], "(B, T, C)",
            "normalise again before the MLP", f"{block}.ln_2", i)
        add(f"block{i}.mlp_up", "MLP up-projection", captured[f"{i}.c_fc"], "(B, T, 4C)",
            "each token separately: Linear C -> 4C, room to compute features", f"{block}.mlp.c_fc", i)
        add(f"block{i}.gelu", "GELU", captured[f"{i}.gelu"], "(B, T, 4C)",
            "the non-linearity: negative values are damped towards 0", f"{block}.mlp.gelu", i)
        add(f"block{i}.mlp_down", "MLP down-projection", captured[f"{i}.mlp_proj"], "(B, T, C)",
            "Linear 4C -> C back to the width of the stream", f"{block}.mlp.c_proj", i)
        add(f"block{i}.residual_2", "residual add", captured[f"{i}.out"], "(B, T, C)",
            "x + mlp(ln_2(x)): the output of the block, the input of the next one", block, i)

    logits = captured["logits"]  # (B, T, V)
    probabilities = torch.softmax(logits[0, -1].float(), dim=-1)  # (V,)
    add("ln_f", "final LayerNorm", captured["ln_f"], "(B, T, C)", "normalise the stream one last time", "ln_f")
    add("logits", "logits", logits, "(B, T, V)",
        f"a score for each of the {V} vocabulary entries at every position (lm_head, tied to the embedding)",
        "lm_head")
    add("probabilities", "next-token probabilities", probabilities, "(V,)",
        "softmax over the scores at the last position: the distribution of the next token")
    top = torch.topk(probabilities, min(top_k, V))
    next_tokens = [TokenProbability(int(i), _token_text(tokenizer, int(i)), float(p))
                   for p, i in zip(top.values, top.indices)]
    counts = parameter_counts(model)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return Explanation(prompt, tokens, stages, next_tokens, counts, total)


def _token_text(tokenizer: Any, token_id: int) -> str:
    """The token's text; a model vocabulary larger than the tokenizer's shows the bare id."""
    return tokenizer.id_to_token(token_id) if token_id < tokenizer.vocab_size else f"<{token_id}>"


def _shape_text(shape: tuple[int, ...]) -> str:
    """``_shape_text((1, 5))`` -> ``"(1, 5)"``, ``_shape_text((7,))`` -> ``"(7,)"``."""
    return str(tuple(shape))


def format_explanation(explanation: Explanation) -> str:
    """The explanation as readable text for the terminal (one stage per line)."""
    from src.visualization import display_token, quoted_token

    shown = " ".join(f"[{display_token(t)}]" for t in explanation.tokens)
    lines = [f"Prompt: {explanation.prompt!r} -> {len(explanation.tokens)} tokens: {shown}", ""]
    current_block: int | None = None
    for stage in explanation.stages:
        if stage.block is not None and stage.block != current_block:
            lines.append(f"Block {stage.block}")
        current_block = stage.block
        indent = "    " if stage.block is not None else ""
        name = f"{indent}{stage.name}"
        lines.append(f"{name:<32}{_shape_text(stage.shape):<18}{stage.symbolic:<16}{stage.meaning}")
    lines += ["", "Most likely next tokens:"]
    for rank, candidate in enumerate(explanation.next_tokens, 1):
        token = quoted_token(candidate.token)
        lines.append(f"  {rank}. {token:<14} id {candidate.token_id:<6} p = {candidate.probability:.4f}")
    lines += ["", "Parameters per module:"]
    for row in explanation.parameters:
        note = f"  ({row.note})" if row.note else ""
        depth = row.module.count(".") - (1 if row.module.startswith("blocks.") else 0)  # "blocks.0" is level 0
        indent = "  " * depth
        lines.append(f"  {indent + row.module:<36}{row.count:>14,}{note}")
    lines.append(f"  {'total':<36}{explanation.total_parameters:>14,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Surprisal
# ---------------------------------------------------------------------------------------------


@dataclass
class Surprisal:
    """Per-token surprisal of a text. `bits[i]` belongs to `tokens[i + 1]` (the first token has no context)."""

    tokens: list[str]
    ids: list[int]
    bits: list[float]
    alternatives: list[list[tuple[str, float]]]  # per predicted position: the model's top guesses (token, p)
    text_tokens: int = 0  # tokens in the whole text; more than len(tokens) when it was cut to block_size + 1


@torch.no_grad()
def token_surprisal(model: torch.nn.Module, tokenizer: Any, text: str, top: int = 3) -> Surprisal:
    """-log2 p(token | all tokens before it) for the first block_size + 1 tokens of `text`."""
    all_ids = tokenizer.encode(text)
    ids = all_ids[: model.config.block_size + 1]
    if len(ids) < 2:
        raise ValueError("the text needs at least 2 tokens to measure surprisal; pass a longer text")
    device = next(model.parameters()).device
    idx = torch.tensor([ids[:-1]], dtype=torch.long, device=device)  # (1, T)
    targets = torch.tensor(ids[1:], dtype=torch.long, device=device)  # (T,)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx)  # (1, T, V)
    finally:
        model.train(was_training)
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)  # (T, V)
    bits = (-log_probs[torch.arange(len(targets)), targets] / math.log(2)).tolist()
    top_p, top_i = torch.topk(log_probs.exp(), min(top, log_probs.shape[-1]), dim=-1)  # (T, top)
    alternatives = [
        [(tokenizer.id_to_token(int(i)), float(p)) for p, i in zip(row_p, row_i)]
        for row_p, row_i in zip(top_p.cpu(), top_i.cpu())
    ]
    return Surprisal([tokenizer.id_to_token(i) for i in ids], ids, bits, alternatives, len(all_ids))


# ---------------------------------------------------------------------------------------------
# What do the heads look at?
# ---------------------------------------------------------------------------------------------


@dataclass
class HeadScores:
    """Average attention mass of one head on typical targets (each in [0, 1])."""

    layer: int
    head: int
    previous: float  # on the token right before the query
    current: float  # on the query token itself
    first: float  # on the very first token (an "attention sink")
    word_start: float  # on tokens that begin a word (preceded by whitespace or starting with it)

    def pattern(self, threshold: float = 0.5) -> str:
        """The name of the strongest pattern, or "mixed" when none takes `threshold` of the mass."""
        scores = {"previous token": self.previous, "current token": self.current, "first token": self.first,
                  "start of word": self.word_start}
        name, value = max(scores.items(), key=lambda item: item[1])
        return name if value >= threshold else "mixed"


def _word_starts(tokens: list[str]) -> list[bool]:
    """True for tokens that begin a word: ``_word_starts(["a", " b", "c"])`` -> ``[True, True, False]``."""
    starts = []
    for i, token in enumerate(tokens):
        begins_after_space = i == 0 or tokens[i - 1][-1:].isspace()
        starts.append(bool(token.strip()) and (token[:1].isspace() or begins_after_space))
    return starts


def head_pattern_scores(weights: torch.Tensor, tokens: list[str]) -> list[HeadScores]:
    """Score every head of `weights` (n_layer, nh, T, T) for four simple attention patterns.

    Each score averages, over the query positions t >= 1, the weight that row t puts on the
    target (previous token t-1, itself, position 0, or all word-start tokens <= t together).
    """
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] != len(tokens):
        raise ValueError(f"weights must have shape (n_layer, nh, T, T) with T = {len(tokens)} tokens, "
                         f"got {tuple(weights.shape)}")
    T = len(tokens)
    if T < 2:
        raise ValueError("head patterns need a prompt of at least 2 tokens")
    rows = torch.arange(1, T)
    word_start = torch.tensor(_word_starts(tokens), dtype=torch.float32)  # (T,)
    results = []
    for layer in range(weights.shape[0]):
        for head in range(weights.shape[1]):
            w = weights[layer, head]  # (T, T)
            results.append(HeadScores(
                layer, head,
                previous=float(w[rows, rows - 1].mean()),
                current=float(w[rows, rows].mean()),
                first=float(w[rows, 0].mean()),
                word_start=float((w[rows] @ word_start).mean()),  # (T-1, T) @ (T,) -> (T-1,)
            ))
    return results


# ---------------------------------------------------------------------------------------------
# Memorisation: the longest verbatim match
# ---------------------------------------------------------------------------------------------


@dataclass
class Match:
    """The longest piece of a sample found word for word in a document."""

    text: str
    length: int
    source: str | None  # the name of the document it was found in (None when nothing matched)
    sample_offset: int = 0  # where it starts in the sample
    source_offset: int = 0  # where it starts in the document


# Polynomial rolling hash modulo 2**32 (numpy's uint32 arithmetic wraps around): the hash of
# s[i:i+L] is sum_j s[j] * BASE**(i+L-1-j). BASE is odd, so it has an inverse modulo 2**32, which
# lets one prefix array give the hash of every window: (P[i+L] - P[i]) * BASE**(i+L-1).
# Equal strings always have equal hashes; every hash hit is confirmed by comparing the strings,
# so a collision costs a comparison, never a wrong answer.
_HASH_BASE = 1_000_003
_HASH_INVERSE = pow(_HASH_BASE, -1, 2**32)
_FILTER_BITS = 22  # a table of 2**22 booleans (4 MB) pre-filters the window hashes by their high bits


def _powers(base: int, n: int) -> np.ndarray:
    """[1, base, base**2, ..., base**(n-1)] modulo 2**32."""
    factors = np.full(n, base, dtype=np.uint32)
    factors[0] = 1
    return np.cumprod(factors, dtype=np.uint32)


class _RollingHash:
    """Hashes of all windows of one length of a text, in a few vectorised numpy operations.

    The arrays are allocated once and reused for every window length (fresh 30 MB arrays per
    query would cost more in page faults than the arithmetic itself).
    """

    def __init__(self, text: str) -> None:
        # The characters as integers, index-aligned with Python's str indexing.
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        n = len(codes)
        self.powers = _powers(_HASH_BASE, n + 1)
        self.prefix = np.zeros(n + 1, dtype=np.uint32)
        np.cumsum(codes * _powers(_HASH_INVERSE, n), dtype=np.uint32, out=self.prefix[1:])
        self._buffer = np.empty(n, dtype=np.uint32)

    def windows(self, length: int) -> np.ndarray:
        """Hash of text[i:i+length] for every i: (n - length + 1,). Valid until the next call."""
        count = len(self.prefix) - length
        out = self._buffer[:count]
        np.subtract(self.prefix[length:], self.prefix[:count], out=out)
        np.multiply(out, self.powers[length - 1 : length - 1 + count], out=out)
        return out


class VerbatimIndex:
    """The training documents prepared once for many `longest_match` queries.

    Binary search on the match length L: "does any L-character piece of the sample occur in the
    documents?" is answered by comparing rolling hashes of all L-windows (numpy, no Python loop
    over the ~7 million characters). A found match is extended character by character, which
    raises the lower bound of the search faster than halving alone.
    """

    def __init__(self, documents: dict[str, str]) -> None:
        self.names = list(documents)
        texts = list(documents.values())
        # A separator that occurs in no document, so that no match can span two documents.
        self.separator = next(chr(c) for c in range(0xD800) if all(chr(c) not in t for t in texts))
        self.text = self.separator.join(texts)
        self.starts = []
        offset = 0
        for t in texts:
            self.starts.append(offset)
            offset += len(t) + 1
        self.max_length = max((len(t) for t in texts), default=0)
        self._hash = _RollingHash(self.text) if self.text else None

    def _source_of(self, position: int) -> int:
        return bisect.bisect_right(self.starts, position) - 1

    def _match_of_length(self, sample: str, sample_hash: _RollingHash, length: int) -> Match | None:
        """Some match of at least `length` characters (extended to its full length), or None."""
        sample_windows = sample_hash.windows(length)  # (m - L + 1,)
        text_windows = self._hash.windows(length)  # (N - L + 1,)
        table = np.zeros(1 << _FILTER_BITS, dtype=bool)
        shift = np.uint32(32 - _FILTER_BITS)  # the high bits of a polynomial hash mix best
        table[sample_windows >> shift] = True
        candidates = np.flatnonzero(table[text_windows >> shift])
        candidates = candidates[np.isin(text_windows[candidates], sample_windows)]
        by_hash: dict[int, list[int]] = {}
        for s, h in enumerate(sample_windows.tolist()):
            by_hash.setdefault(h, []).append(s)
        best = None
        for p in candidates[:256].tolist():
            for s in by_hash[int(text_windows[p])]:
                piece = sample[s : s + length]
                if self.text[p : p + length] != piece or self.separator in piece:
                    continue  # a hash collision, or a window across two documents
                start_s, start_p, end_s, end_p = s, p, s + length, p + length
                while start_s > 0 and start_p > 0 and sample[start_s - 1] == self.text[start_p - 1]:
                    start_s, start_p = start_s - 1, start_p - 1
                while end_s < len(sample) and end_p < len(self.text) and sample[end_s] == self.text[end_p]:
                    end_s, end_p = end_s + 1, end_p + 1
                if best is None or end_s - start_s > best.length:
                    source = self._source_of(start_p)
                    best = Match(sample[start_s:end_s], end_s - start_s, self.names[source], start_s,
                                 start_p - self.starts[source])
        return best

    def longest_match(self, sample: str) -> Match:
        """The longest substring of `sample` that occurs verbatim in one of the documents."""
        if not sample or self._hash is None:
            return Match("", 0, None)
        sample_hash = _RollingHash(sample)
        best = Match("", 0, None)
        low, high = 0, min(len(sample), self.max_length) + 1  # a match of `low` exists, none of `high`
        # Galloping search: start at a length most samples share with their training text; after a
        # hit (already extended to its full length) probe just above it with growing steps, after a
        # miss halve the interval. Usually two or three probes settle it.
        middle, step = min(16, high - 1), 1
        while high - low > 1:
            found = self._match_of_length(sample, sample_hash, middle)
            if found is None:
                high = middle
                middle = (low + high) // 2
            else:
                best, low = found, found.length
                middle, step = min(low + step, high - 1), step * 2
        return best


def longest_verbatim_match(sample: str, documents: dict[str, str]) -> Match:
    """The longest substring of `sample` that appears word for word in `documents` ({name: text}).

    Example: ``longest_verbatim_match("a cat sat", {"book": "the cat sat on"}).text`` -> ``" cat sat"``.
    For several samples against the same documents build one `VerbatimIndex` and reuse it.
    """
    return VerbatimIndex(documents).longest_match(sample)


def format_match(match: Match, max_chars: int = 120) -> str:
    """One line for the CLI / samples.md, e.g. ``longest verbatim match: 8 characters from book: " cat sat"``."""
    if match.length == 0:
        return "longest verbatim match: none (not even one character appears in the training text)"
    shown = match.text if len(match.text) <= max_chars else match.text[: max_chars - 1] + "…"
    return f"longest verbatim match: {match.length} characters from {match.source}: {shown!r}"


def training_texts(processed_dir: str | Path, split: str = "train") -> dict[str, str]:
    """The training text of every source of a processed data set, decoded: {"<id> <title>": text}.

    Reads meta.json (each source's token `offset` and count in the split), tokenizer.json and
    <split>.bin from a folder written by `python -m src.dataset`. Without per-source offsets the
    whole split is returned as one document.
    """
    from src.dataset import load_tokens
    from src.tokenizer import load_tokenizer

    processed_dir = Path(processed_dir)
    meta_path = processed_dir / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{processed_dir} is not a processed data set (no meta.json); run python -m src.dataset first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    tokens = load_tokens(processed_dir, split)
    tokenizer = load_tokenizer(processed_dir / "tokenizer.json")
    documents: dict[str, str] = {}
    for source in meta.get("sources", []):
        part = source.get(split) or {}
        if "offset" not in part or not part.get("tokens"):
            continue
        name = " ".join(str(x) for x in (source.get("id"), source.get("title")) if x not in (None, ""))
        name = name or f"source {len(documents)}"
        offset, count = int(part["offset"]), int(part["tokens"])
        documents[name] = tokenizer.decode(np.asarray(tokens[offset : offset + count]).tolist())
    if not documents:
        documents[split] = tokenizer.decode(np.asarray(tokens).tolist())
    return documents


def memorization_note(data_path: str | Path) -> Callable[[str], str]:
    """A function sample -> one line naming its longest verbatim piece of the training text.

    The index over the training text is built on first use (about a second for the 12 books).
    """
    index: list[Any] = []

    def note(sample: str) -> str:
        if not index:
            index.append(VerbatimIndex(training_texts(data_path)))
        return format_match(index[0].longest_match(sample))

    return note
