"""The Trainer's data collator: a list of Encoded examples -> {"plan": ViewPlan}."""

from .pack import pack_plan
from .plan import ViewPlan
from .trainer import jepa_ratio_keeps_views
from .views import Encoded, ViewConfig, build_plan


class ViewCollator:
    """pack=True (the fast path) also packs the plan into its stream here, so that data-loader workers,
    not the training step, pay for it."""

    def __init__(
        self, cfg: ViewConfig, predictor_ids: list[int], jepa_ratio: float = -1.0, seed: int = 0, pack: bool = False
    ) -> None:
        self.cfg = cfg
        self.predictor_ids = predictor_ids
        self.jepa_ratio = jepa_ratio
        self.seed = seed
        self.pack = pack

    def __call__(self, batch: list[Encoded]) -> dict[str, ViewPlan]:
        keep = jepa_ratio_keeps_views([e.index for e in batch], self.jepa_ratio, self.seed)
        plan = build_plan(batch, self.cfg, self.predictor_ids, with_views=keep)
        if self.pack:
            plan.packed = pack_plan(plan)
        return {"plan": plan}
