"""pytest-benchmark: attention forward + backward per backend on the packed JEPA layout (bench_attention.py's
methods and layout), each checked against a float64 reference of the same visibility before it is timed.

    pytest bench/test_bench_attention.py --benchmark-only                  # CUDA: bf16, T 4096, Llama-3.2-1B heads
    pytest bench/test_bench_attention.py --benchmark-disable               # smoke: each method once, no timing

Backends: sdpa_dense (SDPA with the dense additive mask: upstream's path), flex (FlexAttention; no backward on
the CPU: skipped there, saying so), torch_form (llmjepa_kernels' PyTorch form: the CPU path), triton
(block_causal_attention; on the CPU under TRITON_INTERPRET=1, so its time is the interpreter's),
sdpa_view1 and fa4_view1 (causal attention over view 1 alone: the plain-SFT cost, a floor, not the same
result), flash_varlen (flash-attn 2 on the layout without shared ranges). A backend that is not installed
or has no device here skips with the reason; bench_attention.py's table is the script form of the same.
"""

import argparse

import pytest
import torch
from bench_attention import METHODS, Skip, method_setup, reference_float64
from benchlib import CUDA, DEVICE, assert_close, forward_backward, record, timed_forward_backward
from layouts import dense_visibility, example_shape, jepa_layout, visible_pairs

# CUDA: Llama-3.2-1B's heads, bf16 (bound: bf16 against float64); CPU: tiny float32 shapes for the interpreter.
TOKENS, EXAMPLE_LEN, HEADS, DTYPE, TOLERANCE = (
    (4096, 300, (32, 8, 64), torch.bfloat16, 2e-2) if CUDA else (96, 30, (4, 2, 16), torch.float32, 1e-4)
)
SAME_RESULT = ("sdpa_dense", "flex", "torch_form", "triton")  # the others attend within view 1 (or no shared ranges)


def bench_args() -> argparse.Namespace:
    q_heads, kv_heads, head_dim = HEADS
    return argparse.Namespace(
        device=DEVICE, seed=0, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, dense_memory_fraction=0.5
    )


@pytest.mark.parametrize("method", METHODS)
def test_attention(benchmark, method: str) -> None:
    args = bench_args()
    example = example_shape(EXAMPLE_LEN)
    ranges = jepa_layout(TOKENS, example, DEVICE)
    try:
        fn, inputs, pairs = method_setup(method, TOKENS, args, example, DTYPE, ranges)
        dout = torch.randn_like(fn(*inputs))
        got = forward_backward(fn, inputs, dout)
    except Skip as reason:
        pytest.skip(f"{method}: {reason}")
    except NotImplementedError as reason:  # FlexAttention's backward on the CPU
        pytest.skip(f"{method}: {reason}")
    if method in SAME_RESULT:
        reference = reference_float64(*inputs, dout, dense_visibility(*ranges))
        assert_close(got, reference, ("out", "dq", "dk", "dv"), TOLERANCE, f"attention {method}")
    else:
        assert all(torch.isfinite(x).all() for x in got), f"{method}: not finite"
    record(
        benchmark,
        f"attention fwd+bwd, T={TOKENS}",
        method=method,
        tokens=TOKENS,
        heads=HEADS,
        dtype=DTYPE,
        pairs_computed=pairs,
        visible_pairs=visible_pairs(*ranges),
    )
    benchmark(timed_forward_backward(fn, inputs, dout))
