"""Our reference executor computes what the upstream trainers compute.

`llmjepa.views.encoding.encode` -> `build_plan` -> `llmjepa.execution.reference.run_reference` is compared with
tests/upstream_batches.py, an independent and deliberately plain rewrite of upstream's batches
(finetune.py for view-based LLM-JEPA, Step-JEPA train.py for multi-step; /tmp/upstream_spec.md):
padded rows, dense 0/-inf float masks, no position_ids, read-out at upstream's indices of
`hidden_states[-1]`, the model's own LM loss and upstream's JEPA formulas. Token ids are produced
here from the chat template (and checked against `encode`); batch layout, masks, positions,
boundaries and read-out indices are not shared. The tiny default Llama runs in float32 eval mode,
our side with sdpa attention, the upstream side with eager attention.

Compared per case: every predictor and target embedding (relative error < 1e-5), the LM loss
(our ce_sum / label tokens vs the model's mean), and the JEPA loss for cosine, l2, mse and infonce
(`llmjepa.execution.losses.jepa_pair_losses` vs formulas written out in upstream_batches); for a few cases
the gradients of gamma * lm + lbd * jepa with respect to every parameter.

Deliberate differences between our views and upstream (documented choices, not bugs):

1. BOS: we tokenize the rendered chat template with add_special_tokens=False, so one BOS.
   finetune.py tokenizes with the default add_special_tokens=True and gets a second BOS on
   Llama-3 (Step-JEPA has one, like us). Read-outs count from the end of the row, so they pick
   the same tokens, but every upstream finetune.py row is one token longer (positions shift by 1).
2. LM labels: ours default to "assistant" (the answer's tokens and its final <|eot_id|>), as
   Step-JEPA. finetune.py's collator trains every token whose id is not the pad id (pad = eos,
   so no <|eot_id|> at all); `labels="upstream"` reproduces that and is tested below.
3. Step separators: any token whose decoded text contains the separator string (computed from the
   tokenizer). Upstream reads a fixed id list from nn_tokens.json (18 Llama-3 ids; without the
   file, {271, 382, 627}), which is wrong for any other tokenizer.
4. No separator in the answer: ours gives one pair, the answer [a_start, a_end + last_token] cut at
   its middle. Upstream (multi-step batches) counts "\\n\\n" over the whole padded row, header
   "\\n\\n"s included, and places min(N+1, count+1) unshifted points at fractions of the WHOLE
   sequence (they land in the system/user turns); N = 1 uses (lt // 2, lt). See
   `test_no_separator_fallback_is_a_documented_choice`.
5. InfoNCE in multi-step: ours is contrastive over all pairs of the microbatch (as view-based);
   upstream's multi-step --infonce silently computes 1 - cos per pair.
6. Fully masked query rows: upstream's masks leave padded rows, and with last_token <= -2 the final
   real token of rows whose mask stops at n + last_token + 1, fully -inf (NaN outputs, never
   read, but NaN * 0 can reach gradients). Our view-1 rows stay causal over all their tokens and
   padded queries see themselves; masks use finfo.min instead of -inf. The values read are equal.
7. Row lengths: our extra rows stop at the last token any pair reads, upstream's run to the padded
   length. Under causal masks the states read are the same.
8. Examples without a system message: we take messages[-2] / messages[-1] as user / assistant;
   finetune.py takes messages[1:2] / [2:3] and so assumes a system message.
9. `additive_positions="reset"` (Code restarts at position 0) is our option; upstream continues
   the positions after Text. Under RoPE the two are the same function (the Code block sees only
   itself and RoPE depends on position differences) and differ by rounding only; with absolute
   position embeddings they differ. "reset" is tested equal to the three separate passes,
   "continue" equal to upstream's packed row.
10. Truncation (not tested here): a truncated view 1 keeps its assistant labels with us; upstream
    Step-JEPA's label matching then fails, leaving no labels and taking the fallback.
"""

from functools import cache

import pytest
import torch
import upstream_batches as up  # tests/ is on sys.path under pytest's default import mode

from llmjepa.default_model import build_default_model, build_default_tokenizer, sample_data_path
from llmjepa.execution.losses import JEPA_KINDS, jepa_pair_losses
from llmjepa.execution.reference import run_reference
from llmjepa.model import load_tokenizer
from llmjepa.views.builders import build_plan
from llmjepa.views.encoding import EncodeReport, ViewConfig, encode
from llmjepa.views.examples import Example, load_examples

REL = 1e-5
LBD, GAMMA = 0.5, 1.0

HANDMADE = [
    # no "\n\n" in the answer: the fallback
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tom has 4 apples and eats 1. How many are left?"},
        {"role": "assistant", "content": "Tom has 4 - 1 = 3 apples left. The answer is 3."},
    ],
    # one separator (fewer than N for N >= 2) and no system message
    [
        {"role": "user", "content": "A box holds 6 eggs. How many eggs are in 5 boxes?"},
        {"role": "assistant", "content": "Each box has 6 eggs, so 5 * 6 = 30.\n\nThe answer is 30."},
    ],
    # the answer starts with a separator: its boundary falls on the header's "\n\n"
    [
        {"role": "system", "content": "Answer the math question."},
        {"role": "user", "content": "What is 2 + 3 + 4?"},
        {"role": "assistant", "content": "\n\nFirst 2 + 3 = 5.\n\nThen 5 + 4 = 9.\n\nThe answer is 9."},
    ],
]


# ---- fixtures ------------------------------------------------------------------------------


@cache
def tokenizer():
    return load_tokenizer("llmjepa/tiny-llama")


@cache
def model():
    m = build_default_model(build_default_tokenizer(), seed=0).float().eval()
    assert m.get_input_embeddings().num_embeddings == len(tokenizer())
    return m


@cache
def examples() -> tuple[Example, ...]:
    sample = load_examples(sample_data_path("train"))[:4]
    hand = [Example(messages=m, source=f"handmade:{i}") for i, m in enumerate(HANDMADE)]
    return tuple(sample + hand)


def predictor_ids(k: int) -> list[int]:
    return tokenizer().convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])


def tok(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def template(messages: list[dict], generation_prompt: bool = False) -> list[int]:
    return tok(tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def window_labels(ids: list[int], answer: list[int]) -> list[int]:
    """Step-JEPA: the first window of view 1 equal to the answer's tokens (content + eos) is trained."""
    for s in range(len(ids) - len(answer) + 1):
        if ids[s : s + len(answer)] == answer:
            return [up.IGNORE] * s + answer + [up.IGNORE] * (len(ids) - s - len(answer))
    return [up.IGNORE] * len(ids)


def upstream_sample(ex: Example, cfg: ViewConfig) -> up.Sample:
    """Token ids of the upstream views, written from the spec (single BOS, see difference 1)."""
    t = tokenizer()
    messages = ex.messages
    if cfg.plain:
        return plain_upstream_sample(ex, cfg)
    ids = template(messages)
    assistant_labels = window_labels(ids, tok(messages[-1]["content"] + t.eos_token))
    trained = [i for i, v in enumerate(assistant_labels) if v != up.IGNORE]
    span = (trained[0], trained[-1])
    if cfg.labels == "upstream":  # finetune.py's collator: every token but the pad id
        labels = [v if v != t.pad_token_id else up.IGNORE for v in ids]
    else:
        labels = assistant_labels
    user, assistant = messages[-2], messages[-1]
    if cfg.reverse_pred:
        user, assistant = assistant, user
    order = range(1, cfg.predictors + 1) if cfg.front_pred else range(cfg.predictors, 0, -1)
    preds = "".join(f"<|predictor_{j}|>" for j in order)
    content = preds + user["content"] if cfg.front_pred else user["content"] + preds
    text = template([{"role": user["role"], "content": content}])
    code = template([dict(assistant)])
    return up.Sample(ids, labels, text, code, span)


def plain_upstream_sample(ex: Example, cfg: ViewConfig) -> up.Sample:
    """finetune.py --plain (F:86-90, 137-138, 165-166): no template; each string is tokenized with
    add_special_tokens=True, i.e. with one BOS; Text and Code are the raw contents."""
    t = tokenizer()
    with_bos = lambda text: t(text)["input_ids"]  # noqa: E731
    user, assistant = ex.messages[-2]["content"], ex.messages[-1]["content"]
    ids = with_bos(user + "<|perception|>" + assistant + "<|eot_id|>")
    labels = window_labels(ids, tok(assistant + t.eos_token))
    if cfg.reverse_pred:
        user, assistant = assistant, user
    order = range(1, cfg.predictors + 1) if cfg.front_pred else range(cfg.predictors, 0, -1)
    preds = "".join(f"<|predictor_{j}|>" for j in order)
    text = with_bos(preds + user if cfg.front_pred else user + preds)
    return up.Sample(ids, labels, text, with_bos(assistant))


def separator_ids() -> set[int]:
    t = tokenizer()
    return {i for i in range(len(t)) if "\n\n" in t.decode([i])}


def with_attention(impl: str):
    m = model()
    m.set_attn_implementation(impl)
    return m


# ---- the two sides -----------------------------------------------------------------------------
def run_ours(cfg: ViewConfig, grad: bool = False):
    report = EncodeReport()
    encoded = [encode(e, i, tokenizer(), cfg, report) for i, e in enumerate(examples())]
    plan = build_plan(encoded, cfg, predictor_ids(cfg.predictors))
    m = with_attention("sdpa")
    with torch.set_grad_enabled(grad):
        out = run_reference(m, plan, tokenizer().pad_token_id)
    pred, target = out.hidden[out.pred_index], out.hidden[out.target_index]
    return encoded, plan, out.ce_sum / plan.label_tokens, pred, target


def run_upstream(cfg: ViewConfig, grad: bool = False, fallback: str = "middle") -> up.Upstream:
    samples = [upstream_sample(e, cfg) for e in examples()]
    m = with_attention("eager")
    pad_id = tokenizer().pad_token_id
    with torch.set_grad_enabled(grad):
        if not cfg.multi_step:
            return up.view_based(m, samples, cfg.last_token, pad_id, additive=cfg.additive_mask)
        return up.multi_step(
            m,
            samples,
            cfg.num_prediction_steps,
            cfg.localized_masks,
            predictor_ids(cfg.predictors),
            cfg.last_token,
            pad_id,
            separator_ids(),
            include_last=cfg.include_last_step_target,
            fallback=fallback,
            nn_seq=tok("\n\n"),
        )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def assert_pairs_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: {tuple(ours.shape)} vs upstream {tuple(theirs.shape)}"
    for p in range(theirs.shape[0]):
        err = rel_err(ours[p], theirs[p])
        assert err < REL, f"{what} of pair {p}: relative error {err:.2e}"


def assert_equivalent(cfg: ViewConfig, upstream_cfg: ViewConfig | None = None) -> None:
    _, plan, lm, pred, target = run_ours(cfg)
    theirs = run_upstream(upstream_cfg or cfg)
    assert plan.n_pairs == sum(theirs.pairs_per_sample)
    assert_pairs_close(pred, theirs.pred, "predictor")
    assert_pairs_close(target, theirs.target, "target")
    assert abs(lm.item() - theirs.lm_loss.item()) < REL * abs(theirs.lm_loss.item()), (lm.item(), theirs.lm_loss.item())
    for kind in JEPA_KINDS:
        terms, _ = jepa_pair_losses(pred, target, kind)
        ours = terms.sum() / plan.n_pairs  # the trainer's normalization: per pair
        if kind == "infonce" and cfg.multi_step:  # difference 5: contrastive for us, 1 - cos upstream
            expected = up.contrastive_infonce(theirs.pred, theirs.target)
            upstream_value = up.jepa_loss(theirs.pred, theirs.target, kind, multi_step=True)
            assert abs(ours.item() - upstream_value.item()) > 1e-3
        else:
            expected = up.jepa_loss(theirs.pred, theirs.target, kind, multi_step=cfg.multi_step)
        assert abs(ours.item() - expected.item()) <= 1e-5 * max(1.0, abs(expected.item())), kind


# ---- view-based ----------------------------------------------------------------------------------
VIEW_BASED = [
    *[dict(predictors=k, last_token=lt) for k in (0, 1, 3) for lt in (-1, -2)],
    dict(predictors=3, last_token=-1, front_pred=True),
    dict(predictors=2, last_token=-2, front_pred=True),
    dict(predictors=2, last_token=-1, reverse_pred=True),
    dict(predictors=1, last_token=-2, reverse_pred=True),
    dict(predictors=1, last_token=-1, labels="upstream"),
]


@pytest.mark.parametrize("fields", VIEW_BASED, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_view_based(fields):
    assert_equivalent(ViewConfig(**fields))


ADDITIVE = [dict(predictors=k, last_token=lt) for k, lt in ((0, -1), (1, -1), (3, -2))]


@pytest.mark.parametrize("fields", ADDITIVE, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_additive_mask_continue_is_upstream_packing(fields):
    assert_equivalent(ViewConfig(additive_mask=True, additive_positions="continue", **fields))


@pytest.mark.parametrize("fields", ADDITIVE, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_additive_mask_reset_is_separate_passes(fields):
    assert_equivalent(
        ViewConfig(additive_mask=True, additive_positions="reset", **fields), upstream_cfg=ViewConfig(**fields)
    )


def test_additive_continue_equals_reset_under_rope():
    """Finding: with RoPE (and no absolute position embedding) attention depends on position
    differences only, and the Code block sees only itself, so continuing its positions after Text
    gives the separate-pass embeddings up to the rounding of the rotation angles."""
    fields = dict(predictors=1, last_token=-1)
    _, _, _, _, reset = run_ours(ViewConfig(additive_mask=True, additive_positions="reset", **fields))
    continued = run_upstream(ViewConfig(additive_mask=True, **fields)).target
    errors = [rel_err(reset[p], continued[p]) for p in range(len(reset))]
    assert 0 < max(errors) < 1e-5


# ---- multi-step ----------------------------------------------------------------------------------
MULTI_STEP = [
    *[
        dict(num_prediction_steps=n, localized_masks=loc, last_token=lt, predictors=k)
        for n, k in ((1, 1), (2, 2), (3, 3))
        for loc in (True, False)
        for lt in (-1, -2)
    ],
    dict(num_prediction_steps=2, localized_masks=True, last_token=-1, predictors=2, include_last_step_target=False),
    dict(num_prediction_steps=3, localized_masks=False, last_token=-1, predictors=1, include_last_step_target=False),
]


@pytest.mark.parametrize("fields", MULTI_STEP, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_multi_step(fields):
    cfg = ViewConfig(**fields)
    encoded, *_ = run_ours(cfg)
    theirs = run_upstream(cfg)
    assert [e.boundaries for e in encoded] == theirs.boundaries
    assert_equivalent(cfg)


def test_localized_targets_differ_from_unlocalized():
    """The localized mask changes the targets (the comparison above is not vacuous)."""
    a = run_upstream(ViewConfig(num_prediction_steps=3, predictors=1, localized_masks=True)).target
    b = run_upstream(ViewConfig(num_prediction_steps=3, predictors=1, localized_masks=False)).target
    assert max(rel_err(a[p], b[p]) for p in range(len(a))) > 1e-2


def test_no_separator_fallback_is_a_documented_choice():
    """Difference 4: with no separator we cut the answer at its middle; upstream's points differ."""
    for n in (1, 3):
        cfg = ViewConfig(num_prediction_steps=n, predictors=1)
        encoded, *_ = run_ours(cfg)
        enc, sample = encoded[4], upstream_sample(examples()[4], cfg)
        assert enc.fallback
        assert enc.boundaries == up.middle_fallback(sample.assistant_span, cfg.last_token)
        theirs = up.upstream_fallback(sample.input_ids, len(sample.input_ids), tok("\n\n"), n, -1, True)
        assert theirs != enc.boundaries
        assert theirs[0] < sample.assistant_span[0]  # upstream's first point is in the prompt
    # fewer separators than N: both sides simply give fewer pairs
    encoded, *_ = run_ours(ViewConfig(num_prediction_steps=3, predictors=1))
    assert len(encoded[5].boundaries) == 2 and not encoded[5].fallback


# ---- tokenization agrees ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [dict(predictors=3), dict(predictors=2, front_pred=True), dict(predictors=1, reverse_pred=True)],
    ids=["K3", "front", "reverse"],
)
def test_views_tokenize_as_upstream(fields):
    cfg = ViewConfig(**fields)
    report = EncodeReport()
    for i, e in enumerate(examples()):
        enc, s = encode(e, i, tokenizer(), cfg, report), upstream_sample(e, cfg)
        assert (enc.input_ids, enc.labels, enc.text_ids, enc.code_ids) == (
            s.input_ids,
            s.labels,
            s.text_ids,
            s.code_ids,
        )
        assert enc.assistant_start == s.assistant_span[0] and len(enc.input_ids) - 1 == s.assistant_span[1]


def test_plain_views_tokenize_as_upstream():
    cfg = ViewConfig(plain=True, predictors=2)
    report = EncodeReport()
    for i, e in enumerate(examples()):
        enc, s = encode(e, i, tokenizer(), cfg, report), upstream_sample(e, cfg)
        assert (enc.input_ids, enc.text_ids, enc.code_ids) == (s.input_ids, s.text_ids, s.code_ids)


def test_multi_step_span_ends_at_end_of_turn():
    """A Qwen-style template ('<|im_end|>\\n'): text follows the end-of-turn token of every message."""
    t = load_tokenizer("llmjepa/tiny-llama")
    t.chat_template = t.chat_template.replace("'<|eot_id|>' }}", "'<|eot_id|>\\n' }}")
    cfg = ViewConfig(num_prediction_steps=2, predictors=1)
    for i, e in enumerate(examples()[:4]):
        enc = encode(e, i, t, cfg, EncodeReport())
        ids = tok(t.apply_chat_template(e.messages, tokenize=False))
        labels = window_labels(ids, tok(e.messages[-1]["content"] + t.eos_token))
        trained = [j for j, v in enumerate(labels) if v != up.IGNORE]
        assert ids == enc.input_ids and trained[-1] == len(ids) - 2  # the template's "\\n" is last
        bounds = up.find_boundaries(ids, (trained[0], trained[-1]), separator_ids(), 2, -1, True)
        assert (enc.boundaries, enc.labels) == (bounds, labels)


# ---- gradients -------------------------------------------------------------------------------------
GRAD_CASES = [
    dict(predictors=3, last_token=-2),
    dict(predictors=1, last_token=-1, additive_mask=True),
    dict(num_prediction_steps=3, predictors=2, last_token=-2, localized_masks=True),
    dict(num_prediction_steps=1, predictors=1, last_token=-1, localized_masks=True),
]


def parameter_grads(loss: torch.Tensor) -> torch.Tensor:
    m = model()
    m.zero_grad(set_to_none=True)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
    m.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("fields", GRAD_CASES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_gradients(fields):
    cfg = ViewConfig(**fields)
    _, plan, lm, pred, target = run_ours(cfg, grad=True)
    terms, _ = jepa_pair_losses(pred, target, "cosine")
    ours = parameter_grads(GAMMA * lm + LBD * terms.sum() / plan.n_pairs)
    theirs_out = run_upstream(cfg, grad=True)
    jepa = up.jepa_loss(theirs_out.pred, theirs_out.target, "cosine", multi_step=cfg.multi_step)
    theirs = parameter_grads(GAMMA * theirs_out.lm_loss + LBD * jepa)
    assert torch.isfinite(theirs).all()
    assert ours.shape == theirs.shape
    assert rel_err(ours, theirs) < 1e-5
