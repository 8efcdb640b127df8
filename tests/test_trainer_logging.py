"""JEPA metrics through Trainer.log: every report_to backend (TensorBoard's event files here) and
state.log_history get lm_loss, jepa_loss, mean_cos, label_tokens, pairs, tokens_run and peak_memory_mib at each
training log, and eval_lm_loss (per label token over the whole eval set), eval_jepa_loss, eval_mean_cos and
eval_perplexity at each evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_examples, load_model, load_tokenizer, sample_data_path
from llmjepa.training.trainer import window_metrics

STEPS = 4
TRAIN_KEYS = ("lm_loss", "jepa_loss", "mean_cos", "label_tokens", "pairs", "tokens_run", "peak_memory_mib")
EVAL_KEYS = ("lm_loss", "jepa_loss", "mean_cos", "perplexity", "loss")


def rows(split: str, n: int) -> list[dict]:
    return [{"messages": ex.messages} for ex in load_examples(sample_data_path(split))[:n]]


def make_trainer(out: Path, report_to: str = "none", regular: bool = False, eval_batch: int = 2) -> JepaTrainer:
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
        loss_config=LossConfig(regular=regular, lbd=0.0 if regular else 0.1),
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
