"""--dtype auto on the CPU never picks the slower dtype: fp32 without native bf16, else the faster of the two
as timed at start-up on the run's own model and shape (issue 20). The probe must leave the run untouched."""

from __future__ import annotations

import torch

from src.config import ModelConfig
from src.model import MiniTransformer
from src.training.utils import FP32, choose_cpu_precision, probe_cpu_dtypes


def test_without_native_bf16_auto_is_fp32_and_times_nothing():
    def probe(*args):
        raise AssertionError("a CPU without native bf16 must not be probed: emulated bf16 is always slower")

    precision, reason = choose_cpu_precision(torch.nn.Linear(2, 2), 2, 4, 8, flags=[], probe=probe)
    assert precision is FP32
    assert reason == "--dtype auto: this CPU has no native bf16 (AVX512-BF16 or AMX)"


def test_with_native_bf16_auto_keeps_the_faster_dtype_and_says_so():
    timings = {"bf16 faster": (0.030, 0.020), "fp32 faster": (0.020, 0.030)}  # (fp32_s, bf16_s)
    for case, times in timings.items():
        precision, reason = choose_cpu_precision(torch.nn.Linear(2, 2), 12, 64, 65, flags=["amx_bf16"],
                                                 probe=lambda *args, t=times: t)
        expected = "bf16" if case == "bf16 faster" else "fp32"
        assert precision.name == expected, case
        assert reason == (f"--dtype auto: this CPU has amx_bf16; a training step at this shape took "
                          f"{1000 * times[1]:.0f} ms in bf16 and {1000 * times[0]:.0f} ms in fp32, so {expected}")
    assert choose_cpu_precision(torch.nn.Linear(2, 2), 1, 1, 2, flags=["avx512_bf16"],
                                probe=lambda *args: (0.02, 0.02))[0] is FP32  # a tie: fp32, the exact one


def test_the_probe_times_both_dtypes_on_the_real_model_and_changes_nothing():
    """The real probe on a real (tiny) model, with bf16 autocast as this CPU runs it (natively or
    emulated): weights, gradients, train mode and the global RNG are as before, and the dtype chosen
    from those timings is the one that measured faster."""
    model = MiniTransformer(ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1))  # the probe's dropout masks draw random numbers
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fp32_s, bf16_s = probe_cpu_dtypes(model, 2, model.config.block_size, model.config.vocab_size, rounds=2)
    assert 0 < fp32_s < 60 and 0 < bf16_s < 60
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training
    precision, reason = choose_cpu_precision(model, 2, model.config.block_size, model.config.vocab_size,
                                             flags=["avx512_bf16"], probe=lambda *args: (fp32_s, bf16_s))
    assert precision.name == ("bf16" if bf16_s < fp32_s else "fp32") and reason.endswith(precision.name)
