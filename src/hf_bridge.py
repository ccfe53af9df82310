"""Hugging Face bridge: our MiniTransformer <-> a GPT-2 model folder (`GPT2LMHeadModel.from_pretrained`).

Our model *is* GPT-2 (Radford et al. 2019): learned positions, pre-LN blocks, fused q/k/v projection,
tanh-GELU MLP of width 4 C, final LayerNorm, LM head tied to the token embedding. Only the names
and one layout differ, so a model converts both ways without changing a single number:

    ours                                  Hugging Face (files: "transformer." in front)
    embeddings.token_embedding.weight     wte.weight                  (V, C)
    embeddings.position_embedding.weight  wpe.weight                  (block_size, C)
    blocks.{i}.ln_1 / .ln_2 / ln_f        h.{i}.ln_1 / .ln_2 / ln_f    weight and bias (C,)
    blocks.{i}.attn.c_attn.weight (3C, C) h.{i}.attn.c_attn.weight (C, 3C)   transposed
    blocks.{i}.attn.c_proj.weight (C, C)  h.{i}.attn.c_proj.weight (C, C)    transposed
    blocks.{i}.mlp.c_fc.weight (4C, C)    h.{i}.mlp.c_fc.weight (C, 4C)      transposed
    blocks.{i}.mlp.c_proj.weight (C, 4C)  h.{i}.mlp.c_proj.weight (4C, C)    transposed
    lm_head.weight                        not stored: tied to wte (tie_word_embeddings)

Why transposed: OpenAI wrote GPT-2 in TensorFlow, where its "Conv1D" layer (a 1x1 convolution)
computes x @ W + b with W stored as (in, out). PyTorch's nn.Linear computes x @ W.T + b and stores
W as (out, in). Same matrix, other layout; Hugging Face kept OpenAI's (its `Conv1D` class) so the
original checkpoints load unchanged. Biases and LayerNorm weights are vectors and map as they are.

config.json: n_positions (and its older name n_ctx) is our block_size; n_embd, n_layer, n_head and
vocab_size are ours by name. n_inner null means 4 n_embd, our MLP width. activation_function
"gelu_new" is GELU with the tanh approximation (our `nn.GELU(approximate="tanh")`, `gelu="tanh"`;
"gelu_pytorch_tanh" and "gelu_fast" are the same function), "gelu" the exact one (`gelu="exact"`).
layer_norm_epsilon 1e-5 is nn.LayerNorm's default, which src/model uses. Our one dropout becomes
resid_pdrop, embd_pdrop and attn_pdrop. bos_token_id and eos_token_id are our `<|endoftext|>`. A key
"mini_transformer" keeps our own ModelConfig and marks the folder as our export, so our export loads
back exactly and may be overwritten by the next one.

Beyond GPT-2, and how it is expressed: `bias=False` is written as zero biases and
`pos_encoding="sinusoidal"` as its fixed table in wpe - Hugging Face computes the same logits (but
would train both if fine-tuned); loading our export restores them when the numbers are unchanged.
Not supported (a ValueError naming the file and the problem): other model types, n_inner other
than 4 n_embd, other activations or epsilons, scale_attn_by_inverse_layer_idx, cross-attention,
an untied LM head, sharded weights.

Tokenizer files: a byte-level BPE is written in GPT-2 format (vocab.json + merges.txt, see
src/gpt2_tokenizer.py) plus Hugging Face's tokenizer.json, which also carries our split pattern (GPT-2's
files cannot): `AutoTokenizer.from_pretrained(folder)` then encodes exactly like ours. The char
tokenizer has no Hugging Face counterpart; it is written as our JSON (`OUR_TOKENIZER_FILE`, written
for BPE too, so our export loads back exactly), and the model card shows the few lines that use it.
Loading looks for our JSON, then tokenizer.json, then vocab.json + merges.txt. A tokenizer ours does
not reproduce exactly (a normalizer, another pre-tokenizer, added tokens, add_prefix_space) loads as
None, and `load_hf_tokenizer` says why.

Why one file of ~650 lines: it is the one place that knows both naming worlds; splitting export
and import would split the translation table above, which both directions read.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import regex
import torch

from src.config import ModelConfig, config_from_dict, config_to_dict
from src.errors import CheckpointError
from src.fileio import (
    atomic_write,
    atomic_write_text,
    deferred_signals,
    missing_folders,
    read_json,
    remove_if_empty,
)
from src.gpt2_tokenizer import (
    GPT2_SPLIT_PATTERN,
    gpt2_file_texts,
    gpt2_vocab_and_merges,
    read_gpt2_files,
    tokenizer_from_gpt2_vocab,
)
from src.model import MiniTransformer
from src.model.embeddings import SinusoidalPositionEmbedding
from src.model.weights import safetensors_shapes
from src.tokenizer import EOT_TOKEN, BPETokenizer, CharTokenizer
from src.tokenizer_json import load_tokenizer, tokenizer_from_dict

Tokenizer = CharTokenizer | BPETokenizer

MARKER_KEY = "mini_transformer"  # our entry in config.json
EXPORT_FORMAT_VERSION = 1
OUR_TOKENIZER_FILE = "mini_transformer_tokenizer.json"  # not "tokenizer.json": that name is Hugging Face's
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by every LayerNorm in src/model
HF_PREFIX = "transformer."
# Our name prefix -> GPT-2's (after HF_PREFIX); the rest of the name is the same on both sides.
_NAME_MAP = (("embeddings.token_embedding.", "wte."), ("embeddings.position_embedding.", "wpe."),
             ("blocks.", "h."), ("ln_f.", "ln_f."))
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# HF's causal-mask buffers, in older files only: "bias" (the mask) and "masked_bias" (the fill value).
_HF_BUFFER = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", OUR_TOKENIZER_FILE, "README.md",
                 *_HF_TOKENIZER_FILES)
_JSON_LIMIT = 64 << 20  # bytes; GPT-2's tokenizer.json is 1.4 MB


# --- names, shapes and the two state dicts --------------------------------------------------


def hf_name(name: str) -> str:
    """Our parameter name -> GPT2LMHeadModel's: "blocks.0.attn.c_attn.weight" -> "transformer.h.0.attn.c_attn.weight"."""
    for ours, theirs in _NAME_MAP:
        if name.startswith(ours):
            return HF_PREFIX + theirs + name[len(ours):]
    raise ValueError(f"parameter {name!r} has no counterpart in GPT-2")


def our_name(name: str) -> str:
    """The inverse of `hf_name`: "transformer.wte.weight" -> "embeddings.token_embedding.weight"."""
    for ours, theirs in _NAME_MAP:
        if name.startswith(HF_PREFIX + theirs):
            return ours + name[len(HF_PREFIX + theirs):]
    raise ValueError(f"tensor {name!r} is not part of GPT2LMHeadModel")


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of GPT2LMHeadModel (tied head left out) with its shape, in Hugging Face's layout."""
    C, V = config.n_embd, config.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (config.block_size, C)}
    for i in range(config.n_layer):
        for module, (n_in, n_out) in (("ln_1", (C, C)), ("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                                      ("ln_2", (C, C)), ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            weight = (n_in,) if module.startswith("ln") else (n_in, n_out)  # Conv1D: (in, out)
            shapes[f"transformer.h.{i}.{module}.weight"] = weight
            shapes[f"transformer.h.{i}.{module}.bias"] = (n_out,)
    shapes["transformer.ln_f.weight"] = shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def gpt2_unsupported(config: ModelConfig) -> str | None:
    """The first experiment switch (see ModelConfig) that GPT-2's architecture cannot express, as
    "name=value (what it means)", or None for a GPT-2 shaped model."""
    gpt2 = {"pos_encoding": ("learned", "sinusoidal"), "causal": (True,), "residual": (True,), "norm": ("layernorm",),
            "norm_position": ("pre",), "mlp": (True,), "tie_weights": (True,)}
    for name, allowed in gpt2.items():
        value = getattr(config, name)
        if value not in allowed:
            return f"{name}={value!r} ({ModelConfig.__dataclass_fields__[name].metadata['help']})"
    return None


def to_hf_state_dict(model: MiniTransformer) -> dict[str, torch.Tensor]:
    """Our weights under GPT-2's names and layouts, ready for `save_file` or `GPT2LMHeadModel.load_state_dict`
    (strict=False: the tied lm_head.weight is left out, as Hugging Face's own files do)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper -> the module with the weights
    config = model.config
    if (switch := gpt2_unsupported(config)) is not None:
        raise ValueError(f"GPT-2 cannot represent this model: {switch}; export it with --format safetensors instead")
    if model.lm_head.weight is not model.embeddings.token_embedding.weight:
        raise ValueError("the LM head is not tied to the token embedding; GPT-2 format requires tying")
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    if eps != {LAYER_NORM_EPS}:
        raise ValueError(f"LayerNorm epsilon {sorted(eps)} differs from the {LAYER_NORM_EPS} this export writes")
    hf: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name != "lm_head.weight":
            tensor = tensor.detach().cpu()
            hf[hf_name(name)] = tensor.t() if name.endswith(_CONV1D) else tensor  # (out, in) -> (in, out)
    expected = hf_shapes(config)
    if config.pos_encoding == "sinusoidal":  # a fixed table is still a table
        hf["transformer.wpe.weight"] = model.embeddings.position_embedding.table.detach().cpu()
    dtype = hf["transformer.wte.weight"].dtype
    for name, shape in expected.items():
        if name not in hf and name.endswith(".bias") and not config.bias:
            hf[name] = torch.zeros(shape, dtype=dtype)  # no bias = a zero bias
    if set(hf) != set(expected):
        raise ValueError(f"the model's weights do not form GPT-2: {sorted(set(hf) ^ set(expected))[:3]}")
    return {name: tensor.contiguous() for name, tensor in hf.items()}


def from_hf_state_dict(hf_state: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 weights (names with or without "transformer.") -> our state dict for a model built from
    `config`. Checks every name and shape; raises ValueError naming the tensor and both shapes."""
    check_hf_shapes({name: (tuple(t.shape), t.dtype) for name, t in hf_state.items()}, config)
    state = {}
    for name, tensor in hf_state.items():
        if name == "lm_head.weight" or _HF_BUFFER.match(name):
            continue  # the tied head (checked below) and HF's mask buffers (rebuilt by our model)
        state[name if name.startswith(HF_PREFIX) else HF_PREFIX + name] = tensor
    expected = hf_shapes(config)
    wte = state["transformer.wte.weight"]
    if "lm_head.weight" in hf_state and not torch.equal(hf_state["lm_head.weight"], wte):
        raise ValueError("lm_head.weight differs from transformer.wte.weight: an untied LM head is not supported")
    if not config.bias and not _zero_biases(state, expected):
        raise ValueError("the biases are not all zero, so the model cannot be loaded with bias=False")
    if config.pos_encoding == "sinusoidal" and not _is_sinusoidal(state["transformer.wpe.weight"], config):
        raise ValueError("transformer.wpe.weight is not the sinusoidal table, so pos_encoding='sinusoidal' cannot load it")
    ours = {}
    for name, tensor in state.items():
        if name.endswith(".bias") and not config.bias:
            continue  # all zero: a model without biases computes the same
        if name == "transformer.wpe.weight" and config.pos_encoding == "sinusoidal":
            continue  # the fixed table is a buffer of our model, rebuilt from the config
        ours[our_name(name)] = tensor.t() if name.endswith(_CONV1D) else tensor  # (in, out) -> (out, in)
    ours["lm_head.weight"] = wte
    return ours


def check_hf_shapes(found: Mapping[str, tuple[tuple[int, ...], torch.dtype]], config: ModelConfig) -> None:
    """ValueError unless the tensors `found` (name -> (shape, dtype), e.g. from a file's header, before its
    data is read) are exactly those of a GPT-2 of `config`, with floating-point weights."""
    shapes = {name if name.startswith(HF_PREFIX) else HF_PREFIX + name: value for name, value in found.items()
              if name != "lm_head.weight" and not _HF_BUFFER.match(name)}
    if config.n_layer > len(shapes):  # every layer has 12 tensors: before hf_shapes lists n_layer of them
        raise ValueError(f"n_layer {config.n_layer:,} in config.json cannot fit a file of {len(shapes):,} tensors")
    expected = hf_shapes(config)
    unknown = sorted(set(shapes) - set(expected))
    if unknown:
        raise ValueError(f"tensor {unknown[0]} is not part of a GPT-2 with {config.n_layer} layers "
                         "(another model class, or config.json does not fit the weights)")
    missing = [name for name in expected if name not in shapes]
    if missing:
        raise ValueError(f"tensor {missing[0]} is missing ({len(missing)} of {len(expected)} missing)")
    for name, shape in expected.items():
        if tuple(shapes[name][0]) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(shapes[name][0])}, but config.json implies {shape}")
        if not shapes[name][1].is_floating_point:
            raise ValueError(f"tensor {name} is {str(shapes[name][1]).removeprefix('torch.')}, not a floating-point "
                             "dtype (weights must be float32, float16 or bfloat16)")


# --- config.json ----------------------------------------------------------------------------


def hf_config(config: ModelConfig, eot_id: int) -> dict[str, Any]:
    """The GPT2Config fields (config.json) for a model of this shape; `<|endoftext|>` is bos and eos."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu", "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "add_cross_attention": False, "use_cache": True,
        "tie_word_embeddings": True, "bos_token_id": eot_id, "eos_token_id": eot_id,
    }


def model_config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
    """config.json of a GPT-2 -> our ModelConfig; ValueError for what our model cannot compute.
    Absent fields take GPT2Config's defaults, as Hugging Face does."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"model_type is {hf.get('model_type')!r}; only 'gpt2' (GPT2LMHeadModel) is supported")
    get = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
           "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1,
           "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
           "tie_word_embeddings": True}
    get.update({key: hf[key] for key in get if key in hf})
    config = ModelConfig(vocab_size=get["vocab_size"], block_size=get["n_positions"], n_layer=get["n_layer"],
                         n_head=get["n_head"], n_embd=get["n_embd"], dropout=get["resid_pdrop"], bias=True)
    if get["n_inner"] not in (None, 4 * config.n_embd):
        raise ValueError(f"n_inner {get['n_inner']} is not supported: our MLP is 4 * n_embd = {4 * config.n_embd} wide")
    if get["activation_function"] not in (*_TANH_GELUS, "gelu"):
        raise ValueError(f"activation_function {get['activation_function']!r} is not supported (ours: tanh-GELU, "
                         f"one of {', '.join(_TANH_GELUS)}, or the exact 'gelu')")
    config.gelu = "exact" if get["activation_function"] == "gelu" else "tanh"
    eps = get["layer_norm_epsilon"]
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise ValueError(f"layer_norm_epsilon {eps!r} is not supported (ours: {LAYER_NORM_EPS})")
    for key, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if get[key] != wanted:
            raise ValueError(f"{key} {get[key]!r} is not supported (ours: {wanted})")
    return config


def _our_config(hf_cfg: ModelConfig, marker: Any, hf_state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """Our own export records our ModelConfig: use it where the weights still agree with it."""
    try:
        stored = config_from_dict(ModelConfig, marker["model_config"])
    except (KeyError, TypeError, ValueError):
        return hf_cfg  # not our export (or a damaged entry): plain GPT-2
    shape = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    if any(getattr(stored, key) != getattr(hf_cfg, key) for key in shape):
        return hf_cfg
    state = {k if k.startswith(HF_PREFIX) else HF_PREFIX + k: v for k, v in hf_state.items()}
    if not stored.bias and not _zero_biases(state, hf_shapes(hf_cfg)):
        stored.bias = True  # biases were trained since the export
    if stored.pos_encoding == "sinusoidal" and not _is_sinusoidal(state.get("transformer.wpe.weight"), hf_cfg):
        stored.pos_encoding = "learned"  # the table was trained since the export
    return stored


def _zero_biases(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> bool:
    return not any(t.any() for name, t in state.items() if name in expected and name.endswith(".bias"))


def _is_sinusoidal(wpe: torch.Tensor | None, config: ModelConfig) -> bool:
    table = SinusoidalPositionEmbedding(config.block_size, config.n_embd).table  # as our model computes it
    return wpe is not None and wpe.shape == table.shape and torch.equal(wpe.to(table.dtype), table)


# --- reading a folder -------------------------------------------------------------------------


def is_hf_model_dir(path: str | Path) -> bool:
    """A folder with a Hugging Face config.json (one with a "model_type"): gpt2 or another type."""
    config = Path(path) / "config.json"
    try:
        data = _read_json(config) if Path(path).is_dir() else None
    except ValueError:
        return False
    return isinstance(data, dict) and "model_type" in data


def is_hf_gpt2_dir(path: str | Path) -> bool:
    """A folder whose config.json says model_type "gpt2" (the weights are checked when loading)."""
    try:
        return Path(path).is_dir() and _read_json(Path(path) / "config.json").get("model_type") == "gpt2"
    except (ValueError, AttributeError):
        return False


def _read_json(path: Path) -> Any:
    """The project's bounded reader (size and nesting caps); StructuredFileError (a ValueError) names the file."""
    return read_json(path, max_bytes=_JSON_LIMIT)


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a model folder as a dict; CheckpointError naming the file otherwise."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such model folder")
    try:
        data = _read_json(path)
    except ValueError as err:
        raise CheckpointError(f"{err} (a Hugging Face model folder has config.json next to its weights)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin (read with weights_only=True: no code can run)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        try:
            return load_file(str(safetensors_file))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{safetensors_file}: cannot read (corrupt or truncated?): {err}") from err
    if bin_file.is_file():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in many ways
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{bin_file}: cannot read (corrupt, or holding Python objects besides tensors, "
                                  f"which are refused): {type(err).__name__}: {first}") from err
        if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
            raise CheckpointError(f"{bin_file}: expected a state dict (names -> tensors)")
        return state
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            raise CheckpointError(f"{folder}: weights split into shards ({index}) are not supported; save them "
                                  "as one file (save_pretrained(..., max_shard_size='10GB'))")
    raise CheckpointError(f"{folder}: no weights (model.safetensors or pytorch_model.bin)")


def read_hf_shapes(folder: str | Path) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], Path] | None:
    """The weight file's tensors as name -> (shape, dtype), without reading their data (the safetensors
    header, or pytorch_model.bin mapped into memory); None where that cannot be told (then the
    full read reports what is wrong)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        try:
            with safe_open(str(safetensors_file), framework="pt", device="cpu") as handle:
                return safetensors_shapes(handle), safetensors_file
        except (SafetensorError, OSError):
            return None
    if bin_file.is_file():
        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - an old (non-zip) file cannot be mapped; read_hf_weights reports
            return None
        if isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values()):
            return {name: (tuple(t.shape), t.dtype) for name, t in state.items()}, bin_file
    return None


def hf_declared(folder: str | Path) -> tuple[ModelConfig, dict[str, tuple[tuple[int, ...], torch.dtype]], Path] | None:
    """(the configuration config.json declares, the weight file's tensors, that file), checked against each
    other (CheckpointError naming the file) - all without reading a weight; None where the shapes cannot
    be told without reading the file."""
    folder = Path(folder)
    try:
        hf_cfg = model_config_from_hf(read_hf_config(folder))
    except ValueError as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    declared = read_hf_shapes(folder)
    if declared is None:
        return None
    found, weights_file = declared
    try:
        check_hf_shapes(found, hf_cfg)
    except ValueError as err:
        raise CheckpointError(f"{weights_file}: {err}") from None
    return hf_cfg, found, weights_file


def load_hf_model(folder: str | Path, device: str | torch.device = "cpu") -> MiniTransformer:
    """A GPT-2 model folder -> our MiniTransformer with its weights, in evaluation mode (dropout off) on `device`."""
    config, state = _hf_config_and_state(Path(folder))
    model = MiniTransformer(config)
    model.load_state_dict(state)  # strict: from_hf_state_dict produced exactly our names
    return model.to(device).eval()


def _hf_config_and_state(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    data = read_hf_config(folder)
    try:
        hf_cfg = model_config_from_hf(data)
    except ValueError as err:
        raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
    hf_declared(folder)  # config.json against the tensors' shapes and dtypes, before a weight is read
    hf_state = read_hf_weights(folder)
    config = _our_config(hf_cfg, data.get(MARKER_KEY), hf_state)
    weights = "model.safetensors" if (folder / "model.safetensors").is_file() else "pytorch_model.bin"
    try:
        return config, from_hf_state_dict(hf_state, config)
    except ValueError as err:
        raise CheckpointError(f"{folder / weights}: {err}") from None


def load_hf_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer of a model folder, or CheckpointError saying why there is none we can use.

    Looked for in this order: our own JSON (`OUR_TOKENIZER_FILE`, written by `export_hf`), Hugging
    Face's tokenizer.json, GPT-2's vocab.json + merges.txt.
    """
    folder = Path(folder)
    try:
        if (folder / OUR_TOKENIZER_FILE).is_file():
            tokenizer = load_tokenizer(folder / OUR_TOKENIZER_FILE)
            recorded = _marker(folder).get("tokenizer_fingerprint")
            if recorded is not None and recorded != tokenizer.fingerprint():
                raise ValueError(f"{folder / OUR_TOKENIZER_FILE}: does not match the fingerprint in config.json (altered?)")
            return tokenizer
        if (folder / "tokenizer.json").is_file():  # transformers, too, prefers it to vocab.json
            return _tokenizer_from_hf_json(folder / "tokenizer.json")
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            _check_tokenizer_config(folder)
            return read_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    raise CheckpointError(f"{folder}: no tokenizer ({OUR_TOKENIZER_FILE}, tokenizer.json or vocab.json + merges.txt)")


def _marker(folder: Path) -> dict:
    try:
        marker = _read_json(folder / "config.json").get(MARKER_KEY)
    except (ValueError, AttributeError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _check_tokenizer_config(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    data = _read_json(path) if path.is_file() else {}
    if isinstance(data, dict) and data.get("add_prefix_space"):
        raise ValueError(f"{path}: add_prefix_space is true (a space put before every text); not supported")


def _tokenizer_from_hf_json(path: Path) -> BPETokenizer:
    """Hugging Face's tokenizer.json -> our tokenizer, if it is a byte-level BPE that ours reproduces."""
    data = _read_json(path)
    if isinstance(data, dict) and data.get("type") in ("char", "bpe"):  # our own format under this name
        try:
            return tokenizer_from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    _check_tokenizer_config(path.parent)
    try:
        vocab, merges, pattern = _hf_bpe_parts(data)
        return tokenizer_from_gpt2_vocab(vocab, merges, pattern)
    except (ValueError, TypeError, AttributeError, regex.error) as err:
        raise ValueError(f"{path}: {err}") from None


def _hf_bpe_parts(data: Any) -> tuple[dict[str, int], list[tuple[str, str]], str]:
    """(vocab, merges, split pattern) of a tokenizer.json, or ValueError naming what ours cannot reproduce."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"model type {model.get('type')!r} is not supported (only byte-level BPE)")
    unsupported = {"dropout": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                   "byte_fallback": False, "ignore_merges": False}
    for key, plain in unsupported.items():
        if model.get(key) not in (None, plain):
            raise ValueError(f"BPE option {key}={model[key]!r} is not supported")
    if data.get("normalizer") is not None:
        raise ValueError(f"normalizer {data['normalizer'].get('type')!r} is not supported (only none)")
    pattern = _split_pattern(data.get("pre_tokenizer") or {})
    vocab = dict(model.get("vocab") or {})
    if not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
        raise ValueError("model.vocab must map token texts to integer ids")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    if not all(len(m) == 2 and all(isinstance(part, str) for part in m) for m in merges):
        raise ValueError("model.merges must hold pairs of token texts")
    for added in data.get("added_tokens") or []:
        if added.get("content") != EOT_TOKEN:
            raise ValueError(f"added token {added.get('content')!r} is not supported (only {EOT_TOKEN})")
        vocab.setdefault(EOT_TOKEN, added.get("id"))
    return vocab, merges, pattern


def _split_pattern(pre: dict) -> str:
    """GPT-2's ByteLevel pre-tokenizer -> GPT2_SPLIT_PATTERN; Split(regex) + ByteLevel (our export) -> that regex."""
    def byte_level(step: dict, use_regex: bool) -> bool:
        return (step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
                and step.get("use_regex", True) == use_regex)

    if byte_level(pre, use_regex=True):
        return GPT2_SPLIT_PATTERN
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and byte_level(steps[1], use_regex=False):
        split = steps[0]
        pattern = split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) else None
        if split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert") and pattern:
            return pattern
    raise ValueError(f"pre-tokenizer {json.dumps(pre)[:120]} is not supported (GPT-2's ByteLevel, or Split + ByteLevel)")


def load_hf_gpt2(folder: str | Path, device: str | torch.device = "cpu") -> tuple[MiniTransformer, Tokenizer | None]:
    """Load a Hugging Face GPT-2 folder: `model, tokenizer = load_hf_gpt2("gpt2-folder")`.

    The model is in evaluation mode (dropout off) on `device`. The tokenizer is None when the folder has none that
    reproduces Hugging Face's exactly or fits the model; `load_hf_tokenizer(folder)` raises the reason.
    Raises CheckpointError (a ValueError) naming the file and the problem for a folder that is not
    a usable GPT-2.
    """
    model = load_hf_model(folder, device)
    try:
        tokenizer = _fitting_tokenizer(Path(folder), model.config.vocab_size)
    except CheckpointError:
        tokenizer = None
    return model, tokenizer


def _fitting_tokenizer(folder: Path, vocab_size: int) -> Tokenizer:
    tokenizer = load_hf_tokenizer(folder)
    if tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens, but config.json "
                              f"says vocab_size {vocab_size}")
    return tokenizer


def hf_checkpoint_payload(folder: str | Path) -> dict[str, Any]:
    """A GPT-2 folder in the layout of our checkpoints (`model`, `model_config`, `tokenizer`,
    `tokenizer_fingerprint`), so `model_from_checkpoint` and `tokenizer_from_checkpoint` read it.
    Unlike `load_hf_gpt2` it needs the tokenizer (raising why there is none): the CLI always does."""
    folder = Path(folder)
    config, state = _hf_config_and_state(folder)
    tokenizer = _fitting_tokenizer(folder, config.vocab_size)
    return {"model": state, "model_config": config_to_dict(config), "tokenizer": tokenizer.to_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint()}


# --- export -------------------------------------------------------------------------------------


def export_hf(model: MiniTransformer, tokenizer: Tokenizer, out_dir: str | Path, *, card: dict[str, Any]) -> Path:
    """Write a folder that `GPT2LMHeadModel.from_pretrained` (and `load_hf_gpt2`) reads; returns it.

    config.json, model.safetensors (tied weight stored once), generation_config.json, our tokenizer
    JSON, for a BPE tokenizer also Hugging Face's tokenizer files (`AutoTokenizer.from_pretrained`),
    and README.md, a model card from `card` (e.g. {"data": ..., "steps": ..., "val_loss": ...}).
    `out_dir` must be new, empty, or an earlier export of ours (it is then replaced file by file).
    """
    from safetensors.torch import save

    out = Path(out_dir)
    model = getattr(model, "_orig_mod", model)
    config = model.config
    if (switch := gpt2_unsupported(config)) is not None:  # before any file is written
        raise ValueError(f"--format hf: GPT-2 cannot represent this model: {switch}; use --format safetensors")
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}")
    if not isinstance(card, dict):
        raise ValueError(f"card must be a dict (e.g. {{'data': ..., 'steps': ...}}), got {type(card).__name__}")
    _check_export_folder(out)
    hf = hf_config(config, tokenizer.eot_id)
    hf[MARKER_KEY] = {"export_format_version": EXPORT_FORMAT_VERSION, "model_config": config_to_dict(config),
                      "tokenizer_file": OUR_TOKENIZER_FILE, "tokenizer_fingerprint": tokenizer.fingerprint()}
    files = {  # everything is built before the first file is written: an error leaves the folder as it was
        "generation_config.json": _json_text({"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id,
                                              "pad_token_id": tokenizer.eot_id}),
        **(hf_tokenizer_files(tokenizer, config.block_size) if isinstance(tokenizer, BPETokenizer) else {}),
        "README.md": model_card(model, tokenizer, out, card),
    }
    weights = save(to_hf_state_dict(model), metadata={"format": "pt"})
    # Written into a temporary folder beside `out` first: Ctrl-C, SIGTERM or a full disk while writing
    # leaves `out` as it was (the temporary folder is removed), never half an export.
    created = missing_folders(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the export is an ordinary readable folder
        atomic_write_text(tmp / "config.json", _json_text(hf))
        atomic_write(tmp / "model.safetensors", weights)
        tokenizer.save(tmp / OUR_TOKENIZER_FILE)
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        stale = set(_EXPORT_FILES) - set(files) - {"config.json", "model.safetensors", OUR_TOKENIZER_FILE}
        with deferred_signals():  # a handful of renames: all of them, or (signal before) none
            _move_into_place(tmp, out, sorted(stale) + ["pytorch_model.bin"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not out.exists():  # failed or interrupted: no empty folders made for it either
            remove_if_empty(created)
    return out


def _move_into_place(tmp: Path, out: Path, stale: list[str]) -> None:
    """The finished files in `tmp` become `out`: a new or empty `out` by one rename of the folder, an
    earlier export of ours file by file (files of the user's that lie there too are kept), removing
    files of the earlier export that this one no longer has (e.g. vocab.json of a BPE export, now char)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(tmp, out)  # rename(2) may replace an empty folder
        return
    for entry in sorted(tmp.iterdir()):
        os.replace(entry, out / entry.name)
    for name in stale:
        (out / name).unlink(missing_ok=True)


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _check_export_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; --out needs a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not _marker(out):
        raise ValueError(f"{out} is not empty and not an earlier export of this project (its config.json has no "
                         f"{MARKER_KEY!r} entry); choose a new or empty folder")


def hf_tokenizer_files(tokenizer: BPETokenizer, block_size: int) -> dict[str, str]:
    """GPT-2's vocab.json + merges.txt and Hugging Face's tokenizer.json, tokenizer_config.json and
    special_tokens_map.json. tokenizer.json carries the split pattern (vocab.json cannot); for a
    pattern other than GPT-2's the class is PreTrainedTokenizerFast, because transformers 5's
    GPT2Tokenizer replaces the pre-tokenizer with GPT-2's own."""
    vocab, merges = gpt2_vocab_and_merges(tokenizer)  # ValueError if one token has two ids
    gpt2 = tokenizer.pattern == GPT2_SPLIT_PATTERN
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": gpt2}
    pre_tokenizer = byte_level if gpt2 else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False}, byte_level]}
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tokenizer.eot_id, "content": EOT_TOKEN, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": [f"{a} {b}" for a, b in merges]},
    }
    specials = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer" if gpt2 else "PreTrainedTokenizerFast", **specials,
                        "add_prefix_space": False, "model_max_length": block_size, "clean_up_tokenization_spaces": False}
    vocab_text, merges_text = gpt2_file_texts(vocab, merges)
    return {
        "vocab.json": vocab_text,
        "merges.txt": merges_text,
        "tokenizer.json": json.dumps(tokenizer_json, ensure_ascii=False) + "\n",
        "tokenizer_config.json": _json_text(tokenizer_config),
        "special_tokens_map.json": _json_text(specials),
    }


_CARD_LABELS = {"data": "Training data", "steps": "Training steps", "tokens": "Training tokens",
                "val_loss": "Validation loss"}


def model_card(model: MiniTransformer, tokenizer: Tokenizer, out: Path, card: dict[str, Any]) -> str:
    """README.md: what the model is, how it was trained (from `card`), how to load and sample it."""
    cfg = model.config
    kind = "byte-level BPE" if isinstance(tokenizer, BPETokenizer) else "characters"
    rows = [("Architecture", f"GPT-2: {cfg.n_layer} layers, {cfg.n_head} heads, n_embd {cfg.n_embd}"),
            ("Parameters", f"{model.num_parameters():,}"),
            ("Context length", f"{cfg.block_size} tokens"), ("Tokenizer", f"{tokenizer.vocab_size} tokens, {kind}")]
    for key, value in card.items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
        rows.append((_CARD_LABELS.get(key, str(key)), shown.replace("|", "\\|").replace("\n", " ")))
    new_tokens = max(1, min(200, cfg.block_size // 2))
    if isinstance(tokenizer, BPETokenizer):
        usage = f'''from transformers import AutoTokenizer, GPT2LMHeadModel

folder = "{out}"
tokenizer = AutoTokenizer.from_pretrained(folder)
model = GPT2LMHeadModel.from_pretrained(folder)
inputs = tokenizer("The ", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens={new_tokens}, do_sample=True, top_k=50)
print(tokenizer.decode(out[0]))'''
    else:
        usage = f'''import json

import torch
from transformers import GPT2LMHeadModel

folder = "{out}"
model = GPT2LMHeadModel.from_pretrained(folder)
with open(f"{{folder}}/{OUR_TOKENIZER_FILE}", encoding="utf-8") as f:
    vocab = json.load(f)
itos = vocab["special_tokens"] + vocab["chars"]  # id -> character; 0 is <unk>, 1 is <|endoftext|>
stoi = {{ch: i for i, ch in enumerate(itos)}}
ids = torch.tensor([[stoi.get(ch, 0) for ch in "The "]])  # a character outside the vocabulary -> <unk>
out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens={new_tokens}, do_sample=True, top_k=50)
print("".join(itos[i] for i in out[0].tolist()))'''
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    tokenizer_note = ("The tokenizer files work with `AutoTokenizer`." if isinstance(tokenizer, BPETokenizer) else
                      f"Hugging Face has no character tokenizer of this kind; `{OUR_TOKENIZER_FILE}` lists the "
                      "characters, and the few lines below use it.")
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, mini_transformer]
---

# {out.name}

A small GPT-2 language model trained from scratch with mini_transformer, a teaching project,
stored in Hugging Face's GPT-2 format: `transformers` loads it as `GPT2LMHeadModel`.
{tokenizer_note}

| | |
|---|---|
{table}

## Sampling with transformers

```python
{usage}
```

## Loading with mini_transformer

```python
from src.hf_bridge import load_hf_gpt2

model, tokenizer = load_hf_gpt2("{out}")
```

## Limitations

A model this small imitates the style of its training text; what it writes is neither true nor
safe to rely on. It only knows the text it was trained on.
"""
