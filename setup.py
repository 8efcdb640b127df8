"""llmjepa: a drop-in, fast trainer for LLM-JEPA fine-tuning."""

from setuptools import setup

setup(
    name="llmjepa",
    version="0.1.0",
    description="Drop-in, fast LLM-JEPA fine-tuning: packed views, Triton kernels, lbd=0 == SFT parity.",
    python_requires=">=3.10",
    # The Triton kernels live in the folder kernels/ but install as `llmjepa_kernels`: PyPI has a
    # package named `kernels` that transformers probes for, and we must not shadow it.
    packages=["llmjepa", "llmjepa_kernels"],
    package_dir={"llmjepa": "llmjepa", "llmjepa_kernels": "kernels"},
    package_data={"llmjepa": ["data/*.jsonl", "data/*.json"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "peft>=0.17",
        "tqdm",
        "matplotlib",
        "numpy",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        # FlashAttention 4 (CuTe DSL, pure-Python wheel; import flash_attn.cute): pre-releases only on PyPI,
        # so the bound names one to let pip pick them; the attention benchmark's GPU peer
        "flash": ["flash-attn-4>=4.0.0b1"],
        "eval": ["vllm"],  # optional: llmjepa-eval uses vLLM when installed (with CUDA), HF generate otherwise
        "test": ["pytest", "pytest-benchmark", "ruff", "triton>=3.0"],
    },
    entry_points={
        "console_scripts": [
            "llmjepa-train=llmjepa.cli:main",
            "llmjepa-parity=llmjepa.parity:main",
            "llmjepa-eval=llmjepa.evaluate:main",
            "llmjepa-sweep=llmjepa.sweep:main",
        ]
    },
)
