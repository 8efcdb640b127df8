"""Benchmark block_causal_attention against the alternatives on a JEPA-like packed layout (CUDA only).

Methods, forward and forward+backward, median of triton.testing.do_bench:
  sdpa_dense  SDPA with the equivalent dense additive mask, K/V repeated to Hq heads (what transformers'
              sdpa path does when given a 4D mask); skipped where the mask and its workspace do not fit.
  flex        torch.nn.attention.flex_attention (compiled) with the layout as a mask_mod.
  sdpa_view1  SDPA causal (flash path) on view 1 of every example alone: the plain-SFT attention cost.
  triton      llmjepa_kernels.block_causal_attention.
  flash_varlen  flash_attn.flash_attn_varlen_func (the optional `llmjepa[flash]` peer), causal per segment
              of cu_seqlens. It cannot express a shared range, so it runs the same stream with the shared
              ranges removed (layouts.without_shared_ranges: view 1, the predictor view and each step
              segment causal over itself, the predictor no longer seeing view 1's prefix); its pairs are
              counted on that layout. Skipped, with the reason printed, where flash_attn does not import.
Throughput is reported per visible (query, key) pair and head, so sdpa_view1 is comparable. A bf16
correctness check against a float64 dense reference runs first. Results go to bench/results/attention.md.

    python bench/bench_attention.py --tokens 4096 8192 16384 32768
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from layouts import (
    Example,
    cu_seqlens_from_ranges,
    dense_visibility,
    example_shape,
    jepa_layout,
    visible_pairs,
    without_shared_ranges,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METHODS = ("sdpa_dense", "flex", "sdpa_view1", "triton", "flash_varlen")


def fwd_bwd(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dout: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, dout)

    return run


def forward_only(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn(*inputs)

    return run


def bench_ms(run: Callable[[], None], warmup: int, rep: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(run, warmup=warmup, rep=rep, return_mode="median"))


def measure(
    run_fwd: Callable[[], None], run_both: Callable[[], None], args: argparse.Namespace
) -> tuple[float, float, float]:
    """(forward ms, forward+backward ms, peak GiB of forward+backward)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_both()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return bench_ms(run_fwd, args.warmup, args.rep), bench_ms(run_both, args.warmup, args.rep), peak


def make_qkv(tokens: int, args: argparse.Namespace, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    shapes = [(tokens, args.q_heads, args.head_dim)] + [(tokens, args.kv_heads, args.head_dim)] * 2
    return [torch.randn(*shape, device="cuda", dtype=dtype, generator=gen).requires_grad_() for shape in shapes]


# ----------------------------------------------------------------------------------------------------
# Methods: each maps (q, k, v) in (T, H, D) layout to an output, plus the pairs it computes
# ----------------------------------------------------------------------------------------------------


def triton_method(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    from llmjepa_kernels.block_causal_attention import BlockCausalLayout, block_causal_attention

    layout = BlockCausalLayout(*ranges)  # built once, as the HF adapter does per forward

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return block_causal_attention(q, k, v, *ranges, layout=layout)

    return fn


def sdpa_dense_method(ranges: tuple[torch.Tensor, ...], dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    visible = dense_visibility(*ranges)
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    del visible
    mask = mask[None, None]

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[0].transpose(0, 1)

    return fn


def flex_method(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    a, b, s = ranges
    tokens = a.numel()

    def mask_mod(batch, head, q_idx, kv_idx):
        return ((kv_idx >= a[q_idx]) & (kv_idx <= b[q_idx])) | ((kv_idx >= s[q_idx]) & (kv_idx <= q_idx))

    block_mask = create_block_mask(mask_mod, None, None, tokens, tokens, device=a.device)
    compiled = torch.compile(flex_attention, dynamic=False)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (x.transpose(0, 1)[None] for x in (q, k, v))
        return compiled(q, k, v, block_mask=block_mask, enable_gqa=True)[0].transpose(0, 1)

    return fn


def sdpa_view1_method(
    example: Example, tokens: int, args: argparse.Namespace, dtype: torch.dtype
) -> tuple[Callable[..., torch.Tensor], int, int]:
    """Causal SDPA over the view-1 segments only, one batch row per example; returns (fn, rows, pairs).

    Runs under sdpa_kernel(FLASH_ATTENTION) so that no silent fallback to another backend happens. If this
    torch's flash path rejects enable_gqa, K/V are repeated to Hq heads inside the timed function instead."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = max(1, tokens // example.length)
    length = example.view1
    group = args.q_heads // args.kv_heads

    def gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def repeated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    probe = [torch.randn(1, h, 64, args.head_dim, device="cuda", dtype=dtype) for h in (args.q_heads, args.kv_heads)]
    try:
        gqa(probe[0], probe[1], probe[1])
        fn = gqa
    except RuntimeError:
        fn = repeated
    return fn, rows, rows * length * (length + 1) // 2


def flash_unavailable_reason(dtype: torch.dtype) -> str | None:
    """Why flash_varlen cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return "needs CUDA"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn takes float16 or bfloat16, not {dtype}"
    try:
        import flash_attn  # noqa: F401
    except ImportError as err:
        return f"flash-attn is not installed ({err}); pip install 'llmjepa[flash]' where a wheel fits"
    return None


def flash_varlen_method(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    """flash_attn_varlen_func over the segments of a plain varlen layout (see without_shared_ranges);
    GQA is native (Hq a multiple of Hkv), so K/V are not repeated."""
    from flash_attn import flash_attn_varlen_func

    cu_seqlens, max_seqlen = cu_seqlens_from_ranges(ranges)  # ValueError on a shared range

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flash_attn_varlen_func(
            q,
            k,
            v,
            cu_seqlens_q=cu_seqlens,
            cu_seqlens_k=cu_seqlens,
            max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen,
            causal=True,
        )

    return fn


# ----------------------------------------------------------------------------------------------------
# Correctness and timing
# ----------------------------------------------------------------------------------------------------


def reference_float64(q, k, v, dout, visible: torch.Tensor) -> list[torch.Tensor]:
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    group = q.shape[1] // k.shape[1]
    kk, vv = (x.repeat_interleave(group, dim=1) for x in leaves[1:])
    scores = torch.einsum("thd,shd->hts", leaves[0], kk) * q.shape[-1] ** -0.5
    out = torch.einsum("hts,shd->thd", scores.masked_fill(~visible, float("-inf")).softmax(-1), vv)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.double())]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().double() - ref).norm() / ref.norm())


def correctness(args: argparse.Namespace, example: Example, dtype: torch.dtype) -> list[str]:
    tokens = args.check_tokens
    ranges = jepa_layout(tokens, example, torch.device("cuda"))
    q, k, v = make_qkv(tokens, args, dtype)
    dout = torch.randn_like(q)
    ref = reference_float64(q, k, v, dout, dense_visibility(*ranges))
    lines = [
        f"## Correctness at T={tokens}, {args.dtype} inputs, vs a float64 dense reference",
        "",
        "relative error ||x - ref|| / ||ref||; sdpa_dense is PyTorch SDPA with the dense mask in the same dtype.",
        "",
        "| method | out | dq | dk | dv |",
        "|---|---|---|---|---|",
    ]
    for name, fn in (("triton", triton_method(ranges)), ("sdpa_dense", sdpa_dense_method(ranges, dtype))):
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        errs = [rel_err(x, r) for x, r in zip((out, *grads), ref)]
        finite = all(bool(torch.isfinite(x).all()) for x in (out, *grads))
        lines.append(f"| {name} | " + " | ".join(f"{e:.2e}" for e in errs) + " |" + ("" if finite else " non-finite!"))
    del ref
    torch.cuda.empty_cache()
    return lines + varlen_correctness(args, ranges, dtype) + [""]


def varlen_correctness(args: argparse.Namespace, ranges: tuple[torch.Tensor, ...], dtype: torch.dtype) -> list[str]:
    """Rows for flash_varlen and triton on the layout flash_varlen runs (shared ranges removed)."""
    reason = flash_unavailable_reason(dtype)
    if reason is not None:
        print(f"flash_varlen: skipped: {reason}")
        return [f"| flash_varlen | skipped: {reason} | | | |"]
    plain = without_shared_ranges(ranges)
    q, k, v = make_qkv(plain[0].numel(), args, dtype)
    dout = torch.randn_like(q)
    ref = reference_float64(q, k, v, dout, dense_visibility(*plain))
    lines = []
    for name, fn in (("triton, varlen layout", triton_method(plain)), ("flash_varlen", flash_varlen_method(plain))):
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        errs = [rel_err(x, r) for x, r in zip((out, *grads), ref)]
        lines.append(f"| {name} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    return lines


def dense_fits(tokens: int, args: argparse.Namespace) -> bool:
    """The additive mask, a bool copy while building it, and the repeated K/V with their grads."""
    dtype_bytes = torch.finfo(DTYPES[args.dtype]).bits // 8
    need = tokens * tokens * (dtype_bytes + 1) + 6 * tokens * args.q_heads * args.head_dim * dtype_bytes
    free, _ = torch.cuda.mem_get_info()
    return need < args.dense_memory_fraction * free


def time_one(
    name: str, tokens: int, args: argparse.Namespace, example: Example, dtype: torch.dtype, ranges, pairs: int
) -> list[str]:
    try:
        if name == "sdpa_view1":
            fn, rows, pairs = sdpa_view1_method(example, tokens, args, dtype)
            gen = torch.Generator(device="cuda").manual_seed(args.seed)
            shapes = [(rows, h, example.view1, args.head_dim) for h in (args.q_heads, args.kv_heads, args.kv_heads)]
            inputs = [torch.randn(*x, device="cuda", dtype=dtype, generator=gen).requires_grad_() for x in shapes]
        elif name == "flash_varlen":
            reason = flash_unavailable_reason(dtype)
            if reason is not None:
                print(f"flash_varlen: skipped: {reason}", flush=True)
                return [name, f"skipped: {reason}", "", "", "", ""]
            plain = without_shared_ranges(ranges)
            fn, pairs = flash_varlen_method(plain), visible_pairs(*plain)
            inputs = make_qkv(tokens, args, dtype)
        else:
            if name == "sdpa_dense" and not dense_fits(tokens, args):
                return [name, "skipped: dense mask does not fit", "", "", "", ""]
            fn = {
                "triton": lambda: triton_method(ranges),
                "sdpa_dense": lambda: sdpa_dense_method(ranges, dtype),
                "flex": lambda: flex_method(ranges),
            }[name]()
            inputs = make_qkv(tokens, args, dtype)
        dout = torch.randn_like(fn(*inputs))
        fwd_ms, both_ms, peak = measure(forward_only(fn, inputs), fwd_bwd(fn, inputs, dout), args)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return [name, "out of memory", "", "", "", ""]
    except RuntimeError as err:  # e.g. a backend or compiler that rejects this configuration
        traceback.print_exc()
        torch.cuda.empty_cache()
        return [name, f"failed: {type(err).__name__}", "", "", "", ""]
    throughput = pairs * args.q_heads / (both_ms * 1e-3) / 1e9
    return [name, f"{fwd_ms:.3f}", f"{both_ms:.3f}", f"{pairs:,}", f"{throughput:.1f}", f"{peak:.2f}"]


def causal_tile_count(tokens: int, block_m: int, block_n: int) -> int:
    """Tiles a plain causal kernel would visit over the whole stream, for comparison."""
    key_blocks = math.ceil(tokens / block_n)
    return sum(
        min(key_blocks, (min(tokens, (m + 1) * block_m) - 1) // block_n + 1) for m in range(math.ceil(tokens / block_m))
    )


def timing_table(args: argparse.Namespace, example: Example, dtype: torch.dtype) -> list[str]:
    from llmjepa_kernels.block_causal_attention import BlockCausalLayout, default_config

    lines = [
        "## Timing",
        "",
        "median ms of triton.testing.do_bench; throughput = visible (query, key) pairs x Hq heads / forward+backward "
        "time; peak = extra CUDA memory of one forward+backward.",
        "",
        "| T | method | fwd ms | fwd+bwd ms | visible pairs | G pair-heads/s | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    tile_lines = ["", "## Tiles the Triton forward visits (per head)", "", "| T | tile | full | partial | of causal |"]
    tile_lines.append("|---|---|---|---|---|")
    for tokens in args.tokens:
        ranges = jepa_layout(tokens, example, torch.device("cuda"))
        pairs = visible_pairs(*ranges)
        for name in args.methods:
            row = time_one(name, tokens, args, example, dtype, ranges, pairs)
            lines.append(f"| {tokens} | " + " | ".join(row) + " |")
            print(lines[-1], flush=True)
        tile = default_config(args.head_dim, dtype).forward
        full, partial = BlockCausalLayout(*ranges).visited_tiles(tile.block_m, tile.block_n)
        causal_tiles = causal_tile_count(tokens, tile.block_m, tile.block_n)
        tile_lines.append(
            f"| {tokens} | {tile.block_m}x{tile.block_n} | {full} | {partial} | {(full + partial) / causal_tiles:.1%} |"
        )
    return lines + tile_lines + [""]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--example-len", type=int, default=300, help="tokens per JEPA example")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--check-tokens", type=int, default=4096, help="T of the float64 check; 0 skips it")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    parser.add_argument("--dense-memory-fraction", type=float, default=0.8, help="of free memory for sdpa_dense")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "attention.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("bench_attention.py: unset TRITON_INTERPRET; the interpreter cannot be benchmarked")
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    import triton

    dtype = DTYPES[args.dtype]
    example = example_shape(args.example_len)
    header = [
        "# block_causal_attention benchmark",
        "",
        f"- device: {torch.cuda.get_device_name()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}",
        f"- Hq={args.q_heads}, Hkv={args.kv_heads}, D={args.head_dim}, {args.dtype}",
        f"- layout: examples of {example.length} tokens: view 1 causal ({example.view1}), predictor view "
        f"({example.predictor}) sharing view 1's first {example.shared_prefix} tokens, step segments {example.steps}",
        "- flash_varlen runs that stream with the shared ranges removed (each segment causal over itself, the "
        "predictor view not seeing view 1's prefix): the layout cu_seqlens can express; its pairs are counted there",
        f"- command: {' '.join(sys.argv)}",
        "",
    ]
    print("\n".join(header), flush=True)
    body = correctness(args, example, dtype) if args.check_tokens else []
    print("\n".join(body), flush=True)
    body += timing_table(args, example, dtype)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(header + body))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
