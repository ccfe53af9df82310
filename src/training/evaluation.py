"""Evaluation: the quick estimate during training, and the whole split per book next to baselines.

During training (`estimate_loss`) the validation loss is measured on a fixed sample of validation
windows spread evenly over the whole split (`validation_sample`). `val.bin` holds the books one after
another, so an even spread gives every book a share in proportion to its validation text; reading
the first windows instead would measure the first book or two only. The sample is the same at every
evaluation and after a resume, so the curve's ups and downs come from the model, not from the sample.
With `--evaluate` every window of the split counts (`model_nll`), per book.

A loss of 1.5 nats per token means little on its own. Three count-based baselines give it a scale:

* uniform: every token equally likely, loss = ln V (what an untrained model scores),
* unigram: p(next) = how often the token occurs in the training split,
* bigram:  p(next | previous) from pair counts in the training split (Shannon 1948's "second-order
  approximation"); both with add-one (Laplace) smoothing so unseen tokens keep a small probability.

A Transformer that does not clearly beat the bigram model has learned little beyond letter pairs.
Each number is also given as perplexity (e^loss: "as unsure as choosing among N tokens") and as
bits per character (loss / ln 2 * tokens / characters), which compares models with different
tokenizers.

Each book's slice of `val.bin` (offsets from meta.json) is cut into non-overlapping windows of
`block_size` tokens; every token after a slice's first one is predicted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from src.model.eval_mode import evaluating
from src.training.utils import FP32, Precision


@dataclass
class SplitScore:
    """Summed negative log-likelihood (nats) over `count` predicted tokens of `characters` chars."""

    name: str
    nll: float
    count: int
    characters: int

    @property
    def loss(self) -> float:
        return self.nll / self.count if self.count else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def bpc(self, tokens: int) -> float:
        """Bits per character, scaling by this slice's tokens per character."""
        return bits_per_character(self.loss, tokens / max(self.characters, 1))


def validation_sample(num_windows: int, max_windows: int, seed: int) -> np.ndarray:
    """Indices of `max_windows` windows spread evenly over `num_windows` (all of them if that is fewer).

    One random offset (from `seed`) shifts an even grid, so every stretch of the split - every book -
    is represented in proportion to its length: `validation_sample(10, 4, 0)` -> e.g. [1, 4, 6, 9].
    """
    if num_windows <= max_windows:
        return np.arange(num_windows)
    stride = num_windows / max_windows
    offset = np.random.default_rng(seed).random()  # in [0, 1): where inside its stride each pick falls
    return np.minimum(((np.arange(max_windows) + offset) * stride).astype(np.int64), num_windows - 1)


def estimate_loss(
    model: nn.Module,
    val_set: torch.utils.data.Dataset,
    indices: np.ndarray,
    batch_size: int,
    precision: Precision = FP32,
    should_stop: Callable[[], bool] | None = None,
) -> float | None:
    """Mean cross-entropy per token over the validation windows `indices` (see `validation_sample`).

    Returns None when `should_stop()` turns true midway (Ctrl-C need not wait for a long evaluation).
    """
    device = next(model.parameters()).device
    batches = sample_batches(val_set, indices, batch_size, device, should_stop)
    return None if batches is None else loss_on_batches(model, batches, precision, should_stop)


def sample_batches(val_set: torch.utils.data.Dataset, indices: np.ndarray, batch_size: int, device: torch.device,
                   should_stop: Callable[[], bool] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The validation windows `indices` as (x, y) batches of `batch_size` on `device` (None when
    `should_stop()` turns true midway).

    A run reads them once and keeps them (a few MB at most): the sample is the same at every
    evaluation, so only the forward passes are left to repeat.
    """
    if len(indices) == 0:
        raise ValueError("the validation split has no complete window; use a smaller --block-size or more text")
    batches = []
    for first in range(0, len(indices), batch_size):
        if should_stop is not None and should_stop():
            return None
        windows = [val_set[int(i)] for i in indices[first : first + batch_size]]
        x = torch.stack([w[0] for w in windows]).to(device)  # (B, T)
        y = torch.stack([w[1] for w in windows]).to(device)  # (B, T)
        batches.append((x, y))
    return batches


def loss_on_batches(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    precision: Precision = FP32,
    should_stop: Callable[[], bool] | None = None,
) -> float | None:
    """Mean cross-entropy per token over `batches` (see `sample_batches`); None when `should_stop()`
    turns true midway."""
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    with evaluating(model):
        for x, y in batches:
            if should_stop is not None and should_stop():
                return None
            with precision.autocast(device):
                _, loss = model(x, y)  # loss: mean cross-entropy over B*T
            total_loss += loss.float().item() * y.numel()
            total_tokens += y.numel()
    return total_loss / total_tokens


def bits_per_character(loss: float, tokens_per_char: float) -> float:
    """Nats per token -> bits per character: `bits_per_character(math.log(2), 0.5)` -> 0.5.

    Dividing by ln 2 turns nats into bits; multiplying by tokens per character spreads them over the
    characters, which makes models with different tokenizers comparable.
    """
    return loss / math.log(2) * tokens_per_char


def model_nll(
    model: nn.Module,
    ids: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    precision: Precision = FP32,
) -> tuple[float, int]:
    """(summed NLL in nats, number of predicted tokens) of `ids` (1-D) under `model`."""
    ids = np.asarray(ids, dtype=np.int64)
    n_targets = len(ids) - 1
    if n_targets <= 0:
        return 0.0, 0
    starts = list(range(0, n_targets, block_size))
    total = 0.0
    with evaluating(model):
        for first in range(0, len(starts), batch_size):
            group = starts[first : first + batch_size]
            full = [s for s in group if s + block_size <= n_targets]
            rest = [s for s in group if s + block_size > n_targets]  # at most one: the tail window
            for batch_starts, length in ((full, block_size), *(([s], n_targets - s) for s in rest)):
                if not batch_starts:
                    continue
                window = np.stack([ids[s : s + length + 1] for s in batch_starts])  # (B, T+1)
                x = torch.from_numpy(window[:, :-1]).to(device)  # (B, T)
                y = torch.from_numpy(window[:, 1:]).to(device)  # (B, T)
                with precision.autocast(device):
                    logits, _ = model(x)
                total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
    return total, n_targets


class CountBaselines:
    """Uniform, unigram and bigram models fitted on the training split's token ids."""

    def __init__(self, train_ids: np.ndarray, vocab_size: int) -> None:
        ids = np.asarray(train_ids, dtype=np.int64)
        self.vocab_size = vocab_size
        unigram_counts = np.bincount(ids, minlength=vocab_size).astype(np.float64)
        self.unigram_logp = np.log((unigram_counts + 1.0) / (unigram_counts.sum() + vocab_size))
        # Pair counts stored sparsely (V^2 entries would not fit for a large BPE vocabulary).
        pair_codes = ids[:-1] * vocab_size + ids[1:]
        self.pair_codes, self.pair_counts = np.unique(pair_codes, return_counts=True)
        self.context_counts = np.bincount(ids[:-1], minlength=vocab_size).astype(np.float64)

    def nll(self, ids: np.ndarray) -> dict[str, float]:
        """Summed NLL (nats) of predicting ids[1:] from ids[:-1] under each baseline."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) < 2:
            return {"uniform": 0.0, "unigram": 0.0, "bigram": 0.0}
        prev, nxt = ids[:-1], ids[1:]
        codes = prev * self.vocab_size + nxt
        where = np.searchsorted(self.pair_codes, codes)
        where = np.minimum(where, len(self.pair_codes) - 1)
        found = self.pair_codes[where] == codes
        pair = np.where(found, self.pair_counts[where], 0).astype(np.float64)
        bigram_logp = np.log((pair + 1.0) / (self.context_counts[prev] + self.vocab_size))
        return {
            "uniform": len(nxt) * math.log(self.vocab_size),
            "unigram": float(-self.unigram_logp[nxt].sum()),
            "bigram": float(-bigram_logp.sum()),
        }


def source_slices(meta: dict, split: str, num_tokens: int) -> list[tuple[str, int, int, int]]:
    """(label, start, stop, characters) of each source's part of a split, from meta.json."""
    slices = []
    for source in meta.get("sources", []):
        part = source.get(split) or {}
        tokens = int(part.get("tokens", 0))
        if tokens < 2:
            continue
        start = int(part["offset"])
        label = f"{source.get('id', '?')} {source.get('title', '')}".strip()
        slices.append((label, start, start + tokens, int(part.get("characters", tokens))))
    if not slices:
        characters = int(meta.get("splits", {}).get(split, {}).get("characters", num_tokens))
        slices.append(("(whole split)", 0, num_tokens, characters))
    return slices


def encode_documents(documents: list, parts: list[tuple[list[str], list[str]]], tokenizer) -> tuple[
        np.ndarray, np.ndarray, list[tuple[str, int, int, int]]]:
    """Encode other text with a trained model's own tokenizer (a fresh data set would train a new one).

    `documents` and `parts` come from `src.dataset.load_documents` and `split_documents`. Returns the
    training ids, the validation ids (sources joined by <|endoftext|>, as in a data set) and the
    (label, start, stop, characters) slice of each source's validation text, like `source_slices`.
    """
    ids: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    slices = []
    for doc, pair in zip(documents, parts):
        for split, pieces in zip(("train", "val"), pair):
            if not pieces:
                continue
            if ids[split]:
                ids[split].append(np.array([tokenizer.eot_id], dtype=np.int64))
            start = sum(len(a) for a in ids[split])
            ids[split] += [np.asarray(tokenizer.encode_to_array(piece), dtype=np.int64) for piece in pieces]
            stop = sum(len(a) for a in ids[split])
            if split == "val" and stop - start >= 2:
                slices.append((f"{doc.id} {doc.title}".strip(), start, stop, sum(len(p) for p in pieces)))
    joined = {split: np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64) for split, arrays in ids.items()}
    return joined["train"], joined["val"], slices
