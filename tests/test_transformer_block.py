"""TransformerBlock and FeedForward: shapes, the GELU-tanh MLP formula, the residual path,
gradient flow and determinism in eval mode."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from src.model.transformer_block import FeedForward, TransformerBlock


def test_shapes_are_kept(tiny_config):
    block = TransformerBlock(tiny_config)
    x = torch.randn(3, 5, tiny_config.n_embd)
    assert block(x).shape == (3, 5, tiny_config.n_embd)
    assert block.mlp.c_fc.out_features == 4 * tiny_config.n_embd


def test_feed_forward_equals_formula_with_tanh_gelu(tiny_config):
    mlp = FeedForward(tiny_config)
    x = torch.randn(2, 5, tiny_config.n_embd)
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # Hendrycks & Gimpel
    expected = gelu @ mlp.c_proj.weight.T + mlp.c_proj.bias
    torch.testing.assert_close(mlp(x), expected, rtol=0, atol=1e-6)


def test_block_with_zeroed_output_projections_is_the_identity(tiny_config):
    block = TransformerBlock(tiny_config)
    with torch.no_grad():
        for projection in (block.attn.c_proj, block.mlp.c_proj):
            projection.weight.zero_()
            projection.bias.zero_()
    x = torch.randn(2, 6, tiny_config.n_embd)
    assert torch.equal(block(x), x)


def test_gradients_reach_every_parameter(tiny_config):
    block = TransformerBlock(tiny_config)
    x = torch.randn(2, 6, tiny_config.n_embd, requires_grad=True)
    (block(x) * torch.randn(2, 6, tiny_config.n_embd)).sum().backward()
    names = {name for name, _ in block.named_parameters()}
    assert {"ln_1.weight", "attn.c_attn.weight", "attn.c_proj.bias", "ln_2.bias", "mlp.c_fc.weight"} <= names
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(tiny_config):
    block = TransformerBlock(replace(tiny_config, dropout=0.5))
    x = torch.randn(2, 6, tiny_config.n_embd)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))  # the eval check above is not vacuous


def test_bias_false_removes_every_bias(tiny_config):
    block = TransformerBlock(replace(tiny_config, bias=False))
    assert not [name for name, _ in block.named_parameters() if name.endswith("bias")]
