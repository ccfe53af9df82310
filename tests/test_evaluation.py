"""The validation estimate during training: a fixed sample spread over every book, close to the whole split."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from src.config import DataConfig
from src.dataset import TokenDataset, load_tokens, prepare_dataset
from src.training.evaluation import bits_per_character, estimate_loss, model_nll, validation_sample
from tests.conftest import make_story


def test_bits_per_character_docstring_example():
    assert bits_per_character(math.log(2), 0.5) == pytest.approx(0.5)
    assert bits_per_character(1.0, 1.0) == pytest.approx(1 / math.log(2))


@pytest.mark.parametrize(("num_windows", "wanted"), [(1000, 64), (97, 10), (64, 64), (10, 64)])
def test_validation_sample_is_fixed_sorted_and_spread_evenly(num_windows, wanted):
    sample = validation_sample(num_windows, wanted, seed=3)
    assert np.array_equal(sample, validation_sample(num_windows, wanted, seed=3))  # the same every evaluation
    assert len(sample) == min(num_windows, wanted) and len(set(sample.tolist())) == len(sample)
    assert np.all(np.diff(sample) > 0) and 0 <= sample[0] and sample[-1] < num_windows
    if num_windows > wanted:
        # every stretch of the split - every book - gets its share: each quarter holds a quarter of the sample
        quarters = np.bincount(sample * 4 // num_windows, minlength=4)
        assert np.all(np.abs(quarters - wanted / 4) <= 1), quarters
        assert not np.array_equal(sample, validation_sample(num_windows, wanted, seed=4))  # the seed shifts the grid
    else:
        assert np.array_equal(sample, np.arange(num_windows))  # small split: all of it


class BigramModel(nn.Module):
    """A fixed bigram model (log-probabilities from counts) with the interface of MiniTransformer."""

    def __init__(self, train_ids: np.ndarray, vocab_size: int) -> None:
        super().__init__()
        counts = np.ones((vocab_size, vocab_size))
        np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
        self.table = nn.Parameter(torch.log(torch.tensor(counts / counts.sum(1, keepdims=True), dtype=torch.float32)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.table[x]  # (B, T, V)
        loss = None if y is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return logits, loss


def test_estimate_covers_every_book_and_matches_the_whole_split(tmp_path):
    """Three ordinary stories and, last in the validation file, a book of random characters that no
    model can predict. The sample spread over the split lands within a few percent of the whole split's
    loss; the first windows (what the estimate used to read) miss the hard book entirely."""
    rng = random.Random(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"story{i}.txt")
        files[-1].write_text(make_story(n_paragraphs=40, seed=i), encoding="utf-8")
    letters = "abcdefghijklmnopqrstuvwxyz ,.;:!?ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    files.append(tmp_path / "zz_noise.txt")  # sorted last: its validation text ends val.bin
    files[-1].write_text("".join(rng.choice(letters) for _ in range(60_000)), encoding="utf-8")
    prepared = prepare_dataset(DataConfig(input=tuple(map(str, files)), data_dir=tmp_path / "data"),
                               show_progress=False)
    block_size, batch_size, eval_batches = 32, 8, 4
    val_set = TokenDataset(prepared.path, "val", block_size)
    model = BigramModel(np.asarray(load_tokens(prepared.path, "train"), dtype=np.int64),
                        prepared.meta["tokenizer"]["vocab_size"])

    nll, count = model_nll(model, np.asarray(load_tokens(prepared.path, "val")), block_size, 64, torch.device("cpu"))
    whole_split = nll / count
    sample = validation_sample(len(val_set), eval_batches * batch_size, seed=1337)
    spread = estimate_loss(model, val_set, sample, batch_size)
    first_windows = estimate_loss(model, val_set, np.arange(eval_batches * batch_size), batch_size)

    assert len(val_set) > 4 * len(sample)  # the sample is a real sample, not the whole split
    assert abs(spread - whole_split) / whole_split < 0.05, (spread, whole_split)
    assert abs(first_windows - whole_split) / whole_split > 0.15, (first_windows, whole_split)


def test_estimate_stops_when_asked_and_restores_train_mode(tmp_path):
    story = tmp_path / "story.txt"
    story.write_text(make_story(n_paragraphs=20), encoding="utf-8")
    prepared = prepare_dataset(DataConfig(input=(str(story),), data_dir=tmp_path / "data"), show_progress=False)
    val_set = TokenDataset(prepared.path, "val", 8)
    model = BigramModel(np.asarray(load_tokens(prepared.path, "train"), dtype=np.int64),
                        prepared.meta["tokenizer"]["vocab_size"]).train()
    assert estimate_loss(model, val_set, np.arange(len(val_set)), 2, should_stop=lambda: True) is None
    assert model.training  # eval mode only for the measurement
    with pytest.raises(ValueError, match="no complete window"):
        estimate_loss(model, val_set, np.arange(0), 2)


@pytest.mark.parametrize("length", [2, 17, 48, 50])
def test_whole_split_nll_scores_every_token_once_with_its_window_context(length):
    """`model_nll` (what --evaluate sums) against an independent count: token i is predicted from the
    tokens since the start of its window (windows of block_size, back to back), one forward pass each."""
    from src.config import ModelConfig
    from src.model import MiniTransformer

    torch.manual_seed(0)
    block_size = 16
    model = MiniTransformer(ModelConfig(vocab_size=11, block_size=block_size, n_layer=1, n_head=2, n_embd=8,
                                        dropout=0.0)).eval()
    ids = np.random.default_rng(length).integers(0, 11, size=length)
    total, count = model_nll(model, ids, block_size, batch_size=2, device=torch.device("cpu"))
    reference = 0.0
    with torch.no_grad():
        for i in range(1, length):
            start = (i - 1) // block_size * block_size  # the window that holds target i
            context = torch.from_numpy(ids[start:i]).unsqueeze(0)  # (1, i - start)
            logits, _ = model(context)
            reference -= torch.log_softmax(logits[0, -1], dim=-1)[int(ids[i])].item()
    assert count == length - 1
    assert total == pytest.approx(reference, rel=1e-5)
