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

Here: the config, the spans and the plans (built with the views). The loss terms and the linear
predictor are in execution/stp.py, the flags in commands/stp_flags.py.

Normalization: upstream's JEPA loss is the mean over a microbatch's terms (the length-weighted mean
with --length_adjustment). Here a plan returns that mean times its number of terms, and the trainer
divides by the step's terms: with equal microbatches, the mean of upstream's microbatch losses.
"""

import random
from dataclasses import dataclass, field
from typing import Any

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
