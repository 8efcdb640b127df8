"""Smoke test of bench/bench_encoding.py: 200 generated conversations encoded by 2 processes in a fresh process,
then a second fresh process that reads the cache. Checks what RESULTS.md's readers rely on (every field there, the
second start found the cache and encoded the same examples), not the times."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_encoding.py"


def test_bench_encoding_runs_and_the_second_start_reads_the_cache(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_encoding", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    report = bench.main(
        ["--rows", "200", "--procs", "2", "--workdir", str(tmp_path), "--out", str(tmp_path / "r.json")]
    )
    first, second = report["results"]
    assert (first["start"], first["cache_existed"], second["cache_existed"]) == ("first", False, True)
    assert first["examples"] == second["examples"] == 200 and first["num_proc"] == 2
    assert first["tokens_view1_first"] == second["tokens_view1_first"] > 0
    for result in (first, second):
        assert result["peak_rss_mb"] >= result["peak_pss_mb"] >= result["peak_pss_anon_mb"] > 0
        assert result["examples_per_s"] > 0 and result["examples_per_cpu_s"] > 0
    assert first["cache_mb"] > 0 and (tmp_path / "r.json").is_file()
