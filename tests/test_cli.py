"""The CLI end to end: the seed commands as subprocesses, then every mode for a few steps in-process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjepa.commands.train import main
from llmjepa.default_model import sample_data_path

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
REQUIRED_KEYS = (
    "step",
    "loss",
    "lm_loss",
    "jepa_loss",
    "mean_cos",
    "label_tokens",
    "pairs",
    "grad_norm",
    "lr",
    "step_seconds",
    "tokens_per_second",
    "peak_memory_mib",
)
FEW_STEPS = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "3"]


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err[-3000:]
    return out, err


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def head(path: Path, n: int, dest: Path) -> Path:
    with path.open(encoding="utf-8") as f:
        dest.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    return dest


def assert_finite_steps(records: list[dict], n: int, jepa: bool) -> None:
    assert [r["step"] for r in records] == list(range(1, n + 1))
    for r in records:
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm", "lr"):
            assert math.isfinite(r[key]), (key, r)
        assert r["label_tokens"] > 0
    if jepa:
        assert all(r["pairs"] > 0 and 0 <= r["jepa_loss"] and r["mean_cos"] is not None for r in records), records
    else:
        assert all(r["pairs"] == 0 and r["jepa_loss"] == 0 for r in records), records


# ---- the seed commands, as a user runs them ---------------------------------------------------
SEED_COMMANDS = {
    "regular": ["--regular"],
    "multi-step lbd 0": ["--lbd", "0", "--num_prediction_steps", "2"],
}


@pytest.mark.parametrize("seed", SEED_COMMANDS)
def test_seed_command(tmp_path: Path, seed: str) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "train.py",
        "--train_file",
        str(sample_data_path("train")),
        *SEED_COMMANDS[seed],
        "--batch_size",
        "4",
        "--grad_accum",
        "2",
        "--max_train_steps",
        "10",
        "--debug",
        "5",
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    records = read_metrics(out)
    assert len(records) == 10
    for r in records:
        assert all(key in r for key in REQUIRED_KEYS), sorted(r)
        assert r["microbatches"] == 2 and r["step_seconds"] > 0 and r["tokens_per_second"] > 0
        assert r["peak_memory_mib"] > 0
    assert_finite_steps(records, 10, jepa=seed != "regular")
    if seed != "regular":
        assert all(r["loss"] == r["lm_loss"] for r in records)  # lbd 0: the JEPA term is measured, not trained
    assert [r["lr"] for r in records][0] > records[-1]["lr"] > 0  # linear decay over the 10 steps
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    stdout = result.stdout
    for needle in ("input batch", "forward batch", "lm_loss", "valid tokens", "loss per token"):
        assert needle in stdout, needle
    # --debug 5 prints every microbatch of the first 5 optimizer steps: 5 x grad_accum 2
    assert stdout.count("[debug] input batch") == 10
    if seed != "regular":
        assert "[debug] pairs: " in stdout and "[debug] cosine: " in stdout
    assert f"llmjepa-train: 10 steps; metrics {out / 'metrics.jsonl'}" in stdout


# ---- every mode, a few steps in-process ---------------------------------------------------------
MODES = {
    "regular": ["--regular"],
    "view-based": [],
    "predictors 2": ["--predictors", "2"],
    "front_pred": ["--predictors", "2", "--front_pred"],
    "reverse_pred": ["--predictors", "1", "--reverse_pred"],
    "last_token -2": ["--last_token", "-2"],
    "additive_mask": ["--additive_mask", "--predictors", "1"],
    "additive_mask reset": ["--additive_mask", "--additive_mask_positions", "reset"],
    "jepa_l2": ["--jepa_l2"],
    "jepa_mse": ["--jepa_mse"],
    "infonce": ["--infonce"],
    "gamma 0.5": ["--gamma", "0.5", "--lbd", "0.3"],
    "N=1": ["--num_prediction_steps", "1"],
    "N=2": ["--num_prediction_steps", "2", "--predictors", "1"],
    "N=3": ["--num_prediction_steps", "3"],
    "N=1 no_localized": ["--num_prediction_steps", "1", "--no_localized_masks"],
    "N=2 no_localized": ["--num_prediction_steps", "2", "--no_localized_masks", "--predictors", "1"],
    "N=3 no_localized": ["--num_prediction_steps", "3", "--no_localized_masks"],
    "N=2 omit last target": ["--num_prediction_steps", "2", "--omit_last_step_target"],
    "upstream_labels": ["--upstream_labels"],
    "train_all": ["--train_all"],
    "plain": ["--plain"],
    "plain N=2": ["--plain", "--num_prediction_steps", "2"],
    "lora": ["--lora", "--lora_rank", "4", "--learning_rate", "1e-3"],
    "pretrain": ["--pretrain"],
    "same_flop": ["--same_flop"],
}


@pytest.mark.parametrize("mode", MODES)
def test_mode_trains_with_finite_losses(tmp_path: Path, capsys: pytest.CaptureFixture, mode: str) -> None:
    out = tmp_path / "out"
    stdout, _ = run_cli(capsys, "--output_dir", out, *FEW_STEPS, *MODES[mode])
    records = read_metrics(out)
    assert_finite_steps(records, 3, jepa=mode != "regular")
    assert "flops" not in records[0]
    assert (out / "loss_curve.png").is_file()
    if mode == "lora":
        assert (out / "adapter_model.safetensors").is_file()
    if mode == "same_flop":
        assert ">>>>> --same_flop is active: 3 epochs -> 1" in stdout
    if mode == "gamma 0.5":
        for r in records:
            assert r["loss"] == pytest.approx(0.5 * r["lm_loss"] + 0.3 * r["jepa_loss"], rel=1e-12)


def test_pairs_per_example_follow_n(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The bundled answers have 2..5 steps: N step pairs per example, or fewer where an answer has fewer
    separators (N + 1 boundaries with the answer's end); --omit_last_step_target drops the last one."""
    data = head(sample_data_path("train"), 4, tmp_path / "four.jsonl")
    separators = [json.loads(line)["messages"][-1]["content"].count("\n\n") for line in data.read_text().splitlines()]
    for n, extra in ((1, []), (2, []), (3, []), (3, ["--omit_last_step_target"])):
        out = tmp_path / f"n{n}{len(extra)}"
        run_cli(
            capsys,
            "--train_file",
            data,
            "--num_prediction_steps",
            n,
            "--output_dir",
            out,
            "--batch_size",
            "4",
            "--grad_accum",
            "1",
            "--max_train_steps",
            "1",
            *extra,
        )
        [record] = read_metrics(out)
        per_example = [min(n, s) if not extra else max(min(n, s) - 1, 1) for s in separators]
        assert record["pairs"] == sum(per_example), (n, extra, separators, record["pairs"])


def test_jepa_ratio_skips_views_on_some_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    run_cli(
        capsys,
        "--jepa_ratio",
        "0.5",
        "--output_dir",
        out,
        "--batch_size",
        "2",
        "--grad_accum",
        "1",
        "--max_train_steps",
        "8",
    )
    records = read_metrics(out)
    assert [r["step"] for r in records] == list(range(1, 9))
    with_views = [r for r in records if r["pairs"] > 0]
    without = [r for r in records if r["pairs"] == 0]
    assert with_views and without, [r["pairs"] for r in records]
    for r in without:
        assert r["jepa_loss"] == 0 and r["mean_cos"] is None and r["loss"] == r["lm_loss"]
        assert r["rows"] == 2  # view 1 only
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])


def test_label_choices_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--train_all trains every token, --upstream_labels every token but pad (= eos = <|eot_id|>),
    the default the answer alone."""
    tokens = {}
    for name, flags in (("assistant", []), ("upstream", ["--upstream_labels"]), ("all", ["--train_all"])):
        out = tmp_path / name
        run_cli(
            capsys,
            "--regular",
            "--output_dir",
            out,
            "--batch_size",
            "2",
            "--grad_accum",
            "1",
            "--max_train_steps",
            "1",
            *flags,
        )
        [record] = read_metrics(out)
        tokens[name] = record["label_tokens"]
    assert tokens["assistant"] < tokens["upstream"] < tokens["all"], tokens


def test_track_flop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    run_cli(capsys, "--track_flop", "--output_dir", out, *FEW_STEPS)
    records = read_metrics(out)
    assert_finite_steps(records, 3, jepa=True)
    for r in records:
        assert r["flops"] > 0 and r["flops"] % (6 * r["tokens"]) == 0


def eval_losses(output_dir: Path) -> list[tuple[int, float]]:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, list(output_dir.iterdir())
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return [(e["step"], e["eval_loss"]) for e in state["log_history"] if "eval_loss" in e]


def test_data_file_split_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = head(sample_data_path("train"), 16, tmp_path / "sixteen.jsonl")
    out = tmp_path / "out"
    stdout, _ = run_cli(
        capsys,
        "--data_file",
        data,
        "--eval_split",
        "0.25",
        "--eval_steps",
        "2",
        "--output_dir",
        out,
        "--batch_size",
        "2",
        "--grad_accum",
        "1",
        "--max_train_steps",
        "4",
        "--predictors",
        "1",
    )
    assert "'eval_loss'" in stdout
    losses = eval_losses(out)
    assert [step for step, _ in losses] == [2, 4] and all(math.isfinite(loss) for _, loss in losses), losses
    # 12 train examples (the other 4 held out): one epoch is 6 steps of 2
    records = read_metrics(out)
    assert_finite_steps(records, 4, jepa=True)


def test_eval_file_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    eval_file = head(sample_data_path("eval"), 6, tmp_path / "eval.jsonl")
    out = tmp_path / "out"
    stdout, _ = run_cli(
        capsys,
        "--eval_file",
        eval_file,
        "--eval_steps",
        "3",
        "--num_prediction_steps",
        "2",
        "--output_dir",
        out,
        *FEW_STEPS,
    )
    assert "'eval_loss'" in stdout
    losses = eval_losses(out)
    assert [step for step, _ in losses] == [3] and math.isfinite(losses[0][1]), losses


# ---- the shared upstream datasets ---------------------------------------------------------------
def shared_dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared upstream datasets (../shared/datasets) are not mounted here")
    return path


def test_gsm8k_single_newline_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """GSM8K's steps end with a single "\\n" (its answer ends with "#### N"): --step_separator "\\n"."""
    data = head(shared_dataset("gsm8k_test.jsonl"), 16, tmp_path / "gsm8k16.jsonl")
    out = tmp_path / "out"
    stdout, _ = run_cli(
        capsys,
        "--train_file",
        data,
        "--step_separator",
        "\n",
        "--num_prediction_steps",
        "2",
        "--predictors",
        "1",
        "--output_dir",
        out,
        "--batch_size",
        "2",
        "--grad_accum",
        "2",
        "--max_train_steps",
        "3",
    )
    assert "no step separator" not in stdout  # every GSM8K answer has at least "\n#### N"
    records = read_metrics(out)
    assert_finite_steps(records, 3, jepa=True)
    assert all(r["pairs"] >= 4 for r in records)  # at least one pair for each of the 4 examples of a step


def test_gsm8k_default_separator_falls_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = head(shared_dataset("gsm8k_test.jsonl"), 16, tmp_path / "gsm8k16.jsonl")
    stdout, _ = run_cli(
        capsys,
        "--train_file",
        data,
        "--num_prediction_steps",
        "2",
        "--output_dir",
        tmp_path / "out",
        "--batch_size",
        "2",
        "--grad_accum",
        "1",
        "--max_train_steps",
        "1",
    )
    assert f"llmjepa-train: warning: {data}: 16 of 16 examples have no step separator" in stdout


def test_synth_view_based(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = head(shared_dataset("synth_test.jsonl"), 16, tmp_path / "synth16.jsonl")
    out = tmp_path / "out"
    stdout, _ = run_cli(
        capsys,
        "--train_file",
        data,
        "--predictors",
        "1",
        "--output_dir",
        out,
        "--batch_size",
        "2",
        "--grad_accum",
        "2",
        "--max_train_steps",
        "3",
    )
    assert "warning" not in stdout
    records = read_metrics(out)
    assert_finite_steps(records, 3, jepa=True)
    assert all(r["pairs"] == 4 for r in records)  # one pair per example
