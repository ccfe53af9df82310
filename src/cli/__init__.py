"""The command line `python -m src.main`: one module per mode, the parser and the settings beside them."""
