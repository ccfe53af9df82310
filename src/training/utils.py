"""Training utilities: seeding and random-generator state, device and precision choice.

A resumed run can only continue *exactly* if every random number generator (python, numpy, torch,
CUDA) is where it was: the dropout masks and the data order depend on them. `capture_rng_state` and
`restore_rng_state` save and restore all of them; `preserved_rng` lets side work (creating the data
iterator) run without moving them - evaluation and sampling use `src/model/eval_mode.py:evaluating`.
Checkpoints themselves live in `src/training/checkpoints.py`.
"""

from __future__ import annotations

import contextlib
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# --- seeding and random number generator state ------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and all CUDA devices) with one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng_state() -> dict[str, Any]:
    """The state of every global random generator, as tensors and plain values.

    Example: `restore_rng_state(capture_rng_state())` leaves the next `torch.rand(1)` unchanged.
    """
    version, internal, gauss_next = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`: put every generator back where it was."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        # A checkpoint from a machine with more GPUs restores only the devices that exist here.
        count = min(len(cuda_states), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(cuda_states[:count])


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Run a block without changing the global torch RNG (e.g. evaluation and sampling).

    Creating a DataLoader iterator or sampling text may draw random numbers; this keeps the training
    run's dropout masks identical whether or not such side work happens (needed for exact resume).
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# --- devices and numeric precision ------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was requested but no CUDA GPU is visible to PyTorch; use --device cpu")
    if name == "mps" and not mps_available:
        raise ValueError("device: mps was requested but is not available; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be one of auto, cpu, cuda, mps; got {name!r}")
    return torch.device(name)


# Bytes per parameter that training needs at the least, whatever the batch: fp32 weights, their
# gradients, and AdamW's two moment estimates (4 bytes each). Activations come on top.
TRAINING_BYTES_PER_PARAMETER = 16


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on `device`: the GPU's free memory, or MemAvailable of Linux's
    /proc/meminfo for the CPU; None where it cannot be read (then nothing is checked)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii", errors="replace") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_model_fits(n_parameters: int, device: torch.device) -> None:
    """ValueError when training a model of `n_parameters` cannot fit on `device` even at batch size 1
    (instead of a crash or the kernel's OOM killer)."""
    need, free = n_parameters * TRAINING_BYTES_PER_PARAMETER, free_memory(device)
    if free is not None and need > free:
        raise ValueError(
            f"model: {n_parameters / 1e6:,.1f} M parameters need at least {need / 2**30:,.1f} GiB to train (weights, "
            f"gradients and AdamW's state, 16 bytes each), but the {device.type} has {free / 2**30:,.1f} GiB free; "
            "choose a smaller --n-layer or --n-embd")


def enable_tf32(device: torch.device) -> None:
    """On CUDA, let float32 matrix products use TF32 tensor cores (Ampere and newer, e.g. an RTX 4080).

    TF32 keeps float32's range but rounds the inputs of each product to 10 mantissa bits: several
    times faster and harmless for training. Only plain fp32 work (`--dtype fp32`, evaluation,
    generation) is affected; on the CPU nothing changes, so CPU runs stay bit-reproducible.
    """
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: `autocast_dtype` None means plain float32."""

    name: str  # "fp32" | "bf16" | "fp16"
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool  # fp16 gradients underflow without loss scaling; bf16 does not need it

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


FP32 = Precision("fp32", None, False)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16 natively


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 instruction sets this CPU reports (AVX512-BF16, AMX-BF16); [] if none or unknown.

    Read from /proc/cpuinfo (Linux), not found by trying: a CPU without them still runs bf16 autocast,
    only emulated and slower than fp32. Example: cpu_bf16_flags("flags : fpu avx512_bf16") -> ["avx512_bf16"].
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read(1 << 20)  # the flags of the first cores are enough
        except OSError:  # macOS, Windows: no /proc; fp32 stays the safe choice
            return []
    words = set(cpuinfo.split())
    return [flag for flag in BF16_CPU_FLAGS if flag in words]


def auto_precision_name(device: torch.device) -> tuple[str, str]:
    """What --dtype auto means on `device`, and why: (name, reason), before a model exists.

    On a CPU with native bf16 this is only the first guess: a training run then times both dtypes at
    its own shape (`choose_cpu_precision`), because at small shapes bf16 can be the slower one.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU computes in bf16 natively"
        return "fp16", "this GPU has no bf16, so fp16 with loss scaling"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return "bf16", f"this CPU computes in bf16 natively, with {' and '.join(flags)}"
        return "fp32", "this CPU has no native bf16 (AVX512-BF16 or AMX)"
    return "fp32", f"no mixed precision on {device.type}"


# The start-up probe of --dtype auto on a CPU with native bf16: rounds of one fp32 and one bf16
# training step (forward + backward) after one warm-up step each, within about PROBE_BUDGET_S seconds.
PROBE_ROUNDS = 3
PROBE_BUDGET_S = 20.0


def time_training_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision) -> float:
    """Seconds of one forward + backward of `model` on the batch (x, y) under `precision`; the gradients
    are dropped again (set to None), so the weights and the next optimiser step are untouched."""
    started = time.perf_counter()
    with precision.autocast(x.device):
        _, loss = model(x, y)  # loss: mean cross-entropy over B*T
    loss.backward()
    seconds = time.perf_counter() - started
    for p in model.parameters():
        p.grad = None
    return seconds


def probe_cpu_dtypes(model: torch.nn.Module, batch_size: int, block_size: int, vocab_size: int,
                     rounds: int = PROBE_ROUNDS, budget_s: float = PROBE_BUDGET_S) -> tuple[float, float]:
    """Median seconds of one training step (forward + backward) in fp32 and in bf16 autocast:
    (fp32_s, bf16_s), at the run's own shape (B, T), on random tokens.

    The two are timed in alternation (fp32 bf16, bf16 fp32, ...), so that a slow phase of a shared
    machine hits both alike; fewer rounds when one step is slow (at least one). The global random
    generators, the weights and the model's train/eval mode are left as they were; the gradients end
    as None.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, block_size), generator=generator, device=device)  # (B, T)
    y = torch.randint(0, vocab_size, (batch_size, block_size), generator=generator, device=device)  # (B, T)
    bf16 = Precision("bf16", torch.bfloat16, False)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with preserved_rng(device):  # dropout masks draw random numbers: the run's must stay the same
        warm_up = time_training_step(model, x, y, FP32) + time_training_step(model, x, y, bf16)
        rounds = max(1, min(rounds, int(budget_s / max(warm_up, 1e-9))))
        for i in range(rounds):
            for precision in ((FP32, bf16) if i % 2 == 0 else (bf16, FP32)):
                times[precision.name].append(time_training_step(model, x, y, precision))
    return statistics.median(times["fp32"]), statistics.median(times["bf16"])


def choose_cpu_precision(model: torch.nn.Module, batch_size: int, block_size: int, vocab_size: int,
                         flags: list[str] | None = None,
                         probe: Callable[..., tuple[float, float]] = probe_cpu_dtypes) -> tuple[Precision, str]:
    """--dtype auto on the CPU for this model and batch: (precision, the reason for the start line).

    Without native bf16 (`cpu_bf16_flags`) bf16 is emulated and always slower: fp32, nothing timed.
    With it, bf16 is not always faster: its matrix units win at large matrices, but every operation
    also converts between fp32 and bf16, which dominates at small ones (issue 20, an Intel Xeon with
    AMX: nanoGPT's baby GPT, C = 128 and 12 x 64 tokens, trained 1.2x *slower* in bf16; an AMD EPYC with
    AVX512-BF16: a step of the default shape, C = 384 and 8 x 256 tokens, 1.66x faster). Where the two
    cross depends on the CPU, so both are timed at start-up at the run's own shape (`probe_cpu_dtypes`,
    about a second for small models, at most ~20 s) and the faster one is kept. Both learn alike
    (bf16 vs fp32 validation loss within 0.2 %, benchmarks/README.md).
    """
    flags = cpu_bf16_flags() if flags is None else flags
    if not flags:
        return FP32, "--dtype auto: this CPU has no native bf16 (AVX512-BF16 or AMX)"
    fp32_s, bf16_s = probe(model, batch_size, block_size, vocab_size)
    chosen = Precision("bf16", torch.bfloat16, False) if bf16_s < fp32_s else FP32
    return chosen, (f"--dtype auto: this CPU has {' and '.join(flags)}; a training step at this shape took "
                    f"{1000 * bf16_s:,.0f} ms in bf16 and {1000 * fp32_s:,.0f} ms in fp32, so {chosen.name}")


def dtype_reason(dtype: str, device: torch.device) -> str:
    """Why a run computes in its dtype, for its start line: "--dtype" when the flag chose it, else what
    --dtype auto found, e.g. "--dtype auto: this CPU computes in bf16 natively, with avx512_bf16"."""
    return f"--dtype auto: {auto_precision_name(device)[1]}" if dtype == "auto" else "--dtype"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """'auto': bf16 autocast on GPUs and CPUs that compute in bf16 natively, fp16 + GradScaler on
    older GPUs, fp32 elsewhere (see `auto_precision_name`)."""
    if name == "auto":
        name, _ = auto_precision_name(device)
    if name == "fp32":
        return FP32
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("dtype: this GPU does not support bf16; use --dtype fp16 or fp32")
        if device.type == "mps":
            raise ValueError("dtype: bf16 autocast is not supported on mps here; use --dtype fp32")
        return Precision("bf16", torch.bfloat16, False)
    if name == "fp16":
        if device.type != "cuda":
            raise ValueError(f"dtype: fp16 needs a CUDA GPU (device is {device.type}); use --dtype bf16 or fp32")
        return Precision("fp16", torch.float16, True)
    raise ValueError(f"dtype must be one of auto, fp32, bf16, fp16; got {name!r}")


def library_versions() -> dict[str, str | None]:
    """Versions worth recording next to a run (results differ between them)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
