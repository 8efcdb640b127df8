"""Encoding a dataset before training (issue 18, item 3): examples per second and peak memory of llmjepa-train's
data path (commands/sources.py encode_data -> datasets.map, then the encoded rows in Arrow) on gsm8k-sized
conversations generated here (no network), with 1 and 2 processes, then a second start that reads the cache.

    python bench/bench_encoding.py                      # 100k conversations, parquet via --dataset_name
    python bench/bench_encoding.py --rows 2000 --source jsonl --out /tmp/enc.json

Each measurement is a fresh process (as a second llmjepa-train run is), on flags as llmjepa-train gets them
(view-based LLM-JEPA, --predictors 1, the embedded tokenizer). The parent samples the memory of that process and
its children (datasets.map's workers) every 0.2 s: the sum of their RSS (shared pages counted in each process,
an upper bound), of their PSS (shared pages divided among them), and of their anonymous PSS (PSS less the file
pages: the memory-mapped data and cache files, which the kernel can drop and read again). `encode_s` is
encode_data and the encoded rows' report; `encode_cpu_s` its CPU time, the map's workers included (on a shared
machine, examples per CPU-second say what the cores would do unloaded); `wall_s` the whole process (Python, torch
and transformers imports included). Goals on the 2-core CPU: 100k in under 2 minutes, under 1 GB peak, a second
start under 10 s. psutil (a dependency of accelerate, which the Trainer needs) finds the processes;
/proc/PID/smaps_rollup gives their memory (Linux).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = (
    "the a of to and in is was for on that with as at by from they he she it has had each more than how many "
    "total dollars apples books pages hours minutes friends week days miles cookies students class price cost "
    "sold bought gave left remaining twice half three four five times per every"
).split()


def conversation(rng: random.Random, i: int) -> dict:
    """A gsm8k-sized row: a question of about 45 words, an answer of 3-6 calculation lines and '#### n' (gsm8k's
    test set: questions 46 words on average, answers 3-5 steps)."""
    question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60))) + f" {rng.randint(2, 99)}?"
    steps = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(2, 99), rng.randint(2, 20)
        steps.append(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) + f" {a} * {b} = <<{a}*{b}={a * b}>>{a * b}."
        )
    answer = "\n".join(steps) + f"\n#### {i % 1000}"
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_data(folder: Path, rows: int, source: str) -> Path:
    """The generated conversations as a parquet file (read by datasets) or a JSONL file (read line by line)."""
    rng = random.Random(0)
    data = [conversation(rng, i) for i in range(rows)]
    if source == "jsonl":
        path = folder / "gsm8k_like.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
        return path
    import datasets

    path = folder / "gsm8k_like.parquet"
    datasets.Dataset.from_list(data).to_parquet(str(path))
    return path


def child(args: argparse.Namespace) -> None:
    """One start: the flags parsed and checked, the tokenizer loaded, the data encoded; prints a JSON line."""
    started = time.perf_counter()
    from llmjepa.commands.config import derive
    from llmjepa.commands.run import encode_part
    from llmjepa.commands.sources import encode_data
    from llmjepa.commands.train import parse_args
    from llmjepa.model import load_tokenizer

    source_flag = "--train_file" if args.data.endswith(".jsonl") else "--dataset_name"
    flags = [source_flag, args.data, "--predictors", "1", "--output_dir", str(Path(args.cache) / "run")]
    flags += ["--dataset_num_proc", str(args.num_proc)]
    run_args = parse_args(flags)
    cfg = derive(run_args).view
    tokenizer = load_tokenizer(run_args.model_name)
    cached = any(Path(args.cache, "llmjepa-encoded").glob("*.arrow"))
    encode_start, cpu_start = time.perf_counter(), cpu_seconds()
    train, _ = encode_data(run_args, tokenizer, cfg, {})
    encoded = encode_part(train, cfg, {})
    first = encoded[0]
    done = time.perf_counter()
    out = {
        "examples": len(encoded),
        "tokens_view1_first": len(first.input_ids),
        "cache_existed": cached,
        "encode_s": round(done - encode_start, 2),
        "encode_cpu_s": round(cpu_seconds() - cpu_start, 2),
        "wall_s": round(done - started, 2),
    }
    print("RESULT " + json.dumps(out), flush=True)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (datasets.map's workers, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, anonymous PSS) in bytes, summed over a process and its descendants (Linux smaps_rollup). The
    anonymous part leaves out file pages: the memory-mapped Arrow files, which the kernel can drop and reread."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    totals = [0, 0, 0]
    for p in procs:
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines()[1:]
            )
        except (OSError, ValueError):  # the process ended meanwhile
            continue
        for i, name in enumerate(("Rss", "Pss", "Pss_Anon")):
            totals[i] += int(fields.get(name, "0 kB").split()[0]) * 1024
    return totals[0], totals[1], totals[2]


def measure(data: Path, cache: Path, num_proc: int) -> dict:
    """One fresh process encoding `data`, its peak memory sampled from here."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--cache", str(cache), "--num_proc", str(num_proc)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0, 0, 0]

    def sample() -> None:
        while proc.poll() is None:
            peak[:] = [max(a, b) for a, b in zip(peak, tree_memory(proc.pid))]
            time.sleep(0.2)  # reading smaps costs CPU the measured process would otherwise get

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench_encoding: the child failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
    result.update(
        num_proc=num_proc,
        process_s=round(time.perf_counter() - started, 2),
        peak_rss_mb=round(peak[0] / 2**20),
        peak_pss_mb=round(peak[1] / 2**20),
        peak_pss_anon_mb=round(peak[2] / 2**20),
        examples_per_s=round(result["examples"] / result["encode_s"]) if result["encode_s"] else None,
        examples_per_cpu_s=round(result["examples"] / result["encode_cpu_s"]) if result["encode_cpu_s"] else None,
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--source", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--procs", default="1,2", help="process counts measured from an empty cache, comma-separated")
    p.add_argument("--out", help="write the results here as JSON")
    p.add_argument("--workdir", help="data and caches here (default: a temporary folder)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--num_proc", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        work = Path(work)
        data = write_data(work, args.rows, args.source)
        data_mb = round(data.stat().st_size / 2**20, 1)
        results = []
        for n in [int(x) for x in args.procs.split(",")]:
            cache = work / f"cache-{n}"  # each first start from an empty cache
            first = measure(data, cache, n)
            second = measure(data, cache, n)
            first["cache_mb"] = round(sum(f.stat().st_size for f in (cache / "llmjepa-encoded").iterdir()) / 2**20, 1)
            results += [{**first, "start": "first"}, {**second, "start": "second (cache)"}]
            for r in results[-2:]:
                print(json.dumps(r), flush=True)
    report = {"rows": args.rows, "source": args.source, "data_mb": data_mb, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
