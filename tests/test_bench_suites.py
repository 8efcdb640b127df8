"""The pytest-benchmark suites under bench/: CI runs them (.ci/run, once each, untimed), and the committed
CPU baseline (bench/baselines/) names every benchmark they collect on a CPU, so that a renamed or added
benchmark without a new baseline fails here instead of comparing against nothing."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "baselines" / "Linux-CPython-3.11-64bit" / "0001_cpu.json"
SUITES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bench").glob("test_bench_*.py"))
# Collected but never timed on a CPU (they skip, saying why; bench/baselines/README.md lists them).
NOT_ON_A_CPU = {"test_attention[flex]", "test_attention[fa4_view1]", "test_attention[flash_varlen]"}
NOT_TIMED = re.compile(r"test_candidate_configs_against_float64")


def test_ci_runs_every_suite_once_untimed() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    line = next(x for x in ci.splitlines() if "--benchmark-disable" in x and not x.lstrip().startswith(("#", "echo")))
    assert "bench/test_bench_*.py" in line and "bench/bench_kernels.py" in line
    assert len(SUITES) >= 4, SUITES  # attention, pair loss, collation, LM head


@pytest.mark.skipif(torch.cuda.is_available(), reason="the baseline is the CPU's: CUDA shapes name other benchmarks")
def test_the_baseline_names_every_benchmark_collected_here() -> None:
    files = [*SUITES, "bench/bench_kernels.py"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = {line.split("::")[-1] for line in done.stdout.splitlines() if "::" in line}
    collected = {name for name in collected if not NOT_TIMED.match(name)} - NOT_ON_A_CPU
    baseline = {b["name"] for b in json.loads(BASELINE.read_text())["benchmarks"]}
    assert collected == baseline, (sorted(collected - baseline), sorted(baseline - collected))
