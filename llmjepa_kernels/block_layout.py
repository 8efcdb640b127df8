"""Visibility ranges of one packed stream and the tile lists the attention kernels visit.

Plain torch, no Triton: the collator builds a layout on the CPU (in data-loader workers), with the
tile lists the kernels will read, and the step moves it to the GPU with `to(device, non_blocking=True)`.
Validation and list building read tensor values on the host (`bool(bad.any())`, `int(count.max())`);
done there, they cost the GPU no sync. The PyTorch form of the attention reads the same ranges.

Skipping: for every (query block, key block) tile, whether some query of the tile sees some key of it
("touched") and whether every query sees every key ("full"), from a difference array over the
per-query ranges (O(T + tiles), no T x T tensor). Each query block then visits only its touched key
blocks, listed in two index lists: full tiles run without any mask arithmetic, partial tiles apply
the range test. The backward dK/dV kernel uses the transposed lists (per key block, the query blocks
that see it). Tiles no query sees are never loaded. Each direction is built on first use: the
forward and dQ kernels read `by_query` of their tile shapes, the dK/dV kernel `by_key` of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = ["DIRECTIONS", "BlockCausalLayout", "TileShape", "to_device"]

DIRECTIONS = ("by_query", "by_key")
TileShape = tuple[str, int, int]  # (direction, block_m, block_n): one tile list a kernel reads


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def to_device(t: torch.Tensor, device: torch.device, non_blocking: bool = True) -> torch.Tensor:
    """t on device. From the host with non_blocking, through pinned memory to CUDA: the copy is queued
    on the stream and the host goes on (a blocking copy, or one from pageable memory, waits for the
    stream). Moves from a device stay blocking (a non-blocking copy to the host could be read early)."""
    if not non_blocking or t.device.type != "cpu":
        return t.to(device)
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@dataclass(frozen=True)
class _VisitLists:
    """For each row block: how many column blocks to visit and which, full tiles and partial tiles apart."""

    full_count: torch.Tensor  # (rows,) int32
    full_index: torch.Tensor  # (rows, width) int32, ascending, valid up to full_count
    part_count: torch.Tensor
    part_index: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = True) -> _VisitLists:
        return self.map(lambda t: to_device(t, device, non_blocking))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> _VisitLists:
        return _VisitLists(*(fn(getattr(self, f.name)) for f in fields(self)))

    def __getstate__(self) -> dict:
        return _numpy_state(vars(self))

    def __setstate__(self, state: dict) -> None:
        for name, value in _tensor_state(state).items():
            object.__setattr__(self, name, value)  # frozen


class _TileLists:
    """The visit lists of one tile shape: by_query (query block -> key blocks; forward, dQ) and by_key
    (key block -> query blocks; dK/dV), each built on first use from the tile masks."""

    def __init__(self, layout: BlockCausalLayout, block_m: int, block_n: int) -> None:
        self._layout = layout
        self.block_m, self.block_n = block_m, block_n
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None  # (full, partial), built once
        self.built: dict[str, _VisitLists] = {}

    def get(self, direction: str) -> _VisitLists:
        if direction not in DIRECTIONS:
            raise ValueError(f"tile direction must be one of {DIRECTIONS}, got {direction!r}")
        if direction not in self.built:
            if self._masks is None:
                layout = self._layout
                touched, full = _tile_masks(
                    layout.shared_start, layout.shared_end, layout.causal_start, self.block_m, self.block_n
                )
                self._masks = (full, touched & ~full)
            full, partial = self._masks
            self.built[direction] = (
                _visit_lists(full, partial) if direction == "by_query" else _visit_lists(full.t(), partial.t())
            )
        return self.built[direction]

    def __getstate__(self) -> dict:
        # Pickled from data-loader workers: ship the lists, not the (query blocks x key blocks) masks.
        return {**self.__dict__, "_masks": None}

    @property
    def by_query(self) -> _VisitLists:
        return self.get("by_query")

    @property
    def by_key(self) -> _VisitLists:
        return self.get("by_key")


class BlockCausalLayout:
    """Validated visibility ranges of one packed stream, with the tile visit lists cached per tile shape
    and direction.

    Validation reads the ranges (one host sync where they live on a GPU), and so does building a list
    (`int(count.max())`): build the layout where the stream is packed, on the CPU, with the lists the
    kernels will read (`tiles=[(direction, block_m, block_n), ...]`), then move it with `to(device)`.
    A list not built before the move is built on the device at first use (correct, with syncs).
    """

    def __init__(
        self,
        shared_start: torch.Tensor,
        shared_end: torch.Tensor,
        causal_start: torch.Tensor,
        tiles: Iterable[TileShape] = (),
    ) -> None:
        _check_range_tensors(shared_start=shared_start, shared_end=shared_end, causal_start=causal_start)
        self.device = shared_start.device
        self.shared_start, self.shared_end, self.causal_start = _checked_ranges(
            shared_start.long(), shared_end.long(), causal_start.long()
        )
        self._tiles: dict[tuple[int, int], _TileLists] = {}
        self.build(tiles)

    @property
    def num_tokens(self) -> int:
        """T, read from the ranges' size: under torch.compile a symbolic size like q's, where an int
        attribute would be a constant that specializes the graph on this stream's length."""
        return self.shared_start.shape[0]

    def ranges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shared_start, shared_end, causal_start): what the attention ops take in place of the layout."""
        return self.shared_start, self.shared_end, self.causal_start

    def tensors(self) -> list[torch.Tensor]:
        """The ranges and every built list: what a compiled model reads of the layout (`mark_dynamic`)."""
        lists = [v for tiles in self._tiles.values() for v in tiles.built.values()]
        return [*self.ranges(), *(getattr(v, f.name) for v in lists for f in fields(v))]

    def build(self, tiles: Iterable[TileShape]) -> None:
        """Build these (direction, block_m, block_n) lists now, where the layout lives; built ones stay."""
        for direction, block_m, block_n in tiles:
            self.tiles(block_m, block_n).get(direction)

    def tiles(self, block_m: int, block_n: int) -> _TileLists:
        key = (block_m, block_n)
        if key not in self._tiles:
            self._tiles[key] = _TileLists(self, block_m, block_n)
        return self._tiles[key]

    def built_tiles(self) -> list[TileShape]:
        """The (direction, block_m, block_n) lists built so far."""
        return [(d, bm, bn) for (bm, bn), lists in self._tiles.items() for d in lists.built]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> BlockCausalLayout:
        """This layout on device: the ranges and every list built so far, through pinned memory with
        non_blocking to CUDA (to_device), without validating again. The tile masks stay behind."""
        device = torch.device(device)
        return self.map(lambda t: to_device(t, device, non_blocking))

    def pin_memory(self) -> BlockCausalLayout:
        """This layout in pinned host memory: the data loader's pin thread calls it (pin_memory=True),
        so the upload in `to` finds its tensors pinned and pins nothing in the training step."""
        return self.map(torch.Tensor.pin_memory)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BlockCausalLayout:
        """A layout whose ranges and built lists are fn of these (not validated again; no tile masks)."""
        moved = object.__new__(BlockCausalLayout)
        moved.shared_start, moved.shared_end, moved.causal_start = (
            fn(x) for x in (self.shared_start, self.shared_end, self.causal_start)
        )
        moved.device = moved.shared_start.device
        moved._tiles = {}
        for (block_m, block_n), lists in self._tiles.items():
            target = moved.tiles(block_m, block_n)
            target.built = {d: v.map(fn) for d, v in lists.built.items()}
        return moved

    # Pickled (from data-loader workers) as numpy arrays: a CPU tensor pickles through torch's storage
    # serialization, several times slower to load than a numpy array (docs/fast_path.md has the figures).
    def __getstate__(self) -> dict:
        return _numpy_state(vars(self))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_tensor_state(state))

    def visited_tiles(self, block_m: int, block_n: int) -> tuple[int, int]:
        """(full tiles, partial tiles) one head visits in the forward pass; for benchmarks and tests."""
        lists = self.tiles(block_m, block_n).by_query
        return int(lists.full_count.sum()), int(lists.part_count.sum())


def _numpy_state(state: dict) -> dict:
    """An object's attributes with its CPU tensors as numpy arrays (device tensors pickle as they are)."""
    return {
        name: value.numpy() if isinstance(value, torch.Tensor) and value.device.type == "cpu" else value
        for name, value in state.items()
    }


def _tensor_state(state: dict) -> dict:
    return {name: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for name, v in state.items()}


def _check_range_tensors(**ranges: torch.Tensor) -> None:
    for name, tensor in ranges.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 (or int64), got {tensor.dtype}")
        if tensor.dim() != 1:
            raise ValueError(f"{name} must have shape (T,), got {tuple(tensor.shape)}")
    first = next(iter(ranges.values()))
    if any(t.shape != first.shape for t in ranges.values()):
        shapes = {name: tuple(t.shape) for name, t in ranges.items()}
        raise ValueError(f"range tensors must have the same shape (T,), got {shapes}")
    if any(t.device != first.device for t in ranges.values()):
        devices = {name: str(t.device) for name, t in ranges.items()}
        raise ValueError(f"range tensors must be on one device, got {devices}")
    if first.numel() == 0:
        raise ValueError("the token stream is empty (T == 0)")
    if first.numel() >= 2**31 - 1:
        raise ValueError(f"T = {first.numel()} does not fit the int32 token indices")


def _checked_ranges(
    shared_start: torch.Tensor, shared_end: torch.Tensor, causal_start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate int64 ranges; return them as int32 with empty ranges in one canonical form.

    Empty ranges may hold any values; rewriting them as [0, -1] (shared) and T (causal start) keeps
    them empty through the int32 cast and lets the kernels test visibility without special cases.
    """
    t = shared_start.numel()
    i = torch.arange(t, device=shared_start.device)
    has_shared = shared_start <= shared_end
    has_causal = causal_start <= i
    empty = ~has_shared & ~has_causal
    bad_shared = has_shared & ((shared_start < 0) | (shared_end >= t))
    bad_causal = has_causal & (causal_start < 0)
    bad = empty | bad_shared | bad_causal
    if bool(bad.any()):  # the single host sync of the validation
        _raise_first_bad(shared_start, shared_end, causal_start, empty, bad_shared, bad)
    return (
        torch.where(has_shared, shared_start, 0).to(torch.int32).contiguous(),
        torch.where(has_shared, shared_end, -1).to(torch.int32).contiguous(),
        torch.where(has_causal, causal_start, t).to(torch.int32).contiguous(),
    )


def _raise_first_bad(
    shared_start: torch.Tensor,
    shared_end: torch.Tensor,
    causal_start: torch.Tensor,
    empty: torch.Tensor,
    bad_shared: torch.Tensor,
    bad: torch.Tensor,
) -> None:
    t = shared_start.numel()
    idx = int(bad.nonzero()[0, 0])
    a, b, s = int(shared_start[idx]), int(shared_end[idx]), int(causal_start[idx])
    if bool(empty[idx]):
        raise ValueError(
            f"query token {idx} has an empty shared range [{a}, {b}] and an empty causal range "
            f"[{s}, {idx}]: it would attend to no key"
        )
    if bool(bad_shared[idx]):
        raise ValueError(f"query token {idx}: shared range [{a}, {b}] is outside the stream [0, {t - 1}]")
    raise ValueError(f"query token {idx}: causal range [{s}, {idx}] starts before token 0")


def _tile_masks(
    shared_start: torch.Tensor,
    shared_end: torch.Tensor,
    causal_start: torch.Tensor,
    block_m: int,
    block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool (query blocks, key blocks) matrices: tile touched by some visible pair / all pairs visible.

    Each query adds +1 over the key-block interval its range touches (or fully covers) in a
    difference array of its query block's row; a cumulative sum gives per-tile counts. A tile is full
    when all block_m queries cover it, so the ragged last query block is never full, and the ragged
    last key block is never fully covered (its end block_n * n_blocks - 1 lies past T - 1).
    """
    t = shared_start.numel()
    device = shared_start.device
    a = shared_start.long()
    b = shared_end.long()
    s = causal_start.long()
    i = torch.arange(t, device=device)
    n_m = _cdiv(t, block_m)
    n_n = _cdiv(t, block_n)
    row = i // block_m
    has_shared = a <= b
    has_causal = s <= i

    touched = torch.zeros(n_m, n_n + 1, dtype=torch.int32, device=device)
    _add_block_interval(touched, row, a // block_n, b // block_n, has_shared)
    _add_block_interval(touched, row, s // block_n, i // block_n, has_causal)

    # Merge the two ranges when they overlap or abut, so a key block straddling them counts as covered.
    merged = has_shared & has_causal & (s <= b + 1) & (a <= i + 1)
    lo1 = torch.where(merged, torch.minimum(a, s), a)
    hi1 = torch.where(merged, torch.maximum(b, i), b)
    covered = torch.zeros_like(touched)
    _add_block_interval(
        covered,
        row,
        _ceil_div(lo1, block_n),
        (hi1 + 1) // block_n - 1,
        has_shared | merged,
    )
    _add_block_interval(
        covered,
        row,
        _ceil_div(s, block_n),
        (i + 1) // block_n - 1,
        has_causal & ~merged,
    )

    touched = touched.cumsum(1)[:, :n_n] > 0
    full = covered.cumsum(1)[:, :n_n] == block_m
    return touched, full


def _ceil_div(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.div(x + d - 1, d, rounding_mode="floor")


def _add_block_interval(
    diff: torch.Tensor,
    row: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    keep: torch.Tensor,
) -> None:
    """diff[row, lo] += 1 and diff[row, hi + 1] -= 1 where keep and lo <= hi (intervals in block units)."""
    keep = keep & (lo <= hi)
    weight = keep.to(diff.dtype)
    width = diff.shape[1]
    lo = torch.where(keep, lo, 0)
    end = torch.where(keep, hi + 1, 0)
    flat = diff.view(-1)
    flat.index_add_(0, row * width + lo, weight)
    flat.index_add_(0, row * width + end, -weight)


def _visit_lists(full: torch.Tensor, partial: torch.Tensor) -> _VisitLists:
    full_count, full_index = _compact(full)
    part_count, part_index = _compact(partial)
    return _VisitLists(full_count, full_index, part_count, part_index)


def _compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: number of True columns and their indices in ascending order (row-padded)."""
    count = mask.sum(1, dtype=torch.int32)
    # A stable sort of the negated mask puts the True columns first, in column order.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    width = max(int(count.max()), 1) if count.numel() else 1
    return count.contiguous(), order[:, :width].to(torch.int32).contiguous()


# ---- pair counts (benchmarks: computed / visible) ------------------------------------------------------
def visible_pairs(layout: BlockCausalLayout) -> int:
    """(query, key) pairs the ranges make visible, per head: what any attention must compute."""
    a, b, s = (x.long() for x in (layout.shared_start, layout.shared_end, layout.causal_start))
    i = torch.arange(layout.num_tokens, device=a.device)
    shared = (b - a + 1).clamp_min(0)
    causal = (i - s + 1).clamp_min(0)
    both = (torch.minimum(b, i) - torch.maximum(a, s) + 1).clamp_min(0)  # keys in both ranges count once
    return int((shared + causal - both).sum())


def tile_pairs(layout: BlockCausalLayout, block_m: int, block_n: int) -> int:
    """Pairs the Triton kernels compute per head at this tile shape: every pair of every touched tile
    (touched tiles x block_m x block_n; the ragged last blocks count whole, as the kernels compute them)."""
    touched, _ = _tile_masks(layout.shared_start, layout.shared_end, layout.causal_start, block_m, block_n)
    return int(touched.sum()) * block_m * block_n
