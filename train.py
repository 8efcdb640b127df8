"""`python train.py ...` runs the llmjepa trainer, as the upstream scripts' commands do."""

import sys

from llmjepa.cli import main

if __name__ == "__main__":
    sys.exit(main())
