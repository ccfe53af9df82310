"""The learner's loop on its own: clipping, gradient accumulation, the FLOPs estimate, and the NaN guard.

Each test drives `train_loop.train` directly with an iterator of batches, so what it checks is the loop
itself, not the product around it.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from src.config import ModelConfig, TrainConfig
from src.model import MiniTransformer
from src.training.train_loop import LRSchedule, StepReport, TrainHooks, train

V, T = 23, 12


def tiny_model(seed: int = 0) -> MiniTransformer:
    torch.manual_seed(seed)
    return MiniTransformer(ModelConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


def random_batches(n: int, batch_size: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, V, (batch_size, T + 1), generator=generator)  # (B, T+1)
        batches.append((ids[:, :-1], ids[:, 1:]))
    return batches


class Record(TrainHooks):
    def __init__(self) -> None:
        self.steps: list[StepReport] = []
        self.evals: list[tuple[int, float]] = []

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_eval(self, step: int, val_loss: float) -> None:
        self.evals.append((step, val_loss))


def constant_lr(lr: float, steps: int) -> LRSchedule:
    return LRSchedule(lr=lr, min_lr=lr, warmup_steps=0, total_steps=steps, decay_start=0, decay_from_lr=lr)


def gradient_norm(model: MiniTransformer, x: torch.Tensor, y: torch.Tensor) -> float:
    """The total gradient norm of one batch, computed on a copy: the reference for the loop's number."""
    twin = copy.deepcopy(model)
    _, loss = twin(x, y)
    loss.backward()
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in twin.parameters() if p.grad is not None])).item()


def test_clipping_bounds_the_update_and_counts_the_clipped_steps():
    """With plain SGD at lr 1 the update *is* the clipped gradient: its norm must be min(norm, clip),
    and a step counts as clipped exactly when its gradient norm was above the limit."""
    model = tiny_model()
    batches = random_batches(12, batch_size=4)
    clip = 0.9 * gradient_norm(model, *batches[0])  # the first step is clipped; later ones vary
    reference_norms: list[float] = []

    def feed():
        for x, y in batches:
            reference_norms.append(gradient_norm(model, x, y))  # at the weights the loop is about to use
            yield x, y

    class Updates(Record):
        """Also records the size of each step's weight change."""

        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[float] = []
            self.before = torch.cat([p.detach().flatten() for p in model.parameters()])

        def on_step(self, report: StepReport) -> None:
            super().on_step(report)
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            self.sizes.append((now - self.before).norm().item())
            self.before = now

    hooks = Updates()
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    config = TrainConfig(grad_clip=clip, eval_interval=1000)
    assert train(model, sgd, feed(), lambda: 0.0, config, constant_lr(1.0, 12), hooks=hooks, start_step=1) == "completed"
    assert len(hooks.steps) == 11
    for report, reference, size in zip(hooks.steps, reference_norms, hooks.sizes, strict=True):
        assert report.grad_norm == pytest.approx(reference, rel=1e-4)  # the norm before clipping is reported
        assert size == pytest.approx(min(reference, clip), rel=1e-4)  # ... and the update never exceeds the limit
        assert report.clipped == (reference > clip)
    assert any(r.clipped for r in hooks.steps) and not all(r.clipped for r in hooks.steps)


@pytest.mark.parametrize("grad_accum", [2, 4])
def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(grad_accum):
    micro = random_batches(3 * grad_accum, batch_size=2)
    big = [(torch.cat([x for x, _ in micro[i:i + grad_accum]]), torch.cat([y for _, y in micro[i:i + grad_accum]]))
           for i in range(0, len(micro), grad_accum)]
    results = []
    for batches, accum in ((micro, grad_accum), (big, 1)):
        model = tiny_model()
        # Plain SGD: the update is proportional to the gradient. (Adam divides by sqrt(v), which blows a
        # gradient that is zero in theory - e.g. the key bias - and float noise up to a full step.)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        config = TrainConfig(grad_accum=accum, grad_clip=1.0, eval_interval=1000)
        hooks = Record()
        train(model, optimizer, iter(batches), lambda: 0.0, config, constant_lr(0.5, 4), hooks=hooks, start_step=1)
        results.append((model.state_dict(), [r.loss for r in hooks.steps], [r.grad_norm for r in hooks.steps]))
    (accumulated, acc_losses, acc_norms), (single, big_losses, big_norms) = results
    assert acc_losses == pytest.approx(big_losses, rel=1e-5) and acc_norms == pytest.approx(big_norms, rel=1e-4)
    for name, tensor in single.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(single["lm_head.weight"], tiny_model().state_dict()["lm_head.weight"])  # it trained


def test_evaluates_before_training_every_interval_and_at_the_end():
    model = tiny_model()
    hooks = Record()
    config = TrainConfig(eval_interval=3)
    calls = iter(range(100))
    train(model, torch.optim.AdamW(model.parameters()), iter(random_batches(7, 2)), lambda: float(next(calls)),
          config, constant_lr(1e-3, 7), hooks=hooks)
    assert [step for step, _ in hooks.evals] == [0, 3, 6, 7]


def test_nan_loss_stops_without_touching_the_weights():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    x, y = random_batches(1, 2)[0]
    with torch.no_grad():
        model.lm_head.weight[0, 0] = math.nan  # poisons every logit
    before["lm_head.weight"][0, 0] = math.nan
    reason = train(model, torch.optim.AdamW(model.parameters()), iter([(x, y)] * 3), lambda: 0.0,
                   TrainConfig(eval_interval=1000), constant_lr(1e-3, 3), start_step=1)
    assert reason == "non_finite_loss"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.nan_to_num(), before[name].nan_to_num()), name


def test_flops_estimate_matches_a_flop_counter():
    """`flops_per_token` (6 N + 12 L C T) against PyTorch's FlopCounterMode, which counts every matrix
    multiply of a real forward and backward pass. The estimate also counts biases and LayerNorm gains
    as if they sat in matmuls, so it may be above the count by about 1/C, never below it."""
    config = ModelConfig(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=64, dropout=0.0, attention="manual")
    model = MiniTransformer(config)
    x = torch.randint(0, config.vocab_size, (2, config.block_size))  # full context, as the estimate assumes
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    counted_per_token = counter.get_total_flops() / x.numel()
    estimate = model.flops_per_token()
    assert counted_per_token <= estimate <= counted_per_token * (1 + 2 / config.n_embd)
