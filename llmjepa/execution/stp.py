"""Semantic Tube Prediction's loss and linear predictor (views/stp.py has the method and its plans).

The loss gathers a plan's weighted hidden rows from whichever executor ran it (`hidden_rows`), and
`stp_plan_losses` is JepaTrainer.plan_losses for an STP plan. The linear predictor is upstream's
bias-free d x d map on the predictor side, attached to the model and saved with it.
"""

import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import base_model
from ..errors import UserError
from ..views.stp import LP_KEY, StpConfig, StpPlan, WeightedRows


# ---- the loss -----------------------------------------------------------------------------------------
def hidden_rows(plan: Any, n_hidden: int) -> tuple[np.ndarray, int]:
    """How (row, token) of an STP plan maps to the executor's flat hidden rows: (row offsets, row stride).

    The reference executor pads rows to the longest (row * L + token); the fast one packs whole rows
    back to back in example order (offset[row] + token). Equal when every row has the same length."""
    lengths = np.array([len(r) for r in plan.rows], dtype=np.int64)
    if n_hidden == int(lengths.sum()):
        return np.concatenate([[0], np.cumsum(lengths)[:-1]]), 0
    longest = int(lengths.max())
    if n_hidden == len(lengths) * longest:
        return np.arange(len(lengths), dtype=np.int64) * longest, longest
    raise AssertionError(f"STP: {n_hidden} hidden rows fit neither padded nor packed view-1 rows")  # a bug


def gather_sum(hidden: torch.Tensor, rows: WeightedRows, offsets: np.ndarray, n_terms: int) -> torch.Tensor:
    """(n_terms, D) float32: sum of coeff * hidden row over each term's rows."""
    device = hidden.device
    flat = offsets[np.asarray(rows.row, dtype=np.int64)] + np.asarray(rows.token, dtype=np.int64)
    index = torch.from_numpy(flat).to(device)
    coeff = torch.tensor(rows.coeff, dtype=torch.float32, device=device)
    term = torch.tensor(rows.term, dtype=torch.long, device=device)
    out = torch.zeros(n_terms, hidden.shape[-1], dtype=torch.float32, device=device)
    return out.index_add_(0, term, hidden[index].float() * coeff[:, None])


def layer_hidden(out: Any, layer: int) -> torch.Tensor:
    """(tokens, D) hidden states of `layer` (an index into the model's hidden_states; -1 is Executed.hidden)."""
    states = getattr(out, "hidden_states", None)
    if layer == -1 or states is None or layer % len(states) == len(states) - 1:
        if layer != -1 and states is None:
            raise AssertionError("--jepa_layer: this executor returned no hidden_states")  # a bug
        return out.hidden
    return states[layer].reshape(-1, states[layer].shape[-1])


def curvature_sums(hidden: torch.Tensor, plan: StpPlan, offsets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over examples of the per-example mean angle, per-example mean cosine of the angles)."""
    device = hidden.device
    n = len(plan.spans)
    if not plan.angles:
        zero = hidden.new_zeros((), dtype=torch.float32) + 0.0 * hidden.sum()
        return zero, torch.zeros(n, device=device)
    a = np.asarray(plan.angles, dtype=np.int64)
    at = torch.from_numpy(offsets[a[:, 1]] + a[:, 2]).to(device)
    h = hidden.float()
    prev = h[at - 1] - h[at - 2]
    curr = h[at] - h[at - 1]
    cosine = torch.clamp((prev * curr).sum(-1) / (prev.norm(dim=-1) * curr.norm(dim=-1)), -1.0, 1.0)
    example = torch.from_numpy(a[:, 0]).to(device)
    counts = torch.tensor(plan.angle_counts, dtype=torch.float32, device=device)
    per_example = torch.zeros(n, device=device).index_add_(0, example, torch.acos(cosine))
    cos_sum = torch.zeros(n, device=device).index_add_(0, example, cosine.detach())
    return (per_example / counts.clamp(min=1)).sum(), cos_sum / counts.clamp(min=1)


def stp_loss_sum(out: Any, plan: Any, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(the plan's STP loss times its number of terms, per-term cosines) from an executor's output."""
    stp: StpPlan = plan.stp
    cfg = stp.config
    hidden = layer_hidden(out, cfg.layer)
    offsets, _ = hidden_rows(plan, hidden.shape[0])
    if cfg.mode == "curvature":
        return curvature_sums(hidden, stp, offsets)
    pred = gather_sum(hidden, stp.pred, offsets, stp.n_terms)
    target = gather_sum(hidden, stp.target, offsets, stp.n_terms)
    if cfg.linear_predictor:
        pred = linear_predictor_of(model)(pred)
    cos = F.cosine_similarity(pred, target, dim=-1)
    if cfg.jepa_mse:  # upstream: the mean over terms and features, unweighted
        return (pred - target).pow(2).mean(dim=-1).sum(), cos.detach()
    weights = torch.tensor(stp.weights, dtype=torch.float32, device=pred.device)
    return stp.n_terms * ((1.0 - cos) * weights).sum() / weights.sum(), cos.detach()


def lbd_at(cfg: StpConfig, step: int, max_steps: int) -> float:
    """--lbd_warmup: linear from --min_lbd at step 0 to --lbd at the last step (upstream get_lbd)."""
    if not cfg.lbd_warmup or max_steps <= 1:
        return cfg.lbd
    return cfg.min_lbd + (cfg.lbd - cfg.min_lbd) * step / (max_steps - 1)


def stp_plan_losses(
    executor: Any, model: nn.Module, plan: Any, label_tokens: int, terms: int, gamma: float, step: int, max_steps: int
) -> tuple:
    """JepaTrainer.plan_losses for a plan with STP terms: (loss, ce_sum, jepa_sum, cosines, tokens run, lbd).
    lbd: the weight this step's JEPA term had (--lbd_warmup's at `step` of `max_steps`), returned for the step's
    record rather than written into the shared LossConfig."""
    out = executor(model, plan)
    lm = out.ce_sum / max(label_tokens, 1)
    jepa_sum, cos = stp_loss_sum(out, plan, model)
    lbd = lbd_at(plan.stp.config, step, max_steps)
    loss = gamma * lm + lbd * jepa_sum / max(terms, 1)
    return loss, out.ce_sum, jepa_sum, cos, out.hidden.shape[0], lbd


# ---- the linear predictor -------------------------------------------------------------------------------
class LinearPredictor(nn.Module):
    """A bias-free d x d map on the predictor side (upstream's LinearPredictor; its weight is `M.weight`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.M = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.M.weight, gain=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.M(x.to(self.M.weight.dtype)).float()


def linear_predictor_of(model: nn.Module) -> LinearPredictor:
    return base_model(model).linear_predictor


def hidden_size(model: nn.Module) -> int:
    config = base_model(model).config
    return config.hidden_size if hasattr(config, "hidden_size") else config.model_dim


def lp_weight_from(directory: str) -> torch.Tensor:
    """The linear predictor's weight saved in a model directory (model.safetensors or its shards)."""
    from safetensors import safe_open

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        name = json.load(open(index))["weight_map"].get(LP_KEY)
        files = [name] if name else []
    else:
        files = ["model.safetensors"]
    for name in files:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with safe_open(path, framework="pt") as f:
                if LP_KEY in f.keys():
                    return f.get_tensor(LP_KEY)
    raise UserError(f"--load_lp: {directory} holds no {LP_KEY} (a model saved by a --linear_predictor run)")


def attach_linear_predictor(model: nn.Module, seed: int, load_from: str | None = None) -> LinearPredictor:
    """model.linear_predictor: a submodule of the transformers model, so the optimizer trains it and
    save_pretrained writes it (key linear_predictor.M.weight). Initialized as upstream (torch seeded
    with the run seed, nn.Linear's init, then Xavier uniform), without touching the global RNG; float32."""
    dim = hidden_size(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lp = LinearPredictor(dim)
    if load_from is not None:
        weight = lp_weight_from(load_from)
        if tuple(weight.shape) != (dim, dim):
            raise UserError(f"--load_lp: {load_from}'s {LP_KEY} is {tuple(weight.shape)}, the model's is {(dim, dim)}")
        lp.M.weight.data.copy_(weight.float())
    device = next(p for p in model.parameters()).device
    base_model(model).linear_predictor = lp.to(device)
    return lp


def check_layer(model: nn.Module, layer: int) -> None:
    n = base_model(model).config.num_hidden_layers + 1  # hidden_states: the embeddings, then each layer
    if not -n <= layer < n:
        raise UserError(f"--jepa_layer {layer}: the model's hidden_states have {n} entries ({-n}..{n - 1})")
