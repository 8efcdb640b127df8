"""The Trainer's data collator: a list of Encoded examples -> {"plan": ViewPlan or layout.PackedPlan}."""

import random

from .builders import build_plan
from .encoding import Encoded, ViewConfig
from .layout import AttentionShape, PackedPlan, host_layout
from .pack import pack_plan
from .plan import ViewPlan


def jepa_ratio_keeps_views(example_ids: list[int], ratio: float, seed: int) -> bool:
    """Whether a microbatch runs its views under --jepa_ratio (deterministic per batch content,
    so resumed runs, reference and fast paths all draw the same)."""
    if ratio <= 0:
        return True
    return random.Random(f"{seed}:{','.join(map(str, example_ids))}").random() < ratio


class ViewCollator:
    """pack=True (the fast path) also packs the plan into its stream here, and builds the stream's
    attention layout: the ranges validated and, with `attention` (head_dim and dtype, and which backend:
    `execution.fast.collator_attention_shape`), the tile lists the Triton kernels or FlexAttention read. So
    data-loader workers, not the training step, pay for it, and the step reads no device value for it.
    Without `attention` the layout holds the ranges only (what the PyTorch form of the attention reads).

    What it returns is what the step reads. Packed, a `PackedPlan`: the stream, its layout and the plan's
    counts, without the plan's per-token rows, which the data loader would otherwise pickle in a worker
    and unpickle in the training process for nothing (docs/fast_path.md has the sizes). The whole
    ViewPlan (with `packed` set) where rows are read: `keep_rows=True` (--debug prints them, the
    benchmarks count them) and STP plans (stp.hidden_rows reads the rows' lengths). Not packed (the
    reference executor pads the rows), the ViewPlan."""

    def __init__(
        self,
        cfg: ViewConfig,
        predictor_ids: list[int],
        jepa_ratio: float = -1.0,
        seed: int = 0,
        pack: bool = False,
        attention: AttentionShape | None = None,
        keep_rows: bool = True,
    ) -> None:
        self.cfg = cfg
        self.predictor_ids = predictor_ids
        self.jepa_ratio = jepa_ratio
        self.seed = seed
        self.pack = pack
        self.attention = attention
        self.keep_rows = keep_rows

    def __call__(self, batch: list[Encoded]) -> dict[str, ViewPlan | PackedPlan]:
        keep = jepa_ratio_keeps_views([e.index for e in batch], self.jepa_ratio, self.seed)
        plan = build_plan(batch, self.cfg, self.predictor_ids, with_views=keep)
        if not self.pack:
            return {"plan": plan}
        packed = host_layout(pack_plan(plan), self.attention)
        if self.keep_rows or plan.stp is not None:
            plan.packed = packed
            return {"plan": plan}
        return {"plan": PackedPlan.of(plan, packed)}
