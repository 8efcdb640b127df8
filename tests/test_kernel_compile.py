"""What the Triton kernels compile to, checked on the CPU without a GPU.

- One compile per kernel shape: Triton's own argument binder (as JITFunction.run computes its cache
  key) gives one specialization across stream lengths T and tile-list widths.
- 64-bit offsets: in the Triton IR of every kernel, head (and pair) indices are widened to int64
  before they multiply a stride or the token count.
- Every launch runs under its tensors' device, and the wrappers make no host sync.
- The CI subset of bench/aot_compile.py compiles for sm_90 with no error and no register spill.

The IR and compile checks run in a subprocess without TRITON_INTERPRET (conftest.py sets it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from custom_ops import inside_our_op
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.jit import compute_cache_key

REPO_ROOT = Path(__file__).resolve().parents[1]
AOT = REPO_ROOT / "bench" / "aot_compile.py"
attention = importlib.import_module("llmjepa_kernels.block_causal_attention")
cosine_loss = importlib.import_module("llmjepa_kernels.cosine_loss")
AttentionConfig, KernelConfig = attention.AttentionConfig, attention.KernelConfig


def load_aot():
    """bench/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("aot_compile", AOT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


aot = load_aot()


def compiled_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


# ----------------------------------------------------------------------------------------------------
# One specialization per kernel shape
# ----------------------------------------------------------------------------------------------------


def fake_layout(tokens: int, full_width: int, part_width: int, block_m: int, block_n: int) -> SimpleNamespace:
    """A stand-in for BlockCausalLayout whose tile lists have chosen widths (what the launch passes)."""

    def lists(blocks: int) -> SimpleNamespace:
        count = torch.zeros(blocks, dtype=torch.int32)
        return SimpleNamespace(
            full_count=count,
            full_index=torch.zeros(blocks, full_width, dtype=torch.int32),
            part_count=count.clone(),
            part_index=torch.zeros(blocks, part_width, dtype=torch.int32),
        )

    tiles = SimpleNamespace(by_query=lists(-(-tokens // block_m)), by_key=lists(-(-tokens // block_n)))
    ranges = torch.zeros(tokens, dtype=torch.int32)
    return SimpleNamespace(
        num_tokens=tokens,
        device=ranges.device,
        shared_start=ranges,
        shared_end=ranges.clone(),
        causal_start=ranges.clone(),
        tiles=lambda bm, bn: tiles,
    )


def cache_key(launch) -> str:
    spec, _, options = aot.specialization(launch)
    return compute_cache_key({}, spec, options)


TOKEN_COUNTS = (4096, 4099, 4111, 5000)
WIDTHS = ((1, 17), (3, 16), (16, 1), (17, 3))  # (full list width, partial list width)


@pytest.mark.parametrize("head_major", [True, False], ids=["head_major", "contiguous"])
def test_one_specialization_per_attention_kernel(head_major: bool) -> None:
    config = AttentionConfig(KernelConfig(128, 64, 8, 2), KernelConfig(64, 64, 8, 2), KernelConfig(64, 64, 8, 2))
    keys: dict[str, set[str]] = {}
    for tokens in TOKEN_COUNTS:
        for full_width, part_width in WIDTHS:
            layout = fake_layout(tokens, full_width, part_width, 64, 64)
            launches = aot.attention_launches(
                torch.bfloat16, 64, 4, config, tokens=tokens, head_major=head_major, layout=layout
            )
            assert len(launches) == 4
            for launch in launches:
                keys.setdefault(launch.kernel.__name__, set()).add(cache_key(launch))
    assert sorted(keys) == sorted(aot.ATTENTION_KERNELS)
    for name, distinct in keys.items():
        assert len(distinct) == 1, f"{name}: {len(distinct)} specializations over T and list widths:\n" + "\n".join(
            sorted(distinct)
        )


def test_one_specialization_per_pair_kernel() -> None:
    keys: dict[str, set[str]] = {}
    for tokens in TOKEN_COUNTS:
        for pairs in (1, 3, 16, 17, 1001):
            hidden = torch.empty(tokens, 2048, dtype=torch.bfloat16)
            # Both index lists sliced from one tensor: the second one's address moves with the pair count.
            index = torch.arange(2 * pairs) % tokens
            with aot.recorded_launches(cosine_loss, aot.PAIR_KERNELS) as launches:
                aot.pair_loss_forward_backward(hidden, index[:pairs], index[pairs:], "cosine")
            assert len(launches) == 2
            for launch in launches:
                keys.setdefault(launch.kernel.__name__, set()).add(cache_key(launch))
    for name, distinct in keys.items():
        assert len(distinct) == 1, f"{name}: {len(distinct)} specializations over T and pair counts"


# ----------------------------------------------------------------------------------------------------
# 64-bit offsets
# ----------------------------------------------------------------------------------------------------

_TTIR_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, re, sys
    import torch
    import triton
    import triton.language as tl

    spec = importlib.util.spec_from_file_location("aot_compile", sys.argv[1])
    aot = importlib.util.module_from_spec(spec)
    sys.modules["aot_compile"] = aot
    spec.loader.exec_module(aot)
    from llmjepa_kernels.block_causal_attention import AttentionConfig, KernelConfig

    def body(ttir, name):
        start = ttir.index(f"tt.func public @{name}(")
        return ttir[start:ttir.index("\\n  }", start)]

    def int32_products_of_args(ttir, name, args):
        # "%x = arith.muli %a, %b : i32" with a kernel argument (a stride, the token count) as operand.
        found = re.findall(r"arith\\.muli (%[\\w.]+), (%[\\w.]+) : i32\\b", body(ttir, name))
        return [f"{a} * {b}" for a, b in found if a[1:] in args or b[1:] in args]

    def narrow_uses_of_program_id(ttir, name, axis):
        # Every use of tl.program_id(axis) other than its widening to int64.
        text = body(ttir, name)
        ids = re.findall(rf"(%[\\w.]+) = tt\\.get_program_id {axis} : i32", text)
        uses = []
        for value in ids:
            for line in text.splitlines():
                if re.search(re.escape(value) + r"\\b", line) and not line.strip().startswith(value + " ="):
                    if not re.search(rf"arith\\.extsi {re.escape(value)} : i32 to i64", line):
                        uses.append(line.strip()[:120])
        return uses

    @triton.jit
    def control_kernel(X, stride_xh):
        head = tl.program_id(1)
        tl.store(X + head * stride_xh, 0.0)

    report = {}
    control = aot.Launch(control_kernel, (1, 2), (torch.empty(4), 8), {})
    ttir = aot.source_ttir(control)
    report["control"] = int32_products_of_args(ttir, "control_kernel", {"stride_xh"}) + narrow_uses_of_program_id(
        ttir, "control_kernel", "y"
    )
    config = AttentionConfig(KernelConfig(64, 64, 4, 2), KernelConfig(64, 64, 4, 2), KernelConfig(64, 64, 4, 2))
    for launch in aot.attention_launches(torch.float16, 64, 4, config):
        name = launch.kernel.__name__
        args = {p.name for p in launch.kernel.params if p.name.startswith("stride") or p.name == "num_tokens"}
        ttir = aot.source_ttir(launch)
        report[name] = int32_products_of_args(ttir, name, args) + narrow_uses_of_program_id(ttir, name, "y")
    for launch in aot.pair_loss_launches(torch.float16, 2048, "cosine"):
        name = launch.kernel.__name__
        report[name] = narrow_uses_of_program_id(aot.source_ttir(launch), name, "x")
    print(json.dumps(report))
    """
)


def test_head_and_pair_offsets_are_64_bit(tmp_path: Path) -> None:
    """head * stride_qh wraps in int32 once (Hq - 1) * T * D reaches 2^31; the IR must widen first."""
    script = tmp_path / "ttir_check.py"  # @triton.jit needs its function in a file
    script.write_text(_TTIR_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(AOT)],
        capture_output=True,
        text=True,
        env=compiled_env(),
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # The checker must see the int32 product in a kernel written the old way, or it proves nothing.
    assert report.pop("control"), "the IR check did not flag an int32 head * stride product"
    assert sorted(report) == sorted(aot.ATTENTION_KERNELS + aot.PAIR_KERNELS)
    for name, problems in report.items():
        assert not problems, f"{name}: 32-bit offset arithmetic: {problems}"


# ----------------------------------------------------------------------------------------------------
# Device guard and host syncs
# ----------------------------------------------------------------------------------------------------


def test_device_guard_selects_the_tensors_gpu() -> None:
    for module in (attention, cosine_loss):
        guard = module._device_guard(torch.device("cuda", 1))
        assert isinstance(guard, torch.cuda.device) and guard.idx == 1
        assert isinstance(module._device_guard(torch.device("cpu")), contextlib.nullcontext)


class _GuardRecorder:
    """Replaces _device_guard and the kernels: records, for each launch, the device guarded at the time."""

    def __init__(self) -> None:
        self.active: list[torch.device] = []
        self.launches: list[tuple[str, torch.device | None]] = []

    @contextlib.contextmanager
    def guard(self, device: torch.device):
        self.active.append(device)
        try:
            yield
        finally:
            self.active.pop()

    def install(self, monkeypatch, module, names: tuple[str, ...]) -> None:
        monkeypatch.setattr(module, "_device_guard", self.guard)
        for name in names:
            monkeypatch.setattr(module, name, _Launcher(name, self))


class _Launcher:
    def __init__(self, name: str, recorder: _GuardRecorder) -> None:
        self.name, self.recorder = name, recorder

    def __getitem__(self, grid):
        active = self.recorder.active
        return lambda *args, **kwargs: self.recorder.launches.append((self.name, active[-1] if active else None))


def causal_ranges(tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    i = torch.arange(tokens, dtype=torch.int32)
    return torch.zeros_like(i), i - 1, torch.zeros_like(i)


@pytest.mark.interpreter
def test_every_launch_runs_under_the_tensors_device(monkeypatch) -> None:
    recorder = _GuardRecorder()
    recorder.install(monkeypatch, attention, aot.ATTENTION_KERNELS)
    recorder.install(monkeypatch, cosine_loss, aot.PAIR_KERNELS)
    q = torch.randn(20, 4, 16, requires_grad=True)
    k = torch.randn(20, 2, 16, requires_grad=True)
    v = torch.randn(20, 2, 16, requires_grad=True)
    attention.block_causal_attention(q, k, v, *causal_ranges(20)).sum().backward()
    hidden = torch.randn(20, 32, requires_grad=True)
    loss, _ = cosine_loss.cosine_jepa_loss(hidden, torch.tensor([0, 1]), torch.tensor([2, 3]))
    loss.backward()
    cpu = torch.device("cpu")
    assert [name for name, _ in recorder.launches] == [
        "_attn_fwd_kernel",
        "_bwd_delta_kernel",
        "_attn_bwd_dkdv_kernel",
        "_attn_bwd_dq_kernel",
        "_pair_loss_fwd_kernel",
        "_pair_loss_bwd_kernel",
    ]
    assert all(device == cpu for _, device in recorder.launches), recorder.launches


_SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "masked_select", "equal"}


class _SyncCounter(TorchDispatchMode):
    """Counts the ops that would wait for the GPU on CUDA: scalar reads, data-dependent shapes, and
    copies to the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ours, out = inside_our_op(self, func, args, kwargs)  # the kernels' custom ops: count what they run
        if ours:
            return out
        name = func.overloadpacket.__name__
        if name in _SYNC_OPS or (name == "index" and any(getattr(a, "dtype", None) == torch.bool for a in args[1])):
            self.ops.append(name)
        if name in ("_to_copy", "copy_") and kwargs.get("device") is not None and kwargs["device"].type == "cpu":
            self.ops.append(name)
        return func(*args, **kwargs)


def prebuild_tile_lists(layout, config: AttentionConfig) -> None:
    """Build the lists the kernels read (the collator does this where the stream is packed)."""
    for direction, kernel in (("by_query", config.forward), ("by_key", config.dkdv), ("by_query", config.dq)):
        getattr(layout.tiles(kernel.block_m, kernel.block_n), direction)


@pytest.mark.interpreter
def test_attention_forward_and_backward_make_no_host_sync() -> None:
    torch.manual_seed(0)
    q = torch.randn(40, 4, 16, requires_grad=True)
    k = torch.randn(40, 2, 16, requires_grad=True)
    v = torch.randn(40, 2, 16, requires_grad=True)
    layout = attention.BlockCausalLayout(*causal_ranges(40))
    config = attention.default_config(16, torch.float32)
    prebuild_tile_lists(layout, config)
    counter = _SyncCounter()
    with counter:
        out = attention.block_causal_attention(q, k, v, None, None, None, layout=layout)
        out.backward(torch.ones_like(out))
    assert counter.ops == [], f"host syncs in the attention wrappers: {counter.ops}"


@pytest.mark.interpreter
def test_pair_loss_checks_indices_and_makes_no_other_sync() -> None:
    hidden = torch.randn(10, 32, requires_grad=True)
    good, bad = torch.tensor([0, 9]), torch.tensor([0, 10])
    for check in (True, False):  # CPU indices are always checked: it costs no sync there
        with pytest.raises(IndexError, match="target_index"):
            cosine_loss.cosine_jepa_loss(hidden, good, bad, check_indices=check)
    counter = _SyncCounter()
    with counter:
        loss, _ = cosine_loss.cosine_jepa_loss(hidden, good, good.flip(0))
        loss.backward()
    # The two range checks (one per index list) and nothing else. Inside the custom op (below autograd)
    # `bool(t)` reaches the mode as is_nonzero, undecomposed.
    assert len(counter.ops) == 2 and set(counter.ops) <= {"_local_scalar_dense", "is_nonzero"}, counter.ops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's sync debug mode watches real syncs")
def test_no_cuda_sync_in_kernel_wrappers() -> None:
    device = torch.device("cuda")
    q = torch.randn(300, 8, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(300, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(300, 2, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    layout = attention.BlockCausalLayout(*(r.to(device) for r in causal_ranges(300)))
    config = attention.default_config(64, torch.bfloat16)
    prebuild_tile_lists(layout, config)
    hidden = torch.randn(300, 256, device=device, requires_grad=True)
    index = torch.arange(20, device=device)
    attention.block_causal_attention(q, k, v, None, None, None, layout=layout).sum().backward()  # compile first
    cosine_loss.cosine_jepa_loss(hidden, index, index.flip(0), check_indices=False)[0].backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = attention.block_causal_attention(q, k, v, None, None, None, layout=layout)
        out.backward(torch.ones_like(out))
        loss, _ = cosine_loss.cosine_jepa_loss(hidden, index, index.flip(0), check_indices=False)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------------------------------
# AOT compile for sm_90
# ----------------------------------------------------------------------------------------------------


def run_aot(tmp_path: Path, subset: str) -> list[dict]:
    out = tmp_path / f"aot_{subset}.json"
    result = subprocess.run(
        [sys.executable, str(AOT), "--arch", "90", "--subset", subset, "--json", str(out)],
        capture_output=True,
        text=True,
        env=compiled_env(),
        cwd=REPO_ROOT,
        timeout=1800,
    )
    records = json.loads(out.read_text()) if out.exists() else []
    failed = [r for r in records if not r["ok"]]
    assert result.returncode == 0 and not failed, f"{failed}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return records


def assert_compiled_without_spills(records: list[dict], kernels: tuple[str, ...]) -> None:
    assert {r["kernel"] for r in records} == set(kernels)
    spilled = [r for r in records if r["spill_bytes"]]
    assert not spilled, "register spills on sm_90:\n" + "\n".join(aot._line(r) for r in spilled)


def test_aot_ci_subset_compiles_for_sm90_without_spills(tmp_path: Path) -> None:
    """bf16 and fp32, head_dim 64 and 128, GQA group 4, every attention kernel and the pair loss at
    hidden 2048: no compile error, no spill, and wgmma in every 16-bit attention kernel with a dot.
    About 100 s on the 2 busy cores this was written on (2026-11-24)."""
    records = run_aot(tmp_path, "ci")
    assert_compiled_without_spills(records, aot.ATTENTION_KERNELS + aot.PAIR_KERNELS)
    assert {(r["dtype"], r["head_dim"]) for r in records if r["head_dim"]} == {
        (dtype, head_dim) for dtype in ("bf16", "fp32") for head_dim in (64, 128)
    }
    with_dots = ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")
    no_wgmma = [r for r in records if r["dtype"] == "bf16" and r["kernel"] in with_dots and not r["uses_wgmma"]]
    assert not no_wgmma, "bf16 kernels without wgmma on sm_90:\n" + "\n".join(aot._line(r) for r in no_wgmma)
