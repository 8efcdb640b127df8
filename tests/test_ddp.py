"""Two CPU processes (torchrun, gloo) follow the same trajectory as one process with the same global batch.

Which examples form an optimizer step must be the same in both runs, though the samplers differ
(one process: a shuffled sampler; two: each rank its shard). So the data file holds exactly one
global batch (8 examples): every optimizer step is one epoch and sees all 8, in some order. The
step's loss is a sum over its tokens (and pairs) divided by the step's totals, so the order and the
split into microbatches and ranks must not matter: 2 ranks x 4 microbatches of 1 example against
1 process x 2 microbatches of 4.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from llmjepa.commands.train import main
from llmjepa.default_model import sample_data_path

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-5
STEPS = 4
MODES = {
    "regular": ["--regular"],
    "multi-step N=2 lbd 0.1": ["--num_prediction_steps", "2", "--lbd", "0.1", "--predictors", "1"],
    "multi-step N=2 lbd 0.1, fast path": [
        *["--num_prediction_steps", "2", "--lbd", "0.1", "--predictors", "1", "--impl", "fast"],
    ],
}

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def common(data: Path, mode: str, output_dir: Path) -> list[str]:
    return [
        "--train_file",
        str(data),
        *MODES[mode],
        "--num_epochs",
        str(STEPS),
        "--learning_rate",
        "1e-3",
        "--output_dir",
        str(output_dir),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_match_one(tmp_path: Path, capsys: pytest.CaptureFixture, mode: str) -> None:
    lines = sample_data_path("train").read_text(encoding="utf-8").splitlines()[:8]
    data = tmp_path / "eight.jsonl"
    data.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "train.py",
        *common(data, mode, ddp),
        "--batch_size",
        "1",
        "--grad_accum",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr

    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(common(data, mode, single) + ["--batch_size", "4", "--grad_accum", "2"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, capsys.readouterr().err[-3000:]

    a, b = read_metrics(single), read_metrics(ddp)  # rank 0 alone writes the file
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b):
        # every step: all 8 examples, counted over both ranks
        for key in ("label_tokens", "pairs", "tokens", "rows", "lr"):
            assert ra[key] == rb[key], (key, ra, rb)
        assert (ra["microbatches"], rb["microbatches"]) == (2, 8)  # over all ranks
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=RTOL, abs=1e-12), (key, ra, rb)
    if mode != "regular":
        assert all(r["pairs"] > 0 for r in a)
    # the trajectory moved: a learning rate of 1e-3 makes each step's loss depend on the earlier steps
    assert a[-1]["lm_loss"] < a[0]["lm_loss"] - 0.05
    assert (ddp / "model.safetensors").is_file() and (ddp / "loss_curve.png").is_file()
