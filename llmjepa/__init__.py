"""llmjepa: a drop-in, fast trainer for LLM-JEPA fine-tuning.

from llmjepa import JepaTrainer, LossConfig, ViewConfig, ViewCollator, run_reference
"""

from .collate import ViewCollator
from .execute import Executed, run_reference
from .plan import ViewPlan, ViewRow
from .trainer import JepaTrainer, LossConfig
from .views import Encoded, ViewConfig, build_plan, encode_all

__all__ = [
    "Encoded",
    "Executed",
    "JepaTrainer",
    "LossConfig",
    "ViewCollator",
    "ViewConfig",
    "ViewPlan",
    "ViewRow",
    "build_plan",
    "encode_all",
    "run_reference",
]
