"""The readout: an executor wrapper that reads the JEPA pairs where the flags say.

`--jepa_layer L` reads the pairs from hidden layer L instead of the last; `--entropy_filter` keeps, per
example, the top-k pairs by view 1's next-token entropy around their predictor boundary (the plan,
`views.builders.EntropyPlan`, carries every pair and the probe tokens; the choice is made here, after
the forward, on the device). `readout_for` wraps an executor where a ViewConfig asks for either.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..distributed import unwrap
from ..views.builders import EntropyChoice
from ..views.encoding import ViewConfig
from ..views.plan import ViewPlan
from .lm_head import head_transform
from .protocol import Executed, executor_packs


def next_token_entropy(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Entropy of the model's next-token distribution at each hidden row (final layer), float32, no grad:
    log Z - sum p * logits, the fork's formula."""
    base = unwrap(model)
    with torch.no_grad():
        logits = head_transform(base.config).apply(base.get_output_embeddings()(hidden)).float()
        return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def chosen_pairs(entropy: torch.Tensor, choice: EntropyChoice, indices: tuple | None = None) -> torch.Tensor:
    """Indices (into the real pairs, ascending) of each example's top_k pairs by the maximum entropy of
    their window, ties to the earlier pair (the fork's stable sort), on the device with no host sync: the
    host's index tensors go up through pinned memory without blocking, nothing is read back."""
    from llmjepa_kernels.block_layout import to_device

    device = entropy.device
    probe_pair, slot, keep_k = (to_device(t, device) for t in (indices or choice.host_indices()))
    n_groups, width = slot.shape
    per_pair = torch.full((choice.n_real,), -torch.inf, device=device).scatter_reduce(0, probe_pair, entropy, "amax")
    score = torch.where(slot >= 0, per_pair[slot.clamp(min=0)], -torch.inf)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=device).expand(n_groups, width))
    # empty slots write to a spare entry n_real (a scatter, not a boolean index, which would sync)
    at = torch.where(slot >= 0, slot, choice.n_real).flatten()
    kept = torch.zeros(choice.n_real + 1, dtype=torch.bool, device=device)
    kept = kept.scatter_(0, at, (rank < keep_k[:, None]).flatten())[: choice.n_real]
    return torch.sort(torch.argsort((~kept).to(torch.int8), stable=True)[: choice.n_selected]).values


class ViewReadout:
    """An executor that reads the pairs where the flags say: the hidden states of `layer` (--jepa_layer;
    -1 the last), and with an EntropyPlan only the pairs --entropy_filter keeps (their entropies from
    view 1's final hidden states, whichever layer the pairs read)."""

    def __init__(self, executor: Callable, layer: int = -1) -> None:
        self.executor = executor
        self.layer = layer
        self.packs = executor_packs(executor)  # as the executor it wraps (protocol.executor_packs)

    def __call__(self, model: nn.Module, plan: ViewPlan) -> Any:
        out = self.executor(model, plan)
        hidden, pred, target = out.hidden, out.pred_index, out.target_index
        if self.layer != -1:
            state = out.hidden_states[self.layer]
            hidden = state.reshape(-1, state.shape[-1])
        choice = getattr(plan, "entropy", None)
        if choice is not None:
            entropy = next_token_entropy(model, out.hidden[out.pred_index[choice.n_real :]])
            keep = chosen_pairs(entropy, choice, choice.indices)
            pred, target = pred[: choice.n_real][keep], target[: choice.n_real][keep]
        return Executed(out.ce_sum, hidden, pred, target, out.hidden_states)


def readout_for(executor: Callable, cfg: ViewConfig) -> Callable:
    """The executor the trainer should call for plans of `cfg`: wrapped in ViewReadout where --jepa_layer
    or --entropy_filter says what the pairs read (not STP, which reads its layer itself), else as it is.
    Wrapping twice is a no-op."""
    if isinstance(executor, ViewReadout) or cfg.stp is not None:
        return executor
    if cfg.entropy_top_k or cfg.jepa_layer != -1:
        return ViewReadout(executor, cfg.jepa_layer)
    return executor
