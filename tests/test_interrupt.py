"""Ctrl-C and SIGTERM: the CLI (a subprocess) stops at the end of the optimizer step in progress, saves a
checkpoint, prints one line with the command that resumes, and exits 130 or 143 without a traceback;
that command continues on the uninterrupted run's trajectory, bit for bit. A second signal exits at
once. A finished run, resumed, trains nothing and says so."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmjepa.default_model import sample_data_path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 40
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(data: Path, output_dir: Path, *extra: object) -> list[str]:
    flags = ["--train_file", data, "--num_prediction_steps", "2", "--predictors", "1", "--learning_rate", "1e-3"]
    flags += ["--batch_size", "2", "--grad_accum", "2", "--max_train_steps", STEPS, "--save_steps", 1000]
    return [sys.executable, "train.py", *map(str, flags), "--output_dir", str(output_dir), *map(str, extra)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)


def run_and_signal(cmd: list[str], output_dir: Path, signals: list[int], pause: float = 0.0) -> tuple[int, str]:
    """Start the run; once metrics.jsonl has a line (training is under way), send the signals."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.02)
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(pause)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def steps(output_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sixteen.jsonl"
    lines = sample_data_path("train").read_text(encoding="utf-8").splitlines()[:16]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "out"
    result = run(command(data, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps(out) == list(range(1, STEPS + 1))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_resume_equals_uninterrupted(
    data: Path, uninterrupted: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "out"
    rc, err = run_and_signal(command(data, out), out, [sig])
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    prefix = f"llmjepa-train: stopped by {sig.name} after step "
    assert last.startswith(prefix), err[-3000:]
    stopped_at = int(last[len(prefix) :].split(",")[0])
    assert 1 <= stopped_at < STEPS, last
    checkpoint = out / f"checkpoint-{stopped_at}"
    assert (checkpoint / "trainer_state.json").is_file()
    assert f"saved {checkpoint}; resume with: llmjepa-train " in last
    assert not (out / "model.safetensors").exists()  # no final model from a run that did not finish
    assert steps(out) == list(range(1, stopped_at + 1))

    resume = shlex.split(last.split("resume with: ", 1)[1])
    assert resume[0] == "llmjepa-train" and resume[-2:] == ["--resume_from_checkpoint", str(checkpoint)]
    result = run([sys.executable, "train.py", *resume[1:]])
    assert result.returncode == 0, result.stderr[-3000:]
    assert steps(out) == list(range(1, STEPS + 1))
    full_records = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(full_records, records):
        assert (a["loss"], a["grad_norm"], a["lr"]) == (b["loss"], b["grad_norm"], b["lr"]), (a, b)
    want, got = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name


def test_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    # long steps (128 examples each, from the bundled arithmetic sample's 512: the default demo sums are too
    # short, their step ends before the second signal) so that both signals land in one step; the second is
    # sent a moment after the first (sent together, the kernel would merge them into one)
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "--train_file", str(sample_data_path("train")), "--regular"]
    cmd += ["--batch_size", "16", "--grad_accum", "8", "--output_dir", str(out)]
    rc, err = run_and_signal(cmd, out, [signal.SIGINT, signal.SIGINT], pause=0.3)
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "llmjepa-train: SIGINT again: exiting now; nothing saved since the last checkpoint"
    )
    assert not list(out.glob("checkpoint-*"))


def test_resuming_a_finished_run_trains_nothing(data: Path, uninterrupted: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    before = (out / "metrics.jsonl").read_text()
    result = run(command(data, out, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"llmjepa-train: {out}/checkpoint-{STEPS} is step {STEPS} of {STEPS}: this run has finished; nothing to train"
        in result.stdout
    ), result.stdout
    assert (out / "metrics.jsonl").read_text() == before
    assert not (out / f"checkpoint-{STEPS + 1}").exists()


def test_ctrl_c_while_loading_exits_130_without_traceback(tmp_path: Path) -> None:
    """Ctrl-C once the run has started (its output folder printed) but before training: one line, exit 130."""
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "--num_prediction_steps", "2", "--predictors", "1", "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    first = proc.stdout.readline()
    assert first == f"llmjepa-train: output in {out}\n", first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    # almost always still loading; on a fast machine training may have begun, and the step-end stop answers
    assert last == "llmjepa-train: interrupted outside a training step; nothing saved by this stop" or last.startswith(
        "llmjepa-train: stopped by SIGINT after step "
    ), last
