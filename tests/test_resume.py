"""--resume_from_checkpoint continues on the uninterrupted run's trajectory.

Both runs use --max_train_steps 6 (the linear LR schedule depends on it): the uninterrupted run
saves checkpoint-3 on its way; its checkpoint-3 is copied to a fresh output directory together
with its metrics.jsonl, whose lines after step 3 stand for steps an interrupted run had logged
but not checkpointed (they are overwritten with bogus values, and must be replaced). 16 examples
in steps of 4 make an epoch of 4 steps, so the resumed part also crosses an epoch boundary.
"""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmjepa.commands.train import main
from llmjepa.default_model import sample_data_path

RTOL = 1e-6
MODES = {
    "multi-step N=2 lbd 0.1": ["--num_prediction_steps", "2", "--lbd", "0.1", "--predictors", "1"],
    "jepa_ratio 0.5": ["--jepa_ratio", "0.5", "--predictors", "1"],
}


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def command(data: Path, mode: str, output_dir: Path) -> list[object]:
    return [
        "--train_file",
        data,
        *MODES[mode],
        "--batch_size",
        "2",
        "--grad_accum",
        "2",
        "--learning_rate",
        "1e-3",
        "--max_train_steps",
        "6",
        "--save_steps",
        "3",
        "--output_dir",
        output_dir,
    ]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    lines = sample_data_path("train").read_text(encoding="utf-8").splitlines()[:16]
    path = tmp_path / "sixteen.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def interrupted_copy(full: Path, dest: Path) -> Path:
    """dest as a run interrupted in step 6 leaves it: checkpoint-3, metrics up to step 5 and part of 6."""
    shutil.copytree(full / "checkpoint-3", dest / "checkpoint-3")
    records = read_metrics(full)[:5]
    for r in records[3:]:
        r["loss"] = r["grad_norm"] = -1.0
    cut_short = json.dumps(read_metrics(full)[5])[:40]  # the kill hit while step 6's line was written
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + cut_short)
    return dest


def assert_same_trajectory(full: Path, resumed: Path) -> None:
    a, b = read_metrics(full), read_metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert b[:3] == a[:3]  # kept from the interrupted run's file
    for ra, rb in zip(a[3:], b[3:]):
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            assert math.isfinite(rb[key]) and rb[key] == pytest.approx(ra[key], rel=RTOL, abs=1e-12), (key, ra, rb)
        for key in ("lr", "label_tokens", "pairs", "tokens", "rows", "microbatches"):
            assert rb[key] == ra[key], (key, ra, rb)
    weights_a, weights_b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_resume_matches_uninterrupted_run(tmp_path: Path, capsys: pytest.CaptureFixture, data: Path, mode: str) -> None:
    full = tmp_path / "full"
    rc, _, err = run_cli(capsys, *command(data, mode, full))
    assert rc == 0, err[-3000:]
    assert (full / "checkpoint-3" / "trainer_state.json").is_file() and (full / "checkpoint-6").is_dir()
    records = read_metrics(full)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    if mode.startswith("jepa_ratio"):  # the resumed steps must cover both kinds of microbatch
        assert {r["pairs"] > 0 for r in records[3:]} == {True, False}, [r["pairs"] for r in records]

    resumed = interrupted_copy(full, tmp_path / "resumed")
    rc, _, err = run_cli(capsys, *command(data, mode, resumed), "--resume_from_checkpoint", resumed / "checkpoint-3")
    assert rc == 0, err[-3000:]
    assert_same_trajectory(full, resumed)

    if mode.startswith("multi-step"):
        # 'latest' picks the highest numbered checkpoint-N directory, ignoring other names
        latest = interrupted_copy(full, tmp_path / "latest")
        (latest / "checkpoint-best").mkdir()
        (latest / "checkpoint-2.tmp").mkdir()
        rc, _, err = run_cli(capsys, *command(data, mode, latest), "--resume_from_checkpoint", "latest")
        assert rc == 0, err[-3000:]
        assert_same_trajectory(full, latest)


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture, data: Path) -> None:
    out = tmp_path / "empty"
    for where, needle in (
        ("latest", f"no checkpoint-* in {out}"),
        (tmp_path / "nope", "no such directory"),
        (tmp_path, "not a checkpoint directory"),
    ):
        rc, _, err = run_cli(capsys, *command(data, "jepa_ratio 0.5", out), "--resume_from_checkpoint", where)
        lines = err.strip().splitlines()
        assert rc == 2 and lines[-1].startswith("llmjepa-train: error: --resume_from_checkpoint"), err[-2000:]
        assert needle in lines[-1] and "Traceback" not in err


def test_default_output_dir_is_new_per_run_and_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmjepa.commands.train import parse_args

    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, "--regular", "--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "1")
    assert rc == 0, err[-3000:]
    first = out.splitlines()[0]
    assert re.fullmatch(r"llmjepa-train: output in runs/\d{8}-\d{6}-regular", first), first
    run_dir = tmp_path / first.split("output in ")[1]
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "model.safetensors").is_file()
    # a second run in the same second gets a folder of its own
    taken = tmp_path / parse_args(["--num_prediction_steps", "2"]).output_dir
    taken.mkdir(parents=True)
    again = parse_args(["--num_prediction_steps", "2"]).output_dir
    assert re.fullmatch(r"runs/\d{8}-\d{6}-step-jepa-n2(-2)?", again) and tmp_path / again != taken
    rc, _, err = run_cli(capsys, "--resume_from_checkpoint", "latest")
    assert rc == 2 and err.strip() == (
        "llmjepa-train: error: --resume_from_checkpoint latest needs --output_dir (by default every run gets a new "
        "folder)"
    )
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().split()
    assert "runs/" in ignored


@pytest.mark.slow
def test_soak_kill_9_and_resume_is_bit_exact(tmp_path: Path) -> None:
    """bench/soak.py, CI-sized: 200 steps, a checkpoint every 50, three SIGKILLs at seeded random steps,
    each resumed with 'latest'; the full run (1000 steps) and its result: bench/results/soak.md."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "bench/soak.py", "--steps", "200", "--save_steps", "50", "--kills", "3"]
    cmd += ["--seed", "1", "--out", str(tmp_path / "soak"), "--no_report"]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["weights_equal"] and summary["every_step_once"] and summary["losses_equal"], summary
    assert len(summary["cycles"]) == 3


def test_resuming_a_finished_epoch_run_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, data: Path
) -> None:
    """By epochs (no --max_train_steps): the last checkpoint is the end; resuming trains no extra step."""
    out = tmp_path / "out"
    flags = ["--train_file", data, "--regular", "--batch_size", "4", "--grad_accum", "2", "--num_epochs", "2"]
    rc, _, err = run_cli(capsys, *flags, "--output_dir", out)
    assert rc == 0, err[-3000:]
    before = (out / "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in before.splitlines()] == [1, 2, 3, 4]
    rc, stdout, err = run_cli(capsys, *flags, "--output_dir", out, "--resume_from_checkpoint", "latest")
    assert rc == 0, err[-3000:]
    assert f"llmjepa-train: {out}/checkpoint-4 is step 4 of 4: this run has finished; nothing to train" in stdout
    assert (out / "metrics.jsonl").read_text() == before and not (out / "checkpoint-5").exists()
    # more epochs asked for: it trains on from the checkpoint
    rc, stdout, err = run_cli(capsys, *flags[:-1], "3", "--output_dir", out, "--resume_from_checkpoint", "latest")
    assert rc == 0, err[-3000:]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
