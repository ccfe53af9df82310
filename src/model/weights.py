"""Which tensors a model of a given configuration has - known before a single weight is allocated.

A checkpoint, an export or a Hugging Face folder *declares* a configuration (n_layer, n_embd,
block_size, vocab_size, ...) and *holds* tensors. Building the model from the declaration first
would allocate whatever it declares: a block_size of 10**9 makes a sinusoidal table of 10**9 x n_embd
numbers before any weight is compared. PyTorch's "meta" device records shapes and dtypes but
allocates nothing, so a model built there tells which tensors the declaration implies; they are
compared with the file's tensors, whose shapes a file format tells without reading their data
(safetensors' header, `torch.load(..., mmap=True, weights_only=True)`).

Example: `weights_mismatch(config, {"lm_head.weight": ((65, 32), torch.float32), ...})` -> None when
the file holds exactly the tensors `MiniTransformer(config)` has, else one sentence saying which differs.
`safetensors_shapes` reads those shapes from an open safetensors file. Not on the reading path (README "Lesepfad"): the checkpoint and Hugging Face loaders use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from src.config import ModelConfig
from src.model.transformer import MiniTransformer

Declared = Mapping[str, tuple[tuple[int, ...], torch.dtype]]  # tensor name -> (shape, dtype)


def _meta_model(config: ModelConfig) -> MiniTransformer:
    """ValueError when even the shapes cannot be described (a tensor of more than 2**63 bytes)."""
    try:
        with torch.device("meta"):  # shapes and dtypes only: nothing is allocated, however large
            return MiniTransformer(config)
    except RuntimeError as err:  # "Storage size calculation overflowed"
        raise ValueError(f"its tensors would be too large to count (block_size {config.block_size:,}, n_embd "
                         f"{config.n_embd:,}, vocab_size {config.vocab_size:,}): {str(err).splitlines()[0][:80]}") from None


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every entry of `MiniTransformer(config).state_dict()` with its shape and dtype (ValueError: see `_meta_model`)."""
    return {name: (tuple(t.shape), t.dtype) for name, t in _meta_model(config).state_dict().items()}


def model_bytes(config: ModelConfig) -> int:
    """Bytes the model's parameters and buffers (also the ones no file stores, like a sinusoidal
    table or a causal mask) take once built; a tied weight is counted once."""
    model = _meta_model(config)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def weights_mismatch(config: ModelConfig, found: Declared) -> str | None:
    """None when `found` are exactly the tensors a model of `config` has, with floating-point weights
    where the model has them; else what differs, e.g. "tensor blocks.0.attn.c_attn.weight has shape
    (96, 32), but the configuration implies (48, 16)".

    The number of layers is compared with the number of tensors first: every layer has tensors, so a
    declared n_layer above it cannot fit, and the model on the meta device stays as small as the file.
    """
    if config.n_layer > len(found):
        return f"n_layer {config.n_layer:,} cannot fit a file of {len(found):,} tensors"
    expected = expected_tensors(config)
    missing = [name for name in expected if name not in found]
    if missing:
        return f"tensor {missing[0]} is missing ({len(missing)} of {len(expected)} missing)"
    unknown = [name for name in found if name not in expected]
    if unknown:
        return f"tensor {unknown[0]} is not part of this model ({len(unknown)} such tensors)"
    for name, (shape, dtype) in expected.items():
        found_shape, found_dtype = tuple(found[name][0]), found[name][1]
        if found_shape != shape:
            return f"tensor {name} has shape {found_shape}, but the configuration implies {shape}"
        if dtype.is_floating_point and not found_dtype.is_floating_point or (
                not dtype.is_floating_point and found_dtype != dtype):
            return f"tensor {name} is {str(found_dtype).removeprefix('torch.')}, not a floating-point dtype"
    return None


# safetensors' dtype names -> torch's (a name not listed reads as uint8: not floating point, refused)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def safetensors_shapes(handle: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of every tensor in an open safetensors file (`safe_open`), from its header
    alone: no tensor data is read."""
    found = {}
    for name in handle.keys():
        piece = handle.get_slice(name)
        found[name] = (tuple(piece.get_shape()), SAFETENSORS_DTYPES.get(piece.get_dtype(), torch.uint8))
    return found
