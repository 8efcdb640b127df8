"""Fused JEPA pair loss over final hidden states: gather, norms and dot in one Triton kernel.

For pairs (P[k], Q[k]) of rows of H (T, D), the per-pair loss is
  cosine: 1 - cos(H[P[k]], H[Q[k]])   (epsilon as torch.nn.functional.cosine_similarity)
  l2:     ||H[P[k]] - H[Q[k]]||_2
  mse:    mean over features of (H[P[k]] - H[Q[k]])^2
reduced by "mean" or "sum" over pairs. One program per pair loops over D in blocks, accumulating in
fp32; the gathered rows are never materialised.

Epsilon, as in torch 2.13 (aten cosine_similarity): each norm is clamped separately,
cos = <a, b> / (max(|a|, eps) * max(|b|, eps)), and the clamp is invisible to autograd, so the
gradient uses d|a|/da = a / |a| (0 at a = 0) with the clamped norms as values.

Backward: one program per pair adds its two row gradients into an fp32 dH buffer with atomics. An
index may occur in many pairs, and as predictor and target at once, so rows collide; atomics handle
any multiplicity without a sort/segment pass, and only the rows named by pairs are touched. The
summation order of colliding rows is not deterministic (fp32 rounding level).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
import triton
import triton.language as tl

__all__ = ["cosine_jepa_loss"]

_KINDS = {"cosine": 0, "l2": 1, "mse": 2}
_REDUCTIONS = ("mean", "sum")
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# P, Q (and GRAD) are read one scalar per program, so their alignment buys nothing, while index
# tensors sliced from one pair tensor change alignment with the pair count: no hint, no recompiles.
# The pair count is the grid; T never reaches the kernels; stride_h and dim are fixed for a model.
@triton.jit(do_not_specialize_on_alignment=["P", "Q"])
def _pair_loss_fwd_kernel(
    H, P, Q, LOSS, COS, STATS, stride_h, dim, eps,
    KIND: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0).to(tl.int64)  # pair * 3 in 64 bits
    row_a = tl.load(P + pair).to(tl.int64)
    row_b = tl.load(Q + pair).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_D], dtype=tl.float32)
    sq_a = tl.zeros([BLOCK_D], dtype=tl.float32)
    sq_b = tl.zeros([BLOCK_D], dtype=tl.float32)
    sq_diff = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        cols = start + offs
        ok = cols < dim
        a = tl.load(H + row_a * stride_h + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(H + row_b * stride_h + cols, mask=ok, other=0.0).to(tl.float32)
        dot += a * b
        sq_a += a * a
        sq_b += b * b
        if KIND != 0:
            diff = a - b
            sq_diff += diff * diff
    norm_a = tl.sqrt(tl.sum(sq_a, 0))
    norm_b = tl.sqrt(tl.sum(sq_b, 0))
    cos = tl.sum(dot, 0) / (tl.maximum(norm_a, eps) * tl.maximum(norm_b, eps))
    if KIND == 0:
        loss = 1.0 - cos
        dist = 0.0
    elif KIND == 1:
        dist = tl.sqrt(tl.sum(sq_diff, 0))
        loss = dist
    else:
        dist = 0.0
        loss = tl.sum(sq_diff, 0) / dim
    tl.store(LOSS + pair, loss)
    tl.store(COS + pair, cos)
    tl.store(STATS + pair * 3 + 0, norm_a)
    tl.store(STATS + pair * 3 + 1, norm_b)
    tl.store(STATS + pair * 3 + 2, dist)


@triton.jit(do_not_specialize_on_alignment=["P", "Q", "GRAD"])
def _pair_loss_bwd_kernel(
    H, P, Q, COS, STATS, GRAD, DH, stride_h, dim, eps, grad_scale,
    KIND: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0).to(tl.int64)  # pair * 3 in 64 bits
    row_a = tl.load(P + pair).to(tl.int64)
    row_b = tl.load(Q + pair).to(tl.int64)
    # d(reduced loss) / d(pair loss): the incoming scalar gradient, divided by n for "mean".
    w = tl.load(GRAD).to(tl.float32) * grad_scale
    norm_a = tl.load(STATS + pair * 3 + 0)
    norm_b = tl.load(STATS + pair * 3 + 1)
    dist = tl.load(STATS + pair * 3 + 2)
    cos = tl.load(COS + pair)
    clamped_a = tl.maximum(norm_a, eps)
    clamped_b = tl.maximum(norm_b, eps)
    # Loss 1 - cos: dL/da = -w * (b / (|a|c |b|c) - cos * a / (|a|c |a|)), the last term 0 at a = 0.
    cross = -w / (clamped_a * clamped_b)
    self_a = tl.where(norm_a > 0.0, w * cos / (clamped_a * tl.where(norm_a > 0.0, norm_a, 1.0)), 0.0)
    self_b = tl.where(norm_b > 0.0, w * cos / (clamped_b * tl.where(norm_b > 0.0, norm_b, 1.0)), 0.0)
    # l2: dL/da = w (a - b) / |a - b| (0 at a = b, like torch's norm backward); mse: 2 w (a - b) / D.
    if KIND == 1:
        diff_coef = tl.where(dist > 0.0, w / tl.where(dist > 0.0, dist, 1.0), 0.0)
    else:
        diff_coef = 2.0 * w / dim
    offs = tl.arange(0, BLOCK_D)
    for start in range(0, dim, BLOCK_D):
        cols = start + offs
        ok = cols < dim
        a = tl.load(H + row_a * stride_h + cols, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(H + row_b * stride_h + cols, mask=ok, other=0.0).to(tl.float32)
        if KIND == 0:
            grad_a = cross * b + self_a * a
            grad_b = cross * a + self_b * b
        else:
            grad_a = diff_coef * (a - b)
            grad_b = -grad_a
        tl.atomic_add(DH + row_a * dim + cols, grad_a, mask=ok, sem="relaxed")
        tl.atomic_add(DH + row_b * dim + cols, grad_b, mask=ok, sem="relaxed")


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make the tensors' GPU current for a launch (Triton launches on the current CUDA device); no-op on CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _block_d(dim: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(dim)))


# ---- custom ops: what torch.compile sees (tensors and plain numbers; fake implementations give the shapes)
# Schemas spelled out rather than inferred from the annotations: the same on every torch the kernels run with.
@torch.library.custom_op(
    "llmjepa::jepa_pair_loss",
    mutates_args=(),
    schema=(
        "(Tensor hidden, Tensor pred_index, Tensor target_index, int kind, str reduction, float eps, "
        "bool check) -> (Tensor, Tensor, Tensor)"
    ),
)
def _pair_loss_op(
    hidden: torch.Tensor,
    pred_index: torch.Tensor,
    target_index: torch.Tensor,
    kind: int,
    reduction: str,
    eps: float,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reduced loss, per-pair cos, per-pair (|a|, |b|, |a - b|) for the backward), all float32.

    check: the index range check, here inside the op where it reads values without breaking a compiled
    graph (on CUDA a host-device sync: callers that validated on the host pass False)."""
    n = pred_index.numel()
    if check:
        _check_in_range(hidden.shape[0], pred_index, target_index)
    loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    cos = torch.empty(n, dtype=torch.float32, device=hidden.device)
    stats = torch.empty(n, 3, dtype=torch.float32, device=hidden.device)
    dim = hidden.shape[1]
    with _device_guard(hidden.device):
        _pair_loss_fwd_kernel[(n,)](
            hidden, pred_index, target_index, loss, cos, stats, hidden.stride(0), dim, eps,
            KIND=kind, BLOCK_D=_block_d(dim), num_warps=4,
        )  # fmt: skip
    total = loss.sum() if reduction == "sum" else loss.mean()
    return total, cos, stats


@_pair_loss_op.register_fake
def _pair_loss_fake(hidden, pred_index, target_index, kind, reduction, eps, check):
    n = pred_index.shape[0]
    new = partial(hidden.new_empty, dtype=torch.float32)
    return new(()), new((n,)), new((n, 3))


@torch.library.custom_op(
    "llmjepa::jepa_pair_loss_backward",
    mutates_args=(),
    schema=(
        "(Tensor grad_total, Tensor hidden, Tensor pred_index, Tensor target_index, Tensor cos, "
        "Tensor stats, int kind, str reduction, float eps) -> Tensor"
    ),
)
def _pair_loss_backward_op(
    grad_total: torch.Tensor,
    hidden: torch.Tensor,
    pred_index: torch.Tensor,
    target_index: torch.Tensor,
    cos: torch.Tensor,
    stats: torch.Tensor,
    kind: int,
    reduction: str,
    eps: float,
) -> torch.Tensor:
    """d(loss)/d(hidden), in hidden's dtype; rows no pair names get 0."""
    n = pred_index.numel()
    dim = hidden.shape[1]
    grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    with _device_guard(hidden.device):
        _pair_loss_bwd_kernel[(n,)](
            hidden, pred_index, target_index, cos, stats, grad_total.reshape(1).contiguous(),
            grad_hidden, hidden.stride(0), dim, eps, 1.0 if reduction == "sum" else 1.0 / n,
            KIND=kind, BLOCK_D=_block_d(dim), num_warps=4,
        )  # fmt: skip
    return grad_hidden.to(hidden.dtype)


@_pair_loss_backward_op.register_fake
def _pair_loss_backward_fake(grad_total, hidden, pred_index, target_index, cos, stats, kind, reduction, eps):
    return hidden.new_empty(hidden.shape)


def _pair_loss_setup_context(ctx, inputs, output) -> None:
    hidden, pred_index, target_index, kind, reduction, eps, _ = inputs
    _, cos, stats = output
    ctx.save_for_backward(hidden, pred_index, target_index, cos, stats)
    ctx.kind, ctx.reduction, ctx.eps = kind, reduction, eps
    ctx.mark_non_differentiable(cos, stats)


def _pair_loss_autograd(ctx, grad_total: torch.Tensor, _grad_cos, _grad_stats):
    hidden, pred_index, target_index, cos, stats = ctx.saved_tensors
    grad_hidden = _pair_loss_backward_op(
        grad_total, hidden, pred_index, target_index, cos, stats, ctx.kind, ctx.reduction, ctx.eps
    )
    return grad_hidden, None, None, None, None, None, None


_pair_loss_op.register_autograd(_pair_loss_autograd, setup_context=_pair_loss_setup_context)


def _check_in_range(t: int, *indices: torch.Tensor) -> None:
    for name, index in zip(("pred_index", "target_index"), indices):
        # Out-of-range rows would be read and written by the kernels without bounds checks.
        if bool(((index < 0) | (index >= t)).any()):
            raise IndexError(f"{name} has entries outside [0, {t - 1}]")


def _check_index(name: str, index: torch.Tensor, hidden: torch.Tensor) -> None:
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int64 or int32, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one entry per pair), got shape {tuple(index.shape)}")
    if index.device != hidden.device:
        raise ValueError(f"{name} is on {index.device} but hidden is on {hidden.device}")


def cosine_jepa_loss(
    hidden: torch.Tensor,
    pred_index: torch.Tensor,
    target_index: torch.Tensor,
    *,
    reduction: str = "mean",
    kind: str = "cosine",
    eps: float = 1e-8,
    check_indices: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """JEPA loss between rows pred_index[k] and target_index[k] of hidden (T, D).

    kind: "cosine" (1 - cos), "l2" (Euclidean distance) or "mse" (mean squared difference over
    features); reduction: "mean" over pairs, or "sum" (the trainer divides by the pairs of a step).
    Returns (loss, cos): loss a float32 scalar (accumulated in fp32 whatever hidden's dtype),
    differentiable w.r.t. hidden; cos the detached float32 per-pair cosine similarities (for
    logging, whatever the kind).

    check_indices: raise IndexError when an index lies outside [0, T - 1] (the kernels read and write
    rows without bounds checks). On CUDA indices that check is a host-device sync; callers that
    validated the indices on the host, where the pairs are packed, pass False to launch without one.
    CPU indices are checked whatever this says (it costs no sync there).
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a (T, D) tensor, got {getattr(hidden, 'shape', type(hidden))}")
    if hidden.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"hidden must be float16, bfloat16 or float32, got {hidden.dtype}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    _check_index("pred_index", pred_index, hidden)
    _check_index("target_index", target_index, hidden)
    if pred_index.shape != target_index.shape:
        raise ValueError(
            f"pred_index and target_index must have the same length, got {pred_index.numel()} "
            f"and {target_index.numel()}"
        )
    n, dim = pred_index.numel(), hidden.shape[1]
    if n == 0:
        if reduction == "mean":
            raise ValueError("the mean over zero pairs is undefined; use reduction='sum'")
        return hidden.float().sum() * 0.0, torch.empty(0, dtype=torch.float32, device=hidden.device)
    if dim == 0:
        raise ValueError("hidden has zero features")
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    check = check_indices or hidden.device.type == "cpu"
    total, cos, _ = _pair_loss_op(
        hidden, pred_index.contiguous(), target_index.contiguous(), _KINDS[kind], reduction, eps, check
    )
    return total, cos
