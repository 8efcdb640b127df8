"""What the collator ships per microbatch (issue 8 item 4, issue 7 item 2).

- Packed for the fast path, a PackedPlan: the stream with its layout and the plan's counts, no per-token
  rows; the counts equal the ViewPlan's, the stream equals pack_plan's, and run_fast gives the same
  outputs from either. The whole ViewPlan where rows are read (keep_rows, STP, the reference executor).
- The stream and its layout pickle as numpy arrays (no torch storages), and come back equal, tile lists
  included.
- With --attention_backend flex the collator builds FlexAttention's 128 x 128 tile list, and the
  BlockMask is made from it without building any list on the device.
- llmjepa-train's collator: PackedPlan for --impl fast, rows kept with --debug; a training step runs on it.
"""

import pickle
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers tensor reductions with ForkingPickler)

from llmjepa.commands.run import build_run
from llmjepa.commands.train import parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.execution.fast import run_fast
from llmjepa.model import ModelSpec, load_model, load_tokenizer
from llmjepa.views.builders import build_plan
from llmjepa.views.collate import ViewCollator
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.layout import AttentionShape, PackedPlan, StreamWithLayout, kernel_tiles
from llmjepa.views.pack import pack_plan
from llmjepa.views.plan import ViewPlan

N2_LOCALIZED = ViewConfig(predictors=1, num_prediction_steps=2)


@pytest.fixture(scope="module")
def tokenizer_and_batch():
    from llmjepa.views.examples import load_examples

    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    encoded, _ = encode_all(load_examples(str(sample_data_path("train")))[:4], tokenizer, N2_LOCALIZED)
    predictor_ids = tokenizer.convert_tokens_to_ids(["<|predictor_1|>"])
    return tokenizer, encoded, predictor_ids


def assert_streams_equal(ours, theirs) -> None:
    for name, value in vars(theirs).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(ours, name), value), name


def assert_layouts_equal(ours, theirs) -> None:
    for name in ("shared_start", "shared_end", "causal_start"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert ours.num_tokens == theirs.num_tokens and ours.device == theirs.device
    assert ours.built_tiles() == theirs.built_tiles()
    for direction, block_m, block_n in theirs.built_tiles():
        a, b = ours.tiles(block_m, block_n).built[direction], theirs.tiles(block_m, block_n).built[direction]
        for name in ("full_count", "full_index", "part_count", "part_index"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (direction, block_m, block_n, name)


def test_packed_plan_carries_the_counts_not_the_rows(tokenizer_and_batch) -> None:
    _, encoded, predictor_ids = tokenizer_and_batch
    plan = build_plan(encoded, N2_LOCALIZED, predictor_ids)
    shipped = ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, keep_rows=False)(encoded)["plan"]
    assert isinstance(shipped, PackedPlan) and not hasattr(shipped, "rows") and not hasattr(shipped, "pairs")
    assert shipped.stp is None
    counts = ("label_tokens", "n_pairs", "n_tokens", "n_rows", "n_examples")
    assert {name: getattr(shipped, name) for name in counts} == {name: getattr(plan, name) for name in counts}
    assert shipped.n_pairs > 0 and shipped.n_rows == len(plan.rows) > shipped.n_examples == len(encoded)
    assert_streams_equal(shipped.packed, pack_plan(plan))
    loaded = pickle.loads(pickle.dumps(shipped))
    assert {name: getattr(loaded, name) for name in counts} == {name: getattr(plan, name) for name in counts}
    assert_streams_equal(loaded.packed, shipped.packed)
    assert_layouts_equal(loaded.packed.layout, shipped.packed.layout)


def test_the_whole_plan_where_rows_are_read(tokenizer_and_batch) -> None:
    _, encoded, predictor_ids = tokenizer_and_batch
    kept = ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, keep_rows=True)(encoded)["plan"]
    assert isinstance(kept, ViewPlan) and isinstance(kept.packed, StreamWithLayout) and kept.rows
    reference = ViewCollator(N2_LOCALIZED, predictor_ids, pack=False, keep_rows=False)(encoded)["plan"]
    assert isinstance(reference, ViewPlan) and reference.packed is None and reference.rows


def test_an_stp_plan_keeps_its_rows(tokenizer_and_batch) -> None:
    """STP places its terms by the rows' lengths (stp.hidden_rows): its plan ships whole."""
    from llmjepa.commands.stp_flags import stp_config

    tokenizer, _, _ = tokenizer_and_batch
    args = parse_args(["--linear", "e2e", "--lbd", "0.5", "--output_dir", "/tmp/unused"])
    cfg = ViewConfig(stp=stp_config(args))
    from llmjepa.views.examples import load_examples

    encoded, _ = encode_all(load_examples(str(sample_data_path("train")))[:2], tokenizer, cfg)
    shipped = ViewCollator(cfg, [], pack=True, keep_rows=False)(encoded)["plan"]
    assert isinstance(shipped, ViewPlan) and shipped.stp is not None and shipped.packed is not None


def test_run_fast_gives_the_same_from_a_packed_plan(tokenizer_and_batch) -> None:
    from llmjepa_kernels import hf_attention

    tokenizer, encoded, predictor_ids = tokenizer_and_batch
    hf_attention.register()
    model = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float32", seed=3), tokenizer)
    model.set_attn_implementation(hf_attention.ATTENTION_NAME)
    plan = build_plan(encoded, N2_LOCALIZED, predictor_ids)
    shipped = pickle.loads(pickle.dumps(ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, keep_rows=False)(encoded)))
    with torch.no_grad():
        ours, theirs = run_fast(model, shipped["plan"]), run_fast(model, plan)
    assert torch.equal(ours.ce_sum, theirs.ce_sum) and torch.equal(ours.hidden, theirs.hidden)
    assert torch.equal(ours.pred_index, theirs.pred_index) and torch.equal(ours.target_index, theirs.target_index)


def numpy_leaves(obj, seen: dict[int, object] | None = None) -> tuple[int, int]:
    """(numpy arrays, torch tensors) in an object's pickled state, recursively."""
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return 0, 0
    seen[id(obj)] = obj  # kept alive: the states made on the way are temporaries whose ids would be reused
    if isinstance(obj, np.ndarray):
        return 1, 0
    if isinstance(obj, torch.Tensor):
        return 0, 1
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__getstate__") and not isinstance(obj, (int, float, str, bytes, torch.device, torch.dtype)):
        state = obj.__getstate__()
        children = list(state.values()) if isinstance(state, dict) else []
    else:
        children = []
    counts = [numpy_leaves(child, seen) for child in children]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


@pytest.mark.parametrize("backend", ["triton", "flex"])
def test_stream_and_layout_pickle_as_numpy(tokenizer_and_batch, backend: str) -> None:
    """No torch storage in what the data loader pickles: the ranges, the stream and every tile list go as
    numpy arrays, through pickle and the workers' ForkingPickler, and come back equal as tensors."""
    _, encoded, predictor_ids = tokenizer_and_batch
    shape = AttentionShape(64, torch.float32, backend)
    collate = ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, attention=shape, keep_rows=False)
    stream = collate(encoded)["plan"].packed
    layout = stream.layout
    assert set(layout.built_tiles()) == set(kernel_tiles(shape)) and layout.built_tiles()
    arrays, tensors = numpy_leaves(stream)
    lists = len(layout.built_tiles())
    assert tensors == 0 and arrays == 9 + 3 + 4 * lists, (arrays, tensors)
    for loads, dumps in ((pickle.loads, pickle.dumps), (ForkingPickler.loads, ForkingPickler.dumps)):
        loaded = loads(dumps(stream))
        assert_streams_equal(loaded, stream)
        assert_layouts_equal(loaded.layout, layout)
        assert all(lists._masks is None for lists in loaded.layout._tiles.values())


def test_flex_block_mask_from_the_collators_list(tokenizer_and_batch, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the flex backend the collator builds (by_query, 128, 128); the BlockMask of the shipped layout
    reads it and builds no list (a list built at first use on the GPU costs host syncs)."""
    from llmjepa_kernels import block_layout
    from llmjepa_kernels.flex_attention import FLEX_BLOCK, flex_block_mask

    _, encoded, predictor_ids = tokenizer_and_batch
    shape = AttentionShape(64, torch.float32, "flex")
    assert kernel_tiles(shape) == [("by_query", FLEX_BLOCK, FLEX_BLOCK)]
    collate = ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, attention=shape, keep_rows=False)
    layout = pickle.loads(pickle.dumps(collate(encoded)["plan"].packed)).layout.to(torch.device("cpu"))

    def no_building(*args, **kwargs):
        raise AssertionError("a tile list was built after the collator")

    monkeypatch.setattr(block_layout, "_tile_masks", no_building)
    mask = flex_block_mask(layout)
    lists = layout.tiles(FLEX_BLOCK, FLEX_BLOCK).by_query
    assert torch.equal(mask.kv_num_blocks[0, 0], lists.part_count)
    assert torch.equal(mask.full_kv_num_blocks[0, 0], lists.full_count)


def test_training_ships_packed_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """llmjepa-train --impl fast: the collator returns PackedPlans (rows kept with --debug), and a step's
    record counts the plan's rows and tokens from them."""
    argv = ["--impl", "fast", "--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2"]
    argv += ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "1", "--dtype", "float32"]
    debug = build_run(parse_args([*argv, "--debug", "1", "--output_dir", str(tmp_path / "debug")])).trainer
    assert debug.data_collator.keep_rows
    trainer = build_run(parse_args([*argv, "--output_dir", str(tmp_path / "run")])).trainer
    assert not trainer.data_collator.keep_rows
    collate, plans = trainer.data_collator, []

    def recording(batch):  # the same microbatch with its rows, to check the record against
        plans.append(debug.data_collator(batch)["plan"])
        out = collate(batch)
        assert isinstance(out["plan"], PackedPlan) and isinstance(plans[-1], ViewPlan)
        return out

    trainer.data_collator = recording
    trainer.args.dataloader_num_workers = 0  # the recording collator runs in this process
    trainer.train()
    record, plan = trainer.history[0], plans[0]  # no workers: the first collated is the first microbatch
    assert record["rows"] == plan.n_rows and record["tokens"] == plan.n_tokens
    assert record["pairs"] == plan.n_pairs and record["label_tokens"] == plan.label_tokens


def test_a_plan_subclass_keeps_its_fields(tokenizer_and_batch) -> None:
    """A ViewPlan subclass's own fields (views.EntropyPlan's `entropy`) and counts ride along: a reader
    such as views.ViewReadout finds them on the PackedPlan; an attribute it lacks raises, never None."""
    from dataclasses import dataclass

    @dataclass
    class Probed(ViewPlan):
        probe: tuple = ()

        @property
        def n_pairs(self) -> int:
            return 1

    _, encoded, predictor_ids = tokenizer_and_batch
    plan = build_plan(encoded, N2_LOCALIZED, predictor_ids)
    probed = Probed(rows=plan.rows, pairs=plan.pairs, n_examples=plan.n_examples, probe=(1, 2))
    shipped = PackedPlan.of(probed, pack_plan(probed))
    assert shipped.probe == (1, 2) and shipped.n_pairs == 1 and getattr(shipped, "entropy", None) is None
    assert pickle.loads(pickle.dumps(shipped)).probe == (1, 2)
    with pytest.raises(AttributeError, match="ships no rows"):
        _ = shipped.rows


def test_the_loaders_pin_thread_pins_the_stream_and_layout(tokenizer_and_batch, monkeypatch) -> None:
    """With pin_memory=True (on CUDA) the data loader pins what the collator returned, in its own thread:
    every tensor of the stream and its layout (tile lists included); shown with pin_memory recorded, as
    pinning needs CUDA."""
    from torch.utils.data._utils.pin_memory import pin_memory

    _, encoded, predictor_ids = tokenizer_and_batch
    shape = AttentionShape(64, torch.float32, "triton")
    collate = ViewCollator(N2_LOCALIZED, predictor_ids, pack=True, attention=shape, keep_rows=False)
    out = collate(encoded)
    pinned_ids = set()

    def record(self):
        copy = self.clone()
        pinned_ids.add(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    loaded = pin_memory(out)
    plan = loaded["plan"]
    assert isinstance(plan, PackedPlan) and plan.n_tokens == out["plan"].n_tokens
    layout = plan.packed.layout
    tensors = [t for t in vars(plan.packed).values() if isinstance(t, torch.Tensor)]
    tensors += [layout.shared_start, layout.shared_end, layout.causal_start]
    for direction, block_m, block_n in layout.built_tiles():
        tensors += list(vars(layout.tiles(block_m, block_n).built[direction]).values())
    assert len(tensors) == 9 + 3 + 4 * len(kernel_tiles(shape)) and all(id(t) in pinned_ids for t in tensors)
    assert_layouts_equal(layout, out["plan"].packed.layout)
