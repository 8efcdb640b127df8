"""Parity bench: --lbd 0 (views built and run) vs --regular vs plain Hugging Face SFT, per optimizer step.

    python bench/bench_parity.py                          # writes bench/results/parity.{json,md,png}
    python bench/bench_parity.py --impl reference --grad_accum 1 --steps 5 --results /tmp/parity

For each executor (--impl reference, fast) and grad_accum (1, 4), on the embedded tiny model and the
bundled data (float32, dropout 0, lr 1e-3, batch 2, 20 steps): one --regular run, and one --lbd 0 run
per mode (view-based --predictors 1; multi-step --num_prediction_steps 2 --predictors 1; --additive_mask
--predictors 1); per grad_accum one plain transformers.Trainer SFT run (it has no executor). The runs come
from llmjepa/commands/parity.py (run_ours, run_hf), as llmjepa-parity makes them. The HF run goes first, then
--regular, then the --lbd 0 runs, each printing its relative differences from the runs before it as its
steps finish (lockstep); no run stops early, so every comparison covers every step.

Compared per optimizer step: loss and gradient norm (relative difference, llmjepa.commands.parity.rel_diff) and
the label tokens and microbatches consumed (must be equal). --lbd 0 vs --regular, vs HF SFT, --regular
vs HF SFT, and fast vs reference for the same mode.

On a CPU the fast executor runs its attention as PyTorch SDPA over the same ranges (its own choice,
llmjepa.execution.fast.attention_backend: the interpreted attention kernel takes ~30 s a step here) and its pair
loss through the fused Triton kernel under the interpreter (TRITON_INTERPRET=1 is set unless given;
TRITON_INTERPRET=0 gives the PyTorch pair loss). parity.md says which ran.
"""

import os

import torch

if not torch.cuda.is_available():
    # Read when triton is first imported (by llmjepa_kernels, below): the fast path's pair loss then runs
    # the fused kernel, as it would on a GPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from llmjepa import parity  # noqa: E402
from llmjepa.errors import UserError  # noqa: E402

MODES: dict[str, list[str]] = {
    "view-based": ["--predictors", "1"],
    "multi-step": ["--num_prediction_steps", "2", "--predictors", "1"],
    "additive-mask": ["--predictors", "1", "--additive_mask"],
}
BASE = ["--batch_size", "2", "--learning_rate", "1e-3", "--dropout", "0", "--dtype", "float32"]
RESULTS = Path(__file__).resolve().parent / "results"
ZERO_DRAWN_AT = 1e-10  # a log axis has no 0: equal values are drawn here


@dataclass
class Run:
    """One training run and its per-step records (llmjepa metrics.jsonl fields, or run_hf's)."""

    impl: str  # "reference", "fast", or "hf" for the plain Trainer
    grad_accum: int
    mode: str  # "regular", "hf" or a key of MODES
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.impl}/ga{self.grad_accum}/{self.mode}"

    @property
    def label(self) -> str:
        if self.mode == "hf":
            return "HF Trainer SFT"
        what = "--regular" if self.mode == "regular" else f"--lbd 0 {self.mode}"
        return f"{what} [{self.impl}]"

    @property
    def flags(self) -> list[str]:
        """llmjepa-train's flags for this run (for the HF run: those of the --regular run it mirrors)."""
        views = ["--regular"] if self.mode in ("regular", "hf") else ["--lbd", "0", *MODES[self.mode]]
        impl = "reference" if self.impl == "hf" else self.impl  # the plain Trainer's model must load with SDPA
        return [*BASE, *views, "--impl", impl, "--grad_accum", str(self.grad_accum)]


@dataclass
class Comparison:
    a: str  # Run.key
    b: str
    a_label: str
    b_label: str
    grad_accum: int
    steps: int  # steps both runs have
    max_loss: float
    max_loss_step: int
    max_grad_norm: float
    max_grad_norm_step: int
    same_inputs: bool  # equal label tokens and microbatches on every step
    agree: bool  # all wanted steps, same inputs, loss and grad norm within the tolerance


# ---- runs ------------------------------------------------------------------------------------------
def parity_args(run: Run, steps: int, work_dir: Path) -> argparse.Namespace:
    """The run's flags checked by llmjepa-parity, then made into one side's (steps, log every step)."""
    regular = run.mode in ("regular", "hf")
    argv = [*run.flags, "--steps", str(steps), *(["--against", "hf"] if regular else [])]
    return parity.run_args(parity.parse_parity_args(argv), work_dir / run.key, regular=regular)


def lockstep_hook(run: Run, earlier: list[Run]) -> parity.StepHook:
    """Prints each finished step's relative differences from the earlier runs; never stops the run."""
    by_step = [(other, {r["step"]: r for r in other.records}) for other in earlier]

    def hook(record: dict) -> bool:
        step = record["step"]
        diffs = [
            f"vs {other.label}: loss {parity.rel_diff(record['loss'], theirs['loss']):.1e} "
            f"grad {parity.rel_diff(record['grad_norm'], theirs['grad_norm']):.1e}"
            for other, records in by_step
            if (theirs := records.get(step)) is not None
        ]
        print(f"  {run.label} ga{run.grad_accum} step {step:>3} loss {record['loss']:.7f}  " + "; ".join(diffs))
        return True  # the bench measures every step, parted or not

    return hook


def execute(run: Run, steps: int, work_dir: Path, earlier: list[Run]) -> Run:
    """Train one run; an error (e.g. a mode the fast executor refuses) is recorded, not raised."""
    started = time.perf_counter()
    print(f"== {run.label}, grad_accum {run.grad_accum}", flush=True)
    try:
        args = parity_args(run, steps, work_dir)
        train = parity.run_hf if run.mode == "hf" else parity.run_ours
        run.records = train(args, hook=lockstep_hook(run, earlier))
    except (UserError, RuntimeError, ValueError) as err:
        traceback.print_exc()
        run.error = f"{type(err).__name__}: {err}"
    run.seconds = time.perf_counter() - started
    print(f"   {len(run.records)} steps in {run.seconds:.1f} s" + (f"; failed: {run.error}" if run.error else ""))
    return run


def run_all(args: argparse.Namespace, work_dir: Path) -> list[Run]:
    runs: list[Run] = []
    for grad_accum in args.grad_accum:
        hf = execute(Run("hf", grad_accum, "hf"), args.steps, work_dir, [])
        runs.append(hf)
        for impl in args.impl:
            regular = execute(Run(impl, grad_accum, "regular"), args.steps, work_dir, [hf])
            runs.append(regular)
            for mode in MODES:
                same_mode = [r for r in runs if r.grad_accum == grad_accum and r.mode == mode and r.records]
                runs.append(execute(Run(impl, grad_accum, mode), args.steps, work_dir, [regular, hf, *same_mode]))
    return runs


# ---- comparisons -----------------------------------------------------------------------------------
def compare(a: Run, b: Run, steps: int, tolerance: float) -> Comparison:
    b_by_step = {r["step"]: r for r in b.records}
    pairs = [(x, b_by_step[x["step"]]) for x in a.records if x["step"] in b_by_step]

    def worst(key: str) -> tuple[float, int]:
        """(largest relative difference, the first step where it occurs)."""
        diffs = [(parity.rel_diff(x[key], y[key]), x["step"]) for x, y in pairs]
        return max(diffs, key=lambda d: d[0], default=(math.nan, 0))

    (loss, loss_step), (grad, grad_step) = worst("loss"), worst("grad_norm")
    same_inputs = all(x[k] == y[k] for x, y in pairs for k in parity.EXACT)
    agree = len(pairs) == steps and not any(parity.partings(x, y, tolerance) for x, y in pairs)
    return Comparison(
        a.key, b.key, a.label, b.label, a.grad_accum, len(pairs), loss, loss_step, grad, grad_step, same_inputs, agree
    )


def comparisons(runs: list[Run], steps: int, tolerance: float) -> list[Comparison]:
    """--regular vs HF; each --lbd 0 run vs --regular and HF of its executor; fast vs reference per mode."""
    find = {r.key: r for r in runs if r.records}
    out = []
    for run in runs:
        if run.mode == "hf" or run.key not in find:
            continue
        ga = run.grad_accum
        against = [f"hf/ga{ga}/hf"]
        if run.mode != "regular":
            against.insert(0, f"{run.impl}/ga{ga}/regular")
        if run.impl == "fast":
            against.append(f"reference/ga{ga}/{run.mode}")
        out += [compare(run, find[b], steps, tolerance) for b in against if b in find]
    return out


# ---- outputs ---------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "triton"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root), "describe", "--always", "--dirty"]
    out["llmjepa commit"] = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip() or "?"
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores)"


def fast_kernels() -> str:
    """What the fast executor's attention and pair loss ran on in this process (its own choices)."""
    from llmjepa.execution.fast import attention_backend, run_fast
    from llmjepa.training.factory import fused_pair_loss_where_triton_runs
    from llmjepa_kernels.block_causal_attention import interpreted

    cuda = torch.cuda.is_available()
    where = "CUDA" if cuda else "the CPU interpreter"
    triton_attention = attention_backend(torch.device("cuda" if cuda else "cpu")) == "auto" and (cuda or interpreted())
    attention = f"block_causal_attention (Triton, {where})" if triton_attention else "PyTorch SDPA over the ranges"
    fused = fused_pair_loss_where_triton_runs(run_fast)
    pair_loss = f"cosine_jepa_loss (Triton, {where})" if fused else "the PyTorch pair loss"
    return f"attention: {attention}; pair loss: {pair_loss}"


def metadata(args: argparse.Namespace, started: datetime.datetime, seconds: float) -> dict:
    return {
        "device": device_name(),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "total_seconds": round(seconds, 1),
        "versions": versions(),
        "fast_executor_kernels": fast_kernels() if "fast" in args.impl else None,
        "model": "llmjepa/tiny-llama (embedded, random init, seed 42)",
        "data": "llmjepa/assets/arith_train.jsonl (bundled)",
        "flags": " ".join(BASE),
        "steps": args.steps,
        "tolerance": args.tolerance,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def write_json(path: Path, meta: dict, runs: list[Run], found: list[Comparison]) -> None:
    data = {
        "meta": meta,
        "comparisons": [vars(c) for c in found],
        "runs": {r.key: {"label": r.label, "flags": r.flags, **vars(r)} for r in runs},
    }
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def largest(diff: float, step: int) -> str:
    return "0 (equal on every step)" if diff == 0 else f"{diff:.1e} ({step})"


def markdown(meta: dict, runs: list[Run], found: list[Comparison]) -> str:
    v = meta["versions"]
    lines = [
        "# Parity: --lbd 0 vs --regular vs plain Hugging Face SFT, per optimizer step",
        "",
        f"- device: {meta['device']}; date: {meta['date']}; total time {meta['total_seconds']:.0f} s "
        f"({meta['torch_threads']} torch thread(s))",
        "- " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- model {meta['model']}; data {meta['data']}",
        f"- every run: `{meta['flags']}`, {meta['steps']} optimizer steps, `--impl` and `--grad_accum` as named; "
        "--regular, or `--lbd 0` and the mode's flags: view-based `--predictors 1`, multi-step "
        "`--num_prediction_steps 2 --predictors 1`, additive-mask `--predictors 1 --additive_mask`; HF Trainer "
        "SFT: a plain transformers.Trainer on --regular's view-1 ids and labels (llmjepa.commands.parity.run_hf)",
    ]
    if meta["fast_executor_kernels"]:
        lines.append(f"- `--impl fast` ran its attention and pair loss as: {meta['fast_executor_kernels']}")
    lines += [
        f"- command: `python bench/{meta['command']}`",
        "",
        f"Relative difference |a - b| / max(|a|, |b|), the largest over the steps (at that step); agree = "
        f"every step within {meta['tolerance']:g}, with equal label tokens and microbatches.",
        "",
        "| grad_accum | A | B | steps | loss: max rel diff (step) | grad norm: max rel diff (step) "
        "| label tokens, microbatches equal | agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in found:
        lines.append(
            f"| {c.grad_accum} | {c.a_label} | {c.b_label} | {c.steps} | {largest(c.max_loss, c.max_loss_step)} "
            f"| {largest(c.max_grad_norm, c.max_grad_norm_step)} | {'yes' if c.same_inputs else 'NO'} "
            f"| {'yes' if c.agree else 'NO'} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "Rows and pairs of step 1 show that the --lbd 0 runs built and ran their views. Seconds are wall time of "
        "the whole run on a shared machine, model loading included: not a speed measure.",
        "",
        "| run | grad_accum | steps | first loss | last loss | rows, pairs (step 1) | seconds | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        first, last = (f"{r.records[i]['loss']:.7f}" if r.records else "" for i in (0, -1))
        shape = f"{r.records[0]['rows']}, {r.records[0].get('pairs', 0)}" if r.records else ""
        error = r.error.replace("|", "/").splitlines()[0] if r.error else ""
        lines.append(
            f"| {r.label} | {r.grad_accum} | {len(r.records)} | {first} | {last} | {shape} | {r.seconds:.1f} "
            f"| {error} |"
        )
    return "\n".join(lines) + "\n"


def plot(path: Path, runs: list[Run], tolerance: float, title: str) -> None:
    """Per grad_accum: the loss curves, and every run's relative difference from HF SFT (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grad_accums = sorted({r.grad_accum for r in runs})
    fig, axes = plt.subplots(len(grad_accums), 3, figsize=(16, 4 * len(grad_accums)), squeeze=False)
    for row, ga in zip(axes, grad_accums):
        done = [r for r in runs if r.grad_accum == ga and r.records]
        hf = {r["step"]: r for x in done if x.mode == "hf" for r in x.records}
        for r in done:
            steps = [x["step"] for x in r.records]
            row[0].plot(steps, [x["loss"] for x in r.records], label=r.label, lw=1)
            if r.mode == "hf":
                continue
            for ax, key in zip(row[1:], ("loss", "grad_norm")):
                diffs = [max(parity.rel_diff(x[key], hf[x["step"]][key]), ZERO_DRAWN_AT) for x in r.records]
                ax.plot(steps, diffs, label=r.label, marker=".", lw=0.8)
        row[0].set_title(f"loss, grad_accum {ga}")
        for ax, key in zip(row[1:], ("loss", "grad norm")):
            ax.axhline(tolerance, color="black", ls="--", lw=0.8, label=f"tolerance {tolerance:g}")
            ax.set_yscale("log")
            ax.set_title(f"{key}: rel diff vs HF SFT, grad_accum {ga}")
        for ax in row:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(f"{title}; a rel diff of 0 is drawn at {ZERO_DRAWN_AT:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", nargs="+", choices=["reference", "fast"], default=["reference", "fast"])
    p.add_argument("--grad_accum", nargs="+", type=int, default=[1, 4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=1e-5)
    # One intra-op thread: for this 204k-parameter model two threads on 2 shared cores ran 3-10x slower
    # (measured for the test suite, tests/conftest.py).
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of parity.json, parity.md, parity.png")
    p.add_argument("--work_dir", type=Path, help="keep the runs' metrics here (default: a temporary folder)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-parity-") as scratch:
        runs = run_all(args, args.work_dir or Path(scratch))
    found = comparisons(runs, args.steps, args.tolerance)
    meta = metadata(args, started, time.perf_counter() - clock)
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "parity.json", meta, runs, found)
    report = markdown(meta, runs, found)
    (args.results / "parity.md").write_text(report)
    plot(args.results / "parity.png", runs, args.tolerance, f"llmjepa parity, {meta['device']}, {meta['date']}")
    print(report)
    print(f"wrote {args.results}/parity.json, parity.md, parity.png")


if __name__ == "__main__":
    main()
