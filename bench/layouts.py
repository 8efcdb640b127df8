"""Packed-stream layouts shared by the benchmarks: JEPA-like examples as visibility ranges, and their
plain-varlen form (cu_seqlens) for kernels that only know per-segment causal attention.

A layout is three int32 tensors of shape (T,), as block_causal_attention reads them: query i sees key j
when shared_start[i] <= j <= shared_end[i] or causal_start[i] <= j <= i.

    from layouts import example_shape, jepa_layout, cu_seqlens_from_ranges, without_shared_ranges
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Ranges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # shared_start, shared_end, causal_start


@dataclass
class Example:
    """Lengths of one JEPA example: view 1, a predictor view sharing view 1's prefix, step segments."""

    view1: int
    shared_prefix: int
    predictor: int
    steps: list[int]

    @property
    def length(self) -> int:
        return self.view1 + self.predictor + sum(self.steps)


def example_shape(length: int) -> Example:
    view1 = length * 8 // 15  # 160 of 300
    predictor = length // 5  # 60 of 300
    rest = length - view1 - predictor
    steps = [rest // 4] * 4
    steps[-1] += rest - sum(steps)
    return Example(view1=view1, shared_prefix=view1 * 3 // 10, predictor=predictor, steps=steps)


def jepa_layout(tokens: int, example: Example, device: torch.device) -> Ranges:
    """Ranges (shared_start, shared_end, causal_start) for whole examples up to `tokens`, the last one cut."""
    a, b, s = [], [], []
    while len(s) < tokens:
        view1 = len(s)
        a += [0] * example.view1
        b += [-1] * example.view1
        s += [view1] * example.view1
        start = len(s)
        a += [view1] * example.predictor
        b += [view1 + example.shared_prefix - 1] * example.predictor
        s += [start] * example.predictor
        for step in example.steps:
            start = len(s)
            a += [0] * step
            b += [-1] * step
            s += [start] * step
    return tuple(torch.tensor(x[:tokens], dtype=torch.int32, device=device) for x in (a, b, s))


def visible_pairs(shared_start: torch.Tensor, shared_end: torch.Tensor, causal_start: torch.Tensor) -> int:
    a, b, s = (x.long() for x in (shared_start, shared_end, causal_start))
    i = torch.arange(a.numel(), device=a.device)
    shared = (b - a + 1).clamp_min(0)
    causal = (i - s + 1).clamp_min(0)
    overlap = (torch.minimum(b, i) - torch.maximum(a, s) + 1).clamp_min(0)
    return int((shared + causal - overlap).sum())


def dense_visibility(shared_start: torch.Tensor, shared_end: torch.Tensor, causal_start: torch.Tensor) -> torch.Tensor:
    i = torch.arange(shared_start.numel(), device=shared_start.device)
    j = i[None, :]
    a, b, s = (x.long()[:, None] for x in (shared_start, shared_end, causal_start))
    return ((j >= a) & (j <= b)) | ((j >= s) & (j <= i[:, None]))


# ----------------------------------------------------------------------------------------------------
# Plain varlen: every token sees the causal prefix of its own segment and nothing else
# ----------------------------------------------------------------------------------------------------


def without_shared_ranges(ranges: Ranges) -> Ranges:
    """The same segments with every shared range emptied: the predictor view no longer sees view 1's
    prefix, each segment is plain causal over itself. What a varlen (cu_seqlens) kernel can run."""
    shared_start, shared_end, causal_start = ranges
    return torch.zeros_like(shared_start), torch.full_like(shared_end, -1), causal_start.clone()


def varlen_ranges(cu_seqlens: torch.Tensor) -> Ranges:
    """Ranges of back-to-back causal segments with boundaries cu_seqlens = [0, end_1, ..., T]."""
    bounds = cu_seqlens.long()
    lengths = bounds.diff()
    if bounds.numel() < 2 or int(bounds[0]) != 0 or bool((lengths <= 0).any()):
        raise ValueError(f"cu_seqlens must start at 0 and increase strictly, got {bounds.tolist()}")
    causal_start = torch.repeat_interleave(bounds[:-1], lengths).to(torch.int32)
    return torch.zeros_like(causal_start), torch.full_like(causal_start, -1), causal_start


def cu_seqlens_from_ranges(ranges: Ranges) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32 of shape (segments + 1,), longest segment) of a plain varlen layout.

    A segment starts at each token whose causal range starts at itself; every other token's causal
    range must start where its segment does, and no token may have a shared range. Anything else
    (a predictor view that also sees a prefix of view 1, a causal range reaching back into an earlier
    segment) is a ValueError: cu_seqlens cannot express it."""
    shared_start, shared_end, causal_start = (x.long() for x in ranges)
    tokens = causal_start.numel()
    i = torch.arange(tokens, device=causal_start.device)
    with_shared = (shared_start <= shared_end).nonzero()
    if with_shared.numel():
        idx = int(with_shared[0, 0])
        raise ValueError(
            f"token {idx} has a shared range [{int(shared_start[idx])}, {int(shared_end[idx])}]: "
            "varlen attention cannot express it (use without_shared_ranges)"
        )
    if tokens == 0 or int(causal_start[0]) != 0:
        raise ValueError("the first token must start a segment (causal_start[0] == 0)")
    starts = (causal_start == i).nonzero().flatten()
    # The start of each token's segment: the last segment start at or before the token.
    segment_start = starts[torch.searchsorted(starts, i, right=True) - 1]
    wrong = (causal_start != segment_start).nonzero()
    if wrong.numel():
        idx = int(wrong[0, 0])
        raise ValueError(
            f"token {idx}: causal range starts at {int(causal_start[idx])}, not at its segment's start "
            f"{int(segment_start[idx])}: not a plain varlen layout"
        )
    cu_seqlens = torch.cat([starts, starts.new_tensor([tokens])]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())
