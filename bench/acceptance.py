"""The GPU acceptance run's driver (bench/gpu_acceptance.sh calls it): steps in order of decision value under one
global deadline, the results packed after every step.

    python bench/acceptance.py --out DIR [--deadline 450] [--only STEP,STEP]   # on a lent H100/H200
    python bench/acceptance.py --dry-run --out DIR                            # the CPU, tiny shapes (CI)

--out receives exactly two files: acceptance.tgz (every finished step's files, rewritten atomically through a
temporary file and os.replace after each step, so a command stopped at any point returns every finished step) and
acceptance.log (the console). Each step's own files are kept in a scratch folder outside --out and packed flat.

Every step has a nominal budget and a minimum: it runs with min(budget, time left before the deadline) and is
recorded as skipped, with the reason, when less than its minimum is left. A step whose command exceeds its
budget is stopped and recorded as timed out; a failing step is recorded and the next one still runs. pytest's
exit status 5 (no test selected: the `gpu` marker absent from this checkout) is recorded as "none selected".
steps.jsonl in the tarball holds one record per step (status ok, failed, timed_out, skipped or none_selected);
summary.{json,md} and RESULTS.md (bench/acceptance_report.py) are rebuilt from the finished steps after each one.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = "acceptance.tgz"
LOG = "acceptance.log"
PARITY = "fast_path_equals_reference"
FSDP = "fsdp"
LIGER = "liger"
NO_TESTS = 5  # pytest: no test was collected / selected


@dataclass
class Step:
    name: str
    budget: float  # seconds it may take at most
    minimum: float  # with less time left than this it is skipped
    command: list[str] | None = None  # None: the in-process env step
    pytest: bool = False  # exit 5 means "none selected", not a failure
    env: dict = field(default_factory=dict)
    budget_flag: str | None = None  # passed (seconds given - margin) so the command ends and writes in time
    margin: float = 0


def python() -> str:
    return os.environ.get("PYTHON") or sys.executable


def gpu_tests(select: str, xml: Path) -> list[str]:
    """`pytest -m gpu` (the tests that exercise CUDA; skipped without it), narrowed with -k."""
    return [python(), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu", "-k", select, "tests"] + [
        "--junitxml",
        str(xml),
    ]


def timed(margin: float) -> dict:
    """bench_step.py ends its rounds within the seconds the step is given, less `margin` for writing."""
    return {"budget_flag": "--time_budget", "margin": margin}


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """The steps in order of decision value (issue 15): versions, the kernels against float64 (the CUDA tests,
    then every tile candidate), the whole-step table's core, the fast path against the reference over 20 steps,
    the attention table, the rest of the step table, FSDP, Liger-Kernel."""
    py = python()
    attention = [py, "bench/bench_attention.py"]
    step_bench = [py, "bench/bench_step.py"]
    kernels_k = f"not {PARITY} and not {FSDP} and not {LIGER}"
    core = ["packed_regular", "fast_jepa", "upstream_jepa"]
    more = ["--skip_methods", "fast_jepa", "upstream_jepa"]  # (a), (e) and the variants, beside packed_regular
    out = [Step("env", 30, 3)]
    if args.dry_run:
        interp = {"TRITON_INTERPRET": "1"}
        tiny = ["--dry-run", "--q-heads", "2", "--kv-heads", "1", "--cpu-reps", "1", "--dtype", "fp32"]
        tiny_step = [*step_bench, "--config", "tiny", "--rounds", "1", "--microbatches", "1", "--warmup", "1"]
        tiny_step += ["--no_memory", "--out_dir", str(work)]
        out += [
            Step("tests_kernels", 120, 20, gpu_tests(kernels_k, work / "tests_kernels.xml"), pytest=True),
            Step(
                "tiles_d16_fp32",
                60,
                10,
                [*attention, *tiny, "--head-dim", "16", "--tokens", "32", "--check-tokens", "32"]
                + ["--candidates-only", "--output", str(work / "tiles_d16_fp32.md")],
                env=interp,
            ),
            Step("step", 90, 20, [*tiny_step, "--methods", *core, "--no_variants", "--name", "step"], **timed(5)),
            Step("tests_parity", 120, 20, gpu_tests(PARITY, work / "tests_parity.xml"), pytest=True),
            Step(
                "attention",
                60,
                10,
                [*attention, *tiny, "--head-dim", "16", "--tokens", "64", "--check-tokens", "32"]
                # no flex: on the CPU it has no backward, and compiling its forward takes a minute on 2 cores
                + ["--methods", "triton", "sdpa_view1", "fa4_view1", "torch_form"]
                + ["--check-methods", "triton", "torch_form", "sdpa_dense"]
                + ["--output", str(work / "attention.md")],
                env=interp,
            ),
            Step("step_more", 90, 20, [*tiny_step, *more, "--name", "step_more"], **timed(5)),
            Step("tests_fsdp", 120, 20, gpu_tests(FSDP, work / "tests_fsdp.xml"), pytest=True),
            Step("tests_liger", 60, 15, gpu_tests(LIGER, work / "tests_liger.xml"), pytest=True),
        ]
        return out
    out.append(Step("tests_kernels", 150, 30, gpu_tests(kernels_k, work / "tests_kernels.xml"), pytest=True))
    # every candidate of candidate_configs() against float64 (forward and backward), then timed; bf16 (training's
    # dtype) first, at the Llama-3.2-1B (64) and 8B (128) head dims
    for dtype in ("bf16", "fp16"):
        for head_dim in (64, 128):
            name = f"tiles_d{head_dim}_{dtype}"
            command = [*attention, "--dtype", dtype, "--head-dim", str(head_dim), "--tokens", "8192"]
            command += ["--check-tokens", "2048", "--candidates-only", "--output", str(work / f"{name}.md")]
            out.append(Step(name, 60, 15, command))
    llama = [*step_bench, "--config", "llama-1b", "--microbatches", "4", "--out_dir", str(work)]
    out += [
        Step(
            "step",
            170,
            60,
            [*llama, "--rounds", "5", "--methods", *core, "--no_variants", "--name", "step"],
            **timed(25),
        ),
        Step("tests_parity", 90, 30, gpu_tests(PARITY, work / "tests_parity.xml"), pytest=True),
        Step(
            "attention",
            75,
            20,
            [*attention, "--tokens", "4096", "16384", "--check-tokens", "0"]
            + ["--methods", "triton", "flex", "sdpa_view1", "fa4_view1", "--output", str(work / "attention.md")],
        ),
        Step("step_more", 120, 45, [*llama, "--rounds", "3", *more, "--name", "step_more"], **timed(25)),
        Step("tests_fsdp", 60, 20, gpu_tests(FSDP, work / "tests_fsdp.xml"), pytest=True),
        # Liger-Kernel's RMSNorm and SwiGLU with both executors (they fail in the CPU interpreter); needs the
        # liger-kernel wheel installed from the tree (docs/gpu.md)
        Step("tests_liger", 60, 20, gpu_tests(LIGER, work / "tests_liger.xml"), pytest=True),
    ]
    return out


# ---- running -------------------------------------------------------------------------------------
class Console:
    """Prints to stdout and appends to --out/acceptance.log."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", buffering=1)

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.file.write(text + "\n")


def run_command(step: Step, seconds: float, log: Path, console: Console) -> tuple[int | None, bool]:
    """(exit status, timed out): the command in its own process group, killed whole at `seconds`; its output
    to the step's log and, line by line, to the console."""
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    # the bench scripts run from bench/ (sys.path[0]); llmjepa and llmjepa_kernels import from the root
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("w") as sink:
        proc = subprocess.Popen(
            step.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip

        def copy() -> None:
            for line in proc.stdout:
                sink.write(line)
                console(f"  {step.name}| {line.rstrip()}")

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: pytest's and bench_step's children too
            proc.wait()
        reader.join(timeout=10)
        if timed_out:
            sink.write(f"\n== stopped at its budget of {seconds:.0f} s\n")
    return proc.returncode, timed_out


def classify(step: Step, rc: int | None, timed_out: bool) -> str:
    if timed_out:
        return "timed_out"
    if rc == 0:
        return "ok"
    if step.pytest and rc == NO_TESTS:
        return "none_selected"
    return "failed"


def pack(work: Path, out: Path) -> None:
    """Rewrite out/acceptance.tgz with every file of the scratch folder, atomically: written to a temporary file
    beside the scratch folder, then os.replace'd over the old one (a temporary file in --out where the two are
    on different file systems), so --out never holds a half-written tarball under its name."""
    for tmp_dir in (work.parent, out):
        fd, tmp = tempfile.mkstemp(prefix=".acceptance-", suffix=".tgz", dir=tmp_dir)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                for path in sorted(work.iterdir()):
                    if path.is_file():
                        tar.add(path, arcname=path.name)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep it from whoever commits the results
            os.replace(tmp, out / TARBALL)
            return
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def report(work: Path, console: Console) -> None:
    """summary.{json,md} and RESULTS.md (its GPU section) from the finished steps; never stops the run."""
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        import acceptance_report

        acceptance_report.main(
            ["--in", str(work), "--out", str(work), "--results", str(work / "RESULTS.md"), "--quiet"]
            + ["--template", str(ROOT / "bench" / "RESULTS.md")]
        )
    except Exception as err:  # a report that cannot be built must not cost the results
        console(f"== report: {type(err).__name__}: {err}")


def record(work: Path, entry: dict) -> None:
    with (work / "steps.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def env_step(work: Path) -> int:
    """Versions, device and an import check of llmjepa, llmjepa_kernels and triton (env.json, nvidia-smi.txt)."""
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    import acceptance_report

    env = acceptance_report.environment()
    imports = {}
    for module in ("llmjepa", "llmjepa_kernels", "llmjepa_kernels.block_causal_attention", "triton"):
        try:
            __import__(module)
            imports[module] = "ok"
        except Exception as err:  # an import that fails is the finding
            imports[module] = f"{type(err).__name__}: {err}"
    env["imports"] = imports
    (work / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        smi = f"nvidia-smi: not available ({err})\n"
    (work / "nvidia-smi.txt").write_text(smi)
    return 0 if all(v == "ok" for v in imports.values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="acceptance.tgz and acceptance.log go here")
    p.add_argument("--dry-run", action="store_true", help="the CPU at tiny shapes (CI)")
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole run (default 450; dry 300)")
    p.add_argument("--only", default=None, help="comma-separated step names (default: every step)")
    p.add_argument("--after-step", default=None, help="a command run after each rewrite, with the step name")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + (args.deadline if args.deadline is not None else (300 if args.dry_run else 450))
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="acceptance-"))
    console = Console(args.out / LOG)
    steps = plan(args, work)
    only = set(args.only.split(",")) if args.only else None
    if only and only - {s.name for s in steps}:
        p.error(f"--only: unknown {sorted(only - {s.name for s in steps})}; steps: {[s.name for s in steps]}")
    console(f"== acceptance{' (DRY RUN, CPU)' if args.dry_run else ''}: {len(steps)} steps, deadline "
            f"{deadline - start:.0f} s; scratch {work}; results {args.out / TARBALL}")  # fmt: skip
    failures = 0
    for step in steps:
        if only and step.name not in only:
            continue
        left = deadline - time.monotonic()
        entry = {"step": step.name, "budget_s": step.budget, "dry_run": args.dry_run}
        if left < step.minimum:
            entry |= {"status": "skipped", "reason": f"deadline: {left:.0f} s left, the step needs {step.minimum:.0f}"}
            console(f"== {step.name}: skipped ({entry['reason']})")
        else:
            seconds = min(step.budget, left)
            if step.budget_flag:
                step.command = [*step.command, step.budget_flag, str(max(1, round(seconds - step.margin)))]
            shown = shlex.join(step.command) if step.command else "in process: versions, device, imports"
            console(f"== {step.name} ({seconds:.0f} s of {left:.0f} s left): {shown}")
            began = time.monotonic()
            if step.command is None:
                try:
                    rc, timed_out = env_step(work), False
                except Exception as err:  # no torch, say: the finding, and the other steps still run
                    console(f"  {step.name}| {type(err).__name__}: {err}")
                    (work / f"{step.name}.log").write_text(f"{type(err).__name__}: {err}\n")
                    rc, timed_out = 1, False
            else:
                rc, timed_out = run_command(step, seconds, work / f"{step.name}.log", console)
            status = classify(step, rc, timed_out)
            entry |= {"status": status, "rc": rc, "seconds": round(time.monotonic() - began, 1), "given_s": seconds}
            if status == "timed_out":
                entry["reason"] = f"stopped at its budget of {seconds:.0f} s"
            elif status == "none_selected":
                entry["reason"] = "pytest selected no test (exit 5): no `gpu` marker on these tests in this checkout"
            failures += status in ("failed", "timed_out")
            console(f"== {step.name}: {status} (exit {rc}) in {entry['seconds']} s")
        record(work, entry)
        report(work, console)
        pack(work, args.out)
        if args.after_step:
            subprocess.run([*shlex.split(args.after_step), step.name], check=False)
    console(f"== done in {time.monotonic() - start:.0f} s; {failures} step(s) failed or timed out; "
            f"unpack: tar -xzf {args.out / TARBALL} -C bench/results/gpu")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
