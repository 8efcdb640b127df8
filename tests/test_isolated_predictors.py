"""--isolated_predictors: each group of K predictors is a side branch of view 1 after its boundary.

Checked four ways: the plan's rows and the packed stream (view 1 + N*K tokens with --no_localized_masks,
plus the localized target segments with localized masks; no stream token but a group's own sees it);
the embeddings and loss of run_reference and run_fast against a computation written here from scratch
(each branch and each target segment built by hand and run through the plain HF model); fast equals
reference over training steps, and the fast step runs the regular step's tokens plus pairs*K; view-based
mode (N = 0) and --regular refuse the flag with one line.
"""

import copy
import os
import random
from pathlib import Path

import pytest
import torch
from test_fast_path import STEPS, TOLERANCE, assert_same_steps, history

from llmjepa.commands.train import main
from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.execution.fast import run_fast
from llmjepa.execution.reference import run_reference
from llmjepa.model import ModelSpec, load_model, load_tokenizer
from llmjepa.views.builders import build_plan
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import load_examples
from llmjepa.views.pack import pack_plan
from llmjepa.views.plan import IGNORE_INDEX, check_row

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.randrange(2**31)))


def predictor_ids(tokenizer, k: int) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])


def isolated(n_steps: int, k: int, localized: bool) -> ViewConfig:
    return ViewConfig(num_prediction_steps=n_steps, predictors=k, localized_masks=localized, isolated_predictors=True)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_MODEL_NAME)


@pytest.fixture(scope="module")
def examples():
    return load_examples(str(sample_data_path("train")))


# ---- the plan and the stream ----------------------------------------------------------------------
@pytest.mark.parametrize("localized", [True, False], ids=["localized", "not-localized"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("n_steps", [1, 2, 3])
def test_stream_holds_view_1_plus_n_k_tokens(tokenizer, examples, n_steps: int, k: int, localized: bool) -> None:
    cfg = isolated(n_steps, k, localized)
    batch, _ = encode_all(examples[:6], tokenizer, cfg)
    plan = build_plan(batch, cfg, predictor_ids(tokenizer, k))
    stream = pack_plan(plan)
    view1 = sum(len(e.input_ids) for e in batch)
    groups = sum(len(e.boundaries) - 1 for e in batch)
    assert groups == plan.n_pairs and max(len(e.boundaries) - 1 for e in batch) == n_steps
    # localized targets: each example's segments (b_0, b_P] once, segment 0 being view 1's own prefix
    segments = sum(e.boundaries[-1] - e.boundaries[0] for e in batch) if localized else 0
    assert stream.n_tokens == view1 + groups * k + segments

    by_row = {}
    for (pr, pi), (tr, ti) in plan.pairs:
        by_row.setdefault(plan.rows[pr].example, []).append(((pr, pi), (tr, ti)))
    for b, enc in enumerate(batch):
        for j, ((pr, pi), (tr, ti)) in enumerate(by_row[b]):
            row, cut = plan.rows[pr], enc.boundaries[j] + 1
            check_row(row)
            # the branch: view 1 up to b_j, then the K predictors at the positions after b_j, causal
            assert row.input_ids == enc.input_ids[:cut] + predictor_ids(tokenizer, k)
            assert row.position_ids == list(range(cut + k)) and row.causal_start == [0] * (cut + k)
            assert row.prefix_source == (b, cut) and pi == cut + k - 1
            if localized:
                assert plan.rows[tr].view == "target" and ti == enc.boundaries[j + 1]
            else:
                assert (tr, ti) == (b, enc.boundaries[j + 1])  # view 1 itself
    check_isolation(plan, stream, k)


def check_isolation(plan, stream, k: int) -> None:
    """From the stream alone (its ids, positions, ranges and pair indices): a group's K tokens see one
    contiguous run of stream tokens that holds view 1's [0, b_j] (same ids, positions 0..b_j) and the
    group's earlier tokens, and no token outside the group sees any of them."""
    a, e, s = stream.shared_start.tolist(), stream.shared_end.tolist(), stream.causal_start.tolist()
    ids, positions = stream.input_ids.tolist(), stream.position_ids.tolist()
    seen_by = [set(range(a[i], e[i] + 1)) | set(range(s[i], i + 1)) for i in range(len(a))]
    for p, ((pr, _), _) in enumerate(plan.pairs):
        row = plan.rows[pr]
        cut, last = len(row) - k, int(stream.pred_index[p])
        group = list(range(last - k + 1, last + 1))
        assert [ids[w] for w in group] == row.input_ids[cut:] and [positions[w] for w in group] == list(
            range(cut, cut + k)
        )
        prefix = sorted(seen_by[group[0]] - {group[0]})
        assert prefix == list(range(a[group[0]], a[group[0]] + cut))
        assert [ids[w] for w in prefix] == row.input_ids[:cut] and [positions[w] for w in prefix] == list(range(cut))
        for i, w in enumerate(group):
            assert seen_by[w] == set(prefix) | set(group[: i + 1])
        assert not any(seen_by[q] & set(group) for q in range(len(a)) if q not in group)


def test_no_predictors_reads_view_1(tokenizer, examples) -> None:
    """K = 0: nothing to branch; the predictor embedding is view 1's own state at b_k."""
    cfg = isolated(2, 0, localized=False)
    batch, _ = encode_all(examples[:2], tokenizer, cfg)
    plan = build_plan(batch, cfg, [])
    assert len(plan.rows) == 2
    assert plan.pairs == [((b, e.boundaries[j]), (b, e.boundaries[j + 1])) for b, e in enumerate(batch) for j in (0, 1)]


# ---- against a computation written from scratch -----------------------------------------------------
@pytest.fixture(scope="module")
def models(tokenizer):
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    reference = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float64", seed=11), tokenizer)
    fast = copy.deepcopy(reference)
    fast.set_attn_implementation(hf_attention.ATTENTION_NAME)
    return reference, fast


def last_hidden(model, ids: list[int], first_position: int = 0) -> torch.Tensor:
    """The plain HF model on one sequence, causal attention, positions from first_position."""
    positions = torch.arange(first_position, first_position + len(ids))[None]
    out = model(input_ids=torch.tensor([ids]), position_ids=positions, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1][0]


def by_hand(model, batch, cfg: ViewConfig, pred_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view 1's cross-entropy sum, predictor embeddings, target embeddings) in the plan's pair order."""
    ce, preds, targets = torch.zeros((), dtype=torch.float64), [], []
    for enc in batch:
        out = model(input_ids=torch.tensor([enc.input_ids]), output_hidden_states=True, use_cache=False)
        labels = torch.tensor(enc.labels[1:])
        keep = labels != IGNORE_INDEX
        ce = ce + torch.nn.functional.cross_entropy(out.logits[0, :-1][keep].double(), labels[keep], reduction="sum")
        view1 = out.hidden_states[-1][0]
        bounds = enc.boundaries
        for j in range(len(bounds) - 1):
            preds.append(last_hidden(model, enc.input_ids[: bounds[j] + 1] + pred_ids)[-1])
            if cfg.localized_masks:  # segment j + 1 = (b_j, b_{j+1}] alone, at view 1's positions
                targets.append(last_hidden(model, enc.input_ids[bounds[j] + 1 : bounds[j + 1] + 1], bounds[j] + 1)[-1])
            else:
                targets.append(view1[bounds[j + 1]])
    return ce, torch.stack(preds), torch.stack(targets)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    assert torch.isfinite(x).all()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


@pytest.mark.parametrize(
    "n_steps,k,localized", [(1, 1, True), (2, 1, False), (2, 2, True), (3, 2, False), (3, 1, True), (1, 2, False)]
)
def test_executors_equal_the_computation_by_hand(tokenizer, examples, models, n_steps, k, localized) -> None:
    reference, fast = models
    rng = random.Random(SEED + 100 * n_steps + 10 * k + localized)
    picked = rng.sample(examples, 3)
    print(f"seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED}): examples {[e.source for e in picked]}")
    cfg = isolated(n_steps, k, localized)
    batch, _ = encode_all(picked, tokenizer, cfg)
    pred_ids = predictor_ids(tokenizer, k)
    plan = build_plan(batch, cfg, pred_ids)
    with torch.no_grad():
        want = by_hand(reference, batch, cfg, pred_ids)
        for name, executed in (
            ("reference", run_reference(reference, plan, tokenizer.pad_token_id)),
            ("fast", run_fast(fast, plan)),
        ):
            got = (executed.ce_sum, executed.hidden[executed.pred_index], executed.hidden[executed.target_index])
            for what, x, r in zip(("ce_sum", "predictor embeddings", "target embeddings"), got, want):
                # float64 weights, but Llama's RMSNorm computes in float32: float32-level agreement
                print(f"{name}: {what} rel err {rel(x, r):.2e}")
                assert rel(x, r) < 1e-6, f"{name}: {what} rel err {rel(x, r):.2e}"


@pytest.mark.parametrize("localized", [True, False], ids=["localized", "not-localized"])
@pytest.mark.interpreter
def test_triton_kernel_in_float32(tokenizer, examples, models, localized: bool) -> None:
    """The path CUDA takes: run_fast with the Triton attention (CPU interpreter), float32, one example,
    N = 2, K = 2: embeddings, loss and gradients against the by-hand computation and the reference."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1 (set by conftest without CUDA)")
    reference, fast = (copy.deepcopy(m).float() for m in models)
    cfg = isolated(2, 2, localized)
    batch, _ = encode_all(examples[:1], tokenizer, cfg)
    pred_ids = predictor_ids(tokenizer, 2)
    plan = build_plan(batch, cfg, pred_ids)
    with torch.no_grad():
        want = by_hand(reference, batch, cfg, pred_ids)
    results = {}
    for name, model, run in (
        ("reference", reference, lambda m: run_reference(m, plan, tokenizer.pad_token_id)),
        ("triton", fast, lambda m: run_fast(m, plan, attention="triton")),
    ):
        executed = run(model)
        pred, target = executed.hidden[executed.pred_index], executed.hidden[executed.target_index]
        got = (executed.ce_sum, pred, target)
        for what, x, r in zip(("ce_sum", "predictor embeddings", "target embeddings"), got, want):
            assert rel(x, r) < 1e-5, f"{name}: {what} rel err {rel(x, r):.2e}"
        loss = executed.ce_sum + (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1)).sum()
        model.zero_grad()
        loss.backward()
        results[name] = [p.grad.double() for p in model.parameters() if p.grad is not None]
    worst = max(rel(g, r) for g, r in zip(results["triton"], results["reference"]))
    print(f"gradient rel err (triton vs reference, float32) {worst:.2e}")
    assert len(results["triton"]) == len(results["reference"]) and worst < 1e-5


# ---- training ---------------------------------------------------------------------------------------
ISOLATED_MODES = {
    "N=2, K=1, not localized": ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2"]
    + ["--no_localized_masks", "--isolated_predictors"],
    "N=3, K=2, localized": [
        "--lbd",
        "0.5",
        "--predictors",
        "2",
        "--num_prediction_steps",
        "3",
        "--isolated_predictors",
    ],
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isolated")


@pytest.mark.parametrize("mode", list(ISOLATED_MODES))
def test_fast_equals_reference_in_training(scratch: Path, mode: str) -> None:
    flags = tuple(ISOLATED_MODES[mode])
    fast, reference = history(scratch, "fast", flags), history(scratch, "reference", flags)
    assert_same_steps(fast, reference, TOLERANCE, f"{mode}: fast vs reference")
    assert fast[-1]["lm_loss"] < fast[0]["lm_loss"] - 0.3 and all(r["pairs"] > 0 for r in fast)
    if "--no_localized_masks" in flags:
        # the regular step's tokens plus K per pair, nothing else
        regular = history(scratch, "fast", ("--regular",))
        assert len(regular) == STEPS
        for x, y in zip(fast, regular):
            assert x["label_tokens"] == y["label_tokens"]
            assert x["tokens_run"] == y["tokens_run"] + x["pairs"] * 1, (x["step"], x["tokens_run"], y["tokens_run"])


@pytest.mark.parametrize(
    "flags", [["--isolated_predictors", "--predictors", "1"], ["--regular", "--isolated_predictors"]], ids=str
)
def test_refused_without_steps(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str]) -> None:
    assert main([*flags, "--max_train_steps", "1", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("llmjepa-train: error: ") and "--isolated_predictors" in err


def test_view_config_refuses_without_steps() -> None:
    with pytest.raises(Exception, match="--isolated_predictors needs --num_prediction_steps"):
        ViewConfig(predictors=1, isolated_predictors=True)
