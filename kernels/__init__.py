"""Triton kernels for LLM-JEPA, installed as ``llmjepa_kernels`` (never import it as ``kernels``).

When Python runs from the repository root, this folder is also importable as ``kernels``, and
transformers imports that name while probing for the Hugging Face ``kernels`` package. So this file
must stay safe to import under that name: it never imports transformers (the probe runs while
transformers itself is importing), never fails when the optional triton dependency is missing, and
never defines ``__version__`` (transformers would take it for the ``kernels`` package's version).

The transformers attention integration lives in ``llmjepa_kernels.hf_attention`` (call its
``register()``); it is not imported here for the same reason.
"""

import importlib.util

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

if importlib.util.find_spec("triton") is not None:
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
