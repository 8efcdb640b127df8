"""pack_plan: one stream with the plan's visibility, prefix sharing and view truncation; run_fast equals
run_reference in float64 (losses, embeddings, gradients).

The packing check is independent of the packing code: for every token of every row, the keys its
stream ranges make visible must be exactly the stream places of the keys the plan makes visible;
which tokens are kept is compared with a closure computed by brute force from dense visibility.
"""

import copy
import os
import pickle
import random
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers tensor reductions with ForkingPickler)

from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.execution.fast import run_fast
from llmjepa.execution.reference import run_reference
from llmjepa.model import ModelSpec, load_model, load_tokenizer
from llmjepa.views.builders import build_plan, common_causal_prefix
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.pack import pack_plan, pack_plan_indexed
from llmjepa.views.plan import IGNORE_INDEX, NO_SHARED, ViewPlan, ViewRow, causal_row, visibility

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.randrange(2**31)))
N_RANDOM_PLANS = 60


def seed_note(case: int) -> str:
    return f"case {case}, base seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED})"


# ---- random plans ------------------------------------------------------------------------------
def random_full_row(rng: random.Random, example: int) -> ViewRow:
    n = rng.randint(2, 24)
    ids = [rng.randrange(50) for _ in range(n)]
    labels = [t if rng.random() < 0.5 else IGNORE_INDEX for t in ids]
    return causal_row(example, "full", ids, labels)


def random_view_row(rng: random.Random, example: int, full: ViewRow) -> ViewRow:
    """A row that may repeat a prefix of view 1, then segments, each causal from its start; some rows
    also see a shared range of their own (then they are packed whole)."""
    n_prefix = rng.choice([0, rng.randint(1, len(full))])
    ids, starts = list(full.input_ids[:n_prefix]), [0] * n_prefix
    start = 0 if rng.random() < 0.5 else len(ids)
    for _ in range(rng.randint(1, 4)):
        seg = rng.randint(1, 6)
        starts += [start] * seg
        ids += [rng.randrange(50) for _ in range(seg)]
        start = len(ids) if rng.random() < 0.6 else start
    n = len(ids)
    row = ViewRow(
        example, "view", ids, list(range(n)), starts, [NO_SHARED[0]] * n, [NO_SHARED[1]] * n, [IGNORE_INDEX] * n
    )
    if rng.random() < 0.2:  # a bidirectional block over the row's first tokens
        m = rng.randint(1, n)
        row.shared_start[:m], row.shared_end[:m] = [0] * m, [m - 1] * m
        if rng.random() < 0.5:  # a token of the block with an empty causal range (it sees the block only)
            i = rng.randrange(m)
            row.causal_start[i] = rng.choice([i + 1, n])
    return row


def random_plan(rng: random.Random) -> ViewPlan:
    n_examples = rng.randint(1, 3)
    rows = [random_full_row(rng, b) for b in range(n_examples)]
    plan = ViewPlan(rows=list(rows), n_examples=n_examples)
    for b in range(n_examples):
        for _ in range(rng.randint(0, 3)):
            row = random_view_row(rng, b, rows[b])
            n = common_causal_prefix(row, rows[b])
            row.prefix_source = (b, n) if n else None
            plan.rows.append(row)
            r = len(plan.rows) - 1
            for _ in range(rng.randint(0, 3)):
                other = rng.randrange(len(plan.rows))
                plan.pairs.append(((r, rng.randrange(len(row))), (other, rng.randrange(len(plan.rows[other])))))
    return plan


def stream_visibility(stream) -> list[set[int]]:
    a, b, s = stream.shared_start.tolist(), stream.shared_end.tolist(), stream.causal_start.tolist()
    return [set(range(a[i], b[i] + 1)) | set(range(s[i], i + 1)) for i in range(len(a))]


def packed_whole(row: ViewRow) -> bool:
    """Rows with labels (view 1) or a shared range of their own are packed whole."""
    labelled = any(x != IGNORE_INDEX for x in row.labels)
    return labelled or any(e >= s for s, e in zip(row.shared_start, row.shared_end))


def shares_prefix(plan: ViewPlan, row: ViewRow) -> bool:
    """A row reads its prefix from its source when neither has a shared range and the source is whole."""
    if row.prefix_source is None or any(e >= s for s, e in zip(row.shared_start, row.shared_end)):
        return False
    return packed_whole(plan.rows[row.prefix_source[0]])


def needed_by_brute_force(plan: ViewPlan) -> list[set[int]]:
    """Per row, the tokens a pair reads or a needed token sees (rows with labels or shared ranges: all)."""
    needed = [set() for _ in plan.rows]
    for (pr, pt), (tr, tt) in plan.pairs:
        needed[pr].add(pt)
        needed[tr].add(tt)
    for r, row in enumerate(plan.rows):
        whole = packed_whole(row)
        if whole:
            needed[r] = set(range(len(row)))
            continue
        vis = visibility(row)
        while True:
            grown = needed[r] | {int(j) for i in needed[r] for j in vis[i].nonzero().flatten()}
            if grown == needed[r]:
                break
            needed[r] = grown
    return needed


@pytest.mark.parametrize("case", range(N_RANDOM_PLANS))
def test_packed_visibility_is_the_plans(case: int) -> None:
    rng = random.Random(SEED + case)
    plan = random_plan(rng)
    stream, stream_index = pack_plan_indexed(plan)
    seen = stream_visibility(stream)
    ids, pos = stream.input_ids.tolist(), stream.position_ids.tolist()
    needed = needed_by_brute_force(plan)
    own_tokens = 0
    for r, row in enumerate(plan.rows):
        where = stream_index[r]
        vis = visibility(row)
        for t in sorted(needed[r]):
            w = where[t]
            assert w >= 0, f"row {r} token {t} is needed but was dropped; {seed_note(case)}"
            assert (ids[w], pos[w]) == (row.input_ids[t], row.position_ids[t]), seed_note(case)
            expected = {where[j] for j in vis[t].nonzero().flatten().tolist()}
            assert -1 not in expected, f"row {r} token {t} sees a dropped key; {seed_note(case)}"
            assert seen[w] == expected, f"row {r} token {t}: {sorted(seen[w])} vs {sorted(expected)}; {seed_note(case)}"
        shared = row.prefix_source[1] if shares_prefix(plan, row) else 0
        own_tokens += len([t for t in needed[r] if t >= shared])
    assert stream.n_tokens == own_tokens, f"the stream holds tokens nothing needs; {seed_note(case)}"
    for k, ((pr, pt), (tr, tt)) in enumerate(plan.pairs):
        assert stream.pred_index[k] == stream_index[pr][pt] and stream.target_index[k] == stream_index[tr][tt]
    # each example's rows together, view 1 first
    example_at = {}
    for r, row in enumerate(plan.rows):
        for t in needed[r]:
            assert example_at.setdefault(stream_index[r][t], row.example) == row.example, seed_note(case)
    examples = [example_at[w] for w in sorted(example_at)]
    assert examples == sorted(examples), f"an example's rows are apart in the stream; {seed_note(case)}"
    own_places = []  # per row in plan order: (example, places of the tokens it runs itself)
    for r, row in enumerate(plan.rows):
        shared = row.prefix_source[1] if shares_prefix(plan, row) else 0
        own_places.append((row.example, [stream_index[r][t] for t in needed[r] if t >= shared]))
    runs = [(example, places) for example, places in sorted(own_places, key=lambda x: x[0]) if places]
    for (_, earlier), (_, later) in zip(runs, runs[1:]):  # by example, in plan order (view 1 first)
        assert max(earlier) < min(later), f"rows out of order in the stream; {seed_note(case)}"
    labels = [
        (r, t) for r, row in enumerate(plan.rows) for t in range(len(row) - 1) if row.labels[t + 1] != IGNORE_INDEX
    ]
    assert stream.label_index.tolist() == [stream_index[r][t] for r, t in labels]
    assert stream.label_target.tolist() == [plan.rows[r].labels[t + 1] for r, t in labels]


def test_packed_stream_holds_only_tensors() -> None:
    """What the collator ships: tensors only (no per-token Python lists to pickle)."""
    stream = pack_plan(random_plan(random.Random(SEED)))
    assert all(isinstance(value, torch.Tensor) for value in vars(stream).values())
    for loaded in (pickle.loads(pickle.dumps(stream)), ForkingPickler.loads(ForkingPickler.dumps(stream))):
        for name, value in vars(stream).items():
            assert isinstance(getattr(loaded, name), torch.Tensor) and torch.equal(getattr(loaded, name), value), name


def test_bad_plans_are_refused_with_the_row_and_token() -> None:
    def plan_with(**fields) -> ViewPlan:
        row = causal_row(0, "full", [5, 6, 7], [5, 6, 7])
        for name, value in fields.items():
            setattr(row, name, value)
        return ViewPlan(rows=[row], n_examples=1)

    with pytest.raises(ValueError, match="row 0 of view 'full': token 1 sees no key"):
        pack_plan(plan_with(causal_start=[0, 2, 0]))
    with pytest.raises(ValueError, match="token 2 has a shared range outside the row"):
        pack_plan(plan_with(shared_start=[0, 0, 1], shared_end=[-1, -1, 3]))
    with pytest.raises(ValueError, match="token 0 has a causal range starting before the row"):
        pack_plan(plan_with(causal_start=[-1, 0, 0]))
    with pytest.raises(ValueError, match="per-token fields differ in length"):
        pack_plan(plan_with(position_ids=[0, 1]))
    plan = plan_with()
    plan.pairs.append(((0, 1), (0, 3)))
    with pytest.raises(ValueError, match=r"pair 0 reads target \(row 0, token 3\), outside the plan"):
        pack_plan(plan)


# ---- real plans through the model, float64 -------------------------------------------------------
MODES = {
    "regular": dict(regular=True),
    "view-based": dict(predictors=1),
    "view-based, last_token -2, 3 predictors": dict(predictors=3, last_token=-2),
    "additive mask": dict(predictors=1, additive_mask=True),
    "N=1 localized": dict(predictors=1, num_prediction_steps=1),
    "N=2 localized": dict(predictors=2, num_prediction_steps=2),
    "N=3 not localized": dict(predictors=1, num_prediction_steps=3, localized_masks=False),
}


@pytest.fixture(scope="module")
def models_and_data():
    from llmjepa.views.examples import load_examples
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    reference = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float64", seed=5), tokenizer)
    fast = copy.deepcopy(reference)
    fast.set_attn_implementation(hf_attention.ATTENTION_NAME)
    examples = load_examples(str(sample_data_path("train")))[:3]
    return tokenizer, reference, fast, examples


def losses_and_grads(model: torch.nn.Module, executed) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    pred, target = executed.hidden[executed.pred_index], executed.hidden[executed.target_index]
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=-1)
    total = executed.ce_sum + (1 - cos).sum() if cos.numel() else executed.ce_sum
    model.zero_grad()
    total.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return [executed.ce_sum.detach(), pred.detach(), target.detach()], grads


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.mark.parametrize("mode", list(MODES))
def test_run_fast_equals_run_reference_in_float64(models_and_data, mode: str) -> None:
    tokenizer, reference, fast, examples = models_and_data
    cfg = ViewConfig(**MODES[mode])
    encoded, _ = encode_all(examples, tokenizer, cfg)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, cfg.predictors + 1)])
    plan = build_plan(encoded, cfg, predictor_ids)
    ref_values, ref_grads = losses_and_grads(reference, run_reference(reference, plan, tokenizer.pad_token_id))
    values, grads = losses_and_grads(fast, run_fast(fast, plan))
    for name, x, r in zip(("ce_sum", "predictor embeddings", "target embeddings"), values, ref_values):
        # ce_sum is a float32 scalar: the reference rounds its float64 logits to float32 before the cross
        # entropy, the fast path's F.linear_cross_entropy does not (lm_head.py), so they agree to float32
        bound = 1e-6 if name == "ce_sum" else 1e-12
        if r.numel():
            assert rel(x, r) < bound, f"{mode}: {name} rel err {rel(x, r):.2e}"
    assert len(grads) == len(ref_grads)
    # Llama's RMSNorm casts to float32 even for float64 weights, so gradients carry float32 rounding, and
    # prefix sharing sums them in another order (measured up to 1.7e-8 on 2026-11-24; fp32-level bound)
    worst = max(rel(g, r) for g, r in zip(grads, ref_grads))
    assert worst < 1e-6, f"{mode}: gradient rel err {worst:.2e}"
    stream = pack_plan(plan)
    if not cfg.regular:
        assert stream.n_tokens < plan.n_tokens, f"{mode}: nothing shared or truncated"
    else:
        assert stream.n_tokens == plan.n_tokens


def test_truncation_and_sharing_in_a_step_plan(models_and_data) -> None:
    """N=2 localized: the predictor row reads view 1's prompt instead of recomputing it, and the target
    row keeps neither step 0 (never a target) nor anything after the last target."""
    tokenizer, *_, examples = models_and_data
    cfg = ViewConfig(predictors=1, num_prediction_steps=2)
    encoded, _ = encode_all(examples[:1], tokenizer, cfg)
    plan = build_plan(encoded, cfg, tokenizer.convert_tokens_to_ids(["<|predictor_1|>"]))
    full, predictor, target = plan.rows
    stream, stream_index = pack_plan_indexed(plan)
    b = encoded[0].boundaries
    n_shared = predictor.prefix_source[1]
    assert n_shared == b[0] + 1  # all of view 1 up to the first boundary, then the first predictor
    assert stream_index[1][:n_shared] == stream_index[0][:n_shared]
    # step 0 of the target row is causal from 0 like view 1: it is view 1's prefix, not run again
    assert target.prefix_source == (0, b[0] + 1)
    assert stream_index[2][: b[0] + 1] == stream_index[0][: b[0] + 1]
    assert all(w >= 0 for w in stream_index[2][b[0] + 1 :]) and len(target) == b[-1] + 1
    assert stream.n_tokens == len(full) + (len(predictor) - n_shared) + (b[-1] - b[0])


@pytest.mark.interpreter
@pytest.mark.parametrize("mode", ["N=2 localized", "additive mask"])
def test_run_fast_with_the_triton_kernel(models_and_data, mode: str) -> None:
    """The path CUDA takes: run_fast with the Triton attention kernel (CPU interpreter) equals the
    reference on one example, in float32 (the interpreter computes in float32 at best)."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1 (set by conftest without CUDA)")
    tokenizer, reference, fast, examples = models_and_data
    cfg = ViewConfig(**MODES[mode])
    encoded, _ = encode_all(examples[:1], tokenizer, cfg)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, cfg.predictors + 1)])
    plan = build_plan(encoded, cfg, predictor_ids)
    reference32, fast32 = copy.deepcopy(reference).float(), copy.deepcopy(fast).float()
    ref_values, ref_grads = losses_and_grads(reference32, run_reference(reference32, plan, tokenizer.pad_token_id))
    values, grads = losses_and_grads(fast32, run_fast(fast32, plan, attention="triton"))
    for name, x, r in zip(("ce_sum", "predictor embeddings", "target embeddings"), values, ref_values):
        assert rel(x.double(), r.double()) < 1e-5, f"{mode}: {name} rel err {rel(x.double(), r.double()):.2e}"
    worst = max(rel(g.double(), r.double()) for g, r in zip(grads, ref_grads))
    print(f"{mode}: gradient rel err {worst:.2e}")
    assert worst < 1e-5, f"{mode}: gradient rel err {worst:.2e}"
