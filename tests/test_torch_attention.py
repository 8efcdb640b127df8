"""The PyTorch form of the block-causal attention (llmjepa_kernels/torch_attention.py) against a dense float64
reference on randomized streams of JEPA-like examples; its blocks, windows and cache; the pair counts.

Streams are examples back to back, each a view 1 (causal), views that share a prefix of it, step
segments, a bidirectional block whose shared range reaches past its queries, and tokens with an empty
causal range that see only their shared range.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
from torch.profiler import profile

from llmjepa_kernels import torch_attention
from llmjepa_kernels.block_layout import BlockCausalLayout, tile_pairs, visible_pairs

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))


def seed_note(case: int) -> str:
    return f"case {case}, base seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED})"


def random_example(rng: random.Random, start: int) -> tuple[list[int], list[int], list[int]]:
    """One example's ranges (shared_start, shared_end, causal_start) in stream indices from `start`."""
    a: list[int] = []
    b: list[int] = []
    s: list[int] = []

    def add(n: int, shared: tuple[int, int], causal_from: int | None) -> None:
        for _ in range(n):
            here = start + len(s)
            a.append(shared[0]), b.append(shared[1]), s.append(here + 1 if causal_from is None else causal_from)

    view1 = rng.randint(1, 40)
    add(view1, (0, -1), start)
    for _ in range(rng.randint(0, 3)):
        kind = rng.choice(["prefix view", "segments", "block"])
        first = start + len(s)
        if kind == "prefix view":  # sees a prefix of view 1, then itself
            add(rng.randint(1, 20), (start, start + rng.randint(0, view1 - 1)), first)
        elif kind == "segments":  # each segment sees only itself
            for _ in range(rng.randint(1, 4)):
                add(rng.randint(1, 8), (0, -1), start + len(s))
        else:  # every token sees the whole block (past itself); some see nothing else
            n = rng.randint(1, 10)
            for _ in range(n):
                add(1, (first, first + n - 1), None if rng.random() < 0.3 else first)
    return a, b, s


def random_stream(rng: random.Random) -> BlockCausalLayout:
    a: list[int] = []
    b: list[int] = []
    s: list[int] = []
    for _ in range(rng.randint(1, 5)):
        ea, eb, es = random_example(rng, len(s))
        a += ea
        b += eb
        s += es
    return BlockCausalLayout(*(torch.tensor(x, dtype=torch.int32) for x in (a, b, s)))


def dense_visibility(layout: BlockCausalLayout) -> torch.Tensor:
    i = torch.arange(layout.num_tokens)[:, None]
    j = torch.arange(layout.num_tokens)[None, :]
    a, b, s = (x.long()[:, None] for x in (layout.shared_start, layout.shared_end, layout.causal_start))
    return ((j >= a) & (j <= b)) | ((j >= s) & (j <= i))


def reference(q, k, v, dout, visible, scale) -> list[torch.Tensor]:
    """Dense attention in float64 with its gradients."""
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    group = q.shape[1] // k.shape[1]
    kk, vv = (x.repeat_interleave(group, dim=1) for x in leaves[1:])
    scores = torch.einsum("thd,shd->hts", leaves[0], kk) * scale
    out = torch.einsum("hts,shd->thd", scores.masked_fill(~visible, float("-inf")).softmax(-1), vv)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.double())]


def ours(fn, q, k, v, dout, *args) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves, *args)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout)]


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def inputs(rng: random.Random, t: int, dtype: torch.dtype):
    kv_heads, group = rng.choice([(1, 1), (2, 2), (1, 4), (2, 4)])
    head_dim = rng.choice([16, 32])
    q, dout = (torch.randn(t, kv_heads * group, head_dim, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(t, kv_heads, head_dim, dtype=dtype) for _ in range(2))
    return q, k, v, dout, head_dim**-0.5


BOUNDS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("case", range(24))
def test_matches_dense_float64(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    """Output and gradients of the CPU form (flash kernel's ops) and of the generic SDPA form, query
    blocks of 8 or 64, in float64, float32, float16 and bfloat16, against dense attention in float64."""
    rng = random.Random(SEED + case)
    torch.manual_seed(SEED + case)
    monkeypatch.setattr(torch_attention, "TORCH_QUERY_BLOCK", rng.choice([8, 64]))
    layout = random_stream(rng)
    dtype = list(BOUNDS)[case % 4]
    q, k, v, dout, scale = inputs(rng, layout.num_tokens, dtype)
    ref = reference(q, k, v, dout, dense_visibility(layout), scale)
    blocks = torch_attention.query_blocks(layout)
    masks = torch_attention._masks(layout.ranges(), q.device, q.dtype)
    for name, fn, args in (
        ("cpu form", torch_attention.torch_block_causal_attention, (layout, scale)),
        ("generic sdpa", torch_attention.blockwise_sdpa, (blocks, masks, scale)),
    ):
        got = ours(fn, q, k, v, dout, *args)
        for what, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
            assert torch.isfinite(x).all(), f"{name} {what}: not finite; {seed_note(case)}"
            err = rel(x, r)
            assert err < BOUNDS[dtype], f"{name} {what} {dtype}: {err:.2e}; {seed_note(case)}"


@pytest.mark.parametrize("case", range(6))
def test_the_ops_off_cpu_form_matches_dense_float64(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    """Off the CPU the custom op runs blockwise SDPA and its backward recomputes the blocks under autograd
    (no flash backward op with GQA there): that form, run here on the CPU, against dense float64."""
    rng = random.Random(SEED + 500 + case)
    torch.manual_seed(SEED + 500 + case)
    monkeypatch.setattr(torch_attention, "_flash_ops_on", lambda device: False)
    layout = random_stream(rng)
    dtype = (torch.float64, torch.float32)[case % 2]
    q, k, v, dout, scale = inputs(rng, layout.num_tokens, dtype)
    ref = reference(q, k, v, dout, dense_visibility(layout), scale)
    got = ours(torch_attention.torch_block_causal_attention, q, k, v, dout, layout, scale)
    for what, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert torch.isfinite(x).all(), f"{what}: not finite; {seed_note(case)}"
        assert rel(x, r) < BOUNDS[dtype], f"{what} {dtype}: {rel(x, r):.2e}; {seed_note(case)}"


@pytest.mark.parametrize("case", range(20))
def test_blocks_cover_the_stream_and_windows_stay_in_one_example(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    rng = random.Random(SEED + 100 + case)
    block = rng.choice([4, 16, 64])
    examples, a, b, s = [], [], [], []
    for _ in range(rng.randint(1, 6)):
        ea, eb, es = random_example(rng, len(s))
        examples.append((len(s), len(s) + len(es)))
        a, b, s = a + ea, b + eb, s + es
    layout = BlockCausalLayout(*(torch.tensor(x, dtype=torch.int32) for x in (a, b, s)))
    blocks = torch_attention.query_blocks(layout, block)
    assert blocks[0].q0 == 0 and blocks[-1].q1 == len(s), seed_note(case)
    assert all(x.q1 == y.q0 for x, y in zip(blocks, blocks[1:])), seed_note(case)
    visible = dense_visibility(layout)
    for blk in blocks:
        assert 0 < blk.q1 - blk.q0 <= block, seed_note(case)
        first, last = next((x0, x1) for x0, x1 in examples if x0 <= blk.q0 < x1)
        assert blk.q1 <= last and first <= blk.lo and blk.hi <= last, f"{blk} leaves {first, last}; {seed_note(case)}"
        keys = visible[blk.q0 : blk.q1].any(0).nonzero().flatten()
        assert int(keys.min()) == blk.lo and int(keys.max()) == blk.hi - 1, (
            f"{blk}: window not tight; {seed_note(case)}"
        )
    expected = sum((blk.q1 - blk.q0) * (blk.hi - blk.lo) for blk in blocks)
    assert torch_attention.computed_pairs(layout, block) == expected
    assert expected >= visible_pairs(layout) == int(visible.sum())


def test_blocks_and_masks_are_built_once_per_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same layout reaches every layer: planning and masks happen at the first call only, per dtype."""
    calls = []
    plan = torch_attention._plan_blocks
    monkeypatch.setattr(torch_attention, "_plan_blocks", lambda *args: calls.append(1) or plan(*args))
    rng = random.Random(SEED + 200)
    layout = random_stream(rng)
    q, k, v, _, scale = inputs(rng, layout.num_tokens, torch.float32)
    for _ in range(3):  # three layers
        torch_attention.torch_block_causal_attention(q, k, v, layout, scale)
    masks = torch_attention._masks(layout.ranges(), q.device, torch.float32)
    assert masks is torch_attention._masks(layout.ranges(), q.device, torch.float32)
    assert len(calls) == 1
    key = tuple(id(x) for x in layout.ranges())
    assert key in torch_attention._BLOCKS
    del layout
    assert key not in torch_attention._BLOCKS  # the cache entry goes with its layout


def attention_ops(fn) -> set[str]:
    with profile() as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("form", ["cpu form", "generic sdpa"])
def test_runs_the_flash_kernel_not_the_math_path(form: str) -> None:
    """4-D inputs take SDPA's CPU flash kernel (3-D ones took the math path, probabilities materialized
    and K/V repeated per GQA group)."""
    rng = random.Random(SEED + 300)
    layout = random_stream(rng)
    q, k, v, dout, scale = inputs(rng, layout.num_tokens, torch.float32)
    if form == "cpu form":
        fn, args = torch_attention.torch_block_causal_attention, (layout, scale)
    else:
        masks = torch_attention._masks(layout.ranges(), q.device, q.dtype)
        fn, args = torch_attention.blockwise_sdpa, (torch_attention.query_blocks(layout), masks, scale)
    ops = attention_ops(lambda: ours(fn, q, k, v, dout, *args))
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops and "aten::repeat_interleave" not in ops


@pytest.mark.parametrize("case", range(10))
def test_pair_counts(case: int) -> None:
    """visible_pairs is the dense count; tile_pairs is block_m x block_n per tile holding a visible pair."""
    rng = random.Random(SEED + 400 + case)
    layout = random_stream(rng)
    visible = dense_visibility(layout)
    assert visible_pairs(layout) == int(visible.sum())
    block_m, block_n = rng.choice([(16, 16), (32, 16), (64, 32), (128, 64)])
    t = layout.num_tokens
    padded = torch.zeros(-(-t // block_m) * block_m, -(-t // block_n) * block_n, dtype=torch.bool)
    padded[:t, :t] = visible
    tiles = padded.view(padded.shape[0] // block_m, block_m, -1, block_n).any(3).any(1)
    assert tile_pairs(layout, block_m, block_n) == int(tiles.sum()) * block_m * block_n, seed_note(case)
