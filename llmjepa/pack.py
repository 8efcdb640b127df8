"""Packing: a microbatch's view plan as one padding-free stream for the fast executor.

- Packing. Every row's tokens go back to back into one stream of T tokens (no padding). Each token
  keeps its position id, and its visibility becomes the kernels' per-token key ranges, shifted to
  stream indices (`pack_plan`).
- Prefix sharing. A row whose first n tokens repeat view 1 (same tokens, same positions, causal
  from 0: `ViewRow.prefix_source`) does not recompute them: its later tokens see view 1's keys for
  that prefix through their shared range. Their K and V are the same numbers, so attention is too.
- View truncation. Of a row other than view 1, only tokens that a pair reads, or that such a token
  sees (transitively), are kept: the Text view ends at its predictor, the Step-JEPA target view
  loses step 0 (never a target) and everything after the last target.

The collator packs (in data-loader workers), so the training step does not pay for it.
"""

from dataclasses import dataclass

import torch

from .plan import IGNORE_INDEX, ViewPlan, ViewRow, check_row


@dataclass
class PackedStream:
    """One microbatch as a stream of T tokens; ranges are stream indices (see plan.py)."""

    input_ids: torch.Tensor  # (T,)
    position_ids: torch.Tensor  # (T,)
    shared_start: torch.Tensor  # (T,)
    shared_end: torch.Tensor  # (T,)
    causal_start: torch.Tensor  # (T,)
    label_index: torch.Tensor  # (n,) stream tokens whose hidden state predicts a label
    label_target: torch.Tensor  # (n,) the labels they predict
    pred_index: torch.Tensor  # (pairs,)
    target_index: torch.Tensor  # (pairs,)
    stream_index: list[list[int]]  # [row][token]: where the plan's token lives in the stream, -1 if dropped

    def to(self, device: torch.device) -> "PackedStream":
        moved = {name: t.to(device) if isinstance(t, torch.Tensor) else t for name, t in vars(self).items()}
        return PackedStream(**moved)

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()


def needed_tokens(row: ViewRow, read: set[int]) -> list[bool]:
    """Tokens of a row that the tokens in `read` see, transitively (a causal-range row: one sweep).

    Going down the row, `reach` is the lowest causal start among needed tokens at or after the
    current one; a token is needed when it is read or some needed later token's range covers it."""
    keep = [False] * len(row)
    reach = len(row)
    for j in range(len(row) - 1, -1, -1):
        if j in read or reach <= j:
            keep[j] = True
            reach = min(reach, row.causal_start[j])
    return keep


def has_shared_range(row: ViewRow) -> bool:
    return any(e >= s for s, e in zip(row.shared_start, row.shared_end))


def trains(row: ViewRow) -> bool:
    return any(label != IGNORE_INDEX for label in row.labels)


def row_reads(plan: ViewPlan) -> dict[int, set[int]]:
    """Per row, the token indices that pairs read."""
    reads: dict[int, set[int]] = {}
    for (pr, pt), (tr, tt) in plan.pairs:
        reads.setdefault(pr, set()).add(pt)
        reads.setdefault(tr, set()).add(tt)
    return reads


@dataclass
class _StreamBuilder:
    """Accumulates rows into stream lists; `where[r][t]` is row r token t's stream index (or -1)."""

    ids: list[int]
    pos: list[int]
    shared_start: list[int]
    shared_end: list[int]
    causal_start: list[int]
    where: list[list[int]]

    def add_row(self, row: ViewRow, keep: list[bool], prefix: tuple[int, int] | None) -> None:
        """Append the kept tokens of a row; with prefix (source row, n), tokens < n come from the source."""
        n = prefix[1] if prefix is not None else 0
        where = (self.where[prefix[0]][:n] if prefix is not None else []) + [-1] * (len(row) - n)
        for t in range(n, len(row)):
            if keep[t]:
                where[t] = len(self.ids)
                self.ids.append(row.input_ids[t])
                self.pos.append(row.position_ids[t])
        for t in range(n, len(row)):
            if keep[t]:
                self.add_ranges(row, t, where, n)
        self.where.append(where)

    def add_ranges(self, row: ViewRow, t: int, where: list[int], n: int) -> None:
        """Token t sees row tokens [causal_start, t] (kept by construction) and its own shared range;
        the part of the causal range inside a shared prefix becomes the stream's shared range."""
        cs = row.causal_start[t]
        if cs < n:  # the prefix [cs, n) lives in the source row, contiguous there
            self.shared_start.append(where[cs])
            self.shared_end.append(where[n - 1])
            self.causal_start.append(where[n])
            return
        self.causal_start.append(where[cs])
        if row.shared_end[t] >= row.shared_start[t]:
            self.shared_start.append(where[row.shared_start[t]])
            self.shared_end.append(where[row.shared_end[t]])
        else:
            self.shared_start.append(0)
            self.shared_end.append(-1)


def pack_plan(plan: ViewPlan, share_prefixes: bool = True, truncate_views: bool = True) -> PackedStream:
    """The plan's rows as one stream with prefix sharing and view truncation (module docstring)."""
    reads = row_reads(plan)
    # view 1 carries labels and is always whole; a row with its own shared range stays whole too
    # (the sweep in needed_tokens follows causal ranges only)
    whole = [not truncate_views or trains(row) or has_shared_range(row) for row in plan.rows]
    builder = _StreamBuilder([], [], [], [], [], [])
    for r, row in enumerate(plan.rows):
        check_row(row)
        keep = [True] * len(row) if whole[r] else needed_tokens(row, reads.get(r, set()))
        prefix = row.prefix_source if share_prefixes and not has_shared_range(row) else None
        if prefix is not None and (prefix[0] >= r or not whole[prefix[0]]):  # a source must be earlier and whole
            prefix = None
        builder.add_row(row, keep, prefix)
    label_index, label_target = [], []
    for r, row in enumerate(plan.rows):
        for t in range(len(row) - 1):
            if row.labels[t + 1] != IGNORE_INDEX:
                label_index.append(builder.where[r][t])
                label_target.append(row.labels[t + 1])
    pred = [builder.where[r][t] for (r, t), _ in plan.pairs]
    target = [builder.where[r][t] for _, (r, t) in plan.pairs]
    if min(pred + target + label_index, default=0) < 0:
        raise AssertionError("a pair or label reads a token the packing dropped")  # a bug, not a user error
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return PackedStream(
        input_ids=as_long(builder.ids),
        position_ids=as_long(builder.pos),
        shared_start=as_long(builder.shared_start),
        shared_end=as_long(builder.shared_end),
        causal_start=as_long(builder.causal_start),
        label_index=as_long(label_index),
        label_target=as_long(label_target),
        pred_index=as_long(pred),
        target_index=as_long(target),
        stream_index=builder.where,
    )
