"""bench/gpu_acceptance.sh --dry-run: every step of the GPU acceptance run, on the CPU at tiny shapes.

Checks that each step ran (or says why not), that the files the GPU run writes exist and parse (JSON,
JUnit XML, Markdown), that the report states it is a dry run, and that the repository's
bench/RESULTS.md is left alone (only the real run with --results rewrites it).
"""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "tests", "attention", "step", "tiles", "aot", "report")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("acceptance")
    results_before = (ROOT / "bench" / "RESULTS.md").read_text()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(out)}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (ROOT / "bench" / "RESULTS.md").read_text() == results_before
    return out


def test_every_step_ran_or_says_why(dry_run: Path) -> None:
    steps = {s["step"]: s for s in map(json.loads, (dry_run / "steps.jsonl").read_text().splitlines())}
    assert set(steps) == set(STEPS)
    for name, s in steps.items():
        if s.get("skipped"):
            assert name == "aot" and "dry run" in s["skipped"]
            continue
        assert s["rc"] == 0, (name, (dry_run / f"{name}.log").read_text()[-2000:])


def test_files_exist_and_parse(dry_run: Path) -> None:
    for name in ("env", "attention", "step", "tiles_d16", "summary"):
        assert json.loads((dry_run / f"{name}.json").read_text()), name
    for name in ("attention", "step", "tiles_d16", "summary", "RESULTS"):
        assert (dry_run / f"{name}.md").read_text().strip(), name
    root = ET.parse(dry_run / "tests.xml").getroot()
    assert sum(1 for _ in root.iter("testcase")) >= 8  # test_cuda.py's cases, skipped: "needs CUDA"


def test_tables_hold_every_method(dry_run: Path) -> None:
    attention = json.loads((dry_run / "attention.json").read_text())
    methods = {r["method"]: r["status"] for r in attention["timing"]}
    assert methods["triton"] == "ok" and methods["torch_form"] == "ok" and methods["sdpa_dense"] == "ok"
    assert methods["fa4_view1"].startswith("skipped:")
    assert all(r["status"] == "ok" and r["out"] < 1e-5 for r in attention["correctness"] if r["method"] != "flex")
    step = json.loads((dry_run / "step.json").read_text())
    core = ("upstream_regular", "packed_regular", "upstream_jepa", "fast_jepa", "fast_isolated")
    assert all(step["methods"][m]["status"] == "ok" for m in core)


def test_report_says_dry_run(dry_run: Path) -> None:
    summary = json.loads((dry_run / "summary.json").read_text())
    assert summary["goals"] and summary["tests"]["skipped_reasons"] == {"needs CUDA": summary["tests"]["tests"]}
    results = (dry_run / "RESULTS.md").read_text()
    assert "<!-- gpu-acceptance:start -->" in results and "DRY RUN on the CPU" in results
