"""The model overview picture (README top, notebook 02) is drawn from a ModelConfig and stays true.

`docs/model_overview.png` records the labels it shows in its PNG metadata; the test compares them with
what `save_model_overview` draws for today's default config, so a changed default (or a changed
picture) without a regenerated PNG fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from src.config import ModelConfig
from src.model import MiniTransformer
from src.visualization import (
    DEFAULT_RUN_VOCAB_SIZE,
    model_overview_stages,
    plot_model_overview,
    save_model_overview,
)

ROOT = Path(__file__).resolve().parent.parent
PICTURE = ROOT / "docs" / "model_overview.png"
REGENERATE = 'python -c "from src.visualization import save_model_overview; save_model_overview(\'docs/model_overview.png\')"'


def test_the_default_picture_shows_the_default_config():
    config = ModelConfig(vocab_size=DEFAULT_RUN_VOCAB_SIZE)
    labels = "\n".join(plot_model_overview(config).overview_labels)
    for wanted in (f"C={config.n_embd}", f"nh={config.n_head}", f"hs={config.head_size}", f"V={config.vocab_size}",
                   f"L = {config.n_layer} x TransformerBlock", f"block_size = {config.block_size}",
                   f"{config.n_embd} -> {4 * config.n_embd} -> GELU"):
        assert wanted in labels, f"{wanted!r} missing from the overview labels"
    assert (config.n_embd, config.n_head, config.head_size) == (384, 6, 64), "the README text assumes these defaults"


def test_every_number_comes_from_the_config():
    config = ModelConfig(vocab_size=50, block_size=32, n_layer=3, n_head=4, n_embd=96)
    labels = "\n".join(plot_model_overview(config).overview_labels)
    for wanted in ("C=96", "nh=4", "hs=24", "V=50", "L = 3 x TransformerBlock", "96 -> 384 -> GELU", "(32 x 96)"):
        assert wanted in labels, f"{wanted!r} missing"
    assert "C=384" not in labels and "V=121" not in labels and "hs=64" not in labels


def test_the_recorded_labels_are_the_drawn_texts():
    fig = plot_model_overview(ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8))
    drawn = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text()]  # arrows are empty annotations
    assert drawn == fig.overview_labels


def test_the_stages_follow_the_forward_pass_and_their_shapes_match_the_real_tensors():
    config = ModelConfig(vocab_size=11, n_layer=2, n_head=2, n_embd=16, block_size=8)
    stages = model_overview_stages(config)
    titles = [s.title.split(" ")[0] for s in stages]
    assert titles == ["Token-IDs", "Token-Embedding", "LayerNorm", "Maskierte", "+", "LayerNorm", "MLP", "+",
                      "LayerNorm", "LM-Head", "Softmax"]
    assert all((ROOT / "src" / name.strip()).exists() or (ROOT / "src" / "model" / name.strip()).exists()
               for stage in stages for name in stage.file.split(",")), "a stage names a file that does not exist"

    model = MiniTransformer(config).eval()
    block = model.blocks[0]
    modules = [None, model.embeddings, block.ln_1, block.attn, None, block.ln_2, block.mlp, None, model.ln_f,
               model.lm_head, None]
    outputs: dict[int, torch.Size] = {}

    def record(index: int):
        def hook(_module, _inputs, out) -> None:  # returns None: the output itself stays untouched
            outputs.setdefault(index, out.shape)
        return hook

    for index, module in enumerate(modules):
        if module is not None:
            module.register_forward_hook(record(index))
    B, T = 3, 5
    model(torch.randint(0, config.vocab_size, (B, T)))
    assert len(outputs) == 7, "every hooked stage ran"
    for index, shape in outputs.items():
        last = int(re.search(r"=(\d+)\)", stages[index].shape).group(1))  # "(B, T, C=16)" -> 16
        assert tuple(shape) == (B, T, last), f"{stages[index].title}: drawn {stages[index].shape}, real {tuple(shape)}"


def test_the_committed_picture_matches_the_default_config(tmp_path):
    regenerated = save_model_overview(tmp_path / "overview.png")
    assert regenerated.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wanted = Image.open(regenerated).text["Description"]
    assert json.loads(wanted) == plot_model_overview(ModelConfig(vocab_size=DEFAULT_RUN_VOCAB_SIZE)).overview_labels
    assert PICTURE.exists(), f"docs/model_overview.png is missing; regenerate it: {REGENERATE}"
    assert PICTURE.stat().st_size < 200_000, "keep the picture small (< 200 KB) for the README"
    assert Image.open(PICTURE).text.get("Description") == wanted, (
        f"docs/model_overview.png no longer matches the default config; regenerate it: {REGENERATE}")
