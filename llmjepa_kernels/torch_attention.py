"""The PyTorch form of block_causal_attention: SDPA over query blocks, no Triton needed.

Used by the fast path on the CPU (and so in CI), and wherever Triton is missing.

- Blocks. The stream splits where no range crosses (between examples, when the packing keeps each
  example's rows together), then into blocks of at most TORCH_QUERY_BLOCK queries. Each block attends
  to its key window, from the lowest key any of its queries sees to the highest, with an additive mask
  built from the ranges; the window stays inside one example, so no T x T mask exists and a packed
  stream costs about what its examples would cost apart.
- Built once per layout. The blocks, windows and masks depend only on the ranges; the same layout object
  reaches every layer (and backward), so they are cached on it (per query block, device and dtype).
- SDPA on 4-D (1, heads, tokens, head_dim) tensors: on the CPU that takes the flash kernel (3-D inputs
  take the math path, which materializes the probabilities and repeats K/V per GQA group), with GQA
  native to it. On the CPU the blocks run in one autograd.Function that calls the flash kernel's
  forward and backward directly: dK and dV of each block are added into the window's slice, instead of
  every block's slice backward writing a zero-filled gradient of the whole stream.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .block_layout import BlockCausalLayout

__all__ = ["TORCH_QUERY_BLOCK", "computed_pairs", "query_blocks", "torch_block_causal_attention"]


# Queries per SDPA call. On the 2-core CPU (2026-11-24, fp32, 8 query and 2 KV heads of 64) the flash
# kernel's forward and backward cost about 85 ns per pair for blocks of 64 queries over windows up to
# ~768 keys, and 2-3x that per pair for 128-256 queries over windows past 384 keys; smaller blocks
# also fit the windows to the ranges more tightly. Per call it costs about 50 us.
TORCH_QUERY_BLOCK = 64


@dataclass(frozen=True)
class QueryBlock:
    """Queries [q0, q1) attend to keys [lo, hi)."""

    q0: int
    q1: int
    lo: int
    hi: int


# ---- blocks and masks, cached per layout --------------------------------------------------------------
_BLOCKS: dict[int, dict] = {}  # id(layout) -> {block size: blocks, (block size, device, dtype): masks}


def _cache(layout: BlockCausalLayout) -> dict:
    key = id(layout)
    if key not in _BLOCKS:
        _BLOCKS[key] = {}
        weakref.finalize(layout, _BLOCKS.pop, key, None)  # the entry lives as long as the layout
    return _BLOCKS[key]


def query_blocks(layout: BlockCausalLayout, block: int | None = None) -> list[QueryBlock]:
    """The layout's query blocks and key windows (module docstring), computed once per layout."""
    block = block or TORCH_QUERY_BLOCK
    cache = _cache(layout)
    if block not in cache:
        ranges = (layout.shared_start, layout.shared_end, layout.causal_start)
        cache[block] = _plan_blocks(*(x.cpu().numpy().astype(np.int64) for x in ranges), block)
    return cache[block]


def _plan_blocks(a: np.ndarray, b: np.ndarray, s: np.ndarray, block: int) -> list[QueryBlock]:
    t = len(a)
    i = np.arange(t)
    has_shared, has_causal = b >= a, s <= i
    lowest = np.minimum(np.where(has_shared, a, t), np.where(has_causal, s, t))  # lowest key each query sees
    highest = np.maximum(np.where(has_causal, i, -1), np.where(has_shared, b, -1))
    # c splits the stream when no query at or after c sees a key before c, and none before c one at or after c
    low_after = np.minimum.accumulate(lowest[::-1])[::-1]
    high_before = np.maximum.accumulate(highest)
    splits = np.flatnonzero((low_after[1:] >= i[1:]) & (high_before[:-1] < i[1:])) + 1
    edges = np.concatenate([[0], splits, [t]])
    starts = []
    for x0, x1 in zip(edges[:-1], edges[1:]):  # equal blocks of at most `block` queries per piece
        n = -(-(x1 - x0) // block)
        starts.extend(x0 + (x1 - x0) * k // n for k in range(n))
    starts = np.array(starts)
    ends = np.append(starts[1:], t)
    lo = np.minimum.reduceat(lowest, starts)
    hi = np.maximum.reduceat(highest, starts) + 1
    return [QueryBlock(*map(int, x)) for x in zip(starts, ends, lo, hi)]


def _masks(layout: BlockCausalLayout, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Per block, the additive (q1 - q0, hi - lo) mask in `dtype` (0 visible, -inf not), None where all
    of the window is visible."""
    cache = _cache(layout)
    key = (TORCH_QUERY_BLOCK, device, dtype)
    if key not in cache:
        a, b, s = (x.to(device).long() for x in (layout.shared_start, layout.shared_end, layout.causal_start))
        masks = []
        for blk in query_blocks(layout):
            i = torch.arange(blk.q0, blk.q1, device=device)[:, None]
            j = torch.arange(blk.lo, blk.hi, device=device)[None, :]
            ab, bb, sb = a[blk.q0 : blk.q1, None], b[blk.q0 : blk.q1, None], s[blk.q0 : blk.q1, None]
            visible = ((j >= ab) & (j <= bb)) | ((j >= sb) & (j <= i))
            mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, float("-inf"))
            masks.append(None if bool(visible.all()) else mask)
        cache[key] = masks
    return cache[key]


def computed_pairs(layout: BlockCausalLayout, block: int | None = None) -> int:
    """(query, key) pairs the PyTorch form computes per head: the sum over blocks of block x window."""
    return sum((blk.q1 - blk.q0) * (blk.hi - blk.lo) for blk in query_blocks(layout, block))


# ---- attention -------------------------------------------------------------------------------------
def torch_block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout, scale: float | None
) -> torch.Tensor:
    """PyTorch form of block_causal_attention: q (T, Hq, D), k and v (T, Hkv, D) -> (T, Hq, D).

    Query blocks over key windows (module docstring); the CPU flash kernel on the CPU, SDPA elsewhere."""
    blocks = query_blocks(layout)
    masks = _masks(layout, q.device, q.dtype)
    if q.device.type == "cpu":
        return _BlockwiseFlashCPU.apply(q, k, v, blocks, masks, scale)
    return blockwise_sdpa(q, k, v, blocks, masks, scale)


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """(T, H, D) -> (1, H, T, D), a view."""
    return x.permute(1, 0, 2)[None]


def blockwise_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    blocks: list[QueryBlock],
    masks: list[torch.Tensor | None],
    scale: float | None,
) -> torch.Tensor:
    """F.scaled_dot_product_attention per block on 4-D views, autograd through it (any device)."""
    qh, kh, vh = (_heads_first(x) for x in (q, k, v))
    out = []
    for blk, mask in zip(blocks, masks):
        block_out = F.scaled_dot_product_attention(
            qh[:, :, blk.q0 : blk.q1],
            kh[:, :, blk.lo : blk.hi],
            vh[:, :, blk.lo : blk.hi],
            attn_mask=mask,
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        out.append(block_out[0].transpose(0, 1))
    return torch.cat(out)


_flash_forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _BlockwiseFlashCPU(torch.autograd.Function):
    """The blocks through the CPU flash kernel's forward and backward ops (GQA native to both)."""

    @staticmethod
    def forward(ctx, q, k, v, blocks, masks, scale):
        qh, kh, vh = (_heads_first(x) for x in (q, k, v))
        out = q.new_empty(q.shape)
        lse = None  # (1, Hq, T), in the dtype the kernel gives (float32, or float64 for float64 inputs)
        for blk, mask in zip(blocks, masks):
            window = slice(blk.lo, blk.hi)
            block_out, block_lse = _flash_forward(
                qh[:, :, blk.q0 : blk.q1], kh[:, :, window], vh[:, :, window], attn_mask=mask, scale=scale
            )
            out[blk.q0 : blk.q1] = block_out[0].transpose(0, 1)
            if lse is None:
                lse = block_lse.new_empty((1, q.shape[1], q.shape[0]))
            lse[:, :, blk.q0 : blk.q1] = block_lse
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.blocks, ctx.masks, ctx.scale = blocks, masks, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        qh, kh, vh, oh, gh = (_heads_first(x) for x in (q, k, v, out, grad_out))
        dq = torch.empty_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for blk, mask in zip(ctx.blocks, ctx.masks):
            rows, window = slice(blk.q0, blk.q1), slice(blk.lo, blk.hi)
            bq, bk, bv = _flash_backward(
                gh[:, :, rows],
                qh[:, :, rows],
                kh[:, :, window],
                vh[:, :, window],
                oh[:, :, rows],
                lse[:, :, rows],
                0.0,
                False,
                attn_mask=mask,
                scale=ctx.scale,
            )
            dq[rows] = bq[0].transpose(0, 1)
            dk[window] += bk[0].transpose(0, 1)
            dv[window] += bv[0].transpose(0, 1)
        return dq, dk, dv, None, None, None
