"""Helpers of the pytest-benchmark suites (bench/test_bench_*.py): the device, what a timing means there,
and the check that runs before anything is timed (a broken method fails rather than posting a time)."""

import os
import platform
from collections.abc import Callable

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def machine_info() -> dict:
    """Recorded in every benchmark's extra_info, so that a saved JSON says what its times are of."""
    if CUDA:
        return {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    info = {
        "device": f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if os.environ.get("TRITON_INTERPRET") == "1":
        info["note"] = "Triton methods run in its interpreter here: their times are the interpreter's"
    return info


def record(benchmark, group: str, **extra: object) -> None:
    benchmark.group = group
    benchmark.extra_info.update(machine_info())
    benchmark.extra_info.update({k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in extra.items()})


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def forward_backward(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dout: torch.Tensor) -> list:
    """[output, *gradients of the inputs] of one forward and backward."""
    out = fn(*inputs)
    return [out.detach(), *torch.autograd.grad(out, inputs, dout.to(out.dtype))]


def timed_forward_backward(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], dout: torch.Tensor):
    """What the benchmark times: one forward and backward, then a device sync (the timer is the host's)."""

    def run() -> None:
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, dout.to(out.dtype))
        synchronize()

    return run


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().double()
    return float((x.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_close(got: list, reference: list, names: tuple[str, ...], tolerance: float, what: str) -> None:
    for name, x, ref in zip(names, got, reference, strict=True):
        assert torch.isfinite(x).all(), f"{what}: {name} is not finite"
        err = rel_err(x, ref)
        assert err <= tolerance, f"{what}: {name} relative error {err:.2e} > {tolerance:g}"
