"""The command lines: `python -m src.main` (one module per mode, the parser and the settings beside them),
and those of `python -m src.dataset` and `python -m src.tokenizer` (`dataset.py`, `tokenizer.py` here)."""
