"""Packing: a microbatch's view plan as one padding-free stream for the fast executor.

- Packing. Every row's tokens go back to back into one stream of T tokens (no padding), each example's
  rows together (view 1, then that example's other views), so the keys a token sees lie near it: the
  PyTorch attention's key windows and the Triton kernel's touched tiles stay inside one example. Each
  token keeps its position id, and its visibility becomes the kernels' per-token key ranges, shifted
  to stream indices (`pack_plan`).
- Prefix sharing. A row whose first n tokens repeat view 1 (same tokens, same positions, causal
  from 0: `ViewRow.prefix_source`) does not recompute them: its later tokens see view 1's keys for
  that prefix through their shared range. Their K and V are the same numbers, so attention is too.
- View truncation. Of a row other than view 1, only tokens that a pair reads, or that such a token
  sees (transitively), are kept: the Text view ends at its predictor, the Step-JEPA target view
  loses step 0 (never a target) and everything after the last target.

Packing runs over whole rows with numpy (the plan's lists are converted once, `row_arrays`); the only
Python loops are per row and per pair-read. The collator packs (in data-loader workers), and the
PackedStream holds only tensors, so it pickles cheaply.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .plan import IGNORE_INDEX, ViewPlan

RANGE_DTYPE = torch.int32  # the attention reads int32 ranges; halves what the collator ships


@dataclass
class PackedStream:
    """One microbatch as a stream of T tokens; ranges are stream indices (see plan.py)."""

    input_ids: torch.Tensor  # (T,)
    position_ids: torch.Tensor  # (T,)
    shared_start: torch.Tensor  # (T,) int32
    shared_end: torch.Tensor  # (T,) int32
    causal_start: torch.Tensor  # (T,) int32
    label_index: torch.Tensor  # (n,) stream tokens whose hidden state predicts a label
    label_target: torch.Tensor  # (n,) the labels they predict
    pred_index: torch.Tensor  # (pairs,)
    target_index: torch.Tensor  # (pairs,)

    def to(self, device: torch.device) -> "PackedStream":
        """A copy on device (of this class; other fields as they are). To CUDA through pinned memory with
        non_blocking=True: the uploads are queued and the step goes on, where a blocking upload (or one
        from pageable memory) would wait for the GPU."""
        from llmjepa_kernels.block_layout import to_device  # plain torch; imported late, as the kernels are

        device = torch.device(device)
        moved = {name: to_device(t, device) if isinstance(t, torch.Tensor) else t for name, t in vars(self).items()}
        return type(self)(**moved)

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()

    # Pickled as numpy arrays: a CPU tensor pickles through torch's storage serialization (about 30 us
    # each to load on the 2-core CPU, 2026-11-24), nine numpy arrays load in about 10 us together. The
    # data-loader workers' pickler then sends bytes, not a shared-memory segment per tensor.
    def __getstate__(self) -> dict:
        cpu = lambda t: isinstance(t, torch.Tensor) and t.device.type == "cpu"  # noqa: E731
        return {name: value.numpy() if cpu(value) else value for name, value in vars(self).items()}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, torch.from_numpy(value) if isinstance(value, np.ndarray) else value)


# ---- the plan's rows as flat arrays ---------------------------------------------------------------
ROW_FIELDS = ("input_ids", "position_ids", "causal_start", "shared_start", "shared_end", "labels")


@dataclass
class RowArrays:
    """A plan's rows as flat int64 arrays, row after row in plan order; `offset[r]` is row r's first token."""

    offset: np.ndarray  # (rows + 1,)
    row: np.ndarray  # (tokens,) the row of each token
    local: np.ndarray  # (tokens,) its index inside the row
    input_ids: np.ndarray
    position_ids: np.ndarray
    causal_start: np.ndarray
    shared_start: np.ndarray
    shared_end: np.ndarray
    labels: np.ndarray

    @property
    def has_shared(self) -> np.ndarray:
        return self.shared_end >= self.shared_start

    def any_per_row(self, flag: np.ndarray) -> np.ndarray:
        """(rows,) bool: some token of the row has `flag`."""
        return np.bincount(self.row[flag], minlength=len(self.offset) - 1) > 0


def row_arrays(plan: ViewPlan) -> RowArrays:
    """Convert the plan's per-token lists once (one C loop per field), then validate every row at once."""
    rows = plan.rows
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    for row in rows:
        if any(len(getattr(row, name)) != len(row) for name in ROW_FIELDS[1:]):
            raise ValueError(f"row of view {row.view!r}: per-token fields differ in length")
    offset = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offset[1:])
    total = int(offset[-1])
    row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    fields = {
        name: np.fromiter(itertools.chain.from_iterable(getattr(r, name) for r in rows), dtype=np.int64, count=total)
        for name in ROW_FIELDS
    }
    arrays = RowArrays(offset=offset, row=row, local=np.arange(total, dtype=np.int64) - offset[row], **fields)
    check_rows(plan, arrays)
    return arrays


def check_rows(plan: ViewPlan, arrays: RowArrays) -> None:
    """plan.check_row for every row at once: every token sees some key (an empty row of the mask would
    give NaN), and its ranges lie inside its row."""
    lengths = np.diff(arrays.offset)[arrays.row]
    causal_empty = arrays.causal_start > arrays.local
    has_shared = arrays.has_shared
    problems = (
        (causal_empty & ~has_shared, "sees no key"),
        (~causal_empty & (arrays.causal_start < 0), "has a causal range starting before the row"),
        (
            has_shared & ((arrays.shared_start < 0) | (arrays.shared_end >= lengths)),
            "has a shared range outside the row",
        ),
    )
    for bad, what in problems:
        if bad.any():
            g = int(np.flatnonzero(bad)[0])
            r, t = int(arrays.row[g]), int(arrays.local[g])
            raise ValueError(f"row {r} of view {plan.rows[r].view!r}: token {t} {what}")


# ---- packing ---------------------------------------------------------------------------------------
def stream_order(plan: ViewPlan) -> list[int]:
    """Rows in stream order: by example, in plan order inside one (view 1 comes first in build_plan)."""
    return sorted(range(len(plan.rows)), key=lambda r: plan.rows[r].example)


def pair_reads(plan: ViewPlan, arrays: RowArrays) -> tuple[np.ndarray, np.ndarray]:
    """Flat token indices of every pair's predictor and target."""
    pairs = np.asarray(plan.pairs, dtype=np.int64).reshape(-1, 4)  # (pairs, [pr, pt, tr, tt])
    lengths = np.diff(arrays.offset)
    for k, (r, t) in enumerate((pairs[:, 0:2].T, pairs[:, 2:4].T)):
        bad = (r < 0) | (r >= len(lengths)) | (t < 0) | (t >= lengths[np.clip(r, 0, len(lengths) - 1)])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"pair {i} reads {('predictor', 'target')[k]} (row {r[i]}, token {t[i]}), outside the plan"
            )
    return arrays.offset[pairs[:, 0]] + pairs[:, 1], arrays.offset[pairs[:, 2]] + pairs[:, 3]


def needed_in_row(causal_start: np.ndarray, reads: np.ndarray) -> np.ndarray:
    """Tokens of a causal-range row that the read tokens see, transitively.

    The needed tokens form blocks [lo, p], p a read: going down from p, token j < p is needed while some
    needed token above it starts at or before j, i.e. while min(causal_start[j+1 .. p]) <= j (every
    token of (j, p] is needed). Below the first j that fails, this read needs nothing more; lower reads
    start their own blocks. One cumulative minimum per block."""
    keep = np.zeros(len(causal_start), dtype=bool)
    lowest = len(causal_start)  # tokens >= lowest are decided
    for p in sorted(set(reads.tolist()), reverse=True):  # a few reads per row: no numpy call
        if p >= lowest:
            continue  # inside the block above
        reach = np.minimum.accumulate(causal_start[p:0:-1])  # reach[k] = min causal_start over [p - k, p]
        stops = np.flatnonzero(reach > np.arange(p - 1, -1, -1))  # token j = p - 1 - k is not needed
        lo = p - int(stops[0]) if len(stops) else 0
        keep[lo : p + 1] = True
        lowest = lo
    return keep


def pack_plan(plan: ViewPlan, share_prefixes: bool = True, truncate_views: bool = True) -> PackedStream:
    """The plan's rows as one stream, example by example, with prefix sharing and view truncation."""
    return _pack(plan, share_prefixes, truncate_views)[0]


def pack_plan_indexed(
    plan: ViewPlan, share_prefixes: bool = True, truncate_views: bool = True
) -> tuple[PackedStream, list[list[int]]]:
    """pack_plan, and for tests and tools `where[row][token]`: the stream index of each of the plan's
    tokens (-1 where dropped; a shared prefix's tokens point to the source's)."""
    stream, where, offset = _pack(plan, share_prefixes, truncate_views)
    return stream, [where[lo:hi].tolist() for lo, hi in zip(offset[:-1], offset[1:])]


def _pack(plan: ViewPlan, share_prefixes: bool, truncate_views: bool) -> tuple[PackedStream, np.ndarray, np.ndarray]:
    """The stream, each plan token's stream index (flat, -1 if dropped) and the rows' flat offsets."""
    arrays = row_arrays(plan)
    n_rows = len(plan.rows)
    pred, target = pair_reads(plan, arrays)
    # view 1 carries labels and is always whole; a row with its own shared range stays whole too
    # (needed_in_row follows causal ranges only)
    has_shared = arrays.any_per_row(arrays.has_shared)
    whole = has_shared | arrays.any_per_row(arrays.labels != IGNORE_INDEX) | (not truncate_views)
    keep = np.repeat(whole, np.diff(arrays.offset))
    reads = np.concatenate([pred, target])
    read_rows = arrays.row[reads]
    for r in sorted(set(read_rows.tolist())):
        if not whole[r]:
            lo, hi = arrays.offset[r], arrays.offset[r + 1]
            keep[lo:hi] = needed_in_row(arrays.causal_start[lo:hi], reads[read_rows == r] - lo)

    order = stream_order(plan)
    place = np.empty(n_rows, dtype=np.int64)
    place[order] = np.arange(n_rows)
    prefix = np.zeros(n_rows, dtype=np.int64)  # shared prefix length per row
    source = np.full(n_rows, -1, dtype=np.int64)
    for r, row in enumerate(plan.rows):
        if share_prefixes and row.prefix_source is not None and not has_shared[r]:
            s, n = row.prefix_source
            if not (0 <= s < n_rows and 0 <= n <= min(len(row), len(plan.rows[s]))):
                raise ValueError(f"row {r} of view {row.view!r}: prefix_source {row.prefix_source} is outside the plan")
            if n and whole[s] and place[s] < place[r]:  # a source must be packed whole, and before the row
                prefix[r], source[r] = n, s

    # the stream: each row's own kept tokens (not its shared prefix), rows in stream order
    by_place = np.concatenate([np.arange(arrays.offset[r], arrays.offset[r + 1]) for r in order] or [np.zeros(0, int)])
    own = keep & (arrays.local >= prefix[arrays.row])
    tokens = by_place[own[by_place]]  # flat index of each stream token
    where = np.full(len(arrays.row), -1, dtype=np.int64)
    where[tokens] = np.arange(len(tokens))
    for r in order:  # a prefix points to its source's stream places (the source is earlier: already set)
        if prefix[r]:
            dst, src = arrays.offset[r], arrays.offset[source[r]]
            where[dst : dst + prefix[r]] = where[src : src + prefix[r]]

    shared_start, shared_end, causal_start = stream_ranges(arrays, tokens, where, prefix)
    label_at = np.flatnonzero((arrays.labels[1:] != IGNORE_INDEX) & (arrays.row[1:] == arrays.row[:-1]))
    label_index = where[label_at]
    if (where[pred] < 0).any() or (where[target] < 0).any() or (label_index < 0).any():
        raise AssertionError("a pair or label reads a token the packing dropped")  # a bug, not a user error
    stream = PackedStream(
        input_ids=torch.from_numpy(arrays.input_ids[tokens]),
        position_ids=torch.from_numpy(arrays.position_ids[tokens]),
        shared_start=torch.from_numpy(shared_start).to(RANGE_DTYPE),
        shared_end=torch.from_numpy(shared_end).to(RANGE_DTYPE),
        causal_start=torch.from_numpy(causal_start).to(RANGE_DTYPE),
        label_index=torch.from_numpy(label_index),
        label_target=torch.from_numpy(arrays.labels[label_at + 1]),
        pred_index=torch.from_numpy(where[pred]),
        target_index=torch.from_numpy(where[target]),
    )
    return stream, where, arrays.offset


def stream_ranges(
    arrays: RowArrays, tokens: np.ndarray, where: np.ndarray, prefix: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stream tokens' ranges in stream indices.

    A token sees row tokens [causal_start, t] and its own shared range. Kept tokens' ranges hold kept
    tokens only (truncation keeps what kept tokens see), which are contiguous in the stream, so each
    range maps to a stream range. The part of a causal range inside a shared prefix [0, n) lives in
    the source row, contiguous there: it becomes the stream's shared range, the rest [n, t] the causal
    range (a row with a prefix has no shared range of its own)."""
    base = arrays.offset[arrays.row[tokens]]
    t = arrays.local[tokens]
    n = prefix[arrays.row[tokens]]
    s, a, b = arrays.causal_start[tokens], arrays.shared_start[tokens], arrays.shared_end[tokens]
    from_prefix = s < n  # (a row with a prefix has no shared range of its own)
    has_shared = b >= a
    causal_empty = s > t
    causal_start = np.where(
        causal_empty, np.arange(1, len(tokens) + 1), where[base + np.where(from_prefix, n, np.minimum(s, t))]
    )
    sees_shared = from_prefix | has_shared
    shared_start = np.where(sees_shared, where[base + np.where(from_prefix, s, np.where(has_shared, a, t))], 0)
    shared_end = np.where(sees_shared, where[base + np.where(from_prefix, n - 1, np.where(has_shared, b, t))], -1)
    if (causal_start < 0).any() or (shared_start < 0).any() or (shared_end < -1).any():
        raise AssertionError("a kept token sees a dropped key")  # a bug, not a user error
    return shared_start, shared_end, causal_start
