"""Several processes, one model: DistributedDataParallel (DDP) under `torchrun`.

`torchrun --nproc_per_node=N -m src.main --train ...` starts N copies of this program (on every machine
of the job) and tells each one who it is through environment variables: RANK (0 ... WORLD_SIZE-1 over
all machines), LOCAL_RANK (its number on this machine: which GPU it takes) and WORLD_SIZE. Each copy

1. joins the process group (`setup`): NCCL moves tensors between GPUs, gloo between CPUs;
2. holds a full copy of the model and trains on its own share of every batch (the split is
   `src/dataset.py:make_dataloader`);
3. runs its forward pass through a `DistributedDataParallel` wrapper (`data_parallel`), whose
   `backward` also averages the gradients of all copies (an all-reduce). Every copy then makes the same
   update, so the weights stay identical - as if one process had trained on the whole batch.

The rest is bookkeeping, kept here so that the training code reads `if distributed.is_main(): ...`:
who writes files (`is_main`: rank 0), values all processes agree on (`max_over_ranks`,
`mean_over_ranks`), every process's random-generator state for a checkpoint (`all_gather_states`),
and work that must happen once before the others start (`main_first`: building the data set).
Without torchrun every helper is a no-op for "rank 0 of 1", so a single process behaves as before.

Sources: PyTorch's DDP notes (https://pytorch.org/docs/stable/notes/ddp.html) and `torchrun` docs;
nanoGPT's `train.py` (DDP with gradient accumulation). Left out: FSDP/ZeRO (sharding weights and
optimiser state, needed only when a model no longer fits on one GPU) and elastic restarts.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

# How long a process waits for the others in one collective. Long, because rank 0 may build a large
# data set while the others wait (`main_first`); a crashed process ends the job sooner: torchrun then
# stops the others.
COLLECTIVE_TIMEOUT = dt.timedelta(hours=1)

T = TypeVar("T")


class DistributedError(ValueError):
    """Another process failed; this one stops with a readable message instead of waiting forever."""


# --- joining and leaving ----------------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """True when torchrun (or a launcher that sets the same variables) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the other processes if torchrun started several; return this process's device.

    CUDA: each process takes the GPU of its LOCAL_RANK (`torch.cuda.set_device`) and the group talks
    NCCL (GPU to GPU). CPU: gloo. Without torchrun nothing happens and `device` comes back unchanged.
    """
    if not launched_by_torchrun():
        return device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: several processes (torchrun) train on CUDA GPUs or on the CPU, not on "
                         f"{device.type}; use --device cpu")
    backend, device_id = "gloo", None
    if device.type == "cuda":
        local, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= visible:
            raise ValueError(f"device: process {local} of this machine needs GPU {local}, but only {visible} GPU(s) "
                             f"are visible; start at most {visible} process(es) per machine (--nproc_per_node)")
        device = device_id = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT, device_id=device_id)
    return device


def shutdown(wait: bool = True) -> None:
    """Leave the process group. `wait`: first wait until every process got here (rank 0 may still be
    writing the checkpoint: torchrun stops the others as soon as one of them exits). After an error,
    `wait=False`: the others learn of it from their next collective, or from torchrun."""
    if not dist.is_initialized():
        return
    try:
        if wait:
            dist.barrier()
    finally:
        dist.destroy_process_group()


# --- who am I ---------------------------------------------------------------------------------


def rank() -> int:
    """This process's number over all machines: 0 ... WORLD_SIZE - 1 (0 without torchrun). Known
    before `setup` too (torchrun's RANK), so that only rank 0 takes the run directory's lock."""
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def local_rank() -> int:
    """This process's number on its machine (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if launched_by_torchrun() else 0


def world_size() -> int:
    """How many processes train together: 1 until `setup` joined them (and without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that prints, draws progress bars and writes the run's files."""
    return rank() == 0


# --- the model --------------------------------------------------------------------------------


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel: its `backward` averages the gradients of all
    processes, and building it copies rank 0's weights to every process. The wrapper shares the
    weights of `module`; checkpoints save `module` itself (no `module.` prefix in the keys)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# --- agreeing on values -----------------------------------------------------------------------


def _collective_device() -> torch.device:
    """Where small bookkeeping tensors live for a collective: NCCL moves GPU tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_ranks(*values: int) -> list[int]:
    """The largest of each value over all processes, the same on every process.

    Example: "did any process get a signal, and which?" - rank 0 passes (0, 0), rank 1 passes (1, 15):
    both get [1, 15]. One process: the values themselves.
    """
    if world_size() == 1:
        return [int(v) for v in values]
    tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def mean_over_ranks(value: float, weight: float = 1.0) -> float:
    """The mean of `value` over all processes, each counting with `weight` (e.g. its number of tokens).

    Example: rank 0 measured a loss of 2.0 on 300 tokens, rank 1 a loss of 4.0 on 100 tokens:
    (2.0 * 300 + 4.0 * 100) / 400 = 2.5 on both. One process: `value` itself.
    """
    if world_size() == 1:
        return value
    tensor = torch.tensor([value * weight, weight], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)  # sums
    total, weights = tensor.tolist()
    return total / weights


def all_gather_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's `state` (tensors and plain values, e.g. `capture_rng_state()`), in rank order.

    Each state travels as the bytes of `torch.save` and is read back with `weights_only=True`, so no
    pickle crosses the network. One process: `[state]`.
    """
    if world_size() == 1:
        return [state]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    mine = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    device = _collective_device()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64, device=device))
    lengths = [int(size.item()) for size in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)  # all_gather needs equal sizes
    padded[: mine.numel()] = mine.to(device)
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return [torch.load(io.BytesIO(data[:n].cpu().numpy().tobytes()), weights_only=True)
            for data, n in zip(gathered, lengths, strict=True)]


def check_same_everywhere(value: str, what: str) -> None:
    """Raise DistributedError on every process unless all of them hold the same `value` (e.g. the
    fingerprint of the data set: on several machines each one reads its own copy)."""
    if world_size() == 1:
        return
    values = [state["value"] for state in all_gather_states({"value": value})]
    others = [r for r, v in enumerate(values) if v != values[0]]
    if others:
        raise DistributedError(f"{what} of rank(s) {others} differs from rank 0's; every machine needs the same "
                               f"{what} (the same books or --input files and settings)")


def main_first(work: Callable[[], T], what: str) -> T:
    """Run `work()` on rank 0 first, then on the first process of every other machine, then on all
    remaining processes, each turn ending in a barrier; return its result.

    Builds the data set once: rank 0 builds it, the others find it and reuse it (a machine that does
    not share rank 0's disk builds its own copy, once). If `work` fails anywhere, every process stops
    with an error instead of waiting; `what` names the work in that message (e.g. "prepare the data set").
    """
    if world_size() == 1:
        return work()
    my_turn = 0 if rank() == 0 else 1 if local_rank() == 0 else 2
    result: Any = None
    for turn in range(3):
        error: Exception | None = None
        if turn == my_turn:
            try:
                result = work()
            except Exception as err:  # raised below, after telling the others
                error = err
        (failed,) = max_over_ranks(error is not None)  # also the barrier that ends this turn
        if error is not None:
            raise error
        if failed:
            raise DistributedError(f"another process could not {what} (its error is shown above or in its log)")
    return result
