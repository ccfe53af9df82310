"""Seeing inside: turn attention weights, losses and embeddings into matplotlib figures.

Every public function returns a `matplotlib.figure.Figure` and never calls `plt.show()`, so the
module works with any backend (the CLI and CI use the non-interactive "Agg" backend). Functions
take tensors, a model or paths; they contain no training logic.

* `plot_attention` - heat-maps of softmax(q·kᵀ/√hs): row = the token that asks (query),
  column = the token it looks at (key). A causal model has zeros above the diagonal.
  Idea from the Annotated Transformer's `visualize_layer` (Rush 2018).
* `plot_training_curves` - train/validation loss of one or more runs, read from the TensorBoard
  event files, against optimiser step, tokens seen and wall-clock time.
* `plot_token_surprisal` - each token coloured by -log2 p(token | context) in bits: what the model
  found surprising, and what it would have written instead.
* `plot_embeddings` - a 2-D PCA of the token embeddings and the cosine similarity of the position
  embeddings (neighbouring positions should look alike).
* `plot_lr_schedule` - the learning rate at each step: a run's planned schedule and the logged values.
* `plot_model_overview` - the whole GPT as one diagram of boxes and arrows, every size and shape
  taken from a `ModelConfig` (docs/model_overview.png is drawn by `save_model_overview`).

Shape notation as in `src/model/`: B batch, T time, nh heads, V vocabulary.

Why one file of ~550 lines: every function draws one kind of picture and reads on its own; they share
the label helpers and the heat-map drawing, and the user's plan names this one module for pictures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # figures are built without pyplot: no GUI window, no global state
from matplotlib.patches import Rectangle

from src.analysis import display_token, encode_prompt, quoted_token, token_surprisal  # noqa: F401 - re-exported
from src.config import ModelConfig
from src.fileio import StructuredFileError, atomic_write, read_json, read_jsonl
from src.model.eval_mode import evaluating

# Heat-maps over more tokens than this are drawn without tick labels (they would overlap): a grid
# cell is at most 5 inches wide, a single head 12 inches (8-point labels need ~0.13 inch each).
MAX_TICK_LABELS = 48
MAX_TICK_LABELS_SINGLE_HEAD = 90
ATTENTION_CMAP = "viridis"
SURPRISAL_CMAP = "YlOrRd"


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path, dpi: int = 120, metadata: dict[str, str] | None = None) -> Path:
    """Write `fig` as an image (format from the suffix, e.g. .png) and return the path. Atomically: a
    Ctrl-C or a full disk while drawing leaves the old picture, never half a PNG. `metadata` becomes
    text entries of the file (PNG: tEXt chunks)."""
    path = Path(path)
    return atomic_write(path, lambda handle: fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=dpi,
                                                         bbox_inches="tight", metadata=metadata))


# Written into every picture of `write_visualizations`: a later --visualize may replace a picture that
# carries it, never one of the user's that merely has the same name.
PICTURE_MARK = {"Source": "mini_transformer --visualize"}


def is_our_picture(path: str | Path, max_bytes: int = 1 << 16) -> bool:
    """True for a PNG whose text chunks (before the image data) carry PICTURE_MARK. Reads at most
    `max_bytes`. A PNG is a signature and chunks: 4-byte length, 4-byte type, data, 4-byte CRC."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(max_bytes)
    except OSError:
        return False
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    wanted = b"\0".join(part.encode("latin-1") for part in next(iter(PICTURE_MARK.items())))
    pos = 8
    while pos + 8 <= len(head):
        length, kind = int.from_bytes(head[pos:pos + 4], "big"), head[pos + 4:pos + 8]
        if kind == b"IDAT":  # text chunks written by matplotlib come before the image data
            return False
        if kind == b"tEXt" and head[pos + 8:pos + 8 + length] == wanted:
            return True
        pos += 12 + length
    return False


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def prompt_ids(model: torch.nn.Module, tokenizer: Any, prompt: str) -> torch.Tensor:
    """The prompt as a (1, T) LongTensor on the model's device, cropped to the last block_size tokens."""
    ids = encode_prompt(model, tokenizer, prompt)
    return torch.tensor([ids], dtype=torch.long, device=_device_of(model))


@torch.no_grad()
def attention_for_prompt(
    model: torch.nn.Module, tokenizer: Any, prompt: str
) -> tuple[torch.Tensor, list[str]]:
    """Attention weights of every layer for `prompt` and the readable tokens.

    Returns weights of shape (n_layer, nh, T, T) on the CPU (batch index 0 of the model's
    `attention_maps`) and the T token strings.
    """
    idx = prompt_ids(model, tokenizer, prompt)
    with evaluating(model):
        maps = model.attention_maps(idx)  # (n_layer, B, nh, T, T)
    tokens = [tokenizer.id_to_token(int(i)) for i in idx[0].tolist()]
    return maps[:, 0].float().cpu(), tokens


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def _select_layer(weights: torch.Tensor, layer: int, batch_index: int) -> tuple[torch.Tensor, int]:
    """Reduce the accepted weight layouts to one layer: -> ((nh, T, T), layer index for the title)."""
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() == 5:  # (n_layer, B, nh, T, T), as returned by model.attention_maps
        weights = weights[:, batch_index]
    if weights.dim() == 4:  # (n_layer, nh, T, T)
        n_layer = weights.shape[0]
        if not -n_layer <= layer < n_layer:
            raise ValueError(
                f"layer {layer} does not exist: the weights have {n_layer} layers (0..{n_layer - 1})"
            )
        return weights[layer], layer % n_layer
    if weights.dim() == 3:  # (nh, T, T): already one layer; `layer` only labels the plot
        return weights, layer
    raise ValueError(
        "attention weights must have shape (n_layer, B, nh, T, T), (n_layer, nh, T, T) or (nh, T, T); "
        f"got {tuple(weights.shape)}"
    )


def _draw_heatmap(ax, matrix: np.ndarray, labels: Sequence[str], title: str, show_labels: bool) -> Any:
    image = ax.imshow(matrix, cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    if show_labels:
        positions = range(len(labels))
        ax.set_xticks(positions, labels, rotation=90, fontsize=8, family="monospace")
        ax.set_yticks(positions, labels, fontsize=8, family="monospace")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def _grid_columns(n_head: int) -> int:
    """Columns of the head grid: at most 4, preferring a full last row (6 heads -> 3 x 2, not 4 + 2)."""
    if n_head <= 4:
        return n_head
    return next((cols for cols in (4, 3) if n_head % cols == 0), 4)


def plot_attention(
    weights: torch.Tensor,
    tokens: Sequence[str],
    layer: int = 0,
    head: int | None = None,
    *,
    batch_index: int = 0,
) -> Figure:
    """Heat-map of attention weights: one head with token labels, or a grid of all heads.

    Args:
        weights: (n_layer, B, nh, T, T) from `model.attention_maps(idx)`, (n_layer, nh, T, T), or
            one layer's (nh, T, T). Row t holds how much query position t attends to each key.
        tokens: the T token strings (shown on both axes).
        layer: which layer to plot (negative counts from the end); for (nh, T, T) input it is
            only used in the title.
        head: plot only this head (large, labelled); None draws every head of the layer.
        batch_index: which sequence of a 5-D batch to plot.
    Returns:
        A Figure whose heat-map axes hold the weights as image data (`ax.images[0].get_array()`).
    """
    heads, layer_name = _select_layer(weights, layer, batch_index)  # (nh, T, T)
    n_head, T, T2 = heads.shape
    if T != T2:
        raise ValueError(f"attention weights must be square in the last two dimensions, got {T}x{T2}")
    if len(tokens) != T:
        raise ValueError(
            f"got {len(tokens)} tokens for attention over {T} positions; pass one token per position"
        )
    labels = [display_token(t) for t in tokens]
    if head is not None:
        if not -n_head <= head < n_head:
            raise ValueError(f"head {head} does not exist: layer has {n_head} heads (0..{n_head - 1})")
        head = head % n_head
        size = max(4.0, min(12.0, 0.3 * T + 2))
        fig = Figure(figsize=(size + 1, size))
        ax = fig.add_subplot()
        title = f"Layer {layer_name}, head {head}"
        image = _draw_heatmap(ax, heads[head].numpy(), labels, title, T <= MAX_TICK_LABELS_SINGLE_HEAD)
        ax.set_xlabel("key: token being looked at")
        ax.set_ylabel("query: token that is looking")
        fig.colorbar(image, ax=ax, label="attention weight")
        return fig

    show_labels = T <= MAX_TICK_LABELS
    cols = _grid_columns(n_head)
    rows = math.ceil(n_head / cols)
    cell = max(2.5, min(5.0, 0.18 * T + 1.5))
    fig = Figure(figsize=(cols * cell + 1, rows * cell + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= n_head:
            ax.set_axis_off()
            continue
        image = _draw_heatmap(ax, heads[h].numpy(), labels, f"head {h}", show_labels and h % cols == 0)
        if show_labels and h % cols != 0:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=8, family="monospace")
            ax.set_yticks([])
    fig.suptitle(f"Attention weights, layer {layer_name} (row = query, column = key)")
    fig.colorbar(image, ax=axes.ravel().tolist(), label="attention weight", shrink=0.8)
    return fig


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------


def load_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """All scalar series of a run's TensorBoard event files: {tag: [(step, wall_time, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ValueError(f"run directory {run_dir} does not exist")
    if run_dir.is_dir() and not any(run_dir.glob("events.out.tfevents.*")):
        raise ValueError(
            f"{run_dir} holds no TensorBoard event files (events.out.tfevents.*); is it a run directory?"
        )
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0 = keep every point
    accumulator.Reload()
    series = {}
    for tag in accumulator.Tags()["scalars"]:
        points = sorted((e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag))
        series[tag] = points
    return series


def _tokens_per_step(run_dir: Path) -> float | None:
    """Tokens per optimiser step from the run's config.json (batch_size x grad_accum x block_size)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = read_json(config_path)
        model, train = config["model"], config["train"]
        return float(train["batch_size"] * train.get("grad_accum", 1) * model["block_size"])
    except (StructuredFileError, KeyError, TypeError, AttributeError):  # damaged: the curves need no tokens axis
        return None


def _tokens_at(run_dir: Path, scalars: dict[str, list[tuple[int, float, float]]]) -> dict[int, float]:
    """A map step -> tokens seen, from metrics.jsonl, else estimated from config.json."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        seen: dict[int, float] = {}
        try:
            rows = read_jsonl(metrics).rows  # lines that are not a JSON object are skipped (metrics_note says so)
        except StructuredFileError:
            rows = []
        for record in rows:
            if isinstance(record.get("step"), int) and isinstance(record.get("tokens"), (int, float)):
                seen[record["step"]] = float(record["tokens"])
        if seen:
            return seen
    per_step = _tokens_per_step(run_dir)
    if per_step is None:
        return {}
    steps = {step for tag in ("train/loss", "val/loss") for step, _, _ in scalars.get(tag, [])}
    return {step: step * per_step for step in steps}


def plot_training_curves(run_dirs: str | Path | Iterable[str | Path]) -> Figure:
    """Train (solid) and validation (dashed) loss of one or more runs, overlaid.

    Three panels: loss against optimiser step, against tokens seen, and against wall-clock time
    since the first logged point. Each run keeps one colour; the legend shows the run's folder name.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("plot_training_curves needs at least one run directory")

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_step, ax_tokens, ax_time = fig.subplots(1, 3, sharey=True)
    colours = matplotlib.colormaps["tab10"]
    for i, run_dir in enumerate(run_dirs):
        scalars = load_scalars(run_dir)
        if "train/loss" not in scalars and "val/loss" not in scalars:
            raise ValueError(f"{run_dir} has no 'train/loss' or 'val/loss' scalars to plot")
        tokens_at = _tokens_at(run_dir, scalars)
        start = min(wall for points in scalars.values() for _, wall, _ in points)
        for tag, style, kind in (("train/loss", "-", "train"), ("val/loss", "--", "val")):
            points = scalars.get(tag, [])
            if not points:
                continue
            steps = [s for s, _, _ in points]
            values = [v for _, _, v in points]
            label = f"{run_dir.name} ({kind})"
            marker = "o" if kind == "val" else None
            colour = colours(i % 10)
            ax_step.plot(steps, values, style, color=colour, marker=marker, markersize=3, label=label)
            seconds = [wall - start for _, wall, _ in points]
            ax_time.plot(seconds, values, style, color=colour, marker=marker, markersize=3)
            with_tokens = [(tokens_at[s], v) for s, v in zip(steps, values) if s in tokens_at]
            if with_tokens:
                xs, ys = zip(*with_tokens)
                ax_tokens.plot(xs, ys, style, color=colour, marker=marker, markersize=3)
    ax_step.set_xlabel("optimiser step")
    ax_tokens.set_xlabel("tokens seen")
    ax_time.set_xlabel("wall-clock time (s)")
    ax_step.set_ylabel("cross-entropy loss (nats)")
    ax_step.set_title("Loss vs. step")
    ax_tokens.set_title("Loss vs. tokens seen")
    ax_time.set_title("Loss vs. wall-clock time")
    for ax in (ax_step, ax_tokens, ax_time):
        ax.grid(alpha=0.3)
    ax_step.legend(fontsize=8)
    return fig


def plot_ablation_curves(curves: dict[str, Sequence[tuple[int, float]]], baseline: str = "baseline") -> Figure:
    """Validation loss over the steps of every variant of an ablation experiment, in one plot.

    `curves` maps a variant name to its (step, val loss) points; the baseline is drawn thick and black
    so that every variant reads as "above or below it". Points that are NaN/inf (a diverged run) are
    left out. The y axis is cut at 1.1 x the highest starting loss, so one exploding curve does not
    flatten all others.
    """
    if not curves:
        raise ValueError("plot_ablation_curves needs at least one curve")
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"]  # ten strong colours: one per variant besides the baseline
    others = [name for name in curves if name != baseline]
    for name, points in curves.items():
        finite = [(s, v) for s, v in points if np.isfinite(v)]
        if not finite:
            continue
        steps, values = zip(*finite)
        if name == baseline:
            ax.plot(steps, values, "-", color="black", linewidth=3, label=name, zorder=10)
        else:
            colour = colours(others.index(name) % 10)
            ax.plot(steps, values, "-", color=colour, linewidth=1.5, marker="o", markersize=2, label=name)
    starts = [v for points in curves.values() for _, v in points[:1] if np.isfinite(v)]
    if starts:
        ax.set_ylim(0, 1.1 * max(starts))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_title("Ablations: validation loss of each variant (baseline thick)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


# ---------------------------------------------------------------------------------------------
# Surprisal
# ---------------------------------------------------------------------------------------------


def _layout_tokens(tokens: Sequence[str], width: int) -> list[tuple[int, int, str]]:
    """(line, column, text) for each token, wrapping at `width` characters and after newlines."""
    placed = []
    line, column = 0, 0
    for token in tokens:
        shown = display_token(token, show_spaces=False)
        if column > 0 and column + len(shown) > width:
            line, column = line + 1, 0
        placed.append((line, column, shown))
        column += max(len(shown), 1)
        if "\n" in token:
            line, column = line + 1, 0
    return placed


def plot_token_surprisal(
    model: torch.nn.Module, tokenizer: Any, text: str, *, n_worst: int = 5, width: int = 80
) -> Figure:
    """The text with every token coloured by its surprisal -log2 p(token | context) in bits.

    The first token has no context and stays grey. Below the text: the `n_worst` most surprising
    tokens with the model's top-3 guesses at that position.
    """
    result = token_surprisal(model, tokenizer, text)
    placed = _layout_tokens(result.tokens, width)
    n_lines = placed[-1][0] + 1 if placed else 1
    bits = result.bits
    norm = Normalize(vmin=0.0, vmax=max(1.0, float(max(bits)) if bits else 1.0))
    cmap = matplotlib.colormaps[SURPRISAL_CMAP]

    fig_width = 12.0
    text_height = 0.32 * n_lines + 0.6
    list_height = 0.3 * min(n_worst, len(bits)) + 0.8
    fig = Figure(figsize=(fig_width, text_height + list_height), layout="constrained")
    ax_text, ax_worst = fig.subplots(2, 1, height_ratios=[text_height, list_height])
    # A character cell is 1 data unit wide; choose the font so that `width` monospace characters fit.
    fontsize = min(12.0, fig_width * 72 * 0.85 / width / 0.6)
    for position, (line, column, shown) in enumerate(placed):
        colour = "lightgrey" if position == 0 else cmap(norm(bits[position - 1]))
        cells = max(len(shown), 1)
        ax_text.add_patch(Rectangle((column, -line - 1), cells, 0.9, facecolor=colour, edgecolor="white"))
        ax_text.text(column + cells / 2, -line - 0.55, shown, family="monospace", fontsize=fontsize,
                     va="center", ha="center")
    ax_text.set_xlim(0, width)
    ax_text.set_ylim(-n_lines - 0.1, 0.1)
    ax_text.set_axis_off()
    title = f"Surprisal per token in bits (mean {np.mean(bits) if bits else 0:.2f} bits/token)"
    if result.text_tokens > len(result.tokens):  # the model reads at most block_size tokens at once
        title += (f"\nonly the first {len(result.tokens)} of {result.text_tokens} tokens: "
                  f"the model's context is block_size = {model.config.block_size}")
    ax_text.set_title(title)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_text, label="surprisal (bits)")

    ax_worst.set_axis_off()
    n_shown = min(n_worst, len(bits))
    ax_worst.set_title(f"The {n_shown} most surprising tokens and the model's top-3 guesses", fontsize=10)
    worst = sorted(range(len(bits)), key=lambda i: -bits[i])[:n_worst]
    for row, i in enumerate(worst):
        guesses = ", ".join(f"{quoted_token(tok)} {p:.3f}" for tok, p in result.alternatives[i])
        line = f"{quoted_token(result.tokens[i + 1])}: {bits[i]:.1f} bits  ->  model expected: {guesses}"
        ax_worst.text(0.0, 1.0 - (row + 0.5) / max(len(worst), 1), line, family="monospace", fontsize=9,
                      va="center", transform=ax_worst.transAxes)
    return fig


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def position_vectors(model: torch.nn.Module) -> torch.Tensor:
    """The position embedding of every position 0..block_size-1: (block_size, C), learned or sinusoidal
    (a model with pos_encoding="none" has none: check `model.embeddings.position_embedding` first)."""
    block_size = model.config.block_size
    positions = torch.arange(block_size, device=_device_of(model))
    module = model.embeddings.position_embedding
    with torch.no_grad():
        if isinstance(module, torch.nn.Embedding):
            return module.weight.detach().float().cpu()
        if isinstance(module, torch.Tensor):
            return module.detach().float().cpu()[:block_size]
        out = module(positions)
    return out.detach().float().reshape(block_size, -1).cpu()


def _pca_2d(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the rows of `matrix` (N, C) on their two main directions.

    Returns the (N, 2) coordinates and the share of the variance each direction explains (2,).
    """
    centred = matrix - matrix.mean(dim=0, keepdim=True)
    _, singular_values, v_t = torch.linalg.svd(centred, full_matrices=False)
    variance = singular_values**2
    ratio = variance[:2] / variance.sum().clamp_min(1e-12)
    return centred @ v_t[:2].T, ratio  # (N, C) @ (C, 2) -> (N, 2)


def plot_embeddings(model: torch.nn.Module, tokenizer: Any, *, max_labels: int = 150) -> Figure:
    """Left: the token embeddings projected on their first two principal components, labelled.
    Right: cosine similarity between the position embeddings of every pair of positions.

    With more than `max_labels` tokens only the tokens farthest from the centre are labelled.
    """
    token_vectors = model.embeddings.token_embedding.weight.detach().float().cpu()  # (V, C)
    points, ratio = _pca_2d(token_vectors)
    has_positions = model.embeddings.position_embedding is not None  # pos_encoding="none": nothing to compare
    if has_positions:
        positions = position_vectors(model)  # (block_size, C)
        unit = positions / positions.norm(dim=1, keepdim=True).clamp_min(1e-12)
        similarity = unit @ unit.T  # (block_size, C) @ (C, block_size) -> (block_size, block_size)

    fig = Figure(figsize=(15, 6.5), layout="constrained")
    ax_tokens, ax_positions = fig.subplots(1, 2, width_ratios=[1.3, 1])
    ax_tokens.scatter(points[:, 0], points[:, 1], s=8, alpha=0.5)
    vocab_size = points.shape[0]
    if vocab_size <= max_labels:
        labelled = range(vocab_size)
    else:
        labelled = points.norm(dim=1).argsort(descending=True)[:max_labels].tolist()
    for i in labelled:
        label = display_token(tokenizer.id_to_token(int(i)))
        ax_tokens.annotate(label, (float(points[i, 0]), float(points[i, 1])), fontsize=7, family="monospace")
    ax_tokens.set_xlabel(f"principal component 1 ({100 * float(ratio[0]):.1f} % of variance)")
    ax_tokens.set_ylabel(f"principal component 2 ({100 * float(ratio[1]):.1f} % of variance)")
    ax_tokens.set_title(f"Token embeddings (PCA of {vocab_size} x {token_vectors.shape[1]})")
    if not has_positions:
        ax_positions.axis("off")
        ax_positions.text(0.5, 0.5, "no position embedding\n(pos_encoding='none')", ha="center", va="center")
        return fig
    image = ax_positions.imshow(similarity.numpy(), cmap="RdBu_r", vmin=-1.0, vmax=1.0,
                                interpolation="nearest")
    ax_positions.set_xlabel("position")
    ax_positions.set_ylabel("position")
    ax_positions.set_title("Cosine similarity of position embeddings")
    fig.colorbar(image, ax=ax_positions, label="cosine similarity", shrink=0.8)
    return fig


# ---------------------------------------------------------------------------------------------
# Learning rate
# ---------------------------------------------------------------------------------------------


def plot_lr_schedule(
    planned: Sequence[float], warmup_steps: int = 0, logged: Sequence[tuple[int, float]] = ()
) -> Figure:
    """The learning rate at every optimiser step 0..len(planned)-1, and optionally the logged values.

    `planned` comes from the schedule a run stores (`lr_at(step, schedule)` for every step, see
    `src/training/train_loop.py`), `logged` from the run's metrics as (step, lr) pairs: the plot only
    draws numbers, it never re-computes a schedule.
    """
    if len(planned) == 0:
        raise ValueError("planned must hold the learning rate of at least one step")
    steps = len(planned)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(steps), planned, label="plan")
    if logged:
        ax.plot([s for s, _ in logged], [lr for _, lr in logged], ".", color="tab:orange", label="logged")
    if 0 < warmup_steps < steps:
        ax.axvline(warmup_steps, color="grey", linestyle=":", label="end of warm-up")
    if logged or 0 < warmup_steps < steps:
        ax.legend()
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Learning-rate schedule ({steps} steps, peak {max(planned):.3g}, end {planned[-1]:.3g})")
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------
# The whole model in one picture
# ---------------------------------------------------------------------------------------------

# The vocabulary of the default run: the 12 books have 119 distinct characters, plus <unk> and
# <|endoftext|> (see "Schnellstart" in the README). The picture in docs/ uses it for V.
DEFAULT_RUN_VOCAB_SIZE = 121


@dataclass(frozen=True)
class OverviewStage:
    """One box of the model overview: what happens, in which file, and the shape that leaves it."""

    title: str  # what the stage does
    detail: str  # the sizes that go into it, from the config
    file: str  # where it lives in src/model/
    shape: str  # the tensor that leaves it, e.g. "(B, T, C=384)"
    in_block: bool = False  # inside the L = n_layer times repeated TransformerBlock


def model_overview_stages(config: ModelConfig) -> list[OverviewStage]:
    """The stages of `MiniTransformer.forward`, with every size taken from `config`.

    Example: for ModelConfig(vocab_size=121) the attention stage names "nh=6 Heads mit hs=64" and
    the LM head leaves "(B, T, V=121)".
    """
    C, nh, hs, V, T = config.n_embd, config.n_head, config.head_size, config.vocab_size, config.block_size
    btc = f"(B, T, C={C})"
    layer_norm = "jeder Token-Vektor auf Mittelwert 0, Streuung 1"
    return [
        OverviewStage("Token-IDs", f"ganze Zahlen 0 .. {V - 1}, T ≤ block_size = {T} Positionen",
                      "tokenizer.py, dataset.py", "(B, T)"),
        OverviewStage("Token-Embedding + Positions-Embedding",
                      f"Zeile der Tabelle ({V} x {C}) + Zeile der Tabelle ({T} x {C})", "embeddings.py", btc),
        OverviewStage("LayerNorm (ln_1)", layer_norm, "transformer_block.py", btc, True),
        OverviewStage("Maskierte Multi-Head-Attention",
                      f"nh={nh} Heads mit hs={hs}: Q, K, V je (B, nh={nh}, T, hs={hs})\n"
                      f"softmax(Q K^T / sqrt({hs})) mit kausaler Maske: (B, {nh}, T, T)", "attention.py", btc, True),
        OverviewStage("+ Residualverbindung", "x = x + Attention(ln_1(x))", "transformer_block.py", btc, True),
        OverviewStage("LayerNorm (ln_2)", layer_norm, "transformer_block.py", btc, True),
        OverviewStage("MLP", f"{C} -> {4 * C} -> GELU -> {C}, jede Position für sich", "transformer_block.py",
                      btc, True),
        OverviewStage("+ Residualverbindung", "x = x + MLP(ln_2(x))", "transformer_block.py", btc, True),
        OverviewStage("LayerNorm (ln_f)", layer_norm, "transformer.py", btc),
        OverviewStage("LM-Head (Linear C -> V)", f"({C} -> {V}), Gewicht geteilt mit dem Token-Embedding",
                      "transformer.py", f"(B, T, V={V}) Logits"),
        OverviewStage("Softmax / Kreuzentropie",
                      "Generieren: Softmax -> Wahrscheinlichkeiten -> nächstes Token (sampling.py)\n"
                      "Training: Kreuzentropie gegen y (= x um ein Token verschoben) -> Loss",
                      "transformer.py", f"(B, T, V={V}) Wahrscheinlichkeiten / Loss: eine Zahl"),
    ]


def model_overview_legend(config: ModelConfig) -> str:
    """The symbols of the picture with their values in `config` (one line)."""
    return (f"B Batch · T ≤ block_size = {config.block_size} · C = n_embd = {config.n_embd} · "
            f"nh = n_head = {config.n_head} · hs = C/nh = {config.head_size} · V = vocab_size = {config.vocab_size} · "
            f"L = n_layer = {config.n_layer}")


def plot_model_overview(config: ModelConfig) -> Figure:
    """The whole GPT in one picture: token ids -> embeddings -> L x block -> LayerNorm -> LM head -> logits.

    Every box and every shape comes from `model_overview_stages(config)`, so the picture always shows
    the model that `config` builds. `fig.overview_labels` holds all texts drawn (for tests and the
    PNG's metadata).
    """
    stages = model_overview_stages(config)
    box_h, gap, width = 0.68, 0.55, 9.0  # inches: a box, the arrow below it (with its shape label), the page
    height = len(stages) * (box_h + gap) + 1.2
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    texts: list[str] = []

    def text(x: float, y: float, s: str, **kwargs: Any) -> None:
        ax.text(x, y, s, **kwargs)
        texts.append(s)

    title = f"Das ganze GPT: {config.n_layer} Blöcke, {config.n_head} Heads, C = {config.n_embd}"
    text(width / 2, height - 0.3, title, ha="center", va="center", fontsize=13, weight="bold")
    text(width / 2, height - 0.62, model_overview_legend(config), ha="center", va="center", fontsize=9, color="0.25")
    box_x, box_w = 1.1, 5.6
    tops = [height - 1.0 - i * (box_h + gap) for i in range(len(stages))]
    block = [i for i, stage in enumerate(stages) if stage.in_block]
    if block:  # the repeated TransformerBlock: one frame around its stages
        top, bottom = tops[block[0]] + 0.24, tops[block[-1]] - box_h - 0.06
        ax.add_patch(Rectangle((0.15, bottom), box_x + box_w + 0.1, top - bottom, fill=False, linestyle="--",
                               edgecolor="tab:blue", linewidth=1.5))
        text(0.38, (top + bottom) / 2, f"L = {config.n_layer} x TransformerBlock", rotation=90, ha="center",
             va="center", fontsize=11, color="tab:blue", weight="bold")
    for i, (stage, top) in enumerate(zip(stages, tops)):
        residual = stage.title.startswith("+")
        colour = "#fde8c8" if residual else "#dbe9f6" if stage.in_block else "#eeeeee"
        ax.add_patch(Rectangle((box_x, top - box_h), box_w, box_h, facecolor=colour, edgecolor="0.3"))
        text(box_x + 0.12, top - 0.19, stage.title, va="center", fontsize=11, weight="bold")
        text(box_x + 0.12, top - 0.45, stage.detail, va="center", fontsize=8.5, linespacing=1.25)
        text(box_x + box_w + 0.3, top - box_h / 2, stage.file, va="center", fontsize=9, color="0.35",
             style="italic")
        if residual:  # the skip path: x from before the LayerNorm, around the sub-layer, into the "+"
            x_skip, y_from = box_x + box_w - 0.35, tops[i - 2] + 0.13
            ax.plot([box_x + 1.5, x_skip, x_skip], [y_from, y_from, top], color="tab:orange", linewidth=1.5)
            ax.annotate("", xy=(x_skip, top), xytext=(x_skip, top + 0.05),
                        arrowprops={"arrowstyle": "-|>", "color": "tab:orange"})
        if i + 1 < len(stages):  # the arrow to the next box, labelled with the shape that flows along it
            y0, y1 = top - box_h, tops[i + 1]
            ax.annotate("", xy=(box_x + 1.5, y1), xytext=(box_x + 1.5, y0),
                        arrowprops={"arrowstyle": "-|>", "color": "0.2"})
            text(box_x + 1.62, y0 - 0.19, stage.shape, va="center", fontsize=10, family="monospace",
                 color="tab:red")
        else:
            text(box_x + 1.62, top - box_h - 0.22, "-> " + stage.shape, va="center", fontsize=10,
                 family="monospace", color="tab:red")
    fig.overview_labels = texts  # type: ignore[attr-defined]  # what the picture says, for tests
    return fig


def save_model_overview(path: str | Path, config: ModelConfig | None = None) -> Path:
    """Draw `plot_model_overview` (default: the default model with the default run's vocabulary) to a PNG
    whose metadata ("Description") records the drawn labels as JSON, so a test can tell whether the
    committed picture still matches the config. `docs/model_overview.png` is made by this function."""
    config = config or ModelConfig(vocab_size=DEFAULT_RUN_VOCAB_SIZE)
    fig = plot_model_overview(config)
    description = json.dumps(fig.overview_labels, ensure_ascii=False)
    path = Path(path)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100,
                                                         metadata={"Description": description}))


# ---------------------------------------------------------------------------------------------
# Entry points for the CLI and the training loop
# ---------------------------------------------------------------------------------------------


def _has_losses(run_dir: Path) -> bool:
    """Whether the run's event files hold a loss curve (a run stopped before its first log has none)."""
    if not any(run_dir.glob("events.out.tfevents.*")):
        return False
    scalars = load_scalars(run_dir)
    return bool(scalars.get("train/loss") or scalars.get("val/loss"))


def write_visualizations(
    model: torch.nn.Module, tokenizer: Any, prompt: str, out_dir: str | Path, run_dir: str | Path | None = None
) -> list[Path]:
    """Write every picture for `--visualize` into `out_dir` and return the paths.

    attention_layer<i>.png for every layer (all heads), surprisal.png (of the prompt),
    embeddings.png, and training_curves.png when `run_dir` holds TensorBoard event files with losses.
    """
    out_dir = Path(out_dir)
    weights, tokens = attention_for_prompt(model, tokenizer, prompt)  # (n_layer, nh, T, T)
    curves = run_dir is not None and _has_losses(Path(run_dir))
    names = [f"attention_layer{layer}.png" for layer in range(weights.shape[0])]
    names += ["surprisal.png"] * (len(tokens) >= 2) + ["embeddings.png"] + ["training_curves.png"] * curves
    check_pictures_replaceable(out_dir, names)  # before the first picture is drawn
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in range(weights.shape[0]):
        figure = plot_attention(weights, tokens, layer)
        written.append(save_figure(figure, out_dir / f"attention_layer{layer}.png", metadata=PICTURE_MARK))
    if len(tokens) >= 2:
        written.append(save_figure(plot_token_surprisal(model, tokenizer, prompt), out_dir / "surprisal.png",
                                   metadata=PICTURE_MARK))
    written.append(save_figure(plot_embeddings(model, tokenizer), out_dir / "embeddings.png", metadata=PICTURE_MARK))
    if curves:
        written.append(save_figure(plot_training_curves([run_dir]), out_dir / "training_curves.png",
                                   metadata=PICTURE_MARK))
    return written


def check_pictures_replaceable(out_dir: Path, names: Sequence[str]) -> None:
    """ValueError naming the first of `names` in `out_dir` that exists and is not a picture of ours
    (`is_our_picture`): a user's picture of the same name is never replaced."""
    for name in names:
        path = out_dir / name
        if path.is_symlink() or (path.exists() and not (path.is_file() and is_our_picture(path))):
            raise ValueError(f"--out: {path} exists and was not written by --visualize (left untouched, as is every "
                             f"other file there); choose another --out, or move that file away")


def attention_figures(
    model: torch.nn.Module, tokenizer: Any, prompt: str, layers: Sequence[int] = (0, -1)
) -> dict[str, Figure]:
    """{"attention/layer_<i>": Figure} for the given layers (negative = from the end), for TensorBoard."""
    weights, tokens = attention_for_prompt(model, tokenizer, prompt)
    n_layer = weights.shape[0]
    figures = {}
    for layer in layers:
        index = layer % n_layer
        figures.setdefault(f"attention/layer_{index}", plot_attention(weights, tokens, index))
    return figures


def log_attention_images(
    writer: Any, model: torch.nn.Module, tokenizer: Any, prompt: str, step: int, layers: Sequence[int] = (0, -1)
) -> None:
    """Add the attention heat-maps of `layers` for `prompt` to a TensorBoard SummaryWriter at `step`."""
    for tag, fig in attention_figures(model, tokenizer, prompt, layers).items():
        writer.add_figure(tag, fig, global_step=step, close=False)


class AttentionImageHook:
    """An evaluation hook for the training loop: `hook(step, model, writer)` logs attention images.

    Example: `RunLogger(..., eval_hooks=[AttentionImageHook(tokenizer, "The cat")])` adds
    "attention/layer_0" and "attention/layer_<n_layer-1>" images at every evaluation.
    """

    def __init__(self, tokenizer: Any, prompt: str, layers: Sequence[int] = (0, -1)) -> None:
        if not tokenizer.encode(prompt):
            raise ValueError("the attention prompt is empty after tokenization; choose a non-empty prompt")
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.layers = tuple(layers)

    def __call__(self, step: int, model: torch.nn.Module, writer: Any) -> None:
        log_attention_images(writer, model, self.tokenizer, self.prompt, step, self.layers)
