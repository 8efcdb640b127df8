"""The kernel self-check (llmjepa/execution/kernel_check.py) on the CPU, with wrong kernels injected.

The Triton kernel runs here under the interpreter (fp32 and fp16; bf16 is not checkable there); a
wrong forward (output off by 2%), a wrong backward (dK off by 5%, forward right), a NaN and a kernel that
raises must each be caught; the right kernel must pass. The fast path's hook (checked_backend, which
checks on CUDA only by policy: the tests add "cpu") falls back to the PyTorch form with one line, stops
under strict (exit status 5 from llmjepa-train), skips under off and on a device it does not check, and
reads a cached verdict instead of computing it again.
"""

from __future__ import annotations

import time

import pytest
import torch

from llmjepa.execution import kernel_check
from llmjepa.execution.kernel_check import (
    EXIT_KERNEL_CHECK,
    KernelCheckFailed,
    cached_check,
    check_attention,
    checked_backend,
)
from llmjepa_kernels import hf_attention

pytestmark = pytest.mark.interpreter
HEADS = (4, 2, 16)  # GQA 2; the interpreter's time grows with programs x tiles
TOKENS = 48
real_kernel = hf_attention.block_causal_attention


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """Each test: its own cache folder, no verdict remembered by this process."""
    monkeypatch.setenv("LLMJEPA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kernel_check, "_RESOLVED", {})
    yield


def wrong_forward(*args, **kwargs):
    return real_kernel(*args, **kwargs) * 1.02


class _WrongDk(torch.autograd.Function):
    """The kernel's forward and gradients, with dK scaled by 1.05: a backward-only bug."""

    @staticmethod
    def forward(ctx, q, k, v, rest):
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            out = real_kernel(*leaves, *rest[0], **rest[1])
        ctx.save_for_backward(*leaves, out)
        return out.detach()

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        return dq, dk * 1.05, dv, None


def wrong_backward(q, k, v, *args, **kwargs):
    return _WrongDk.apply(q, k, v, (args, kwargs))


def nan_kernel(*args, **kwargs):
    out = real_kernel(*args, **kwargs)
    return out.index_fill(0, torch.tensor([3]), float("nan"))


def raising_kernel(*args, **kwargs):
    raise RuntimeError("no kernel image is available for execution on the device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_the_right_kernel_passes(dtype: torch.dtype) -> None:
    start = time.perf_counter()
    verdict = check_attention("triton", "cpu", dtype, *HEADS, tokens=TOKENS)
    print(f"{verdict.line()}; {time.perf_counter() - start:.2f} s on the CPU (interpreter)")
    assert verdict.ok is True, verdict.line()
    assert set(verdict.errors) == {"out", "dq", "dk", "dv"}
    assert max(verdict.errors.values()) < (1e-6 if dtype == torch.float32 else 2e-3)


@pytest.mark.parametrize(
    ("kernel", "worst"),
    [(wrong_forward, "out"), (wrong_backward, "dk"), (nan_kernel, "out")],
    ids=["forward", "backward", "nan"],
)
def test_a_wrong_kernel_is_caught(monkeypatch, kernel, worst: str) -> None:
    monkeypatch.setattr(hf_attention, "block_causal_attention", kernel)
    verdict = check_attention("triton", "cpu", torch.float32, *HEADS, tokens=TOKENS)
    assert verdict.ok is False, verdict.line()
    assert verdict.errors[worst] > verdict.bound
    if kernel is wrong_forward:  # 2% off: the output, and every gradient through it
        assert verdict.errors["out"] == pytest.approx(0.02, rel=1e-3)
    if kernel is wrong_backward:  # the forward is right: only the backward gives it away
        assert verdict.errors["out"] < 1e-6 and verdict.errors["dq"] < 1e-6 and verdict.errors["dv"] < 1e-6
    assert "differs from the PyTorch form" in verdict.line()


def test_a_kernel_that_raises_fails_the_check(monkeypatch) -> None:
    monkeypatch.setattr(hf_attention, "block_causal_attention", raising_kernel)
    verdict = check_attention("triton", "cpu", torch.float16, *HEADS, tokens=TOKENS)
    assert verdict.ok is False and "no kernel image" in verdict.reason


def test_not_checkable_here_says_why() -> None:
    bf16 = check_attention("triton", "cpu", torch.bfloat16, *HEADS, tokens=TOKENS)
    flex = check_attention("flex", "cpu", torch.float32, *HEADS, tokens=TOKENS)
    assert bf16.ok is None and "bfloat16 tl.dot" in bf16.line()
    assert flex.ok is None and "no FlexAttention backward on the CPU" in flex.line()


def test_the_layout_is_packed_jepa_like() -> None:
    a, b, s = kernel_check.check_layout(320)
    i = torch.arange(320)
    assert bool((s <= i).all()) and bool((a <= b).any()), "some tokens see a shared prefix"
    assert bool((b < s).all()), "shared prefixes lie before the token's own causal range"
    assert len(set(s.tolist())) > 6, "several views and segments"


# ---- the hook ------------------------------------------------------------------------------------
class TinyModel(torch.nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = type("Config", (), {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64})()
        self.weight = torch.nn.Parameter(torch.zeros(2, dtype=dtype))


@pytest.fixture
def checks_cpu(monkeypatch):
    """The hook's policy checks CUDA devices only; here the CPU too (the kernel under the interpreter)."""
    monkeypatch.setattr(kernel_check, "CHECKED_DEVICE_TYPES", ("cuda", "cpu"))


def count_checks(monkeypatch) -> list:
    calls = []
    real = kernel_check.check_attention

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_check, "check_attention", counted)
    return calls


def test_mismatch_falls_back_to_torch_with_one_line(monkeypatch, capsys, checks_cpu) -> None:
    monkeypatch.setattr(hf_attention, "block_causal_attention", wrong_forward)
    calls = count_checks(monkeypatch)
    cpu = torch.device("cpu")
    assert checked_backend("triton", TinyModel(), cpu) == "torch"
    assert checked_backend("triton", TinyModel(), cpu) == "torch"  # remembered: no second check, no second line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(calls) == 1, err
    assert err[0].startswith("llmjepa: kernel self-check: triton attention on cpu (fp32, 4/2 heads, head_dim 16)")
    assert "differs from the PyTorch form" in err[0] and "running the PyTorch form instead" in err[0]


def test_a_right_kernel_keeps_its_backend_silently(capsys, checks_cpu) -> None:
    assert checked_backend("auto", TinyModel(), torch.device("cpu")) == "auto"
    assert checked_backend("triton", TinyModel(torch.float16), torch.device("cpu")) == "triton"
    assert capsys.readouterr().err == ""


def test_strict_stops(monkeypatch, checks_cpu) -> None:
    monkeypatch.setattr(hf_attention, "block_causal_attention", wrong_backward)
    with pytest.raises(KernelCheckFailed, match=r"dk error .* > bound .*--kernel_check strict") as stopped:
        checked_backend("triton", TinyModel(), torch.device("cpu"), "strict")
    assert stopped.value.exit_code == EXIT_KERNEL_CHECK == 5


def test_off_and_unchecked_devices_skip(monkeypatch, checks_cpu) -> None:
    calls = count_checks(monkeypatch)
    monkeypatch.setattr(hf_attention, "block_causal_attention", wrong_forward)
    assert checked_backend("triton", TinyModel(), torch.device("cpu"), "off") == "triton"
    assert checked_backend("torch", TinyModel(), torch.device("cpu")) == "torch"  # the reference itself
    monkeypatch.setattr(kernel_check, "CHECKED_DEVICE_TYPES", ("cuda",))  # the default policy
    assert checked_backend("triton", TinyModel(), torch.device("cpu")) == "triton"
    assert calls == []


def test_a_cached_verdict_is_not_recomputed(monkeypatch, tmp_path, checks_cpu) -> None:
    calls = count_checks(monkeypatch)
    first = cached_check("triton", torch.device("cpu"), torch.float32, HEADS, tokens=TOKENS)
    assert (tmp_path / "cache" / "kernel_check.json").is_file()
    again = cached_check("triton", torch.device("cpu"), torch.float32, HEADS, tokens=TOKENS)
    assert len(calls) == 1 and not first.cached and again.cached and again.errors == first.errors
    # the hook reads it too (a new process: nothing remembered in memory)
    monkeypatch.setattr(kernel_check, "_RESOLVED", {})
    assert checked_backend("triton", TinyModel(), torch.device("cpu")) == "triton" and len(calls) == 1
    # another dtype or head shape is another key
    cached_check("triton", torch.device("cpu"), torch.float16, HEADS, tokens=TOKENS)
    assert len(calls) == 2
    # a cached mismatch falls back without running the kernel
    key = kernel_check.cache_key("triton", torch.device("cpu"), torch.float32, HEADS)
    assert "triton interpreter" in key and f"torch {torch.__version__}" in key and "llmjepa " in key
    bad = first
    bad.ok, bad.errors = False, {"out": 0.5}
    kernel_check._write_cache(key, bad)
    monkeypatch.setattr(kernel_check, "_RESOLVED", {})
    assert checked_backend("triton", TinyModel(), torch.device("cpu")) == "torch" and len(calls) == 2


def test_llmjepa_train_strict_exits_5(monkeypatch, tmp_path, capsys, checks_cpu) -> None:
    from llmjepa.commands.train import main

    monkeypatch.setattr(hf_attention, "block_causal_attention", wrong_forward)
    argv = ["--impl", "fast", "--attention_backend", "triton", "--kernel_check", "strict", "--dtype", "float32"]
    argv += ["--max_train_steps", "1", "--batch_size", "1", "--output_dir", str(tmp_path / "run")]
    assert main(argv) == 5
    err = capsys.readouterr().err
    assert "kernel self-check: triton attention on cpu (fp32, 4/2 heads" in err and "stopping" in err


def test_selfcheck_table(monkeypatch, capsys) -> None:
    monkeypatch.setattr(kernel_check, "HEAD_SHAPES", {"tiny": HEADS})
    assert kernel_check.selfcheck_main(["--device", "cpu", "--tokens", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 9, out  # 3 backends x 3 dtypes x 1 head shape
    assert "| triton | fp32 | 4/2, 16 | ok |" in out and "| triton | fp16 | 4/2, 16 | ok |" in out
    assert "| triton | bf16 | 4/2, 16 | not checkable here: the Triton interpreter's bfloat16 tl.dot is wrong" in out
    assert out.count("not checkable here: torch has no FlexAttention backward on the CPU") == 3
    assert "| torch | bf16 | 4/2, 16 | ok |" in out
    monkeypatch.setattr(hf_attention, "block_causal_attention", wrong_forward)
    assert kernel_check.selfcheck_main(["--device", "cpu", "--tokens", "32", "--recheck"]) == 1
    assert "| triton | fp32 | 4/2, 16 | MISMATCH |" in capsys.readouterr().out
