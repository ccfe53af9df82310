"""Errors that name a file the user gave us and what is wrong with it.

They are `ValueError`s, so the command line turns each into one line and exit code 2 (no traceback).
They live here, below every other module, because both the checkpoint code and the Hugging Face
bridge raise them and import each other's functions.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or model folder is missing, corrupt, truncated or does not fit the model/tokenizer."""
