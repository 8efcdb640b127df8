"""Plan builders: a microbatch of Encoded examples -> one ViewPlan, each mode's views laid out as rows.

View 1 (one causal row per example) comes first, then each example's other views and the
(predictor, target) pairs they hold: view-based LLM-JEPA (Text and Code, or one --additive_mask row),
Step-JEPA (the predictor row and the localized target row), --isolated_predictors (side branches of
view 1), STP (view 1 alone, with its terms), --entropy_filter (every pair and probes for the entropy
the readout chooses by). docs/views.md has the pictures.
"""

import dataclasses
from dataclasses import dataclass

import torch

from .encoding import Encoded, ViewConfig
from .plan import IGNORE_INDEX, NO_SHARED, ViewPlan, ViewRow, causal_row
from .stp import stp_plan

# ---- plans --------------------------------------------------------------------------------
VIEW1 = -1  # in the pairs an extra-rows function returns: this example's view 1, not one of its rows


def segment_row(example: int, view: str, ids: list[int], positions: list[int], starts: list[int]) -> ViewRow:
    """A row whose token i sees [starts[i], i] (causal within its segment)."""
    n = len(ids)
    return ViewRow(
        example,
        view,
        list(ids),
        list(positions),
        list(starts),
        [NO_SHARED[0]] * n,
        [NO_SHARED[1]] * n,
        [IGNORE_INDEX] * n,
    )


def common_causal_prefix(row: ViewRow, full: ViewRow) -> int:
    """Leading tokens a row shares with view 1: same id, same position, fully causal from 0."""
    n = 0
    for i in range(min(len(row), len(full))):
        same = row.input_ids[i] == full.input_ids[i] and row.position_ids[i] == full.position_ids[i]
        if not (same and row.causal_start[i] == 0 and row.shared_end[i] < row.shared_start[i]):
            break
        n += 1
    return n


def view_based_rows(enc: Encoded, b: int, cfg: ViewConfig) -> tuple[list[ViewRow], list[tuple]]:
    """Rows after view 1 and each pair's ((row offset, token), (row offset, token)): the last exchange's Text and
    Code, then (--jepa_turns all) each earlier exchange's."""
    rows: list[ViewRow] = []
    pairs = []
    for text_ids, code_ids in [(enc.text_ids, enc.code_ids), *enc.earlier_views]:
        extra, (p, t) = exchange_rows(text_ids, code_ids, b, cfg)
        pairs.append(((len(rows) + p[0], p[1]), (len(rows) + t[0], t[1])))
        rows.extend(extra)
    return rows, pairs


def exchange_rows(text_ids: list[int], code_ids: list[int], b: int, cfg: ViewConfig) -> tuple:
    """One exchange's Text and Code rows and the (row offset, token) of the predictor and the target."""
    i_text = len(text_ids) + cfg.last_token
    i_code = len(code_ids) + cfg.last_token
    if not cfg.additive_mask:
        return [causal_row(b, "text", text_ids), causal_row(b, "code", code_ids)], [(0, i_text), (1, i_code)]
    # upstream --additive_mask: Text[:i_text+1] | Code[:i_code+1] in one row, each block causal
    lu, la = i_text + 1, i_code + 1
    ids = text_ids[:lu] + code_ids[:la]
    code_positions = range(lu, lu + la) if cfg.additive_positions == "continue" else range(la)
    starts = [0] * lu + [lu] * la
    row = segment_row(b, "packed", ids, list(range(lu)) + list(code_positions), starts)
    return [row], [(0, i_text), (0, lu + i_code)]


def step_rows(enc: Encoded, b: int, cfg: ViewConfig, predictor_ids: list[int]) -> tuple:
    """Step-JEPA rows after view 1 and the (row offset, token) of every pair."""
    bounds, k = enc.boundaries, len(predictor_ids)
    n_pairs = len(bounds) - 1
    localized_row = cfg.localized_masks and cfg.num_prediction_steps > 1
    # the predictor row ends at the last token any pair reads
    last = bounds[-1] if not localized_row else bounds[n_pairs - 1]
    ids: list[int] = []
    for j, t in enumerate(enc.input_ids[: last + 1]):
        ids.append(t)
        if j in bounds[:n_pairs]:
            ids.extend(predictor_ids)
    starts = [0] * len(ids)
    if cfg.localized_masks and cfg.num_prediction_steps == 1:
        # upstream's N = 1 double batch: the target segment (b_0, b_1] sees only itself
        first = bounds[0] + k + 1
        starts[first:] = [first] * (len(ids) - first)
    pred_row = segment_row(b, "predictor", ids, list(range(len(ids))), starts)
    pred_at = [bounds[j] + (j + 1) * k for j in range(n_pairs)]
    if not localized_row:
        target_at = [bounds[j + 1] + (j + 1) * k for j in range(n_pairs)]
        return [pred_row], [((0, p), (0, t)) for p, t in zip(pred_at, target_at)]
    target_row = localized_target_row(enc, b)
    return [pred_row, target_row], [((0, p), (1, bounds[j + 1])) for j, p in enumerate(pred_at)]


def localized_target_row(enc: Encoded, b: int) -> ViewRow:
    """View 1 up to b_P in which segment 0 = [0, b_0] and segment j = (b_{j-1}, b_j] each see only
    themselves (positions as in view 1)."""
    bounds = enc.boundaries
    seg_starts = []
    start = 0
    for j in range(bounds[-1] + 1):
        seg_starts.append(start)
        if j in bounds:
            start = j + 1
    target_ids = enc.input_ids[: bounds[-1] + 1]
    return segment_row(b, "target", target_ids, list(range(len(target_ids))), seg_starts)


def isolated_step_rows(enc: Encoded, b: int, cfg: ViewConfig, predictor_ids: list[int]) -> tuple:
    """--isolated_predictors: one row per pair k, view 1 up to b_k then the K predictors (positions
    continuing after b_k), so each group sees view 1's prefix and itself and nothing sees it. The row
    repeats view 1's first b_k + 1 tokens, which build_plan records as its prefix_source: a packed
    executor runs only the K predictors. Targets: the localized target row, or view 1 itself
    (VIEW1) with --no_localized_masks. With K = 0 the predictor is view 1's own state at b_k."""
    bounds, k = enc.boundaries, len(predictor_ids)
    rows: list[ViewRow] = []
    pred_at = []
    for j in range(len(bounds) - 1):
        if not k:
            pred_at.append((VIEW1, bounds[j]))
            continue
        rows.append(causal_row(b, "predictor", enc.input_ids[: bounds[j] + 1] + list(predictor_ids)))
        pred_at.append((len(rows) - 1, bounds[j] + k))
    if cfg.localized_masks:
        rows.append(localized_target_row(enc, b))
        target_at = [(len(rows) - 1, t) for t in bounds[1:]]
    else:
        target_at = [(VIEW1, t) for t in bounds[1:]]
    return rows, list(zip(pred_at, target_at))


# ---- --entropy_filter (the fork): choose pairs by view 1's next-token entropy ----------------------
@dataclass
class EntropyChoice:
    """Which pairs --entropy_filter may keep. `plan.pairs[:n_real]` are the real pairs; each later entry is
    a probe, a view-1 token read as both predictor and target, so that every executor returns its hidden
    row's index. groups[b] = example b's real pairs; windows[j] = pair j's probes (indices into the probe
    block): the tokens within `window` of its predictor boundary in view 1."""

    top_k: int
    n_real: int
    groups: list[list[int]]
    windows: list[list[int]]
    indices: tuple | None = None  # host_indices(), made by the collator

    @property
    def n_selected(self) -> int:
        return sum(min(self.top_k, len(g)) for g in self.groups)

    def host_indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the pair of each probe; (example, its k-th pair) -> pair, -1 where none; pairs kept per
        example), host tensors built where the plan is (the collator), so the step only uploads them."""
        probe_pair = torch.tensor([j for j, w in enumerate(self.windows) for _ in w], dtype=torch.long)
        slot = torch.full((len(self.groups), max(len(g) for g in self.groups)), -1, dtype=torch.long)
        for b, g in enumerate(self.groups):
            slot[b, : len(g)] = torch.tensor(g, dtype=torch.long)
        keep_k = torch.tensor([min(self.top_k, len(g)) for g in self.groups], dtype=torch.long)
        return probe_pair, slot, keep_k


@dataclass
class EntropyPlan(ViewPlan):
    """A plan with probes; its JEPA terms are the chosen pairs alone, counted before the forward (the
    fork keeps min(top_k, pairs) per example), so the trainer's step totals hold."""

    entropy: EntropyChoice | None = None

    @property
    def n_pairs(self) -> int:
        return self.entropy.n_selected


def add_entropy_probes(plan: ViewPlan, batch: list[Encoded], cfg: ViewConfig, first_pair: list[int]) -> EntropyPlan:
    """The fork's windows: [b_k - w, b_k + w] around pair k's predictor boundary (b_k after the
    --last_token shift), cut to view 1's tokens (the fork cuts at the padded length; a pad token's
    entropy there is NaN)."""
    n_real = len(plan.pairs)
    groups, windows, probes = [], [], []
    for b, enc in enumerate(batch):
        n_pairs = len(enc.boundaries) - 1
        groups.append(list(range(first_pair[b], first_pair[b] + n_pairs)))
        for k in range(n_pairs):
            lo, hi = (
                max(0, enc.boundaries[k] - cfg.entropy_window),
                min(len(enc.input_ids), enc.boundaries[k] + cfg.entropy_window + 1),
            )
            windows.append(list(range(len(probes), len(probes) + hi - lo)))
            probes += [((b, t), (b, t)) for t in range(lo, hi)]
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    choice = EntropyChoice(cfg.entropy_top_k, n_real, groups, windows)
    choice.indices = choice.host_indices()
    out = EntropyPlan(**fields, entropy=choice)
    out.pairs = plan.pairs + probes
    return out


def plan_row(r: int, example: int, offset: int) -> int:
    """A plan row index from an extra-rows function's: VIEW1 is the example's view 1 (row `example`)."""
    return example if r == VIEW1 else offset + r


def build_plan(batch: list[Encoded], cfg: ViewConfig, predictor_ids: list[int], with_views: bool = True) -> ViewPlan:
    """View 1 rows first (one per example), then each example's extra views and its pairs."""
    rows = [causal_row(b, "full", enc.input_ids, enc.labels) for b, enc in enumerate(batch)]
    plan = ViewPlan(rows=rows, n_examples=len(batch))
    if cfg.regular or not with_views:
        return plan
    if cfg.stp is not None:  # STP: view 1 alone; its terms read view 1's hidden rows
        plan.stp = stp_plan([enc.content_spans for enc in batch], cfg.stp, [enc.index for enc in batch])
        return plan
    first_pair = []
    for b, enc in enumerate(batch):
        offset = len(plan.rows)
        first_pair.append(len(plan.pairs))
        if cfg.multi_step and cfg.isolated_predictors:
            extra, pairs = isolated_step_rows(enc, b, cfg, predictor_ids)
        elif cfg.multi_step:
            extra, pairs = step_rows(enc, b, cfg, predictor_ids)
        else:
            extra, pairs = view_based_rows(enc, b, cfg)
        for row in extra:
            n = common_causal_prefix(row, rows[b])
            row.prefix_source = (b, n) if n else None
        plan.rows.extend(extra)
        for (pr, pi), (tr, ti) in pairs:
            plan.pairs.append(((plan_row(pr, b, offset), pi), (plan_row(tr, b, offset), ti)))
    if cfg.entropy_top_k:
        return add_entropy_probes(plan, batch, cfg, first_pair)
    return plan
