"""Block-causal attention over one packed token stream: Triton forward and backward.

Query token ``i`` sees key ``j`` iff ``shared_start[i] <= j <= shared_end[i]`` (an optional shared range,
empty when ``shared_end[i] < shared_start[i]``) or ``causal_start[i] <= j <= i`` (its own causal range).
That covers plain causal segments, predictor views that also see a prefix of an earlier view,
localized step segments and block-diagonal packing, all in one stream, without a T x T mask.

Tile skipping: each program visits only the tiles its query (or key) block touches, from the visit
lists of a `BlockCausalLayout` (block_layout.py); full tiles run without mask arithmetic.

Backward follows FlashAttention-2: delta = rowsum(dO * O), then a dK/dV kernel (one program per key
block and KV head, looping over the query heads of its GQA group) and a separate dQ kernel. Two kernels
instead of one with atomics: the results are deterministic, dQ needs no fp32 scratch buffer, and the
GQA reduction of dK/dV happens in registers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .block_layout import BlockCausalLayout

__all__ = [
    "AttentionConfig",
    "BlockCausalLayout",
    "KernelConfig",
    "block_causal_attention",
    "candidate_configs",
    "default_config",
    "interpreted",
]

_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape (block_m queries x block_n keys) and launch options of one kernel."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class AttentionConfig:
    """Launch configurations of the forward kernel and of the two backward kernels."""

    forward: KernelConfig
    dkdv: KernelConfig
    dq: KernelConfig


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------

# Integers that change from one packed stream to the next. Triton would otherwise specialize them (1
# becomes a constant, multiples of 16 get a divisibility hint) and compile a new kernel for new values.
# The strides of q/k/v/out rows and heads keep their hints: they enable vectorized loads and stay fixed
# for a model (a head-major view's head stride T * head_dim is a multiple of 16 when head_dim is).
_PER_STREAM_ARGS = ["num_tokens", "stride_full", "stride_part"]


@triton.jit
def _visible(i, j, a, b, s):
    """Key j visible to query i; all arguments broadcast to the tile shape."""
    return ((j >= a) & (j <= b)) | ((j >= s) & (j <= i))


@triton.jit
def _load_rows(base, offs, stride, ok, offs_d, HEAD_DIM: tl.constexpr):
    ptrs = base + offs.to(tl.int64)[:, None] * stride + offs_d[None, :]
    return tl.load(ptrs, mask=ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _store_rows(base, offs, stride, ok, offs_d, value, HEAD_DIM: tl.constexpr):
    ptrs = base + offs.to(tl.int64)[:, None] * stride + offs_d[None, :]
    tl.store(ptrs, value, mask=ok[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _load_ranges(shared_start, shared_end, causal_start, offs, ok):
    # Rows past the stream get empty ranges, so they see nothing and contribute nothing.
    a = tl.load(shared_start + offs, mask=ok, other=0)
    b = tl.load(shared_end + offs, mask=ok, other=-1)
    s = tl.load(causal_start + offs, mask=ok, other=2147483647)
    return a, b, s


@triton.jit
def _key_tile_scores(
    q, k_base, v_base, n, offs_m, a, b, s,
    num_tokens, stride_kt, stride_vt, scale_log2,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """K and V of key block n, and the query block's log2-scaled scores against it (-inf where hidden)."""
    offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < num_tokens
    k = _load_rows(k_base, offs_n, stride_kt, col_ok, offs_d, HEAD_DIM)
    v = _load_rows(v_base, offs_n, stride_vt, col_ok, offs_d, HEAD_DIM)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
    if MASKED:
        vis = _visible(offs_m[:, None], offs_n[None, :], a[:, None], b[:, None], s[:, None])
        qk = tl.where(vis, qk, float("-inf"))
    return k, v, qk


@triton.jit
def _fwd_tile(
    acc, m_i, l_i, q, k_base, v_base, n, offs_m, a, b, s,
    num_tokens, stride_kt, stride_vt, scale_log2,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    k, v, qk = _key_tile_scores(
        q, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt, scale_log2,
        BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, PRECISION,
    )  # fmt: skip
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if MASKED:
        # A row that has seen no key yet keeps m = -inf; shift by 0 instead to avoid inf - inf.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_shift = m_new
    alpha = tl.math.exp2(m_i - m_shift)
    p = tl.math.exp2(qk - m_shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=_PER_STREAM_ARGS)
def _attn_fwd_kernel(
    Q, K, V, OUT, LSE,
    SHARED_START, SHARED_END, CAUSAL_START,
    FULL_COUNT, FULL_INDEX, PART_COUNT, PART_INDEX, stride_full, stride_part,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    num_tokens, scale_log2,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # Last query blocks first: under causal masking they tend to carry the most tiles.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    # int64 head: head * stride_qh and head * num_tokens pass 2^31 on long streams with many heads.
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < num_tokens
    q = _load_rows(Q + head * stride_qh, offs_m, stride_qt, row_ok, offs_d, HEAD_DIM)
    a, b, s = _load_ranges(SHARED_START, SHARED_END, CAUSAL_START, offs_m, row_ok)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for it in range(tl.load(FULL_COUNT + pid_m)):
        n = tl.load(FULL_INDEX + pid_m.to(tl.int64) * stride_full + it)
        acc, m_i, l_i = _fwd_tile(
            acc, m_i, l_i, q, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt,
            scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False, PRECISION,
        )  # fmt: skip
    for it in range(tl.load(PART_COUNT + pid_m)):
        n = tl.load(PART_INDEX + pid_m.to(tl.int64) * stride_part + it)
        acc, m_i, l_i = _fwd_tile(
            acc, m_i, l_i, q, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt,
            scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True, PRECISION,
        )  # fmt: skip

    # Every real row sees at least one key (checked before launch); only padding rows have l == 0.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    _store_rows(
        OUT + head * stride_oh,
        offs_m,
        stride_ot,
        row_ok,
        offs_d,
        out.to(OUT.dtype.element_ty),
        HEAD_DIM,
    )
    tl.store(LSE + head * num_tokens + offs_m, m_i + tl.math.log2(l_safe), mask=row_ok)


@triton.jit(do_not_specialize=["num_tokens"])
def _bwd_delta_kernel(
    OUT, DO, DELTA, stride_ot, stride_oh, stride_dot, stride_doh, num_tokens,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < num_tokens
    o = _load_rows(OUT + head * stride_oh, offs_m, stride_ot, row_ok, offs_d, HEAD_DIM).to(tl.float32)
    do = _load_rows(DO + head * stride_doh, offs_m, stride_dot, row_ok, offs_d, HEAD_DIM).to(tl.float32)
    tl.store(DELTA + head * num_tokens + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, m, offs_n, q_base, do_base, lse_base, delta_base,
    SHARED_START, SHARED_END, CAUSAL_START,
    num_tokens, stride_qt, stride_dot, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    offs_m = m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < num_tokens
    q = _load_rows(q_base, offs_m, stride_qt, row_ok, offs_d, HEAD_DIM)
    do = _load_rows(do_base, offs_m, stride_dot, row_ok, offs_d, HEAD_DIM)
    lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
    # Work on the transposed tile (keys x queries) so dK and dV come out of plain dots.
    qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2
    if MASKED:
        a, b, s = _load_ranges(SHARED_START, SHARED_END, CAUSAL_START, offs_m, row_ok)
        vis = _visible(offs_m[None, :], offs_n[:, None], a[None, :], b[None, :], s[None, :])
        qk_t = tl.where(vis, qk_t, float("-inf"))
    p_t = tl.math.exp2(qk_t - lse[None, :])
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=_PER_STREAM_ARGS)
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    SHARED_START, SHARED_END, CAUSAL_START,
    FULL_COUNT, FULL_INDEX, PART_COUNT, PART_INDEX, stride_full, stride_part,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    num_tokens, scale, scale_log2,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    kv_head = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    col_ok = offs_n < num_tokens
    k = _load_rows(K + kv_head * stride_kh, offs_n, stride_kt, col_ok, offs_d, HEAD_DIM)
    v = _load_rows(V + kv_head * stride_vh, offs_n, stride_vt, col_ok, offs_d, HEAD_DIM)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    num_full = tl.load(FULL_COUNT + pid_n)
    num_part = tl.load(PART_COUNT + pid_n)
    # The query heads of the GQA group share this K/V block: sum their contributions in registers.
    for g in range(GROUP):
        head = kv_head * GROUP + g
        q_base = Q + head * stride_qh
        do_base = DO + head * stride_doh
        lse_base = LSE + head * num_tokens
        delta_base = DELTA + head * num_tokens
        for it in range(num_full):
            m = tl.load(FULL_INDEX + pid_n.to(tl.int64) * stride_full + it)
            dk, dv = _dkdv_tile(
                dk, dv, k, v, m, offs_n, q_base, do_base, lse_base, delta_base,
                SHARED_START, SHARED_END, CAUSAL_START, num_tokens, stride_qt, stride_dot, scale_log2,
                BLOCK_M, BLOCK_D, HEAD_DIM, False, PRECISION,
            )  # fmt: skip
        for it in range(num_part):
            m = tl.load(PART_INDEX + pid_n.to(tl.int64) * stride_part + it)
            dk, dv = _dkdv_tile(
                dk, dv, k, v, m, offs_n, q_base, do_base, lse_base, delta_base,
                SHARED_START, SHARED_END, CAUSAL_START, num_tokens, stride_qt, stride_dot, scale_log2,
                BLOCK_M, BLOCK_D, HEAD_DIM, True, PRECISION,
            )  # fmt: skip
    dk = dk * scale
    _store_rows(
        DK + kv_head * stride_dkh,
        offs_n,
        stride_dkt,
        col_ok,
        offs_d,
        dk.to(DK.dtype.element_ty),
        HEAD_DIM,
    )
    _store_rows(
        DV + kv_head * stride_dvh,
        offs_n,
        stride_dvt,
        col_ok,
        offs_d,
        dv.to(DV.dtype.element_ty),
        HEAD_DIM,
    )


@triton.jit
def _dq_tile(
    dq, q, do, lse, delta, k_base, v_base, n, offs_m, a, b, s,
    num_tokens, stride_kt, stride_vt, scale_log2,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    MASKED: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    k, v, qk = _key_tile_scores(
        q, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt, scale_log2,
        BLOCK_N, BLOCK_D, HEAD_DIM, MASKED, PRECISION,
    )  # fmt: skip
    p = tl.math.exp2(qk - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit(do_not_specialize=_PER_STREAM_ARGS)
def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    SHARED_START, SHARED_END, CAUSAL_START,
    FULL_COUNT, FULL_INDEX, PART_COUNT, PART_INDEX, stride_full, stride_part,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh,
    num_tokens, scale, scale_log2,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    kv_head = head // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < num_tokens
    q = _load_rows(Q + head * stride_qh, offs_m, stride_qt, row_ok, offs_d, HEAD_DIM)
    do = _load_rows(DO + head * stride_doh, offs_m, stride_dot, row_ok, offs_d, HEAD_DIM)
    lse = tl.load(LSE + head * num_tokens + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + head * num_tokens + offs_m, mask=row_ok, other=0.0)
    a, b, s = _load_ranges(SHARED_START, SHARED_END, CAUSAL_START, offs_m, row_ok)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for it in range(tl.load(FULL_COUNT + pid_m)):
        n = tl.load(FULL_INDEX + pid_m.to(tl.int64) * stride_full + it)
        dq = _dq_tile(
            dq, q, do, lse, delta, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt,
            scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, False, PRECISION,
        )  # fmt: skip
    for it in range(tl.load(PART_COUNT + pid_m)):
        n = tl.load(PART_INDEX + pid_m.to(tl.int64) * stride_part + it)
        dq = _dq_tile(
            dq, q, do, lse, delta, k_base, v_base, n, offs_m, a, b, s, num_tokens, stride_kt, stride_vt,
            scale_log2, BLOCK_N, BLOCK_D, HEAD_DIM, True, PRECISION,
        )  # fmt: skip
    dq = dq * scale
    _store_rows(
        DQ + head * stride_dqh,
        offs_m,
        stride_dqt,
        row_ok,
        offs_d,
        dq.to(DQ.dtype.element_ty),
        HEAD_DIM,
    )


# ----------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make the tensors' GPU current for a launch: Triton launches on the current CUDA device, and
    tensors on cuda:1 launched while cuda:0 is current would fault. CPU tensors (interpreter): no-op."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_INTERPRETED = isinstance(_attn_fwd_kernel, InterpretedFunction)


def interpreted() -> bool:
    """True when Triton runs its CPU interpreter (TRITON_INTERPRET=1 was set before importing triton)."""
    return _INTERPRETED


def _config(forward: tuple, dkdv: tuple, dq: tuple) -> AttentionConfig:
    return AttentionConfig(KernelConfig(*forward), KernelConfig(*dkdv), KernelConfig(*dq))


# Per (16-bit?, head_dim bucket): candidate configs, the default first. Entries are (block_m, block_n,
# num_warps, num_stages) of the forward, dK/dV and dQ kernels. 16-bit dots on sm_90 become wgmma where
# the dot's M side is 64 rows per warpgroup (forward/dQ: block_m >= 64; dK/dV: block_n >= 64) and the
# accumulators fit; IEEE fp32 dots run on FMA units (no tensor cores, no wgmma) and need small tiles.
_CANDIDATES: dict[tuple[bool, int], list[AttentionConfig]] = {
    (True, 64): [
        _config((128, 64, 8, 3), (64, 64, 4, 2), (128, 64, 8, 2)),
        _config((64, 64, 4, 3), (64, 64, 8, 2), (64, 64, 4, 2)),
    ],
    (True, 128): [
        _config((128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 8, 2)),
        _config((64, 64, 4, 2), (32, 64, 8, 2), (128, 64, 8, 2)),
        _config((128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2)),
    ],
    (True, 256): [
        _config((64, 64, 8, 1), (32, 32, 8, 1), (32, 16, 8, 1)),
        _config((64, 32, 8, 1), (16, 32, 8, 1), (64, 32, 4, 1)),  # dQ: wgmma on sm_90, spills on sm_80
        _config((128, 32, 8, 1), (32, 16, 8, 1), (32, 32, 8, 1)),
    ],
    (False, 64): [
        _config((64, 32, 8, 1), (32, 32, 8, 1), (64, 32, 8, 1)),
        _config((32, 32, 4, 1), (16, 32, 4, 1), (32, 32, 4, 1)),
    ],
    (False, 128): [
        _config((32, 16, 8, 1), (16, 32, 8, 1), (32, 16, 8, 1)),
        _config((16, 32, 8, 1), (16, 16, 4, 1), (16, 32, 8, 1)),
    ],
    (False, 256): [
        _config((16, 16, 4, 1), (16, 16, 8, 1), (16, 16, 4, 1)),
        _config((16, 16, 8, 1), (16, 32, 8, 1), (16, 16, 8, 1)),
    ],
}


def candidate_configs(head_dim: int, dtype: torch.dtype) -> list[AttentionConfig]:
    """A few configs per head_dim bucket and dtype for a GPU run to time, default_config's first.

    Entry i holds the i-th candidate of each kernel; the kernels run apart, so a timing run may pick
    each kernel's best candidate on its own. Every candidate compiles without register spills for
    sm_90, the GPUs the acceptance run times on (`bench/aot_compile.py --arch 90 --configs candidates`,
    2026-11-24, GQA group 1 and 4, fp16/bf16/fp32); not all of them for sm_80 (the 16-bit head_dim 256
    dQ of entry 1 spills there).
    """
    if interpreted():
        return [default_config(head_dim, dtype)]
    bucket = 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256
    return list(_CANDIDATES[(dtype != torch.float32, bucket)])


def default_config(head_dim: int, dtype: torch.dtype) -> AttentionConfig:
    """Tile shapes per kernel: head_dim bucket (<= 64, <= 128, <= 256) and fp32 vs 16-bit.

    Under the interpreter small tiles keep numpy fast. On GPUs: the largest tiles found that compile
    without register spills, with wgmma on sm_90 wherever a 16-bit kernel's tile allows it without
    spilling; not timed tunings (candidate_configs lists alternatives for a GPU run to time).
    Checked with `bench/aot_compile.py --arch 90` and `--arch 80` (triton 3.9, its bundled ptxas -v,
    no GPU; 2026-11-24): every kernel, fp16/bf16/fp32, head_dim 64/128/256, GQA group 1 and 4
    compiles with 0 spill bytes on both; tables in bench/results/aot_sm90.md and aot_sm80.md. wgmma on
    sm_90: every 16-bit forward kernel, and dK/dV and dQ at head_dim 64 and 128. At head_dim 256 they
    stay on mma.sync: every dK/dV tile with block_n 64 spills on sm_90, and the one dQ tile found with
    wgmma and no spill there (64 x 32, 4 warps, 255 registers) spills 416 bytes on sm_80.
    """
    if interpreted():
        small = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
        return AttentionConfig(forward=small, dkdv=small, dq=small)
    return candidate_configs(head_dim, dtype)[0]


def _block_d(head_dim: int) -> int:
    # tl.arange needs a power of two and tl.dot a K dimension of at least 16.
    return max(16, triton.next_power_of_2(head_dim))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 dots; TF32 would cost about three decimal digits. 16-bit ignores it.
    return "ieee" if dtype == torch.float32 else "tf32"


def _rows_last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockCausalLayout) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape (T, heads, head_dim), got {tuple(x.shape)}")
    if q.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == layout.device):
        raise ValueError(
            f"q, k, v and the ranges must be on one device, got {q.device}, {k.device}, {v.device}, {layout.device}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    t, hq, d = q.shape
    ranged = layout.shared_start.shape[0]  # a tensor size, not layout.num_tokens: symbolic under torch.compile
    if k.shape[0] != t or ranged != t:
        raise ValueError(f"q, k/v and the ranges must have the same number of tokens, got {t}, {k.shape[0]}, {ranged}")
    if k.shape[2] != d:
        raise ValueError(f"q and k/v must have the same head_dim, got {d} and {k.shape[2]}")
    if d > _MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is larger than the supported {_MAX_HEAD_DIM}")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    if q.device.type == "cpu" and not interpreted():
        raise RuntimeError(
            "block_causal_attention got CPU tensors but Triton is not in interpreter mode; set "
            "TRITON_INTERPRET=1 before importing triton, or move the tensors to a GPU"
        )


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockCausalLayout,
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward launch from a layout (benchmarks and the AOT checks call it directly)."""
    lists = layout.tiles(config.block_m, config.block_n).by_query
    return _launch_forward(q, k, v, _ranges(layout), _list_tensors(lists), scale, config)


def _launch_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: Sequence[torch.Tensor],
    lists: Sequence[torch.Tensor],
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    t, hq, d = q.shape
    full_count, full_index, part_count, part_index = lists
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(hq, t, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(t, config.block_m), hq)
    with _device_guard(q.device):
        _attn_fwd_kernel[grid](
            q, k, v, out, lse, *ranges,
            full_count, full_index, part_count, part_index, full_index.stride(0), part_index.stride(0),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1),
            t, scale * _LOG2E,
            GROUP=hq // k.shape[1], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_D=_block_d(d), HEAD_DIM=d, PRECISION=_precision(q.dtype),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    return out, lse


def _backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    layout: BlockCausalLayout,
    scale: float,
    config: AttentionConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three backward launches from a layout (benchmarks and the AOT checks call it directly)."""
    lists = _layout_lists(layout, config)
    return _launch_backward(dout, q, k, v, out, lse, _ranges(layout), lists, scale, config)


def _launch_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    ranges: Sequence[torch.Tensor],
    lists: Sequence[torch.Tensor],
    scale: float,
    config: AttentionConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lists: the 12 tensors of `_layout_lists` (forward's by_query, dK/dV's by_key, dQ's by_query)."""
    dout = _rows_last_contiguous(dout)
    delta = _delta(out, dout, config.dq)
    dk, dv = _dkdv(dout, q, k, v, lse, delta, ranges, lists[4:8], scale, config.dkdv)
    dq = _dq(dout, q, k, v, lse, delta, ranges, lists[8:12], scale, config.dq)
    return dq, dk, dv


def _delta(out: torch.Tensor, dout: torch.Tensor, config: KernelConfig) -> torch.Tensor:
    t, hq, d = out.shape
    delta = torch.empty(hq, t, dtype=torch.float32, device=out.device)
    with _device_guard(out.device):
        _bwd_delta_kernel[(triton.cdiv(t, config.block_m), hq)](
            out, dout, delta, out.stride(0), out.stride(1), dout.stride(0), dout.stride(1), t,
            BLOCK_M=config.block_m, BLOCK_D=_block_d(d), HEAD_DIM=d, num_warps=config.num_warps,
        )  # fmt: skip
    return delta


def _dkdv(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    ranges: Sequence[torch.Tensor],
    lists: Sequence[torch.Tensor],
    scale: float,
    config: KernelConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    t, hq, d = q.shape
    full_count, full_index, part_count, part_index = lists
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    with _device_guard(q.device):
        _attn_bwd_dkdv_kernel[(triton.cdiv(t, config.block_n), k.shape[1])](
            q, k, v, dout, dk, dv, lse, delta, *ranges,
            full_count, full_index, part_count, part_index, full_index.stride(0), part_index.stride(0),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            dout.stride(0), dout.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            t, scale, scale * _LOG2E,
            GROUP=hq // k.shape[1], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_D=_block_d(d), HEAD_DIM=d, PRECISION=_precision(q.dtype),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    return dk, dv


def _dq(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    delta: torch.Tensor,
    ranges: Sequence[torch.Tensor],
    lists: Sequence[torch.Tensor],
    scale: float,
    config: KernelConfig,
) -> torch.Tensor:
    t, hq, d = q.shape
    full_count, full_index, part_count, part_index = lists
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    with _device_guard(q.device):
        _attn_bwd_dq_kernel[(triton.cdiv(t, config.block_m), hq)](
            q, k, v, dout, dq, lse, delta, *ranges,
            full_count, full_index, part_count, part_index, full_index.stride(0), part_index.stride(0),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1),
            t, scale, scale * _LOG2E,
            GROUP=hq // k.shape[1], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            BLOCK_D=_block_d(d), HEAD_DIM=d, PRECISION=_precision(q.dtype),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
    return dq


# ----------------------------------------------------------------------------------------------------
# Custom ops: what torch.compile sees
# ----------------------------------------------------------------------------------------------------
# The kernels run behind two torch.library custom ops, forward and backward, whose arguments are tensors
# and plain numbers only: Dynamo traces the call without entering the launchers (no graph break on a
# layout object or a Triton launch), the fake implementations give the outputs' shapes and strides
# without running anything, and the stream length stays a symbolic size (one graph for every stream).
# Schemas spelled out rather than inferred from the annotations: the same on every torch the kernels run with.


def _ranges(layout: BlockCausalLayout) -> list[torch.Tensor]:
    return [layout.shared_start, layout.shared_end, layout.causal_start]


def _list_tensors(lists) -> list[torch.Tensor]:
    return [lists.full_count, lists.full_index, lists.part_count, lists.part_index]


def _layout_lists(layout: BlockCausalLayout, config: AttentionConfig) -> list[torch.Tensor]:
    """The 12 visit-list tensors the three kernels read: forward by_query, dK/dV by_key, dQ by_query."""
    forward = layout.tiles(config.forward.block_m, config.forward.block_n).by_query
    dkdv = layout.tiles(config.dkdv.block_m, config.dkdv.block_n).by_key
    dq = layout.tiles(config.dq.block_m, config.dq.block_n).by_query
    return [*_list_tensors(forward), *_list_tensors(dkdv), *_list_tensors(dq)]


def _config_ints(config: AttentionConfig) -> list[int]:
    """An AttentionConfig as the 12 ints a custom op can take (block_m, block_n, warps, stages per kernel)."""
    return [x for kernel in (config.forward, config.dkdv, config.dq) for x in astuple(kernel)]


def _config_of(ints: Sequence[int]) -> AttentionConfig:
    return AttentionConfig(*(KernelConfig(*ints[i : i + 4]) for i in (0, 4, 8)))


@torch.library.custom_op(
    "llmjepa::block_causal_attention",
    mutates_args=(),
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor[] ranges, Tensor[] lists, float scale, int[] config) -> (Tensor, Tensor)"
    ),
)
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: list[torch.Tensor],
    lists: list[torch.Tensor],
    scale: float,
    config: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out (T, Hq, D) contiguous, lse (Hq, T) float32 (log2 domain), for the backward."""
    return _launch_forward(q, k, v, ranges, lists[0:4], scale, _config_of(config).forward)


@_attention_op.register_fake
def _attention_fake(q, k, v, ranges, lists, scale, config):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op(
    "llmjepa::block_causal_attention_backward",
    mutates_args=(),
    schema=(
        "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor[] ranges, "
        "Tensor[] lists, float scale, int[] config) -> (Tensor, Tensor, Tensor)"
    ),
)
def _attention_backward_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    ranges: list[torch.Tensor],
    lists: list[torch.Tensor],
    scale: float,
    config: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), each contiguous in its input's shape."""
    return _launch_backward(dout, q, k, v, out, lse, ranges, lists, scale, _config_of(config))


@_attention_backward_op.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, ranges, lists, scale, config):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, ranges, lists, scale, config = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, *ranges, *lists)
    ctx.scale, ctx.config = scale, config


def _attention_autograd(ctx, dout: torch.Tensor, _dlse: torch.Tensor | None):
    q, k, v, out, lse, *rest = ctx.saved_tensors
    ranges, lists = rest[:3], rest[3:]
    dq, dk, dv = _attention_backward_op(dout, q, k, v, out, lse, ranges, lists, ctx.scale, ctx.config)
    return dq, dk, dv, [None] * len(ranges), [None] * len(lists), None, None  # a list input: a list of None


_attention_op.register_autograd(_attention_autograd, setup_context=_attention_setup_context)


def block_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    shared_start: torch.Tensor,
    shared_end: torch.Tensor,
    causal_start: torch.Tensor,
    scale: float | None = None,
    *,
    layout: BlockCausalLayout | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Attention of one packed stream where query i sees keys in [shared_start[i], shared_end[i]]
    (empty when shared_end[i] < shared_start[i]) and in [causal_start[i], i].

    q: (T, Hq, D); k, v: (T, Hkv, D) with Hq a multiple of Hkv (GQA); float16, bfloat16 or float32.
    Range tensors: int32 (int64 accepted) of shape (T,). scale defaults to 1 / sqrt(D).
    layout: a BlockCausalLayout built from the same three ranges, to reuse its validation and tile
    lists across calls (the range arguments are then ignored). config: tile shapes, default_config().
    Returns (T, Hq, D) in q's dtype. Raises ValueError, before any launch, naming the first query
    token whose both ranges are empty.
    """
    if layout is None:
        layout = BlockCausalLayout(shared_start, shared_end, causal_start)
    _check_inputs(q, k, v, layout)
    d = q.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    config = config or default_config(d, q.dtype)
    q, k, v = (_rows_last_contiguous(x) for x in (q, k, v))
    out, _ = _attention_op(q, k, v, _ranges(layout), _layout_lists(layout, config), scale, _config_ints(config))
    return out
