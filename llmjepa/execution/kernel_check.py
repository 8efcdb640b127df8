"""Kernel self-check: before the first step on a CUDA device, the chosen attention backend against the
PyTorch form (issue 15 item 5).

The Triton kernel (and FlexAttention's compiled kernel) are tested on the CPU under Triton's interpreter
and, where a GPU has been lent, by tests/test_cuda.py; a user's GPU, driver or Triton version can still
break them, and a broken attention trains without a word. So the fast path checks, once per process and
(device, backend, dtype, head shape), the backend the run chose against `llmjepa_kernels.torch_attention`
(the blockwise PyTorch form, itself tested against float64 dense attention) computed in float64, on a small
random packed layout with GQA at the run's head shape and dtype: the output and dQ, dK, dV, each as
||x - ref|| / ||ref|| under a bound per dtype (BOUNDS). Both run through `hf_attention`'s attention
function, the one the model calls.

The verdict is cached on disk (`cache_path()`: $LLMJEPA_CACHE_DIR/kernel_check.json, else
~/.cache/llmjepa/kernel_check.json) keyed by device name, torch, CUDA, triton and llmjepa versions,
backend, dtype and head shape, so a machine checks once per installation. `--kernel_check`:
auto (default) prints one line on a mismatch and falls back to the PyTorch form; strict stops with
exit status 5 (EXIT_KERNEL_CHECK); off skips. `llmjepa-selfcheck` prints the verdict for every backend,
dtype and head shape.

Policy: the fast path checks on CUDA devices only (CHECKED_DEVICE_TYPES); `check_attention` itself runs
on the CPU too (the Triton kernel under TRITON_INTERPRET=1), which is how tests/test_kernel_check.py
tests it with a wrong kernel injected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import EXIT_KERNEL_CHECK, TrainingStopped

MODES = ("auto", "strict", "off")
BACKENDS = ("triton", "flex", "torch")
# ||x - ref|| / ||ref|| against the PyTorch form in float64, per dtype of the run's q, k, v. fp32: the
# Triton kernel takes IEEE dots (measured ~1e-7 on the CPU interpreter); 16-bit: a few rounding units of
# the output dtype (tests/test_cuda.py holds 2e-3 fp16 and 1e-2 bf16 at 2048 tokens). A wrong mask, scale
# or GQA mapping gives errors of order 0.1-1.
BOUNDS = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2.5e-2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
CHECKED_DEVICE_TYPES = ("cuda",)  # where the fast path runs the check (tests add "cpu")
TOKENS = 320  # the layout's length on a GPU: several 64- and 128-token tiles, full and partial


class KernelCheckFailed(TrainingStopped):
    """--kernel_check strict: the backend disagreed with the PyTorch form (exit status 5)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_KERNEL_CHECK)


@dataclass
class Verdict:
    backend: str
    device: str
    dtype: str
    heads: tuple[int, int, int]  # query heads, key/value heads, head_dim
    ok: bool | None  # None: not checkable here (reason says why)
    errors: dict[str, float] = field(default_factory=dict)  # out, dq, dk, dv: ||x - ref|| / ||ref||
    bound: float = 0.0
    seconds: float = 0.0
    reason: str = ""
    cached: bool = False

    def line(self) -> str:
        """One line: what was checked and how it came out."""
        q, kv, d = self.heads
        what = f"{self.backend} attention on {self.device} ({self.dtype}, {q}/{kv} heads, head_dim {d})"
        if self.ok is None:
            return f"{what}: not checkable here: {self.reason}"
        worst = max(self.errors, key=lambda k: self.errors[k]) if self.errors else None
        detail = f"{worst} error {self.errors[worst]:.2e}" if worst else self.reason
        if self.ok:
            return f"{what} matches the PyTorch form ({detail}, bound {self.bound:.1e})"
        because = self.reason or f"{detail} > bound {self.bound:.1e}"
        return f"{what} differs from the PyTorch form ({because})"


# ---- the layout ----------------------------------------------------------------------------------
def check_layout(tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed JEPA-like stream of `tokens` tokens (int32 shared_start, shared_end, causal_start):
    examples back to back, each a causal view 1, a predictor view that sees a prefix of view 1 (its shared
    range) and itself causally, and localized step segments; lengths not multiples of any tile."""
    gen = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    a: list[int] = []
    b: list[int] = []
    s: list[int] = []

    def segment(length: int, shared: tuple[int, int] = (0, -1)) -> int:
        start = len(s)
        for _ in range(length):
            a.append(shared[0]), b.append(shared[1]), s.append(start)
        return start

    while len(s) < tokens:
        view_len = draw(max(2, tokens // 6), max(3, tokens // 3))
        view = segment(view_len)
        segment(draw(1, max(1, tokens // 10)), (view, view + draw(1, view_len) - 1))
        for _ in range(draw(1, 3)):
            segment(draw(1, max(1, tokens // 20)))
    return tuple(torch.tensor(x[:tokens], dtype=torch.int32) for x in (a, b, s))  # type: ignore[return-value]


# ---- one check -----------------------------------------------------------------------------------
@contextmanager
def _quiet_device(device: torch.device) -> Iterator[None]:
    """Grad on, autocast off (the Trainer may call from under either), and CUDA's sync debug mode off:
    the check reads its errors once per process (tests watch the training step's syncs)."""
    sync_mode = torch.cuda.get_sync_debug_mode() if device.type == "cuda" else None
    if sync_mode:
        torch.cuda.set_sync_debug_mode(0)
    try:
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            yield
    finally:
        if sync_mode:
            torch.cuda.set_sync_debug_mode(sync_mode)


def _attention(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout) -> torch.Tensor:
    """Through hf_attention's attention function, as the model calls it: (1, H, T, D) in, (T, Hq, D) out."""
    from llmjepa_kernels.hf_attention import block_causal_attention_forward

    query, key, value = (x.transpose(0, 1)[None] for x in (q, k, v))
    out, _ = block_causal_attention_forward(
        None, query, key, value, None, block_causal_backend=backend, block_causal_layout=layout
    )
    return out[0]


def _with_grads(backend: str, inputs: list[torch.Tensor], dout: torch.Tensor, layout) -> list[torch.Tensor]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = _attention(backend, *leaves, layout)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return [out.detach(), *grads]


def not_checkable(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Why this backend cannot be checked here, or "" when it can."""
    if device.type == "cpu":
        if backend == "flex":
            return "torch has no FlexAttention backward on the CPU"
        if backend == "triton":
            from llmjepa_kernels.block_causal_attention import interpreted

            if not interpreted():
                return "the Triton kernel runs on the CPU only under TRITON_INTERPRET=1"
            if dtype == torch.bfloat16:
                return "the Triton interpreter's bfloat16 tl.dot is wrong"
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16"
    return ""


def check_attention(
    backend: str,
    device: torch.device | str,
    dtype: torch.dtype,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    tokens: int = TOKENS,
    seed: int = 0,
) -> Verdict:
    """The backend against the PyTorch form in float64: forward and dQ, dK, dV on check_layout(tokens)."""
    from llmjepa_kernels.block_layout import BlockCausalLayout

    device = torch.device(device)
    verdict = Verdict(backend, device_name(device), DTYPE_NAMES[dtype], (q_heads, kv_heads, head_dim), None)
    verdict.bound = BOUNDS[dtype]
    reason = not_checkable(backend, device, dtype)
    if reason:
        verdict.reason = reason
        return verdict
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)  # its own generator: the run's random stream stays untouched
    shapes = [(tokens, q_heads, head_dim), (tokens, kv_heads, head_dim), (tokens, kv_heads, head_dim)]
    inputs64 = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    dout64 = torch.randn(tokens, q_heads, head_dim, generator=gen, dtype=torch.float64)
    layout = BlockCausalLayout(*check_layout(tokens, seed)).to(device)
    with _quiet_device(device):
        inputs = [x.to(device=device, dtype=dtype) for x in inputs64]
        # the reference sees the same (rounded) inputs, in float64
        ref = _with_grads("torch", [x.double() for x in inputs], dout64.to(device), layout)
        try:
            got = _with_grads(backend, inputs, dout64.to(device=device, dtype=dtype), layout)
        except Exception as e:  # a kernel that does not compile or launch here is a failed check too
            verdict.ok = False
            verdict.reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            verdict.seconds = time.perf_counter() - start
            return verdict
        for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
            error = float((x.double() - r).norm() / r.norm().clamp_min(1e-30))
            verdict.errors[name] = error if error == error else float("inf")  # NaN never passes
    verdict.ok = all(e <= verdict.bound for e in verdict.errors.values())
    verdict.seconds = time.perf_counter() - start
    return verdict


# ---- the cache -----------------------------------------------------------------------------------
def cache_path() -> Path:
    root = os.environ.get("LLMJEPA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llmjepa"
    )
    return Path(root) / "kernel_check.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def cache_key(backend: str, device: torch.device, dtype: torch.dtype, heads: tuple[int, int, int]) -> str:
    # the package is imported before any of its modules: read its version without an import edge up to it
    __version__ = sys.modules["llmjepa"].__version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    where = device_name(device) + (" (triton interpreter)" if device.type == "cpu" and backend == "triton" else "")
    return " | ".join(
        [
            where,
            f"torch {torch.__version__}",
            f"cuda {torch.version.cuda}",
            f"triton {triton_version}",
            f"llmjepa {__version__}",
            backend,
            DTYPE_NAMES[dtype],
            "heads {}/{} head_dim {}".format(*heads),
        ]
    )


def _read_cache() -> dict:
    try:
        found = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_cache(key: str, verdict: Verdict) -> None:
    """Add one verdict (atomically: ranks of one machine may write at once); an unwritable cache is skipped."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache()
        entries[key] = asdict(verdict)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def cached_check(
    backend: str, device: torch.device, dtype: torch.dtype, heads: tuple[int, int, int], recheck: bool = False, **kw
) -> Verdict:
    """check_attention's verdict from the cache when there is one for this key, else computed and cached
    (a verdict that could not be made, ok None, is not cached)."""
    key = cache_key(backend, device, dtype, heads)
    if not recheck:
        entry = _read_cache().get(key)
        if isinstance(entry, dict):
            try:
                entry["heads"] = tuple(entry["heads"])
                return Verdict(**{**entry, "cached": True})
            except TypeError:
                pass  # an entry of another version's shape: check again
    verdict = check_attention(backend, device, dtype, *heads, **kw)
    if verdict.ok is not None:
        _write_cache(key, verdict)
    return verdict


# ---- the hook: run_fast asks which backend to run --------------------------------------------------
_RESOLVED: dict[tuple, str] = {}  # per process: (device, backend, dtype, heads, mode) -> backend to run


def model_heads(model: torch.nn.Module) -> tuple[int, int, int]:
    from ..distributed import unwrap

    config = unwrap(model).config
    q_heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or q_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // q_heads
    return q_heads, kv_heads, head_dim


def checked_backend(backend: str, model: torch.nn.Module, device: torch.device, mode: str = "auto") -> str:
    """The attention backend to run: `backend`, or "torch" when the self-check found it wrong here (one
    line on stderr; mode "strict" raises KernelCheckFailed instead). Checks on CHECKED_DEVICE_TYPES only,
    once per process and key; the dtype is autocast's where it is on, else the model's parameters'."""
    if mode == "off" or backend == "torch" or device.type not in CHECKED_DEVICE_TYPES:
        return backend
    if mode not in MODES:
        raise ValueError(f"kernel check mode must be one of {MODES}, got {mode!r}")
    checked = "flex" if backend == "flex" else "triton"  # "auto" runs Triton on CUDA and under the interpreter
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    else:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    heads = model_heads(model)
    key = (str(device), backend, dtype, heads, mode)
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(backend, checked, device, dtype, heads, mode)
    return _RESOLVED[key]


def _resolve(backend: str, checked: str, device: torch.device, dtype, heads, mode: str) -> str:
    if dtype not in BOUNDS:  # float64 runs: no kernel takes them; the attention refuses them itself
        return backend
    verdict = cached_check(checked, device, dtype, heads, tokens=TOKENS if device.type == "cuda" else 64)
    if verdict.ok is not False:
        return backend
    if mode == "strict":
        raise KernelCheckFailed(f"kernel self-check: {verdict.line()}; stopping (--kernel_check strict)")
    print(
        f"llmjepa: kernel self-check: {verdict.line()}; running the PyTorch form instead "
        "(--kernel_check strict stops, off skips the check)",
        file=sys.stderr,
    )
    return "torch"


# ---- llmjepa-selfcheck ---------------------------------------------------------------------------
HEAD_SHAPES = {"llama-3.2-1b": (32, 8, 64), "llama-3-8b": (32, 8, 128)}


def selfcheck_table(device: torch.device, tokens: int, recheck: bool) -> list[Verdict]:
    verdicts = []
    for backend in BACKENDS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for heads in HEAD_SHAPES.values():
                verdicts.append(cached_check(backend, device, dtype, heads, recheck=recheck, tokens=tokens))
    return verdicts


def selfcheck_main(argv: list[str] | None = None) -> int:
    """llmjepa-selfcheck: the verdict table; exit 1 when any backend differs from the PyTorch form."""
    parser = argparse.ArgumentParser(
        prog="llmjepa-selfcheck",
        description="Check every attention backend against the PyTorch form in float64, per dtype and head "
        "shape (Llama-3.2-1B: 32/8 heads, head_dim 64; Llama-3-8B: 32/8, 128), forward and backward. Verdicts "
        f"are cached in {cache_path()} ($LLMJEPA_CACHE_DIR)",
    )
    parser.add_argument("--device", default=None, help="default: cuda where present, else cpu")
    parser.add_argument("--tokens", type=int, default=None, help=f"layout length (default {TOKENS}; 48 on the CPU)")
    parser.add_argument("--recheck", action="store_true", help="ignore the cache")
    parser.add_argument("--json", action="store_true", help="one JSON object per verdict instead of the table")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and "TRITON_INTERPRET" not in os.environ:
        # the Triton kernel on the CPU runs in its interpreter, which triton reads when first imported (importing
        # llmjepa imported it): start again with it on
        os.environ["TRITON_INTERPRET"] = "1"
        again = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", "llmjepa.execution.kernel_check", *again])
    tokens = args.tokens or (TOKENS if device.type == "cuda" else 48)
    verdicts = selfcheck_table(device, tokens, args.recheck)
    if args.json:
        for v in verdicts:
            print(json.dumps(asdict(v)))
    else:
        print(f"llmjepa-selfcheck on {device_name(device)}: {tokens} tokens; errors vs the PyTorch form in float64")
        print("| backend | dtype | heads q/kv, head_dim | verdict | out | dq | dk | dv | bound | seconds |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for v in verdicts:
            state = {True: "ok", False: "MISMATCH", None: f"not checkable here: {v.reason}"}[v.ok]
            if v.ok is False and v.reason:
                state += f": {v.reason}"
            errs = [f"{v.errors[k]:.1e}" if k in v.errors else "" for k in ("out", "dq", "dk", "dv")]
            when = "cached" if v.cached else f"{v.seconds:.2f}"
            q, kv, d = v.heads
            cells = [v.backend, v.dtype, f"{q}/{kv}, {d}", state, *errs, f"{v.bound:.1e}", when]
            print("| " + " | ".join(cells) + " |")
    return 1 if any(v.ok is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(selfcheck_main())
