"""The embedded default: a tiny Llama with a Llama-3-style chat tokenizer, no download needed.

`--model_name llmjepa/tiny-llama` selects it. The tokenizer (llmjepa/assets/tokenizer.json and
tokenizer_config.json, made by scripts/make_default_tokenizer.py) is a byte-level BPE trained on
the bundled arithmetic sample data (scripts/make_sample_data.py). The model has random weights
drawn from a seed: it exists so that the trainer, its tests and its benchmarks run anywhere,
offline, in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: llmjepa-train's flags read DEFAULT_MODEL_NAME without loading torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEFAULT_MODEL_NAME = "llmjepa/tiny-llama"
SAMPLE_FILES = {"train": "arith_train.jsonl", "eval": "arith_eval.jsonl"}
# What llmjepa-train and llmjepa-sweep use by default: one-digit sums the tiny model learns in minutes on a
# CPU (scripts/make_demo_data.py), scored by llmjepa-eval's "sums" scorer. The arithmetic sample above stays
# (the tokenizer was trained on it, and tests pin numbers on it), but the tiny model cannot learn it.
DEMO_FILES = {"train": "sums_train.jsonl", "eval": "sums_eval.jsonl"}
# Special tokens come first in the vocabulary (scripts/make_default_tokenizer.py), so their ids are fixed.
BOS_TOKEN_ID = 0  # <|begin_of_text|>
EOS_TOKEN_ID = 4  # <|eot_id|>


def data_path(name: str) -> Path:
    """A file in llmjepa/assets, from the source tree or an installed (unzipped) package alike."""
    path = Path(str(resources.files("llmjepa").joinpath("assets", name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: llmjepa's package data is missing (was the package built without it?)")
    return path


def sample_data_path(split: str = "train") -> Path:
    """The bundled arithmetic sample data: "train" (512 examples) or "eval" (64)."""
    if split not in SAMPLE_FILES:
        raise ValueError(f"split {split!r}: expected one of {sorted(SAMPLE_FILES)}")
    return data_path(SAMPLE_FILES[split])


def demo_data_path(split: str = "train") -> Path:
    """The bundled demo data (one-digit addition word problems): "train" (2048 examples) or "eval" (64)."""
    if split not in DEMO_FILES:
        raise ValueError(f"split {split!r}: expected one of {sorted(DEMO_FILES)}")
    return data_path(DEMO_FILES[split])


def build_default_tokenizer() -> PreTrainedTokenizerFast:
    """The default fast tokenizer, with its chat template. Llama 3 has no pad token; this one pads with
    its end-of-turn token, as upstream does for Llama 3, so that it works as it comes."""
    config = json.loads(data_path("tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("tokenizer_class")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(data_path("tokenizer.json")), **config)
    tokenizer.name_or_path = DEFAULT_MODEL_NAME
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_model_config(
    vocab_size: int, bos_token_id: int = BOS_TOKEN_ID, eos_token_id: int = EOS_TOKEN_ID
) -> LlamaConfig:
    """A Llama small enough to train on a CPU: 2 layers of width 64, grouped-query attention."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in Llama 3, so that path is exercised
        head_dim=16,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


@contextmanager
def float32_default() -> Iterator[None]:
    """Initialize in float32 even if the caller changed torch's default dtype."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_default_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """Random float32 weights that depend only on `seed`; the global RNG state is left as it was."""
    import torch
    from transformers import LlamaForCausalLM

    config = default_model_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]), float32_default():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model
