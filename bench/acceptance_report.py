"""The GPU acceptance run's report: environment, tests, tables and the goals, from the files of bench/gpu_acceptance.sh.

    python bench/acceptance_report.py --env DIR/env.json                     # device and versions (run on the device)
    python bench/acceptance_report.py --in acceptance.tgz|DIR [...] --out DIR [--results bench/RESULTS.md]

--in reads, from each tarball of bench/acceptance.py (or the folder it was unpacked into): env.json, steps.jsonl,
tests_*.xml (JUnit of each pytest step), step.json and step_more.json (the whole-step table in two runs; the second's
methods join the first's), attention.json, tiles_*.json, aot_sm90.json where present (what is missing is reported
missing). It writes summary.json and summary.md to --out, and with
--results rewrites that file's section between the markers below with the summary (from --template, default the
file itself), so bench/RESULTS.md keeps its CPU sections and gains the GPU one with device, versions and date.

Goals checked (issue 8; benchmarks, not tests): fast-path efficiency (FLOP ratio / time ratio to packed regular)
>= 0.95; peak memory <= 1.1x packed regular (on CUDA); the upstream-style triple batch >= 2.5x slower and >= 3x
heavier than the fast path; --isolated_predictors --no_localized_masks within 1.1x packed regular; the Triton
attention's throughput per visible pair >= FlexAttention's and >= 0.8x flash-attn-4's on view 1; on the CPU the
fast path's time ratio below 1.6.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

START, END = "<!-- gpu-acceptance:start -->", "<!-- gpu-acceptance:end -->"


# ---- environment ---------------------------------------------------------------------------------
def environment() -> dict:
    import torch

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "versions": {},
        "cuda": torch.version.cuda,
    }
    for package in ("torch", "triton", "transformers", "peft", "flash-attn-4", "flash-attn", "flash_attn"):
        try:
            env["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = f"{props.major}.{props.minor}"
        env["multiprocessors"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = None
    else:
        env["device"] = f"CPU {platform.machine()} (no CUDA)"
    return env


# ---- reading the run's files ---------------------------------------------------------------------
def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_tests(path: Path) -> dict | None:
    """Totals and the failing and skipped tests of a pytest JUnit file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing, skipped = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failing.append({"test": name, "message": (node.get("message") or "")[:300]})
        node = case.find("skipped")
        if node is not None:
            reason = node.get("message") or ""
            skipped[reason] = skipped.get(reason, 0) + 1
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return {**totals, "failing": failing, "skipped_reasons": skipped}


def merge_tests(totals: dict | None, more: dict) -> dict:
    if totals is None:
        return more
    out = {k: totals[k] + more[k] for k in ("tests", "failures", "errors", "skipped", "passed")}
    out["failing"] = totals["failing"] + more["failing"]
    out["skipped_reasons"] = dict(totals["skipped_reasons"])
    for reason, n in more["skipped_reasons"].items():
        out["skipped_reasons"][reason] = out["skipped_reasons"].get(reason, 0) + n
    return out


def unpacked(source: Path, scratch: Path) -> Path:
    """A folder of results: `source` itself, or the acceptance tarball unpacked into `scratch`."""
    if source.is_dir():
        return source
    target = scratch / source.name.replace(".", "_")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(source) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.10.12 / 3.11.4 on
            tar.extractall(target, filter="data")
        else:
            tar.extractall(target)  # noqa: S202 (the run's own tarball)
    return target


def collect(folders: list[Path]) -> dict:
    """Everything the acceptance run wrote (bench/acceptance.py's layout; the older one of separate folders
    with steps.jsonl records of rc and timed_out is read too). step_more.json's methods join step.json's."""
    run = {"folders": [str(f) for f in folders], "steps": [], "env": [], "tiles": {}, "tests_by_step": {}}
    for folder in folders:
        env = read_json(folder / "env.json")
        if env:
            run["env"].append(env)
        steps = folder / "steps.jsonl"
        if steps.is_file():
            run["steps"] += [json.loads(line) for line in steps.read_text().splitlines() if line.strip()]
        for key, name in (("attention", "attention.json"), ("step", "step.json"), ("aot", "aot_sm90.json")):
            value = read_json(folder / name)
            if value is not None:
                run[key] = value
        more = read_json(folder / "step_more.json")
        if more is not None:
            if run.get("step"):
                extra = {k: v for k, v in more["methods"].items() if k not in run["step"]["methods"]}
                run["step"]["methods"].update(extra)
                add_ratios(run["step"]["methods"])
            else:
                run["step"] = more
        for path in sorted(folder.glob("tests*.xml")):
            tests = read_tests(path)
            if tests is not None:
                run["tests_by_step"][path.stem] = tests
                run["tests"] = merge_tests(run.get("tests"), tests)
        for path in sorted(folder.glob("tiles_*.json")):
            run["tiles"][path.stem] = read_json(path)
    return run


def add_ratios(methods: dict) -> None:
    """Ratios to packed_regular for methods measured in another run of bench_step (step_more.json): time and
    memory against the baseline of the core table, FLOPs from the floor counts."""
    base = methods.get("packed_regular", {})
    for record in methods.values():
        if record.get("time_ratio") is not None or record.get("median_ms") is None or not base.get("median_ms"):
            continue
        record["time_ratio"] = record["median_ms"] / base["median_ms"]
        flops, base_flops = (r.get("floor", {}).get("train_flops_per_step") for r in (record, base))
        if flops and base_flops:
            record["flop_ratio"] = flops / base_flops
            record["efficiency"] = record["flop_ratio"] / record["time_ratio"]
        if record.get("peak_memory_mib") is not None and base.get("peak_memory_mib"):
            record["memory_ratio"] = record["peak_memory_mib"] / base["peak_memory_mib"]


# ---- goals ---------------------------------------------------------------------------------------
def goal(name: str, measured: float | None, target: str, ok: bool | None) -> dict:
    return {"goal": name, "measured": measured, "target": target, "met": ok}


def step_goals(step: dict | None, cuda: bool) -> list[dict]:
    if not step:
        return [goal("whole-step table", None, "step.json", None)]
    m = step["methods"]

    def value(method: str, key: str) -> float | None:
        return m.get(method, {}).get(key)

    def at_least(x, bound):
        return None if x is None else x >= bound

    def at_most(x, bound):
        return None if x is None else x <= bound

    efficiency = value("fast_jepa", "efficiency")
    memory = value("fast_jepa", "memory_ratio")
    time_c, time_d = value("upstream_jepa", "median_ms"), value("fast_jepa", "median_ms")
    mem_c, mem_d = value("upstream_jepa", "peak_memory_mib"), value("fast_jepa", "peak_memory_mib")
    speedup = time_c / time_d if time_c and time_d else None
    leaner = mem_c / mem_d if mem_c and mem_d else None
    isolated = value("fast_isolated", "time_ratio")
    out = [
        goal("fast_jepa efficiency (FLOP ratio / time ratio)", efficiency, ">= 0.95", at_least(efficiency, 0.95)),
        goal(
            "fast_jepa peak memory / packed_regular",
            memory,
            "<= 1.1" if cuda else "report (CPU)",
            at_most(memory, 1.1) if cuda else None,
        ),
        goal("upstream_jepa time / fast_jepa time", speedup, ">= 2.5", at_least(speedup, 2.5)),
        goal("upstream_jepa memory / fast_jepa memory", leaner, ">= 3", at_least(leaner, 3.0)),
        goal("fast_isolated time / packed_regular", isolated, "<= 1.1", at_most(isolated, 1.1)),
    ]
    if not cuda:
        ratio = value("fast_jepa", "time_ratio")
        met = None if ratio is None else ratio < 1.6
        out.append(goal("fast_jepa time / packed_regular (CPU)", ratio, "< 1.6", met))
    return out


def attention_goals(attention: dict | None) -> list[dict]:
    if not attention:
        return [goal("attention table", None, "attention.json", None)]
    out = []
    by_size: dict[int, dict[str, float]] = {}
    for r in attention.get("timing", []):
        if r.get("status") == "ok":
            by_size.setdefault(r["tokens"], {})[r["method"]] = r["g_pair_heads_per_s"]
    for tokens, rates in sorted(by_size.items()):
        triton = rates.get("triton")
        for peer, factor in (("flex", 1.0), ("fa4_view1", 0.8)):
            ratio = triton / rates[peer] if triton and rates.get(peer) else None
            out.append(
                goal(
                    f"T={tokens}: triton / {peer} throughput per visible pair",
                    ratio,
                    f">= {factor}",
                    None if ratio is None else ratio >= factor,
                )
            )
    return out


def step_status(s: dict) -> str:
    """One cell: ok, failed (exit N), timed out, none selected or skipped, with the reason."""
    if "status" not in s:  # the older layout
        if s.get("skipped"):
            return f"skipped: {s['skipped']}"
        return "timed out" if s.get("timed_out") else f"exit {s['rc']}"
    text = {"failed": f"failed (exit {s.get('rc')})", "timed_out": "timed out", "none_selected": "none selected"}
    text = text.get(s["status"], s["status"])
    return f"{text}: {s['reason']}" if s.get("reason") else text


# ---- writing -------------------------------------------------------------------------------------
def fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_markdown(run: dict) -> str:
    env = run["env"][0] if run["env"] else {}
    cuda = "CPU" not in str(env.get("device", "CPU"))
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    lines = [
        f"### GPU acceptance run: {env.get('device', 'unknown device')}, {env.get('date', 'unknown date')}",
        "",
        f"{'GPU' if cuda else 'DRY RUN on the CPU (tiny shapes; no figure here is a GPU measurement)'}; "
        f"capability {env.get('capability', 'n/a')}, driver {env.get('driver', 'n/a')}, CUDA {env.get('cuda')}, "
        f"Python {env.get('python')}, {versions}.",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for s in run["steps"]:
        lines.append(f"| {s['step']} | {step_status(s)} | {s.get('seconds', '')} |")
    tests = run.get("tests")
    lines += ["", "**Tests** (`pytest -m gpu`, " + (", ".join(run.get("tests_by_step", {})) or "none") + "): "]
    if tests:
        lines[-1] += (
            f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped of {tests['tests']}."
        )
        lines += [f"- FAILED {f['test']}: {f['message']}" for f in tests["failing"]]
        lines += [f"- skipped ({n}): {reason}" for reason, n in tests["skipped_reasons"].items()]
    else:
        lines[-1] += "no tests.xml."
    step = run.get("step")
    lines += ["", "**Goals**", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in step_goals(step, cuda) + attention_goals(run.get("attention")):
        met = {True: "yes", False: "NO", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {fmt(g['measured'])} | {g['target']} | {met} |")
    if step:
        lines += ["", "**Whole step** (bench_step.py; full table in step.md)", ""]
        lines += ["| method | ms/step | time ratio | FLOP ratio | efficiency | memory MiB | extra MiB | memory ratio |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for name, r in step["methods"].items():
            if r.get("median_ms") is None:
                lines.append(f"| {r['label']} {name} | {r['status']}: {r.get('reason', '')} | | | | | | |")
                continue
            lines.append(
                f"| {r['label']} {name} | {r['median_ms']:.1f} | {fmt(r.get('time_ratio'))} "
                f"| {fmt(r.get('flop_ratio'))} | {fmt(r.get('efficiency'))} | {fmt(r.get('peak_memory_mib'), '.0f')} "
                f"| {fmt(r.get('peak_extra_mib'), '.0f')} | {fmt(r.get('memory_ratio'))} |"
            )
        s = step["shapes"]
        lines += [
            "",
            f"{step['device']}, {step['dtype']}, {s['parameters'] / 1e6:.0f}M parameters, batch {s['batch_size']}, "
            f"N={s['num_prediction_steps']}, K={s['predictors']}, checkpointing {s['gradient_checkpointing']}, "
            f"mean view-1 length {s['mean_view1_length']:.0f}, {step['date']}.",
        ]
    for stem, tiles in run["tiles"].items():
        cand = (tiles or {}).get("candidates") or {}
        chosen = cand.get("chosen")
        lines += ["", f"**Tile configs** ({stem}): {cand.get('status', 'no candidates')}"]
        if chosen:
            for part in ("forward", "dkdv", "dq"):
                c, d = chosen[part], cand["default"][part]
                lines.append(
                    f"- {part}: chosen {c['block_m']}x{c['block_n']} w{c['num_warps']} s{c['num_stages']} "
                    f"(default_config {d['block_m']}x{d['block_n']} w{d['num_warps']} s{d['num_stages']})"
                )
    aot = run.get("aot")
    if aot:
        failed = sum(not r["ok"] for r in aot)
        spills = sum(bool(r["ok"] and r["spill_bytes"]) for r in aot)
        lines += ["", f"**AOT compile** (sm_90): {len(aot)} kernels, {failed} failed, {spills} spill."]
    return "\n".join(lines) + "\n"


def rewrite_results(template: Path, target: Path, section: str) -> None:
    """The template with the text between START and END replaced by `section` (appended when absent)."""
    text = template.read_text() if template.is_file() else "# Benchmark results\n"
    block = f"{START}\n{section}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## GPU acceptance\n\n" + block + "\n"
    target.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", type=Path, help="write the environment to this JSON file and stop")
    p.add_argument("--in", dest="folders", type=Path, nargs="+", help="acceptance.tgz files or their unpacked folders")
    p.add_argument("--quiet", action="store_true", help="print nothing (the driver calls it after every step)")
    p.add_argument("--out", type=Path, help="where summary.json and summary.md go")
    p.add_argument("--results", type=Path, help="rewrite this RESULTS.md's GPU section")
    p.add_argument("--template", type=Path, help="the RESULTS.md to start from (default: --results itself)")
    args = p.parse_args(argv)
    if args.env:
        args.env.write_text(json.dumps(environment(), indent=2) + "\n")
        print(args.env.read_text())
        return 0
    if not args.folders or not args.out:
        p.error("--in and --out are needed (or --env)")
    with tempfile.TemporaryDirectory() as scratch:
        run = collect([unpacked(f, Path(scratch)) for f in args.folders])
    args.out.mkdir(parents=True, exist_ok=True)
    env = run["env"][0] if run["env"] else {}
    cuda = "CPU" not in str(env.get("device", "CPU"))
    run["goals"] = step_goals(run.get("step"), cuda) + attention_goals(run.get("attention"))
    (args.out / "summary.json").write_text(json.dumps(run, indent=2) + "\n")
    section = summary_markdown(run)
    (args.out / "summary.md").write_text(section)
    if args.results:
        rewrite_results(args.template or args.results, args.results, section)
    if not args.quiet:
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
