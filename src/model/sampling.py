"""Sampling: choosing the next token from the model's scores (logits).

The model outputs one score per vocabulary entry; softmax turns them into probabilities.
* Greedy (temperature 0): always take the most likely token - deterministic, often repetitive.
* Temperature: divide the logits by it before the softmax; < 1 sharpens, > 1 flattens the distribution.
* Top-k (Fan et al. 2018, "Hierarchical Neural Story Generation"): sample only among the k most
  likely tokens.
* Top-p / nucleus (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"): sort the
  tokens from most to least likely and keep the shortest prefix whose cumulative probability (the
  running sum) reaches p; sample only among those. The number of candidates adapts to how
  confident the model is.

Shapes: B batch, V = vocab_size (legend in attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf. (B, V) -> (B, V).

    Example: filter_top_k([[1., 3., 2.]], 2) -> [[-inf, 3., 2.]].
    """
    kth_largest = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


# First pass: skip filter_top_p (nucleus sampling) and read next_token_probs below.
def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    cumulative probability reaches p, set the rest to -inf. (B, V) -> (B, V).

    Example: probabilities [0.5, 0.3, 0.15, 0.05] with p = 0.75 keep the first two (0.5 < 0.75 <= 0.8).
    p = 1.0 keeps every token (the cumulative sum can round to 1.0 before the last tokens).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = F.pad(sorted_probs.cumsum(dim=-1)[:, :-1], (1, 0))  # probability of all more likely tokens
    drop_sorted = mass_before >= p  # the set had already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def scale_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, computed so that no temperature > 0 overflows: (B, V) -> (B, V).

    The largest logit is subtracted first (softmax does not change when every logit moves by the
    same amount), so the best token's scaled logit is exactly 0 and all others are <= 0. A tiny
    temperature then sends the others to -inf, i.e. the distribution becomes greedy (tokens tied
    for the best share the mass) - instead of inf - inf = nan, which `logits / 1e-45` gives in
    float32. The division is done in float64 (range up to 1e308), the result is float32 again.
    Example: scale_by_temperature([[1., 3., 2.]], 1e-45) -> [[-inf, 0., -inf]].
    """
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)  # (B, V), max 0
    return (shifted / temperature).float()


def next_token_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution the next token is drawn from: (B, V) logits -> (B, V) probabilities.

    In this order: divide by the temperature (< 1 sharpens, > 1 flattens), keep the top k, keep the
    nucleus of mass p, softmax. Temperature 0 (greedy) puts all the mass on the most likely token;
    a temperature close to 0 (even 1e-45) approaches that without overflowing (`scale_by_temperature`).
    """
    # In float32 even if the model ran in bf16/fp16: softmax and the cumulative sum of top-p would
    # otherwise round the probabilities to 2-3 significant digits.
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()  # dividing by 0 would give nan
    logits = scale_by_temperature(logits, temperature)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return torch.softmax(logits, dim=-1)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from the last position's logits: (B, V) -> (B, 1) ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy: no random draw at all
    probs = next_token_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# First pass: skip from here (argument checks for MiniTransformer.generate).
def check_generate_args(
    idx: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    """Raise ValueError with the offending value for arguments `MiniTransformer.generate` cannot use."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1 prompt tokens, got {tuple(idx.shape)}")
    if idx.dtype not in (torch.long, torch.int):
        raise ValueError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not _is_real(temperature) or not temperature >= 0:  # "not >=" also catches nan
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")


def _is_real(value: object) -> bool:
    """True for an int or float (a bool or a string is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
