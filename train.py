"""`python train.py ...` runs the llmjepa trainer, as the upstream scripts' commands do."""

import sys

try:
    from llmjepa.commands.train import main
except ModuleNotFoundError as e:
    if e.name not in ("llmjepa", "llmjepa_kernels") and not (e.name or "").startswith(("torch", "transformers")):
        raise
    print(f"train.py: error: llmjepa is not installed ({e}); run: pip install -e .", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
