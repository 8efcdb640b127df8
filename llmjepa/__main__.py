"""`python -m llmjepa ...` runs the trainer, as `llmjepa-train ...` does (so `accelerate launch -m llmjepa` works)."""

import sys

from .commands.train import main

if __name__ == "__main__":
    sys.exit(main())
