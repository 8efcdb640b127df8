"""Ctrl-C/SIGTERM under torchrun: the ranks agree on stopping through the all-reduce that each optimizer step
already does for its sums (JepaTrainer.read_step_sums), not through a collective and a host read of their
own. Two CPU ranks (gloo, torch.multiprocessing): a signal on rank 1 stops both after the same step, with
one all-reduce per step; a signal after the step's read stops both one step later."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llmjepa.training.callbacks import StopOnSignal
from llmjepa.training.trainer import JepaTrainer, StepStats

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)
STEPS = 5
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_steps(rank: int, port: int, signal_at: int, after_read: bool, results: dict) -> None:
    """One rank: STEPS optimizer steps' reads and step ends; rank 1 receives SIGTERM at step `signal_at`
    (before that step's read, or after it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        stop = StopOnSignal()
        cpu = torch.device("cpu")
        trainer = SimpleNamespace(args=SimpleNamespace(device=cpu), signal_callback=lambda: stop)
        calls = []
        all_reduce = dist.all_reduce

        def counted(*args, **kwargs):
            calls.append(1)
            return all_reduce(*args, **kwargs)

        dist.all_reduce = counted
        agreed, reduces = [], []
        for step in range(1, STEPS + 1):
            trainer.stats = StepStats(device_sums=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), tokens=5)
            if rank == 1 and step == signal_at and not after_read:
                stop.signum = signal.SIGTERM
            before = len(calls)
            read = JepaTrainer.read_step_sums(trainer, None)
            if rank == 1 and step == signal_at and after_read:
                stop.signum = signal.SIGTERM
            agreed.append(stop.agreed_signal(cpu))
            reduces.append(len(calls) - before)
            assert read[:4] == [2.0, 4.0, 6.0, 10.0]  # the step's sums, the flags taken out
        dist.all_reduce = all_reduce
        results[rank] = (agreed, reduces)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("after_read", [False, True], ids=["before-read", "after-read"])
def test_ranks_agree_in_the_steps_all_reduce(after_read: bool) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    port = free_port()
    procs = [ctx.Process(target=rank_steps, args=(r, port, 2, after_read, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    stops_at = 3 if after_read else 2  # a signal after the step's read is seen at the next step's
    want = [signal.SIGTERM if step >= stops_at else 0 for step in range(1, STEPS + 1)]
    for rank in (0, 1):
        agreed, reduces = results[rank]
        assert agreed == want, (rank, agreed)
        assert reduces == [1] * STEPS, (rank, reduces)  # the step sums' all-reduce alone: none for the signal


def test_one_process_reads_its_own_flag() -> None:
    stop = StopOnSignal()
    assert stop.agreed_signal(torch.device("cpu")) == 0
    stop.signum = signal.SIGINT
    assert stop.agreed_signal(torch.device("cpu")) == signal.SIGINT


def test_sigterm_wins_when_ranks_got_different_signals() -> None:
    stop = StopOnSignal()
    stop.agree([1.0, 1.0])
    assert stop.agreed == signal.SIGTERM
    stop.agree([2.0, 0.0])
    assert stop.agreed == signal.SIGINT
    stop.agree([0.0, 0.0])
    assert stop.agreed == 0


def test_sigterm_to_one_torchrun_rank_stops_both_after_the_same_step(tmp_path: Path) -> None:
    """The CLI under torchrun (2 CPU ranks): SIGTERM to rank 1's process alone; both ranks stop after the same
    optimizer step, each says so in its one line, and rank 0 saved that step's checkpoint."""
    psutil = pytest.importorskip("psutil", reason="psutil finds torchrun's worker processes")
    from llmjepa.default_model import sample_data_path

    data = tmp_path / "sixteen.jsonl"
    data.write_text("".join(sample_data_path("train").read_text(encoding="utf-8").splitlines(keepends=True)[:16]))
    out = tmp_path / "out"
    flags = ["--train_file", data, "--num_prediction_steps", "2", "--predictors", "1", "--batch_size", "1"]
    flags += ["--grad_accum", "2", "--max_train_steps", "200", "--save_steps", "1000", "--output_dir", out]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), "train.py", *map(str, flags)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.05)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
    (rank1,) = [p for p in workers if p.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    lines = re.findall(r"llmjepa-train: stopped by SIGTERM after step (\d+), saved", err)
    assert len(lines) == 2 and lines[0] == lines[1], err[-4000:]  # one line per rank, the same step
    step = int(lines[0])
    assert 1 <= step < 200 and (out / f"checkpoint-{step}" / "trainer_state.json").is_file(), err[-4000:]
    # the ranks' exit status 143 makes torchrun's launcher print its own ChildFailedError traceback: none of ours
    assert not re.search(r'File ".*/(llmjepa|transformers)/', err), err[-4000:]
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, step + 1))
