"""pytest-benchmark: packing and collation on the host, per microbatch, as llmjepa-train's data loader runs it
(llmjepa.views.collate.ViewCollator on the embedded tokenizer's demo data, batch 8):

- reference: the ViewPlan (rows, pairs) the reference executor pads;
- packed: the plan packed into one stream with its ranges (the fast path's PyTorch attention reads these);
- packed_triton_tiles / packed_flex_tiles: packed, plus the kernels' tile lists built on the host;
- pickle_round_trip: pickling and unpickling the packed output, what a data-loader worker ships to training.

Two layouts: LLM-JEPA as llmjepa-train runs it by default (one pair per example), and Step-JEPA
(--num_prediction_steps 2 --predictors 1). Before timing, the packed plan must count the same label tokens and
pairs as the reference.

    pytest bench/test_bench_collate.py --benchmark-only
    pytest bench/test_bench_collate.py --benchmark-disable                 # smoke: each once, no timing

Host code only: the same on a GPU machine's CPU. bench_collate.py measures the sizes on real data.
"""

import functools
import pickle

import pytest
import torch
from benchlib import record

from llmjepa.commands.run import encode_split, load_data, view_config
from llmjepa.commands.train import parse_args
from llmjepa.model import load_tokenizer
from llmjepa.views.collate import ViewCollator
from llmjepa.views.layout import AttentionShape

BATCH = 8
MODES = {"llm_jepa": [], "step_jepa": ["--num_prediction_steps", "2", "--predictors", "1"]}
WAYS = ("reference", "packed", "packed_triton_tiles", "packed_flex_tiles", "pickle_round_trip")


@functools.cache
def batch_of(mode: str) -> tuple:
    """(config, predictor ids, one microbatch of Encoded) of the demo data, as llmjepa-train makes them."""
    args = parse_args([*MODES[mode], "--impl", "fast", "--output_dir", "/tmp/llmjepa-bench-collate"])
    tokenizer = load_tokenizer(args.model_name)
    cfg = view_config(args)
    train, _, source = load_data(args)
    encoded = encode_split(train[:BATCH], tokenizer, cfg, source)
    k = max(args.predictors, 1)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])
    return cfg, predictor_ids, encoded


def collator(way: str, cfg, predictor_ids: list[int]) -> ViewCollator:
    if way == "reference":
        return ViewCollator(cfg, predictor_ids)
    backend = {"packed_triton_tiles": "triton", "packed_flex_tiles": "flex"}.get(way)
    shape = AttentionShape(64, torch.float32, backend=backend) if backend else None
    return ViewCollator(cfg, predictor_ids, pack=True, attention=shape, keep_rows=False)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("mode", list(MODES))
def test_collate(benchmark, mode: str, way: str) -> None:
    cfg, predictor_ids, batch = batch_of(mode)
    reference = ViewCollator(cfg, predictor_ids)(batch)["plan"]
    collate = collator("packed" if way == "pickle_round_trip" else way, cfg, predictor_ids)
    plan = collate(batch)["plan"]
    assert (plan.label_tokens, plan.n_pairs) == (reference.label_tokens, reference.n_pairs), way
    assert reference.n_pairs > 0
    record(benchmark, f"collation, {mode}, batch {BATCH}", mode=mode, way=way, pairs=reference.n_pairs)
    if way == "pickle_round_trip":
        out = collate(batch)
        benchmark.extra_info["bytes"] = len(pickle.dumps(out))
        benchmark(lambda: pickle.loads(pickle.dumps(out)))
    else:
        benchmark(collate, batch)
