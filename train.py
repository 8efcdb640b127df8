"""`python train.py ...` runs the llmjepa trainer, as the upstream scripts' commands do."""

import os
import sys

# Python puts this script's folder first on sys.path; there the folder kernels/ (installed as llmjepa_kernels)
# would shadow an installed Hugging Face `kernels` package. llmjepa itself comes from its installation.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]

try:
    from llmjepa.cli import main
except ModuleNotFoundError as e:
    if e.name not in ("llmjepa", "llmjepa_kernels"):
        raise
    print(f"train.py: error: llmjepa is not installed ({e}); run: pip install -e {HERE}", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
