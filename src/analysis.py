"""Analysis without pictures: a forward pass explained step by step, surprisal, head patterns.

* `explain_forward` runs ONE forward pass of the real model with forward hooks on its submodules
  (`embeddings`, `blocks[i].ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.*`, `ln_f`,
  `lm_head`) and records every intermediate tensor with its shape and a one-line meaning. The
  attention weights are obtained by handing the captured q, k, v to the model's own
  `scaled_dot_product_attention`, so nothing of the model's maths is written twice here.
* `token_surprisal`: -log2 p(next token) for every position of a text, with the model's top guesses.
* `head_pattern_scores`: simple numbers that tell what a head attends to (previous token, itself,
  the first token, the start of a word) - the patterns described by Olsson et al. 2022,
  "In-context Learning and Induction Heads", and Clark et al. 2019, "What Does BERT Look At?".
* `display_token`, `quoted_token`, `encode_prompt`: tokens made readable, and a prompt cut to the
  `block_size` tokens the model sees (used by `src/visualization.py` as well).

The memorisation check (longest verbatim match with the training text) is in `src/memorization.py`.

Shape notation: B batch, T time, C = n_embd, nh heads, hs head size, V vocabulary.

Why one file of ~490 lines: `explain_forward` alone is long because it names and explains every stage
of the forward pass; the rest are small functions that the playground, the CLI and the pictures share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from src.model.eval_mode import evaluating
from src.tokenizer import BPETokenizer

# ---------------------------------------------------------------------------------------------
# Tokens made readable, and the prompt as the model sees it
# ---------------------------------------------------------------------------------------------

VISIBLE_WHITESPACE = {"\n": "↵", "\t": "⇥"}


def display_token(token: str, show_spaces: bool = True) -> str:
    """A token made visible for labels: ``display_token(" a\\n\\x1c")`` -> ``"␣a↵\\x1c"``.

    Spaces become ␣ (unless `show_spaces` is False), newlines ↵, tabs ⇥; other control characters
    (single-byte BPE tokens such as 0x1c, or \\r) have no glyph in any font and are written as \\xNN.
    """
    shown = []
    for ch in token:
        if ch == " ":
            shown.append("␣" if show_spaces else " ")
        elif ch in VISIBLE_WHITESPACE:
            shown.append(VISIBLE_WHITESPACE[ch])
        elif not ch.isprintable():
            shown.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            shown.append(ch)
    return "".join(shown)


def quoted_token(token: str) -> str:
    """A token in quotes for text lines: ``quoted_token(" a")`` -> ``"'␣a'"`` (no repr: a backslash stays single)."""
    return f"'{display_token(token)}'"


def byte_tokenizer() -> BPETokenizer:
    """One token per UTF-8 byte (a BPE tokenizer that learned no merges; vocabulary 256 + <|endoftext|>),
    for looking inside a fresh model that has no trained tokenizer: `byte_tokenizer().encode("Hä")` ->
    [72, 195, 164]."""
    return BPETokenizer([])


def unknown_characters(tokenizer: Any, text: str) -> list[str]:
    """Characters of `text` the tokenizer cannot represent (a character tokenizer turns them into <unk>).

    Example: for a tokenizer trained on "hello", ``unknown_characters(tok, "hex!")`` -> ``["x", "!"]``.
    """
    return [ch for ch in dict.fromkeys(text) if tokenizer.decode(tokenizer.encode(ch)) != ch]


def encode_prompt(model: torch.nn.Module, tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids as the model sees them: its last `block_size` tokens.

    Raises ValueError for an empty prompt or ids outside the model's vocabulary (a tokenizer that
    does not belong to the model).
    """
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
            block.register_forward_hook(save_output(f"{i}.out")),
        ]
        if block.mlp is not None and block.ln_2 is not None:  # an attention-only block (mlp=False) has neither
            handles += [
                # The input of ln_2 is x + attention: the residual stream after the first add.
                block.ln_2.register_forward_pre_hook(save_input(f"{i}.residual_1")),
                block.ln_2.register_forward_hook(save_output(f"{i}.ln_2")),
                block.mlp.c_fc.register_forward_hook(save_output(f"{i}.c_fc")),
                block.mlp.gelu.register_forward_hook(save_output(f"{i}.gelu")),
                block.mlp.c_proj.register_forward_hook(save_output(f"{i}.mlp_proj")),
            ]
    handles.append(model.ln_f.register_forward_hook(save_output("ln_f")))
    handles.append(model.lm_head.register_forward_hook(save_output("logits")))
    return handles


def _block_formula(config: Any, f: str, norm: str) -> str:
    """The sub-layer as this model computes it, e.g. "x + attention(ln_1(x))" (GPT-2) or "ln_1(x + attention(x))"."""
    if config.norm_position == "pre":
        inner = f"{f}({norm}(x))"
        return f"x + {inner}" if config.residual else f"{inner} (no residual path)"
    return f"{norm}(x + {f}(x))" if config.residual else f"{norm}({f}(x)) (no residual path)"


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

    embedding_parts = [n for n in ("token_embedding", "position_embedding")  # a sinusoidal table has no parameters,
                       if getattr(model.embeddings, n) is not None and own(getattr(model.embeddings, n)) > 0]  # "none" no table

    rows = top_level("embeddings", model.embeddings, embedding_parts)
    block_parts = ["ln_1", "attn", "attn.c_attn", "attn.c_proj", "ln_2", "mlp", "mlp.c_fc", "mlp.c_proj"]
    for i, block in enumerate(model.blocks):
        parts = [p for p in block_parts if getattr(block, p.split(".")[0]) is not None]  # mlp=False: no ln_2, mlp
        rows += top_level(f"blocks.{i}", block, parts if i == 0 else [])
    rows += top_level("ln_f", model.ln_f, [])
    rows += top_level("lm_head", model.lm_head, [])
    return rows


@torch.no_grad()
def explain_forward(model: torch.nn.Module, tokenizer: Any | None, prompt: str, top_k: int = 5) -> Explanation:
    """Run one forward pass on `prompt` and describe every stage (shape and meaning).

    Args:
        model: a MiniTransformer (any device); it is put into eval mode for the pass and restored.
        tokenizer: the model's tokenizer, or None for one token per UTF-8 byte (`byte_tokenizer()`).
        prompt: the text; only its last block_size tokens are used.
        top_k: how many likely next tokens to report.
    """
    from src.model.attention import build_causal_mask, scaled_dot_product_attention, split_heads

    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    config = model.config
    ids = encode_prompt(model, tokenizer, prompt)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (B, T) with B = 1
    B, T = idx.shape
    C, nh, hs, V = config.n_embd, config.n_head, config.head_size, config.vocab_size

    captured: dict[str, torch.Tensor] = {}
    handles = _register_hooks(model, captured)
    try:
        with evaluating(model):
            model(idx)
    finally:
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
        q, k, v = (split_heads(t, nh) for t in (q, k, v))  # the model's own split: (B, T, C) -> (B, nh, T, hs)
        # The model's own attention function on the captured q, k, v: the weights it used, not a copy.
        context, weights = scaled_dot_product_attention(q, k, v, causal=config.causal)  # (B, nh, T, hs), (B, nh, T, T)
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
        if config.causal:
            add(f"block{i}.mask", "causal mask", build_causal_mask(T), "(T, T)",
                "scores above the diagonal (keys in the future) are set to -inf: no peeking ahead", f"{block}.attn", i)
        else:
            add(f"block{i}.mask", "no causal mask", torch.ones(T, T, dtype=torch.bool), "(T, T)",
                "this model was built without the mask (causal=False): every token also sees the future", f"{block}.attn", i)
        add(f"block{i}.softmax", "softmax", weights, "(B, nh, T, T)",
            "each row turns into attention weights >= 0 that sum to 1 (future weights are exactly 0)",
            f"{block}.attn", i)
        add(f"block{i}.weighted_sum", "weighted sum of values", context, "(B, nh, T, hs)",
            "each token's new vector: the attention-weighted average of the value vectors", f"{block}.attn", i)
        add(f"block{i}.merge", "merge heads", captured[f"{i}.merged"], "(B, T, C)",
            f"the {nh} heads side by side again: (B, nh, T, hs) -> (B, T, C)", f"{block}.attn", i)
        add(f"block{i}.attn_proj", "output projection", captured[f"{i}.attn_proj"], "(B, T, C)",
            "a Linear C -> C mixes what the heads found", f"{block}.attn.c_proj", i)
        if f"{i}.residual_1" not in captured:  # attention-only block (mlp=False): its output is the stream
            add(f"block{i}.residual_1", "block output", captured[f"{i}.out"], "(B, T, C)",
                f"{_block_formula(config, 'attention', 'ln_1')}: this block has no MLP (mlp=False)", block, i)
            continue
        add(f"block{i}.residual_1", "residual add", captured[f"{i}.residual_1"], "(B, T, C)",
            f"{_block_formula(config, 'attention', 'ln_1')}: the block adds to the stream instead of replacing it", block, i)
        add(f"block{i}.ln_2", "LayerNorm 2", captured[f"{i}.ln_2"], "(B, T, C)",
            "normalise again before the MLP", f"{block}.ln_2", i)
        add(f"block{i}.mlp_up", "MLP up-projection", captured[f"{i}.c_fc"], "(B, T, 4C)",
            "each token separately: Linear C -> 4C, room to compute features", f"{block}.mlp.c_fc", i)
        add(f"block{i}.gelu", "GELU", captured[f"{i}.gelu"], "(B, T, 4C)",
            "the non-linearity: negative values are damped towards 0", f"{block}.mlp.gelu", i)
        add(f"block{i}.mlp_down", "MLP down-projection", captured[f"{i}.mlp_proj"], "(B, T, C)",
            "Linear 4C -> C back to the width of the stream", f"{block}.mlp.c_proj", i)
        add(f"block{i}.residual_2", "residual add", captured[f"{i}.out"], "(B, T, C)",
            f"{_block_formula(config, 'mlp', 'ln_2')}: the output of the block, the input of the next one", block, i)

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
    with evaluating(model):
        logits, _ = model(idx)  # (1, T, V)
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
