"""Microbenchmarks of the Triton kernels against their plain PyTorch forms, forward + backward (pytest-benchmark).

    pytest bench/bench_kernels.py --benchmark-only                                 # CUDA: the real timings
    TRITON_INTERPRET=1 pytest bench/bench_kernels.py --benchmark-only -q           # CPU: exercises the code only

- cosine loss: llmjepa_kernels.cosine_jepa_loss (gather, norms, dot in one kernel) vs gathering the rows,
  F.cosine_similarity, 1 - cos, sum; hidden (T, D) with n (predictor, target) pairs.
- attention: block_causal_attention vs SDPA with the equivalent dense additive mask (bench_attention's
  sdpa_dense), on the JEPA-like packed layout of bench_attention (layouts.jepa_layout).

CUDA: bf16, attention T 4096 and 16384 with Hq 32, Hkv 8, D 64; hidden 8192 x 2048 with 256 pairs. CPU
(under the Triton interpreter): tiny float32 shapes so every code path runs; these timings measure
the interpreter, not the kernels, and say so in extra_info (meaningful_timing = false).

Before a method is timed, its output and gradients are checked against the PyTorch form (relative error
of the whole tensor), so a broken kernel fails instead of posting a time. test_candidate_configs_against_float64
checks every tile config of candidate_configs() (the ones a timing run may choose) against float64, forward and
backward, at the Llama-3.2-1B and 8B head dims in bf16 and fp16 (CPU: the interpreter's fp32 default config);
it times nothing, so run it without --benchmark-only: `pytest bench/bench_kernels.py -k candidate`.
Not under tests/: CI's `pytest` (testpaths = tests) does not run these.
"""

import functools
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F
from bench_attention import CANDIDATE_BOUND, check_candidate, reference_float64
from bench_attention import sdpa_dense_fn as sdpa_dense_method
from bench_attention import triton_fn as triton_method
from benchlib import forward_backward, synchronize
from layouts import dense_visibility, example_shape, jepa_layout, visible_pairs

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is first imported, just below

import triton  # noqa: E402

from llmjepa_kernels import cosine_jepa_loss  # noqa: E402
from llmjepa_kernels.block_causal_attention import candidate_configs, interpreted  # noqa: E402

if not CUDA and not interpreted():
    pytest.skip("no CUDA and triton was imported without TRITON_INTERPRET=1", allow_module_level=True)


@dataclass(frozen=True)
class Shapes:
    """What one machine runs: realistic sizes on CUDA, tiny ones under the CPU interpreter."""

    dtype: torch.dtype
    attention_tokens: tuple[int, ...]
    q_heads: int
    kv_heads: int
    head_dim: int
    example_len: int  # tokens of one JEPA example in the packed stream
    hidden_tokens: int
    hidden_dim: int
    pairs: int
    tolerance: float  # largest relative error against the PyTorch form
    rounds: int
    warmup_rounds: int


# bf16 against a bf16 PyTorch form: each is ~4e-3 from the exact result, a broken kernel is O(1) off.
CUDA_SHAPES = Shapes(
    dtype=torch.bfloat16,
    attention_tokens=(4096, 16384),
    q_heads=32,
    kv_heads=8,
    head_dim=64,
    example_len=300,
    hidden_tokens=8192,
    hidden_dim=2048,
    pairs=256,
    tolerance=2e-2,
    rounds=30,
    warmup_rounds=5,
)
# float32 through the interpreter (its bf16 tl.dot is wrong); three examples of 30 tokens and a cut one.
CPU_SHAPES = Shapes(
    dtype=torch.float32,
    attention_tokens=(96,),
    q_heads=4,
    kv_heads=2,
    head_dim=16,
    example_len=30,
    hidden_tokens=64,
    hidden_dim=48,
    pairs=12,
    tolerance=1e-4,
    rounds=2,
    warmup_rounds=0,
)
SHAPES = CUDA_SHAPES if CUDA else CPU_SHAPES
DEVICE = torch.device("cuda" if CUDA else "cpu")


def machine_info() -> dict:
    if CUDA:
        return {"device": torch.cuda.get_device_name(), "meaningful_timing": True}
    return {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), Triton interpreter",
        "meaningful_timing": False,
        "note": "TRITON_INTERPRET=1 on CPU: the code runs, the times are the interpreter's, not kernel timings",
    }


def record(benchmark, **shapes: object) -> None:
    benchmark.extra_info.update(machine_info())
    benchmark.extra_info.update(
        dtype=str(SHAPES.dtype).removeprefix("torch."),
        torch=torch.__version__,
        triton=triton.__version__,
        **{k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in shapes.items()},
    )


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().double()
    return float((x.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_matches(got: list, reference: list, names: tuple[str, ...], what: str) -> None:
    for name, x, ref in zip(names, got, reference):
        assert torch.isfinite(x).all(), f"{what}: {name} is not finite"
        err = rel_err(x, ref)
        assert err <= SHAPES.tolerance, f"{what}: {name} relative error {err:.2e} > {SHAPES.tolerance:g}"


def time_forward_backward(benchmark, fn: Callable[..., torch.Tensor], inputs: list, dout: torch.Tensor) -> None:
    def run() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, dout.to(out.dtype))  # a no-op cast but for scalar losses
        synchronize()  # pytest-benchmark reads a host clock

    benchmark.pedantic(run, rounds=SHAPES.rounds, warmup_rounds=SHAPES.warmup_rounds, iterations=1)


# ----------------------------------------------------------------------------------------------------
# Fused cosine JEPA loss
# ----------------------------------------------------------------------------------------------------


def cosine_loss_torch(hidden: torch.Tensor, pred_index: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """The plain PyTorch form: gather both rows of every pair, 1 - cos, summed over pairs."""
    cos = F.cosine_similarity(hidden[pred_index], hidden[target_index], dim=-1)
    return (1.0 - cos).sum()


def cosine_loss_fused(hidden: torch.Tensor, pred_index: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    return cosine_jepa_loss(hidden, pred_index, target_index, reduction="sum")[0]


def cosine_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states and pair indices drawn at random (an index may repeat, as in the trainer)."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    shape = (SHAPES.hidden_tokens, SHAPES.hidden_dim)
    hidden = torch.randn(*shape, device=DEVICE, dtype=SHAPES.dtype, generator=gen).requires_grad_()
    pred, target = (
        torch.randint(0, SHAPES.hidden_tokens, (SHAPES.pairs,), device=DEVICE, generator=gen) for _ in range(2)
    )
    return hidden, pred, target


@pytest.mark.parametrize("method", ["triton_fused", "torch"])
def test_cosine_jepa_loss(benchmark, method: str) -> None:
    hidden, pred, target = cosine_inputs()
    loss_fn = cosine_loss_fused if method == "triton_fused" else cosine_loss_torch
    fn = functools.partial(loss_fn, pred_index=pred, target_index=target)
    dout = torch.ones((), device=DEVICE)
    # The PyTorch form in float32 (the fused kernel accumulates in float32 too), on the same inputs.
    reference = forward_backward(lambda h: cosine_loss_torch(h.float(), pred, target), [hidden], dout)
    got = forward_backward(fn, [hidden], dout)
    assert_matches(got, reference, ("loss", "d hidden"), f"cosine loss, {method}")
    benchmark.group = f"cosine JEPA loss fwd+bwd, hidden {SHAPES.hidden_tokens}x{SHAPES.hidden_dim}"
    record(benchmark, method=method, hidden=f"{SHAPES.hidden_tokens}x{SHAPES.hidden_dim}", pairs=SHAPES.pairs)
    time_forward_backward(benchmark, fn, [hidden], dout)


# ----------------------------------------------------------------------------------------------------
# Block-causal attention
# ----------------------------------------------------------------------------------------------------


def attention_inputs(tokens: int) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    heads = (SHAPES.q_heads, SHAPES.kv_heads, SHAPES.kv_heads)
    return [
        torch.randn(tokens, h, SHAPES.head_dim, device=DEVICE, dtype=SHAPES.dtype, generator=gen).requires_grad_()
        for h in heads
    ]


@pytest.mark.parametrize("tokens", SHAPES.attention_tokens)
@pytest.mark.parametrize("method", ["triton", "sdpa_dense"])
def test_block_causal_attention(benchmark, method: str, tokens: int) -> None:
    example = example_shape(SHAPES.example_len)
    ranges = jepa_layout(tokens, example, DEVICE)
    inputs = attention_inputs(tokens)
    dout = torch.randn_like(inputs[0])
    pytorch_form = sdpa_dense_method(ranges, SHAPES.dtype)
    fn = triton_method(ranges) if method == "triton" else pytorch_form
    # The PyTorch form in the benchmark's dtype: a float32 dense reference at T = 16384 would not fit.
    reference = forward_backward(pytorch_form, inputs, dout)
    got = forward_backward(fn, inputs, dout)
    assert_matches(got, reference, ("out", "dq", "dk", "dv"), f"attention T={tokens}, {method}")
    del reference, got
    benchmark.group = f"block-causal attention fwd+bwd, T={tokens}"
    record(
        benchmark,
        method=method,
        tokens=tokens,
        q_heads=SHAPES.q_heads,
        kv_heads=SHAPES.kv_heads,
        head_dim=SHAPES.head_dim,
        example=str(asdict(example)),
        visible_pairs=visible_pairs(*ranges),
    )
    time_forward_backward(benchmark, fn, inputs, dout)


# ----------------------------------------------------------------------------------------------------
# Candidate tile configs against float64 (not timed: what bench_attention.py --candidates checks first)
# ----------------------------------------------------------------------------------------------------

CANDIDATE_CASES = (
    [(64, torch.bfloat16), (128, torch.bfloat16), (64, torch.float16), (128, torch.float16)]
    if CUDA
    else [(16, torch.float32)]
)


@pytest.mark.parametrize(("head_dim", "dtype"), CANDIDATE_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_candidate_configs_against_float64(head_dim: int, dtype: torch.dtype) -> None:
    import argparse

    tokens = 2048 if CUDA else 64
    args = argparse.Namespace(
        device=DEVICE, seed=0, q_heads=SHAPES.q_heads, kv_heads=SHAPES.kv_heads, head_dim=head_dim
    )
    example = example_shape(300 if CUDA else 30)
    ranges = jepa_layout(tokens, example, DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [
        torch.randn(tokens, h, head_dim, device=DEVICE, dtype=dtype, generator=gen).requires_grad_()
        for h in (SHAPES.q_heads, SHAPES.kv_heads, SHAPES.kv_heads)
    ]
    dout = torch.randn_like(inputs[0])
    reference = (ranges, inputs, dout, reference_float64(*inputs, dout, dense_visibility(*ranges)))
    for index, config in enumerate(candidate_configs(head_dim, dtype)):
        check = check_candidate(config, args, example, dtype, reference)
        assert check["agrees"], (index, config, check["errors"], CANDIDATE_BOUND[dtype])
