"""The packed stream's attention layout, built on the host: what the collator ships for the fast path.

The collator (`views.collate.ViewCollator(pack=True)`) packs a plan into one stream (`views.pack`) and
builds its layout here, in data-loader workers: the ranges validated and, for an `AttentionShape`, the
tile lists the Triton kernels or FlexAttention read. The fast executor (`execution.fast`) only uploads
it. Nothing here runs a model, so the collator imports no executor.
"""

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .pack import PackedStream
from .plan import ViewPlan

if TYPE_CHECKING:
    from llmjepa_kernels.block_layout import BlockCausalLayout, TileShape


@dataclass(frozen=True)
class AttentionShape:
    """What the tile lists an attention reads depend on: the Triton kernels' tile shapes on
    `default_config(head_dim, dtype)`; FlexAttention's BlockMask on its block size only."""

    head_dim: int
    dtype: torch.dtype
    backend: str = "triton"  # "triton" or "flex": the backends that read tile lists


@dataclass
class StreamWithLayout(PackedStream):
    """A packed stream with its attention layout (ranges validated, tile lists built on the host);
    `to(device)` moves both without blocking."""

    layout: "BlockCausalLayout | None" = None

    def to(self, device: torch.device) -> "StreamWithLayout":
        moved = super().to(device)  # the layout rides along unmoved; move it here
        moved.layout = self.layout.to(device, non_blocking=True) if self.layout is not None else None
        return moved

    def pin_memory(self) -> "StreamWithLayout":
        """In pinned host memory, for the data loader's pin thread (pin_memory=True, on CUDA): the upload
        in `to` then pins nothing in the training step."""
        pinned = {name: t.pin_memory() if isinstance(t, torch.Tensor) else t for name, t in vars(self).items()}
        pinned["layout"] = self.layout.pin_memory() if self.layout is not None else None
        return StreamWithLayout(**pinned)


@dataclass
class PackedPlan:
    """What a fast-path step reads of a microbatch, as the collator ships it: the packed stream with its
    layout, and the plan's counts (the trainer's normalization and step record), without the plan's
    per-token rows. The collator keeps the whole ViewPlan where its rows are read: the reference
    executor, --debug's printing, and STP (its terms are placed by the rows' lengths)."""

    packed: StreamWithLayout
    label_tokens: int
    n_pairs: int
    n_tokens: int  # the plan's tokens, every view whole (not the stream's)
    n_rows: int
    n_examples: int
    extras: dict[str, Any] = field(default_factory=dict)  # a ViewPlan subclass's own fields, read as attributes
    stp: ClassVar[None] = None  # as ViewPlan.stp: this plan has no STP terms

    ROWS_FIELDS: ClassVar[tuple[str, ...]] = ("rows", "pairs", "packed", "n_examples", "stp")

    @classmethod
    def of(cls, plan: ViewPlan, packed: StreamWithLayout) -> "PackedPlan":
        """The counts as the plan computes them (a subclass's own n_pairs included), and the fields a
        ViewPlan subclass adds (builders.EntropyPlan's `entropy`, which execution.readout.ViewReadout reads)."""
        extras = {f.name: getattr(plan, f.name) for f in fields(plan) if f.name not in cls.ROWS_FIELDS}
        return cls(packed, plan.label_tokens, plan.n_pairs, plan.n_tokens, plan.n_rows, plan.n_examples, extras)

    def pin_memory(self) -> "PackedPlan":
        """The data loader's pin thread calls this (pin_memory=True): the stream and layout pinned."""
        return replace(self, packed=self.packed.pin_memory())

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})  # not self.extras: unpickling asks before __dict__ is set
        if name in extras:
            return extras[name]
        raise AttributeError(f"PackedPlan has no {name!r}: the collator ships no rows (ViewCollator keep_rows)")


def kernel_tiles(shape: AttentionShape | None) -> "list[TileShape]":
    """The tile lists this attention reads. Triton: forward and dQ by query block, dK/dV by key block,
    each of its own tile shape (default_config). Flex: by query block at FLEX_BLOCK x FLEX_BLOCK (the
    BlockMask's kv lists; flex derives the transposed ones itself). None without a shape."""
    if shape is None:
        return []
    if shape.backend == "flex":
        from llmjepa_kernels.flex_attention import FLEX_BLOCK

        return [("by_query", FLEX_BLOCK, FLEX_BLOCK)]
    from llmjepa_kernels.block_causal_attention import default_config

    config = default_config(shape.head_dim, shape.dtype)
    wanted = [("by_query", config.forward), ("by_key", config.dkdv), ("by_query", config.dq)]
    return list(dict.fromkeys((direction, k.block_m, k.block_n) for direction, k in wanted))


def host_layout(stream: PackedStream, shape: AttentionShape | None) -> StreamWithLayout:
    """The stream with its layout, built where the stream lives (the collator's CPU): the ranges
    validated and the tile lists for `shape` built there, so the step reads no device value for them."""
    from llmjepa_kernels.block_layout import BlockCausalLayout

    layout = BlockCausalLayout(stream.shared_start, stream.shared_end, stream.causal_start, tiles=kernel_tiles(shape))
    parts = {name: value for name, value in vars(stream).items() if name != "layout"}
    return StreamWithLayout(**parts, layout=layout)
