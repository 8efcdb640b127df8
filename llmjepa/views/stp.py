"""Semantic Tube Prediction (upstream galilai-group/llm-jepa stp.py, `--linear MODE`).

One forward pass over view 1, no extra views. H = the hidden states of `--jepa_layer` (default the
last, after the final norm), the user content at [s_u, e_u), the assistant content at [s_a, e_a)
(the content tokens alone, found as upstream finds them), D[p, q) = H[q-1] - H[p-1]:

- e2e: 1 - cos(P(D[s_u, e_u)), D[s_a, e_a)), averaged over examples;
- mean: 1 - cos(P(mean H[s_u:e_u]), mean H[s_a:e_a]), averaged over examples;
- curvature: per example the sum over both contents of the angles between consecutive
  displacements H[i] - H[i-1], H[i-1] - H[i-2] (i = s+1 .. e-1), divided by (L_u - 1) + (L_a - 1);
  then the mean over examples;
- random_span: a span [s, t) of the L = L_u + L_a content tokens (the gap between the turns skipped
  unless --random_span_e2e); predictor P(D before the span + D after it), target D over the span;
  1 - cos (or --jepa_mse), weighted by --length_adjustment; --random_span_times draws per example.

P is the identity, or with --linear_predictor a bias-free d x d linear map trained with the model.

Every predictor and target of e2e, mean and random_span is a weighted sum of hidden rows (signs for
the displacements, 1/L for the means), so a plan carries them as (term, row, token, coefficient)
lists, drawn and built on the host when the plan is built (`stp_plan`); the loss gathers those rows
from whichever executor ran the plan (`hidden_rows`). Spans are drawn from a generator seeded by the
run seed and the microbatch's example indices (as --jepa_ratio), so a run is reproducible, a resumed
run draws what the uninterrupted one did, and the reference and fast executors draw the same spans.
Upstream draws from one torch generator seeded with seed + 3 * rank, in sequence.

Normalization: upstream's JEPA loss is the mean over a microbatch's terms (the length-weighted mean
with --length_adjustment). Here a plan returns that mean times its number of terms, and the trainer
divides by the step's terms: with equal microbatches, the mean of upstream's microbatch losses.
"""

import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import base_model
from ..errors import UserError

STP_MODES = ("random_span", "e2e", "mean", "curvature")
LENGTH_ADJUSTMENTS = ("cosine_like", "jaccard_like")
LP_KEY = "linear_predictor.M.weight"  # upstream's state-dict key (LinearPredictor.M), so checkpoints interchange


@dataclass
class StpConfig:
    mode: str  # one of STP_MODES
    jepa_mse: bool = False
    length_adjustment: str | None = None  # random_span: cosine_like | jaccard_like
    times: int = 1  # random_span draws per example
    zero: bool = False  # spans start at content offset 0
    max_length: int = -1  # longest span (-1: no limit)
    draw_both: bool = False  # draw both ends at once (then sort)
    uniform: bool = False  # uniform over all spans
    all_tokens: bool = False  # --random_span_all: the "user" part starts at token 1 (all of view 1)
    across_gap: bool = False  # --random_span_e2e: the tokens between the turns belong to the assistant part
    layer: int = -1  # index into the model's hidden_states (-1: the last)
    linear_predictor: bool = False
    lbd_warmup: bool = False
    min_lbd: float = 0.0
    lbd: float = 0.1  # --lbd, where the warm-up ends
    seed: int = 42


# ---- content spans, as upstream finds them ------------------------------------------------------
_decoded: dict[int, dict[int, str]] = {}


def decode_one(tokenizer: Any, token_id: int) -> str:
    """tokenizer.decode([id]), cached per tokenizer (upstream compares decoded tokens, one at a time)."""
    cache = _decoded.setdefault(id(tokenizer), {})
    text = cache.get(token_id)
    if text is None:
        text = cache[token_id] = tokenizer.decode(token_id)
    return text


def find_content(tokenizer: Any, ids: list[int], content: str) -> tuple[int, int] | None:
    """[start, end) of the last place where `content`'s own tokens decode as view 1's do (upstream's
    find_start_end: the content tokenized alone, compared token by token as decoded text, searched from
    the end; it must not start at token 0). None when absent."""
    tokens = tokenizer.encode(content, add_special_tokens=False)
    n = len(tokens)
    if n == 0:
        return None
    wanted = [decode_one(tokenizer, t) for t in tokens]
    have = [decode_one(tokenizer, t) for t in ids]
    for i in range(len(ids) - n, 0, -1):
        if have[i : i + n] == wanted:
            return i, i + n
    return None


def find_content_spans(tokenizer: Any, ids: list[int], user: str, assistant: str, source: str) -> tuple:
    """(s_u, e_u, s_a, e_a) of the user and assistant contents in view 1's tokens."""
    spans = []
    for role, content in (("user", user), ("assistant", assistant)):
        found = find_content(tokenizer, ids, content)
        if found is None:
            raise UserError(
                f"{source}: --linear: the {role} content's tokens are not in the conversation's tokens "
                "(empty, cut by --max_length, or tokenized differently inside the chat template)"
            )
        spans.extend(found)
    return tuple(spans)


# ---- spans drawn for random_span ------------------------------------------------------------------
def draw_span(length: int, cfg: StpConfig, rng: random.Random) -> tuple[int, int]:
    """Offsets [s, t) of a span within `length` content tokens, never all of them (upstream get_s_t)."""
    if cfg.draw_both:
        while True:
            a, b = rng.randrange(0, length), rng.randrange(1, length + 1)
            s, t = min(a, b), max(a, b)
            if cfg.zero:
                s = 0
            if cfg.max_length >= 0 and t - s > cfg.max_length:
                t = s + cfg.max_length
            if s < t and t - s < length:
                return s, t
    if cfg.uniform:
        while True:  # uniform over the length * (length + 1) / 2 spans, enumerated by start then end
            r = rng.randrange(length * (length + 1) // 2)
            s = 0
            while r >= length - s:
                r -= length - s
                s += 1
            t = s + 1 + r
            if t - s < length:
                return s, t
    s = 0 if cfg.zero else rng.randrange(0, length)
    end_exclusive = length + 1
    if cfg.max_length >= 0:
        end_exclusive = min(end_exclusive, s + 1 + cfg.max_length)
    while True:
        t = rng.randrange(s + 1, end_exclusive)
        if t - s < length:
            return s, t


def length_weight(length: int, span: int, adjustment: str | None) -> float:
    rest = length - span
    if adjustment is None:
        return 1.0
    if adjustment == "cosine_like":
        return 2.0 * rest * span / (rest * rest + span * span)
    return 1.0 - abs(rest - span) / (rest + span)  # jaccard_like


# ---- the plan's terms -------------------------------------------------------------------------------
@dataclass
class WeightedRows:
    """Vectors sum_j coeff[j] * H[row[j], token[j]] into term[j] (the plan's coordinates)."""

    term: list[int] = field(default_factory=list)
    row: list[int] = field(default_factory=list)
    token: list[int] = field(default_factory=list)
    coeff: list[float] = field(default_factory=list)

    def add(self, term: int, row: int, token: int, coeff: float) -> None:
        self.term.append(term)
        self.row.append(row)
        self.token.append(token)
        self.coeff.append(coeff)

    def add_displacement(self, term: int, row: int, p: int, q: int) -> None:
        """D[p, q) = H[q-1] - H[p-1]."""
        self.add(term, row, q - 1, 1.0)
        self.add(term, row, p - 1, -1.0)


@dataclass
class StpPlan:
    """What the STP loss of one microbatch reads; attached to its ViewPlan (plan.stp)."""

    config: StpConfig
    spans: list[tuple[int, int, int, int]]  # per example (row), (s_u, e_u, s_a, e_a)
    n_terms: int = 0
    pred: WeightedRows = field(default_factory=WeightedRows)
    target: WeightedRows = field(default_factory=WeightedRows)
    weights: list[float] = field(default_factory=list)  # per term (random_span's length adjustment)
    draws: list[tuple[int, int]] = field(default_factory=list)  # random_span: content offsets [s, t) per term
    angles: list[tuple[int, int, int]] = field(default_factory=list)  # curvature: (example, row, i)
    angle_counts: list[int] = field(default_factory=list)  # curvature: (L_u - 1) + (L_a - 1) per example


def span_rng(seed: int, example_ids: list[int]) -> random.Random:
    return random.Random(f"stp:{seed}:{','.join(map(str, example_ids))}")


def stp_plan(
    spans: list[tuple[int, int, int, int]],
    cfg: StpConfig,
    example_ids: list[int],
    draws: list[tuple[int, int]] | None = None,
) -> StpPlan:
    """The terms of one microbatch whose example b is row b of the plan. `draws` fixes random_span's
    offsets (tests); otherwise they are drawn from span_rng(seed, example_ids)."""
    plan = StpPlan(cfg, list(spans))
    if cfg.mode in ("e2e", "mean"):
        for b, (su, eu, sa, ea) in enumerate(spans):
            for rows, (s, e) in ((plan.pred, (su, eu)), (plan.target, (sa, ea))):
                if cfg.mode == "e2e":
                    rows.add_displacement(b, b, s, e)
                else:
                    for i in range(s, e):
                        rows.add(b, b, i, 1.0 / (e - s))
            plan.weights.append(1.0)
        plan.n_terms = len(spans)
    elif cfg.mode == "curvature":
        for b, (su, eu, sa, ea) in enumerate(spans):
            count = 0
            for s, e in ((su, eu), (sa, ea)):
                plan.angles.extend((b, b, i) for i in range(s + 1, e))
                count += max(e - s - 1, 0)
            plan.angle_counts.append(count)
        plan.n_terms = len(spans)
    else:
        rng = span_rng(cfg.seed, example_ids)
        for b, span in enumerate(spans):
            for _ in range(cfg.times):
                fixed = draws[plan.n_terms] if draws is not None else None
                random_span_term(plan, b, span, cfg, rng, fixed)
    return plan


def random_span_term(plan: StpPlan, b: int, span: tuple, cfg: StpConfig, rng: random.Random, fixed: Any) -> None:
    su, eu, sa, ea = span
    if cfg.across_gap:
        sa = eu
    if cfg.all_tokens:
        su = 1
    lu = eu - su
    length = lu + (ea - sa)
    s_off, t_off = fixed if fixed is not None else draw_span(length, cfg, rng)
    # content offset -> view-1 token, upstream's rule: offsets below L_u are user tokens, the rest assistant
    ps = su + s_off if s_off < lu else sa + s_off - lu
    pe = su + t_off if t_off < lu else sa + t_off - lu
    term = plan.n_terms
    pred, target = plan.pred, plan.target
    if ps >= sa:  # the span lies in the assistant part
        pred.add_displacement(term, b, su, eu)
        pred.add_displacement(term, b, sa, ps)
        pred.add_displacement(term, b, pe, ea)
        target.add_displacement(term, b, ps, pe)
    elif pe <= eu:  # in the user part
        pred.add_displacement(term, b, su, ps)
        pred.add_displacement(term, b, pe, eu)
        pred.add_displacement(term, b, sa, ea)
        target.add_displacement(term, b, ps, pe)
    else:  # across the gap
        pred.add_displacement(term, b, su, ps)
        pred.add_displacement(term, b, pe, ea)
        target.add_displacement(term, b, ps, eu)
        target.add_displacement(term, b, sa, pe)
    plan.weights.append(length_weight(length, t_off - s_off, cfg.length_adjustment))
    plan.draws.append((s_off, t_off))
    plan.n_terms += 1


def check_spans(spans: tuple[int, int, int, int], cfg: StpConfig, source: str) -> None:
    """What a mode needs of an example's contents (upstream would loop forever on a 1-token content)."""
    su, eu, sa, ea = spans
    if cfg.mode != "random_span":
        return
    sa = eu if cfg.across_gap else sa
    su = 1 if cfg.all_tokens else su
    if (eu - su) + (ea - sa) < 2:
        raise UserError(f"{source}: --linear random_span needs at least 2 content tokens; this example has fewer")


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


def stp_plan_losses(trainer: Any, model: nn.Module, plan: Any, label_tokens: int, terms: int) -> tuple:
    """JepaTrainer.plan_losses for a plan with STP terms: (loss, ce_sum, jepa_sum, cosines, tokens run)."""
    cfg = trainer.loss_config
    out = trainer.executor(model, plan)
    lm = out.ce_sum / max(label_tokens, 1)
    jepa_sum, cos = stp_loss_sum(out, plan, model)
    lbd = lbd_at(plan.stp.config, trainer.state.global_step, trainer.state.max_steps)
    cfg.lbd = lbd  # the step's record (finish_step) weighs its JEPA loss by the lbd in use
    loss = cfg.gamma * lm + lbd * jepa_sum / max(terms, 1)
    return loss, out.ce_sum, jepa_sum, cos, out.hidden.shape[0]


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


def prepare_model(args: Any, model: nn.Module) -> None:
    """What STP adds to the model before the trainer is built: the layer check and the linear predictor."""
    if getattr(args, "linear", None) is None:
        return
    check_layer(model, args.jepa_layer)
    if args.linear_predictor:
        attach_linear_predictor(model, args.finetune_seed, args.model_name if args.load_lp else None)


# ---- flags ----------------------------------------------------------------------------------------------
RANDOM_SPAN_FLAGS = (
    "random_span_zero",
    "random_span_e2e",
    "random_span_all",
    "random_span_draw_both",
    "random_span_uniform",
)


def add_stp_arguments(parser: Any) -> None:
    g = parser.add_argument_group("STP (upstream stp.py)")
    g.add_argument("--linear", choices=STP_MODES, default=None, help="Semantic Tube Prediction from view 1 alone")
    g.add_argument("--linear_predictor", action="store_true", help="a bias-free d x d map on the predictor side")
    g.add_argument("--load_lp", action="store_true", help="load the linear predictor saved in --model_name")
    g.add_argument("--lbd_warmup", action="store_true", help="lbd rises linearly from --min_lbd to --lbd")
    g.add_argument("--min_lbd", type=float, default=0.0)
    g.add_argument("--length_adjustment", choices=LENGTH_ADJUSTMENTS, default=None, help="random_span weights")
    g.add_argument("--random_span_zero", action="store_true", help="spans start at the first content token")
    g.add_argument("--random_span_e2e", action="store_true", help="spans may cover the tokens between the turns")
    g.add_argument("--random_span_all", action="store_true", help="the user part starts at token 1")
    g.add_argument("--random_span_max_length", type=int, default=-1, help="longest span (-1: no limit)")
    g.add_argument("--random_span_times", type=int, default=1, help="spans drawn per example")
    g.add_argument("--random_span_draw_both", action="store_true", help="draw both span ends at once")
    g.add_argument("--random_span_uniform", action="store_true", help="spans uniform over all spans")
    g.add_argument(
        "--jepa_layer", "--random_span_layer", dest="jepa_layer", type=int, default=-1, help="hidden_states index"
    )
    g.add_argument("--random_span_mask", action="store_true", help="refused: no working meaning upstream")
    g.add_argument("--random_span_mask_recover", action="store_true", help="refused: no working meaning upstream")


# Upstream stp.py (6d7d0d1, 2026-02-27) builds the <|mask|> views in forward() but reads them nowhere
# that runs: without --linear, compute_loss indexes the views before forward() builds them (KeyError);
# with --linear, the linear branch ignores them (the loss is --linear's alone; only its random_span draws
# shift). There is no meaning to reproduce, so the flags are refused rather than given one of ours.
MASK_REFUSED = (
    "upstream stp.py builds the <|mask|> views but never uses them (a KeyError without --linear; ignored "
    "with it), so llmjepa has no upstream meaning to reproduce and refuses the flag"
)


def check_stp_args(args: Any) -> None:
    """STP's flags: ranges, and combinations upstream ignores silently or fails on."""
    mode = args.linear
    masks = [f"--{f}" for f in ("random_span_mask", "random_span_mask_recover") if getattr(args, f)]
    if masks:
        raise UserError(f"{', '.join(masks)}: {MASK_REFUSED}")
    if not math.isfinite(args.min_lbd) or args.min_lbd < 0:
        raise UserError(f"--min_lbd {args.min_lbd}: must be a finite number >= 0")
    if args.random_span_times < 1:
        raise UserError(f"--random_span_times {args.random_span_times}: must be >= 1")
    if args.random_span_max_length == 0 or args.random_span_max_length < -1:
        raise UserError(f"--random_span_max_length {args.random_span_max_length}: must be >= 1, or -1 (no limit)")
    stp_only = ["linear_predictor", "load_lp", "lbd_warmup"] + list(RANDOM_SPAN_FLAGS)
    given = [f"--{f}" for f in stp_only if getattr(args, f)]
    given += ["--length_adjustment"] * (args.length_adjustment is not None)
    given += ["--random_span_times"] * (args.random_span_times != 1)
    given += ["--random_span_max_length"] * (args.random_span_max_length != -1)
    given += ["--min_lbd"] * (args.min_lbd != 0)
    if mode is None:
        if given:
            raise UserError(f"{', '.join(given)} apply to --linear (STP) only")
        return
    if mode != "random_span":
        span_flags = [f for f in given if f.startswith(("--random_span", "--length_adjustment"))]
        if span_flags:
            raise UserError(f"{', '.join(span_flags)} apply to --linear random_span, not --linear {mode}")
    views = ["--regular"] * args.regular + ["--num_prediction_steps"] * (args.num_prediction_steps != 0)
    view_flags = ("additive_mask", "front_pred", "reverse_pred", "jepa_l2", "infonce")
    views += [f"--{f}" for f in view_flags if getattr(args, f)]
    views += ["--predictors"] * (args.predictors != 0) + ["--jepa_ratio"] * (args.jepa_ratio > 0)
    views += ["--isolated_predictors"] * bool(getattr(args, "isolated_predictors", False))
    if views:
        raise UserError(f"--linear {mode} runs view 1 alone; it contradicts {', '.join(views)}")
    if mode == "curvature" and (args.jepa_mse or args.linear_predictor):
        raise UserError("--linear curvature has no predictor or target: --jepa_mse and --linear_predictor do not apply")
    if args.random_span_draw_both and args.random_span_uniform:
        raise UserError("--random_span_draw_both and --random_span_uniform choose different draws; give one")
    if args.random_span_uniform and (args.random_span_zero or args.random_span_max_length != -1):
        raise UserError(
            "--random_span_uniform draws over all spans; --random_span_zero and --random_span_max_length ignored"
        )
    if args.jepa_mse and args.length_adjustment is not None:
        raise UserError("--length_adjustment weights the cosine loss; upstream's --jepa_mse ignores it")
    if args.load_lp and not args.linear_predictor:
        raise UserError("--load_lp loads the linear predictor: give --linear_predictor too")
    if args.load_lp and not os.path.isdir(args.model_name):
        raise UserError(f"--load_lp reads the linear predictor from a local --model_name; {args.model_name} is none")
    if args.load_lp:
        lp_weight_from(args.model_name)  # before the model loads: a missing predictor fails in a second
    if args.linear_predictor and args.lora:
        raise UserError("--linear_predictor with --lora: the adapter checkpoint would not hold the predictor")
    if args.lbd_warmup and args.min_lbd > args.lbd:
        raise UserError(f"--min_lbd {args.min_lbd} above --lbd {args.lbd}: the warm-up rises to --lbd")


def stp_config(args: Any) -> StpConfig | None:
    if getattr(args, "linear", None) is None:
        return None
    return StpConfig(
        mode=args.linear,
        jepa_mse=args.jepa_mse,
        length_adjustment=args.length_adjustment,
        times=args.random_span_times,
        zero=args.random_span_zero,
        max_length=args.random_span_max_length,
        draw_both=args.random_span_draw_both,
        uniform=args.random_span_uniform,
        all_tokens=args.random_span_all,
        across_gap=args.random_span_e2e,
        layer=args.jepa_layer,
        linear_predictor=args.linear_predictor,
        lbd_warmup=args.lbd_warmup,
        min_lbd=args.min_lbd,
        lbd=args.lbd,
        seed=args.finetune_seed,
    )
