"""A straightforward, independent rewrite of the upstream LLM-JEPA batches, for equivalence tests.

This module deliberately imports nothing from llmjepa.views.encoding / llmjepa.views.plan /
llmjepa.execution.reference. It takes
already-tokenized views (token id lists: tokenization is shared with the code under test) and builds
the batches the upstream trainers build, the way they build them (see /tmp/upstream_spec.md):

- view-based LLM-JEPA, galilai-group/llm-jepa `finetune.py` (spec A.4-A.7): rows [view 1; Text; Code],
  or with `--additive_mask` rows [view 1; Text|Code packed in place into the Text row];
- multi-step Step-JEPA, Dzungthez/jepa-math `train.py`/`jepa_trainer.py` (spec B.3-B.6): the triple
  batch (N > 1, localized), the multi-step double batch (N > 1, --no_localized_masks), and the N = 1
  double batches with and without isolation.

Every batch is right-padded with the pad id to one common length L, gets a dense (R, 1, L, L) float32
mask holding 0 / -inf, and is run through the model with `output_hidden_states=True` and **no
position_ids** (the model's default arange(L) per row, as upstream). Embeddings are read from
`hidden_states[-1]` at the upstream indices; the LM loss is the model's own mean over the shifted
view-1 labels (`outputs.loss`).

One liberty, allowed because those outputs are never read: a query row that upstream leaves fully
-inf (padding, and with last_token <= -2 the final real token of rows whose mask stops at
n + last_token + 1) would give NaN; here such a row attends to itself only (see `finish`).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE = -100
NEG_INF = float("-inf")


@dataclass
class Sample:
    """One example, tokenized: view 1 and its labels, plus what the views need."""

    input_ids: list[int]  # view 1, unpadded
    labels: list[int]  # view-1 LM labels (unshifted), -100 where not trained
    text_ids: list[int] = field(default_factory=list)  # view-based "Text" (predictors included)
    code_ids: list[int] = field(default_factory=list)  # view-based "Code"
    assistant_span: tuple[int, int] | None = None  # multi-step: (first answer token, last labelled token)


@dataclass
class Upstream:
    lm_loss: torch.Tensor  # the model's mean over shifted view-1 labels
    pred: torch.Tensor  # (pairs, D) predictor embeddings, samples in order, then pair k
    target: torch.Tensor  # (pairs, D) target embeddings
    pairs_per_sample: list[int]
    boundaries: list[list[int]] = field(default_factory=list)  # multi-step, per sample


# ---- masks and batches -----------------------------------------------------------------------
def empty_mask(rows: int, length: int) -> torch.Tensor:
    return torch.full((rows, 1, length, length), NEG_INF, dtype=torch.float32)


def causal_block(mask: torch.Tensor, row: int, lo: int, hi: int) -> None:
    """Queries and keys in [lo, hi) see each other causally."""
    for q in range(lo, hi):
        mask[row, 0, q, lo : q + 1] = 0.0


def causal_to_all(mask: torch.Tensor, row: int, lo: int, hi: int) -> None:
    """Queries in [lo, hi) see every key up to themselves."""
    for q in range(lo, hi):
        mask[row, 0, q, : q + 1] = 0.0


def finish(mask: torch.Tensor) -> torch.Tensor:
    """Upstream leaves some query rows fully -inf (they give NaN and are never read). Let those see
    themselves only, so that no NaN reaches the outputs or the gradients."""
    dead = torch.isinf(mask).all(dim=-1)  # (R, 1, L)
    r, _, q = dead.nonzero(as_tuple=True)
    mask[r, 0, q, q] = 0.0
    return mask


def pad(rows: list[list[int]], value: int, length: int) -> torch.Tensor:
    assert all(len(r) <= length for r in rows), "a row is longer than the batch length"
    return torch.tensor([list(r) + [value] * (length - len(r)) for r in rows], dtype=torch.long)


def forward(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None):
    """One padded forward pass, no position_ids (upstream passes none)."""
    param = next(model.parameters())
    return model(
        input_ids=ids.to(param.device),
        attention_mask=finish(mask).to(device=param.device, dtype=param.dtype),
        labels=None if labels is None else labels.to(param.device),
        output_hidden_states=True,
        use_cache=False,
    )


def read_index(n_real: int, last_token: int) -> int:
    """finetune.py: the unpadded length plus last_token."""
    return n_real + last_token


# ---- view-based (finetune.py) ----------------------------------------------------------------
def view_based(model, samples: list[Sample], last_token: int, pad_id: int, additive: bool = False) -> Upstream:
    B = len(samples)
    idx1 = [read_index(len(s.input_ids), last_token) for s in samples]
    idx_u = [read_index(len(s.text_ids), last_token) for s in samples]
    idx_a = [read_index(len(s.code_ids), last_token) for s in samples]
    longest = max(max(len(s.input_ids), len(s.text_ids), len(s.code_ids)) for s in samples)
    if additive:
        longest = max(longest, max(u + 1 + a + 1 for u, a in zip(idx_u, idx_a)))
    L = longest + 3  # some padding in every row, as upstream's padding="max_length"

    ids1 = pad([s.input_ids for s in samples], pad_id, L)
    labels1 = pad([s.labels for s in samples], IGNORE, L)
    text = pad([s.text_ids for s in samples], pad_id, L)
    code = pad([s.code_ids for s in samples], pad_id, L)

    if not additive:
        # A.5: three batches; 2-D padding masks, i.e. causal over each row's real tokens
        masks = [empty_mask(B, L) for _ in range(3)]
        for i, s in enumerate(samples):
            causal_block(masks[0], i, 0, len(s.input_ids))
            causal_block(masks[1], i, 0, len(s.text_ids))
            causal_block(masks[2], i, 0, len(s.code_ids))
        out1 = forward(model, ids1, masks[0], labels1)
        user_h = forward(model, text, masks[1]).hidden_states[-1]
        asst_h = forward(model, code, masks[2]).hidden_states[-1]
        pred = torch.stack([user_h[i, idx_u[i]] for i in range(B)])
        target = torch.stack([asst_h[i, idx_a[i]] for i in range(B)])
        return Upstream(out1.loss, pred, target, [1] * B)

    # A.7: Code's first la tokens copied in place into the Text row at [lu, lu + la)
    packed = text.clone()
    mask1, mask2 = empty_mask(B, L), empty_mask(B, L)
    for i in range(B):
        len1, lu, la = idx1[i] + 1, idx_u[i] + 1, idx_a[i] + 1
        packed[i, lu : lu + la] = code[i, :la]
        causal_block(mask1, i, 0, len1)
        causal_block(mask2, i, 0, lu)
        causal_block(mask2, i, lu, lu + la)
    out1 = forward(model, ids1, mask1, labels1)
    h = forward(model, packed, mask2).hidden_states[-1]
    pred = torch.stack([h[i, idx_u[i]] for i in range(B)])
    target = torch.stack([h[i, idx_a[i] + idx_u[i] + 1] for i in range(B)])
    return Upstream(out1.loss, pred, target, [1] * B)


# ---- multi-step (Step-JEPA) --------------------------------------------------------------------
def find_boundaries(
    ids: list[int], span: tuple[int, int], sep_ids: set[int], n_steps: int, last_token: int, include_last: bool
) -> list[int] | None:
    """B.3: separator tokens inside [a_start, a_end), at most N of them, then a_end; each shifted by
    last_token and clamped to [0, a_end]. None when fewer than 2 boundaries."""
    a_start, a_end = span
    num_steps = n_steps + 1  # N + 1 for the triple/multi-step batches, 2 for N = 1
    occ = []
    for i in range(a_start, a_end):
        if ids[i] in sep_ids:
            occ.append(i)
            if len(occ) >= num_steps - 1:
                break
    if include_last and occ:
        occ.append(a_end)
    bounds = [min(max(p + last_token, 0), a_end) for p in occ]
    return bounds if len(bounds) >= 2 else None


def upstream_fallback(
    ids: list[int], n_real: int, nn_seq: list[int], n_steps: int, last_token: int, include_last: bool
) -> list[int]:
    """Upstream's equal-parts fallback (J:846-883, J:447-462), for documenting the difference."""
    lt = n_real + last_token
    if n_steps == 1:
        return [lt // 2, lt] if include_last else [lt // 3, 2 * lt // 3]
    m = len(nn_seq)
    count = sum(1 for i in range(len(ids) - m + 1) if ids[i : i + m] == nn_seq)
    max_pairs = count if count > 0 else 1
    nb = min(n_steps + 1, max_pairs + 1)
    if include_last:
        return [lt * (j + 1) // (nb + 1) for j in range(nb - 1)] + [lt]
    return [lt * (j + 1) // (nb + 1) for j in range(nb)]


def middle_fallback(span: tuple[int, int], last_token: int) -> list[int]:
    """llmjepa's documented choice instead: one pair, the (shifted) answer cut at its middle."""
    a_start, a_end = span
    end = min(max(a_end + last_token, a_start + 1), a_end)
    return [a_start + (end - a_start) // 2, end]


def insert_predictors(ids: list[int], bounds: list[int], predictor_ids: list[int]) -> list[int]:
    """B.5.3: predictors 1..K after each of b_0..b_{P-1} (none after the last boundary)."""
    out = []
    for j, t in enumerate(ids):
        out.append(t)
        if j in bounds[:-1]:
            out.extend(predictor_ids)
    return out


def multi_step(
    model,
    samples: list[Sample],
    n_steps: int,
    localized: bool,
    predictor_ids: list[int],
    last_token: int,
    pad_id: int,
    sep_ids: set[int],
    include_last: bool = True,
    fallback: str = "middle",
    nn_seq: list[int] | None = None,
) -> Upstream:
    B, K = len(samples), len(predictor_ids)
    all_bounds = []
    for s in samples:
        b = find_boundaries(s.input_ids, s.assistant_span, sep_ids, n_steps, last_token, include_last)
        if b is None:
            if fallback == "upstream":
                b = upstream_fallback(s.input_ids, len(s.input_ids), nn_seq, n_steps, last_token, include_last)
            else:
                b = middle_fallback(s.assistant_span, last_token)
        all_bounds.append(b)
    P = [len(b) - 1 for b in all_bounds]
    batch2 = [insert_predictors(s.input_ids, b, predictor_ids) for s, b in zip(samples, all_bounds)]
    L = max(len(r) for r in batch2) + 3  # B.5.5: every row padded to one length
    seq_len = [len(s.input_ids) + last_token + 1 for s in samples]

    ids1 = pad([s.input_ids for s in samples], pad_id, L)
    labels1 = pad([s.labels for s in samples], IGNORE, L)
    ids2 = pad(batch2, pad_id, L)
    mask1, mask2 = empty_mask(B, L), empty_mask(B, L)
    for i in range(B):
        causal_block(mask1, i, 0, seq_len[i])
        if n_steps == 1 and localized:
            # J:384-577: up to the predictors; the target segment isolated; the rest causal to all
            b0, b1 = all_bounds[i]
            causal_block(mask2, i, 0, b0 + K + 1)
            causal_block(mask2, i, b0 + K + 1, b1 + K + 1)
            causal_to_all(mask2, i, b1 + K + 1, seq_len[i] + K)
        else:
            causal_block(mask2, i, 0, seq_len[i] + P[i] * K)
    out1 = forward(model, ids1, mask1, labels1)
    h2 = forward(model, ids2, mask2).hidden_states[-1]

    h3 = None
    if n_steps > 1 and localized:
        # B.5.6: batch 3 = the original ids, each step segment causal within itself only
        mask3 = empty_mask(B, L)
        for i, b in enumerate(all_bounds):
            causal_block(mask3, i, 0, b[0] + 1)
            for k in range(1, len(b)):
                causal_block(mask3, i, b[k - 1] + 1, b[k] + 1)
            causal_to_all(mask3, i, b[-1] + 1, seq_len[i])
        h3 = forward(model, ids1.clone(), mask3).hidden_states[-1]

    preds, targets = [], []
    for i, b in enumerate(all_bounds):
        for k in range(P[i]):
            preds.append(h2[i, b[k] + (k + 1) * K])
            if h3 is not None:
                targets.append(h3[i, b[k + 1]])
            else:  # N = 1 (either mask) and --no_localized_masks: the same batch-2 row
                targets.append(h2[i, b[k + 1] + (k + 1) * K])
    return Upstream(out1.loss, torch.stack(preds), torch.stack(targets), P, all_bounds)


# ---- JEPA losses, written out --------------------------------------------------------------------
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dot = (a * b).sum(-1)
    return dot / torch.clamp(a.norm(dim=-1) * b.norm(dim=-1), min=1e-8)


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, multi_step: bool) -> torch.Tensor:
    """A.6 (view-based, batch mean) and B.5.8 (multi-step, pair mean; InfoNCE is 1 - cos there)."""
    pred, target = pred.float(), target.float()
    if kind == "l2":
        return ((pred - target) ** 2).sum(-1).sqrt().mean()
    if kind == "mse":
        return ((pred - target) ** 2).mean()
    if kind == "infonce" and not multi_step:
        unit_p = pred / pred.norm(dim=-1, keepdim=True)
        unit_t = target / target.norm(dim=-1, keepdim=True)
        return F.cross_entropy(unit_p @ unit_t.T / 0.07, torch.arange(pred.shape[0]))
    return (1.0 - cosine(pred, target)).mean()


def contrastive_infonce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """InfoNCE over every pair of the microbatch (what llmjepa does in multi-step too)."""
    return jepa_loss(pred, target, "infonce", multi_step=False)
