"""Compile every Triton kernel of llmjepa_kernels for a GPU architecture without a GPU.

For each dtype (fp16, bf16, fp32), head_dim (64, 128, 256) and GQA group (1, 4), the attention
launchers run on small CPU tensors with the kernels swapped for recorders; each recorded launch is
bound by Triton's own argument binder (the specialization JITFunction.run would compute, under the
tile configuration default_config returns) and compiled with triton.compile for GPUTarget("cuda",
ARCH, 32), Triton's bundled ptxas doing the register allocation. The fused pair loss (forward and
backward, every loss kind) is compiled the same way at hidden sizes 2048 and 4096. One JSON record
per compiled kernel: registers, spill bytes (ptxas -v), shared memory (Triton's metadata), whether
the PTX uses wgmma, compile seconds; a Markdown table with --md.

    python bench/aot_compile.py --arch 90 --json bench/results/aot_sm90.json --md bench/results/aot_sm90.md

--subset ci compiles the representative subset CI checks: bf16 and fp32, head_dim 64 and 128, group
4, every attention kernel, the pair loss at hidden 2048 (tests/test_kernel_compile.py); --subset smoke
its head_dim 128 part and the bf16 pair loss (a one-minute check). --configs candidates compiles
candidate_configs() instead of default_config(). Exit status 1 when a kernel fails to compile.
Needs triton and its bundled ptxas, not a GPU; refuses to run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Fusion on, as the kernels get at run time; set here only to silence triton 3.9's warning about the default.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import importlib

import torch
import triton
from triton._C.libtriton import ir
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from llmjepa_kernels.block_causal_attention import AttentionConfig, BlockCausalLayout

# The modules, not the functions of the same names that llmjepa_kernels exports.
attention = importlib.import_module("llmjepa_kernels.block_causal_attention")
cosine_loss = importlib.import_module("llmjepa_kernels.cosine_loss")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = (64, 128, 256)
GROUPS = (1, 4)
HIDDEN_SIZES = (2048, 4096)
ATTENTION_KERNELS = ("_attn_fwd_kernel", "_bwd_delta_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")
PAIR_KERNELS = ("_pair_loss_fwd_kernel", "_pair_loss_bwd_kernel")
KV_HEADS = 2  # the kernels' code does not depend on the head counts, only on the group
TOKENS = 300  # nor on T (no specialization on it); small keeps the CPU tensors small


@dataclass
class Launch:
    """One recorded kernel launch: the kernel, its grid, and the arguments exactly as passed."""

    kernel: JITFunction
    grid: tuple
    args: tuple
    kwargs: dict


class _Recorder:
    """Stands in for a JIT kernel: kernel[grid](*args, **kwargs) records the launch instead of running it."""

    def __init__(self, kernel: JITFunction, launches: list[Launch]) -> None:
        self.kernel = kernel
        self.launches = launches

    def __getitem__(self, grid: tuple) -> Callable:
        return lambda *args, **kwargs: self.launches.append(Launch(self.kernel, grid, args, kwargs))


@contextlib.contextmanager
def recorded_launches(module, names: tuple[str, ...]) -> Iterator[list[Launch]]:
    """Within the block, launches of module.<name> are recorded into the yielded list, not run."""
    launches: list[Launch] = []
    saved = {name: getattr(module, name) for name in names}
    try:
        for name, kernel in saved.items():
            setattr(module, name, _Recorder(kernel, launches))
        yield launches
    finally:
        for name, kernel in saved.items():
            setattr(module, name, kernel)


def jit_function(kernel) -> JITFunction:
    """The JITFunction of a kernel, also when Triton's interpreter made it an InterpretedFunction
    (same Python function, same do_not_specialize arguments), so its binder can be inspected."""
    if isinstance(kernel, JITFunction):
        return kernel
    return JITFunction(kernel.fn, **kernel.kwargs)


def specialization(launch: Launch, arch: int = 90) -> tuple[list, dict, dict]:
    """(specialization, bound args, launch options) as JITFunction.run computes them for this launch."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    fn = jit_function(launch.kernel)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, spec, options = binder(*launch.args, **launch.kwargs)
    return spec, bound_args, options


def attention_launches(
    dtype: torch.dtype,
    head_dim: int,
    group: int,
    config: AttentionConfig,
    tokens: int = TOKENS,
    head_major: bool = True,
    layout: BlockCausalLayout | None = None,
) -> list[Launch]:
    """The four attention launches (forward, delta, dK/dV, dQ) one forward and backward make.

    head_major: q, k, v as the transformers integration passes them, (T, H, D) views of (H, T, D)
    tensors, so their head stride is T * D; else contiguous (T, H, D).
    """
    hq = KV_HEADS * group

    def qkv(heads: int) -> torch.Tensor:
        if head_major:
            return torch.empty(heads, tokens, head_dim, dtype=dtype).transpose(0, 1)
        return torch.empty(tokens, heads, head_dim, dtype=dtype)

    q, k, v = qkv(hq), qkv(KV_HEADS), qkv(KV_HEADS)
    if layout is None:
        i = torch.arange(tokens)
        layout = BlockCausalLayout(torch.zeros_like(i), i - 1, torch.zeros_like(i))  # plain causal
    scale = head_dim**-0.5
    with recorded_launches(attention, ATTENTION_KERNELS) as launches:
        out, lse = attention._forward(q, k, v, layout, scale, config.forward)
        attention._backward(torch.empty_like(out), q, k, v, out, lse, layout, scale, config)
    return launches


def pair_loss_launches(dtype: torch.dtype, hidden: int, kind: str, pairs: int = 5, tokens: int = 64) -> list[Launch]:
    """The forward and backward launches of the fused pair loss."""
    h = torch.empty(tokens, hidden, dtype=dtype)
    index = torch.arange(2 * pairs) % tokens
    with recorded_launches(cosine_loss, PAIR_KERNELS) as launches:
        pair_loss_forward_backward(h, index[:pairs], index[pairs:], kind)
    return launches


def pair_loss_forward_backward(h: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, kind: str) -> None:
    """The fused pair loss's forward and backward custom ops, called directly (mean over pairs)."""
    code = cosine_loss._KINDS[kind]
    _, cos, stats = cosine_loss._pair_loss_op(h, pred, target, code, "mean", 1e-8, False)
    cosine_loss._pair_loss_backward_op(torch.ones(()), h, pred, target, cos, stats, code, "mean", 1e-8)


def source_ttir(launch: Launch, arch: int = 90) -> str:
    """The Triton IR the code generator emits for this launch, before any pass (SSA values keep the
    Python names: %head, %stride_qh). Fast: no ptxas. Needs the compiled kernels, not the interpreter."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = jit_function(launch.kernel)
    spec, bound_args, options = specialization(launch, arch)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound_args, spec, options)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    source = ASTSource(fn, signature, constexprs, attrs)
    codegen = backend.get_codegen_implementation(options)
    return str(source.make_ir(target, options, codegen, backend.get_module_map(), context))


_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile one recorded launch for sm_<arch>; registers and spills from ptxas -v, shared memory and
    wgmma from Triton's output. Errors are recorded, not raised."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    fn = jit_function(launch.kernel)
    spec, bound_args, options = specialization(launch, arch)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound_args, spec, options)
    record = {"num_warps": options.num_warps, "num_stages": options.num_stages}
    record.update(regs=None, spill_bytes=None, shared_bytes=None, uses_wgmma=None, ok=False, error="")
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with _ptxas_log(), contextlib.redirect_stdout(log):
            source = ASTSource(fn, signature, constexprs, attrs)
            compiled = triton.compile(source, target=target, options=options.__dict__)
    except Exception as error:  # Triton's compile and resource errors derive from Exception
        message = str(error).strip()
        record["error"] = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
        record["compile_s"] = round(time.perf_counter() - start, 2)
        return record
    record["compile_s"] = round(time.perf_counter() - start, 2)
    text = log.getvalue()
    regs = _REGS.findall(text)
    spills = _SPILLS.findall(text)
    if not regs or not spills:
        record["error"] = "no ptxas -v statistics in the compile log"
        return record
    record["regs"] = int(regs[-1])
    record["spill_bytes"] = int(spills[-1][0]) + int(spills[-1][1])
    record["shared_bytes"] = int(compiled.metadata.shared)
    record["uses_wgmma"] = "wgmma" in compiled.asm["ptx"]
    record["ok"] = True
    return record


@contextlib.contextmanager
def _ptxas_log() -> Iterator[None]:
    # Always compile (a cache hit would skip ptxas and its -v log) and have Triton print that log.
    knobs = triton.knobs
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = True, True
    try:
        yield
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved


def _kernel_config(launch: Launch) -> dict:
    kw = launch.kwargs
    return {
        "block_m": kw.get("BLOCK_M"),
        "block_n": kw.get("BLOCK_N"),
        "num_warps": kw.get("num_warps", 4),
        "num_stages": kw.get("num_stages"),
    }


def attention_jobs(dtypes, head_dims, groups, configs: str) -> Iterator[tuple[dict, Launch]]:
    for dtype_name in dtypes:
        for head_dim in head_dims:
            choices = _configs(head_dim, DTYPES[dtype_name], configs)
            for group in groups:
                for index, config in enumerate(choices):
                    for launch in attention_launches(DTYPES[dtype_name], head_dim, group, config):
                        name = launch.kernel.__name__
                        info = {"kernel": name, "dtype": dtype_name, "head_dim": head_dim, "group": group}
                        if configs == "candidates":
                            info["candidate"] = index
                        yield {**info, **_kernel_config(launch)}, launch


def _configs(head_dim: int, dtype: torch.dtype, configs: str) -> list[AttentionConfig]:
    if configs == "default":
        return [attention.default_config(head_dim, dtype)]
    return attention.candidate_configs(head_dim, dtype)


def pair_jobs(dtypes, hidden_sizes, kinds) -> Iterator[tuple[dict, Launch]]:
    for dtype_name in dtypes:
        for hidden in hidden_sizes:
            for kind in kinds:
                for launch in pair_loss_launches(DTYPES[dtype_name], hidden, kind):
                    info = {"kernel": launch.kernel.__name__, "dtype": dtype_name, "head_dim": None, "group": None}
                    info.update(hidden=hidden, kind=kind, block_m=None, block_n=launch.kwargs["BLOCK_D"])
                    info.update(num_warps=launch.kwargs.get("num_warps", 4), num_stages=None)
                    yield info, launch


def jobs(subset: str, configs: str) -> list[tuple[dict, Launch]]:
    if subset == "smoke":
        return [
            *attention_jobs(("bf16", "fp32"), (128,), (4,), configs),
            *pair_jobs(("bf16",), (2048,), ("cosine",)),
        ]
    if subset == "ci":
        return [
            *attention_jobs(("bf16", "fp32"), (64, 128), (4,), configs),
            *pair_jobs(("bf16", "fp32"), (2048,), ("cosine",)),
        ]
    return [
        *attention_jobs(tuple(DTYPES), HEAD_DIMS, GROUPS, configs),
        *pair_jobs(tuple(DTYPES), HIDDEN_SIZES, tuple(cosine_loss._KINDS)),
    ]


def run(arch: int, subset: str = "all", configs: str = "default", log: Callable[[str], None] = print) -> list[dict]:
    records = []
    # The delta kernel does not depend on the group nor on most of the config: each distinct
    # specialization is compiled once and its result copied.
    cache: dict[str, dict] = {}
    for info, launch in jobs(subset, configs):
        spec, _, options = specialization(launch, arch)
        key = f"{launch.kernel.__name__}|{spec}|{sorted(options.items())}"
        if key not in cache:
            cache[key] = compile_launch(launch, arch)
        record = {**info, "arch": arch, **cache[key]}
        records.append(record)
        log(_line(record))
    return records


def _line(r: dict) -> str:
    if r["head_dim"]:
        shape = f"{r['dtype']} hd{r['head_dim']} g{r['group']}"
    else:
        shape = f"{r['dtype']} {r['hidden']} {r['kind']}"
    tiles = f"{r['block_m']}x{r['block_n']} w{r['num_warps']} s{r['num_stages']}"
    if not r["ok"]:
        return f"FAIL {r['kernel']} {shape} {tiles}: {r['error']}"
    return (
        f"{r['kernel']:22s} {shape:18s} {tiles:18s} regs {r['regs']:3d} spill {r['spill_bytes']:4d} "
        f"smem {r['shared_bytes']:6d} wgmma {str(r['uses_wgmma']):5s} {r['compile_s']:.1f}s"
    )


def markdown(records: list[dict], arch: int) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"# Triton kernels compiled for sm_{arch} (no GPU)",
        "",
        f"bench/aot_compile.py, {date}: triton {triton.__version__}, its bundled ptxas, torch {torch.__version__}.",
        "Registers and spills from ptxas -v, shared memory from Triton's metadata, wgmma from the PTX. "
        "Compile seconds on a shared 2-core CPU (a repeated specialization is compiled once).",
        "",
        "| kernel | dtype | head_dim / hidden | group | block_m x block_n | warps | stages | regs | spill B "
        "| shared B | wgmma | ok | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        size = r["head_dim"] if r["head_dim"] else f"{r['hidden']} ({r['kind']})"
        if r["block_m"] is None:
            tiles = f"BLOCK_D {r['block_n']}"
        else:
            tiles = f"{r['block_m']} x {r['block_n']}" if r["block_n"] else f"{r['block_m']} rows"
        ok = "yes" if r["ok"] else f"no: {r['error']}"
        lines.append(
            f"| {r['kernel']} | {r['dtype']} | {size} | {r['group'] or ''} | {tiles} | {r['num_warps']} "
            f"| {r['num_stages'] if r['num_stages'] is not None else ''} | {r['regs']} | {r['spill_bytes']} "
            f"| {r['shared_bytes']} | {'yes' if r['uses_wgmma'] else 'no'} | {ok} | {r.get('compile_s', '')} |"
        )
    failed = sum(not r["ok"] for r in records)
    spilled = sum(bool(r["ok"] and r["spill_bytes"]) for r in records)
    lines += ["", f"{len(records)} kernels, {failed} failed to compile, {spilled} spill.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, choices=(80, 90), required=True, help="compute capability: 80 or 90")
    parser.add_argument("--json", required=True, help="write the records here")
    parser.add_argument("--md", help="also write a Markdown table here")
    parser.add_argument("--subset", choices=("all", "ci", "smoke"), default="all")
    parser.add_argument("--configs", choices=("default", "candidates"), default="default")
    args = parser.parse_args(argv)
    if not isinstance(attention._attn_fwd_kernel, JITFunction):
        print("aot_compile.py: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    records = run(args.arch, args.subset, args.configs, log=lambda line: print(line, flush=True))
    Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(records, args.arch))
    failed = [r for r in records if not r["ok"]]
    spilled = [r for r in records if r["ok"] and r["spill_bytes"]]
    print(
        f"{len(records)} kernels for sm_{args.arch} in {time.perf_counter() - start:.0f} s: "
        f"{len(failed)} failed, {len(spilled)} spill"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
