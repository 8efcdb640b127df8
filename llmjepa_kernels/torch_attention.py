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
  native to it. On the CPU the blocks run in one custom op that calls the flash kernel's forward and
  backward ops directly: dK and dV of each block are added into the window's slice, instead of every
  block's slice backward writing a zero-filled gradient of the whole stream.
- torch.compile: forward and backward are `torch.library` custom ops over tensors (q, k, v and the three
  ranges), with fake implementations: Dynamo neither enters the blocks (Python ints read from the ranges,
  which would specialize the graph on every stream) nor breaks the graph, and T stays a symbolic size.
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


# ---- blocks and masks, cached per range tensors -------------------------------------------------------
# Keyed on the identity of the three range tensors (a layout's, which reach every layer and the backward),
# not on the layout object: the attention runs as a custom op (below), which sees tensors only. An entry
# lives as long as all three tensors do, so an id is never reused while its entry stands.
_BLOCKS: dict[tuple[int, int, int], dict] = {}  # ids of the ranges -> {block: blocks, (block, device, dtype): masks}
Ranges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _cache(ranges: Ranges) -> dict:
    key = tuple(id(x) for x in ranges)
    if key not in _BLOCKS:
        _BLOCKS[key] = {}
        for x in ranges:  # the entry goes with the first of its tensors to go
            weakref.finalize(x, _BLOCKS.pop, key, None)
    return _BLOCKS[key]


def query_blocks(layout: BlockCausalLayout, block: int | None = None) -> list[QueryBlock]:
    """The layout's query blocks and key windows (module docstring), computed once per layout."""
    return _query_blocks(layout.ranges(), block)


def _query_blocks(ranges: Ranges, block: int | None = None) -> list[QueryBlock]:
    block = block or TORCH_QUERY_BLOCK
    cache = _cache(ranges)
    if block not in cache:
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


def _masks(ranges: Ranges, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Per block, the additive (q1 - q0, hi - lo) mask in `dtype` (0 visible, -inf not), None where all
    of the window is visible. ranges: `BlockCausalLayout.ranges()`."""
    cache = _cache(ranges)
    key = (TORCH_QUERY_BLOCK, device, dtype)
    if key not in cache:
        a, b, s = (x.to(device).long() for x in ranges)
        masks = []
        for blk in _query_blocks(ranges):
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


# ---- attention ----------------------------------------------------------------------------------
def torch_block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout, scale: float | None
) -> torch.Tensor:
    """PyTorch form of block_causal_attention: q (T, Hq, D), k and v (T, Hkv, D) -> (T, Hq, D).

    Query blocks over key windows (module docstring); the CPU flash kernel on the CPU, SDPA elsewhere.
    One custom op (forward and backward), so torch.compile traces it without entering the blocks."""
    out, _ = _attention_op(q, k, v, list(layout.ranges()), scale)
    return out


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


def _flash_ops_on(device: torch.device) -> bool:
    """Whether the ops run the CPU flash kernel's forward and backward ops (the CPU), else blockwise SDPA
    with a recomputing backward (tests switch it off to check that form on the CPU)."""
    return device.type == "cpu"


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The CPU flash kernel's logsumexp dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- the custom ops: what torch.compile sees (tensors and a float; fake implementations give the shapes)
# Schemas spelled out rather than inferred from the annotations: the same on every torch the kernels run with.
@torch.library.custom_op(
    "llmjepa::torch_block_causal_attention",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor[] ranges, float? scale) -> (Tensor, Tensor)",
)
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ranges: list[torch.Tensor], scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (T, Hq, D) contiguous, lse (1, Hq, T)). On the CPU the blocks through the flash kernel's
    forward op, lse its logsumexp; elsewhere blockwise SDPA without autograd, and lse unused (zeros):
    the backward recomputes the blocks there."""
    ranges = tuple(ranges)
    blocks, masks = _query_blocks(ranges), _masks(ranges, q.device, q.dtype)
    lse = q.new_zeros((1, q.shape[1], q.shape[0]), dtype=_lse_dtype(q.dtype))
    if not _flash_ops_on(q.device):
        return blockwise_sdpa(q, k, v, blocks, masks, scale).contiguous(), lse
    qh, kh, vh = (_heads_first(x) for x in (q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for blk, mask in zip(blocks, masks):
        window = slice(blk.lo, blk.hi)
        block_out, block_lse = _flash_forward(
            qh[:, :, blk.q0 : blk.q1], kh[:, :, window], vh[:, :, window], attn_mask=mask, scale=scale
        )
        out[blk.q0 : blk.q1] = block_out[0].transpose(0, 1)
        lse[:, :, blk.q0 : blk.q1] = block_lse
    return out, lse


@_attention_op.register_fake
def _attention_fake(q, k, v, ranges, scale):
    return q.new_empty(q.shape), q.new_empty((1, q.shape[1], q.shape[0]), dtype=_lse_dtype(q.dtype))


@torch.library.custom_op(
    "llmjepa::torch_block_causal_attention_backward",
    mutates_args=(),
    schema=(
        "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor[] ranges, "
        "float? scale) -> (Tensor, Tensor, Tensor)"
    ),
)
def _attention_backward_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    ranges: list[torch.Tensor],
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous. On the CPU the flash kernel's backward op per block, dK and dV of each
    block added into its window's slice; elsewhere the blocks recomputed under autograd."""
    ranges = tuple(ranges)
    blocks, masks = _query_blocks(ranges), _masks(ranges, q.device, q.dtype)
    if not _flash_ops_on(q.device):
        return _recomputed_backward(dout, q, k, v, blocks, masks, scale)
    qh, kh, vh, oh, gh = (_heads_first(x) for x in (q, k, v, out, dout))
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    for blk, mask in zip(blocks, masks):
        rows, window = slice(blk.q0, blk.q1), slice(blk.lo, blk.hi)
        bq, bk, bv = _flash_backward(
            gh[:, :, rows], qh[:, :, rows], kh[:, :, window], vh[:, :, window], oh[:, :, rows],
            lse[:, :, rows], 0.0, False, attn_mask=mask, scale=scale,
        )  # fmt: skip
        dq[rows] = bq[0].transpose(0, 1)
        dk[window] += bk[0].transpose(0, 1)
        dv[window] += bv[0].transpose(0, 1)
    return dq, dk, dv


def _recomputed_backward(dout, q, k, v, blocks, masks, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of blockwise_sdpa, each block's probabilities recomputed and differentiated by hand (an op's
    implementation runs below autograd): the form off the CPU, where no flash backward op with GQA is at
    hand (the fallback backend on a GPU; the Triton kernel is the fast one). In float32 at least."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    group = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh, gh = (x.to(work).permute(1, 0, 2) for x in (q, k, v, dout))  # (heads, T, D)
    dq, dk, dv = (torch.zeros(x.shape, dtype=work, device=x.device) for x in (qh, kh, vh))
    for blk, mask in zip(blocks, masks):
        rows, window = slice(blk.q0, blk.q1), slice(blk.lo, blk.hi)
        kb, vb = (x[:, window].repeat_interleave(group, dim=0) for x in (kh, vh))
        scores = qh[:, rows] @ kb.transpose(1, 2) * scale
        p = (scores if mask is None else scores + mask.to(work)).softmax(-1)
        dp = gh[:, rows] @ vb.transpose(1, 2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        dq[:, rows] = ds @ kb * scale
        heads = (k.shape[1], group, blk.hi - blk.lo, q.shape[-1])
        dk[:, window] += (ds.transpose(1, 2) @ qh[:, rows] * scale).reshape(heads).sum(1)
        dv[:, window] += (p.transpose(1, 2) @ gh[:, rows]).reshape(heads).sum(1)
    return tuple(g.permute(1, 0, 2).to(x.dtype).contiguous() for g, x in zip((dq, dk, dv), (q, k, v)))


@_attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, ranges, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, ranges, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *ranges)
    ctx.scale = scale


def _autograd(ctx, dout: torch.Tensor, _dlse: torch.Tensor | None):
    q, k, v, out, lse, *ranges = ctx.saved_tensors
    # a list input takes a list of gradients, one per tensor
    return (*_attention_backward_op(dout, q, k, v, out, lse, ranges, ctx.scale), [None] * len(ranges), None)


_attention_op.register_autograd(_autograd, setup_context=_setup_context)
