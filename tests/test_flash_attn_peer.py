"""flash-attn as an optional peer of block_causal_attention (bench/bench_attention.py's flash_varlen).

flash_attn_varlen_func runs plain per-segment causal attention given cu_seqlens. The CPU tests check
the conversion between a range layout and cu_seqlens that the benchmark relies on; the CUDA test checks
flash_varlen against block_causal_attention on a layout both can run (no shared ranges).
"""

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
FLASH_MISSING = "flash-attn is not installed: it has no wheel on PyPI and the GPU image lacks it"


def bench_module(name: str) -> ModuleType:
    """A module of bench/ (not a package; bench_attention imports its sibling `layouts` by name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


layouts = bench_module("layouts")


def random_segment_lengths(tokens: int, seed: int) -> list[int]:
    """Lengths 1..40 summing to `tokens`, so one-token segments and a ragged last one occur."""
    gen = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < tokens:
        lengths.append(min(int(torch.randint(1, 41, (1,), generator=gen)), tokens - sum(lengths)))
    return lengths


def boundaries(lengths: list[int]) -> list[int]:
    return [0] + torch.tensor(lengths).cumsum(0).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_cu_seqlens_round_trip(seed: int) -> None:
    lengths = random_segment_lengths(300, seed)
    cu_seqlens = torch.tensor(boundaries(lengths), dtype=torch.int32)
    ranges = layouts.varlen_ranges(cu_seqlens)
    # every token sees exactly the causal prefix of its own segment
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    i = torch.arange(300)
    same_segment_before = (segment[:, None] == segment[None, :]) & (i[None, :] <= i[:, None])
    assert torch.equal(layouts.dense_visibility(*ranges), same_segment_before)
    back, longest = layouts.cu_seqlens_from_ranges(ranges)
    assert back.dtype == torch.int32 and torch.equal(back, cu_seqlens)
    assert longest == max(lengths)


def test_jepa_layout_without_shared_ranges_gives_its_segment_boundaries() -> None:
    example = layouts.example_shape(300)  # view 1 160, predictor 60, steps 20 x 4
    ranges = layouts.jepa_layout(700, example, torch.device("cpu"))  # two examples and a cut third
    with pytest.raises(ValueError, match="token 160 has a shared range"):
        layouts.cu_seqlens_from_ranges(ranges)
    cu_seqlens, longest = layouts.cu_seqlens_from_ranges(layouts.without_shared_ranges(ranges))
    one = [example.view1, example.predictor, *example.steps]
    assert cu_seqlens.tolist() == boundaries(one + one + [100])
    assert longest == example.view1


def test_cu_seqlens_refuses_a_causal_range_reaching_into_an_earlier_segment() -> None:
    shared_start, shared_end, causal_start = layouts.varlen_ranges(torch.tensor([0, 4, 9]))
    causal_start[6] = 2  # token 6 would see tokens 2..6 across the boundary at 4
    with pytest.raises(ValueError, match="token 6: causal range starts at 2, not at its segment's start 4"):
        layouts.cu_seqlens_from_ranges((shared_start, shared_end, causal_start))


# the closest mark is evaluated first: on a machine without CUDA, say so rather than flash-attn
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason=FLASH_MISSING)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_varlen_matches_block_causal_attention() -> None:
    bench_attention = bench_module("bench_attention")
    cu_seqlens = torch.tensor(boundaries(random_segment_lengths(2000, seed=0)), dtype=torch.int32)
    ranges = tuple(x.cuda() for x in layouts.varlen_ranges(cu_seqlens))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2000, 8, 64), (2000, 2, 64), (2000, 2, 64)]  # GQA: 8 query heads, 2 KV heads
    q, k, v = (torch.randn(*s, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_() for s in shapes)
    dout = torch.randn_like(q)
    results = {}
    for name, fn in (("triton", bench_attention.triton_method), ("flash", bench_attention.flash_varlen_method)):
        out = fn(ranges)(q, k, v)
        results[name] = [out, *torch.autograd.grad(out, (q, k, v), dout)]
    for what, x, ref in zip(("out", "dq", "dk", "dv"), results["flash"], results["triton"]):
        err = float((x.double() - ref.double()).norm() / ref.double().norm())
        assert err < 2e-2, f"{what}: flash_varlen vs block_causal_attention, relative error {err:.2e}"
