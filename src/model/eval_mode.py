"""Evaluation mode as a `with` block: run a model for looking, not for learning.

Measuring a loss, drawing attention maps or sampling text needs three things at once: dropout off
(`model.eval()`), no autograd graph (`torch.no_grad()`), and the global random generator left where
it was - a training run that is evaluated now and then must draw the same dropout masks as one that
is not (exact resume depends on it). `evaluating` does all three and puts the model back in the mode
it was in, even after an exception. It lives beside the model so that the training shell and the code
that looks inside a model (src/analysis.py, src/visualization.py) share it without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block with `model.eval()` (dropout off), no gradients and the global RNG untouched; the
    model's previous train/eval mode is restored afterwards, even after an exception.

    Example: `with evaluating(model): logits, _ = model(idx)` - then `model.training` is as before.
    """
    was_training = model.training
    device = next(model.parameters()).device
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
            yield model
    finally:
        model.train(was_training)
