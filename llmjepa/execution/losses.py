"""Loss pieces shared by every executor: token cross entropy sums and the JEPA pair losses.

Everything here returns SUMS; the trainer divides by the totals of the whole optimizer step
(label tokens for the LM loss, pairs for the JEPA loss), which is what makes gradient
accumulation and DDP exact.
"""

import torch
import torch.nn.functional as F

INFONCE_TEMPERATURE = 0.07  # upstream's value
JEPA_KINDS = ("cosine", "l2", "mse", "infonce")


def token_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of cross entropy over rows of `logits` (n, vocab) against `targets` (n,), in float32."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def jepa_pair_losses(pred: torch.Tensor, target: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair JEPA loss terms and cosines for (n, D) predictor and target embeddings.

    cosine: 1 - cos; l2: Euclidean distance; mse: mean over features of the squared
    difference; infonce: cross entropy of each row of the n x n cosine matrix / 0.07 against
    its diagonal (the other pairs of the microbatch are the negatives, as upstream).
    """
    pred = pred.float()
    target = target.float()
    cos = F.cosine_similarity(pred, target, dim=-1)
    if kind == "cosine":
        terms = 1.0 - cos
    elif kind == "l2":
        terms = torch.linalg.vector_norm(pred - target, dim=-1)
    elif kind == "mse":
        terms = (pred - target).pow(2).mean(dim=-1)
    elif kind == "infonce":
        sims = F.cosine_similarity(pred[:, None, :], target[None, :, :], dim=-1) / INFONCE_TEMPERATURE
        labels = torch.arange(pred.shape[0], device=pred.device)
        terms = F.cross_entropy(sims, labels, reduction="none")
    else:
        raise ValueError(f"unknown JEPA loss kind {kind!r}; expected one of {JEPA_KINDS}")
    return terms, cos.detach()
