"""The fast executor: a microbatch's views as one packed, padding-free stream, run once.

`run_reference` pads every view to one length, builds a dense (rows, 1, L, L) mask and computes
logits for every row. `run_fast` returns the same `Executed` (same losses, same embeddings) while
running only what the losses read:

- Packing, prefix sharing and view truncation: `pack.pack_plan` (one padding-free stream).
- Logits only where labels are. The backbone returns hidden states; view 1's label positions go
  through the LM head with the cross entropy (`lm_head.lm_head_cross_entropy_sum`: torch's chunked
  F.linear_cross_entropy, or checkpointed chunks), with the head's softcapping or logit scale, so no
  (tokens x vocab) logits tensor exists.

Attention runs through `llmjepa_kernels.hf_attention` (the Triton kernel on CUDA; on CPU its
PyTorch form of the same ranges, so this path runs and is tested everywhere).

No host-device sync in a microbatch's forward and backward: the collator validates the ranges and
builds the kernels' tile lists on the host (`host_layout`), the stream and its layout go to the GPU
through pinned memory without blocking, and nothing here reads a device value (docs/fast_path.md).
"""

from dataclasses import replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..distributed import base_model, unwrap
from ..errors import UserError
from ..views.layout import AttentionShape, PackedPlan, StreamWithLayout, host_layout, kernel_tiles  # noqa: F401
from ..views.pack import pack_plan
from ..views.plan import ViewPlan
from .kernel_check import checked_backend
from .lm_head import head_transform, lm_head_cross_entropy_sum
from .protocol import Executed, model_dtype_device


# ---- the model -----------------------------------------------------------------------------
def fast_path_available() -> bool:
    """Where --impl fast is the default (llmjepa-train, and JepaTrainer's factory): CUDA with Triton (the
    kernels), or no CUDA (the CPU runs the PyTorch form of the attention, no triton needed; measured 2.87x
    faster than the reference's triple batch, bench/RESULTS.md). CUDA without Triton keeps the reference."""
    import importlib.util

    return not torch.cuda.is_available() or importlib.util.find_spec("triton") is not None


def check_attention_is_ours(model: nn.Module) -> None:
    """The packed stream's ranges mean nothing to another attention: SDPA would let every token see the
    whole stream, and the JEPA term would be wrong without an error."""
    from llmjepa_kernels.hf_attention import ATTENTION_NAME

    found = getattr(unwrap(model).config, "_attn_implementation", None)
    if found != ATTENTION_NAME:
        raise ValueError(
            f"run_fast: the model's attention implementation is {found!r}, not {ATTENTION_NAME!r}: call "
            f"llmjepa_kernels.hf_attention.register() and model.set_attn_implementation({ATTENTION_NAME!r}) first"
        )


def check_fast_supported(model: nn.Module) -> None:
    """Refuse, before training, what the fast path would get wrong."""
    config = unwrap(model).config
    head_transform(config)  # softcapping and logit scales are handled; a head it cannot tell is refused
    dropout = getattr(config, "attention_dropout", 0.0) or 0.0
    if dropout:
        raise UserError(f"--impl fast has no attention dropout (the model's is {dropout}); use --impl reference")


def attention_backend(device: torch.device) -> str:
    """The Triton kernel on CUDA; on CPU, PyTorch over the same ranges (the interpreter is for kernel tests)."""
    return "auto" if device.type == "cuda" else "torch"


def default_attention_backend(use_cpu: bool = False) -> str:
    """--attention_backend's default, for the CLI and the library alike: the Triton kernel where training runs
    on CUDA, the PyTorch form on the CPU (use_cpu: TrainingArguments.use_cpu; the interpreter is for kernel
    tests)."""
    return "triton" if torch.cuda.is_available() and not use_cpu else "torch"


MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}  # TrainingArguments field -> autocast dtype


def mixed_precision_dtype(training_args: Any) -> torch.dtype | None:
    """The autocast dtype of --bf16 / --fp16 (TrainingArguments, or a dict of its fields), else None."""
    get = training_args.get if isinstance(training_args, dict) else lambda name: getattr(training_args, name, None)
    return next((dtype for name, dtype in MIXED_PRECISION.items() if get(name)), None)


def forward_autocast_dtype(model: nn.Module, device: torch.device) -> torch.dtype | None:
    """The autocast dtype the model's forward will run under: autocast on here (a caller's torch.autocast),
    or accelerate's, which the Trainer's --bf16/--fp16 wraps around the model's forward alone (it sets
    `_original_forward`), so the executor itself runs outside it."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    if getattr(unwrap(model), "_original_forward", None) is None:
        return None
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:
        return None
    return MIXED_PRECISION.get(AcceleratorState().mixed_precision)


def kernel_dtype(weight_dtype: torch.dtype, mixed: torch.dtype | None = None) -> torch.dtype:
    """The dtype the attention kernels see, so the tile shapes they read (`default_config(head_dim, dtype)`):
    under mixed precision (`mixed`, the autocast dtype over float32 weights) the autocast dtype, which
    `hf_attention` brings q, k and v to; else the weights' dtype (autocast leaves float64 alone)."""
    return mixed if mixed is not None and weight_dtype != torch.float64 else weight_dtype


def attention_shape(model: nn.Module, mixed: torch.dtype | None = None) -> AttentionShape:
    """Head dim and dtype of a model's attention, what the Triton kernels' tile shapes depend on.
    mixed: the autocast dtype of mixed precision (`kernel_dtype`)."""
    config = unwrap(model).config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dtype, _ = model_dtype_device(model)
    return AttentionShape(head_dim, kernel_dtype(dtype, mixed))


def uses_triton(backend: str | None, device: torch.device) -> bool:
    """Whether run_fast's attention (`attention=`, None for the per-device choice) runs the Triton kernels."""
    return backend == "triton" or (backend in (None, "auto") and device.type == "cuda")


def tiled_attention_shape(
    model: nn.Module, backend: str | None, device: torch.device, mixed: torch.dtype | None = None
) -> AttentionShape | None:
    """The model's AttentionShape where run_fast's attention (`backend` as its `attention`, None for the
    per-device choice) reads tile lists: the Triton kernels, or FlexAttention's BlockMask; else None (the
    PyTorch form reads the ranges only). mixed: the autocast dtype of mixed precision, else None."""
    if backend == "flex":
        return replace(attention_shape(model, mixed), backend="flex")
    return attention_shape(model, mixed) if uses_triton(backend, device) else None


def collator_attention_shape(
    model: nn.Module, backend: str | None = None, mixed: torch.dtype | None = None
) -> AttentionShape | None:
    """For the collator (which tile lists to build): tiled_attention_shape on the device training will
    use (CUDA where there is one); mixed: `mixed_precision_dtype` of the run's TrainingArguments."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return tiled_attention_shape(model, backend, device, mixed)


def triton_attention_shape(
    model: nn.Module, backend: str | None = None, mixed: torch.dtype | None = None
) -> AttentionShape | None:
    """collator_attention_shape where it runs the Triton kernels, else None (the benchmarks' question)."""
    shape = collator_attention_shape(model, backend, mixed)
    return shape if shape is not None and shape.backend == "triton" else None


def install_output_hooks(model: nn.Module) -> None:
    """Install transformers' hooks that collect hidden states (output_hidden_states) before the forward:
    the forward installs them at its first call under a threading lock, which Dynamo cannot trace (a graph
    break in the first compiled step). Once installed, the forward only checks a flag."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # a transformers without it: nothing to install ahead
        return
    base = base_model(getattr(model, "_orig_mod", model))  # under torch.compile's wrapper (--torch_compile)
    # on the decoder (LlamaModel), whose forward collects them, as its own first call would: hooks on the causal-LM
    # wrapper too would record every layer twice (hidden_states of 2L + 1 entries, [-2] no longer layer L - 1)
    decoder = getattr(base, "base_model", None)
    if isinstance(decoder, PreTrainedModel):
        maybe_install_capturing_hooks(decoder)


def mark_dynamic(stream: StreamWithLayout, *views: torch.Tensor) -> None:
    """Every size of the stream and its layout (tokens, pairs, tile rows, list widths) a symbol for
    torch.compile (`--torch_compile`): its first graph serves streams of any length, instead of a graph
    specialized on the first stream and a recompile at the second (automatic dynamic shapes). Sizes 0
    and 1 stay specialized (torch's rule), so recompiles are bounded, not per microbatch. Outside
    torch.compile it only tags the tensors. views: the stream's tensors as the model gets them (a view
    carries its own marks)."""
    tensors = [t for t in vars(stream).values() if isinstance(t, torch.Tensor)] + stream.layout.tensors()
    tensors += views
    for t in tensors:
        for dim in range(t.dim()):
            torch._dynamo.maybe_mark_dynamic(t, dim)


def run_fast(
    model: nn.Module,
    plan: "ViewPlan | PackedPlan",
    pad_token_id: int | None = None,
    attention: str | None = None,
    lm_head_method: str = "auto",
    kernel_check: str = "auto",
) -> Executed:
    """Run a plan as one packed stream (module docstring). The model's attention implementation must
    be llmjepa_kernels.hf_attention.ATTENTION_NAME. pad_token_id is unused: there is no padding.
    attention: "triton", "flex" or "torch" to override the per-device choice (tests run the kernel on CPU).
    lm_head_method: lm_head.LM_HEAD_METHODS ("auto": F.linear_cross_entropy where it applies, else chunks).
    kernel_check: "auto", "strict" or "off": the backend's self-check on a CUDA device (execution/kernel_check.py)."""
    _, device = model_dtype_device(model)
    check_attention_is_ours(model)
    backend = checked_backend(attention or attention_backend(device), model, device, kernel_check)
    stream = plan.packed if plan.packed is not None else pack_plan(plan)
    shape = tiled_attention_shape(model, backend, device, forward_autocast_dtype(model, device))
    if getattr(stream, "layout", None) is None:  # not packed by the collator: build the layout here, on the host
        stream = host_layout(stream, shape)
    elif stream.layout.device.type == "cpu":  # lists the collator was not asked for: built here, still on the host
        stream.layout.build(kernel_tiles(shape))
    stream = stream.to(device)
    input_ids, position_ids = stream.input_ids[None], stream.position_ids[None]
    mark_dynamic(stream, input_ids, position_ids)
    install_output_hooks(model)
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        block_causal_layout=stream.layout,
        block_causal_backend=backend,
        logits_to_keep=stream.label_index[:0],  # no logits from the model: the loss below makes its own
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][0]
    base = unwrap(model)
    ce_sum = lm_head_cross_entropy_sum(
        hidden[stream.label_index],
        stream.label_target,
        base.get_output_embeddings(),
        head_transform(base.config),
        lm_head_method,
    )
    return Executed(ce_sum, hidden, stream.pred_index, stream.target_index, out.hidden_states)


run_fast.packs = True  # reads the collator's packed stream (protocol.executor_packs)
