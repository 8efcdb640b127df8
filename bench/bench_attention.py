"""Benchmark block_causal_attention against its peers on a JEPA-like packed layout; forward and forward+backward.

    python bench/bench_attention.py --tokens 4096 8192 16384 32768                 # GPU, Llama-3.2-1B heads, bf16
    python bench/bench_attention.py --candidates --tokens 16384                   # also time candidate tile configs
    TRITON_INTERPRET=1 python bench/bench_attention.py --dry-run --tokens 256     # CPU: tiny shapes, code paths only

Methods (each maps q (T, Hq, D), k, v (T, Hkv, D) to the output):
  sdpa_dense    SDPA with the equivalent dense additive mask, K/V repeated to Hq heads (what transformers' sdpa path
                does with a 4-D mask, as upstream trains); skipped where the mask does not fit.
  flex          FlexAttention (compiled) with a BlockMask from the same ranges (llmjepa_kernels/flex_attention.py
                where it exists, else a mask_mod over the ranges); no backward on the CPU.
  sdpa_view1    SDPA causal on view 1 of every example alone (flash backend on CUDA): the plain-SFT attention cost.
  fa4_view1     flash-attn-4 (flash_attn.cute.flash_attn_varlen_func) causal on the view-1 segments, where installed.
  triton        llmjepa_kernels.block_causal_attention.
  torch_form    the PyTorch form of the same ranges (llmjepa_kernels/torch_attention.py): the CPU and no-Triton path.
  flash_varlen  flash-attn 2 varlen on the stream with the shared ranges removed (the layout cu_seqlens can express),
                where installed.
A method that is missing or raises (Triton compile and resource errors included) is recorded with its reason;
the others still run. Throughput is per visible (query, key) pair and head. Peak memory: CUDA extra memory of one
forward+backward (CPU: not measured). A float64 correctness check runs first. --candidates times each tile
config of candidate_configs(head_dim, dtype) that agrees with a float64 reference at --check-tokens (forward and
backward, CANDIDATE_BOUND) and writes the chosen one; a candidate that disagrees is never timed or chosen
(--candidates-only: that table alone). Output: --output (.md) and its .json.

--dry-run runs the same steps on the CPU at tiny shapes (timings are meaningless: the Triton methods run in its
interpreter when TRITON_INTERPRET=1 was set, fp32) so that the acceptance script's CPU test covers this code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layouts import (  # noqa: E402
    Example,
    cu_seqlens_from_ranges,
    dense_visibility,
    example_shape,
    jepa_layout,
    visible_pairs,
    without_shared_ranges,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
METHODS = ("sdpa_dense", "flex", "sdpa_view1", "fa4_view1", "triton", "torch_form", "flash_varlen")


class Skip(Exception):
    """A method that cannot run here; its message is the reason."""


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


def fwd_bwd(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dout: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, dout)

    return run


def forward_only(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    detached = [x.detach() for x in inputs]  # no autograd state at all (flex on the CPU refuses it)

    def run() -> None:
        with torch.no_grad():
            fn(*detached)

    return run


def bench_ms(run: Callable[[], None], args: argparse.Namespace) -> float:
    """Median ms: triton.testing.do_bench on CUDA (warm-up and repetition in ms); on the CPU a host clock."""
    if args.device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(run, warmup=args.warmup, rep=args.rep, return_mode="median"))
    run()
    times = []
    for _ in range(args.cpu_reps):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def peak_gib(run: Callable[[], None], args: argparse.Namespace) -> float | None:
    """Extra CUDA memory of one call (None on the CPU)."""
    if args.device.type != "cuda":
        run()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def make_qkv(tokens: int, args: argparse.Namespace, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    shapes = [(tokens, args.q_heads, args.head_dim)] + [(tokens, args.kv_heads, args.head_dim)] * 2
    return [torch.randn(*shape, device=args.device, dtype=dtype, generator=gen).requires_grad_() for shape in shapes]


# ----------------------------------------------------------------------------------------------------
# Methods: each returns (fn, inputs, visible pairs it computes for)
# ----------------------------------------------------------------------------------------------------


def triton_fn(ranges: tuple[torch.Tensor, ...], config=None) -> Callable[..., torch.Tensor]:
    from llmjepa_kernels.block_causal_attention import BlockCausalLayout, block_causal_attention

    layout = BlockCausalLayout(*ranges)  # built once, as the collator does per microbatch

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return block_causal_attention(q, k, v, *ranges, layout=layout, config=config)

    return fn


def torch_form_fn(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    from llmjepa_kernels import torch_attention
    from llmjepa_kernels.block_layout import BlockCausalLayout

    layout = BlockCausalLayout(*ranges)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch_attention.torch_block_causal_attention(q, k, v, layout, None)

    return fn


def sdpa_dense_fn(ranges: tuple[torch.Tensor, ...], dtype: torch.dtype) -> Callable[..., torch.Tensor]:
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


def flex_fn(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    try:
        from llmjepa_kernels.block_layout import BlockCausalLayout
        from llmjepa_kernels.flex_attention import flex_block_causal_attention
    except ImportError:
        return stock_flex_fn(ranges)
    layout = BlockCausalLayout(*ranges)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flex_block_causal_attention(q, k, v, layout, None)

    return fn


def stock_flex_fn(ranges: tuple[torch.Tensor, ...]) -> Callable[..., torch.Tensor]:
    """FlexAttention with the ranges as a mask_mod (before llmjepa_kernels/flex_attention.py existed)."""
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


def view1_inputs(example: Example, tokens: int, args: argparse.Namespace, dtype: torch.dtype):
    """(rows, inputs of shape (rows, H, view1, D)) for the view-1-alone methods, and their causal pairs."""
    rows = max(1, tokens // example.length)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    heads = (args.q_heads, args.kv_heads, args.kv_heads)
    inputs = [
        torch.randn(
            rows, h, example.view1, args.head_dim, device=args.device, dtype=dtype, generator=gen
        ).requires_grad_()
        for h in heads
    ]
    return rows, inputs, rows * example.view1 * (example.view1 + 1) // 2


def sdpa_view1_fn(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
    """Causal SDPA; under sdpa_kernel(FLASH_ATTENTION) on CUDA so no silent fallback happens."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = args.q_heads // args.kv_heads

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if args.device.type == "cuda" else nullcontext():
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except RuntimeError:  # a flash path without GQA: repeat K/V (inside the timed function)
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return fn


def fa4_view1_fn(example: Example, rows: int, args: argparse.Namespace, dtype: torch.dtype):
    """flash-attn-4 varlen over the view-1 segments: inputs (rows * view1, H, D) and cu_seqlens."""
    if args.device.type != "cuda":
        raise Skip("flash-attn-4 needs a Hopper or Blackwell GPU")
    if dtype == torch.float32:
        raise Skip("flash-attn-4 takes bf16 or fp16")
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except ImportError as err:
        raise Skip(f"flash-attn-4 is not installed ({err}); pip install 'llmjepa[flash]'") from err
    cu = torch.arange(rows + 1, device=args.device, dtype=torch.int32) * example.view1

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=example.view1, max_seqlen_k=example.view1,
            causal=True,
        )  # fmt: skip
        return out[0] if isinstance(out, tuple) else out

    return fn


def flash_varlen_fn(ranges: tuple[torch.Tensor, ...], args: argparse.Namespace, dtype: torch.dtype):
    """flash-attn 2 varlen, causal per segment of the stream without its shared ranges."""
    if args.device.type != "cuda":
        raise Skip("flash-attn needs CUDA")
    if dtype == torch.float32:
        raise Skip("flash-attn takes bf16 or fp16")
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as err:
        raise Skip(f"flash-attn 2 is not installed ({err})") from err
    cu_seqlens, max_seqlen = cu_seqlens_from_ranges(ranges)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
            max_seqlen_k=max_seqlen, causal=True,
        )  # fmt: skip

    return fn


def triton_available(args: argparse.Namespace) -> None:
    if args.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Skip("Triton needs CUDA (or TRITON_INTERPRET=1 for a dry run)")


def method_setup(name: str, tokens: int, args: argparse.Namespace, example: Example, dtype: torch.dtype, ranges):
    """(fn, inputs, visible pairs) of one method at this size; Skip with the reason where it cannot run."""
    pairs = visible_pairs(*ranges)
    if name in ("sdpa_view1", "fa4_view1"):
        rows, inputs, pairs = view1_inputs(example, tokens, args, dtype)
        if name == "sdpa_view1":
            return sdpa_view1_fn(args), inputs, pairs
        flat = [x.detach().transpose(1, 2).reshape(-1, x.shape[1], x.shape[3]).requires_grad_() for x in inputs]
        return fa4_view1_fn(example, rows, args, dtype), flat, pairs
    if name == "flash_varlen":
        plain = without_shared_ranges(ranges)
        return flash_varlen_fn(plain, args, dtype), make_qkv(tokens, args, dtype), visible_pairs(*plain)
    if name == "sdpa_dense" and not dense_fits(tokens, args, dtype):
        raise Skip("the dense mask does not fit")
    if name == "triton":
        triton_available(args)
        return triton_fn(ranges), make_qkv(tokens, args, dtype), pairs
    if name == "flex":
        return flex_fn(ranges), make_qkv(tokens, args, dtype), pairs
    if name == "torch_form":
        return torch_form_fn(ranges), make_qkv(tokens, args, dtype), pairs
    return sdpa_dense_fn(ranges, dtype), make_qkv(tokens, args, dtype), pairs


def dense_fits(tokens: int, args: argparse.Namespace, dtype: torch.dtype) -> bool:
    """The additive mask, a bool copy while building it, and the repeated K/V with their grads."""
    dtype_bytes = torch.finfo(dtype).bits // 8
    need = tokens * tokens * (dtype_bytes + 1) + 6 * tokens * args.q_heads * args.head_dim * dtype_bytes
    if args.device.type != "cuda":
        return need < 2**30
    free, _ = torch.cuda.mem_get_info()
    return need < args.dense_memory_fraction * free


def failed(err: BaseException) -> str:
    traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, torch.OutOfMemoryError):
        return "failed: out of memory"
    first = (str(err).strip().splitlines() or [""])[0][:120]
    return f"failed: {type(err).__name__}: {first}"


def free_device(args: argparse.Namespace) -> None:
    if args.device.type == "cuda":
        torch.cuda.empty_cache()


def time_one(name: str, tokens: int, args: argparse.Namespace, example: Example, dtype: torch.dtype, ranges) -> dict:
    """One row of the timing table: forward and forward+backward timed apart, so a forward-only method
    (flex on the CPU) still shows its forward."""
    record = {"method": name, "tokens": tokens}
    try:
        fn, inputs, pairs = method_setup(name, tokens, args, example, dtype, ranges)
        record["visible_pairs"] = pairs
        record["fwd_ms"] = bench_ms(forward_only(fn, inputs), args)
        dout = torch.randn_like(fn(*inputs))
        run_both = fwd_bwd(fn, inputs, dout)
        record["peak_gib"] = peak_gib(run_both, args)
        record["fwd_bwd_ms"] = bench_ms(run_both, args)
        record["g_pair_heads_per_s"] = pairs * args.q_heads / (record["fwd_bwd_ms"] * 1e-3) / 1e9
        record["status"] = "ok"
    except Skip as reason:
        record["status"] = f"skipped: {reason}"
    except Exception as err:  # Triton compile and resource errors are Exceptions, not RuntimeErrors
        record["status"] = failed(err)
    free_device(args)
    print(json.dumps(record), flush=True)
    return record


# ----------------------------------------------------------------------------------------------------
# Correctness against float64
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


def correctness(args: argparse.Namespace, example: Example, dtype: torch.dtype) -> list[dict]:
    tokens = args.check_tokens
    ranges = jepa_layout(tokens, example, args.device)
    q, k, v = make_qkv(tokens, args, dtype)
    dout = torch.randn_like(q)
    ref = reference_float64(q, k, v, dout, dense_visibility(*ranges))
    records = []
    for name in args.check_methods:
        record = {"method": name, "tokens": tokens, "dtype": args.dtype}
        try:
            if name == "triton":
                triton_available(args)
            fn = {"triton": triton_fn, "torch_form": torch_form_fn, "flex": flex_fn}.get(name)
            fn = fn(ranges) if fn else sdpa_dense_fn(ranges, dtype)
            out = fn(q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), dout)
            errors = [rel_err(x, r) for x, r in zip((out, *grads), ref)]
            record.update(zip(("out", "dq", "dk", "dv"), errors))
            record["finite"] = all(bool(torch.isfinite(x).all()) for x in (out, *grads))
            record["status"] = "ok"
        except Skip as reason:
            record["status"] = f"skipped: {reason}"
        except Exception as err:
            record["status"] = failed(err)
        records.append(record)
        print(json.dumps(record), flush=True)
    free_device(args)
    return records


# ----------------------------------------------------------------------------------------------------
# Candidate tile configs
# ----------------------------------------------------------------------------------------------------


# ||x - ref|| / ||ref|| a candidate may show against float64, forward and each gradient (tests/test_cuda.py's
# bounds: a few rounding units of the output dtype); a wrong tile config is O(1) off
CANDIDATE_BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}


def check_candidate(config, args: argparse.Namespace, example: Example, dtype: torch.dtype, reference) -> dict:
    """Relative errors of one tile config against the float64 reference (out, dq, dk, dv), and whether all
    are finite and within CANDIDATE_BOUND."""
    ranges, inputs, dout, ref = reference
    fn = triton_fn(ranges, config)
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, dout)
    got = (out, *grads)
    errors = {name: rel_err(x, r) for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref)}
    finite = all(bool(torch.isfinite(x).all()) for x in got)
    bound = CANDIDATE_BOUND[dtype]
    return {"errors": errors, "bound": bound, "agrees": finite and all(e < bound for e in errors.values())}


def candidates(args: argparse.Namespace, example: Example, dtype: torch.dtype) -> dict:
    """Every candidate config, first against a float64 reference at --check-tokens (forward and the three
    gradients), then, if it agrees, its forward and forward+backward time at the first --tokens. The chosen
    config takes its forward from the fastest forward and its two backward kernels from the fastest backward
    among the candidates that agree; a candidate that disagrees is recorded and never chosen."""
    try:
        triton_available(args)
        # the module, not the package's function of the same name
        from llmjepa_kernels.block_causal_attention import candidate_configs, default_config
    except (Skip, ImportError) as reason:
        return {"status": f"skipped: {reason}", "records": []}
    check_tokens = args.check_tokens or min(args.tokens[0], 2048)
    check_ranges = jepa_layout(check_tokens, example, args.device)
    check_inputs = make_qkv(check_tokens, args, dtype)
    check_dout = torch.randn_like(check_inputs[0])
    ref = reference_float64(*check_inputs, check_dout, dense_visibility(*check_ranges))
    reference = (check_ranges, check_inputs, check_dout, ref)
    tokens = args.tokens[0]
    ranges = jepa_layout(tokens, example, args.device)
    inputs = make_qkv(tokens, args, dtype)
    dout = torch.randn_like(inputs[0])
    records = []
    for index, config in enumerate(candidate_configs(args.head_dim, dtype)):
        record = {"candidate": index, "tokens": tokens, "check_tokens": check_tokens, "config": config_dict(config)}
        try:
            record["check"] = check_candidate(config, args, example, dtype, reference)
            if not record["check"]["agrees"]:
                worst = max(record["check"]["errors"].items(), key=lambda kv: kv[1])
                record["status"] = f"wrong: {worst[0]} relative error {worst[1]:.2e} >= {record['check']['bound']:g}"
            else:
                fn = triton_fn(ranges, config)
                record["fwd_ms"] = bench_ms(forward_only(fn, inputs), args)
                record["fwd_bwd_ms"] = bench_ms(fwd_bwd(fn, inputs, dout), args)
                record["bwd_ms"] = record["fwd_bwd_ms"] - record["fwd_ms"]
                record["status"] = "ok"
        except Exception as err:
            record["status"] = failed(err)
        records.append(record)
        free_device(args)
        print(json.dumps(record), flush=True)
    default = config_dict(default_config(args.head_dim, dtype))
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return {"status": "failed: no candidate agreed with float64 and ran", "records": records, "default": default}
    fastest_fwd = min(ok, key=lambda r: r["fwd_ms"])
    fastest_bwd = min(ok, key=lambda r: r["bwd_ms"])
    chosen = {
        "forward": fastest_fwd["config"]["forward"],
        "dkdv": fastest_bwd["config"]["dkdv"],
        "dq": fastest_bwd["config"]["dq"],
    }
    wrong = [r["candidate"] for r in records if r["status"].startswith("wrong")]
    status = "ok" if not wrong else f"ok; candidates {wrong} disagree with float64 and were not timed"
    return {"status": status, "records": records, "chosen": chosen, "default": default}


def config_dict(config) -> dict:
    return {part: vars(getattr(config, part)).copy() for part in ("forward", "dkdv", "dq")}


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------


def tile_rows(args: argparse.Namespace, example: Example, dtype: torch.dtype) -> list[dict]:
    """Tiles the Triton forward visits and its computed / visible pairs (bench/floor.py's counts)."""
    import floor

    rows = []
    for tokens in args.tokens:
        ranges = tuple(x.cpu() for x in jepa_layout(tokens, example, torch.device("cpu")))
        for block_m, block_n in floor.triton_tiles(args.head_dim, dtype):
            tiles = floor.touched_tiles(ranges, block_m, block_n)
            causal = causal_tile_count(tokens, block_m, block_n)
            waste = floor.tile_pairs(ranges, block_m, block_n) / visible_pairs(*ranges)
            rows.append({"tokens": tokens, "tile": f"{block_m}x{block_n}", "tiles": tiles, "of_causal": tiles / causal})
            rows[-1]["computed_over_visible"] = waste
        rows.append(
            {
                "tokens": tokens,
                "tile": "torch form",
                "computed_over_visible": floor.torch_form_pairs(ranges) / visible_pairs(*ranges),
            }
        )
    return rows


def causal_tile_count(tokens: int, block_m: int, block_n: int) -> int:
    """Tiles a plain causal kernel would visit over the whole stream, for comparison."""
    key_blocks = math.ceil(tokens / block_n)
    return sum(
        min(key_blocks, (min(tokens, (m + 1) * block_m) - 1) // block_n + 1) for m in range(math.ceil(tokens / block_m))
    )


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [
        "# block_causal_attention benchmark",
        "",
        *[f"- {line}" for line in report["header"]],
        "",
        f"## Correctness at T={report['args']['check_tokens']}, {report['args']['dtype']}, vs a float64 reference",
        "",
        "relative error ||x - ref|| / ||ref||",
        "",
        "| method | out | dq | dk | dv | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["correctness"]:
        errors = " | ".join(fmt(r.get(k), ".2e") for k in ("out", "dq", "dk", "dv"))
        lines.append(f"| {r['method']} | {errors} | {r['status']}{'' if r.get('finite', True) else ' non-finite!'} |")
    lines += [
        "",
        "## Timing",
        "",
        "median ms; throughput = visible (query, key) pairs x Hq heads / forward+backward time; peak = extra CUDA "
        "memory of one forward+backward.",
        "",
        "| T | method | fwd ms | fwd+bwd ms | visible pairs | G pair-heads/s | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["timing"]:
        lines.append(
            f"| {r['tokens']} | {r['method']} | {fmt(r.get('fwd_ms'), '.3f')} | {fmt(r.get('fwd_bwd_ms'), '.3f')} "
            f"| {fmt(r.get('visible_pairs'), ',')} | {fmt(r.get('g_pair_heads_per_s'), '.1f')} "
            f"| {fmt(r.get('peak_gib'), '.2f')} | {r['status']} |"
        )
    lines += ["", "## Tiles the Triton kernels visit (per head) and computed / visible pairs", ""]
    lines += ["| T | tile | tiles | of causal | computed / visible |", "|---|---|---|---|---|"]
    for r in report["tiles"]:
        lines.append(
            f"| {r['tokens']} | {r['tile']} | {fmt(r.get('tiles'), 'd')} | {fmt(r.get('of_causal'), '.1%')} "
            f"| {r['computed_over_visible']:.2f} |"
        )
    cand = report.get("candidates")
    if cand is not None:
        lines += ["", "## Candidate tile configs", "", f"status: {cand['status']}", ""]
        if cand["records"]:
            lines += ["| # | forward | dkdv | dq | worst error vs float64 | fwd ms | fwd+bwd ms | status |"]
            lines += ["|---|---|---|---|---|---|---|---|"]
            for r in cand["records"]:
                shapes = " | ".join(kernel_text(r["config"][p]) for p in ("forward", "dkdv", "dq"))
                worst = max(r["check"]["errors"].values()) if r.get("check") else None
                lines.append(
                    f"| {r['candidate']} | {shapes} | {fmt(worst, '.2e')} | {fmt(r.get('fwd_ms'), '.3f')} "
                    f"| {fmt(r.get('fwd_bwd_ms'), '.3f')} | {r['status']} |"
                )
        if cand.get("chosen"):
            lines += ["", "| kernel | chosen | default_config |", "|---|---|---|"]
            lines += [
                f"| {p} | {kernel_text(cand['chosen'][p])} | {kernel_text(cand['default'][p])} |"
                for p in ("forward", "dkdv", "dq")
            ]
    return "\n".join(lines) + "\n"


def kernel_text(c: dict) -> str:
    return f"{c['block_m']}x{c['block_n']} w{c['num_warps']} s{c['num_stages']}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--example-len", type=int, default=300, help="tokens per JEPA example")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--check-tokens", type=int, default=4096, help="T of the float64 check; 0 skips it")
    parser.add_argument(
        "--check-methods",
        nargs="+",
        choices=("triton", "torch_form", "sdpa_dense", "flex"),
        default=["triton", "torch_form", "sdpa_dense", "flex"],
        help="methods of the float64 check",
    )
    parser.add_argument(
        "--candidates", action="store_true", help="check candidate_configs() against float64, time at --tokens[0]"
    )
    parser.add_argument("--candidates-only", action="store_true", help="--candidates without the other tables")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    parser.add_argument("--cpu-reps", type=int, default=3, help="timed calls per method on the CPU (--dry-run)")
    parser.add_argument("--dense-memory-fraction", type=float, default=0.8, help="of free memory for sdpa_dense")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the code paths, not timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "attention.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.dry_run:
        args.device = torch.device("cpu")
        torch.set_num_threads(1)  # 2 shared cores: threads waiting on each other only add noise
    elif not torch.cuda.is_available():
        raise SystemExit("bench_attention.py needs a CUDA GPU (or --dry-run); torch.cuda.is_available() is False")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("bench_attention.py: unset TRITON_INTERPRET; the interpreter cannot be benchmarked")
    else:
        args.device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    example = example_shape(args.example_len)
    device_name = torch.cuda.get_device_name() if args.device.type == "cuda" else "CPU (dry run: timings meaningless)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    header = [
        f"device: {device_name}",
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}",
        f"Hq={args.q_heads}, Hkv={args.kv_heads}, D={args.head_dim}, {args.dtype}",
        f"layout: examples of {example.length} tokens, each example's rows together: view 1 causal ({example.view1}), "
        f"predictor view ({example.predictor}) sharing view 1's first {example.shared_prefix} tokens, step segments "
        f"{example.steps}",
        "sdpa_view1 and fa4_view1: view 1 of each example alone (causal); flash_varlen: the stream with the shared "
        "ranges removed; pairs are counted on what each runs",
        f"command: {' '.join(sys.argv)}",
    ]
    print("\n".join(header), flush=True)
    torch.manual_seed(args.seed)
    print(f"seed {args.seed}", flush=True)
    report = {
        "header": header,
        "args": {k: str(v) if isinstance(v, Path | torch.device) else v for k, v in vars(args).items()},
    }
    only = args.candidates_only
    report["correctness"] = correctness(args, example, dtype) if args.check_tokens and not only else []
    report["timing"] = []
    for tokens in [] if only else args.tokens:
        ranges = jepa_layout(tokens, example, args.device)
        for name in args.methods:
            report["timing"].append(time_one(name, tokens, args, example, dtype, ranges))
    report["tiles"] = [] if only else tile_rows(args, example, dtype)
    if args.candidates or only:
        report["candidates"] = candidates(args, example, dtype)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown(report))
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main()
