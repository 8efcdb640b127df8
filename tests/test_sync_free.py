"""No host-device sync inside a fast-path microbatch, counted on the CPU (issue 7, item 2).

On CUDA the host waits for the GPU whenever it reads a device value or makes a blocking copy. This test
trains the fast path as it runs on CUDA (the Triton attention, here under the interpreter; the fused
pair loss; the collator building the stream's layout with the kernels' tile lists) and counts every
operation that would make the host wait there:

  scalar read      aten._local_scalar_dense (item(), int(), float(), bool() of a tensor), aten.equal
  data-dependent   aten.nonzero, masked_select, index / index_put with a bool mask, unique*,
                   repeat_interleave without output_size (the output size is read from the device)
  download         tolist(), numpy(), cpu(), __array__() of a device tensor
  blocking upload  Tensor.to(device) of a host tensor without non_blocking=True, torch.tensor(...,
                   device=...) and as_tensor of Python data, an op mixing a device tensor with a host
                   tensor of one or more dimensions (CUDA would copy the host tensor first)

Device and host on a machine with one device. Tensors count as "device" tensors when they are model
parameters, buffers or gradients, come out of an upload (Tensor.to of a host tensor), come out of a
factory op (zeros, arange...: the step creates its tensors on the device), or come out of an op with a
device tensor among its inputs. Everything else is host data: what the collator made (the data loader
runs with the counter paused), Python scalars lifted to tensors (the optimizer's step counts). What a CPU
run cannot show: `Tensor.to("cpu")` of a device tensor is a no-op here (so only the explicit reads
above count as downloads), and code that branches on `device.type == "cpu"` takes its CPU branch; the
one such branch on this path (cosine_jepa_loss checks pair indices on CPU tensors whatever
check_indices says, because it costs no sync there) is reported apart and not counted.

The Triton interpreter copies every tensor argument to numpy and back inside each launch; a launch on
CUDA reads no tensor values, so the counter is paused inside the interpreter's launches
(GridExecutor.__call__). Data loading is excluded: the collator runs in data-loader workers.
The counts, before and after the fast path was made sync-free, are in docs/fast_path.md.
"""

import contextlib
import functools
import importlib
import traceback
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from custom_ops import inside_our_op
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from llmjepa.commands.run import build_run
from llmjepa.commands.train import parse_args
from llmjepa.execution.fast import attention_shape, run_fast
from llmjepa.training.trainer import JepaTrainer

interpreted = pytest.mark.interpreter  # counts the CUDA path on the CPU: the Triton interpreter (conftest.py)

aten = torch.ops.aten
# is_nonzero and item: how bool(t) and t.item() reach the mode inside a custom op (below autograd, undecomposed)
SCALAR_READS = {aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default, aten.item.default}
DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
PROJECT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class Sync:
    phase: str
    step: int
    kind: str
    op: str
    site: str  # innermost frame outside torch and this file: file:line function


def call_site() -> tuple[str, str]:
    """(site, source line) of the innermost frame that is neither torch nor this test."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename
        if "/torch/" in name or name == __file__ or "/contextlib.py" in name:
            continue
        short = name.replace(PROJECT + "/", "").split("site-packages/")[-1]
        return f"{short}:{frame.lineno} {frame.name}", (frame.line or "")
    return "?", ""


def cpu_only_branch(site: str, line: str) -> bool:
    """cosine_jepa_loss's index check (`_check_in_range`, inside its custom op) runs on CPU tensors whatever
    check_indices says (no sync there); on CUDA the trainer's check_indices=False skips it."""
    return site.startswith("llmjepa_kernels/cosine_loss.py") and "_check_in_range" in site and "index" in line


class SyncCounter(TorchDispatchMode):
    """Counts what would make the host wait for a CUDA device (module docstring), by phase and step."""

    def __init__(self) -> None:
        super().__init__()
        self.device_tensors = WeakIdKeyDictionary()
        self.syncs: list[Sync] = []
        self.cpu_only: list[Sync] = []
        self.phase = "trainer"
        self.step = 0
        self.paused = 0

    # ---- bookkeeping ---------------------------------------------------------------------------
    def mark(self, tree) -> None:
        for t in pytree.tree_leaves(tree):
            if isinstance(t, torch.Tensor):
                self.device_tensors[t] = True

    def on_device(self, t: torch.Tensor) -> bool:
        return t in self.device_tensors

    def record(self, kind: str, op: str) -> None:
        site, line = call_site()
        sync = Sync(self.phase, self.step, kind, op, site)
        (self.cpu_only if cpu_only_branch(site, line) else self.syncs).append(sync)

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def counts(self, phase: str, step: int) -> int:
        return sum(1 for s in self.syncs if s.phase == phase and s.step == step)

    # ---- the dispatch mode -----------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        ours, out = inside_our_op(self, func, args, kwargs)  # the kernels' custom ops: count what they run
        if ours:
            return out
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        device = [t for t in tensors if self.on_device(t)]
        if device:
            self.classify(func, args, kwargs, tensors)
        out = func(*args, **kwargs)
        if device or not tensors:  # computed on the device, or made by a factory op in the step
            self.mark(out)
        return out

    def classify(self, func, args, kwargs, tensors: list[torch.Tensor]) -> None:
        if func in SCALAR_READS:
            self.record("scalar read", str(func))
        elif func in DATA_DEPENDENT:
            self.record("data-dependent", str(func))
        elif func in INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in pytree.tree_leaves(args[1])
        ):
            self.record("data-dependent", f"{func} with a bool mask")
        elif func in REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
            self.record("data-dependent", f"{func} without output_size")
        host = [t for t in tensors if not self.on_device(t) and t.dim() > 0]
        if host:
            self.record("blocking upload", f"{func} mixes a host tensor {tuple(host[0].shape)}")


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch):
    """The dispatch mode plus wrappers for what does not reach the dispatcher on the CPU (downloads,
    uploads), and the counter paused inside the Triton interpreter's launches."""
    import triton.runtime.interpreter as interpreter

    from llmjepa_kernels import block_layout

    counter = SyncCounter()

    def wrap_download(name: str):
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            if not counter.paused and counter.on_device(self):
                counter.record("download", f"Tensor.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("tolist", "numpy", "cpu", "__array__"):
        wrap_download(name)

    original_to = torch.Tensor.to

    @functools.wraps(original_to)
    def to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if not counter.paused and device is not None and not counter.on_device(self):
            if not non_blocking:
                counter.record("blocking upload", "Tensor.to without non_blocking")
            counter.mark(out)
        return out

    monkeypatch.setattr(torch.Tensor, "to", to)

    def wrap_factory(name: str):
        original = getattr(torch, name)

        @functools.wraps(original)
        def wrapper(data, *args, **kwargs):
            out = original(data, *args, **kwargs)
            if not counter.paused and kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
                counter.record("blocking upload", f"torch.{name}(..., device=...)")
                counter.mark(out)
            return out

        monkeypatch.setattr(torch, name, wrapper)

    for name in ("tensor", "as_tensor"):
        wrap_factory(name)

    launch = interpreter.GridExecutor.__call__

    def paused_launch(self, *args, **kwargs):
        with counter.pause():
            return launch(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", paused_launch)

    # A layout of host ranges is built on the host (run_fast builds the lists a collator was not asked
    # for before the upload): its factory ops make host tensors, which this counter would take for
    # device ones. Built from device ranges, the same code counts.
    get_lists = block_layout._TileLists.get

    def lists_where_built(self, direction):
        host = not counter.on_device(self._layout.shared_start)
        with counter.pause() if host else contextlib.nullcontext():
            return get_lists(self, direction)

    monkeypatch.setattr(block_layout._TileLists, "get", lists_where_built)
    build_layout = block_layout.BlockCausalLayout.__init__

    def layout_where_built(self, shared_start, *args, **kwargs):
        host = not counter.on_device(shared_start)
        with counter.pause() if host else contextlib.nullcontext():
            build_layout(self, shared_start, *args, **kwargs)

    monkeypatch.setattr(block_layout.BlockCausalLayout, "__init__", layout_where_built)
    with counter:
        yield counter


class PausedIterator:
    """The Trainer's batch iterator with the counter paused: data loading is not part of the step."""

    def __init__(self, iterator, counter: SyncCounter) -> None:
        self.iterator, self.counter = iterator, counter

    def __iter__(self):
        return self

    def __next__(self):
        with self.counter.pause():
            return next(self.iterator)


class CountedTrainer(JepaTrainer):
    """JepaTrainer with its phases named for the counter: a step starts in get_batch_samples."""

    counter: SyncCounter

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        self.counter.step += 1
        with self.counter.in_phase("get_batch_samples"):
            return super().get_batch_samples(PausedIterator(epoch_iterator, self.counter), num_batches, device)

    def training_step(self, model, inputs, num_items_in_batch=None):
        with self.counter.in_phase("microbatch"):  # forward and backward of one microbatch
            return super().training_step(model, inputs, num_items_in_batch)

    def finish_step(self, grad_norm) -> None:
        with self.counter.in_phase("finish_step"):
            super().finish_step(grad_norm)


STEPS = 2
GRAD_ACCUM = 2


@interpreted
@pytest.mark.parametrize(
    "checkpointing, collator_tiles",
    [(False, True), (True, False)],
    ids=["plain, tile lists from the collator", "checkpointing, tile lists from run_fast on the host"],
)
def test_fast_microbatch_has_no_host_device_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpointing: bool, collator_tiles: bool
) -> None:
    argv = ["--batch_size", "1", "--grad_accum", str(GRAD_ACCUM), "--dtype", "float32", "--impl", "fast"]
    argv += ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2", "--dropout", "0"]
    argv += ["--max_train_steps", str(STEPS), "--output_dir", str(tmp_path)]
    argv += ["--gradient_checkpointing"] if checkpointing else []
    trainer = build_run(parse_args(argv)).trainer
    # As on CUDA: the Triton attention (here interpreted), the fused pair loss, and the collator building
    # the layout with the Triton kernels' tile lists (on CUDA run.py asks fast.triton_attention_shape);
    # a collator not told the shape leaves the lists to run_fast, which builds them before the upload.
    assert trainer.loss_config.fused_pair_loss
    trainer.executor = partial(run_fast, attention="triton")
    trainer.data_collator.attention = attention_shape(trainer.model) if collator_tiles else None
    trainer.__class__ = CountedTrainer
    with counting(monkeypatch) as counter:
        counter.mark([*trainer.model.parameters(), *trainer.model.buffers()])
        trainer.counter = counter
        trainer.train()

    lines = [f"{s.phase} step {s.step}: {s.kind}: {s.op} at {s.site}" for s in counter.syncs]
    tally = Counter((s.phase, s.step) for s in counter.syncs)
    print(f"syncs by (phase, step): {dict(tally)}")
    print("\n".join(lines))
    print(f"not counted (CPU-only branch): {[f'{s.op} at {s.site}' for s in counter.cpu_only]}")
    assert len(trainer.history) == STEPS
    ours = [s for s in counter.syncs if s.phase in ("microbatch", "finish_step", "get_batch_samples")]
    microbatch = [line for s, line in zip(counter.syncs, lines) if s.phase == "microbatch"]
    assert not microbatch, "syncs inside a microbatch's forward and backward:\n" + "\n".join(microbatch)
    for step in range(1, STEPS + 1):
        assert counter.counts("get_batch_samples", step) == 0, lines
        assert counter.counts("finish_step", step) == 1, lines  # the step's one read of its sums
    assert len(ours) == STEPS
    # transformers' Trainer between microbatches: only the logging step's reads: its two (loss, grad norm) and
    # ours of the window's embedding health (one copy of four numbers, training/health.py); its
    # logging_nan_inf_filter (two reads per microbatch) is off in llmjepa-train
    assert counter.counts("trainer", 1) == 3, lines
    assert sum("summarize_health" in line for line in lines if line.startswith("trainer step 1:")) == 1, lines
    # the CPU-only index check of the fused loss: two per microbatch (predictor and target indices)
    assert len(counter.cpu_only) <= 2 * STEPS * GRAD_ACCUM


def test_the_counter_sees_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter is not blind: each kind it counts, done once on a device tensor, counts once; the
    same on host tensors counts nothing."""
    host, upload = torch.arange(6.0), torch.ones(6)
    with counting(monkeypatch) as counter:
        x = torch.zeros(6) + upload.to("cpu", non_blocking=True)  # factory output: device; upload: no sync
        host.sum().item()
        host.tolist()
        assert not counter.syncs
        x.sum().item()
        x.tolist()
        x[x > 2]
        x.nonzero()
        x + host
        host.to("cpu")  # on one device it returns host itself, which from now on counts as the upload
        torch.tensor([1.0, 2.0], device="cpu")
        x.repeat_interleave(torch.full((6,), 2))
    kinds = Counter(s.kind for s in counter.syncs)
    assert kinds == {"scalar read": 1, "download": 1, "data-dependent": 3, "blocking upload": 3}, counter.syncs


def test_uploads_go_through_pinned_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """to_device (what PackedStream.to and BlockCausalLayout.to use): to CUDA a host tensor is pinned,
    then copied with non_blocking=True; shown here with the CUDA calls replaced by recorders."""
    from llmjepa_kernels.block_layout import to_device

    calls = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", a, k)) or self)
    to_device(torch.arange(3), torch.device("cuda"))
    assert calls == ["pin", ("to", (torch.device("cuda"),), {"non_blocking": True})]


@interpreted
def test_collator_builds_only_the_lists_the_kernels_read(tmp_path: Path) -> None:
    """Each kernel reads one direction of its tile shape: forward and dQ by query block, dK/dV by key
    block. The collator builds those and no others; they survive the data loader's pickling (without the
    tile masks) and the move to a device."""
    import pickle

    from llmjepa.views.layout import kernel_tiles
    from llmjepa_kernels.block_causal_attention import default_config

    argv = ["--impl", "fast", "--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2"]
    trainer = build_run(parse_args([*argv, "--output_dir", str(tmp_path)])).trainer
    shape = attention_shape(trainer.model)
    collator = trainer.data_collator
    collator.attention = shape
    stream = collator([trainer.train_dataset[0], trainer.train_dataset[1]])["plan"].packed
    config = default_config(shape.head_dim, shape.dtype)
    wanted = {("by_query", config.forward.block_m, config.forward.block_n)}
    wanted |= {("by_key", config.dkdv.block_m, config.dkdv.block_n), ("by_query", config.dq.block_m, config.dq.block_n)}
    assert set(stream.layout.built_tiles()) == wanted == set(kernel_tiles(shape))
    shipped = pickle.loads(pickle.dumps(stream))
    assert all(lists._masks is None for lists in shipped.layout._tiles.values())
    moved = shipped.to(torch.device("meta"))
    assert moved.input_ids.is_meta and moved.layout.shared_start.is_meta and moved.layout.device.type == "meta"
    assert set(moved.layout.built_tiles()) == wanted
    for direction, block_m, block_n in wanted:
        ours, theirs = shipped.layout.tiles(block_m, block_n).get(direction), stream.layout.tiles(block_m, block_n)
        assert torch.equal(ours.part_index, theirs.get(direction).part_index)
        assert moved.layout.tiles(block_m, block_n).get(direction).full_index.is_meta


def test_kernel_tiles_on_a_gpu_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """With three tile shapes (bf16, head_dim 128 on a GPU), three lists: not both directions of each."""
    attention = importlib.import_module("llmjepa_kernels.block_causal_attention")  # the package's name is the function
    from llmjepa.views.layout import AttentionShape, kernel_tiles
    from llmjepa_kernels.block_layout import BlockCausalLayout

    gpu = attention.AttentionConfig(
        forward=attention.KernelConfig(128, 64), dkdv=attention.KernelConfig(64, 32), dq=attention.KernelConfig(64, 64)
    )
    monkeypatch.setattr(attention, "default_config", lambda head_dim, dtype: gpu)
    tiles = kernel_tiles(AttentionShape(128, torch.bfloat16))
    assert tiles == [("by_query", 128, 64), ("by_key", 64, 32), ("by_query", 64, 64)]
    t = 300
    no_shared, from_zero = torch.full((t,), -1), torch.zeros(t, dtype=torch.long)
    causal = BlockCausalLayout(from_zero, no_shared, from_zero, tiles=tiles)
    assert causal.built_tiles() == tiles


class SyncErrorTrainer(JepaTrainer):
    """Every microbatch's forward and backward under torch.cuda.set_sync_debug_mode("error")."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: set_sync_debug_mode sees the syncs the GPU makes, also inside aten ops (a CPU count cannot)",
)
def test_no_sync_in_a_cuda_microbatch(tmp_path: Path) -> None:
    """On a GPU, as llmjepa-train runs there (bf16, Triton attention, fused pair loss, checkpointing):
    torch raises at the first synchronizing call inside a microbatch's forward and backward."""
    argv = ["--batch_size", "2", "--grad_accum", "2", "--impl", "fast", "--lbd", "0.5", "--predictors", "1"]
    argv += ["--num_prediction_steps", "2", "--max_train_steps", "3", "--output_dir", str(tmp_path)]
    trainer = build_run(parse_args(argv)).trainer
    trainer.__class__ = SyncErrorTrainer
    trainer.train()
    assert len(trainer.history) == 3 and all(r["loss"] == r["loss"] for r in trainer.history)
