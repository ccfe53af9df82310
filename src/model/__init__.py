"""The model: embeddings -> n_layer x TransformerBlock -> LayerNorm -> LM head."""

from src.model.transformer import MiniTransformer

__all__ = ["MiniTransformer"]
