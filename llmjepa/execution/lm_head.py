"""The fast path's LM-head loss: summed cross entropy of the head's logits at the label positions,
without a (tokens x vocab) logits tensor.

Two ways, chosen per call (`lm_head_cross_entropy_sum`):

- "linear_ce": torch's `F.linear_cross_entropy` with chunking on (torch >= 2.13). It computes the
  gradients chunk by chunk inside forward, so neither pass holds more than one chunk of logits.
  A head that scales its logits (Cohere, Granite) goes through it too: scaling the logits equals
  scaling the hidden state and the bias.
- "chunks": the head's logits a chunk of rows at a time, each chunk checkpointed (recomputed in
  backward). The fallback: older torch, Gemma 2's tanh softcapping (not a linear map), heads that are
  not a plain nn.Linear.

"logits" (the whole logits tensor at once, as the reference path does) exists for the benchmark.

Sharded parameters (FSDP2, DeepSpeed ZeRO-3): the head's weight is whole only inside the head module's
forward (FSDP2 all-gathers it in a forward pre-hook and reshards after; ZeRO-3 leaves an empty partition
outside). So every way reads the weight inside a call of the head module: "chunks" and "logits" call the
head, and "linear_ce" runs as the head's forward (`run_as_forward`), where the sharding's hooks gather the
weight, and take its gradient back through their backward hooks. A weight that is still a DTensor there
(a head under a sharding that wraps no hooks around it) is gathered with `full_tensor()`. Sizes come from
the module (`out_features`, ZeRO-3's `ds_shape`), never from a shard.

The transforms a model's head applies after lm_head are read from its config per model type, with the
semantics of that model's forward in transformers (`LogitTransform`); a config that sets one of those
fields on a model type not listed here is refused, because whether its forward applies it is unknown.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .losses import token_cross_entropy_sum

__all__ = [
    "LM_HEAD_METHODS",
    "LogitTransform",
    "head_transform",
    "lm_head_cross_entropy_sum",
    "plain_cross_entropy_sum",
]

LOGITS_PER_CHUNK = 2**26  # "chunks": chunk tokens x vocab, 256 MiB of float32 logits at a time
LM_HEAD_METHODS = ("auto", "linear_ce", "chunks", "logits")
# Config fields of heads that do more than a linear layer (output_multiplier_scale: no model in
# transformers 5.24 reads it; refused where set, as before).
LM_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass(frozen=True)
class LogitTransform:
    """What a head does after lm_head(hidden), in transformers' order: multiply, divide, softcap.

    multiplier: Cohere's logit_scale (`logits * logit_scale`), HyperCLOVA X's logits_scaling.
    divisor: Granite's logits_scaling (`logits / logits_scaling`).
    softcap: Gemma 2's final_logit_softcapping (`tanh(logits / c) * c`).
    """

    multiplier: float = 1.0
    divisor: float = 1.0
    softcap: float | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The same operations, in the same order and dtype, as the model's forward."""
        return self.softcapped(self.scaled(logits))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier != 1.0:
            x = x * self.multiplier
        if self.divisor != 1.0:
            x = x / self.divisor
        return x

    def softcapped(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap


# model_type -> (config field, what its CausalLM forward does with it); read from transformers 5.24's
# modeling_<type>.py (the lines after `logits = self.lm_head(hidden_states)`).
_HEADS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("gemma2", "gemma3_text", "vaultgemma", "nanochat"), ("final_logit_softcapping", "softcap")),
    **dict.fromkeys(("cohere", "cohere2", "cohere2_moe"), ("logit_scale", "multiplier")),
    **dict.fromkeys(
        ("granite", "granitemoe", "granitemoeshared", "granitemoehybrid", "granite_swa", "granitemoe_swa"),
        ("logits_scaling", "divisor"),
    ),
    "hyperclovax": ("logits_scaling", "multiplier"),
}


def head_transform(config) -> LogitTransform:
    """The LogitTransform of a model's head from its config; UserError for a head it cannot tell."""
    model_type = getattr(config, "model_type", None)
    if model_type in _HEADS:
        field, kind = _HEADS[model_type]
        value = getattr(config, field, None)
        if value is None:
            return LogitTransform()
        if kind == "softcap":
            return LogitTransform(softcap=float(value))
        if kind == "divisor" and value == 0:
            raise UserError(f"the model's {field} is 0: its logits would be divided by zero")
        return LogitTransform(**{kind: float(value)})
    extras = _extra_fields(config)
    if extras:
        raise UserError(
            f"--impl fast computes logits as lm_head(hidden) alone for model type {model_type!r}; this "
            f"config also sets {', '.join(extras)}, which the fast path knows only for "
            f"{', '.join(sorted(_HEADS))}. Use --impl reference"
        )
    return LogitTransform()


def _extra_fields(config) -> list[str]:
    configs = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        configs.append(text)
    found = []
    for c in configs:
        for name in LM_HEAD_EXTRAS:
            value = getattr(c, name, None)
            if value not in (None, 1, 1.0) and f"{name}={value}" not in found:
                found.append(f"{name}={value}")
    return found


def lm_head_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: nn.Module,
    transform: LogitTransform = LogitTransform(),
    method: str = "auto",
) -> torch.Tensor:
    """Sum over rows of cross entropy of transform(lm_head(hidden)) against targets, in float32.

    method: "auto" (linear_ce where it applies, else chunks), "linear_ce", "chunks" or "logits"."""
    if method not in LM_HEAD_METHODS:
        raise ValueError(f"method must be one of {LM_HEAD_METHODS}, got {method!r}")
    if method == "auto":
        method = "linear_ce" if linear_ce_applies(lm_head, transform) else "chunks"
    if method == "linear_ce":
        if not linear_ce_applies(lm_head, transform):
            raise ValueError("linear_ce needs F.linear_cross_entropy, a plain nn.Linear head and no softcapping")
        return linear_ce_sum(hidden, targets, lm_head, transform)
    if method == "chunks":
        return chunked_cross_entropy_sum(hidden, targets, lm_head, transform)
    return plain_cross_entropy_sum(hidden, targets, lm_head, transform)


def linear_ce_applies(lm_head: nn.Module, transform: LogitTransform) -> bool:
    """A linear head (nn.Linear's forward: FSDP2's FSDPLinear subclass counts) and no softcapping."""
    plain = isinstance(lm_head, nn.Linear) and type(lm_head).forward is nn.Linear.forward
    return hasattr(F, "linear_cross_entropy") and plain and transform.softcap is None


def run_as_forward(module: nn.Module, fn, *args: torch.Tensor) -> torch.Tensor:
    """fn(module, *args) run as the module's forward, through module(*args): the hooks a sharding wraps
    around a module's forward (FSDP2's unshard and reshard, ZeRO-3's gather and partition, and the
    backward hooks they register on its output) hold the module's whole parameters while fn reads them."""
    own = module.__dict__.get("forward")  # an instance attribute shadows the class's forward
    module.forward = functools.partial(fn, module)
    try:
        return module(*args)
    finally:
        if own is None:
            del module.forward
        else:
            module.forward = own


def whole(param: torch.Tensor | None) -> torch.Tensor | None:
    """A DTensor gathered (differentiably), anything else as it is."""
    if param is not None and hasattr(param, "full_tensor") and hasattr(param, "placements"):
        return param.full_tensor()
    return param


def out_features(lm_head: nn.Module) -> int:
    """The head's vocabulary size from the module, not from a shard of its weight (ZeRO-3 leaves an empty
    partition outside the forward; its `ds_shape` is the whole shape)."""
    if isinstance(lm_head, nn.Linear):
        return lm_head.out_features
    weight = lm_head.weight
    return tuple(getattr(weight, "ds_shape", weight.shape))[0]


def linear_ce_sum(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Linear, transform: LogitTransform
) -> torch.Tensor:
    """F.linear_cross_entropy, chunked, as the head's forward (module docstring: sharded weights)."""
    return run_as_forward(lm_head, functools.partial(_linear_ce_forward, transform=transform), hidden, targets)


def _linear_ce_forward(
    lm_head: nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, transform: LogitTransform
) -> torch.Tensor:
    """Scaling the logits by s equals scaling hidden and bias by s.

    Half-precision inputs take reduction="none" and a float32 sum: with reduction="sum" the op returns
    the sum in the input dtype, 1.4e-2 off in bfloat16 (1024 tokens, hidden 256, vocab 8000, 2-core
    CPU, 2026-11-24) against 2e-5 per token summed in float32; the gradients were the same."""
    weight, bias = whole(lm_head.weight), whole(lm_head.bias)
    bias = None if bias is None else transform.scaled(bias)
    options = nn.LinearCrossEntropyOptions()
    x = transform.scaled(hidden)
    if hidden.dtype in (torch.float16, torch.bfloat16):
        per_token = F.linear_cross_entropy(x, weight, targets, linear_bias=bias, reduction="none", options=options)
        return per_token.float().sum()
    total = F.linear_cross_entropy(x, weight, targets, linear_bias=bias, reduction="sum", options=options)
    return total.float()


def chunked_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, transform: LogitTransform
) -> torch.Tensor:
    """The head's logits a chunk of rows at a time, each chunk checkpointed: backward recomputes its
    logits, so at most one chunk (LOGITS_PER_CHUNK elements) is alive at once, in forward and backward."""
    total = hidden.new_zeros((), dtype=torch.float32)
    chunk = max(1, LOGITS_PER_CHUNK // out_features(lm_head))
    for i in range(0, hidden.shape[0], chunk):
        h, y = hidden[i : i + chunk], targets[i : i + chunk]
        total = total + checkpoint(plain_cross_entropy_sum, h, y, lm_head, transform, use_reentrant=False)
    return total


def plain_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, transform: LogitTransform = LogitTransform()
) -> torch.Tensor:
    """The reference computation: the whole logits tensor, the head's transform, float32 cross entropy."""
    return token_cross_entropy_sum(transform.apply(lm_head(hidden)), targets)
