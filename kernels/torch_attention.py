"""The PyTorch form of block_causal_attention: SDPA over query blocks, no Triton needed.

Used by the fast path on the CPU (and so in CI), and wherever Triton is missing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .block_layout import BlockCausalLayout

__all__ = ["TORCH_QUERY_BLOCK", "torch_block_causal_attention"]


TORCH_QUERY_BLOCK = 256  # queries per SDPA call in the PyTorch form


def torch_block_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout, scale: float | None
) -> torch.Tensor:
    """PyTorch form of block_causal_attention (CPU without Triton, and the fast path's CPU attention).

    Query blocks of TORCH_QUERY_BLOCK tokens; each attends to the key window from the lowest start of
    its ranges to its last query (or shared end), with a (block, window) boolean mask. Ranges stay
    inside an example, so the window spans about one example, not the stream: no T x T mask, and a
    packed stream costs about what its examples would cost apart."""
    a, b, s = (x.long() for x in (layout.shared_start, layout.shared_end, layout.causal_start))
    has_shared = b >= a
    lowest = torch.minimum(torch.where(has_shared, a, s), s)
    highest = torch.where(has_shared, b, -1)  # a shared range may reach past its query
    out = []
    for q0 in range(0, q.shape[0], TORCH_QUERY_BLOCK):
        q1 = min(q0 + TORCH_QUERY_BLOCK, q.shape[0])
        lo, hi = int(lowest[q0:q1].min()), max(q1, int(highest[q0:q1].max()) + 1)
        i = torch.arange(q0, q1, device=q.device)[:, None]
        j = torch.arange(lo, hi, device=q.device)[None, :]
        ab, bb, sb = a[q0:q1, None], b[q0:q1, None], s[q0:q1, None]
        mask = ((j >= ab) & (j <= bb)) | ((j >= sb) & (j <= i))
        block = F.scaled_dot_product_attention(
            q[q0:q1].transpose(0, 1),
            k[lo:hi].transpose(0, 1),
            v[lo:hi].transpose(0, 1),
            attn_mask=mask,
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        out.append(block.transpose(0, 1))
    return torch.cat(out)
