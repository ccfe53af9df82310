"""The playground's own two pictures (the others come from `src.visualization`):

* `candidate_figure` - the top candidates of one generation step as pairs of bars: the model's
  probability (softmax of the raw logits) and the probability the sampler actually drew from
  (after temperature, top-k and top-p). The gap between the two is what the knobs do.
* `training_figure` - loss and learning rate over the optimiser steps, from a run's metrics.jsonl.

Like `src.visualization`, figures are built without pyplot (no GUI, no global state). Labels are
German: they are shown in the web page.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from src.playground.core import Settings, Step, display_token

MODEL_COLOUR, SAMPLING_COLOUR, CHOSEN_COLOUR = "#9aa5b1", "#e4572e", "#1b998b"


def candidate_figure(step: Step, settings: Settings) -> Figure:
    """Horizontal bar pairs for step.candidates, likeliest on top; the chosen token is marked."""
    candidates = step.candidates
    n = len(candidates)
    fig = Figure(figsize=(7.5, 0.42 * n + 1.4), layout="constrained")
    ax = fig.add_subplot()
    rows = range(n)
    ax.barh([r - 0.2 for r in rows], [c.p_model for c in candidates], height=0.4, color=MODEL_COLOUR,
            label="vorher: Modell (Softmax der Logits)")
    ax.barh([r + 0.2 for r in rows], [c.p_sampling for c in candidates], height=0.4, color=SAMPLING_COLOUR,
            label="nachher: Verteilung beim Ziehen")
    labels = [f"'{display_token(c.token)}'" + ("  ◀ gewählt" if c.token_id == step.token_id else "")
              for c in candidates]
    ax.set_yticks(list(rows), labels, family="monospace", fontsize=9)
    for tick, c in zip(ax.get_yticklabels(), candidates, strict=True):
        if c.token_id == step.token_id:
            tick.set_color(CHOSEN_COLOUR)
            tick.set_fontweight("bold")
    ax.invert_yaxis()  # the likeliest candidate on top
    largest = max(max(c.p_model, c.p_sampling) for c in candidates)
    ax.set_xlim(0, min(1.0, 1.15 * largest + 0.02))  # an untrained model spreads its mass thinly
    ax.set_xlabel("Wahrscheinlichkeit")
    ax.set_title(f"Schritt {step.index}: Kandidaten ({settings.describe()})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def training_figure(metrics: list[dict[str, Any]]) -> Figure | None:
    """Loss (training and validation) and learning rate against the step; None without any data."""
    train = [(r["step"], r["train/loss"]) for r in metrics if isinstance(r.get("train/loss"), (int, float))]
    val = [(r["step"], r["val/loss"]) for r in metrics if isinstance(r.get("val/loss"), (int, float))]
    lr = [(r["step"], r["lr"]) for r in metrics if isinstance(r.get("lr"), (int, float))]
    if not (train or val or lr):
        return None
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2, width_ratios=[1.6, 1])
    if train:
        ax_loss.plot([s for s, _ in train], [v for _, v in train], label="Training")
    if val:
        ax_loss.plot([s for s, _ in val], [v for _, v in val], "o--", markersize=4, label="Validierung")
    ax_loss.set_xlabel("Schritt")
    ax_loss.set_ylabel("Loss (Kreuzentropie, nats)")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    if train or val:
        ax_loss.legend(fontsize=8)
    if lr:
        ax_lr.plot([s for s, _ in lr], [v for _, v in lr], color="tab:green")
    ax_lr.set_xlabel("Schritt")
    ax_lr.set_title("Lernrate")
    ax_lr.grid(alpha=0.3)
    return fig
