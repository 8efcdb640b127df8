"""transformers integration: ``attn_implementation="llmjepa_block_causal"``.

After ``register()``, a model set to this implementation takes the visibility ranges as extra keyword
arguments of its forward, which transformers hands on to every attention layer::

    model.set_attn_implementation(ATTENTION_NAME)
    model(input_ids=ids, position_ids=pos, shared_start=a, shared_end=b, causal_start=s)

Range shapes: (T,) or (1, T) for one packed stream in a batch of 1; (B, L) for B rows, each row its
own stream with ranges local to the row (0..L-1): row r is offset by r * L and the B rows run as one
stream of B * L tokens, so no query ever sees another row. Tokens of a row that are padding still
need a non-empty range (e.g. causal_start = i) and their outputs are simply ignored.

A prebuilt `BlockCausalLayout` (ranges validated and tile lists built on the host, moved to the device:
what the fast path's collator makes) can be passed instead, as ``block_causal_layout=layout``; its ranges
are stream indices of the flattened B * L tokens. Then nothing is validated or built in the forward,
and no host-device sync happens there.

No dense mask is built, and no mask function is registered: transformers skips mask creation for an
attention name its mask interface does not know (`_preprocess_mask_arguments` exits early). Registering
one would make it look for packed sequences in position_ids first (`find_packed_sequence_indices`,
whose `.all()` is a host-device sync per forward) whenever no attention_mask is passed, as here. The
price: transformers drops a 2-D padding mask before any attention runs (as for any attention name
without a mask function), so pass none; a 4-D mask reaches the attention function, which refuses it.

On CPU without the Triton interpreter (TRITON_INTERPRET=1), attention falls back to PyTorch SDPA over
query blocks, each with a boolean mask over its key window built from the same ranges.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import AttentionInterface

from . import torch_attention
from .block_layout import BlockCausalLayout

if importlib.util.find_spec("triton") is not None:
    from .block_causal_attention import block_causal_attention, interpreted
else:  # the PyTorch form needs no triton: the CPU fast path runs without it
    block_causal_attention = interpreted = None

__all__ = ["ATTENTION_NAME", "attention_input_dtype", "block_causal_attention_forward", "register"]

ATTENTION_NAME = "llmjepa_block_causal"
_RANGE_NAMES = ("shared_start", "shared_end", "causal_start")
BACKENDS = ("auto", "triton", "torch", "flex")


def register() -> None:
    """Register the attention function under ATTENTION_NAME (and no mask function: module docstring);
    calling it again is harmless."""
    AttentionInterface.register(ATTENTION_NAME, block_causal_attention_forward)


class _LayoutCache:
    """The last layout built, keyed on the identity and version of the user's range tensors.

    transformers calls the attention once per layer with the same range tensors; building the layout
    validates on the host (one sync) and computes tile lists, so do it once per forward. Holding the
    tensors keeps their ids from being reused by new tensors while the entry lives.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._tensors: tuple[torch.Tensor, ...] = ()
        self._layout: BlockCausalLayout | None = None

    def get(self, ranges: tuple[torch.Tensor, ...], batch: int, length: int, device: torch.device):
        key = (tuple(id(t) for t in ranges), tuple(t._version for t in ranges), batch, length, device)
        if self._key != key:
            self._layout = _build_layout(ranges, batch, length, device)
            self._key = key
            self._tensors = ranges
        return self._layout


_CACHE = _LayoutCache()


def _build_layout(ranges: tuple[torch.Tensor, ...], batch: int, length: int, device: torch.device) -> BlockCausalLayout:
    flat = []
    for name, tensor in zip(_RANGE_NAMES, ranges):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 or int64, got {tensor.dtype}")
        tensor = tensor.to(device)
        if batch == 1 and tensor.dim() == 1:
            tensor = tensor[None]
        if tuple(tensor.shape) != (batch, length):
            raise ValueError(
                f"{name} must have shape ({batch}, {length}) (or ({length},) when the batch is 1), "
                f"got {tuple(tensor.shape)}"
            )
        flat.append(tensor.long())
    a, b, s = flat
    if batch > 1:
        _check_rows_stay_local(a, b, s, length)
        offset = torch.arange(batch, device=device)[:, None] * length
        a, b, s = a + offset, b + offset, s + offset
    return BlockCausalLayout(*(x.reshape(-1).to(torch.int32) for x in (a, b, s)))


def _check_rows_stay_local(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, length: int) -> None:
    """With B rows, a range must stay inside its row, else it would reach into the next one."""
    bad = ((a <= b) & ((a < 0) | (b >= length))) | (s < 0)
    if bool(bad.any()):
        row, col = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"row {row}, token {col}: ranges shared [{int(a[row, col])}, {int(b[row, col])}] / causal "
            f"start {int(s[row, col])} must lie inside the row [0, {length - 1}]"
        )


def attention_input_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, module: torch.nn.Module):
    """The one dtype q, k and v are brought to before any backend runs, as transformers' flash-attention
    integration does (`get_target_dtype`): the autocast dtype where autocast is on for their device
    (mixed precision, --bf16/--fp16 over float32 weights: the projections come out in it, but the rotary
    embedding multiplies q and k by float32 cos/sin and promotes them back to float32); float32 inputs
    with 16-bit weights (layer norms kept in float32) take the weights' dtype; else the query's.

    Float64 is left alone (autocast does not cast it). The output keeps this dtype: under autocast the
    output projection casts its input to the autocast dtype anyway."""
    if query.dtype == torch.float64:
        return query.dtype
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if query.dtype == torch.float32 and module is not None:  # None: called outside a model (the self-check)
        weight = next((m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
        if weight is not None and weight.dtype in (torch.float16, torch.bfloat16):
            return weight.dtype
    return query.dtype


def _use_triton(device: torch.device) -> bool:
    """auto: the Triton kernel on CUDA, and on the CPU under the interpreter (tests); else the PyTorch form."""
    if device.type == "cuda":
        return True
    return interpreted is not None and interpreted()


def block_causal_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    shared_start: torch.Tensor | None = None,
    shared_end: torch.Tensor | None = None,
    causal_start: torch.Tensor | None = None,
    block_causal_backend: str = "auto",
    block_causal_layout: BlockCausalLayout | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query (B, Hq, L, D), key/value (B, Hkv, L, D) -> (B, L, Hq, D).

    block_causal_backend: "auto" (Triton on CUDA or under TRITON_INTERPRET=1, else PyTorch), "triton"
    or "torch" (the blockwise PyTorch form: a CPU training run under the interpreter would be slow),
    or "flex" (torch's FlexAttention with a BlockMask from the layout; backward on CUDA only).
    block_causal_layout: a BlockCausalLayout of the B * L tokens on the query's device, used as is
    (the range arguments are then ignored); without it the ranges are required."""
    ranges = (shared_start, shared_end, causal_start)
    if block_causal_layout is None and any(r is None for r in ranges):
        missing = [name for name, r in zip(_RANGE_NAMES, ranges) if r is None]
        raise ValueError(
            f"{ATTENTION_NAME} needs shared_start, shared_end and causal_start (or block_causal_layout) "
            f"passed to the model's forward; missing: {missing}"
        )
    if attention_mask is not None:
        raise ValueError(
            f"{ATTENTION_NAME} got an attention mask of shape {tuple(attention_mask.shape)}; it takes no "
            "padding or dense masks: express visibility with shared_start, shared_end and causal_start "
            "(padding tokens can keep causal_start = i) and pass no attention_mask"
        )
    if dropout:
        raise ValueError(f"{ATTENTION_NAME} has no attention dropout (got {dropout})")
    for name in ("sliding_window", "softcap"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{ATTENTION_NAME} does not support {name}={kwargs[name]}")
    batch, q_heads, length, head_dim = query.shape
    if key.shape[2] != length:
        raise ValueError(
            f"{ATTENTION_NAME} needs as many keys as queries (no KV cache), got {key.shape[2]} and {length}"
        )
    layout = block_causal_layout if block_causal_layout is not None else _CACHE.get(ranges, batch, length, query.device)
    if layout.num_tokens != batch * length or layout.device != query.device:
        raise ValueError(
            f"block_causal_layout has {layout.num_tokens} tokens on {layout.device}; the attention runs "
            f"{batch} x {length} tokens on {query.device}"
        )
    dtype = attention_input_dtype(query, key, value, module)
    query, key, value = (x.to(dtype) for x in (query, key, value))  # no-ops where they already share it
    q = query.transpose(1, 2).reshape(batch * length, q_heads, head_dim)
    k = key.transpose(1, 2).reshape(batch * length, key.shape[1], head_dim)
    v = value.transpose(1, 2).reshape(batch * length, value.shape[1], head_dim)
    if block_causal_backend not in BACKENDS:
        raise ValueError(f"block_causal_backend must be one of {BACKENDS}, got {block_causal_backend!r}")
    triton_wanted = block_causal_backend == "triton" or (block_causal_backend == "auto" and _use_triton(query.device))
    if block_causal_backend == "flex":
        from .flex_attention import flex_block_causal_attention  # imports torch's flex_attention only when used

        out = flex_block_causal_attention(q, k, v, layout, scaling)
    elif triton_wanted:
        if block_causal_attention is None:
            raise ImportError("the triton attention backend needs triton: pip install 'llmjepa[triton]'")
        out = block_causal_attention(
            q, k, v, layout.shared_start, layout.shared_end, layout.causal_start, scaling, layout=layout
        )
    else:
        out = torch_attention.torch_block_causal_attention(q, k, v, layout, scaling)
    return out.reshape(batch, length, q_heads, head_dim), None
