"""Evaluation on a whole split, per source book, next to simple baselines.

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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from src.training.utils import Precision


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
        return self.loss / math.log(2) * tokens / max(self.characters, 1)


@torch.no_grad()
def model_nll(
    model: nn.Module,
    ids: np.ndarray,
    block_size: int,
    batch_size: int,
    device: torch.device,
    precision: Precision | None = None,
) -> tuple[float, int]:
    """(summed NLL in nats, number of predicted tokens) of `ids` (1-D) under `model`."""
    precision = precision or Precision("fp32", None, False)
    ids = np.asarray(ids, dtype=np.int64)
    n_targets = len(ids) - 1
    if n_targets <= 0:
        return 0.0, 0
    starts = list(range(0, n_targets, block_size))
    total = 0.0
    model.eval()
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
