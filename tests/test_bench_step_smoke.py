"""Smoke test of bench/bench_step.py: the tiny config on CPU, a few steps, every output written.

Checks what the benchmark's readers rely on: the files exist and parse, every method timed a
finite positive step, the methods that compute the same function agree on the first step's
loss (upstream padded SFT = packed SFT; upstream JEPA = fast JEPA), and the fast JEPA path
runs fewer tokens than the upstream triple batch.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_step.py"
REGULAR_TOLERANCE = 1e-5  # float32, same tokens, other attention kernels
JEPA_TOLERANCE = 1e-4  # also other reduction orders (packed, truncated views)


def load_bench():
    """bench/ is not a package: load the script as a module."""
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("bench_step")
    load_bench().main(["--config", "tiny", "--steps", "2", "--warmup", "1", "--out_dir", str(out_dir)])
    return out_dir, json.loads((out_dir / "step_tiny.json").read_text())


def test_files_written(outputs: tuple[Path, dict]) -> None:
    out_dir, report = outputs
    for suffix in (".json", ".md", ".png"):
        assert (out_dir / f"step_tiny{suffix}").stat().st_size > 0
    assert "| fast_jepa |" in (out_dir / "step_tiny.md").read_text()
    assert report["shapes"]["mean_view1_length"] > 0


def test_every_method_timed(outputs: tuple[Path, dict]) -> None:
    methods = outputs[1]["methods"]
    assert set(methods) == {"upstream_regular", "packed_regular", "upstream_jepa", "fast_jepa"}
    for name, result in methods.items():
        assert math.isfinite(result["median_ms"]) and result["median_ms"] > 0, name
        assert len(result["step_ms"]) == 2, name
        assert math.isfinite(result["first_step_loss"]), name


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_same_function_same_loss(outputs: tuple[Path, dict]) -> None:
    m = outputs[1]["methods"]
    loss = {name: result["first_step_loss"] for name, result in m.items()}
    assert relative(loss["upstream_regular"], loss["packed_regular"]) <= REGULAR_TOLERANCE
    assert relative(loss["upstream_jepa"], loss["fast_jepa"]) <= JEPA_TOLERANCE
    assert loss["upstream_jepa"] != loss["upstream_regular"]  # the JEPA term is really there


def test_fast_jepa_runs_fewer_tokens(outputs: tuple[Path, dict]) -> None:
    m = outputs[1]["methods"]
    assert m["fast_jepa"]["tokens_per_step"] < m["upstream_jepa"]["tokens_per_step"]
    assert m["packed_regular"]["tokens_per_step"] < m["upstream_regular"]["tokens_per_step"]
