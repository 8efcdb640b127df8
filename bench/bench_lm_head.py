"""The LM-head loss three ways, forward + backward: time and peak extra memory.

    python bench/bench_lm_head.py                                  # 4096 tokens, hidden 512, vocab 32000, fp32
    python bench/bench_lm_head.py --tokens 8192 --vocab 128256 --dtype bfloat16   # on a GPU

Ways (llmjepa/execution/lm_head.py, the `method` of lm_head_cross_entropy_sum):
  logits     the whole (tokens x vocab) logits tensor, float32 cross entropy (what the reference path does)
  chunks     the head's logits a chunk of rows at a time, each chunk checkpointed (recomputed in backward)
  linear_ce  torch's F.linear_cross_entropy with chunking on (torch >= 2.13)

What is measured: one step = the summed loss of `tokens` random hidden rows through a bias-free head
(weight vocab x hidden, requires grad), then backward into hidden and weight.
- Time: interleaved rounds; each round runs every way once (order rotated each round) after a warm-up
  run per way; the median over rounds.
- Peak extra memory. CUDA: torch.cuda.max_memory_allocated during one step minus the memory allocated
  before it (inputs, weight). CPU: each way in a fresh process (this script with --probe WAY): the peak
  resident set (VmHWM, reset through /proc/self/clear_refs once the inputs exist) minus the resident set
  then, over one step (ru_maxrss-based where clear_refs is refused).
`bench_lm_head()` is the function bench_step and others call; `main` writes --out (JSON) and a table.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import reset_peak_rss, rss_kib  # noqa: E402

from llmjepa.execution.lm_head import LogitTransform, linear_ce_applies, lm_head_cross_entropy_sum  # noqa: E402

WAYS = ("logits", "chunks", "linear_ce")


@dataclass(frozen=True)
class Shape:
    tokens: int = 4096
    hidden: int = 512
    vocab: int = 32000
    dtype: str = "float32"


def make_inputs(shape: Shape, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape.dtype)
    head = nn.Linear(shape.hidden, shape.vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(shape.vocab, shape.hidden, generator=gen, device=device) * 0.02)
    hidden = torch.randn(shape.tokens, shape.hidden, generator=gen, device=device).to(dtype).requires_grad_()
    targets = torch.randint(0, shape.vocab, (shape.tokens,), generator=gen, device=device)
    return hidden, targets, head


def step(way: str, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear) -> float:
    """One forward + backward; returns the loss (float32 sum)."""
    hidden.grad = None
    head.weight.grad = None
    loss = lm_head_cross_entropy_sum(hidden, targets, head, LogitTransform(), way)
    loss.backward()
    return loss.detach().item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available(way: str, device: torch.device) -> str | None:
    """Why a way cannot run here, or None."""
    if way == "linear_ce" and not linear_ce_applies(nn.Linear(1, 1), LogitTransform()):
        return f"torch {torch.__version__} has no F.linear_cross_entropy"
    return None


def time_ways(shape: Shape, device: torch.device, rounds: int, ways: tuple[str, ...] = WAYS) -> dict[str, dict]:
    """Seconds per step of each way: warm-up, then `rounds` interleaved rounds (order rotated), median."""
    hidden, targets, head = make_inputs(shape, device)
    runnable = [w for w in ways if available(w, device) is None]
    results = {w: {"skipped": available(w, device)} for w in ways if w not in runnable}
    losses = {w: step(w, hidden, targets, head) for w in runnable}  # warm-up
    times: dict[str, list[float]] = {w: [] for w in runnable}
    for r in range(rounds):
        order = runnable[r % len(runnable) :] + runnable[: r % len(runnable)]
        for way in order:
            sync(device)
            start = time.perf_counter()
            step(way, hidden, targets, head)
            sync(device)
            times[way].append(time.perf_counter() - start)
    for way in runnable:
        results[way] = {"seconds": statistics.median(times[way]), "all_seconds": times[way], "loss": losses[way]}
    return results


# ---- memory -----------------------------------------------------------------------------------------------
def peak_extra_mib(way: str, shape: Shape, device: torch.device) -> dict:
    """Peak memory above the inputs during one step of `way`, in this process (fresh for the CPU)."""
    hidden, targets, head = make_inputs(shape, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(way, hidden, targets, head)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_extra_mib": (peak - before) / 2**20, "how": "torch.cuda.max_memory_allocated"}
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    baseline = rss_kib("VmRSS")
    if reset_peak_rss():
        step(way, hidden, targets, head)
        return {"peak_extra_mib": (rss_kib("VmHWM") - baseline) / 1024, "how": "VmHWM after clear_refs - VmRSS"}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(way, hidden, targets, head)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_mib": (peak - max(before, baseline)) / 1024, "how": "ru_maxrss - VmRSS (upper bound)"}


def memory_in_fresh_process(way: str, shape: Shape, threads: int) -> dict:
    argv = [sys.executable, __file__, "--probe", way, "--threads", str(threads), "--device", "cpu"]
    argv += [f"--{k}={v}" for k, v in asdict(shape).items()]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_lm_head(shape: Shape, device: torch.device, rounds: int = 3, ways: tuple[str, ...] = WAYS) -> dict:
    """Time (median of interleaved rounds) and peak extra memory of each way; a dict per way."""
    results = time_ways(shape, device, rounds, ways)
    for way, result in results.items():
        if "skipped" in result:
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            result.update(peak_extra_mib(way, shape, device))
        else:
            result.update(memory_in_fresh_process(way, shape, torch.get_num_threads()))
    return results


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def table(record: dict) -> str:
    s = record["shape"]
    lines = [
        f"LM-head loss, forward + backward: {s['tokens']} tokens, hidden {s['hidden']}, vocab {s['vocab']}, "
        f"{s['dtype']}; {record['device']}; torch {record['torch']}; {record['date']}; "
        f"median of {record['rounds']} interleaved rounds; 1-min load average {record['load_average_before']} "
        f"before, {record['load_average_after']} after (other processes share the CPU)",
        "",
        "| way | time (s) | all rounds (s) | peak extra memory (MiB) | loss |",
        "|---|---|---|---|---|",
    ]
    for way, r in record["results"].items():
        if "skipped" in r:
            lines.append(f"| {way} | skipped: {r['skipped']} | | | |")
            continue
        rounds = ", ".join(f"{t:.2f}" for t in r["all_seconds"])
        memory = f"{r['peak_extra_mib']:.0f}" if "peak_extra_mib" in r else r.get("error", "")
        lines.append(f"| {way} | {r['seconds']:.2f} | {rounds} | {memory} | {r['loss']:.6g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=Shape.tokens)
    p.add_argument("--hidden", type=int, default=Shape.hidden)
    p.add_argument("--vocab", type=int, default=Shape.vocab)
    p.add_argument("--dtype", default=Shape.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the CPU (default: torch's)")
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS)
    p.add_argument("--out", type=Path, default=None, help="JSON file; the table goes next to it as .md")
    p.add_argument("--probe", choices=WAYS, help=argparse.SUPPRESS)  # internal: memory of one way, this process
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape(args.tokens, args.hidden, args.vocab, args.dtype)
    device = torch.device(args.device)
    if args.probe:
        print(json.dumps(peak_extra_mib(args.probe, shape, device)))
        return 0
    record = {
        "shape": asdict(shape),
        "device": describe_device(device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rounds": args.rounds,
        "load_average_before": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "results": bench_lm_head(shape, device, args.rounds, tuple(args.ways)),
    }
    record["load_average_after"] = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    text = table(record)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
