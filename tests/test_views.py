"""Unit tests of view plans: ranges, pair indices, boundaries, prefixes, jepa_ratio draws."""

import random

import pytest
import torch

from llmjepa.default_model import sample_data_path
from llmjepa.model import load_tokenizer
from llmjepa.views.builders import build_plan
from llmjepa.views.collate import jepa_ratio_keeps_views
from llmjepa.views.encoding import EncodeReport, ViewConfig, encode, encode_all
from llmjepa.views.examples import load_examples
from llmjepa.views.plan import IGNORE_INDEX, ViewRow, causal_row, check_row, visibility


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("llmjepa/tiny-llama")


@pytest.fixture(scope="module")
def examples():
    return load_examples(sample_data_path("train"))[:24]


def predictor_ids(tokenizer, k):
    return tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])


def test_visibility_follows_ranges():
    n = 7
    row = ViewRow(
        0, "x", [1] * n, list(range(n)), [0, 0, 2, 2, 2, 5, 0], [0] * n, [-1, -1, -1, 0, 0, 1, -1], [-100] * n
    )
    vis = visibility(row)
    for i in range(n):
        for j in range(n):
            expected = (row.causal_start[i] <= j <= i) or (row.shared_start[i] <= j <= row.shared_end[i])
            assert bool(vis[i, j]) == expected, (i, j)


def test_check_row_rejects_a_token_that_sees_nothing():
    row = causal_row(0, "full", [5, 6, 7])
    row.causal_start[1] = 2  # token 1: causal range [2, 1] is empty, no shared range
    with pytest.raises(ValueError, match="token 1 sees no key"):
        check_row(row)


def test_labels_modes(tokenizer, examples):
    ex = examples[0]
    for mode in ("assistant", "all", "upstream"):
        enc = encode(ex, 0, tokenizer, ViewConfig(regular=True, labels=mode), EncodeReport())
        labelled = [i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX]
        if mode == "assistant":
            assert labelled == list(range(enc.assistant_start, len(enc.input_ids)))
            assert tokenizer.decode(enc.input_ids[enc.assistant_start :]).startswith(ex.assistant)
        elif mode == "all":
            assert labelled == list(range(len(enc.input_ids)))
        else:  # every token but pad (= eos = <|eot_id|>)
            assert all(enc.input_ids[i] != tokenizer.pad_token_id for i in labelled)
            assert len(labelled) == sum(t != tokenizer.pad_token_id for t in enc.input_ids)


@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("last_token", [-1, -2])
@pytest.mark.parametrize("front", [False, True])
def test_view_based_pairs_read_the_right_tokens(tokenizer, examples, k, last_token, front):
    cfg = ViewConfig(predictors=k, last_token=last_token, front_pred=front)
    encoded, _ = encode_all(examples[:4], tokenizer, cfg)
    plan = build_plan(encoded, cfg, predictor_ids(tokenizer, k))
    assert len(plan.rows) == 12 and plan.n_pairs == 4
    for (pr, pi), (tr, ti) in plan.pairs:
        text, code = plan.rows[pr], plan.rows[tr]
        assert (text.view, code.view) == ("text", "code")
        assert pi == len(text) + last_token and ti == len(code) + last_token
        if k and not front and last_token == -2:
            assert text.input_ids[pi] == tokenizer.convert_tokens_to_ids("<|predictor_1|>")
        assert all(t == IGNORE_INDEX for t in text.labels + code.labels)


@pytest.mark.parametrize("n_steps", [1, 2, 3])
@pytest.mark.parametrize("localized", [True, False])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("isolated", [False, True])
def test_step_pairs(tokenizer, examples, n_steps, localized, k, isolated):
    cfg = ViewConfig(
        num_prediction_steps=n_steps, predictors=k, localized_masks=localized, isolated_predictors=isolated
    )
    encoded, report = encode_all(examples, tokenizer, cfg)
    assert report.fallback == 0  # every bundled answer has "\n\n" steps
    pred_1, pred_k = predictor_ids(tokenizer, k)[0], predictor_ids(tokenizer, k)[-1]
    sep = tokenizer.convert_tokens_to_ids("ĊĊ")
    for enc in encoded:
        plan = build_plan([enc], cfg, predictor_ids(tokenizer, k))
        n_seps = sum(t == sep for t in enc.input_ids[enc.assistant_start :])
        assert plan.n_pairs == min(n_steps, n_seps)
        full = plan.rows[0]
        for (pr, pi), (tr, ti) in plan.pairs:
            assert plan.rows[pr].input_ids[pi] == pred_k  # the last predictor of an insertion
            target_row = plan.rows[tr]
            # the target is the token before a separator (or before the predictors inserted there),
            # or the token before the final <|eot_id|>
            following = target_row.input_ids[ti + 1] if ti + 1 < len(target_row) else full.input_ids[-1]
            assert following in (sep, pred_1, tokenizer.convert_tokens_to_ids("<|eot_id|>"))
        for row in plan.rows[1:]:
            check_row(row)
            assert row.prefix_source is not None and row.prefix_source[0] == 0
            n = row.prefix_source[1]
            assert row.input_ids[:n] == full.input_ids[:n]


def test_localized_target_segments_see_only_themselves(tokenizer, examples):
    cfg = ViewConfig(num_prediction_steps=3, predictors=1)
    enc = encode(examples[2], 0, tokenizer, cfg, EncodeReport())
    plan = build_plan([enc], cfg, predictor_ids(tokenizer, 1))
    target = next(r for r in plan.rows if r.view == "target")
    b = enc.boundaries
    assert len(target) == b[-1] + 1
    segment_of = lambda i: sum(i > x for x in b)  # noqa: E731
    vis = visibility(target)
    for i in range(len(target)):
        for j in range(len(target)):
            assert bool(vis[i, j]) == (j <= i and segment_of(i) == segment_of(j))


def test_fallback_and_fewer_steps_are_counted(tokenizer):
    from llmjepa.views.examples import Example

    system = {"role": "system", "content": "Solve."}
    user = {"role": "user", "content": "What is 2 + 3?"}
    no_steps = Example([system, user, {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}], "x:1")
    one_sep = Example([system, user, {"role": "assistant", "content": "2 + 3 = 5.\n\nThe answer is 5."}], "x:2")
    cfg = ViewConfig(num_prediction_steps=3, predictors=1)
    encoded, report = encode_all([no_steps, one_sep], tokenizer, cfg)
    assert (report.fallback, report.fewer_steps) == (1, 1)
    assert encoded[0].fallback and len(encoded[0].boundaries) == 2
    a_start, end = encoded[0].assistant_start, len(encoded[0].input_ids) - 2  # last_token -1
    assert a_start <= encoded[0].boundaries[0] < encoded[0].boundaries[1] == end
    assert build_plan(encoded, cfg, predictor_ids(tokenizer, 1)).n_pairs == 2
    lines = report.lines("x", 512, 3)
    assert any("1 of 2 examples have no step separator" in line for line in lines)


def test_additive_mask_packing(tokenizer, examples):
    for positions in ("continue", "reset"):
        cfg = ViewConfig(predictors=2, additive_mask=True, additive_positions=positions, last_token=-1)
        enc = encode(examples[0], 0, tokenizer, cfg, EncodeReport())
        plan = build_plan([enc], cfg, predictor_ids(tokenizer, 2))
        packed = plan.rows[1]
        lu = len(enc.text_ids)
        assert packed.input_ids == enc.text_ids + enc.code_ids
        assert packed.causal_start == [0] * lu + [lu] * len(enc.code_ids)
        expected = (
            list(range(len(packed))) if positions == "continue" else list(range(lu)) + list(range(len(enc.code_ids)))
        )
        assert packed.position_ids == expected
        assert plan.pairs == [((1, lu - 1), (1, len(packed) - 1))]


def test_truncation_is_counted(tokenizer, examples):
    cfg = ViewConfig(regular=True, max_length=100)
    encoded, report = encode_all(examples, tokenizer, cfg)
    assert (
        report.truncated
        == sum(len(encode(e, 0, tokenizer, ViewConfig(regular=True), EncodeReport()).input_ids) > 100 for e in examples)
        > 0
    )
    assert all(len(e.input_ids) <= 100 for e in encoded)


def test_jepa_ratio_draws_are_deterministic_and_near_ratio():
    ids = [[random.randrange(10_000) for _ in range(4)] for _ in range(2000)]
    draws = [jepa_ratio_keeps_views(b, 0.3, seed=7) for b in ids]
    assert draws == [jepa_ratio_keeps_views(b, 0.3, seed=7) for b in ids]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert all(jepa_ratio_keeps_views(b, -1.0, seed=7) for b in ids[:10])


def test_reference_masks_have_no_empty_row(tokenizer, examples):
    from llmjepa.execution.reference import padded_inputs

    cfg = ViewConfig(num_prediction_steps=2, predictors=1)
    encoded, _ = encode_all(examples[:3], tokenizer, cfg)
    plan = build_plan(encoded, cfg, predictor_ids(tokenizer, 1))
    inputs = padded_inputs(plan, tokenizer.pad_token_id, torch.float32, torch.device("cpu"))
    mask = inputs["attention_mask"]
    assert (mask == 0).any(dim=-1).all()  # every query, padding included, sees a key


def test_entropy_plan_probes_are_the_windows_in_view_1(tokenizer, examples):
    """--entropy_filter: after the real pairs, one probe per view-1 token within w of each pair's
    predictor boundary (cut to view 1), read as predictor and target; n_pairs counts min(k, pairs) per
    example, the pairs the loss will keep."""
    from llmjepa.views.builders import EntropyPlan

    cfg = ViewConfig(num_prediction_steps=3, predictors=1, entropy_top_k=2, entropy_window=3)
    batch = [encode(e, i, tokenizer, cfg, EncodeReport()) for i, e in enumerate(examples[:6])]
    plan = build_plan(batch, cfg, predictor_ids(tokenizer, 1))
    plain = build_plan(batch, ViewConfig(num_prediction_steps=3, predictors=1), predictor_ids(tokenizer, 1))
    assert isinstance(plan, EntropyPlan) and plan.pairs[: plan.entropy.n_real] == plain.pairs
    probes = plan.pairs[plan.entropy.n_real :]
    expected, groups = [], []
    for b, enc in enumerate(batch):
        pairs = len(enc.boundaries) - 1
        groups.append(min(2, pairs))
        for at in enc.boundaries[:-1]:
            expected += [((b, t), (b, t)) for t in range(max(0, at - 3), min(len(enc.input_ids), at + 4))]
    assert probes == expected
    assert plan.n_pairs == sum(groups) < plan.entropy.n_real
    assert [len(w) for w in plan.entropy.windows] == [
        min(len(e.input_ids), at + 4) - max(0, at - 3) for e in batch for at in e.boundaries[:-1]
    ]


def test_readout_wraps_only_where_the_pairs_read_elsewhere():
    from llmjepa.execution.readout import ViewReadout, readout_for

    def executor(model, plan):
        return None

    assert readout_for(executor, ViewConfig(predictors=1)) is executor
    wrapped = readout_for(executor, ViewConfig(predictors=1, jepa_layer=2))
    assert isinstance(wrapped, ViewReadout) and wrapped.layer == 2
    assert readout_for(wrapped, ViewConfig(predictors=1, jepa_layer=2)) is wrapped
    assert isinstance(readout_for(executor, ViewConfig(num_prediction_steps=2, entropy_top_k=1)), ViewReadout)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_prediction_steps=1, entropy_top_k=1), "--num_prediction_steps >= 2"),
        (dict(num_prediction_steps=2, view_based_jepa=True), "--view_based_jepa"),
        (dict(unmask_user=True, labels="all"), "--unmask_user"),
        (dict(plain=True, labels="all", num_prediction_steps=2), "no answer"),
    ],
)
def test_fork_extras_refused_combinations(fields, message):
    from llmjepa.errors import UserError

    with pytest.raises(UserError, match=message):
        ViewConfig(**fields)
