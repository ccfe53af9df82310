"""Tests for src/visualization.py: every plot returns a Figure whose axes hold the right data."""

from __future__ import annotations

import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from src.analysis import token_surprisal
from src.config import ModelConfig, TrainConfig
from src.model import MiniTransformer
from src.tokenizer import CharTokenizer
from src.visualization import (
    SURPRISAL_CMAP,
    AttentionImageHook,
    attention_for_prompt,
    display_token,
    load_scalars,
    plot_attention,
    plot_embeddings,
    plot_lr_schedule,
    plot_token_surprisal,
    plot_training_curves,
    position_vectors,
    quoted_token,
    write_visualizations,
)
from tests.conftest import make_story

TEXT = make_story(4, seed=3)
PROMPT = "The cat sees the moon."


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(TEXT, max_vocab_size=48)


@pytest.fixture
def model(tokenizer) -> MiniTransformer:
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=3, n_embd=24, dropout=0.1)
    return MiniTransformer(config)


def _heatmap_axes(fig: Figure) -> list:
    """The axes that show attention heat-maps (colour bars and empty grid cells excluded)."""
    return [ax for ax in fig.axes if ax.images and ax.get_title()]


def test_display_token_docstring_example():
    assert display_token(" a\n") == "␣a↵"
    assert display_token(" a\n\x1c") == "␣a↵\\x1c"  # a control byte has no glyph: written as \x1c
    assert display_token("a b\r", show_spaces=False) == "a b\\x0d"
    assert quoted_token("\\xe2\\x80") == "'\\xe2\\x80'"  # one backslash each, unlike repr()


def test_bpe_labels_are_printable_and_lines_show_single_backslashes(tmp_path):
    """A byte-level BPE vocabulary holds control bytes (0x00-0x1f) and pieces of UTF-8 characters."""
    from src.tokenizer import BPETokenizer

    text = "Die Tür – „Grüße“ – öffnete sich. " * 30
    tokenizer = BPETokenizer.train(text, vocab_size=280)
    model = MiniTransformer(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2,
                                        n_embd=16))
    fig = plot_embeddings(model, tokenizer, max_labels=tokenizer.vocab_size)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert len(labels) == tokenizer.vocab_size and all(label.isprintable() for label in labels)
    assert "\\x1c" in labels  # byte 0x1c, drawn as text instead of a missing-glyph box

    fig = plot_token_surprisal(model, tokenizer, "Die Tür – „Grüße“", n_worst=20)
    worst_ax = next(ax for ax in fig.axes if "most surprising" in ax.get_title())
    lines = [t.get_text() for t in worst_ax.texts]
    assert any("\\x" in line for line in lines)  # byte pieces of "–" or "„" are among the tokens
    assert not any("\\\\" in line for line in lines), "repr() doubled the backslashes"


def test_surprisal_title_says_when_the_text_was_cut_to_the_context(tokenizer):
    model = MiniTransformer(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2,
                                        n_embd=16))
    fig = plot_token_surprisal(model, tokenizer, PROMPT)
    title = next(ax.get_title() for ax in fig.axes if ax.get_title().startswith("Surprisal per token"))
    assert f"only the first 9 of {len(tokenizer.encode(PROMPT))} tokens" in title and "block_size = 8" in title
    fig = plot_token_surprisal(model, tokenizer, PROMPT[:9])  # 9 tokens = block_size + 1: nothing cut
    title = next(ax.get_title() for ax in fig.axes if ax.get_title().startswith("Surprisal per token"))
    assert "only the first" not in title


def test_attention_grid_shows_every_head_and_is_zero_above_the_diagonal(model, tokenizer):
    weights, tokens = attention_for_prompt(model, tokenizer, PROMPT)  # (n_layer, nh, T, T)
    T = len(tokenizer.encode(PROMPT))
    assert weights.shape == (2, 3, T, T) and len(tokens) == T
    fig = plot_attention(weights, tokens, layer=1)
    assert isinstance(fig, Figure)
    axes = _heatmap_axes(fig)
    assert [ax.get_title() for ax in axes] == ["head 0", "head 1", "head 2"]
    assert "layer 1" in fig._suptitle.get_text()
    for h, ax in enumerate(axes):
        data = np.asarray(ax.images[0].get_array())
        np.testing.assert_array_equal(data, weights[1, h].numpy())
        assert np.all(np.triu(data, k=1) == 0.0), "a causal model must not attend to the future"
        np.testing.assert_allclose(data.sum(axis=1), 1.0, rtol=1e-5)
    assert [t.get_text() for t in axes[0].get_yticklabels()] == [display_token(t) for t in tokens]


@pytest.mark.parametrize("n_head, rows, cols", [(2, 1, 2), (6, 2, 3), (8, 2, 4), (12, 3, 4), (5, 2, 4)])
def test_attention_grid_of_many_heads_has_no_needless_empty_cells(n_head, rows, cols):
    T = 5
    weights = torch.tril(torch.ones(n_head, T, T))
    weights = weights / weights.sum(-1, keepdim=True)  # (nh, T, T), causal average
    fig = plot_attention(weights, list("abcde"), layer=0)
    heads = _heatmap_axes(fig)
    assert [ax.get_title() for ax in heads] == [f"head {h}" for h in range(n_head)]
    grid = heads[0].get_subplotspec().get_gridspec()
    assert (grid.nrows, grid.ncols) == (rows, cols)


def test_attention_single_head_has_token_labels_on_both_axes(model, tokenizer):
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    maps = model.attention_maps(idx)  # (n_layer, B, nh, T, T) straight from the model
    tokens = [tokenizer.id_to_token(i) for i in idx[0].tolist()]
    fig = plot_attention(maps, tokens, layer=-1, head=2)
    ax = _heatmap_axes(fig)[0]
    assert ax.get_title() == "Layer 1, head 2"
    assert "query" in ax.get_ylabel() and "key" in ax.get_xlabel()
    labels = [display_token(t) for t in tokens]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), maps[1, 0, 2].numpy())


def test_attention_labels_a_long_prompt_in_the_single_head_view_only():
    T = 63  # notebook 02's sentence: too many labels for a grid cell, fine for one large head
    weights = torch.tril(torch.ones(2, T, T))
    weights = weights / weights.sum(-1, keepdim=True)  # (nh, T, T)
    tokens = [chr(ord("a") + t % 26) for t in range(T)]
    grid = _heatmap_axes(plot_attention(weights, tokens, layer=0))
    assert all(len(ax.get_yticklabels()) == 0 for ax in grid)
    single = _heatmap_axes(plot_attention(weights, tokens, layer=0, head=1))[0]
    assert [t.get_text() for t in single.get_yticklabels()] == tokens
    assert [t.get_text() for t in single.get_xticklabels()] == tokens


def test_attention_rejects_wrong_input(model, tokenizer):
    weights, tokens = attention_for_prompt(model, tokenizer, PROMPT)
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(weights, tokens[:-1], layer=0)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        plot_attention(weights, tokens, layer=5)
    with pytest.raises(ValueError, match="head 3 does not exist"):
        plot_attention(weights, tokens, layer=0, head=3)
    with pytest.raises(ValueError, match="shape"):
        plot_attention(weights[0, 0, 0], tokens, layer=0)


def test_token_surprisal_colours_each_token_by_its_bits(model, tokenizer):
    fig = plot_token_surprisal(model, tokenizer, TEXT[:60], n_worst=4)
    result = token_surprisal(model, tokenizer, TEXT[:60])
    text_ax = next(ax for ax in fig.axes if ax.get_title().startswith("Surprisal per token"))
    boxes = [p for p in text_ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == len(result.tokens)
    assert "".join(t.get_text() for t in text_ax.texts) == TEXT[:len(result.tokens)].replace("\n", "↵")
    cmap = matplotlib.colormaps[SURPRISAL_CMAP]
    vmax = max(1.0, max(result.bits))
    for box, bits in zip(boxes[1:], result.bits):
        np.testing.assert_allclose(box.get_facecolor(), cmap(bits / vmax), atol=1e-6)
    worst_ax = next(ax for ax in fig.axes if "most surprising" in ax.get_title())
    assert len(worst_ax.texts) == 4 and all("model expected" in t.get_text() for t in worst_ax.texts)
    assert any(ax.get_ylabel() == "surprisal (bits)" for ax in fig.axes)  # the colour bar


def test_embeddings_plot_pca_and_position_similarity(model, tokenizer):
    fig = plot_embeddings(model, tokenizer)
    pca_ax, position_ax = fig.axes[0], fig.axes[1]
    assert "principal component 1" in pca_ax.get_xlabel() and "PCA" in pca_ax.get_title()
    assert len(pca_ax.texts) == tokenizer.vocab_size  # every token labelled in a small vocabulary
    assert len(pca_ax.collections[0].get_offsets()) == tokenizer.vocab_size
    similarity = np.asarray(position_ax.images[0].get_array())
    block_size = model.config.block_size
    assert similarity.shape == (block_size, block_size)
    np.testing.assert_allclose(np.diag(similarity), 1.0, atol=1e-5)
    np.testing.assert_allclose(similarity, similarity.T, atol=1e-6)
    assert position_ax.get_title() == "Cosine similarity of position embeddings"


def test_position_vectors_of_a_sinusoidal_model_are_its_table(tokenizer):
    from src.model.embeddings import sinusoidal_table

    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8,
                         pos_encoding="sinusoidal")
    scaled = sinusoidal_table(16, 8) * 0.02 * math.sqrt(2)  # scaled to the token vectors' size (embeddings.py)
    torch.testing.assert_close(position_vectors(MiniTransformer(config)), scaled)


def test_lr_schedule_plot_shows_warmup_and_decay():
    from src.training.train_loop import LRSchedule, lr_at

    schedule = LRSchedule.plan(TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10), 110)
    fig = plot_lr_schedule([lr_at(s, schedule) for s in range(110)], warmup_steps=10, logged=[(5, 6e-4), (50, 7e-4)])
    ax = fig.axes[0]
    steps, lrs = ax.lines[0].get_data()
    assert list(steps) == list(range(110))
    assert max(lrs) == pytest.approx(1e-3) and np.argmax(lrs) == 9  # the peak ends the warm-up
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[10:]) <= 0)
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)
    assert ax.get_xlabel() == "optimiser step" and ax.get_ylabel() == "learning rate"
    assert [list(v) for v in ax.lines[1].get_data()] == [[5, 50], [6e-4, 7e-4]]  # the logged points
    with pytest.raises(ValueError, match="at least one step"):
        plot_lr_schedule([])


def _write_run(run_dir, train_points, val_points, tokens_per_step):
    """A run directory written by TensorBoard's real SummaryWriter plus a metrics.jsonl."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    rows = []
    for step, value in train_points:
        writer.add_scalar("train/loss", value, step)
        rows.append({"step": step, "tokens": step * tokens_per_step, "train/loss": value})
    for step, value in val_points:
        writer.add_scalar("val/loss", value, step)
        rows.append({"step": step, "tokens": step * tokens_per_step, "val/loss": value})
    writer.close()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_training_curves_overlay_runs_from_event_files(tmp_path):
    train_a, val_a = [(1, 4.0), (5, 3.0), (10, 2.5)], [(5, 3.2), (10, 2.9)]
    train_b, val_b = [(1, 4.2), (10, 2.0)], [(10, 2.6)]
    _write_run(tmp_path / "run_a", train_a, val_a, tokens_per_step=64)
    _write_run(tmp_path / "run_b", train_b, val_b, tokens_per_step=128)
    assert [v for _, _, v in load_scalars(tmp_path / "run_a")["val/loss"]] == pytest.approx([3.2, 2.9])

    fig = plot_training_curves([tmp_path / "run_a", tmp_path / "run_b"])
    ax_step, ax_tokens, ax_time = fig.axes
    assert [ax.get_xlabel() for ax in fig.axes] == ["optimiser step", "tokens seen", "wall-clock time (s)"]
    assert ax_step.get_ylabel().startswith("cross-entropy loss")
    labels = [t.get_text() for t in ax_step.get_legend().get_texts()]
    assert labels == ["run_a (train)", "run_a (val)", "run_b (train)", "run_b (val)"]
    lines = {line.get_label(): line for line in ax_step.lines}
    assert list(lines["run_a (val)"].get_xdata()) == [5, 10]
    assert list(lines["run_a (val)"].get_ydata()) == pytest.approx([3.2, 2.9])
    assert list(ax_tokens.lines[2].get_xdata()) == [128, 1280]  # run_b train: steps x 128 tokens
    assert all(x >= 0 for line in ax_time.lines for x in line.get_xdata())


def test_training_curves_reject_a_folder_without_events(tmp_path):
    with pytest.raises(ValueError, match="no TensorBoard event files"):
        plot_training_curves(tmp_path)


def test_write_visualizations_writes_pngs(model, tokenizer, tmp_path):
    written = write_visualizations(model, tokenizer, PROMPT, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["attention_layer0.png", "attention_layer1.png", "embeddings.png", "surprisal.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_visualizations_skips_curves_of_a_run_without_losses(model, tokenizer, tmp_path):
    """A run stopped before its first log has an event file without scalars: no curves, no error."""
    from torch.utils.tensorboard import SummaryWriter

    SummaryWriter(log_dir=str(tmp_path / "run")).close()
    written = write_visualizations(model, tokenizer, PROMPT, tmp_path / "out", run_dir=tmp_path / "run")
    assert "training_curves.png" not in [p.name for p in written] and "embeddings.png" in [p.name for p in written]


def test_attention_hook_logs_first_and_last_layer_to_tensorboard(model, tokenizer, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    hook = AttentionImageHook(tokenizer, PROMPT)
    hook(7, model, writer)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["attention/layer_0", "attention/layer_1"]
    assert [image.step for image in events.Images("attention/layer_1")] == [7]


def test_training_curves_of_a_real_training_run(tmp_path):
    """A tiny run of the real CLI writes the event files; the plotted points are its logged losses."""
    from src.main import main
    from src.training.checkpoints import load_model
    from tests.conftest import wrap_paragraphs, write_gutenberg_mirror

    mirror = write_gutenberg_mirror(tmp_path / "mirror", {11: wrap_paragraphs(make_story(20, seed=1)),
                                                          74: wrap_paragraphs(make_story(20, seed=2))})
    run_dir = tmp_path / "runs" / "tiny"
    exit_code = main(["--train", "--books", "11", "74", "--mirror", str(mirror), "--data-dir", str(tmp_path / "data"),
                      "--logdir", str(run_dir), "--device", "cpu", "--quiet", "--n-layer", "1", "--n-head", "2",
                      "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--max-steps", "12",
                      "--warmup-steps", "2", "--eval-interval", "6", "--eval-batches", "1", "--log-interval", "3",
                      "--sample-tokens", "0"])
    assert exit_code == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    logged_val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    logged_train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert len(logged_val) >= 2 and len(logged_train) >= 3

    fig = plot_training_curves(run_dir)
    ax_step, ax_tokens, _ = fig.axes
    lines = {line.get_label(): line for line in ax_step.lines}
    for kind, logged in (("val", logged_val), ("train", logged_train)):
        line = lines[f"tiny ({kind})"]
        assert list(line.get_xdata()) == [step for step, _ in logged]
        assert list(line.get_ydata()) == pytest.approx([loss for _, loss in logged], rel=1e-6)
    tokens_by_step = {r["step"]: r["tokens"] for r in rows}
    assert list(ax_tokens.lines[1].get_xdata()) == [tokens_by_step[s] for s, _ in logged_val]

    model, tokenizer = load_model(run_dir)
    written = write_visualizations(model, tokenizer, "The cat", tmp_path / "pictures", run_dir=run_dir)
    assert "training_curves.png" in [p.name for p in written]
