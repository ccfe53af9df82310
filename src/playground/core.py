"""What the playground computes, without any web framework: checked prompts, generation step by step
with the candidate distributions, attention and forward-pass tables, and a run's files.

Everything here works on plain tensors and Python values, so it can be tested (and used from a
notebook) without Gradio. The maths lives elsewhere and is only called: generation is the model's
own `generate_stream`, the distribution is `sampling.next_token_probs`, attention and the
forward-pass stages come from `src.visualization` and `src.analysis`.

Messages of `PlaygroundInputError` are shown in the (German) web page, so they are German.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Everything the playground takes from the analysis and visualisation modules, in ONE place
# (the app imports these names from here): a rename there is a one-line fix here.
from src.analysis import explain_forward, head_pattern_scores, unknown_characters
from src.fileio import JsonLines, StructuredFileError, read_json, read_jsonl
from src.model.sampling import check_generate_args, next_token_probs
from src.training.checkpoints import CHECKPOINT_DIR, load_model
from src.visualization import attention_for_prompt, display_token, plot_attention, plot_token_surprisal

__all__ = [  # re-exported for app.py
    "attention_for_prompt", "display_token", "explain_forward", "load_model", "plot_attention",
    "plot_token_surprisal",
]

MAX_PROMPT_CHARS = 20_000  # longer input is refused before tokenizing (a paste of a whole book)
MAX_NEW_TOKENS = 1_000
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer
N_CANDIDATES = 10
PATTERN_NAMES = {  # HeadScores.pattern() -> German
    "previous token": "vorheriges Token", "current token": "eigenes Token", "first token": "erstes Token",
    "start of word": "Wortanfang", "mixed": "gemischt",
}


class PlaygroundInputError(ValueError):
    """A prompt or setting from the web page that cannot be used; the message says why (in German)."""


# --- prompts ----------------------------------------------------------------------------------


@dataclass
class Prompt:
    """A checked prompt: its token ids as the model sees them and how many were cut off the front."""

    text: str
    ids: list[int]
    dropped: int  # tokens removed from the left to fit block_size

    def crop_note(self, block_size: int) -> str:
        """A German sentence for the page, or "" when nothing was cut."""
        if not self.dropped:
            return ""
        return (f"Der Prompt hat {len(self.ids) + self.dropped} Tokens, das Modell sieht aber höchstens "
                f"block_size = {block_size}: die ersten {self.dropped} Tokens wurden weggelassen.")


def check_prompt(tokenizer: Any, text: Any, block_size: int) -> Prompt:
    """Encode `text` for the model or raise PlaygroundInputError: empty, too long to paste, not valid
    Unicode, or with characters the tokenizer does not know. A prompt longer than block_size tokens
    is cropped from the left (the model's context window), which `Prompt.dropped` records."""
    if not isinstance(text, str) or text == "":
        raise PlaygroundInputError("Der Prompt ist leer: gib mindestens ein Zeichen ein.")
    if len(text) > MAX_PROMPT_CHARS:
        raise PlaygroundInputError(f"Der Prompt ist mit {len(text):,} Zeichen zu lang (höchstens "
                                   f"{MAX_PROMPT_CHARS:,}); das Modell sieht ohnehin nur {block_size} Tokens.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PlaygroundInputError(f"Der Prompt enthält an Stelle {err.start} ein Zeichen, das kein gültiges "
                                   "Unicode ist; bitte entferne es.") from None
    unknown = unknown_characters(tokenizer, text)
    if unknown:
        shown = ", ".join(repr(ch) for ch in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        raise PlaygroundInputError(f"Diese Zeichen kennt der Tokenizer des Modells nicht: {shown}. "
                                   "Entferne oder ersetze sie (das Modell hat sie im Training nie gesehen).")
    ids = tokenizer.encode(text)
    dropped = max(0, len(ids) - block_size)
    return Prompt(text, ids[dropped:], dropped)


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How to sample: temperature 0 is greedy; top_k / top_p None mean "off"."""

    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        """German one-liner, e.g. "Temperatur 0.8, top-k 40, top-p aus, Seed 1"."""
        if self.greedy:
            return "greedy (Temperatur 0): immer das wahrscheinlichste Token"
        top_k = "aus" if self.top_k is None else str(self.top_k)
        top_p = "aus" if self.top_p is None else f"{self.top_p:g}"
        return f"Temperatur {self.temperature:g}, top-k {top_k}, top-p {top_p}, Seed {self.seed}"


def whole_number(value: Any) -> int | None:
    """The value as an int if it is a whole number (a slider delivers 5.0), else None.

    Example: ``whole_number(5.0)`` -> ``5``, ``whole_number(2.5)``, ``whole_number(True)`` -> ``None``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value % 1 == 0):
        return None
    return int(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    """A whole number in [low, high], else PlaygroundInputError."""
    number = whole_number(value)
    if number is None or not low <= number <= high:
        raise PlaygroundInputError(f"{name} muss eine ganze Zahl von {low} bis {high} sein, nicht {value!r}.")
    return number


def _real(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if low_open else low <= value) or not value <= high:
        bracket = "(" if low_open else "["
        raise PlaygroundInputError(f"{name} muss eine Zahl in {bracket}{low:g}, {high:g}] sein, nicht {value!r}.")
    return float(value)


def check_settings(temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any, seed: Any,
                   vocab_size: int) -> Settings:
    """The page's knobs as Settings, or PlaygroundInputError naming the knob and its range.
    top_k 0 and top_p 1 mean "off" (None)."""
    temperature = _real("Die Temperatur", temperature, 0.0, MAX_TEMPERATURE)
    top_k = _integer("top-k", top_k, 0, vocab_size)
    top_p = _real("top-p", top_p, 0.0, 1.0, low_open=True)
    max_new_tokens = _integer("Die Anzahl der Tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    seed = _integer("Der Seed", seed, 0, MAX_SEED)
    return Settings(temperature, top_k or None, None if top_p >= 1.0 else top_p, max_new_tokens, seed)


# --- generation, one step at a time -------------------------------------------------------------


def sampling_distribution(logits: torch.Tensor, settings: Settings) -> torch.Tensor:
    """The distribution the model's sampler draws from (`next_token_probs`): (V,) logits -> (V,) probabilities."""
    temperature = 0.0 if settings.greedy else settings.temperature
    return next_token_probs(logits.unsqueeze(0), temperature, settings.top_k, settings.top_p)[0]  # (1, V) -> (V,)


@dataclass
class Candidate:
    token_id: int
    token: str
    p_model: float  # softmax of the raw logits: what the model believes
    p_sampling: float  # after temperature, top-k and top-p: what the sampler drew from


@dataclass
class Step:
    """One generated token, the probabilities it had, and the top candidates at that step."""

    index: int  # 1 = the first generated token
    token_id: int
    token: str
    p_model: float
    p_sampling: float
    candidates: list[Candidate]  # the N_CANDIDATES likeliest (plus the chosen token if it is not among them)


def step_record(index: int, logits: torch.Tensor, token_id: int, tokenizer: Any, settings: Settings) -> Step:
    """Build the Step for `token_id` drawn from the last position's `logits` (V,)."""
    p_model = torch.softmax(logits.float(), dim=-1)  # (V,)
    p_sampling = sampling_distribution(logits, settings)  # (V,)
    top = torch.topk(p_model, min(N_CANDIDATES, p_model.numel())).indices.tolist()
    if token_id not in top:
        top.append(token_id)
    candidates = [Candidate(i, tokenizer.id_to_token(i), float(p_model[i]), float(p_sampling[i])) for i in top]
    return Step(index, token_id, tokenizer.id_to_token(token_id), float(p_model[token_id]),
                float(p_sampling[token_id]), candidates)


def generate_steps(model: torch.nn.Module, tokenizer: Any, ids: list[int], settings: Settings,
                   model_lock: threading.Lock) -> Iterator[Step]:
    """Yield one Step per generated token, produced by the model's own `generate_stream`.

    A private torch.Generator seeded from settings.seed makes the tokens reproducible (and equal to
    `model.generate(..., generator=torch.Generator().manual_seed(seed))`). The logits each step
    sampled from are read with a forward hook on the LM head, so nothing is computed twice. The
    model is used only while `model_lock` is held (one step at a time), so other requests can
    interleave between steps but never run the model at the same moment.
    """
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    check_generate_args(idx, settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p)
    stream = model.generate_stream(idx, settings.max_new_tokens, settings.temperature, settings.top_k,
                                   settings.top_p, generator=generator)
    seen: list[torch.Tensor] = []

    def keep_last_logits(module, inputs, output):  # output (B, T, V): the last position is sampled from
        seen.append(output[0, -1].detach())

    for index in range(1, settings.max_new_tokens + 1):
        with model_lock:
            handle = model.lm_head.register_forward_hook(keep_last_logits)
            try:
                token = next(stream)  # (1, 1)
            finally:
                handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"expected one LM-head call per generated token, saw {len(seen)}")
        yield step_record(index, seen.pop(), int(token[0, 0]), tokenizer, settings)


# --- attention and the forward pass -------------------------------------------------------------


def head_pattern_rows(weights: torch.Tensor, tokens: list[str]) -> list[list[Any]]:
    """One table row per head: layer, head, the four pattern scores and the German pattern name."""
    return [[s.layer, s.head, round(s.previous, 3), round(s.current, 3), round(s.first, 3),
             round(s.word_start, 3), PATTERN_NAMES.get(s.pattern(), s.pattern())]
            for s in head_pattern_scores(weights, tokens)]


def attention_row(weights: torch.Tensor, layer: int, head: int | None, query: int) -> list[float]:
    """How much token `query` attends to each token 0..query: (n_layer, nh, T, T) -> query + 1 weights.
    head None averages over the heads of the layer."""
    layer_weights = weights[layer]  # (nh, T, T)
    row = layer_weights.mean(dim=0)[query] if head is None else layer_weights[head, query]  # (T,)
    return row[: query + 1].tolist()


def stage_rows(explanation: Any) -> list[list[Any]]:
    """`explain_forward` stages as table rows: block, stage, shape, letters, mean, std, first values."""
    rows = []
    for stage in explanation.stages:
        value = stage.value
        if value is None:
            numbers = ["—", "—", "(nicht einzeln berechnet)"]
        else:
            flat = value.detach().float().flatten().cpu()
            first = ", ".join(f"{x:.3g}" for x in flat[:4].tolist())
            std = f"{flat.std().item():.3g}" if flat.numel() > 1 else "—"
            numbers = [f"{flat.mean().item():.3g}", std, first + (", ..." if flat.numel() > 4 else "")]
        block = "" if stage.block is None else str(stage.block)
        rows.append([block, stage.name, str(tuple(stage.shape)), stage.symbolic, *numbers, stage.meaning])
    return rows


# --- the run directory ------------------------------------------------------------------------


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory behind a checkpoint argument: a directory with a checkpoints/ folder, or RUN
    for RUN/checkpoints/<name>.pt; None for anything else (an exported .safetensors file, a
    Hugging Face folder)."""
    path = Path(checkpoint)
    if path.is_dir():
        return path if (path / CHECKPOINT_DIR).is_dir() else None
    if path.suffix == ".pt" and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


@dataclass
class RunFiles:
    """What the Training tab shows, read from the run directory (each part may be missing)."""

    metrics: list[dict[str, Any]]
    config: dict[str, Any] | None
    samples: str | None
    skipped: int = 0  # metrics.jsonl lines that are not a JSON object (cut short while written, edited)


def read_run_files(run_dir: Path, max_sample_chars: int = 60_000) -> RunFiles:
    """metrics.jsonl (unreadable lines skipped: a run may be writing it right now), config.json and
    the end of samples.md (the newest samples) of `run_dir`."""
    metrics: list[dict[str, Any]] = []
    skipped = 0
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        try:
            lines = read_jsonl(metrics_path)  # bounded; lines that are not a JSON object are counted, not fatal
        except StructuredFileError:
            lines = JsonLines([], 1)
        metrics = [row for row in lines.rows if isinstance(row.get("step"), int)]
        skipped = lines.skipped
    config = None
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            loaded = read_json(config_path)
            config = loaded if isinstance(loaded, dict) else {"config.json": loaded}
        except StructuredFileError as err:
            config = {"Fehler": f"config.json ist nicht lesbar: {err}"}
    samples = None
    samples_path = run_dir / "samples.md"
    if samples_path.is_file():
        samples = samples_path.read_text(encoding="utf-8", errors="replace")
        if len(samples) > max_sample_chars:
            cut = samples.find("\n## ", len(samples) - max_sample_chars)  # start at a step heading
            samples = "*(ältere Samples ausgelassen)*\n\n" + samples[cut + 1 if cut >= 0 else -max_sample_chars:]
    return RunFiles(metrics, config, samples, skipped)
