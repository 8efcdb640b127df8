"""The fast executor: a microbatch's views as one packed, padding-free stream, run once.

`run_reference` pads every view to one length, builds a dense (rows, 1, L, L) mask and computes
logits for every row. `run_fast` returns the same `Executed` (same losses, same embeddings) while
running only what the losses read:

- Packing, prefix sharing and view truncation: `pack.pack_plan` (one padding-free stream).
- Logits only where labels are. The backbone returns hidden states; view 1's label positions go
  through the LM head in chunks with the cross entropy, each chunk recomputed in backward
  (checkpointed), so no (tokens x vocab) logits tensor exists.

Attention runs through `llmjepa_kernels.hf_attention` (the Triton kernel on CUDA; on CPU its
PyTorch form of the same ranges, so this path runs and is tested everywhere).
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import UserError
from .execute import Executed, model_dtype_device
from .losses import token_cross_entropy_sum
from .pack import pack_plan
from .plan import ViewPlan

LOGITS_PER_CHUNK = 2**26  # chunk tokens x vocab: 256 MiB of float32 logits at a time
# Config fields of LM heads that do more than a linear layer; the fast path's loss is lm_head alone.
LM_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


# ---- the model -----------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP's wrapper (PeftModel forwards get_output_embeddings itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_fast_supported(model: nn.Module) -> None:
    """Refuse, before training, what the fast path would get wrong."""
    config = unwrap(model).config
    values = {name: getattr(config, name, None) for name in LM_HEAD_EXTRAS}
    extras = [f"{name}={value}" for name, value in values.items() if value not in (None, 1, 1.0)]
    if extras:
        raise UserError(
            f"--impl fast computes logits as lm_head(hidden) alone; this model's head also applies "
            f"{', '.join(extras)}. Use --impl reference"
        )
    dropout = getattr(config, "attention_dropout", 0.0) or 0.0
    if dropout:
        raise UserError(f"--impl fast has no attention dropout (the model's is {dropout}); use --impl reference")


def lm_head_cross_entropy_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """Sum of cross entropy of lm_head(hidden) against targets, a chunk of rows at a time.

    Each chunk is checkpointed: backward recomputes its logits, so at most one chunk of logits
    (LOGITS_PER_CHUNK elements) is alive at once, in forward and in backward."""
    total = hidden.new_zeros((), dtype=torch.float32)
    chunk = max(1, LOGITS_PER_CHUNK // lm_head.weight.shape[0])
    for i in range(0, hidden.shape[0], chunk):
        h, y = hidden[i : i + chunk], targets[i : i + chunk]
        total = total + checkpoint(_chunk_cross_entropy_sum, h, y, lm_head, use_reentrant=False)
    return total


def _chunk_cross_entropy_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    return token_cross_entropy_sum(lm_head(hidden), targets)


def attention_backend(device: torch.device) -> str:
    """The Triton kernel on CUDA; on CPU, PyTorch over the same ranges (the interpreter is for kernel tests)."""
    return "auto" if device.type == "cuda" else "torch"


def run_fast(
    model: nn.Module, plan: ViewPlan, pad_token_id: int | None = None, attention: str | None = None
) -> Executed:
    """Run a plan as one packed stream (module docstring). The model's attention implementation must
    be llmjepa_kernels.hf_attention.ATTENTION_NAME. pad_token_id is unused: there is no padding.
    attention: "triton" or "torch" to override the per-device choice (tests run the kernel on CPU)."""
    _, device = model_dtype_device(model)
    stream = (plan.packed if plan.packed is not None else pack_plan(plan)).to(device)
    out = model(
        input_ids=stream.input_ids[None],
        position_ids=stream.position_ids[None],
        shared_start=stream.shared_start,
        shared_end=stream.shared_end,
        causal_start=stream.causal_start,
        block_causal_backend=attention or attention_backend(device),
        logits_to_keep=stream.label_index[:0],  # no logits from the model: the loss below makes its own
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][0]
    lm_head = unwrap(model).get_output_embeddings()
    ce_sum = lm_head_cross_entropy_sum(hidden[stream.label_index], stream.label_target, lm_head)
    return Executed(ce_sum, hidden, stream.pred_index, stream.target_index)
