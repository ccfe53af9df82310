"""--train --init-from DIR: fine-tune a trained model instead of starting from random weights.

DIR is a run of ours (or one of its checkpoints) or a Hugging Face GPT-2 folder (`src/hf_bridge.py`
translates it). The weights fix the model's shape (n_layer, n_head, n_embd, bias, positions) and
its tokenizer; only settings without weights of their own (block_size up to the learned one, dropout,
attention implementation) may change. The data set is then encoded with that tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from src.cli.common import UsageError


@dataclasses.dataclass
class InitFrom:
    """A trained model to fine-tune (--init-from): where it came from, its weights and its tokenizer."""

    source: str
    state: dict[str, Any]  # our parameter names (a Hugging Face folder is already translated)
    tokenizer: Any

    def load_weights(self, model: Any) -> None:
        """Copy the weights into `model`; a smaller --block-size keeps the first rows of the position table."""
        state = dict(self.state)
        name = "embeddings.position_embedding.weight"
        if name in state and state[name].shape[0] > model.config.block_size:
            state[name] = state[name][: model.config.block_size]
        model.load_state_dict(state)


# Shape settings a fine-tuned model inherits from --init-from (the weights fix them).
INHERITED_SHAPE = ("n_layer", "n_head", "n_embd", "bias", "pos_encoding",
                   "causal", "residual", "norm", "norm_position", "mlp", "tie_weights")  # the experiment switches


def load_init_from(args: argparse.Namespace, flags: dict[str, str], settings: Any,
                   stored: dict[str, Any] | None) -> InitFrom | None:
    """--init-from DIR: its model shape replaces the settings' (a given flag must agree), its tokenizer
    encodes the data. Resuming such a run takes the tokenizer from the run's own checkpoint."""
    from src.training.checkpoints import find_checkpoint, load_checkpoint, tokenizer_from_checkpoint

    if stored is not None:
        if args.init_from is not None:
            raise UsageError("--init-from: only for a new run; --resume continues with the run's own weights")
        if not stored.get("init_from"):
            return None
        return InitFrom(stored["init_from"], {}, tokenizer_from_checkpoint(stored, args.resume))
    if args.init_from is None:
        return None
    if args.preset or args.config:
        raise UsageError("--init-from: the model's shape comes from DIR; drop --preset/--config")
    for name in ("tokenizer", "max_vocab_size"):
        if getattr(args, name, None) is not None:
            raise UsageError(f"{flags[name]}: with --init-from the tokenizer comes from {args.init_from}")
    path = find_checkpoint(args.init_from)
    payload = load_checkpoint(path)
    tokenizer = tokenizer_from_checkpoint(payload, path)
    loaded = payload["model_config"]
    for name in INHERITED_SHAPE:
        given = getattr(args, name, None)
        if given is not None and given != loaded.get(name):
            raise UsageError(f"{flags[name]}: {path} has {name}={loaded.get(name)!r}; a fine-tuned model keeps the "
                             "shape of its weights (drop the flag)")
    block_size = args.block_size if args.block_size is not None else loaded["block_size"]
    if block_size > loaded["block_size"]:
        raise UsageError(f"{flags['block_size']}: {path} learned positions up to {loaded['block_size']}; choose "
                         f"at most that")
    settings.model.update({name: loaded[name] for name in INHERITED_SHAPE if name in loaded})
    settings.model["block_size"] = block_size
    for name in ("dropout", "attention"):  # no weights of their own: the flag wins, else the model's value
        if getattr(args, name, None) is None and name in loaded:
            settings.model[name] = loaded[name]
    return InitFrom(str(path), payload["model"], tokenizer)
