"""src/model/eval_mode.py: `evaluating` switches dropout and autograd off, leaves the global random
generator where it was and puts the model back in its mode - also after an exception."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from src.model import MiniTransformer
from src.model.eval_mode import evaluating


def test_evaluating_is_eval_mode_without_gradients_and_restores_the_mode(tiny_config):
    model = MiniTransformer(replace(tiny_config, dropout=0.5))
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    with evaluating(model) as inside:
        assert inside is model and not model.training
        assert not any(m.training for m in model.modules())  # dropout layers too
        logits, _ = model(idx)
        assert not logits.requires_grad
        again, _ = model(idx)
    assert torch.equal(logits, again)  # dropout off: the same input gives the same logits
    assert model.training
    model.eval()
    with evaluating(model):
        pass
    assert not model.training  # a model in eval mode stays in eval mode


def test_evaluating_leaves_the_global_rng_untouched(tiny_config):
    model = MiniTransformer(tiny_config)
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    with evaluating(model):
        torch.rand(1000)  # e.g. sampling text draws random numbers
    assert torch.equal(torch.rand(4), expected)


def test_evaluating_restores_the_mode_after_an_exception(tiny_config):
    model = MiniTransformer(tiny_config)
    with pytest.raises(RuntimeError, match="boom"):
        with evaluating(model):
            raise RuntimeError("boom")
    assert model.training and torch.is_grad_enabled()
