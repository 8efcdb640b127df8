"""Batched generation for evaluation: prompts as training renders them, left padding, HF generate
or vLLM, hellaswag's next-token choice, and the embeddings of upstream's similarity diagnostic."""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from ..errors import UserError
from ..tokens import EOT
from ..views.encoding import ViewConfig, render, template_options, tokenize, view1_messages

CHOICES = ("A", "B", "C", "D")


@dataclass
class GenerationSettings:
    """Greedy by default (upstream's effective behaviour: its GenerationConfig was never passed)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    num_beams: int = 1
    seed: int = 0

    def hf_config(self, eos_ids: list[int], pad_id: int) -> GenerationConfig:
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or None}
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            num_beams=self.num_beams,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            use_cache=True,  # a checkpoint saved after gradient checkpointing has use_cache false in its config
            **(sampling if self.do_sample else {}),
        )

    def as_dict(self) -> dict:
        return asdict(self)

    def decoding(self) -> dict:
        """The decoding that ran, for summary.json: greedy or beam search records no temperature, top_p or
        top_k (they play no part); sampling records them, with its seed."""
        kind = "sample" if self.do_sample else ("beam" if self.num_beams > 1 else "greedy")
        record = {"decoding": kind, "max_new_tokens": self.max_new_tokens}
        record["repetition_penalty"] = self.repetition_penalty
        if self.num_beams > 1:
            record["num_beams"] = self.num_beams
        if self.do_sample:
            record.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        return record


# ---- prompts --------------------------------------------------------------------------------
def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], cfg: ViewConfig) -> list[int]:
    """The prompt training used for this example (views.encode): the chat template of every message
    but the answer with the generation prompt (or upstream's --plain form: user <|perception|>)."""
    prompt_messages = view1_messages(messages, cfg)[:-1]
    return tokenize(tokenizer, render(tokenizer, prompt_messages, cfg, generation_prompt=True), cfg)


def single_message_ids(tokenizer: PreTrainedTokenizerBase, message: dict, cfg: ViewConfig) -> list[int]:
    """Upstream's similarity input: one message alone through the chat template with the generation
    prompt (its format_conversation), or the raw content with --plain; Gemma's assistant becomes user."""
    if cfg.plain:
        return tokenize(tokenizer, message["content"], cfg)
    role = "user" if cfg.merge_system else message["role"]
    text = tokenizer.apply_chat_template(
        [{"role": role, "content": message["content"]}],
        tokenize=False,
        add_generation_prompt=True,
        **template_options(tokenizer),
    )
    return tokenize(tokenizer, text, cfg)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module | None = None) -> list[int]:
    """The tokenizer's eos, the model's generation eos ids, and <|eot_id|> (which ends --plain answers)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    if EOT in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids(EOT))
    return sorted(i for i in ids if i is not None)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def until_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """Generated tokens before the first stop token (generate pads finished rows after it)."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i]
    return tokens


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- generators -----------------------------------------------------------------------------
class HFGenerator:
    """transformers generate on batches of left-padded prompts."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.config = settings.hf_config(self.stop_ids, tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id, model_device(self.model))
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=self.config)
        return [until_stop(row.tolist(), self.stop_ids) for row in out[:, ids.shape[1] :]]


class VllmGenerator:
    """vLLM on token-id prompts (the same tokens as HF). Untested in this project: no GPU was lent."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings, dtype: str):
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=settings.seed)
        self.stop_ids = stop_token_ids(tokenizer)
        self.params = SamplingParams(
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p,
            top_k=settings.top_k if settings.top_k > 0 else -1,
            repetition_penalty=settings.repetition_penalty,
            max_tokens=settings.max_new_tokens,
            stop_token_ids=self.stop_ids,
            seed=settings.seed,
        )

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], self.params, use_tqdm=False)
        return [until_stop(list(o.outputs[0].token_ids), self.stop_ids) for o in outputs]


def vllm_usable(model_path: str, settings: GenerationSettings) -> bool:
    """vLLM needs CUDA, a checkpoint directory (not an adapter, not the embedded default), no beams."""
    import importlib.util

    return (
        importlib.util.find_spec("vllm") is not None
        and torch.cuda.is_available()
        and os.path.isfile(os.path.join(model_path, "config.json"))
        and settings.num_beams == 1
    )


class ChoiceGenerator:
    """hellaswag: no generation; the letter among A-D whose next-token probability is highest."""

    name = "choice"

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase):
        self.model, self.tokenizer = model, tokenizer
        ids = [tokenizer.convert_tokens_to_ids(c) for c in CHOICES]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise UserError(f"hellaswag scoring needs single tokens A, B, C, D; this tokenizer maps them to {ids}")
        self.choice_ids = ids

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id, model_device(self.model))
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, -1]
        best = logits[:, self.choice_ids].float().argmax(dim=-1)  # softmax keeps the order: argmax of probs
        return [[self.choice_ids[int(b)]] for b in best]


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---- similarity -----------------------------------------------------------------------------
@torch.no_grad()
def embeddings(
    model: torch.nn.Module, rows: list[list[int]], pad_id: int, layer: int, pooling: str, batch_size: int
) -> torch.Tensor:
    """One vector per row from hidden_states[layer]: the last token, the mean over tokens, or the first."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids, mask = left_pad(batch, pad_id, model_device(model))
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True)
        h = hidden.hidden_states[layer].float()
        if pooling == "last":
            out.append(h[:, -1])
        elif pooling == "mean":
            m = mask.unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1))
        else:  # "cls": the first real token
            first = mask.shape[1] - mask.sum(1)
            out.append(h[torch.arange(len(batch)), first])
    return torch.cat(out)


# ---- batching -------------------------------------------------------------------------------
def length_batches(indices: list[int], lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Batches of similar prompt length (longest first, so memory trouble shows at once)."""
    ordered = sorted(indices, key=lambda i: -lengths[i])
    for start in range(0, len(ordered), batch_size):
        yield ordered[start : start + batch_size]


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


Progress = Callable[[int], None]
