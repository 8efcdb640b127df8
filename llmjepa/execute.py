"""Executors: run a ViewPlan through a causal LM and return what the losses need.

`run_reference` is the pure-PyTorch path with upstream's semantics: rows right-padded to one
length, a dense (rows, 1, L, L) additive mask built from the plan's ranges, one model call,
logits for every row. The fast path (another module) returns the same `Executed` from a packed,
padding-free stream.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .losses import token_cross_entropy_sum
from .plan import IGNORE_INDEX, ViewPlan, check_row, visibility


@dataclass
class Executed:
    ce_sum: torch.Tensor  # sum of token cross entropy over the plan's label tokens (float32 scalar)
    hidden: torch.Tensor  # (tokens, D) final hidden states (after the final norm), flattened
    pred_index: torch.Tensor  # (pairs,) rows of `hidden` holding predictor embeddings
    target_index: torch.Tensor  # (pairs,) rows of `hidden` holding target embeddings


Executor = Callable[[nn.Module, ViewPlan], Executed]


def padded_inputs(plan: ViewPlan, pad_token_id: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Right-padded ids, positions, labels and the dense additive mask of a plan's rows."""
    for row in plan.rows:
        check_row(row)
    n_rows, length = len(plan.rows), max(len(row) for row in plan.rows)
    input_ids = torch.full((n_rows, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    labels = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)
    visible = torch.eye(length, dtype=torch.bool).repeat(n_rows, 1, 1)  # pad queries see themselves
    for r, row in enumerate(plan.rows):
        n = len(row)
        input_ids[r, :n] = torch.tensor(row.input_ids)
        position_ids[r, :n] = torch.tensor(row.position_ids)
        labels[r, :n] = torch.tensor(row.labels)
        visible[r, :n, :n] = visibility(row)
    mask = torch.zeros((n_rows, 1, length, length), dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    return {
        "input_ids": input_ids.to(device),
        "position_ids": position_ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }


def pair_indices(plan: ViewPlan, row_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (row * row_length + token) of every pair's predictor and target."""
    pred = [r * row_length + t for (r, t), _ in plan.pairs]
    target = [r * row_length + t for _, (r, t) in plan.pairs]
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(pred), as_tensor(target)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.dtype, param.device


def run_reference(model: nn.Module, plan: ViewPlan, pad_token_id: int) -> Executed:
    """Upstream semantics: padded rows, dense masks, logits everywhere, one forward."""
    dtype, device = model_dtype_device(model)
    inputs = padded_inputs(plan, pad_token_id, dtype, device)
    labels = inputs.pop("labels")
    out = model(**inputs, output_hidden_states=True, use_cache=False)
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    ce_sum = token_cross_entropy_sum(out.logits[:, :-1][keep], shift_labels[keep])
    hidden = out.hidden_states[-1]
    pred_index, target_index = pair_indices(plan, hidden.shape[1], device)
    return Executed(ce_sum, hidden.reshape(-1, hidden.shape[-1]), pred_index, target_index)
