"""Configuration: one typed dataclass per concern, passed explicitly.

* `ModelConfig` - the shape of the network (what `MiniTransformer` is built from).
* `DataConfig`  - where the text comes from and how it is tokenized (`python -m src.dataset`).
* `TrainConfig` - how the network is optimised (`python -m src.main --train`).

Every field carries its command-line help in `metadata["help"]`; `src/main.py` and
`src/dataset.py` build their flags from these fields, so a default is written down exactly once.
Each `__post_init__` validates the values and raises `ValueError` naming the field, the value
and the fix - a bad setting fails here, not deep inside a matrix multiplication.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ATTENTION_CHOICES = ("sdpa", "manual")
POS_ENCODING_CHOICES = ("learned", "sinusoidal", "none")
NORM_CHOICES = ("layernorm", "rmsnorm", "none")
NORM_POSITION_CHOICES = ("pre", "post")
GELU_CHOICES = ("tanh", "exact")
TOKENIZER_CHOICES = ("char", "bpe")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")

# The 12 English books of the default data set (Project Gutenberg ids).
DEFAULT_BOOKS: tuple[int, ...] = (11, 74, 84, 98, 174, 345, 514, 1260, 1342, 2701, 25344, 64317)
DEFAULT_MIRROR = "https://www.gutenberg.org"
MIRROR_ENV_VAR = "MINI_TRANSFORMER_MIRROR"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelConfig:
    """The shape of a GPT-2 style decoder-only Transformer.

    Notation used throughout `src/model/`: B batch, T time (sequence length), C = n_embd,
    nh = n_head, hs = head_size = C // nh, V = vocab_size.
    """

    vocab_size: int = field(metadata=_help("number of distinct token ids (set from the tokenizer)"))
    block_size: int = field(default=256, metadata=_help("context length: the most tokens the model sees at once"))
    n_layer: int = field(default=6, metadata=_help("number of Transformer blocks"))
    n_head: int = field(default=6, metadata=_help("attention heads per block (must divide n_embd)"))
    n_embd: int = field(default=384, metadata=_help("embedding width C"))
    dropout: float = field(default=0.2, metadata=_help("dropout probability in [0, 1)"))
    bias: bool = field(default=True, metadata=_help("use bias vectors in Linear and LayerNorm layers (GPT-2: yes)"))
    attention: str = field(default="sdpa", metadata=_help("'sdpa' (fused PyTorch kernel) or 'manual' (readable)"))
    gelu: str = field(default="tanh", metadata=_help("GELU in the MLP: 'tanh' (GPT-2) or 'exact' (erf; 2x faster on a CPU)"))
    pos_encoding: str = field(
        default="learned", metadata=_help("'learned' (GPT-2), 'sinusoidal' (Vaswani 2017) or 'none' (no position signal)")
    )
    # Switches for experiments that take one idea away (`--experiment ablations`); the defaults are GPT-2.
    causal: bool = field(default=True, metadata=_help("causal mask: each position sees only the past (off: the future too)"))
    residual: bool = field(default=True, metadata=_help("residual connections: x + f(x) around each sub-layer (off: f(x))"))
    norm: str = field(default="layernorm", metadata=_help("normalisation: 'layernorm' (GPT-2), 'rmsnorm' or 'none'"))
    norm_position: str = field(
        default="pre", metadata=_help("'pre': normalise before each sub-layer (GPT-2); 'post': after the residual add (Vaswani 2017)")
    )
    mlp: bool = field(default=True, metadata=_help("an MLP in each block (off: attention only)"))
    tie_weights: bool = field(default=True, metadata=_help("the LM head shares the token embedding's weight (GPT-2)"))

    # First pass: skip __post_init__ (validation); head_size below is worth reading.
    def __post_init__(self) -> None:
        _require_positive(self, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"choose e.g. n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        _require_fraction(self, "dropout", 0.0, 1.0)
        for name in ("bias", "causal", "residual", "mlp", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _require_choice(self, "attention", ATTENTION_CHOICES)
        _require_choice(self, "pos_encoding", POS_ENCODING_CHOICES)
        _require_choice(self, "norm", NORM_CHOICES)
        _require_choice(self, "norm_position", NORM_POSITION_CHOICES)
        _require_choice(self, "gelu", GELU_CHOICES)

    @property
    def head_size(self) -> int:
        """hs: the width of one attention head."""
        return self.n_embd // self.n_head


# First pass: skip DataConfig (it belongs to src/dataset.py) and read TrainConfig below.
@dataclass
class DataConfig:
    """Where the training text comes from and how it becomes token ids."""

    books: tuple[int, ...] = field(default=DEFAULT_BOOKS, metadata=_help("Project Gutenberg book ids"))
    mirror: str | None = field(
        default=None,
        metadata=_help(
            f"base URL or directory laid out like Gutenberg's cache (cache/epub/<ID>/pg<ID>.txt); "
            f"default ${MIRROR_ENV_VAR}, else {DEFAULT_MIRROR}"
        ),
    )
    input: tuple[str, ...] = field(
        default=(), metadata=_help("your own .txt files, folders or globs (used instead of --books)")
    )
    data_dir: Path = field(default=Path("data"), metadata=_help("folder holding raw/ and processed/"))
    unwrap: bool = field(default=True, metadata=_help("join hard line breaks inside paragraphs of Gutenberg books"))
    val_fraction: float = field(default=0.1, metadata=_help("fraction at the end of each book used for validation"))
    holdout_books: tuple[int, ...] = field(
        default=(), metadata=_help("book ids that go wholly into validation instead")
    )
    tokenizer: str = field(default="char", metadata=_help("'char' or 'bpe'"))
    max_vocab_size: int = field(default=256, metadata=_help("vocabulary size of the tokenizer"))
    name: str | None = field(default=None, metadata=_help("name of the processed data set (default: derived)"))
    force: bool = field(default=False, metadata=_help("rebuild the data set even if it exists"))

    def __post_init__(self) -> None:
        self.books = tuple(int(b) for b in self.books)
        self.input = tuple(str(p) for p in self.input)
        self.holdout_books = tuple(int(b) for b in self.holdout_books)
        self.data_dir = Path(self.data_dir)
        for book in self.books:
            if book <= 0:
                raise ValueError(f"books: Gutenberg ids are positive integers, got {book}")
        if not self.books and not self.input:
            raise ValueError("books: no source given; pass --books ID ... or --input PATH ...")
        _require_fraction(self, "val_fraction", 0.0, 1.0)
        if self.val_fraction == 0.0 and not self.holdout_books:
            raise ValueError("val_fraction must be > 0 unless --holdout-book is given (validation would be empty)")
        if self.input and self.holdout_books:
            raise ValueError("holdout_books: --holdout-book takes whole Gutenberg books; it cannot be combined with --input")
        missing = [b for b in self.holdout_books if b not in self.books]
        if missing:
            raise ValueError(f"holdout_books {missing} are not among --books {list(self.books)}")
        _require_choice(self, "tokenizer", TOKENIZER_CHOICES)
        _require_positive(self, "max_vocab_size")


@dataclass
class TrainConfig:
    """How the model is optimised, evaluated and where the run is written."""

    batch_size: int = field(default=32, metadata=_help("sequences per optimiser micro-step"))
    epochs: int = field(default=5, metadata=_help("passes over the training tokens"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimiser steps"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate (after warm-up)"))
    min_lr: float = field(default=1e-4, metadata=_help("learning rate at the end of the cosine decay"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (matrices only)"))
    beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    beta2: float = field(default=0.99, metadata=_help("AdamW beta2"))
    warmup_steps: int = field(default=100, metadata=_help("linear learning-rate warm-up steps"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the gradient norm to this (0 = off)"))
    grad_accum: int = field(default=1, metadata=_help("micro-steps accumulated per optimiser step"))
    eval_interval: int = field(default=250, metadata=_help("evaluate every N optimiser steps"))
    eval_batches: int = field(default=20, metadata=_help("validation batches per evaluation"))
    early_stopping: int = field(default=0, metadata=_help("stop after N evaluations without improvement (0 = off)"))
    seed: int = field(default=1337, metadata=_help("random seed (weights, data order, sampling)"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or mps (auto: cuda, then mps, then cpu)"))
    dtype: str = field(default="auto", metadata=_help("auto, fp32, bf16 or fp16 (auto: bf16, else fp16 on CUDA; on a CPU with "
        "native bf16 (AVX512-BF16/AMX) the faster of bf16 and fp32 at the run's shape, timed at start-up; fp32 else)"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model (CUDA, Linux)"))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    logdir: Path | None = field(default=None, metadata=_help("run directory (default runs/<date-time>)"))
    log_interval: int = field(default=10, metadata=_help("write train/loss, lr, grad_norm every N optimiser steps"))
    sample_tokens: int = field(
        default=200, metadata=_help("characters/tokens of text sampled from fixed prompts at each evaluation (0 = off)")
    )

    # First pass: skip __post_init__ (validation).
    def __post_init__(self) -> None:
        _require_positive(self, "batch_size", "epochs", "grad_accum", "eval_interval", "eval_batches", "log_interval")
        if self.max_steps is not None:
            _require_positive(self, "max_steps")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}")  # NaN fails every comparison
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        _require_fraction(self, "beta1", 0.0, 1.0)
        _require_fraction(self, "beta2", 0.0, 1.0)
        for name in ("warmup_steps", "early_stopping", "num_workers", "seed", "sample_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        _require_choice(self, "device", DEVICE_CHOICES)
        _require_choice(self, "dtype", DTYPE_CHOICES)
        if self.logdir is not None:
            self.logdir = Path(self.logdir)


# First pass: skip to the end of the file (reading and writing configs as JSON, validation helpers).
def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (paths become strings, tuples lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {key: plain(value) for key, value in asdict(config).items()}


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from `config_to_dict` output; unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)


# The checks behind every __post_init__, with readable error messages.


def _require_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            kind = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else f" (a {type(value).__name__})"
            raise ValueError(f"{name} must be a positive integer, got {value!r}{kind}")


def _require_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _require_fraction(obj: Any, name: str, low: float, high: float, high_inclusive: bool = False) -> None:
    value = getattr(obj, name)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)  # before comparing: "0.1" < 1.0 is a TypeError
    upper_ok = is_number and (value <= high if high_inclusive else value < high)
    if not (is_number and low <= value and upper_ok):
        bracket = "]" if high_inclusive else ")"
        kind = "" if is_number else f" (a {type(value).__name__}; give a number)"
        raise ValueError(f"{name} must lie in [{low}, {high}{bracket}, got {value!r}{kind}")
