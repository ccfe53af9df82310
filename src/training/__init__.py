"""Training: the learner's loop (`train_loop.py`, with `utils.py`: seeds, random-generator state, devices,
precision) and the run around it (`trainer.py`, `callbacks.py`, `checkpoints.py`, `evaluation.py`, ...)."""
