"""pytest-benchmark: the JEPA pair loss forward + backward, the two ways the trainer computes it
(JepaTrainer.pair_loss_sum): PyTorch (gather both rows of every pair, llmjepa.execution.losses.jepa_pair_losses,
sum) and the fused Triton kernel (llmjepa_kernels.cosine_jepa_loss: gather, norms and the term in one kernel;
cosine, l2, mse), each kind checked against the PyTorch form in float32 before it is timed.

    pytest bench/test_bench_pair_loss.py --benchmark-only
    pytest bench/test_bench_pair_loss.py --benchmark-disable               # smoke: each once, no timing

CUDA: hidden 8192 x 2048 bf16, 256 pairs; CPU: 64 x 48 float32, 12 pairs (the kernel in the interpreter).
bench_kernels.py times the cosine kind against the same PyTorch form with its own shapes.
"""

import functools

import pytest
import torch
from benchlib import CUDA, DEVICE, assert_close, forward_backward, record, timed_forward_backward

from llmjepa.execution.losses import JEPA_KINDS, jepa_pair_losses

TOKENS, DIM, PAIRS, DTYPE = (8192, 2048, 256, torch.bfloat16) if CUDA else (64, 48, 12, torch.float32)
FUSED_KINDS = ("cosine", "l2", "mse")  # JepaTrainer's: infonce compares every pair with every other


def torch_way(hidden: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    return jepa_pair_losses(hidden[pred], hidden[target], kind)[0].sum()


def fused_way(hidden: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    from llmjepa_kernels import cosine_jepa_loss

    return cosine_jepa_loss(hidden, pred, target, reduction="sum", kind=kind, check_indices=False)[0]


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(TOKENS, DIM, device=DEVICE, dtype=DTYPE, generator=gen).requires_grad_()
    pred, target = (torch.randint(0, TOKENS, (PAIRS,), device=DEVICE, generator=gen) for _ in range(2))
    return hidden, pred, target


CASES = [(kind, "torch") for kind in JEPA_KINDS] + [(kind, "triton_fused") for kind in FUSED_KINDS]


@pytest.mark.parametrize(("kind", "way"), CASES)
def test_pair_loss(benchmark, kind: str, way: str) -> None:
    hidden, pred, target = inputs()
    fn = functools.partial(fused_way if way == "triton_fused" else torch_way, pred=pred, target=target, kind=kind)
    dout = torch.ones((), device=DEVICE)
    reference = forward_backward(lambda h: torch_way(h.float(), pred, target, kind), [hidden], dout)
    got = forward_backward(fn, [hidden], dout)
    assert_close(got, reference, ("loss", "d hidden"), 2e-2 if CUDA else 1e-4, f"{kind} pair loss, {way}")
    record(benchmark, f"pair loss fwd+bwd, {kind}", kind=kind, way=way, hidden=f"{TOKENS}x{DIM}", pairs=PAIRS)
    benchmark(timed_forward_backward(fn, [hidden], dout))
