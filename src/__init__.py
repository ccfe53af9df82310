"""mini_transformer: a small, readable, decoder-only (GPT-like) Transformer written from scratch."""

__version__ = "0.1.0"
