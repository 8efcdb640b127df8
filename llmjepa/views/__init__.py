"""The views layer: from JSONL examples to what one microbatch's executor reads, all on the host.

examples (read and check the data) -> encoding (tokenize once per example: ViewConfig, Encoded) ->
builders (a microbatch of Encoded -> one ViewPlan) -> pack and layout (the fast path's packed stream and
its attention layout) -> collate (the Trainer's data collator, run in data-loader workers). plan holds
the ViewPlan and ViewRow types; stp the Semantic Tube Prediction plans. Nothing here runs a model.
"""

from importlib import import_module

# Public name -> its module, imported on first use (PEP 562): views.stp's constants (read by llmjepa-train's
# flags) load without torch.
_EXPORTS = {
    "EntropyPlan": ".builders",
    "build_plan": ".builders",
    "ViewCollator": ".collate",
    "Encoded": ".encoding",
    "EncodeReport": ".encoding",
    "ViewConfig": ".encoding",
    "encode": ".encoding",
    "encode_all": ".encoding",
    "Example": ".examples",
    "load_examples": ".examples",
    "ViewPlan": ".plan",
    "ViewRow": ".plan",
}


def __getattr__(name: str):
    """A public name's module imported when the name is first read."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmjepa.views' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
