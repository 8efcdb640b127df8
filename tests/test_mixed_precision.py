"""Mixed precision on the fast path: --bf16 / --fp16 over float32 weights (autocast).

Under autocast the projections come out in the autocast dtype, but the rotary embedding multiplies q and
k by float32 cos/sin and promotes them back to float32: hf_attention brings q, k and v to one dtype
before any backend runs (`attention_input_dtype`), and the collator builds the tile lists of the dtype
the kernels then see (`fast.kernel_dtype`). Checked here against a float64 reference on fresh random
examples: the PyTorch attention form under bf16 autocast (the interpreter's tl.dot is wrong for bf16),
the Triton kernels under the interpreter with fp16 autocast, and `llmjepa-train --impl fast --bf16`.
"""

from __future__ import annotations

import copy
import importlib
import os
import random

import pytest
import torch

from llmjepa.commands.run import build_run
from llmjepa.commands.train import main, parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.execution.fast import AttentionShape, collator_attention_shape, kernel_dtype, kernel_tiles, run_fast
from llmjepa.execution.reference import run_reference
from llmjepa.model import ModelSpec, load_model, load_tokenizer
from llmjepa.views import ViewConfig, build_plan, encode_all
from llmjepa_kernels import hf_attention, torch_attention

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
NOTE = f"seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED})"
# ||out - ref|| / ||ref|| against float64; the whole model runs in the 16-bit dtype (8 bits of mantissa
# for bf16, 11 for fp16), so a few roundings per layer add up past a single op's
BF16_TOLERANCE = 1e-2
FP16_TOLERANCE = 2e-3
CFG = ViewConfig(predictors=1, num_prediction_steps=2)


@pytest.fixture(scope="module")
def models_and_plan():
    from llmjepa.views.examples import load_examples

    hf_attention.register()
    rng = random.Random(SEED)
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    reference = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float64", seed=rng.randrange(2**31)), tokenizer)
    examples = rng.sample(load_examples(str(sample_data_path("train"))), 3)
    encoded, _ = encode_all(examples, tokenizer, CFG)
    plan = build_plan(encoded, CFG, tokenizer.convert_tokens_to_ids(["<|predictor_1|>"]))
    return tokenizer, reference, plan


def losses_and_grads(model: torch.nn.Module, executed) -> list[torch.Tensor]:
    """ce_sum, predictor and target embeddings, then every parameter's gradient of ce_sum + sum(1 - cos)."""
    pred, target = executed.hidden[executed.pred_index], executed.hidden[executed.target_index]
    cos = torch.nn.functional.cosine_similarity(pred.float(), target.float(), dim=-1)
    model.zero_grad()
    (executed.ce_sum + (1 - cos).sum()).backward()
    grads = [p.grad.detach().double() for p in model.parameters() if p.grad is not None]
    return [executed.ce_sum.detach().double(), pred.detach().double(), target.detach().double()] + grads


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(x).all(), NOTE
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def mixed_run(model: torch.nn.Module, executor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Forward under CPU autocast (what accelerate wraps around the model's forward), backward outside."""
    with torch.autocast("cpu", dtype):
        executed = executor(model)
    return losses_and_grads(model, executed)


def worst_errors(values: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    assert len(values) == len(ref), NOTE
    return {
        "ce_sum": rel(values[0], ref[0]),
        "embeddings": max(rel(values[1], ref[1]), rel(values[2], ref[2])),
        "gradients": max(rel(g, r) for g, r in zip(values[3:], ref[3:])),
    }


def reference64(tokenizer, reference, plan) -> list[torch.Tensor]:
    return losses_and_grads(reference, run_reference(reference, plan, tokenizer.pad_token_id))


def test_bf16_autocast_pytorch_form_matches_float64(models_and_plan) -> None:
    """Fast path (PyTorch attention form) and reference executor under bf16 autocast over float32
    weights: both within bf16 tolerance of float64, and of each other."""
    tokenizer, reference, plan = models_and_plan
    ref = reference64(tokenizer, reference, plan)
    reference32 = copy.deepcopy(reference).float()
    fast32 = copy.deepcopy(reference32)
    fast32.set_attn_implementation(hf_attention.ATTENTION_NAME)
    fast = mixed_run(fast32, lambda m: run_fast(m, plan, attention="torch"), torch.bfloat16)
    slow = mixed_run(reference32, lambda m: run_reference(m, plan, tokenizer.pad_token_id), torch.bfloat16)
    errors = {"fast": worst_errors(fast, ref), "reference": worst_errors(slow, ref)}
    print(f"bf16 autocast vs float64 ({NOTE}): {errors}")
    for executor, found in errors.items():
        for name, err in found.items():
            assert err < BF16_TOLERANCE, f"{executor} {name}: rel err {err:.2e}; {NOTE}"
    between = worst_errors(fast, slow)
    assert all(err < BF16_TOLERANCE for err in between.values()), f"fast vs reference {between}; {NOTE}"
    assert all(g.abs().sum() > 0 for g in fast[3:5]), NOTE  # the embeddings' gradients reached the model


def test_fp16_autocast_triton_kernels_match_float64(models_and_plan) -> None:
    """The Triton kernels (interpreter) under fp16 autocast over float32 weights: q, k and v reach them
    as float16, and the losses, embeddings and gradients are within fp16 tolerance of float64."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton kernel needs CUDA or TRITON_INTERPRET=1 (set by conftest without CUDA)")
    tokenizer, reference, plan = models_and_plan
    ref = reference64(tokenizer, reference, plan)
    fast32 = copy.deepcopy(reference).float()
    fast32.set_attn_implementation(hf_attention.ATTENTION_NAME)
    kernel = importlib.import_module("llmjepa_kernels.block_causal_attention")  # the package's name is the function
    seen = []

    def recording(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return kernel.block_causal_attention(q, k, v, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(hf_attention, "block_causal_attention", recording)
    try:
        fast = mixed_run(fast32, lambda m: run_fast(m, plan, attention="triton"), torch.float16)
    finally:
        mp.undo()
    assert seen and set(seen) == {(torch.float16,) * 3}, seen
    errors = worst_errors(fast, ref)
    print(f"fp16 autocast, Triton interpreter, vs float64 ({NOTE}): {errors}")
    for name, err in errors.items():
        assert err < FP16_TOLERANCE, f"{name}: rel err {err:.2e}; {NOTE}"


@pytest.mark.parametrize("backend", ["triton", "torch", "flex"])
def test_every_backend_gets_one_dtype(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    """q, k float32 (rotary) and v bfloat16 under autocast: every backend gets all three in bfloat16, and
    returns that dtype; float32 inputs of a module with 16-bit weights take the weights' dtype."""
    from llmjepa_kernels import flex_attention
    from llmjepa_kernels.block_layout import BlockCausalLayout

    seen = []

    def fake(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return q.clone()

    monkeypatch.setattr(hf_attention, "block_causal_attention", fake)
    monkeypatch.setattr(torch_attention, "torch_block_causal_attention", fake)
    monkeypatch.setattr(flex_attention, "flex_block_causal_attention", fake)
    t = 8
    layout = BlockCausalLayout(torch.zeros(t, dtype=torch.int32), torch.full((t,), -1, dtype=torch.int32),
                               torch.zeros(t, dtype=torch.int32))  # fmt: skip
    q, k = torch.randn(1, 4, t, 16), torch.randn(1, 2, t, 16)
    v = torch.randn(1, 2, t, 16, dtype=torch.bfloat16)
    module = torch.nn.Linear(16, 16)

    def forward(module, q, k, v):
        out, _ = hf_attention.block_causal_attention_forward(
            module, q, k, v, None, block_causal_layout=layout, block_causal_backend=backend
        )
        return out

    with torch.autocast("cpu", torch.bfloat16):
        assert forward(module, q, k, v).dtype == torch.bfloat16
    with torch.autocast("cpu", torch.float16):
        assert forward(module, q, k, v.float()).dtype == torch.float16
    assert forward(module.bfloat16(), q, k, v.float()).dtype == torch.bfloat16  # fp32 inputs, bf16 weights
    assert forward(module.float(), q, k, v.float()).dtype == torch.float32
    assert forward(module.double(), q.double(), k.double(), v.double()).dtype == torch.float64
    wanted = [torch.bfloat16, torch.float16, torch.bfloat16, torch.float32, torch.float64]
    assert seen == [(dtype,) * 3 for dtype in wanted]


def test_kernel_dtype_rule() -> None:
    """One rule: the autocast dtype under mixed precision, else the weights' (float64 is never cast)."""
    assert kernel_dtype(torch.float32, torch.bfloat16) == torch.bfloat16
    assert kernel_dtype(torch.float32, torch.float16) == torch.float16
    assert kernel_dtype(torch.bfloat16, None) == torch.bfloat16
    assert kernel_dtype(torch.float32, None) == torch.float32
    assert kernel_dtype(torch.float64, torch.bfloat16) == torch.float64


@pytest.mark.parametrize("flag,dtype", [("--bf16", torch.bfloat16), ("--fp16", torch.float16)])
def test_collator_builds_the_tile_lists_of_the_autocast_dtype(
    tmp_path, monkeypatch: pytest.MonkeyPatch, flag: str, dtype: torch.dtype
) -> None:
    """llmjepa-train --bf16/--fp16 (float32 weights) tells the collator the autocast dtype, and with a GPU's
    tile shapes (which differ between float32 and 16-bit) the lists it builds are the 16-bit kernel's."""
    argv = ["--impl", "fast", flag, "--attention_backend", "triton", "--max_train_steps", "1"]
    argv += ["--batch_size", "2", "--output_dir", str(tmp_path)]
    trainer = build_run(parse_args(argv)).trainer
    model, collator = trainer.model, trainer.data_collator
    assert next(model.parameters()).dtype == torch.float32
    head_dim = model.config.head_dim
    assert collator.attention == AttentionShape(head_dim, dtype, "triton")
    assert collator_attention_shape(model, "flex", dtype) == AttentionShape(head_dim, dtype, "flex")

    kernel = importlib.import_module("llmjepa_kernels.block_causal_attention")
    monkeypatch.setattr(kernel, "interpreted", lambda: False)  # the GPU configs (no GPU needed to read them)
    config = kernel.default_config(head_dim, dtype)
    wanted = {("by_query", config.forward), ("by_key", config.dkdv), ("by_query", config.dq)}
    tiles = kernel_tiles(collator.attention)
    assert set(tiles) == {(direction, c.block_m, c.block_n) for direction, c in wanted}
    assert set(tiles) != set(kernel_tiles(AttentionShape(head_dim, torch.float32))), "fp32 and 16-bit tiles agree"
    encoded = trainer.train_dataset[:2]
    plan = collator(encoded)["plan"]
    assert set(plan.packed.layout.built_tiles()) == set(tiles)


def train_history(tmp_path, impl: str, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict], list, list]:
    """Two steps of llmjepa-train --bf16 (exit 0), with the dtypes that reached the attention and the
    autocast dtype run_fast asked its tile lists for."""
    from llmjepa import fast

    attention_dtypes, shape_dtypes = [], []
    inner_attention, inner_shape = torch_attention.torch_block_causal_attention, fast.tiled_attention_shape

    def attention(q, k, v, *args, **kwargs):
        attention_dtypes.append((q.dtype, k.dtype, v.dtype))
        return inner_attention(q, k, v, *args, **kwargs)

    def shape(model, backend, device, mixed=None):
        shape_dtypes.append(mixed)
        return inner_shape(model, backend, device, mixed)

    monkeypatch.setattr(torch_attention, "torch_block_causal_attention", attention)
    monkeypatch.setattr(fast, "tiled_attention_shape", shape)
    out = tmp_path / impl
    argv = ["--impl", impl, "--bf16", "--max_train_steps", "2", "--batch_size", "2", "--learning_rate", "1e-3"]
    argv += ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2", "--dropout", "0"]
    argv += ["--output_dir", str(out)]
    assert main(argv) == 0
    import json

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return history, attention_dtypes, shape_dtypes


def test_llmjepa_train_fast_bf16_runs_and_follows_the_reference(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`llmjepa-train --impl fast --bf16` over float32 weights (the CUDA default's mixed precision) exits
    0 on the CPU, its attention runs in bfloat16, run_fast asks for the bf16 kernels' lists, and its two
    steps' losses are within bf16 tolerance of `--impl reference --bf16`."""
    fast, attention_dtypes, shape_dtypes = train_history(tmp_path, "fast", monkeypatch)
    assert attention_dtypes and set(attention_dtypes) == {(torch.bfloat16,) * 3}, set(attention_dtypes)
    assert shape_dtypes and set(shape_dtypes) == {torch.bfloat16}, set(shape_dtypes)
    reference, _, _ = train_history(tmp_path, "reference", monkeypatch)
    assert len(fast) == len(reference) == 2
    for a, b in zip(fast, reference):
        for key in ("loss", "lm_loss", "jepa_loss"):
            err = abs(a[key] - b[key]) / abs(b[key])
            print(f"step {a['step']} {key}: fast {a[key]:.6f} reference {b[key]:.6f} rel {err:.1e}")
            assert err < BF16_TOLERANCE, (a["step"], key, a[key], b[key])
