"""The views layer: from JSONL examples to what one microbatch's executor reads, all on the host.

examples (read and check the data) -> encoding (tokenize once per example: ViewConfig, Encoded) ->
builders (a microbatch of Encoded -> one ViewPlan) -> pack and layout (the fast path's packed stream and
its attention layout) -> collate (the Trainer's data collator, run in data-loader workers). plan holds
the ViewPlan and ViewRow types; stp the Semantic Tube Prediction plans. Nothing here runs a model.
"""

from .builders import EntropyPlan, build_plan
from .collate import ViewCollator
from .encoding import Encoded, EncodeReport, ViewConfig, encode, encode_all
from .examples import Example, load_examples
from .plan import ViewPlan, ViewRow

__all__ = [
    "EncodeReport",
    "Encoded",
    "EntropyPlan",
    "Example",
    "ViewCollator",
    "ViewConfig",
    "ViewPlan",
    "ViewRow",
    "build_plan",
    "encode",
    "encode_all",
    "load_examples",
]
