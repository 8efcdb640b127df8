"""Smoke run for the oldest supported transformers (`.ci/floor` installs it in a fresh environment and runs this).
On 5.17 and 5.18 (no Trainer.loss_is_scaled_for_ga) it failed before JepaTrainer set model_accepts_loss_kwargs:
the logged loss was half the step's (divided by gradient accumulation again, the gradient with it).

Three optimizer steps of Step-JEPA on the embedded tiny model, two microbatches each, with an evaluation. It fails
when the Trainer hooks llmjepa relies on are missing or behave differently: no per-step record (the step hook
never ran), a loss the Trainer logs that is not the step's loss (the Trainer divided it by gradient accumulation
again), or a non-finite number."""

import math
import sys
import tempfile

import transformers
from transformers import TrainingArguments

from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_examples, load_model, load_tokenizer, sample_data_path

STEPS = 3


def main() -> int:
    rows = [{"messages": ex.messages} for ex in load_examples(sample_data_path("train"))[:16]]
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    model = load_model("llmjepa/tiny-llama", tokenizer)
    # A model whose forward takes no loss kwargs: the Trainer would divide the loss by gradient accumulation
    # unless it honours JepaTrainer.loss_is_scaled_for_ga
    # (transformers >= 5.19) or model_accepts_loss_kwargs (5.17, 5.18).
    model.accepts_loss_kwargs = False
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=STEPS,
            per_device_train_batch_size=2,
            per_device_eval_batch_size=2,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            eval_strategy="steps",
            eval_steps=STEPS,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            remove_unused_columns=False,
        )
        trainer = JepaTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            eval_dataset=rows[:4],
            processing_class=tokenizer,
            loss_config=LossConfig(lbd=0.1),
            view_config=ViewConfig(num_prediction_steps=2, predictors=1),
        )
        trainer.train()
    failures = check(trainer)
    for line in failures:
        print(f"floor smoke: FAIL: {line}", file=sys.stderr)
    if not failures:
        print(f"floor smoke: OK with transformers {transformers.__version__}: {STEPS} steps recorded and logged")
    return 1 if failures else 0


def check(trainer: JepaTrainer) -> list[str]:
    history = trainer.history
    if len(history) != STEPS:
        return [f"{len(history)} per-step records for {STEPS} steps (the step hook did not run)"]
    failures = []
    for record in history:
        for key in ("loss", "lm_loss", "jepa_loss", "mean_cos", "grad_norm"):
            if not isinstance(record.get(key), float) or not math.isfinite(record[key]):
                failures.append(f"step {record['step']}: {key} = {record.get(key)}")
    logged = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    for entry in logged:
        ours = history[entry["step"] - 1]["loss"]
        if not math.isclose(entry["loss"], ours, rel_tol=1e-4):
            failures.append(f"step {entry['step']}: the Trainer logged loss {entry['loss']}, the step's loss is {ours}")
    if len(logged) != STEPS:
        failures.append(f"{len(logged)} training logs for {STEPS} steps")
    missing = [key for key in ("lm_loss", "jepa_loss", "mean_cos") if not all(key in entry for entry in logged)]
    if missing:
        failures.append(f"training logs without {missing}")
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    if not evals or not all(key in evals[-1] for key in ("eval_lm_loss", "eval_jepa_loss", "eval_perplexity")):
        failures.append(f"evaluation logs: {evals}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
