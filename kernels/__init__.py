"""Triton kernels for LLM-JEPA, installed as ``llmjepa_kernels`` (never import it as ``kernels``).

When Python runs from the repository root, this folder is also importable as ``kernels``, and
transformers imports that name while probing for the Hugging Face ``kernels`` package. So this file
must stay safe to import under that name: it never imports transformers (the probe runs while
transformers itself is importing), never fails when the optional triton dependency is missing, and
never defines ``__version__`` (transformers would take it for the ``kernels`` package's version).

The transformers attention integration lives in ``llmjepa_kernels.hf_attention`` (call its
``register()``); it is not imported here for the same reason.
"""

import importlib.machinery
import importlib.util
import os
import sys

__all__ = [
    "AttentionConfig",
    "BlockCausalAttentionFunction",
    "BlockCausalLayout",
    "JepaPairLossFunction",
    "KernelConfig",
    "block_causal_attention",
    "cosine_jepa_loss",
    "default_config",
]


def _installed_kernels_took_over() -> bool:
    """Imported as `kernels` (Python runs from the repository root): where a package of that name is installed
    elsewhere on sys.path (Hugging Face's hub kernels), run it in this module's place, so that
    `from kernels import get_kernel` works from the repository root too."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module  # `import kernels` returns what sys.modules holds once this file has run
    spec.loader.exec_module(module)
    return True


if __name__ == "kernels" and _installed_kernels_took_over():
    pass  # this module is discarded; its relative imports below would resolve inside the installed package
elif importlib.util.find_spec("triton") is not None:
    from .block_causal_attention import (
        AttentionConfig,
        BlockCausalAttentionFunction,
        BlockCausalLayout,
        KernelConfig,
        block_causal_attention,
        default_config,
    )
    from .cosine_loss import JepaPairLossFunction, cosine_jepa_loss
else:

    def __getattr__(name: str):
        if name in __all__:
            raise ImportError(f"llmjepa_kernels.{name} needs triton: pip install 'llmjepa[triton]'")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
