"""Loading the model and tokenizer: the embedded default, or any local Hugging Face checkpoint."""

import os
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .errors import UserError
from .tokens import EOT, MAX_PREDICTORS, PERCEPTION, predictor_tokens

PREDICTOR_TOKENS = predictor_tokens(MAX_PREDICTORS)
# Tokens upstream adds when missing (Llama-3 chat markers, predictors, perception).
EXTRA_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", EOT, *PREDICTOR_TOKENS, PERCEPTION]


@dataclass
class ModelSpec:
    model_name: str
    pretrain: bool = False  # random weights from the checkpoint's config
    lora: bool = False
    lora_rank: int = 16
    lora_target_modules: str | None = None  # None: upstream's projections; "all-linear"; or "q_proj,v_proj"
    lora_train_new_tokens: bool = True  # the embedding rows of llmjepa's tokens train under LoRA (new_token_ids)
    dtype: str = "float32"
    seed: int = 42
    attn_implementation: str = "sdpa"


def load_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    from .default_model import DEFAULT_MODEL_NAME, build_default_tokenizer

    if model_name == DEFAULT_MODEL_NAME:
        tokenizer = build_default_tokenizer()
    else:
        if not os.path.isdir(model_name) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise UserError(f"--model_name {model_name}: no such local directory (and HF_HUB_OFFLINE=1)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_name)
        except (OSError, ValueError) as e:
            raise UserError(f"--model_name {model_name}: cannot load a tokenizer ({str(e).splitlines()[0]})") from e
    missing = [t for t in EXTRA_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.llmjepa_added_tokens = missing  # new_token_ids: their rows train under LoRA
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # upstream: pad = eos when there is none
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError(f"--model_name {model_name}: the tokenizer has no chat template")
    quiet_length_warning(tokenizer)
    return tokenizer


def quiet_length_warning(tokenizer: PreTrainedTokenizerBase) -> None:
    """Silence transformers' "sequence length is longer than the specified maximum ... will result in
    indexing errors": llmjepa truncates at --max_length itself and counts the truncations in its own
    warning. (The tokenizer marks that warning as given; we mark it before it is.)"""
    warned = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warned, dict):
        warned["sequence-length-is-longer-than-the-specified-maximum"] = True


def load_model(spec: ModelSpec | str, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """The model of `spec` (a ModelSpec, or a name: a local checkpoint folder or llmjepa/tiny-llama), its
    embeddings sized for `tokenizer` (from load_tokenizer, which adds the predictor tokens)."""
    from .default_model import DEFAULT_MODEL_NAME, build_default_model

    if isinstance(spec, str):
        spec = ModelSpec(spec)
    dtype = getattr(torch, spec.dtype)
    if spec.model_name == DEFAULT_MODEL_NAME:
        model = build_default_model(tokenizer, seed=spec.seed).to(dtype)
    else:
        try:
            if spec.pretrain:
                config = AutoConfig.from_pretrained(spec.model_name)
                torch.manual_seed(spec.seed)
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(spec.model_name, dtype=dtype)
        except (OSError, ValueError) as e:
            raise UserError(f"--model_name {spec.model_name}: cannot load ({str(e).splitlines()[0]})") from e
    model.set_attn_implementation(spec.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    set_pad_token_id(model, tokenizer.pad_token_id)
    if spec.lora:
        tokens = new_token_ids(tokenizer) if spec.lora_train_new_tokens else []
        model = add_lora(model, spec.lora_rank, spec.lora_target_modules, tokens)
    return model


UPSTREAM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def new_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens llmjepa brings: the predictors and <|perception|> (never pre-trained), and the chat markers
    load_tokenizer added to a checkpoint's tokenizer that lacked them. Their embedding rows start untrained."""
    vocab = tokenizer.get_vocab()
    names = [*PREDICTOR_TOKENS, PERCEPTION, *getattr(tokenizer, "llmjepa_added_tokens", [])]
    return sorted({vocab[name] for name in names if name in vocab})


def add_lora(
    model: torch.nn.Module, rank: int, target_modules: str | None = None, token_ids: list[int] | None = None
) -> torch.nn.Module:
    """Upstream's LoRA: r, alpha 2r, dropout 0.1 on the attention and MLP projections (or `target_modules`:
    "all-linear", or names joined by commas); the embedding rows of `token_ids` train too (peft's
    trainable_token_indices; the LM head's rows with them where the weights are tied)."""
    from peft import LoraConfig, get_peft_model

    if target_modules is None:
        targets: str | list[str] = UPSTREAM_LORA_TARGETS
    elif target_modules == "all-linear":
        targets = target_modules
    else:
        targets = [name.strip() for name in target_modules.split(",") if name.strip()]
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.1,
        target_modules=targets,
        trainable_token_indices=token_ids or None,
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules the model does not have
        raise UserError(f"--lora_target_modules {target_modules}: {' '.join(str(e).split())}") from None
    model.enable_input_require_grads()  # gradient checkpointing needs inputs that require grad
    return model


def add_missing_tokens(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module, tokens: list[str]) -> None:
    """The library path: add the tokens a view config needs (predictors; --plain's markers) when the
    tokenizer lacks them, and resize the model's embeddings to match; pad = eos when there is no pad."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # upstream: pad = eos when there is none
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)  # None under peft's token wrapper: sized when loaded
    if rows is not None and rows < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    set_pad_token_id(model, tokenizer.pad_token_id)
    quiet_length_warning(tokenizer)


def set_pad_token_id(model: torch.nn.Module, pad_token_id: int | None) -> None:
    """The tokenizer's pad id in the model's config and generation config where they have none (else the
    Trainer aligns them itself, with a warning at every start)."""
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = pad_token_id


def save_merged(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> None:
    """--merge_lora: the adapters (and the trained token rows) merged into the base weights, saved as a plain
    model that loads without peft."""
    merged = model.merge_and_unload()
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
