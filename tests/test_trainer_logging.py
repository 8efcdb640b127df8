"""JEPA metrics through Trainer.log: every report_to backend (TensorBoard's event files here) and
state.log_history get lm_loss, jepa_loss, mean_cos, label_tokens, pairs, tokens_run and peak_memory_mib at each
training log, and eval_lm_loss (per label token over the whole eval set), eval_jepa_loss, eval_mean_cos and
eval_perplexity at each evaluation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_examples, load_model, load_tokenizer, sample_data_path
from llmjepa.training.trainer import window_metrics

STEPS = 4
HEALTH_KEYS = ("jepa_pred_std", "jepa_target_std", "jepa_pred_rank", "jepa_target_rank")
TRAIN_KEYS = (
    "lm_loss",
    "jepa_loss",
    "mean_cos",
    "label_tokens",
    "pairs",
    "tokens_run",
    "peak_memory_mib",
    *HEALTH_KEYS,
)
EVAL_KEYS = ("lm_loss", "jepa_loss", "mean_cos", "perplexity", "loss")


def rows(split: str, n: int) -> list[dict]:
    return [{"messages": ex.messages} for ex in load_examples(sample_data_path(split))[:n]]


def make_trainer(
    out: Path, report_to: str = "none", regular: bool = False, eval_batch: int = 2, gamma: float = 1.0
) -> JepaTrainer:
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    model = load_model("llmjepa/tiny-llama", tokenizer)
    view = ViewConfig(regular=True) if regular else ViewConfig(num_prediction_steps=2, predictors=1)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=report_to,
        use_cpu=True,
        remove_unused_columns=False,
    )
    return JepaTrainer(
        model=model,
        args=args,
        train_dataset=rows("train", 32),
        eval_dataset=rows("eval", 7),
        processing_class=tokenizer,
        loss_config=LossConfig(regular=regular, lbd=0.0 if regular else 0.1, gamma=gamma),
        view_config=view,
        metrics_path=out / "metrics.jsonl",
    )


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is not installed"
    )
    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def test_jepa_metrics_in_tensorboard_and_log_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = make_trainer(tmp_path / "out", report_to="tensorboard")
    trainer.train()
    history = trainer.history
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    # metrics.jsonl: the same records, one a step
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lm_loss"] for r in lines] == [r["lm_loss"] for r in history]

    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in train_logs] == [2, 4]
    for entry in train_logs:
        window = history[entry["step"] - 2 : entry["step"]]
        assert entry["lm_loss"] == pytest.approx(sum(r["lm_loss"] for r in window) / 2, rel=1e-12)
        assert entry["pairs"] == pytest.approx(sum(r["pairs"] for r in window) / 2)
        assert entry["peak_memory_mib"] == max(r["peak_memory_mib"] for r in window)
        assert entry["loss"] == pytest.approx(sum(r["loss"] for r in window) / 2, rel=1e-4)  # the Trainer's own

    scalars = read_scalars(tmp_path / "tb")
    for key in TRAIN_KEYS:
        assert [step for step, _ in scalars[f"train/{key}"]] == [2, 4], key
    for key in EVAL_KEYS:
        assert [step for step, _ in scalars[f"eval/{key}"]] == [2, 4], key
    for (_, value), entry in zip(scalars["train/lm_loss"], train_logs):
        assert value == pytest.approx(entry["lm_loss"], rel=1e-6)  # float32 in the event file
    evals = [e for e in trainer.state.log_history if "eval_lm_loss" in e]
    for (_, value), entry in zip(scalars["eval/mean_cos"], evals):
        assert value == pytest.approx(entry["eval_mean_cos"], rel=1e-6)
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_lm_loss"]), rel=1e-12)
        assert entry["eval_loss"] == pytest.approx(entry["eval_lm_loss"] + 0.1 * entry["eval_jepa_loss"], rel=1e-12)
        assert -1 <= entry["eval_mean_cos"] <= 1 and entry["eval_jepa_loss"] == pytest.approx(
            1 - entry["eval_mean_cos"]
        )


def test_eval_lm_loss_is_per_label_token_over_the_whole_set(tmp_path: Path) -> None:
    """eval_lm_loss does not depend on the eval batch size, and equals the summed token cross entropy of a plain
    Hugging Face forward over every eval example divided by their label tokens (regular SFT's eval loss)."""
    metrics = {}
    for batch in (1, 3):
        trainer = make_trainer(tmp_path / f"b{batch}", regular=True, eval_batch=batch)
        metrics[batch] = trainer.evaluate()
    assert metrics[1]["eval_lm_loss"] == pytest.approx(metrics[3]["eval_lm_loss"], rel=1e-5)
    # 7 examples in batches of 3 (3, 3, 1): the Trainer's mean over microbatches weighs the last one's tokens more
    assert metrics[3]["eval_loss"] == metrics[3]["eval_lm_loss"]

    model = trainer.model.eval()
    model.set_attn_implementation("sdpa")  # a plain forward: the default executor (fast) switched it to ours
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in trainer.eval_dataset:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor([example.labels])
            n = int((labels[:, 1:] != -100).sum())
            total += model(input_ids=ids, labels=labels).loss.double().item() * n
            tokens += n
    assert metrics[3]["eval_lm_loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert metrics[3]["eval_perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)


def test_window_metrics_leave_out_missing_values() -> None:
    records = [
        {"lm_loss": 2.0, "jepa_loss": 0.0, "mean_cos": None, "label_tokens": 10, "pairs": 0, "tokens_run": 40,
         "peak_memory_mib": 5.0},
        {"lm_loss": None, "jepa_loss": 0.0, "mean_cos": None, "label_tokens": 20, "pairs": 0, "tokens_run": 60,
         "peak_memory_mib": 7.0},
    ]  # fmt: skip
    merged = window_metrics(records)
    assert merged == {
        "lm_loss": 2.0,
        "jepa_loss": 0.0,
        "label_tokens": 15.0,
        "pairs": 0.0,
        "tokens_run": 50.0,
        "peak_memory_mib": 7.0,
    }


# ---- the JEPA embeddings' health and the peak memory, per log window --------------------------------------
def test_health_metrics_per_log_window_in_logs_and_metrics_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four health numbers at each training log (steps 2 and 4), the same values in that step's
    metrics.jsonl line and in no other line; the peak memory statistics reset once after each log."""
    import llmjepa.training.trainer as trainer_module

    resets = []
    monkeypatch.setattr(trainer_module, "reset_peak_memory", lambda: resets.append(1))
    trainer = make_trainer(tmp_path / "out")
    kept = []
    add = trainer.health.add
    trainer.health.add = lambda hidden, p, t: (kept.append((hidden[p].detach(), hidden[t].detach())), add(hidden, p, t))
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    lines = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "jepa_pred_std" in r] == [2, 4]
    assert len(resets) == len(logs) == 2
    from llmjepa.training.health import std_and_rank

    microbatches_per_log = 2 * 2  # logging_steps x gradient_accumulation_steps
    for i, entry in enumerate(logs):
        line = lines[entry["step"] - 1]
        for key in HEALTH_KEYS:
            assert entry[key] == line[key], key
        window = kept[i * microbatches_per_log : (i + 1) * microbatches_per_log]
        pred = std_and_rank(torch.cat([p for p, _ in window]))
        target = std_and_rank(torch.cat([t for _, t in window]))
        assert entry["jepa_pred_std"] == pytest.approx(float(pred[0]), rel=1e-5)
        assert entry["jepa_target_rank"] == pytest.approx(float(target[1]), rel=1e-5)
        assert 0 < entry["jepa_pred_std"] < 1 and 1 <= entry["jepa_pred_rank"] <= sum(len(p) for p, _ in window)


def test_std_and_rank_on_known_embeddings() -> None:
    from llmjepa.training.health import std_and_rank

    d = 16
    torch.manual_seed(0)
    same = torch.ones(32, d) * torch.randn(d)  # collapsed: one direction, any scale
    std, rank = std_and_rank(same * (0.5 + torch.rand(32, 1))).tolist()
    assert std < 1e-6 and rank == pytest.approx(1.0, abs=1e-3)
    std, rank = std_and_rank(torch.eye(d) * 3).tolist()  # d orthogonal directions: d - 1 after centering
    assert rank == pytest.approx(d - 1, rel=1e-5)
    assert std == pytest.approx(math.sqrt(1 / d - 1 / d**2), rel=1e-5)
    line = torch.randn(d) + torch.linspace(-0.3, 0.3, 32)[:, None] * torch.randn(d)  # spread along one direction
    std, rank = std_and_rank(line).tolist()  # dimensional collapse: the std alone would not tell
    assert std > 0.01 and rank < 1.5


def test_collapse_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from llmjepa.training.health import EmbeddingHealth, collapse_warning

    healthy = {"jepa_pred_std": 0.2, "jepa_target_std": 0.2, "jepa_pred_rank": 10.0, "jepa_target_rank": 10.0}
    assert collapse_warning(healthy, rows=64, dim=16, step=3) is None
    collapsed = {**healthy, "jepa_pred_std": 1e-4, "jepa_pred_rank": 1.01}
    line = collapse_warning(collapsed, rows=64, dim=16, step=3)
    assert line is not None and "\n" not in line and "jepa_pred_std" in line and "jepa_pred_rank 1.01 < 2" in line
    assert collapse_warning(collapsed, rows=4, dim=16, step=3) is None  # too few pairs to tell

    trainer = make_trainer_stub()
    hidden = torch.ones(40, 16)
    index = torch.arange(40)
    for _ in range(2):  # two windows of collapsed embeddings: one warning
        trainer.health.add(hidden, index, index)
        with caplog.at_level("WARNING", logger="llmjepa"):
            values = JepaTrainer.summarize_health(trainer)
        assert values["jepa_pred_rank"] == pytest.approx(1.0, abs=1e-3)
    assert len([r for r in caplog.records if "may be collapsing" in r.getMessage()]) == 1
    assert isinstance(EmbeddingHealth().summary()[0], type(None))


def make_trainer_stub():
    from types import SimpleNamespace

    from llmjepa.training.health import EmbeddingHealth

    return SimpleNamespace(
        health=EmbeddingHealth(),
        health_warned=False,
        state=SimpleNamespace(global_step=7),
        is_world_process_zero=lambda: True,
    )


def test_gamma_zero_warns_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="llmjepa"):
        make_trainer(tmp_path / "g0", gamma=0.0)
    lines = [r.getMessage() for r in caplog.records if "--gamma 0" in r.getMessage()]
    assert len(lines) == 1 and "collapsing" in lines[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmjepa"):
        make_trainer(tmp_path / "g1")
    assert not [r for r in caplog.records if "--gamma 0" in r.getMessage()]


def test_peak_memory_reset_on_cuda_clears_the_peak_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmjepa.training.trainer as trainer_module

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append(a))
    trainer_module.reset_peak_memory()
    assert calls == [()]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's /proc/self/clear_refs is absent")
def test_peak_rss_reset_on_the_cpu() -> None:
    """On the CPU the peak is the process's RSS high-water mark, reset at each log: a large array freed before
    the reset no longer counts."""
    import llmjepa.training.trainer as trainer_module

    if torch.cuda.is_available():
        pytest.skip("the CPU form of the peak; CUDA reports max allocated")
    block = bytearray(256 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    before = trainer_module.peak_memory_mib()
    del block
    trainer_module.reset_peak_memory()
    after = trainer_module.peak_memory_mib()
    assert before - after > 200, (before, after)


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file: a 7-byte header (':W&B', magic, version), then LevelDB's log
    format (32 KiB blocks of records: crc32, length, type; a protobuf Record split FIRST/MIDDLE/LAST)."""
    import struct

    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="wandb's protobuf records are absent")
    raw, pos, block, parts, rows = run_file.read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(parts)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_jepa_metrics_in_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """report_to wandb in offline mode (nothing sent): the run file's history has every training metric of ours
    at steps 2 and 4, the values Trainer.log had."""
    wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "llmjepa-test")
    trainer = make_trainer(tmp_path / "out", report_to="wandb")
    trainer.train()
    wandb.finish()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    for _ in range(300):  # wandb-core, a separate process, may still be writing the file
        rows = [r for r in wandb_history(run_file) if "train/lm_loss" in r]
        if len(rows) >= 2:
            break
        time.sleep(0.1)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [r["train/global_step"] for r in rows] == [e["step"] for e in logs] == [2, 4]
    for row, entry in zip(rows, logs):
        for key in TRAIN_KEYS:
            assert row[f"train/{key}"] == pytest.approx(entry[key], rel=1e-6), key


TRACKIO_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_trainer_logging import make_trainer
from trackio.sqlite_storage import SQLiteStorage

trainer = make_trainer(Path(sys.argv[2]), report_to="trackio")
trainer.train()  # the Trainer's TrackioCallback finishes the run at the end
(project,) = SQLiteStorage.get_projects()
(run,) = SQLiteStorage.get_runs(project)
logged = [e for e in trainer.state.log_history if "loss" in e]
print(json.dumps({"logs": logged, "trackio": SQLiteStorage.get_logs(project, run)}, default=str))
"""


def test_jepa_metrics_in_trackio_local(tmp_path: Path) -> None:
    """report_to trackio, stored locally (TRACKIO_DIR, read when trackio is imported: a child process): its
    database has every training metric of ours at steps 2 and 4, the values Trainer.log had."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is not installed (pip install trackio)")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).resolve().parent)
    result = subprocess.run(
        [sys.executable, "-c", TRACKIO_RUN, tests, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    rows = [r for r in found["trackio"] if "train/lm_loss" in r]
    assert [r["train/global_step"] for r in rows] == [e["step"] for e in found["logs"]] == [2, 4]
    for row, entry in zip(rows, found["logs"]):
        for key in TRAIN_KEYS:
            assert row[f"train/{key}"] == pytest.approx(entry[key], rel=1e-6), key
