"""Health of the JEPA embeddings per log window: are the predictor and target embeddings collapsing?

The JEPA term alone has a trivial minimum: every embedding the same vector (cosine 1, loss 0). The LM loss
(--gamma > 0) is what keeps the hidden states informative; these two numbers show whether it does:

- `jepa_pred_std`, `jepa_target_std`: the per-dimension standard deviation of the L2-normalized embeddings
  over the window's pairs, averaged over the d dimensions (VICReg's variance term, without its hinge).
  Directions spread uniformly over the sphere give about 1 / sqrt(d); all embeddings the same give 0.
- `jepa_pred_rank`, `jepa_target_rank`: the effective rank of the window's normalized embeddings, centered: exp
  of the entropy of their singular values normalized to sum to 1 (RankMe, Garrido et al. 2023, after
  centering: an LLM's hidden states share a large common direction, which uncentered would count as the
  main one). Dimensional collapse (the embeddings spread along a few directions only) lowers it; embeddings
  all at one point give 1 (the std says that case). At most min(rows - 1, d).

Cost: in a microbatch, the pairs' rows are gathered and kept detached on the device (no host read, no
sync); at most MAX_ROWS rows a side are kept, the most recent. At a training log the window's rows are
normalized, one `svdvals` of a (rows x d) matrix runs per side, and the four numbers are read in one copy
together with the log's other values. STP (--linear) steps add no rows (its JEPA terms are span
differences, not pair embeddings), and neither does a microbatch without pairs. Under torchrun each rank
summarizes its own rows (rank 0's reach the loggers).

Collapse warning: one line (once per run) when, over a window of at least MIN_ROWS pairs, a side's
std * sqrt(d) falls below COLLAPSE_STD (1/20 of the isotropic value) or its effective rank below
COLLAPSE_RANK (what varies between the embeddings varies along about one direction).
"""

import logging
import math

import torch

logger = logging.getLogger("llmjepa")

MAX_ROWS = 1024  # per side and log window: 4 MiB of float32 rows at d = 1024, one svdvals of 1024 x d per log
POINT_SPREAD = 1e-4  # centered singular values summing below this * sqrt(rows): one point, rank 1
MIN_ROWS = 16  # fewer pairs in a window: the numbers are logged, but no warning (too few rows to tell)
COLLAPSE_STD = 0.05  # warn below this std * sqrt(d) (about 1 for directions spread over the sphere)
COLLAPSE_RANK = 2.0  # warn below this effective rank (1: the embeddings vary along one direction at most)
KEYS = ("jepa_pred_std", "jepa_target_std", "jepa_pred_rank", "jepa_target_rank")


def std_and_rank(rows: torch.Tensor) -> torch.Tensor:
    """(mean per-dimension std, effective rank) of (n, d) embeddings after L2 normalization, as a (2,) float32
    tensor on their device: nothing read on the host here."""
    z = torch.nn.functional.normalize(rows.float(), dim=-1)
    std = z.std(dim=0, unbiased=False).mean()
    sigma = torch.linalg.svdvals(z - z.mean(dim=0))
    total = sigma.sum()
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()
    # one point (nothing left after centering but rounding): rank 1, not the rank of the rounding noise
    point = total <= POINT_SPREAD * math.sqrt(rows.shape[0])
    return torch.stack([std, torch.where(point, torch.ones_like(entropy), entropy.exp())])


class EmbeddingHealth:
    """The predictor and target rows of the current log window (JepaTrainer adds them per microbatch)."""

    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self.pred: list[torch.Tensor] = []
        self.target: list[torch.Tensor] = []
        self.rows = 0  # host count of the rows kept (tensor shapes: no sync)
        self.dim = 0  # d, the embeddings' width

    def add(self, hidden: torch.Tensor, pred_index: torch.Tensor, target_index: torch.Tensor) -> None:
        """Keep a microbatch's pair rows, detached (gathered on the device; the shapes are host numbers)."""
        n = min(pred_index.shape[0], self.max_rows)
        if n == 0:
            return
        self.dim = hidden.shape[-1]
        self.pred.append(hidden.detach()[pred_index[-n:]])
        self.target.append(hidden.detach()[target_index[-n:]])
        self.rows += n
        while self.pred and self.rows - self.pred[0].shape[0] >= self.max_rows:  # the oldest beyond the cap
            self.rows -= self.pred.pop(0).shape[0]
            self.target.pop(0)

    def summary(self) -> tuple[torch.Tensor | None, int]:
        """(the window's four numbers in KEYS' order as one device tensor, or None under 2 rows; the rows), and
        a new window."""
        rows = self.rows
        if rows < 2:
            self.clear()
            return None, rows
        pred = torch.cat(self.pred)[-self.max_rows :]
        target = torch.cat(self.target)[-self.max_rows :]
        self.clear()
        p, t = std_and_rank(pred), std_and_rank(target)
        return torch.stack([p[0], t[0], p[1], t[1]]), min(rows, self.max_rows)

    def clear(self) -> None:
        self.pred, self.target, self.rows = [], [], 0


def collapse_warning(values: dict[str, float], rows: int, dim: int, step: int) -> str | None:
    """The warning's line when the window's numbers say collapse (module docstring), else None."""
    if rows < MIN_ROWS:
        return None
    found = []
    for side in ("pred", "target"):
        std, rank = values.get(f"jepa_{side}_std"), values.get(f"jepa_{side}_rank")
        if std is not None and std * math.sqrt(dim) < COLLAPSE_STD:
            found.append(f"jepa_{side}_std {std:.3g} < {COLLAPSE_STD} / sqrt({dim})")
        if rank is not None and rank < COLLAPSE_RANK:
            found.append(f"jepa_{side}_rank {rank:.3g} < {COLLAPSE_RANK:g}")
    if not found:
        return None
    return (
        f"llmjepa: warning: step {step}: the JEPA embeddings may be collapsing ({'; '.join(found)} over {rows} "
        "pairs); the LM term (--gamma) is what prevents it (warned once; see docs: logged metrics)"
    )
