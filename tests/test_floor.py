"""bench/floor.py's FLOP model on cases counted by hand, and its pair counts against brute force.

Hand counts use a toy shape: hidden 4, one layer, 2 query heads and 1 KV head of 2, MLP 8, vocab 10:
  linear per token  2 * (4*4 + 2*4*2 + 4*4 + 3*4*8) = 2 * 144 = 288
  LM head           2 * 4 * 10 = 80 per position
  attention         4 * 2 * 2 = 16 per visible pair
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from llmjepa.views.pack import pack_plan
from llmjepa.views.plan import IGNORE_INDEX, ViewPlan, ViewRow, causal_row

FLOOR = Path(__file__).resolve().parents[1] / "bench" / "floor.py"


def load_floor():
    spec = importlib.util.spec_from_file_location("floor", FLOOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


floor = load_floor()
TOY = floor.ModelShape(hidden=4, layers=1, q_heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10)


def test_toy_shape_costs() -> None:
    assert TOY.linear_flops_per_token == 288
    assert TOY.head_flops_per_position == 80
    assert TOY.attention_flops_per_pair == 16
    two_layers = floor.ModelShape(4, 2, 2, 1, 2, 8, 10)
    assert two_layers.linear_flops_per_token == 576 and two_layers.attention_flops_per_pair == 32


def test_proxy_matches_llama_1b_head_ratio() -> None:
    """The CPU proxy's LM head costs, relative to its layers, what Llama-3.2-1B's does (within 5%)."""
    llama, proxy = floor.LLAMA_1B.head_to_layers_ratio, floor.PROXY.head_to_layers_ratio
    assert llama == pytest.approx(2 * 2048 * 128256 / (16 * 2 * 60_817_408))
    assert proxy == pytest.approx(llama, rel=0.05)


def test_one_causal_row_by_hand() -> None:
    # 3 tokens, labels on tokens 1 and 2: two label positions; causal pairs 1 + 2 + 3 = 6
    plan = ViewPlan(rows=[causal_row(0, "full", [5, 6, 7], [IGNORE_INDEX, 6, 7])], n_examples=1)
    work = floor.rows_floor(plan)
    assert work == floor.Work(tokens=3, head_positions=2, attention_pairs=6)
    assert work.forward_flops(TOY) == 3 * 288 + 2 * 80 + 6 * 16 == 1120
    assert work.train_flops(TOY) == 3360
    packed = floor.stream_floor(pack_plan(plan))
    assert packed == work  # one row packs to itself


def test_padding_and_dense_attention_by_hand() -> None:
    # rows of 3 and 1 tokens padded to 3: 6 positions, logits at all 6, 2 * 3 * 3 = 18 pairs
    rows = [causal_row(0, "full", [5, 6, 7], [IGNORE_INDEX, 6, 7]), causal_row(1, "full", [8], [IGNORE_INDEX])]
    plan = ViewPlan(rows=rows, n_examples=2)
    assert floor.padded_executed(plan) == floor.Work(6, 6, 18)
    assert floor.padded_executed(plan, width=5) == floor.Work(10, 10, 50)
    assert floor.rows_floor(plan) == floor.Work(4, 2, 7)


def test_shared_range_pairs_by_hand() -> None:
    # token 0, 1: causal; tokens 2, 3: causal from 2 and also see shared [0, 0]
    # visible: 1, 2, 1 + 1, 2 + 1 = 8
    row = ViewRow(0, "predictor", [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 2, 2], [0, 0, 0, 0], [-1, -1, 0, 0], [-100] * 4)
    assert floor.visible_pairs(floor.row_ranges(row)) == 8
    # an overlapping shared range is not counted twice: token 2 sees [0, 2] by both ranges -> 3
    ranges = floor.as_ranges([0, 0, 0], [-1, -1, 2], [0, 0, 0])
    assert floor.visible_pairs(ranges) == 1 + 2 + 3


def test_tile_counts_by_hand() -> None:
    causal = floor.as_ranges([0] * 4, [-1] * 4, [0] * 4)
    assert floor.visible_pairs(causal) == 10
    assert floor.touched_tiles(causal, 2, 2) == 3  # (0,0), (1,0), (1,1)
    assert floor.tile_pairs(causal, 2, 2) == 12
    two_segments = floor.as_ranges([0] * 4, [-1] * 4, [0, 0, 2, 2])
    assert floor.visible_pairs(two_segments) == 6
    assert floor.tile_pairs(two_segments, 2, 2) == 8  # the two diagonal tiles
    assert floor.tile_pairs(two_segments, 4, 4) == 16
    # T = 5, query block 2: windows 2x2, 2x4, 1x5
    causal5 = floor.as_ranges([0] * 5, [-1] * 5, [0] * 5)
    assert floor.torch_form_pairs(causal5, query_block=2) == 4 + 8 + 5


def brute_force(ranges, block_m: int, block_n: int) -> tuple[int, int]:
    a, b, s = ranges
    t = a.numel()
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    visible = ((j >= a[:, None]) & (j <= b[:, None])) | ((j >= s[:, None]) & (j <= i))
    n_m, n_n = -(-t // block_m), -(-t // block_n)
    padded = torch.zeros(n_m * block_m, n_n * block_n, dtype=torch.bool)
    padded[:t, :t] = visible
    tiles = padded.view(n_m, block_m, n_n, block_n).any(3).any(1)
    return int(visible.sum()), int(tiles.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_equal_brute_force_on_random_plans(seed: int) -> None:
    """Random JEPA-like streams (packed plans with shared prefixes): difference arrays == dense count."""
    gen = torch.Generator().manual_seed(seed)
    print(f"seed {seed}")
    rows, pairs = [], []
    for ex in range(3):
        n = int(torch.randint(5, 40, (1,), generator=gen))
        rows.append(causal_row(ex, "full", list(range(n)), [IGNORE_INDEX] + list(range(1, n))))
    for ex in range(3):
        view1 = rows[ex]
        cut = int(torch.randint(1, len(view1), (1,), generator=gen))
        tail = int(torch.randint(1, 10, (1,), generator=gen))
        ids = view1.input_ids[:cut] + [99] * tail
        row = causal_row(ex, "predictor", ids)
        row.prefix_source = (ex, cut)
        rows.append(row)
        pairs.append(((len(rows) - 1, len(ids) - 1), (ex, len(view1) - 1)))
    stream = pack_plan(ViewPlan(rows=rows, pairs=pairs, n_examples=3))
    ranges = floor.stream_ranges(stream)
    assert bool((stream.shared_end >= stream.shared_start).any())  # prefix sharing made shared ranges
    for block_m, block_n in ((16, 16), (32, 16), (8, 32)):
        visible, tiles = brute_force(ranges, block_m, block_n)
        assert floor.visible_pairs(ranges) == visible
        assert floor.touched_tiles(ranges, block_m, block_n) == tiles
        assert visible <= floor.tile_pairs(ranges, block_m, block_n)
    assert floor.torch_form_pairs(ranges) >= floor.visible_pairs(ranges)


def test_tiles_agree_with_block_layout() -> None:
    """The kernels' own tile lists visit the tiles floor.py counts."""
    block_layout = pytest.importorskip("llmjepa_kernels.block_layout")
    ranges = floor.as_ranges([0] * 6 + [0] * 5, [-1] * 6 + [2] * 5, [0] * 6 + [6] * 5)
    layout = block_layout.BlockCausalLayout(*(x.to(torch.int32) for x in ranges))
    for shape in ((2, 2), (4, 2), (2, 4)):
        full, partial = layout.visited_tiles(*shape)
        assert floor.touched_tiles(ranges, *shape) == full + partial
