"""FlexAttention form of block_causal_attention: torch's flex_attention with a BlockMask from the layout.

The BlockMask comes straight from the layout's tile lists (`BlockMask.from_kv_blocks`): partial tiles
(some pairs visible) run the mask_mod, full tiles (every pair visible) skip it, untouched tiles are
never visited. The one list it reads, (by_query, FLEX_BLOCK, FLEX_BLOCK), is built on the host by the
fast path's collator (`llmjepa.execution.fast.kernel_tiles` for the flex backend), so making the mask reads no
device value; a layout without it builds it at first use (on a GPU, with host syncs). The mask_mod is
the range test of the three per-token ranges. No T x T tensor exists in the compiled kernels
(torch.compile'd flex_attention); eager flex_attention is torch's dense reference implementation and
is only for tests.

Where it runs (torch 2.13): CUDA, forward and backward, compiled. CPU: forward only (compiled through
Inductor's C++ template); torch raises NotImplementedError for a backward on CPU ("FlexAttention does
not support backward on CPU"), so training with this backend needs CUDA.

The peer of the Triton kernel in the attention and step benchmarks, and a fallback where Triton is
missing but torch.compile works.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .block_layout import BlockCausalLayout

__all__ = ["FLEX_BLOCK", "flex_block_causal_attention", "flex_block_mask"]

FLEX_BLOCK = 128  # flex_attention's default sparse block size, both directions

# One BlockMask per layout and block size: every layer of a forward reuses its layout's mask.
_MASKS: weakref.WeakKeyDictionary[BlockCausalLayout, dict[int, BlockMask]] = weakref.WeakKeyDictionary()
_COMPILED = None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flex_block_mask(layout: BlockCausalLayout, block: int = FLEX_BLOCK) -> BlockMask:
    """The layout as a BlockMask for one (batch 1, every head) flex_attention call over its T tokens.

    kv_num_blocks/kv_indices are the layout's partial tiles, full_kv_* its full tiles (block x block,
    query blocks by row); indices past a row's count are padding, as flex expects."""
    cached = _MASKS.setdefault(layout, {})
    if block not in cached:
        cached[block] = _build_block_mask(layout, block)
    return cached[block]


def _build_block_mask(layout: BlockCausalLayout, block: int) -> BlockMask:
    t = layout.num_tokens
    n_kv = _cdiv(t, block)
    lists = layout.tiles(block, block).by_query

    def padded(index: torch.Tensor) -> torch.Tensor:
        # flex wants (rows, key blocks) index tensors; the layout's are only as wide as the longest row
        return F.pad(index, (0, n_kv - index.shape[1]))[None, None].to(torch.int32)

    mask_mod = range_mask_mod(layout, _cdiv(t, block) * block)
    return BlockMask.from_kv_blocks(
        lists.part_count[None, None].to(torch.int32),
        padded(lists.part_index),
        lists.full_count[None, None].to(torch.int32),
        padded(lists.full_index),
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(t, t),
    )


def range_mask_mod(layout: BlockCausalLayout, padded_length: int):
    """mask_mod(b, h, q, kv): key kv visible to query q through the shared or the causal range.

    The ranges are padded to whole query blocks (the kernels evaluate partial tiles past T); a padding
    query sees only itself, and its output is dropped."""
    t = layout.num_tokens
    extra = padded_length - t
    tail = torch.arange(t, padded_length, device=layout.device, dtype=torch.int32)
    start = torch.cat([layout.shared_start, torch.zeros(extra, dtype=torch.int32, device=layout.device)])
    end = torch.cat([layout.shared_end, torch.full((extra,), -1, dtype=torch.int32, device=layout.device)])
    causal = torch.cat([layout.causal_start, tail])

    def mask_mod(b, h, q_idx, kv_idx):
        shared = (kv_idx >= start[q_idx]) & (kv_idx <= end[q_idx])
        return shared | ((kv_idx >= causal[q_idx]) & (kv_idx <= q_idx))

    return mask_mod


def compiled_flex_attention():
    """flex_attention through torch.compile, compiled once per process (eager flex is dense)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention)
    return _COMPILED


def _refuse_cpu_backward(*tensors: torch.Tensor) -> None:
    """torch's own error would come from deep inside the model's forward; say what to use instead."""
    if tensors[0].device.type == "cpu" and torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        raise NotImplementedError(
            "FlexAttention has no backward on the CPU (torch 2.13): train with the torch or triton "
            "attention backend, or on CUDA"
        )


def flex_block_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockCausalLayout,
    scale: float | None,
    compiled: bool = True,
) -> torch.Tensor:
    """Block-causal attention through flex_attention: q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D).

    compiled=False runs torch's eager (dense) flex_attention: for tests only."""
    _refuse_cpu_backward(q, k, v)
    if layout.num_tokens != q.shape[0]:
        raise ValueError(f"the layout has {layout.num_tokens} tokens, the queries {q.shape[0]}")
    q_heads, kv_heads = q.shape[1], k.shape[1]
    if q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    query, key, value = (x.transpose(0, 1)[None] for x in (q, k, v))
    # transformers' flex integration repeats K/V instead of enable_gqa when the query heads are not a
    # power of two (its integrations/flex_attention.py); do the same
    gqa = q_heads != kv_heads and q_heads & (q_heads - 1) == 0
    if q_heads != kv_heads and not gqa:
        key, value = (x.repeat_interleave(q_heads // kv_heads, dim=1) for x in (key, value))
    if torch.compiler.is_compiling():
        # inside a compiled model (--torch_compile): flex_attention is compiled with it, and the mask is
        # traced from the layout's lists in every layer (a few small integer ops each; the per-layout cache
        # is Python state Dynamo would break the graph on)
        attend, block_mask = flex_attention, _build_block_mask(layout, FLEX_BLOCK)
    else:
        attend = compiled_flex_attention() if compiled else flex_attention
        block_mask = flex_block_mask(layout)
    out = attend(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    return out[0].transpose(0, 1)
