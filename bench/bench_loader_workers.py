"""One short llmjepa-train run with a given number of data-loader workers (and pin_memory), timed.

    python bench/bench_loader_workers.py DATA WORKERS PIN STEPS

DATA is a JSONL file (Step-JEPA steps split at newlines) or "default" (the bundled sample); the run is
--impl fast, N = 2, K = 1, batch 4, grad_accum 1, no evaluation or checkpoint inside it. Prints one JSON
line: total train() seconds (worker start-up included), the median step_seconds after the first two
steps, and the 1-minute load average (on a shared machine, read the times against it). Run the settings
interleaved, several rounds, in separate processes (docs/fast_path.md has the CPU's result).
"""

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmjepa.commands.run import build_run  # noqa: E402
from llmjepa.commands.train import parse_args  # noqa: E402


def main() -> None:
    data, workers, pin, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    argv = ["--impl", "fast", "--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2"]
    argv += ["--batch_size", "4", "--grad_accum", "1", "--max_train_steps", str(steps), "--save_steps", "100000"]
    argv += ["--eval_steps", "100000", "--dataloader_num_workers", str(workers)]
    argv += ["--output_dir", tempfile.mkdtemp(prefix="bench_loader_")]
    if data != "default":
        argv += ["--data_file", data, "--step_separator", "\\n"]
    trainer = build_run(parse_args(argv)).trainer
    trainer.args.dataloader_pin_memory = pin
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    seconds = [r["step_seconds"] for r in trainer.history]
    record = {"data": Path(data).name, "workers": workers, "pin_memory": pin, "steps": len(seconds)}
    record |= {"train_s": round(total, 2), "median_step_s": round(statistics.median(seconds[2:]), 4)}
    print(json.dumps({**record, "load1": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
