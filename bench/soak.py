"""Soak test: kill -9 and resume, again and again; the end must equal a run never interrupted, bit for bit.

    python bench/soak.py                                   # 1000 steps, checkpoints every 100, 3 kills
    python bench/soak.py --steps 200 --save_steps 50 --out /tmp/soak --no_report   # the CI-sized test

Two runs of llmjepa-train on the embedded tiny model (Step-JEPA, N = 2, K = 1, one example a step, so
1000 steps cross an epoch boundary of the 512 bundled examples) go side by side, one process each, one
thread each: A trains uninterrupted; B is killed with SIGKILL at random steps (seeded; the kill lands
wherever the process is: inside a step, while writing metrics.jsonl, while saving a checkpoint) and
resumed each time with --resume_from_checkpoint latest (started again if no checkpoint was complete).
Passes when B's final model.safetensors equals A's tensor for tensor (torch.equal), B's metrics.jsonl
holds every step exactly once, and every step's loss and gradient norm equal A's. Writes
bench/results/soak.md (device, versions, date, timings).
"""

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "bench" / "results" / "soak.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_command(out: Path, steps: int, save_steps: int, resume: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "--num_prediction_steps", "2", "--predictors", "1"]
    cmd += ["--batch_size", "1", "--grad_accum", "1", "--learning_rate", "1e-3", "--max_train_steps", str(steps)]
    cmd += ["--save_steps", str(save_steps), "--logging_steps", str(save_steps), "--output_dir", str(out)]
    return cmd + (["--resume_from_checkpoint", "latest"] if resume else [])


def metric_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=ENV)


def kill_at(proc: subprocess.Popen, out: Path, step: int) -> int:
    """SIGKILL once metrics.jsonl has `step` lines (the process is then inside step + 1). Returns the
    lines there were when the kill landed."""
    while metric_lines(out) < step:
        if proc.poll() is not None:
            raise SystemExit(f"soak: run B exited ({proc.returncode}) before step {step}; see {out}/soak.log")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return metric_lines(out)


def latest_checkpoint(out: Path) -> int:
    found = [int(p.name[11:]) for p in out.glob("checkpoint-*") if p.name[11:].isdigit()]
    return max((s for s in found if (out / f"checkpoint-{s}" / "trainer_state.json").is_file()), default=0)


def compare(a: Path, b: Path, steps: int) -> dict:
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    equal = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    max_diff = max((float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if k in wb), default=float("nan"))
    ra = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    step_list = [r["step"] for r in rb]
    same_steps = [r["step"] for r in ra] == step_list == list(range(1, steps + 1))
    same_values = all(
        (x["loss"], x["grad_norm"], x["lr"]) == (y["loss"], y["grad_norm"], y["lr"]) for x, y in zip(ra, rb)
    )
    return {
        "weights_equal": equal,
        "tensors": len(wa),
        "parameters": sum(t.numel() for t in wa.values()),
        "max_abs_diff": max_diff,
        "metric_lines_b": len(rb),
        "every_step_once": same_steps,
        "duplicates": len(step_list) - len(set(step_list)),
        "losses_equal": same_values and len(ra) == len(rb),
    }


def soak(out: Path, steps: int, save_steps: int, kills: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = out / "uninterrupted", out / "killed"
    for d in (a_dir, b_dir):
        if d.exists():
            raise SystemExit(f"soak: {d} exists; give a fresh --out")
        d.mkdir()
    rng = random.Random(seed)
    kill_steps = sorted(rng.sample(range(save_steps // 2, steps - 5), kills))
    started = time.perf_counter()
    a = start(train_command(a_dir, steps, save_steps, resume=False), a_dir / "soak.log")
    cycles = []
    b = start(train_command(b_dir, steps, save_steps, resume=False), b_dir / "soak.log")
    for k in kill_steps:
        lines = kill_at(b, b_dir, k)
        resumed_from = latest_checkpoint(b_dir)  # 0: killed before the first checkpoint; start again
        cycles.append({"kill_after_step": k, "metrics_lines_at_kill": lines, "resumed_from": resumed_from})
        b = start(train_command(b_dir, steps, save_steps, resume=resumed_from > 0), b_dir / "soak.log")
    rc_b, rc_a = b.wait(), a.wait()
    seconds = time.perf_counter() - started
    if rc_a or rc_b:
        raise SystemExit(f"soak: exit {rc_a} (uninterrupted), {rc_b} (last resume); logs in {out}")
    return {"cycles": cycles, "seconds": seconds, **compare(a_dir, b_dir, steps)}


def device_line() -> str:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{os.cpu_count()}-core CPU ({model}), no GPU"


def report(result: dict, args: argparse.Namespace) -> str:
    import torch
    import transformers

    ok = result["weights_equal"] and result["every_step_once"] and result["losses_equal"]
    resumed = lambda step: f"checkpoint-{step}" if step else "no checkpoint yet: started again"  # noqa: E731
    rows = "\n".join(
        f"| {i + 1} | {c['kill_after_step']} | {c['metrics_lines_at_kill']} | {resumed(c['resumed_from'])} |"
        for i, c in enumerate(result["cycles"])
    )
    tensors = f"{result['tensors']} tensors, {result['parameters']} parameters"
    weights = f"{result['weights_equal']} (max abs diff {result['max_abs_diff']})"
    lines = f"{result['every_step_once']} ({result['metric_lines_b']} lines, {result['duplicates']} duplicates)"
    return f"""# Soak: kill -9 and resume ({"PASS" if ok else "FAIL"})

Command: `python bench/soak.py --steps {args.steps} --save_steps {args.save_steps} --kills {args.kills} \
--seed {args.seed}`

Measured {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} on a {device_line()}, shared with other
work; Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.
Tiny embedded Llama, Step-JEPA (N = 2, K = 1), float32, batch 1, grad_accum 1, lr 1e-3, {args.steps} optimizer
steps (the 512 bundled examples: the run crosses an epoch boundary), a checkpoint every {args.save_steps} steps.
Run A trains uninterrupted; run B, beside it (one process and one thread each), is killed with SIGKILL
when its metrics.jsonl reaches the step below, then resumed with `--resume_from_checkpoint latest`.

| kill | after step | metrics lines at the kill | resumed from |
|---|---|---|---|
{rows}

| check | result |
|---|---|
| final weights equal, bit for bit (`torch.equal`, {tensors}) | {weights} |
| metrics.jsonl of B: every step 1..{args.steps} exactly once | {lines} |
| loss, grad_norm and lr of every step equal A's | {result["losses_equal"]} |
| wall time, both runs and all restarts | {result["seconds"]:.0f} s |
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--save_steps", type=int, default=100)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="picks the kill steps")
    p.add_argument("--out", type=Path, default=None, help="default: runs/soak-<time>")
    p.add_argument("--no_report", action="store_true", help="do not write bench/results/soak.md")
    args = p.parse_args(argv)
    out = args.out or ROOT / "runs" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"soak: seed {args.seed}, output in {out}", flush=True)
    result = soak(out, args.steps, args.save_steps, args.kills, args.seed)
    print(json.dumps(result, indent=1))
    if not args.no_report:
        RESULT.write_text(report(result, args))
        print(f"soak: wrote {RESULT}")
    ok = result["weights_equal"] and result["every_step_once"] and result["losses_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
