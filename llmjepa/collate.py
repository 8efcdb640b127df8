"""The Trainer's data collator: a list of Encoded examples -> {"plan": ViewPlan}."""

from .fast import AttentionShape, host_layout
from .pack import pack_plan
from .plan import ViewPlan
from .trainer import jepa_ratio_keeps_views
from .views import Encoded, ViewConfig, build_plan


class ViewCollator:
    """pack=True (the fast path) also packs the plan into its stream here, and builds the stream's
    attention layout: the ranges validated and, with `attention` (the Triton kernels' head_dim and
    dtype, `fast.triton_attention_shape`), the tile lists the kernels read. So data-loader workers, not
    the training step, pay for it, and the step reads no device value for it. Without `attention` the
    layout holds the ranges only (what the PyTorch form of the attention reads)."""

    def __init__(
        self,
        cfg: ViewConfig,
        predictor_ids: list[int],
        jepa_ratio: float = -1.0,
        seed: int = 0,
        pack: bool = False,
        attention: AttentionShape | None = None,
    ) -> None:
        self.cfg = cfg
        self.predictor_ids = predictor_ids
        self.jepa_ratio = jepa_ratio
        self.seed = seed
        self.pack = pack
        self.attention = attention

    def __call__(self, batch: list[Encoded]) -> dict[str, ViewPlan]:
        keep = jepa_ratio_keeps_views([e.index for e in batch], self.jepa_ratio, self.seed)
        plan = build_plan(batch, self.cfg, self.predictor_ids, with_views=keep)
        if self.pack:
            plan.packed = host_layout(pack_plan(plan), self.attention)
        return {"plan": plan}
