"""llmjepa's kernels run behind torch.library custom ops (llmjepa::...). A TorchDispatchMode sees such an op
as one call and not the aten ops inside it; the tests that count host syncs must see those too, so their
modes run the op's Python implementation with themselves active (`inside_our_op`)."""

from __future__ import annotations

from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode

NAMESPACE = "llmjepa"


def inside_our_op(mode: TorchDispatchMode, func, args: tuple, kwargs: dict) -> tuple[bool, object]:
    """(True, output) when func is one of llmjepa's custom ops, run with `mode` seeing its aten ops;
    (False, None) for any other op."""
    if func.namespace != NAMESPACE:
        return False, None
    with mode:
        return True, OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
