"""--debug: what a user checking the views wants to see, per microbatch."""

import torch
from transformers import PreTrainedTokenizerBase

from ..views.plan import IGNORE_INDEX, ViewPlan


def describe_row(tokenizer: PreTrainedTokenizerBase, r: int, row) -> str:
    labels = sum(1 for t in row.labels[1:] if t != IGNORE_INDEX)
    text = tokenizer.decode(row.input_ids[-24:]).replace("\n", "\\n")
    shared = (
        f", shares its first {row.prefix_source[1]} tokens with row {row.prefix_source[0]}" if row.prefix_source else ""
    )
    head = f"  row {r}: example {row.example} view {row.view:<9} {len(row):4d} tokens, {labels} label tokens"
    return f"{head}{shared} | ...{text}"


def print_microbatch(
    index: int,
    plan: ViewPlan,
    ce_sum: torch.Tensor,
    loss: torch.Tensor,
    cos: torch.Tensor | None,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    length = max(len(row) for row in plan.rows)
    tokens = plan.label_tokens
    print(f"[debug] microbatch {index}: {plan.n_examples} examples, {len(plan.rows)} rows, {plan.n_tokens} tokens")
    print("[debug] input batch:")
    for r, row in enumerate(plan.rows):
        print(describe_row(tokenizer, r, row))
    print(
        f"[debug] forward batch: ({len(plan.rows)}, {length}) tokens padded, {plan.n_tokens} real "
        f"({plan.n_tokens / (len(plan.rows) * length):.0%})"
    )
    print(
        f"[debug] lm_loss (this microbatch): {ce_sum.item() / max(tokens, 1):.6f}  valid tokens: {tokens}  "
        f"loss sum: {ce_sum.item():.4f}  loss per token: {ce_sum.item() / max(tokens, 1):.6f}"
    )
    if plan.n_pairs:
        # --entropy_filter plans list probes after the real pairs; only the real ones are pairs
        entropy = getattr(plan, "entropy", None)
        real = plan.pairs[: entropy.n_real] if entropy is not None else plan.pairs
        pairs = ", ".join(f"{p}->{t}" for p, t in real[:8])
        print(f"[debug] pairs: {plan.n_pairs} (row, token) predictor->target: {pairs}{' ...' if len(real) > 8 else ''}")
        if cos is not None:
            c = cos.float()
            std = c.std().item() if c.numel() > 1 else 0.0
            print(
                f"[debug] cosine: mean={c.mean().item():.4f} std={std:.4f} min={c.min().item():.4f} "
                f"max={c.max().item():.4f}"
            )
    print(f"[debug] microbatch loss (its share of the step): {loss.item():.6f}")
