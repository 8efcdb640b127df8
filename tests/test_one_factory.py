"""One factory: llmjepa-train builds its trainer through the path a library user's JepaTrainer(...) takes
(training/factory.py), so each training mode's first step is the same both ways."""

import json
import math
from pathlib import Path

import pytest
from transformers import TrainingArguments, set_seed

from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_model, load_tokenizer, sample_data_path
from llmjepa.commands.run import build_run
from llmjepa.commands.train import parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME
from llmjepa.training.factory import RunOptions
from llmjepa.views.stp import StpConfig

N_ROWS = 8
BATCH = 2
COMPARED = ("loss", "lm_loss", "jepa_loss", "mean_cos", "grad_norm", "label_tokens", "pairs", "tokens")
COMPARED += ("tokens_run", "rows", "microbatches", "lr")

# mode: (llmjepa-train's flags, the library's ViewConfig, the library's LossConfig)
MODES = {
    "regular": (["--regular"], ViewConfig(regular=True), LossConfig(regular=True)),
    "view-based JEPA": (["--predictors", "1"], ViewConfig(predictors=1), LossConfig()),
    "multi-step N=2": (
        ["--num_prediction_steps", "2", "--predictors", "1", "--step_separator", "\\n"],
        ViewConfig(num_prediction_steps=2, predictors=1, step_separator="\n"),
        LossConfig(),
    ),
    "additive mask": (["--additive_mask"], ViewConfig(additive_mask=True), LossConfig()),
    "STP linear predictor": (
        ["--linear", "random_span", "--linear_predictor", "--lbd", "0.5"],
        ViewConfig(stp=StpConfig(mode="random_span", linear_predictor=True, lbd=0.5)),
        LossConfig(lbd=0.5),
    ),
    "jepa_layer": (["--predictors", "1", "--jepa_layer", "1"], ViewConfig(predictors=1, jepa_layer=1), LossConfig()),
    "entropy filter": (
        ["--num_prediction_steps", "2", "--entropy_filter", "--step_separator", "\\n"],
        ViewConfig(num_prediction_steps=2, entropy_top_k=2, entropy_window=2, step_separator="\n"),
        LossConfig(),
    ),
    "jepa_ratio": (["--jepa_ratio", "0.5"], ViewConfig(), LossConfig(jepa_ratio=0.5)),
}


def rows() -> list[dict]:
    return [json.loads(line) for line in sample_data_path("train").read_text().splitlines()[:N_ROWS]]


def first_record(trainer: JepaTrainer) -> dict:
    trainer.train()
    return trainer.history[0]


def cli_record(tmp_path: Path, flags: list[str]) -> tuple[dict, JepaTrainer]:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    common = ["--train_file", str(data), "--batch_size", str(BATCH), "--grad_accum", "1", "--max_train_steps", "1"]
    common += ["--output_dir", str(tmp_path / "cli")]
    trainer = build_run(parse_args([*common, *flags])).trainer
    return first_record(trainer), trainer


def library_record(tmp_path: Path, view_config: ViewConfig, loss_config: LossConfig) -> tuple[dict, JepaTrainer]:
    """As a library user writes it: the model loaded, the rows as they are, the two configs."""
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    set_seed(42)
    args = TrainingArguments(
        output_dir=str(tmp_path / "library"),
        per_device_train_batch_size=BATCH,
        max_steps=1,
        learning_rate=2e-5,
        dataloader_drop_last=True,
        data_seed=42,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    trainer = JepaTrainer(
        model=load_model(DEFAULT_MODEL_NAME, tokenizer),
        args=args,
        train_dataset=rows(),
        processing_class=tokenizer,
        loss_config=loss_config,
        view_config=view_config,
    )
    return first_record(trainer), trainer


def decisions(trainer: JepaTrainer) -> tuple:
    """What the factory decided: the executor's kind and keywords, the fused loss, the collator's packing."""
    executor = getattr(trainer.executor, "executor", trainer.executor)  # under a readout
    keywords = {k: v for k, v in getattr(executor, "keywords", {}).items()}
    collator = trainer.data_collator
    return (
        type(trainer.executor).__name__,
        getattr(executor, "func", executor),
        keywords,
        trainer.loss_config.fused_pair_loss,
        collator.pack,
        collator.attention,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_cli_and_library_take_the_same_first_step(tmp_path: Path, mode: str) -> None:
    flags, view_config, loss_config = MODES[mode]
    cli, cli_trainer = cli_record(tmp_path, flags)
    library, library_trainer = library_record(tmp_path, view_config, loss_config)
    assert decisions(cli_trainer) == decisions(library_trainer)
    assert cli_trainer.loss_config == library_trainer.loss_config
    for key in COMPARED:
        want, got = cli[key], library[key]
        if isinstance(want, float) and isinstance(got, float):
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6), (key, got, want)
        else:
            assert got == want, (key, got, want)
    if mode not in ("regular", "jepa_ratio"):  # jepa_ratio: this microbatch's draw may skip its views
        assert cli["pairs"] > 0 and cli["jepa_loss"] > 0  # the mode's JEPA term ran
    if mode == "STP linear predictor":
        assert hasattr(library_trainer.model, "linear_predictor")  # attached by the factory on both paths


def test_the_factory_checks_the_layer_on_the_library_path_too(tmp_path: Path) -> None:
    from llmjepa.errors import UserError

    with pytest.raises(UserError, match=r"--jepa_layer 99: the model's hidden_states have"):
        library_record(tmp_path, ViewConfig(predictors=1, jepa_layer=99), LossConfig())


def test_run_options_reference_is_the_reference_executor(tmp_path: Path) -> None:
    from llmjepa.execution.reference import run_reference

    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    trainer = JepaTrainer(
        model=load_model(DEFAULT_MODEL_NAME, tokenizer),
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        train_dataset=rows(),
        processing_class=tokenizer,
        run_options=RunOptions(impl="reference"),
    )
    assert trainer.executor.func is run_reference and not trainer.data_collator.pack
    assert trainer.loss_config.fused_pair_loss is False
