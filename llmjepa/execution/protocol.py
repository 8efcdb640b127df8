"""What every executor is: `executor(model, plan) -> Executed`, and whether it reads packed plans.

An executor consumes one microbatch's plan as the collator shipped it and runs the model once:

- `packs = False` (`reference.run_reference`): a `views.plan.ViewPlan`, whose rows it pads itself.
- `packs = True` (`fast.run_fast`): a `views.layout.PackedPlan` (or a ViewPlan with `packed` set), the
  stream and its layout that `views.collate.ViewCollator(pack=True)` built in the data-loader workers.

Both return the same `Executed`: the LM cross-entropy sum and the hidden rows the JEPA pairs read.
`packs` is an attribute of the executor (a function or a callable object); `executor_packs` reads it
through `functools.partial`, the form the trainer's callers bind an executor's options with, and
through wrappers such as `readout.ViewReadout`, which copy their executor's.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Executed:
    ce_sum: torch.Tensor  # sum of token cross entropy over the plan's label tokens (float32 scalar)
    hidden: torch.Tensor  # (tokens, D) final hidden states (after the final norm), flattened
    pred_index: torch.Tensor  # (pairs,) rows of `hidden` holding predictor embeddings
    target_index: torch.Tensor  # (pairs,) rows of `hidden` holding target embeddings
    hidden_states: tuple | None = None  # the model's hidden_states, every layer (STP's --jepa_layer reads one)


Executor = Callable[[nn.Module, Any], Executed]  # (model, ViewPlan | PackedPlan) -> Executed, with `packs`


def executor_packs(executor: Executor) -> bool:
    """Whether an executor reads packed plans, so that its collator should pack (ViewCollator(pack=True))."""
    while isinstance(executor, functools.partial):
        executor = executor.func
    return bool(getattr(executor, "packs", False))


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.dtype, param.device
