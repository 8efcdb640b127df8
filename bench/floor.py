"""The compute floor of a training step: tokens and FLOPs counted from the view plans, no timing.

    python bench/floor.py --model proxy --data ../shared/datasets/gsm8k_test.jsonl -- --num_prediction_steps 2 \\
        --predictors 1 --step_separator $'\\n'
    python bench/floor.py --model llama-1b --data FILE -- <any llmjepa-train mode flags>

The FLOP model of a Llama-style decoder (gated MLP, GQA), counting multiply-adds as 2 FLOPs:
  linear layers  2 * (H*Hq*D + 2*H*Hkv*D + Hq*D*H + 3*H*I) per token per layer (q, k, v, o, gate, up, down)
  LM head        2 * H * V per position it runs at
  attention      4 * D * Hq per (query, key) pair per layer (Q K^T and P V)
  a training step = 3 x its forward (the backward is twice the forward); gradient checkpointing's
  recomputed forward, norms, RoPE, softmax and the losses are left out (small, or the same for every
  method).

Two counts per method:
  floor     what the method's plan needs: the real tokens of its rows (packed methods: the stream after
            prefix sharing and view truncation), the LM head at label positions only, attention over
            visible pairs only. Efficiency, reported by the step benchmarks, is (floor FLOP ratio to
            packed regular) / (time ratio to packed regular): 1.0 means the method pays exactly for the
            work its plan adds, below 1 that it pays for more (padding, dense masks, wasted tiles).
  executed  what its executor runs: the reference path pads rows to one length, computes logits at
            every position and attends over every (query, key) pair of a row; the packed path runs the
            stream, the LM head at label positions, and attention over the pairs its backend computes
            (`computed_pairs`: Triton tiles, or the PyTorch form's query-block windows).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_QUERY_BLOCK = 256  # llmjepa_kernels/torch_attention.py's query block, used if that module does not import
Ranges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # shared_start, shared_end, causal_start


# ---- the model's costs -------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers LlamaConfig-like config (gated MLP)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(
            config.hidden_size,
            config.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            config.intermediate_size,
            config.vocab_size,
        )

    @property
    def layer_flops_per_token(self) -> int:
        h, q, kv, d, i = self.hidden, self.q_heads, self.kv_heads, self.head_dim, self.intermediate
        return 2 * (h * q * d + 2 * h * kv * d + q * d * h + 3 * h * i)

    @property
    def linear_flops_per_token(self) -> int:
        return self.layers * self.layer_flops_per_token

    @property
    def head_flops_per_position(self) -> int:
        return 2 * self.hidden * self.vocab

    @property
    def attention_flops_per_pair(self) -> int:
        return 4 * self.head_dim * self.q_heads * self.layers

    @property
    def head_to_layers_ratio(self) -> float:
        """LM head FLOPs per position over all decoder layers' linear FLOPs per token."""
        return self.head_flops_per_position / self.linear_flops_per_token


# Llama-3.2-1B (tied head) and the CPU proxy with the same LM-head-to-layers FLOP ratio (0.270 vs 0.276).
LLAMA_1B = ModelShape(hidden=2048, layers=16, q_heads=32, kv_heads=8, head_dim=64, intermediate=8192, vocab=128256)
PROXY = ModelShape(hidden=512, layers=4, q_heads=8, kv_heads=2, head_dim=64, intermediate=2048, vocab=8192)
SHAPES = {"llama-1b": LLAMA_1B, "proxy": PROXY}


@dataclass(frozen=True)
class Work:
    """What one step runs: positions through the decoder layers, through the LM head, and attention pairs
    (per head and layer)."""

    tokens: int
    head_positions: int
    attention_pairs: int

    def forward_flops(self, shape: ModelShape) -> int:
        return (
            self.tokens * shape.linear_flops_per_token
            + self.head_positions * shape.head_flops_per_position
            + self.attention_pairs * shape.attention_flops_per_pair
        )

    def train_flops(self, shape: ModelShape) -> int:
        return 3 * self.forward_flops(shape)

    def __add__(self, other: Work) -> Work:
        return Work(
            self.tokens + other.tokens,
            self.head_positions + other.head_positions,
            self.attention_pairs + other.attention_pairs,
        )


# ---- pairs of a layout -------------------------------------------------------------------------
def as_ranges(shared_start, shared_end, causal_start) -> Ranges:
    return tuple(torch.as_tensor(x, dtype=torch.long) for x in (shared_start, shared_end, causal_start))


def visible_pairs(ranges: Ranges) -> int:
    """(query, key) pairs the ranges make visible: |shared range ∪ [causal_start, i]| summed over queries."""
    a, b, s = (x.long() for x in ranges)
    i = torch.arange(a.numel())
    shared = (b - a + 1).clamp_min(0)
    causal = (i - s + 1).clamp_min(0)
    overlap = (torch.minimum(b, i) - torch.maximum(a, s) + 1).clamp_min(0)
    overlap = torch.where((shared > 0) & (causal > 0), overlap, 0)
    return int((shared + causal - overlap).sum())


def touched_tiles(ranges: Ranges, block_m: int, block_n: int) -> int:
    """(block_m query x block_n key) tiles holding at least one visible pair: what the Triton kernels visit.

    A difference array per query block over key blocks (as llmjepa_kernels/block_layout.py builds its lists),
    so no T x T tensor: each query adds its two ranges' key-block intervals."""
    a, b, s = (x.long() for x in ranges)
    t = a.numel()
    n_m, n_n = -(-t // block_m), -(-t // block_n)
    i = torch.arange(t)
    row = i // block_m
    diff = torch.zeros(n_m * (n_n + 1), dtype=torch.long)
    for lo, hi, keep in ((a // block_n, b // block_n, a <= b), (s // block_n, i // block_n, s <= i)):
        lo, end = torch.where(keep, lo, 0), torch.where(keep, hi + 1, 0)
        weight = keep.long()
        diff.index_add_(0, row * (n_n + 1) + lo, weight)
        diff.index_add_(0, row * (n_n + 1) + end, -weight)
    return int((diff.view(n_m, n_n + 1).cumsum(1)[:, :n_n] > 0).sum())


def tile_pairs(ranges: Ranges, block_m: int, block_n: int) -> int:
    """Pairs the Triton kernels compute at this tile shape: every pair of every visited tile."""
    return touched_tiles(ranges, block_m, block_n) * block_m * block_n


def torch_form_pairs(ranges: Ranges, query_block: int | None = None) -> int:
    """Pairs the PyTorch form of the attention computes (llmjepa_kernels/torch_attention.py).

    Uses that module's own count where it has one; else the form as of this writing: query blocks of
    TORCH_QUERY_BLOCK, each against the key window from the lowest start of its ranges to its last query
    (or highest shared end)."""
    counted = _torch_attention_count(ranges, query_block)
    if counted is not None:
        return counted
    block = query_block or _torch_query_block()
    a, b, s = (x.long() for x in ranges)
    has_shared = b >= a
    lowest = torch.minimum(torch.where(has_shared, a, s), s)
    highest = torch.where(has_shared, b, -1)
    total = 0
    for q0 in range(0, a.numel(), block):
        q1 = min(q0 + block, a.numel())
        lo, hi = int(lowest[q0:q1].min()), max(q1, int(highest[q0:q1].max()) + 1)
        total += (q1 - q0) * (hi - lo)
    return total


def _torch_query_block() -> int:
    try:
        from llmjepa_kernels import torch_attention
    except ImportError:
        return TORCH_QUERY_BLOCK
    return getattr(torch_attention, "TORCH_QUERY_BLOCK", TORCH_QUERY_BLOCK)


def _torch_attention_count(ranges: Ranges, query_block: int | None) -> int | None:
    """The kernels helper's counting function, when llmjepa_kernels/torch_attention.py has one."""
    try:
        from llmjepa_kernels import torch_attention
    except ImportError:
        return None
    count = getattr(torch_attention, "computed_pairs", None)
    if count is None:
        return None
    from llmjepa_kernels.block_layout import BlockCausalLayout

    return int(count(BlockCausalLayout(*(x.to(torch.int32) for x in ranges)), query_block))


# ---- plans -------------------------------------------------------------------------------------
def row_ranges(row) -> Ranges:
    return as_ranges(row.shared_start, row.shared_end, row.causal_start)


def stream_ranges(stream) -> Ranges:
    return as_ranges(stream.shared_start, stream.shared_end, stream.causal_start)


def rows_floor(plan) -> Work:
    """The floor of a plan run row by row (the reference path's rows without their padding)."""
    pairs = sum(visible_pairs(row_ranges(row)) for row in plan.rows)
    return Work(plan.n_tokens, plan.label_tokens, pairs)


def stream_floor(stream) -> Work:
    """The floor of a packed stream (fast.PackedStream): its tokens, label positions, visible pairs."""
    return Work(stream.n_tokens, int(stream.label_index.numel()), visible_pairs(stream_ranges(stream)))


def padded_executed(plan, width: int | None = None) -> Work:
    """What run_reference runs: every row padded to `width` (default: the longest), logits at every
    position, every (query, key) pair of a row through SDPA with the dense mask."""
    width = width or max(len(row) for row in plan.rows)
    rows = len(plan.rows)
    return Work(rows * width, rows * width, rows * width * width)


def stream_executed(stream, backend: str, tile: tuple[int, int] | None = None) -> Work:
    """What run_fast runs with this attention backend: "torch" (query-block windows), "triton" (tiles
    of `tile`), or another (flex, ...: counted at its visible pairs, its tiling unknown here)."""
    ranges = stream_ranges(stream)
    if backend == "torch":
        pairs = torch_form_pairs(ranges)
    elif backend == "triton" and tile is not None:
        pairs = tile_pairs(ranges, *tile)
    else:
        pairs = visible_pairs(ranges)
    return Work(stream.n_tokens, int(stream.label_index.numel()), pairs)


def attention_waste(ranges: Ranges, tiles: list[tuple[int, int]]) -> dict[str, float]:
    """Computed / visible pairs for each Triton tile shape and the PyTorch form."""
    visible = max(visible_pairs(ranges), 1)
    out = {f"triton {m}x{n}": tile_pairs(ranges, m, n) / visible for m, n in tiles}
    out["torch form"] = torch_form_pairs(ranges) / visible
    return out


def triton_tiles(head_dim: int, dtype: torch.dtype) -> list[tuple[int, int]]:
    """The distinct (block_m, block_n) of default_config's three kernels, or common shapes without it."""
    try:
        from llmjepa_kernels.block_causal_attention import default_config

        config = default_config(head_dim, dtype)
        shapes = [(c.block_m, c.block_n) for c in (config.forward, config.dkdv, config.dq)]
    except Exception:  # no triton, or no GPU target to ask: report the usual shapes
        shapes = [(128, 64), (64, 64)]
    return sorted(set(shapes), reverse=True)


# ---- command line ------------------------------------------------------------------------------
def floor_table(
    shape: ModelShape, data: Path, argv: list[str], batch_size: int, microbatches: int
) -> tuple[dict, list[str]]:
    """Floor of (a)-(e) for the mode of `argv` (llmjepa-train flags) over the first microbatches of data.
    The fast methods are packed by the trainer's collator, as in training."""
    from llmjepa.commands.run import view_config
    from llmjepa.commands.train import parse_args
    from llmjepa.model import load_tokenizer
    from llmjepa.views.collate import ViewCollator
    from llmjepa.views.encoding import encode_all
    from llmjepa.views.examples import load_examples

    args = parse_args(["--train_file", str(data), *argv])
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    cfg = view_config(args)
    encoded, _ = encode_all(load_examples(data)[: batch_size * microbatches], tokenizer, cfg)
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded) - batch_size + 1, batch_size)]
    k = max(cfg.predictors, 1)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])
    regular = ViewCollator(_replace(cfg, regular=True), predictor_ids, pack=True)
    jepa = ViewCollator(cfg, predictor_ids, pack=True)
    isolated = None  # (e): --isolated_predictors --no_localized_masks, multi-step modes of a checkout that has it
    if cfg.num_prediction_steps > 0 and "isolated_predictors" in type(cfg).__dataclass_fields__:
        changes = {"isolated_predictors": True, "localized_masks": False}
        isolated = ViewCollator(_replace(cfg, **changes), predictor_ids, pack=True)
    totals: dict[str, Work] = {}
    for batch in batches:
        plan_r, plan_j = regular(batch)["plan"], jepa(batch)["plan"]
        works = [
            ("upstream_regular", rows_floor(plan_r)),
            ("packed_regular", stream_floor(plan_r.packed)),
            ("upstream_jepa", rows_floor(plan_j)),
            ("fast_jepa", stream_floor(plan_j.packed)),
        ]
        if isolated is not None:
            works.append(("fast_isolated", stream_floor(isolated(batch)["plan"].packed)))
        for name, work in works:
            totals[name] = totals.get(name, Work(0, 0, 0)) + work
    base = totals["packed_regular"].train_flops(shape)
    report = {
        "shape": asdict(shape),
        "head_to_layers_ratio": shape.head_to_layers_ratio,
        "microbatches": len(batches),
        "methods": {
            name: {**asdict(w), "train_flops": w.train_flops(shape), "flop_ratio": w.train_flops(shape) / base}
            for name, w in totals.items()
        },
    }
    lines = ["| method | tokens | head positions | visible pairs | train GFLOP | FLOP ratio to packed_regular |"]
    lines.append("|---|---|---|---|---|---|")
    for name, r in report["methods"].items():
        lines.append(
            f"| {name} | {r['tokens']} | {r['head_positions']} | {r['attention_pairs']} "
            f"| {r['train_flops'] / 1e9:.1f} | {r['flop_ratio']:.3f} |"
        )
    return report, lines


def _replace(cfg, **changes):
    from dataclasses import replace

    return replace(cfg, **changes)


def load_shape(name: str) -> ModelShape:
    if name in SHAPES:
        return SHAPES[name]
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"floor.py: --model {name}: neither {sorted(SHAPES)} nor a config.json file")
    from transformers import AutoConfig

    return ModelShape.from_config(AutoConfig.from_pretrained(path.parent if path.name == "config.json" else path))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="proxy", help=f"{sorted(SHAPES)} or a config.json")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "gsm8k_test.jsonl")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(ours)
    shape = load_shape(args.model)
    print(f"{args.model}: LM head / all layers FLOPs per token {shape.head_to_layers_ratio:.3f}")
    report, lines = floor_table(shape, args.data, theirs, args.batch_size, args.microbatches)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        title = (
            f"### FLOP floor, {args.model} shape (LM head / layers {shape.head_to_layers_ratio:.3f}), "
            f"{args.data.name}, batch {args.batch_size}, {report['microbatches']} microbatches, flags: "
            f"{json.dumps(theirs)}"
        )
        args.md.write_text("\n".join([title, "", *lines]) + "\n")
    return report


if __name__ == "__main__":
    main()
