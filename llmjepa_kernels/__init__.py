"""Triton kernels for LLM-JEPA: block-causal attention over packed views and the fused JEPA pair loss.

The package has its own name (``llmjepa_kernels``), so it never shadows PyPI's ``kernels`` package, which
transformers probes for. Importing it never fails when the optional triton dependency is missing; the names
that need triton then raise an ImportError that says how to install it. The transformers attention
integration lives in ``llmjepa_kernels.hf_attention`` (call its ``register()``).
"""

import importlib.util

__all__ = [
    "AttentionConfig",
    "BlockCausalLayout",
    "KernelConfig",
    "block_causal_attention",
    "cosine_jepa_loss",
    "default_config",
]

if importlib.util.find_spec("triton") is not None:
    from .block_causal_attention import (
        AttentionConfig,
        BlockCausalLayout,
        KernelConfig,
        block_causal_attention,
        default_config,
    )
    from .cosine_loss import cosine_jepa_loss
else:

    def __getattr__(name: str):
        if name in __all__:
            raise ImportError(f"llmjepa_kernels.{name} needs triton: pip install 'llmjepa[triton]'")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
