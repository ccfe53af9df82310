"""Embeddings: the sinusoidal table against the paper's formula, token + position lookup, and the
readable error for sequences longer than block_size."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from src.model.embeddings import Embeddings, sinusoidal_table


@pytest.mark.parametrize("dim", [6, 7])  # even and odd widths
def test_sinusoidal_table_equals_the_paper_formula(dim):
    table = sinusoidal_table(50, dim)
    expected = torch.empty(50, dim)
    for pos in range(50):
        for d in range(dim):
            angle = pos / 10000 ** ((d - d % 2) / dim)  # the exponent is 2i/dim for both 2i and 2i+1
            expected[pos, d] = math.sin(angle) if d % 2 == 0 else math.cos(angle)
    assert table.shape == (50, dim) and table.dtype == torch.get_default_dtype()
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-6)


def test_sinusoidal_table_docstring_example():
    expected = torch.tensor([[0.0, 1.0], [math.sin(1.0), math.cos(1.0)]])
    torch.testing.assert_close(sinusoidal_table(2, 2), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_embedding_is_token_row_plus_position_row(tiny_config, pos_encoding):
    embeddings = Embeddings(replace(tiny_config, pos_encoding=pos_encoding))
    idx = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    out = embeddings(idx)
    if pos_encoding == "learned":
        positions = embeddings.position_embedding.weight[:5]
    else:
        positions = sinusoidal_table(tiny_config.block_size, tiny_config.n_embd)[:5] * 0.02 * math.sqrt(2)
    expected = embeddings.token_embedding.weight[idx] + positions
    assert out.shape == (2, 5, tiny_config.n_embd)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # The same token (1) at two places differs exactly by the difference of the position rows.
    torch.testing.assert_close(out[0, 1] - out[0, 3], positions[1] - positions[3], rtol=0, atol=1e-6)


def test_sinusoidal_rows_are_as_large_as_the_token_vectors_of_a_new_model(tiny_config):
    """Neither drowns the other at the start: the fixed table's RMS equals the token vectors' std (0.02)."""
    from src.model import MiniTransformer

    model = MiniTransformer(replace(tiny_config, pos_encoding="sinusoidal", n_embd=64, block_size=64))
    table_rms = model.embeddings.position_embedding.table.pow(2).mean().sqrt().item()
    token_std = model.embeddings.token_embedding.weight.std().item()
    assert table_rms == pytest.approx(0.02, rel=0.01) and token_std == pytest.approx(table_rms, rel=0.15)


def test_sinusoidal_positions_have_no_parameters_and_stay_out_of_the_state_dict(tiny_config):
    learned = Embeddings(tiny_config)
    sinusoidal = Embeddings(replace(tiny_config, pos_encoding="sinusoidal"))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(learned) - count(sinusoidal) == tiny_config.block_size * tiny_config.n_embd
    assert set(sinusoidal.state_dict()) == {"token_embedding.weight"}


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_start_pos_continues_the_positions(tiny_config, pos_encoding):
    embeddings = Embeddings(replace(tiny_config, pos_encoding=pos_encoding))
    idx = torch.randint(0, tiny_config.vocab_size, (2, 6))
    torch.testing.assert_close(embeddings(idx[:, 4:], start_pos=4), embeddings(idx)[:, 4:], rtol=0, atol=0)


def test_too_long_input_raises_with_both_numbers(tiny_config):
    embeddings = Embeddings(tiny_config)
    with pytest.raises(ValueError, match=r"sequence length 9 exceeds block_size 8"):
        embeddings(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"6 cached \+ 3 new tokens = 9 exceeds block_size 8"):
        embeddings(torch.zeros(1, 3, dtype=torch.long), start_pos=6)
    assert embeddings(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, tiny_config.n_embd)


def test_sinusoidal_table_follows_the_model_dtype(tiny_config):
    embeddings = Embeddings(replace(tiny_config, pos_encoding="sinusoidal")).to(torch.bfloat16)
    assert embeddings.position_embedding.table.dtype == torch.bfloat16
    assert embeddings(torch.zeros(1, 3, dtype=torch.long)).dtype == torch.bfloat16
