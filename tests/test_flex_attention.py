"""The FlexAttention backend (llmjepa_kernels/flex_attention.py) against float64 dense-mask attention.

What runs where (torch 2.13): the compiled flex kernel runs forward on the CPU (Inductor's C++
template, which visits the BlockMask's tiles) and forward and backward on CUDA; torch refuses a flex
backward on the CPU. So on the CPU:
- the BlockMask's tile lists are checked tile by tile against the dense mask (partial, full, skipped);
- the compiled forward is checked against float64 SDPA with the dense mask (no grad);
- gradients go through torch's eager flex_attention (its dense reference implementation, which
  applies the same mask_mod to every pair) with torch's CPU guard lifted in the test: this checks the
  mask_mod and the layout plumbing in backward, not the compiled kernel's tile visits;
- a whole model: run_fast with attention="flex" against run_reference in float64 (eager, gradients
  too) and in float32 (compiled, forward).
On CUDA (skipped here without one): compiled forward and backward, and training steps of
--attention_backend flex against --impl reference.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex
import torch.nn.functional as F

from llmjepa_kernels import flex_attention
from llmjepa_kernels.block_layout import BlockCausalLayout
from llmjepa_kernels.flex_attention import FLEX_BLOCK, flex_block_causal_attention, flex_block_mask

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
CUDA = torch.cuda.is_available()


def note(case: int) -> str:
    return f"case {case}, seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED})"


def random_ranges(rng: random.Random, length: int) -> tuple[list[int], list[int], list[int]]:
    """Examples back to back, as the fast path packs them: view 1 causal, a predictor view sharing a
    prefix of it (its shared range) and causal from its own start, then target segments."""
    a: list[int] = []
    b: list[int] = []
    s: list[int] = []
    while len(s) < length:
        view = len(s)
        view_len = rng.randint(1, 150)
        for _ in range(view_len):
            a.append(0), b.append(-1), s.append(view)
        prefix = rng.randint(0, view_len)
        start = len(s)
        for _ in range(rng.randint(1, 60)):
            a.append(view), b.append(view + prefix - 1), s.append(start)
        for _ in range(rng.randint(0, 3)):
            start = len(s)
            for _ in range(rng.randint(1, 40)):
                a.append(0), b.append(-1), s.append(start)
    return a[:length], b[:length], s[:length]


def random_layout(case: int, length: int | None = None) -> BlockCausalLayout:
    rng = random.Random(SEED + case)
    a, b, s = random_ranges(rng, length or rng.randint(1, 700))
    return BlockCausalLayout(*(torch.tensor(x, dtype=torch.int32) for x in (a, b, s)))


def dense_visible(layout: BlockCausalLayout) -> torch.Tensor:
    a, b, s = (x.long()[:, None] for x in (layout.shared_start, layout.shared_end, layout.causal_start))
    i = torch.arange(layout.num_tokens)[:, None]
    j = torch.arange(layout.num_tokens)[None, :]
    return ((j >= a) & (j <= b)) | ((j >= s) & (j <= i))


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout, scale: float):
    """The float64 reference: SDPA's math over the whole (T, T) boolean mask, K/V repeated per group."""
    groups = q.shape[1] // k.shape[1]
    q, k, v = (x.double().transpose(0, 1) for x in (q, k, v))
    k, v = (x.repeat_interleave(groups, dim=0) for x in (k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_visible(layout), scale=scale)
    return out.transpose(0, 1)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(x).all()
    return float((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))


def tile_sets(mask, full: bool) -> list[set[int]]:
    count = (mask.full_kv_num_blocks if full else mask.kv_num_blocks)[0, 0]
    index = (mask.full_kv_indices if full else mask.kv_indices)[0, 0]
    return [set(index[row, : int(count[row])].tolist()) for row in range(count.shape[0])]


@pytest.mark.parametrize("case", range(8))
def test_block_mask_tiles_are_the_dense_masks(case: int) -> None:
    """Every tile some pair sees is listed once: as full where every (query, key) of it is visible and
    inside the stream (no mask_mod then), else as partial; tiles no pair sees are not listed."""
    layout = random_layout(case)
    mask = flex_block_mask(layout)
    assert mask.shape[-2:] == (layout.num_tokens, layout.num_tokens) and mask.BLOCK_SIZE == (FLEX_BLOCK, FLEX_BLOCK)
    visible = dense_visible(layout)
    t = layout.num_tokens
    partial, full = tile_sets(mask, False), tile_sets(mask, True)
    for row in range(-(-t // FLEX_BLOCK)):
        q = slice(row * FLEX_BLOCK, (row + 1) * FLEX_BLOCK)
        for col in range(-(-t // FLEX_BLOCK)):
            tile = visible[q, col * FLEX_BLOCK : (col + 1) * FLEX_BLOCK]
            whole = tile.shape == (FLEX_BLOCK, FLEX_BLOCK)
            where = f"tile ({row}, {col}); {note(case)}"
            assert (col in full[row]) == bool(whole and tile.all()), where
            assert (col in partial[row]) == bool(tile.any() and not (whole and tile.all())), where
    # the mask_mod is the range test, on every pair of the stream
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    zero = torch.zeros_like(i)
    assert torch.equal(mask.mask_mod(zero, zero, i, j), visible), note(case)


def test_block_mask_is_built_once_per_layout() -> None:
    layout = random_layout(0, 300)
    assert flex_block_mask(layout) is flex_block_mask(layout)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 2)], ids=["MHA", "GQA", "GQA, 6 query heads"])
def test_compiled_forward_matches_float64(heads: tuple[int, int]) -> None:
    """The compiled kernel (CPU: Inductor's flex template, which visits the BlockMask's tiles)."""
    gen = torch.Generator().manual_seed(SEED)
    for case, length in enumerate((333, 517)):
        layout = random_layout(100 + case, length)
        q = torch.randn(length, heads[0], 64, generator=gen)
        k, v = (torch.randn(length, heads[1], 64, generator=gen) for _ in range(2))
        with torch.no_grad():
            out = flex_block_causal_attention(q, k, v, layout, 0.125)
        ref = dense_attention(q, k, v, layout, 0.125)
        assert rel_err(out, ref) < 1e-5, (heads, rel_err(out, ref), note(100 + case))


@pytest.fixture
def cpu_flex_backward(monkeypatch: pytest.MonkeyPatch):
    """Eager flex_attention (torch's dense reference implementation) with torch's CPU backward guard
    lifted, in place of the compiled kernel: for gradient checks of the mask_mod on the CPU."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(flex_attention, "compiled_flex_attention", lambda: torch_flex.flex_attention)
    monkeypatch.setattr(flex_attention, "_refuse_cpu_backward", lambda *tensors: None)  # our own guard


@pytest.mark.parametrize("case", range(4))
def test_gradients_match_float64(case: int, cpu_flex_backward) -> None:
    layout = random_layout(200 + case)
    t = layout.num_tokens
    gen = torch.Generator().manual_seed(SEED + case)
    q = torch.randn(t, 4, 32, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(t, 2, 32, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.randn(t, 4, 32, generator=gen, dtype=torch.float64)
    out = flex_block_causal_attention(q, k, v, layout, 0.2)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = dense_attention(q2, k2, v2, layout, 0.2)
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q2, k2, v2))
    assert rel_err(out, ref) < 1e-12, note(200 + case)
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) < 1e-12, f"d{name}: {rel_err(g, r):.2e}; {note(200 + case)}"


def test_cpu_backward_is_refused_with_a_clear_error() -> None:
    layout = random_layout(300, 64)
    q = torch.randn(64, 2, 16, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no backward on the CPU"):
        flex_block_causal_attention(q, q.detach(), q.detach(), layout, None)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device: the compiled flex backward runs on CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_and_backward(dtype: torch.dtype) -> None:
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for case in range(3):
        layout = random_layout(400 + case).to("cuda")
        t = layout.num_tokens
        gen = torch.Generator(device="cuda").manual_seed(SEED + case)
        q = torch.randn(t, 8, 64, generator=gen, device="cuda").to(dtype).requires_grad_()
        k, v = (torch.randn(t, 2, 64, generator=gen, device="cuda").to(dtype).requires_grad_() for _ in range(2))
        weight = torch.randn(t, 8, 64, generator=gen, device="cuda")
        out = flex_block_causal_attention(q, k, v, layout, 0.125)
        grads = torch.autograd.grad((out.float() * weight).sum(), (q, k, v))
        q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = dense_attention(q2, k2, v2, layout, 0.125)
        ref_grads = torch.autograd.grad((ref * weight.double()).sum(), (q2, k2, v2))
        assert rel_err(out, ref) < tolerance, note(400 + case)
        for name, g, r in zip("qkv", grads, ref_grads):
            assert rel_err(g, r) < tolerance, f"d{name} {dtype}: {rel_err(g, r):.2e}; {note(400 + case)}"


# ---- a whole model ---------------------------------------------------------------------------------------
def plan_and_models(mode: dict, dtype: str):
    from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
    from llmjepa.model import ModelSpec, load_model, load_tokenizer
    from llmjepa.views.builders import build_plan
    from llmjepa.views.encoding import ViewConfig, encode_all
    from llmjepa.views.examples import load_examples
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    reference = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype=dtype, seed=5), tokenizer)
    fast = copy.deepcopy(reference)
    fast.set_attn_implementation(hf_attention.ATTENTION_NAME)
    cfg = ViewConfig(**mode)
    encoded, _ = encode_all(load_examples(str(sample_data_path("train")))[:3], tokenizer, cfg)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, cfg.predictors + 1)])
    return build_plan(encoded, cfg, predictor_ids), reference, fast, tokenizer.pad_token_id


def outputs(executed) -> list[torch.Tensor]:
    return [executed.ce_sum, executed.hidden[executed.pred_index], executed.hidden[executed.target_index]]


MODES = {
    "N=2 localized": dict(predictors=1, num_prediction_steps=2),
    "additive mask": dict(predictors=1, additive_mask=True),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_run_fast_with_flex_equals_reference_in_float64(mode: str, cpu_flex_backward) -> None:
    """Losses, embeddings and every parameter gradient, through eager flex (the dense reference)."""
    from llmjepa.execution.fast import run_fast
    from llmjepa.execution.reference import run_reference

    plan, reference, fast, pad = plan_and_models(MODES[mode], "float64")
    grads = {}
    values = {}
    for name, model, run in (("ref", reference, lambda m: run_reference(m, plan, pad)), ("flex", fast, None)):
        executed = run(model) if run else run_fast(model, plan, attention="flex")
        values[name] = outputs(executed)
        pred, target = values[name][1], values[name][2]
        total = executed.ce_sum + (1 - F.cosine_similarity(pred, target, dim=-1)).sum()
        model.zero_grad()
        total.backward()
        grads[name] = [p.grad for p in model.parameters()]
    # the reference's cross entropy runs in float32 (token_cross_entropy_sum), the fast head's in float64
    for what, x, r, bound in zip(("ce_sum", "pred", "target"), values["flex"], values["ref"], (1e-6, 1e-12, 1e-12)):
        assert rel_err(x.detach(), r.detach()) < bound, f"{mode}: {what} {rel_err(x.detach(), r.detach()):.2e}"
    # Llama's RMSNorm computes in float32 (tests/test_fast_pack.py says so): float32-level gradients
    worst = max(rel_err(g, r) for g, r in zip(grads["flex"], grads["ref"]))
    assert worst < 1e-6, f"{mode}: gradient rel err {worst:.2e}"


def test_run_fast_with_compiled_flex_forward() -> None:
    """The compiled kernel in a whole model (forward, float32, CPU)."""
    from llmjepa.execution.fast import run_fast
    from llmjepa.execution.reference import run_reference

    plan, reference, fast, pad = plan_and_models(MODES["N=2 localized"], "float32")
    with torch.no_grad():
        ref = outputs(run_reference(reference, plan, pad))
        ours = outputs(run_fast(fast, plan, attention="flex"))
    for x, r in zip(ours, ref):
        assert rel_err(x, r) < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="FlexAttention has no backward on the CPU (torch 2.13): training needs CUDA")
def test_training_with_flex_equals_reference(tmp_path) -> None:
    from llmjepa import parity
    from llmjepa.commands.run import train
    from llmjepa.commands.train import parse_args

    base = ["--batch_size", "2", "--grad_accum", "2", "--learning_rate", "1e-3", "--dropout", "0", "--dtype", "float32"]
    jepa = ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2", "--max_train_steps", "5"]
    runs = {}
    for name, flags in (("flex", ["--impl", "fast", "--attention_backend", "flex"]), ("ref", ["--impl", "reference"])):
        runs[name] = train(parse_args([*base, *jepa, *flags, "--output_dir", str(tmp_path / name)])).history
    for x, y in zip(runs["flex"], runs["ref"]):
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            assert parity.rel_diff(x[key], y[key]) < 1e-4, (x["step"], key, x[key], y[key])


def test_flag_refuses_flex_training_on_the_cpu(capsys: pytest.CaptureFixture) -> None:
    from llmjepa.commands.train import main, parse_args

    if CUDA:
        assert parse_args(["--impl", "fast", "--attention_backend", "flex"]).attention_backend == "flex"
        return
    assert parse_args(["--impl", "fast"]).attention_backend == "torch"
    assert main(["--impl", "fast", "--attention_backend", "flex", "--max_train_steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "llmjepa-train: error: --attention_backend flex trains on CUDA only: torch's FlexAttention has no "
        "backward on the CPU"
    )
    assert main(["--impl", "reference", "--attention_backend", "torch"]) == 2
    assert "applies to --impl fast" in capsys.readouterr().err
