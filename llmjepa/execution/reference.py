"""Executors: run a ViewPlan through a causal LM and return what the losses need.

`run_reference` is the pure-PyTorch path with upstream's semantics: rows right-padded to one
length, a dense (rows, 1, L, L) additive mask built from the plan's ranges (on the model's device),
one model call, logits for every row. The fast path (`fast.py`) returns the same `Executed` from a packed,
padding-free stream; `protocol.py` says what both consume.
"""

import numpy as np
import torch
from torch import nn

from ..views.pack import row_arrays
from ..views.plan import IGNORE_INDEX, NO_SHARED, ViewPlan
from .losses import token_cross_entropy_sum
from .protocol import Executed, Executor, model_dtype_device  # noqa: F401  (Executor: the type, re-exported)


def padded_inputs(plan: ViewPlan, pad_token_id: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Right-padded ids, positions, labels and the dense additive mask of a plan's rows.

    The rows' fields cross to the device once, flat (`pack.row_arrays` converts and validates them on
    the host); the padded tensors and the (rows, 1, L, L) mask are built there by whole-tensor ops."""
    arrays = row_arrays(plan)
    n_rows, length = len(plan.rows), int(np.diff(arrays.offset).max())
    flat = np.stack(
        [
            arrays.row * length + arrays.local,
            arrays.input_ids,
            arrays.position_ids,
            arrays.labels,
            arrays.causal_start,
            arrays.shared_start,
            arrays.shared_end,
        ]
    )
    at, ids, pos, labels, causal_start, shared_start, shared_end = torch.from_numpy(flat).to(device)

    def padded(values: torch.Tensor, fill: torch.Tensor | int) -> torch.Tensor:
        out = torch.full((n_rows * length,), fill, dtype=torch.long, device=device) if isinstance(fill, int) else fill
        return out.index_copy_(0, at, values).view(n_rows, length)

    i = torch.arange(length, device=device)
    j = i[None, None, :]
    # pad queries see themselves (causal range [i, i]); the rows' ranges lie inside the rows (row_arrays
    # checks), so no real query sees a pad key. In place, and the shared ranges only for rows that have
    # one: the (rows, L, L) passes are the cost.
    visible = j >= padded(causal_start, i.repeat(n_rows))[:, :, None]
    visible &= j <= i[:, None]
    shared_rows = np.flatnonzero(arrays.any_per_row(arrays.has_shared))
    if len(shared_rows):
        rows = torch.from_numpy(shared_rows).to(device)
        a = padded(shared_start, NO_SHARED[0])[rows, :, None]
        b = padded(shared_end, NO_SHARED[1])[rows, :, None]
        visible[rows] |= (j >= a) & (j <= b)
    zero = torch.zeros((), dtype=dtype, device=device)
    return {
        "input_ids": padded(ids, pad_token_id),
        "position_ids": padded(pos, 0),
        "attention_mask": torch.where(visible, zero, torch.finfo(dtype).min)[:, None],
        "labels": padded(labels, IGNORE_INDEX),
    }


def pair_indices(plan: ViewPlan, row_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (row * row_length + token) of every pair's predictor and target."""
    pairs = torch.tensor(plan.pairs, dtype=torch.long).reshape(-1, 4)  # (pairs, [pr, pt, tr, tt])
    flat = (pairs[:, 0::2] * row_length + pairs[:, 1::2]).t().to(device)
    return flat[0], flat[1]


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
    return Executed(ce_sum, hidden.reshape(-1, hidden.shape[-1]), pred_index, target_index, out.hidden_states)


run_reference.packs = False  # reads the plan's rows (protocol.executor_packs)
