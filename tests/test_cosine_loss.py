"""cosine_jepa_loss against float64 PyTorch references, including duplicate indices and eps behaviour."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

from llmjepa_kernels.cosine_loss import cosine_jepa_loss

pytestmark = pytest.mark.interpreter  # CPU tensors through the Triton interpreter (conftest.py)

BASE_SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
N_CASES = 72


def seed_note(case: int) -> str:
    return f"case {case}, base seed {BASE_SEED} (rerun with LLMJEPA_TEST_SEED={BASE_SEED})"


def reference_loss(
    hidden: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, kind: str, reduction: str, eps: float = 1e-8
) -> torch.Tensor:
    a, b = hidden[pred.long()], hidden[target.long()]
    if kind == "cosine":
        per_pair = 1 - F.cosine_similarity(a, b, dim=-1, eps=eps)
    elif kind == "l2":
        per_pair = torch.linalg.vector_norm(a - b, dim=-1)
    else:
        per_pair = ((a - b) ** 2).mean(dim=-1)
    return per_pair.sum() if reduction == "sum" else per_pair.mean()


def loss_and_grad(
    fn, hidden: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = hidden.detach().clone().requires_grad_()
    loss = fn(leaf, pred, target, **kwargs)
    loss = loss[0] if isinstance(loss, tuple) else loss
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def cosine_grad_magnitude(
    hidden: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Float64 sums of the absolute terms of d(1 - cos)/dH: the scale of its rounding errors."""
    h = hidden.double()
    a, b = h[pred.long()], h[target.long()]
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ca, cb = na.clamp_min(1e-8), nb.clamp_min(1e-8)
    weight = 1.0 if reduction == "sum" else 1.0 / pred.numel()
    mag = torch.zeros_like(h)
    mag.index_add_(0, pred.long(), weight * (b.abs() / (ca * cb) + a.abs() / (ca * na.clamp_min(1e-30))))
    mag.index_add_(0, target.long(), weight * (a.abs() / (ca * cb) + b.abs() / (cb * nb.clamp_min(1e-30))))
    return mag


def rel_err(x: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor | None = None) -> float:
    """||x - ref|| / ||ref||; when ref cancels to ~0 (cosine of 1-D vectors is constant), measure
    against the magnitude of the terms that cancelled instead."""
    denom = ref.norm()
    if magnitude is not None and denom < 0.1 * magnitude.norm():
        denom = magnitude.norm()
    return float((x.double() - ref).norm() / denom.clamp_min(1e-30))


@pytest.mark.parametrize("case", range(N_CASES))
def test_matches_reference(case: int) -> None:
    seed = BASE_SEED + case
    rng = random.Random(seed)
    torch.manual_seed(seed)
    kind = ("cosine", "l2", "mse")[case % 3]
    reduction = ("mean", "sum")[(case // 3) % 2]
    dtype = (torch.float32, torch.float16, torch.bfloat16)[(case // 6) % 3]
    t = rng.randint(1, 50)
    dim = rng.choice([1, 16, 40, 100, 1500])
    n = rng.randint(1, 40)
    # Few distinct rows: indices repeat across pairs and appear as predictor and target at once.
    pool = list(range(t)) if rng.random() < 0.5 else rng.sample(range(t), min(t, 4))
    pred = torch.tensor([rng.choice(pool) for _ in range(n)], dtype=rng.choice([torch.int64, torch.int32]))
    target = torch.tensor([rng.choice(pool) for _ in range(n)], dtype=rng.choice([torch.int64, torch.int32]))
    hidden = torch.randn(t, dim).to(dtype)
    note = f"{seed_note(case)}: {kind} {reduction} {dtype} T={t} D={dim} pairs={n}"

    loss, grad = loss_and_grad(cosine_jepa_loss, hidden, pred, target, kind=kind, reduction=reduction)
    ref_loss, ref_grad = loss_and_grad(reference_loss, hidden.double(), pred, target, kind=kind, reduction=reduction)
    low_loss, low_grad = loss_and_grad(reference_loss, hidden, pred, target, kind=kind, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.dim() == 0, note
    assert grad.dtype == dtype and grad.shape == hidden.shape, note
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), note
    # The kernel accumulates in fp32 whatever the input dtype, so its loss is at fp32 level.
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss))), note
    # Twice PyTorch's own error in this dtype, plus a floor: one rounding unit of the gradient's dtype
    # for 16-bit (the fp32 gradient is rounded once when cast back), 1e-6 for fp32.
    floor = {torch.float32: 1e-6, torch.float16: 2**-11, torch.bfloat16: 2**-8}[dtype]
    if kind == "cosine":
        magnitude = cosine_grad_magnitude(hidden, pred, target, reduction)
        err, torch_err = rel_err(grad, ref_grad, magnitude), rel_err(low_grad, ref_grad, magnitude)
        assert err <= 2 * torch_err + floor, f"grad error {err:.3g}, torch {torch_err:.3g}; {note}"
    elif float(ref_grad.norm()) > 0:
        err, torch_err = rel_err(grad, ref_grad), rel_err(low_grad, ref_grad)
        assert err <= 2 * torch_err + floor, f"grad error {err:.3g}, torch {torch_err:.3g}; {note}"
    else:  # every pair compares a row with itself: a - b is exactly 0
        assert torch.equal(grad, torch.zeros_like(grad)), note


def test_per_pair_cosines_are_detached_fp32() -> None:
    torch.manual_seed(BASE_SEED)
    hidden = torch.randn(10, 32, dtype=torch.float16, requires_grad=True)
    pred, target = torch.tensor([0, 1, 2, 2]), torch.tensor([3, 3, 2, 9])
    for kind in ("cosine", "l2", "mse"):
        loss, cos = cosine_jepa_loss(hidden, pred, target, kind=kind)
        assert loss.requires_grad and not cos.requires_grad
        assert cos.dtype == torch.float32 and cos.shape == (4,)
        ref = F.cosine_similarity(hidden.double()[pred], hidden.double()[target], dim=-1)
        assert torch.allclose(cos.double(), ref, atol=1e-6), seed_note(0)


def test_duplicate_and_shared_indices_accumulate() -> None:
    """The same pair three times, a swapped pair, and a row used as predictor and as target."""
    torch.manual_seed(BASE_SEED)
    hidden = torch.randn(6, 24)
    pred = torch.tensor([3, 3, 3, 1, 2, 4])
    target = torch.tensor([5, 5, 5, 2, 1, 4])
    for kind in ("cosine", "l2", "mse"):
        loss, grad = loss_and_grad(cosine_jepa_loss, hidden, pred, target, kind=kind, reduction="sum")
        ref_loss, ref_grad = loss_and_grad(reference_loss, hidden.double(), pred, target, kind=kind, reduction="sum")
        assert abs(float(loss) - float(ref_loss)) < 1e-5, kind
        assert rel_err(grad, ref_grad) < 1e-6, f"{kind}: {rel_err(grad, ref_grad):.3g}; {seed_note(0)}"
        assert torch.equal(grad[0], torch.zeros(24)), kind  # row 0 is in no pair


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_eps_matches_cosine_similarity(eps: float) -> None:
    """Zero vectors and vectors shorter than eps: values and gradients as F.cosine_similarity."""
    hidden = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # zero vector
            [1.0, 2.0, -3.0, 0.5],
            [1e-9, 0.0, -2e-9, 0.0],  # norm below 1e-8
            [3e-4, -4e-4, 0.0, 1e-4],  # norm below 1e-3 but above 1e-8
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    pred = torch.tensor([0, 1, 2, 3, 0, 2, 3])
    target = torch.tensor([1, 0, 1, 1, 4, 3, 2])
    loss, grad = loss_and_grad(cosine_jepa_loss, hidden, pred, target, reduction="sum", eps=eps)
    _, cos = cosine_jepa_loss(hidden, pred, target, eps=eps)
    for dtype in (torch.float32, torch.float64):
        h = hidden.to(dtype)
        ref_loss, ref_grad = loss_and_grad(reference_loss, h, pred, target, kind="cosine", reduction="sum", eps=eps)
        ref_cos = F.cosine_similarity(h[pred], h[target], dim=-1, eps=eps)
        assert torch.allclose(cos.double(), ref_cos.double(), rtol=1e-6, atol=1e-7), (dtype, cos, ref_cos)
        assert abs(float(loss) - float(ref_loss)) < 1e-6, dtype
        # Gradients reach 1/eps scale here; compare row by row relative to each row's size.
        scale = ref_grad.double().norm(dim=1, keepdim=True).clamp_min(1e-30)
        assert torch.allclose(grad.double() / scale, ref_grad.double() / scale, atol=1e-6), (dtype, grad, ref_grad)


def test_strided_hidden() -> None:
    torch.manual_seed(BASE_SEED)
    big = torch.randn(12, 50)
    hidden = big[:, 5:37]  # row stride 50, not 32
    pred, target = torch.tensor([0, 4, 11]), torch.tensor([7, 4, 1])
    loss, grad = loss_and_grad(cosine_jepa_loss, hidden, pred, target)
    ref_loss, ref_grad = loss_and_grad(reference_loss, hidden.double(), pred, target, kind="cosine", reduction="mean")
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    assert rel_err(grad, ref_grad) < 1e-6


def test_zero_pairs() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    none = torch.zeros(0, dtype=torch.int64)
    loss, cos = cosine_jepa_loss(hidden, none, none, reduction="sum")
    loss.backward()
    assert float(loss.detach()) == 0.0 and cos.numel() == 0
    assert torch.equal(hidden.grad, torch.zeros(4, 8))
    with pytest.raises(ValueError, match="zero pairs"):
        cosine_jepa_loss(hidden, none, none, reduction="mean")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pred_index": torch.tensor([0, 1.0])}, TypeError, "int64 or int32"),
        ({"pred_index": torch.tensor([[0, 1]])}, ValueError, "1-D"),
        ({"target_index": torch.tensor([0])}, ValueError, "same length"),
        ({"target_index": torch.tensor([0, 4])}, IndexError, r"target_index has entries outside \[0, 3\]"),
        ({"pred_index": torch.tensor([-1, 0])}, IndexError, "pred_index has entries outside"),
        ({"hidden": torch.randn(4, 8, dtype=torch.float64)}, TypeError, "float16, bfloat16 or float32"),
        ({"hidden": torch.randn(4)}, ValueError, r"\(T, D\)"),
        ({"kind": "cos"}, ValueError, "kind must be one of"),
        ({"reduction": "none"}, ValueError, "reduction must be one of"),
    ],
)
def test_validation_errors(kwargs: dict, error: type, match: str) -> None:
    args = {"hidden": torch.randn(4, 8), "pred_index": torch.tensor([0, 1]), "target_index": torch.tensor([2, 3])}
    options = {key: kwargs.pop(key) for key in ("kind", "reduction") if key in kwargs}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        cosine_jepa_loss(args["hidden"], args["pred_index"], args["target_index"], **options)
