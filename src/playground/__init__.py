"""The playground: a local web page (Gradio) to play with a trained model.

    python -m src.playground --checkpoint runs/NAME      # then open http://127.0.0.1:7860

Type a prompt, move the temperature, watch the text stream token by token and how the candidate
distribution changes; pick a layer and head and see where a token looks; follow one forward pass
stage by stage; see the run's loss curve and samples. The page is German, the code English.

Files: core.py (the computations, no web framework), figures.py (its two own pictures), app.py
(the Gradio page), server.py (start, stop, command line).
"""

import os

# No usage statistics and no version check against gradio.app: the page must work offline and
# never reach the internet. Set before gradio is imported (it reads the variable at import time).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from src.playground.app import build_app  # noqa: E402
from src.playground.server import launch_app, main, serve  # noqa: E402

__all__ = ["build_app", "launch_app", "main", "serve"]
