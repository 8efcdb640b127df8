"""The one description of a microbatch's views, which every executor runs.

A plan is a list of rows. A row is one view of one example: its tokens, their position ids,
which keys each token may see, and its LM labels (view 1 only). Visibility is given as two
key ranges per token, exactly the form the Triton attention kernel reads:

    key j is visible to query i  <=>  shared_start[i] <= j <= shared_end[i]  or  causal_start[i] <= j <= i

(row-local indices; the shared range is empty when shared_end < shared_start). This covers
plain causal rows, upstream's packed Text|Code row (--additive_mask) and Step-JEPA's localized
step segments. `prefix_source` records that a row's first tokens repeat another row's prefix
(same tokens, same positions, causal), so a packed executor may read those keys instead of
recomputing them; the reference executor ignores it.

Pairs name the hidden state a predictor embedding is read from and the one its target is read
from, each as (row index, token index).
"""

from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE_INDEX = -100
NO_SHARED = (0, -1)  # an empty shared range


@dataclass
class ViewRow:
    example: int  # index of the example within the microbatch
    view: str  # "full" (view 1), "text", "code", "packed", "predictor", "target"
    input_ids: list[int]
    position_ids: list[int]
    causal_start: list[int]
    shared_start: list[int]
    shared_end: list[int]
    labels: list[int]  # IGNORE_INDEX except where view 1 is trained; aligned with input_ids
    prefix_source: tuple[int, int] | None = None  # (row, n): first n tokens equal that row's

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class ViewPlan:
    rows: list[ViewRow]
    pairs: list[tuple[tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    n_examples: int = 0
    packed: Any = None  # the fast path's layout.StreamWithLayout, when the collator packed it (in loader workers)
    stp: Any = None  # --linear (STP): stp.StpPlan, the terms read from view 1's hidden rows (no pairs)

    @property
    def label_tokens(self) -> int:
        """Tokens the LM loss predicts: labels shifted by one inside each row."""
        return sum(sum(1 for t in row.labels[1:] if t != IGNORE_INDEX) for row in self.rows)

    @property
    def n_pairs(self) -> int:
        """JEPA terms: pairs, or STP's terms (what the step's JEPA loss is the mean over)."""
        return len(self.pairs) if self.stp is None else self.stp.n_terms

    @property
    def n_tokens(self) -> int:
        return sum(len(row) for row in self.rows)

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def causal_row(example: int, view: str, input_ids: list[int], labels: list[int] | None = None) -> ViewRow:
    """A row in which every token sees all earlier tokens of the row (positions 0..n-1)."""
    n = len(input_ids)
    return ViewRow(
        example=example,
        view=view,
        input_ids=list(input_ids),
        position_ids=list(range(n)),
        causal_start=[0] * n,
        shared_start=[NO_SHARED[0]] * n,
        shared_end=[NO_SHARED[1]] * n,
        labels=list(labels) if labels is not None else [IGNORE_INDEX] * n,
    )


def visibility(row: ViewRow) -> torch.Tensor:
    """Dense (n, n) boolean visibility of a row, built from its ranges (reference path only)."""
    n = len(row)
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    causal_start = torch.tensor(row.causal_start)[:, None]
    shared_start = torch.tensor(row.shared_start)[:, None]
    shared_end = torch.tensor(row.shared_end)[:, None]
    return ((j >= causal_start) & (j <= i)) | ((j >= shared_start) & (j <= shared_end))


def check_row(row: ViewRow) -> None:
    """Every token must see at least one key; an empty row of the mask would give NaN."""
    n = len(row)
    fields = (row.position_ids, row.causal_start, row.shared_start, row.shared_end, row.labels)
    if any(len(f) != n for f in fields):
        raise ValueError(f"row of view {row.view!r}: per-token fields differ in length")
    for i in range(n):
        causal_empty = row.causal_start[i] > i
        shared_empty = row.shared_end[i] < row.shared_start[i]
        if causal_empty and shared_empty:
            raise ValueError(f"row of view {row.view!r}: token {i} sees no key")
