"""Smoke test of bench/bench_step.py: the tiny config on CPU, a short interleaved run, every output written.

Checks what the benchmark's readers rely on: the files exist and parse, every method ran or says why not,
the methods that compute the same function agree on the first step's loss (upstream padded SFT = packed
SFT; upstream JEPA = fast JEPA), the fast JEPA path runs fewer tokens than the upstream triple batch, the
FLOP ratios and efficiencies are consistent, and the fresh-process memory probe measured a method.
"""

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_step.py"
REGULAR_TOLERANCE = 1e-5  # float32, same tokens, other attention kernels
JEPA_TOLERANCE = 1e-4  # also other reduction orders (packed, truncated views)
CORE = {"upstream_regular", "packed_regular", "upstream_jepa", "fast_jepa", "fast_isolated"}


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
    argv = ["--config", "tiny", "--rounds", "2", "--microbatches", "1", "--warmup", "1", "--out_dir", str(out_dir)]
    # two fresh-process memory probes show it works; each probe imports torch again
    load_bench().main([*argv, "--methods", *CORE, "--memory_methods", "packed_regular", "fast_jepa"])
    return out_dir, json.loads((out_dir / "step_tiny.json").read_text())


def test_files_written(outputs: tuple[Path, dict]) -> None:
    out_dir, report = outputs
    for suffix in (".json", ".md"):
        assert (out_dir / f"step_tiny{suffix}").stat().st_size > 0
    table = (out_dir / "step_tiny.md").read_text()
    assert "| (d) fast_jepa |" in table and "efficiency" in table
    assert report["shapes"]["mean_view1_length"] > 0


def test_every_method_timed_or_explained(outputs: tuple[Path, dict]) -> None:
    methods = outputs[1]["methods"]
    assert CORE <= set(methods)
    for name, result in methods.items():
        if result["status"] != "ok":
            assert result["reason"], name  # skipped or failed says why
            assert name not in ("packed_regular", "fast_jepa", "upstream_jepa"), result
            continue
        assert len(result["round_ms"]) == 2, name
        assert all(math.isfinite(ms) and ms > 0 for ms in result["round_ms"]), name
        assert math.isfinite(result["first_step_loss"]), name


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_same_function_same_loss(outputs: tuple[Path, dict]) -> None:
    loss = {name: r.get("first_step_loss") for name, r in outputs[1]["methods"].items()}
    assert relative(loss["upstream_regular"], loss["packed_regular"]) <= REGULAR_TOLERANCE
    assert relative(loss["upstream_jepa"], loss["fast_jepa"]) <= JEPA_TOLERANCE
    assert loss["upstream_jepa"] != loss["upstream_regular"]  # the JEPA term is really there


def test_tokens_and_flops(outputs: tuple[Path, dict]) -> None:
    m = outputs[1]["methods"]
    assert m["fast_jepa"]["tokens_per_step"] < m["upstream_jepa"]["tokens_per_step"]
    assert m["packed_regular"]["tokens_per_step"] < m["upstream_regular"]["tokens_per_step"]
    # padding is no part of the floor: upstream regular SFT has packed SFT's floor, and runs more
    assert m["upstream_regular"]["flop_ratio"] == pytest.approx(1.0)
    assert (
        m["upstream_regular"]["executed"]["train_flops_per_step"] > m["packed_regular"]["floor"]["train_flops_per_step"]
    )
    assert 1.0 < m["fast_jepa"]["flop_ratio"] < m["upstream_jepa"]["flop_ratio"]
    for name, r in m.items():
        if r.get("time_ratio"):
            assert r["efficiency"] == pytest.approx(r["flop_ratio"] / r["time_ratio"]), name
    waste = outputs[1]["attention_computed_over_visible"]["fast_jepa"]
    assert all(v >= 1.0 for v in waste.values()) and "torch form" in waste


def test_memory_probe_measured(outputs: tuple[Path, dict]) -> None:
    report = outputs[1]
    probed = [r for r in report["methods"].values() if r.get("memory_probe")]
    assert probed and all(r["peak_memory_mib"] > 0 for r in probed if "error" not in r["memory_probe"])
    assert report["methods"]["packed_regular"]["memory_ratio"] == pytest.approx(1.0)


class CompileError(Exception):
    """Stands for Triton's compile and resource errors, which derive from Exception, not RuntimeError."""


def test_a_failing_method_is_recorded_and_the_others_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench()
    real = bench.executor

    def executor(method, pad_token_id):
        if method.name != "fast_jepa":
            return real(method, pad_token_id)

        def broken(model, plan):
            raise CompileError("out of resource: shared memory")

        return broken

    monkeypatch.setattr(bench, "executor", executor)
    argv = ["--config", "tiny", "--rounds", "1", "--microbatches", "1", "--warmup", "1", "--no_memory"]
    report = bench.main([*argv, "--methods", "fast_jepa", "fast_isolated", "--out_dir", str(tmp_path)])
    m = report["methods"]
    assert m["fast_jepa"]["status"] == "failed" and "CompileError: out of resource" in m["fast_jepa"]["reason"]
    assert m["packed_regular"]["status"] == "ok" and m["fast_isolated"]["status"] == "ok"
    assert "| (d) fast_jepa | failed: CompileError" in (tmp_path / "step_tiny.md").read_text()


def test_concatenated_examples_have_the_asked_length() -> None:
    bench = load_bench()
    from llmjepa.model import load_tokenizer
    from llmjepa.views.encoding import ViewConfig

    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    cfg = ViewConfig(num_prediction_steps=2, predictors=1, step_separator="\n", max_length=300)
    batches, stats = bench.load_microbatches(tokenizer, cfg, bench.sample_data_path("train"), 2, 2, concat=True)
    assert stats["mean_view1_length"] == stats["max_view1_length"] == 300
    assert all(len(e.boundaries) == 3 for batch in batches for e in batch)  # N = 2: two steps and the end


def test_strip_sweep() -> None:
    strip = load_bench().strip_sweep
    assert strip(["--config", "proxy", "--sweep", "N", "1", "2", "--rounds", "1"]) == [
        "--config",
        "proxy",
        "--rounds",
        "1",
    ]


def test_fused_pair_loss_without_index_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """As JepaTrainer calls it: check_indices=False (the checks are two host syncs per step training does not make)."""
    import torch

    import llmjepa_kernels

    bench = load_bench()
    calls = []

    def recorder(hidden, pred_index, target_index, **kwargs):
        calls.append(kwargs)
        return hidden.sum() * 0, None

    monkeypatch.setattr(llmjepa_kernels, "cosine_jepa_loss", recorder)
    out = SimpleNamespace(hidden=torch.ones(4, 3), pred_index=torch.tensor([0]), target_index=torch.tensor([1]))
    out.ce_sum = torch.tensor(2.0)
    bench.step_loss(out, SimpleNamespace(label_tokens=2, n_pairs=1), 0.1, fused=True)
    assert calls == [{"reduction": "sum", "check_indices": False}]


def test_time_budget_and_skip_methods(tmp_path: Path) -> None:
    """--time_budget ends the rounds early (at least one runs); --skip_methods drops names but not the baseline."""
    argv = ["--config", "tiny", "--rounds", "3", "--microbatches", "1", "--warmup", "0", "--no_memory"]
    argv += ["--no_variants", "--out_dir", str(tmp_path), "--time_budget", "0.001"]
    skip = ["upstream_regular", "upstream_jepa", "fast_jepa", "fast_isolated", "packed_regular"]
    report = load_bench().main([*argv, "--skip_methods", *skip])
    assert list(report["methods"]) == ["packed_regular"]
    assert report["rounds"] == 1 and report["rounds_asked"] == 3
    assert len(report["methods"]["packed_regular"]["round_ms"]) == 1


def test_compiled_rows_beside_the_eager_ones(tmp_path: Path) -> None:
    """--compiled (issue 20): packed_regular and fast_jepa with the model compiled (aot_eager here: seconds, not
    Inductor's minutes), in the same rounds; the same first-step loss as eager, one graph compiled in packed
    regular's first step, none in fast JEPA's (the same dynamic graph serves its streams), the compilation
    reported apart in the table."""
    import torch

    torch._dynamo.reset()  # compiles of earlier tests count against Dynamo's per-function recompile limit
    argv = ["--config", "tiny", "--rounds", "1", "--microbatches", "1", "--warmup", "1", "--no_memory"]
    names = ["packed_regular", "fast_jepa", "packed_regular/compiled", "fast_jepa/compiled"]
    argv += ["--compiled", "--compile_backend", "aot_eager", "--methods", *names, "--out_dir", str(tmp_path)]
    m = load_bench().main(argv)["methods"]
    for eager in ("packed_regular", "fast_jepa"):
        compiled = m[f"{eager}/compiled"]
        assert compiled["status"] == "ok", compiled.get("reason")
        assert relative(compiled["first_step_loss"], m[eager]["first_step_loss"]) <= REGULAR_TOLERANCE
        assert math.isfinite(compiled["compile_s"]) and compiled["median_ms"] > 0
    assert (m["packed_regular/compiled"]["graphs_compiled"], m["fast_jepa/compiled"]["graphs_compiled"]) == (1, 0)
    assert "graphs compiled in its first step" in (tmp_path / "step_tiny.md").read_text()
