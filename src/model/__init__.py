"""The model: embeddings -> n_layer x TransformerBlock -> LayerNorm -> LM head.

Files, read in this order: embeddings.py, attention.py, transformer_block.py, transformer.py;
sampling.py holds how `generate` picks each next token (greedy, temperature, top-k, top-p).
eval_mode.py is not part of the model: `evaluating`, the with-block in which the training and the
analysis code run a model (dropout off, no gradients, the random generators untouched).
weights.py is not part of the model either: which tensors a configuration implies, counted on the
meta device, so that the loaders compare a file's declared configuration with its tensors.
"""

from src.model.attention import (
    KVCache,
    MultiHeadAttention,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)
from src.model.embeddings import Embeddings
from src.model.transformer import MiniTransformer
from src.model.transformer_block import FeedForward, TransformerBlock

__all__ = [
    "Embeddings",
    "FeedForward",
    "KVCache",
    "MiniTransformer",
    "MultiHeadAttention",
    "TransformerBlock",
    "merge_heads",
    "scaled_dot_product_attention",
    "split_heads",
]
