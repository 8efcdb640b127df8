"""Loading a model to evaluate: the embedded default, a local checkpoint, or a LoRA adapter folder."""

import json
import os

import torch
from transformers import PreTrainedTokenizerBase

from ..errors import UserError
from ..model import ModelSpec, load_model, load_tokenizer


def has_tokenizer(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "tokenizer_config.json"))


def adapter_base_name(path: str, adapter_base: str | None) -> str:
    config = json.loads(open(os.path.join(path, "adapter_config.json"), encoding="utf-8").read())
    base = adapter_base or config.get("base_model_name_or_path")
    if not base:
        raise UserError(
            f"{path}: a LoRA adapter whose adapter_config.json names no base model: give --adapter_base "
            "(llmjepa/tiny-llama with the training run's --seed for the embedded default)"
        )
    return base


def load_eval_model(
    name: str, dtype: str, seed: int, adapter_base: str | None, device: torch.device
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """(model in eval mode on device, tokenizer). An adapter is merged into its base; the embedded
    default's random weights come from `seed` (a training run's --seed gives its starting weights)."""
    is_adapter = os.path.isfile(os.path.join(name, "adapter_config.json"))
    base = adapter_base_name(name, adapter_base) if is_adapter else name
    tokenizer = load_tokenizer(name if has_tokenizer(name) else base)
    tokenizer.padding_side = "left"
    model = load_model(ModelSpec(base, dtype=dtype, seed=seed), tokenizer)
    if is_adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, name).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{name}: cannot apply the adapter to {base} ({str(e).splitlines()[0]})") from e
    return model.to(device).eval(), tokenizer
