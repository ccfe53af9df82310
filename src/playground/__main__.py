"""`python -m src.playground --checkpoint RUN`: see src/playground/server.py."""

import sys

from src.playground import main

sys.exit(main())
