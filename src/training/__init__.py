"""Training: the loop (`train_loop.py`) and its helpers (`utils.py`: seeds, devices, checkpoints)."""
