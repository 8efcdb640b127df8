"""Item 2 of issue 15: on a GPU host no test fails by construction, and `pytest -m gpu` is exactly the
tests that exercise CUDA.

conftest.py turns the Triton interpreter on only without CUDA. The tests marked `interpreter` (the
kernels on CPU tensors) skip, saying why, in a process where it is off, and the first test below runs
them in a process of their own (CUDA hidden, TRITON_INTERPRET=1); on a CPU host they ran in this process
already, so it skips. The second shows it on this CPU: TRITON_INTERPRET=0, as a GPU host's process has
it, and every such test skips with the reason instead of failing with "Triton is not in interpreter
mode" (325 of them failed so before, 2026-11-24). The third collects `-m gpu`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INTERPRETER_OFF

ROOT = Path(__file__).resolve().parents[1]
# The tests that exercise CUDA (each also skips without it). test_cuda.py: all of it.
GPU_TESTS = {
    "tests/test_flash_attn_peer.py::test_flash_varlen_matches_block_causal_attention",
    "tests/test_flex_attention.py::test_cuda_forward_and_backward",
    "tests/test_flex_attention.py::test_training_with_flex_equals_reference",
    "tests/test_kernel_compile.py::test_no_cuda_sync_in_kernel_wrappers",
    "tests/test_liger.py::test_every_liger_kernel_composes_on_cuda",
    "tests/test_sync_free.py::test_no_sync_in_a_cuda_microbatch",
    "tests/test_training_arguments.py::test_fsdp_trains_as_ddp_does",
}
# Interpreter tests outside the two kernel files, shown skipping with TRITON_INTERPRET=0 below
INTERPRETER_ELSEWHERE = [
    "tests/test_kernel_compile.py::test_every_launch_runs_under_the_tensors_device",
    "tests/test_kernel_compile.py::test_attention_forward_and_backward_make_no_host_sync",
    "tests/test_kernel_compile.py::test_pair_loss_checks_indices_and_makes_no_other_sync",
    "tests/test_hf_attention.py::test_triton_path_is_used_under_the_interpreter",
    "tests/test_kernel_check.py",
]


def pytest_in_a_process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=3000)


def summary(done: subprocess.CompletedProcess) -> dict[str, int]:
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter is on in this process: its tests ran here"
)
def test_interpreter_tests_in_their_own_process() -> None:
    """Where this process runs without the interpreter (a GPU host), the interpreter tests in one that has it."""
    done = pytest_in_a_process(
        ["-m", "interpreter and not slow", "tests"], CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1"
    )
    counts = summary(done)
    assert done.returncode == 0 and counts.get("passed", 0) > 300, done.stdout[-4000:] + done.stderr[-2000:]


def test_no_test_fails_by_construction_with_the_interpreter_off() -> None:
    files = ["tests/test_block_causal_attention.py", "tests/test_cosine_loss.py", *INTERPRETER_ELSEWHERE]
    done = pytest_in_a_process(["-rs", *files], TRITON_INTERPRET="0")
    output = done.stdout + done.stderr
    counts = summary(done)
    assert done.returncode == 0, output[-4000:]
    assert "interpreter mode" not in output
    assert counts.get("failed", 0) == 0 and counts.get("passed", 0) == 0, counts  # every one of them skipped
    assert counts["skipped"] > 300, counts
    reasons = re.findall(r"^SKIPPED \[(\d+)\] [^:]+(?::\d+)?: (.*)$", done.stdout, re.M)
    assert reasons and all(reason == INTERPRETER_OFF for _, reason in reasons), reasons
    assert sum(int(n) for n, _ in reasons) == counts["skipped"]


def test_gpu_marker_selects_exactly_the_cuda_tests() -> None:
    done = pytest_in_a_process(["-m", "gpu", "--collect-only", "tests"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = {line.split("[")[0] for line in done.stdout.splitlines() if "::" in line}
    cuda_file = {name for name in collected if name.startswith("tests/test_cuda.py::")}
    assert collected - cuda_file == GPU_TESTS
    source = (ROOT / "tests" / "test_cuda.py").read_text()
    assert {name.split("::")[1] for name in cuda_file} == set(re.findall(r"^def (test_\w+)", source, re.M))
    # every test that skips without CUDA is in the subset: a skipif on CUDA right above its def
    guarded = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        for match in re.finditer(
            r"skipif\(\s*not (?:torch\.cuda\.is_available\(\)|CUDA),(?:[^()]|\([^()]*\))*\)\s*\n"
            r"(?:@.*\n)*def (test_\w+)",
            text,
        ):
            guarded.add(f"tests/{path.name}::{match.group(1)}")
    assert guarded <= collected, guarded - collected
