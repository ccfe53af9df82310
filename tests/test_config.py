"""ModelConfig validation: every invalid value fails at construction with a ValueError that names
the field (and the value), instead of deep inside a matrix multiplication."""

from __future__ import annotations

import pytest

from src.config import ModelConfig

VALID = {"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.1}


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("vocab_size", -5),
        ("vocab_size", 11.5),
        ("vocab_size", True),
        ("block_size", 0),
        ("block_size", "256"),
        ("n_layer", 0),
        ("n_layer", -1),
        ("n_head", 0),
        ("n_head", 3),  # 16 is not divisible by 3
        ("n_embd", 0),
        ("n_embd", 15),  # not divisible by n_head = 2
        ("dropout", -0.1),
        ("dropout", 1.0),
        ("dropout", float("nan")),
        ("dropout", "0.1"),
        ("bias", "yes"),
        ("bias", 1),
        ("attention", "flash"),
        ("attention", "SDPA"),
        ("pos_encoding", "rope"),
        ("pos_encoding", None),
    ],
)
def test_invalid_value_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as error:
        ModelConfig(**{**VALID, field: value})
    assert repr(value) in str(error.value) or str(value) in str(error.value)


def test_divisibility_error_suggests_a_fix():
    with pytest.raises(ValueError, match=r"n_embd \(15\) must be divisible by n_head \(2\).*n_embd=16"):
        ModelConfig(**{**VALID, "n_embd": 15})


def test_valid_config_and_head_size():
    config = ModelConfig(**VALID)
    assert config.head_size == 8
    defaults = ModelConfig(vocab_size=65)
    assert (defaults.block_size, defaults.n_layer, defaults.n_head, defaults.n_embd) == (256, 6, 6, 384)
    assert (defaults.dropout, defaults.bias, defaults.attention, defaults.pos_encoding) == (0.2, True, "sdpa", "learned")
    assert ModelConfig(**{**VALID, "dropout": 0.0, "attention": "manual", "pos_encoding": "sinusoidal"}).dropout == 0.0


@pytest.mark.parametrize(
    "field, value, hint",
    [
        ("block_size", "256", "(a str)"),
        ("n_layer", None, "(a NoneType)"),
        ("vocab_size", True, "(a bool)"),
        ("dropout", "0.1", "(a str; give a number)"),
        ("dropout", None, "(a NoneType; give a number)"),
    ],
)
def test_wrong_types_are_named_in_the_message(field, value, hint):
    with pytest.raises(ValueError, match=field) as error:
        ModelConfig(**{**VALID, field: value})
    assert str(error.value).endswith(hint)


def test_a_number_out_of_range_gets_no_type_hint():
    with pytest.raises(ValueError) as error:
        ModelConfig(**{**VALID, "dropout": 1.5})
    assert str(error.value) == "dropout must lie in [0.0, 1.0), got 1.5"
