"""The library path, as users of TRL's trainers write it: JepaTrainer(model=..., args=TrainingArguments(...),
train_dataset=rows, processing_class=tokenizer, loss_config=LossConfig(...)) with nothing else."""

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from llmjepa import (
    Encoded,
    JepaTrainer,
    LossConfig,
    ViewCollator,
    ViewConfig,
    build_default_model,
    build_default_tokenizer,
    encode_all,
    examples_from_records,
    load_model,
    load_tokenizer,
    run_fast,
    run_reference,
    sample_data_path,
)
from llmjepa.errors import UserError
from llmjepa_kernels import hf_attention

STEPS = 3


def rows(n: int = 24) -> list[dict]:
    return [json.loads(line) for line in sample_data_path("train").read_text().splitlines()[:n]]


def training_args(tmp_path: Path, **extra: object) -> TrainingArguments:
    base = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, report_to="none")
    return TrainingArguments(**{**base, "use_cpu": True, "learning_rate": 1e-3, "save_strategy": "no", **extra})


def losses(trainer: JepaTrainer) -> list[tuple[float, int]]:
    trainer.train()
    return [(r["loss"], r["pairs"]) for r in trainer.history]


@pytest.mark.parametrize(
    "view_config",
    [None, ViewConfig(num_prediction_steps=2, predictors=1)],
    ids=["default views", "multi-step"],
)
def test_nothing_else_equals_the_explicit_assembly(tmp_path: Path, view_config: ViewConfig | None) -> None:
    """Defaults (tokenization, collator, predictor ids, executor) give the run one assembles by hand."""
    tokenizer = build_default_tokenizer()
    assert tokenizer.pad_token is not None  # the default tokenizer works as it comes
    trainer = JepaTrainer(
        model=build_default_model(tokenizer, seed=3),
        args=training_args(tmp_path / "a"),
        train_dataset=rows(),
        processing_class=tokenizer,
        loss_config=LossConfig(lbd=0.5),
        **({"view_config": view_config} if view_config else {}),
    )
    assert all(isinstance(e, Encoded) for e in trainer.train_dataset)  # tokenized once, up front
    assert trainer.executor.func is run_fast  # the CPU's default: the fast path in its PyTorch form
    got = losses(trainer)

    cfg = view_config or ViewConfig()
    tokenizer = build_default_tokenizer()
    encoded, _ = encode_all(examples_from_records(rows()), tokenizer, cfg)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{k}|>" for k in range(1, cfg.predictors + 1)])
    model = build_default_model(tokenizer, seed=3)
    hf_attention.register()
    model.set_attn_implementation(hf_attention.ATTENTION_NAME)
    explicit = JepaTrainer(
        model=model,
        args=training_args(tmp_path / "b"),
        train_dataset=encoded,
        data_collator=ViewCollator(cfg, predictor_ids, pack=True),
        processing_class=tokenizer,
        executor=partial(run_fast, pad_token_id=tokenizer.pad_token_id, attention="torch"),
        loss_config=LossConfig(lbd=0.5),
    )
    want = losses(explicit)
    assert len(got) == STEPS and all(math.isfinite(loss) and pairs > 0 for loss, pairs in got)
    assert got == want


def test_a_datasets_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install datasets)")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    trainer = JepaTrainer(
        model=load_model("llmjepa/tiny-llama", tokenizer),
        args=training_args(tmp_path),
        train_dataset=datasets.load_dataset("json", data_files=str(data), cache_dir=str(tmp_path / "cache"))["train"],
        processing_class=tokenizer,
        loss_config=LossConfig(lbd=0.1),
    )
    assert len(losses(trainer)) == STEPS


def test_any_iterable_of_rows_and_bad_rows_named(tmp_path: Path) -> None:
    tokenizer = build_default_tokenizer()
    model = build_default_model(tokenizer)
    trainer = JepaTrainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=tuple(rows()),
        eval_dataset=rows(8),
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == 24 and len(trainer.eval_dataset) == 8
    bad = rows(4) + [{"messages": [{"role": "assistant", "content": "2"}]}]
    with pytest.raises(UserError, match=r"train_dataset\[4\]: roles \['assistant'\]"):
        JepaTrainer(model=model, args=training_args(tmp_path), train_dataset=bad, processing_class=tokenizer)


def test_predictor_tokens_added_and_embeddings_resized() -> None:
    """A tokenizer without the tokens a view config needs gets them, and the model's embeddings grow."""
    from llmjepa.model import add_missing_tokens

    tokenizer = build_default_tokenizer()
    model = build_default_model(tokenizer)
    n = len(tokenizer)
    add_missing_tokens(tokenizer, model, ["<|predictor_1|>", "<|new_marker|>"])
    assert len(tokenizer) == n + 1 and tokenizer.convert_tokens_to_ids("<|new_marker|>") == n
    assert model.get_input_embeddings().num_embeddings == n + 1
    assert model.get_output_embeddings().weight.shape[0] == n + 1


def test_misuse_is_named(tmp_path: Path) -> None:
    tokenizer = build_default_tokenizer()
    model = build_default_model(tokenizer)
    with pytest.raises(ValueError, match="needs model= and processing_class="):
        JepaTrainer(model=model, args=training_args(tmp_path), train_dataset=rows())
    with pytest.raises(ValueError, match="view_config.regular=False but loss_config.regular=True"):
        JepaTrainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=rows(),
            processing_class=tokenizer,
            loss_config=LossConfig(regular=True),
            view_config=ViewConfig(predictors=1),
        )


def test_peft_config_is_accepted(tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel

    tokenizer = build_default_tokenizer()
    trainer = JepaTrainer(
        model=build_default_model(tokenizer),
        args=training_args(tmp_path),
        train_dataset=rows(),
        processing_class=tokenizer,
        loss_config=LossConfig(lbd=0.1),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert isinstance(trainer.model, PeftModel)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(math.isfinite(loss) for loss, _ in losses(trainer))


def test_fast_executor_refuses_another_attention() -> None:
    """run_fast on a model still on SDPA would compute a wrong JEPA term without a word: refused."""
    from llmjepa import build_plan

    tokenizer = build_default_tokenizer()
    model = build_default_model(tokenizer)
    cfg = ViewConfig(predictors=1)
    encoded, _ = encode_all(examples_from_records(rows(2)), tokenizer, cfg)
    plan = build_plan(encoded, cfg, tokenizer.convert_tokens_to_ids(["<|predictor_1|>"]))
    with torch.no_grad(), pytest.raises(ValueError, match="attention implementation is 'sdpa', not 'llmjepa_block"):
        run_fast(model, plan)


def test_non_finite_loss_stops_the_library_run(tmp_path: Path) -> None:
    """trainer.train() raises NonFiniteLoss at the first non-finite step, before its update."""
    from llmjepa.errors import NonFiniteLoss

    tokenizer = build_default_tokenizer()
    model = build_default_model(tokenizer)
    calls = [0]

    def executor(model: torch.nn.Module, plan: object) -> object:
        calls[0] += 1
        out = run_reference(model, plan, pad_token_id=tokenizer.pad_token_id)
        if calls[0] >= 2:
            out.ce_sum = out.ce_sum * float("nan")
        return out

    trainer = JepaTrainer(
        model=model, args=training_args(tmp_path), train_dataset=rows(), processing_class=tokenizer, executor=executor
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLoss, match=r"^step 2: loss = nan, lm_loss = nan") as e:
        trainer.train()
    assert e.value.step == 2 and e.value.record["loss"] is None
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())  # step 1 was applied


@pytest.mark.parametrize(
    "view_config",
    [
        ViewConfig(num_prediction_steps=2, predictors=1, jepa_layer=1),
        ViewConfig(num_prediction_steps=3, predictors=1, entropy_top_k=1),
    ],
    ids=["jepa_layer", "entropy_filter"],
)
def test_views_that_read_through_a_wrapper_get_it(tmp_path: Path, view_config: ViewConfig) -> None:
    """--jepa_layer and --entropy_filter pairs are read by views.ViewReadout; the library path must wrap its
    default executor as llmjepa-train does, else the pairs would silently read the last layer (or the probes)."""
    from llmjepa.execution.readout import ViewReadout

    tokenizer = build_default_tokenizer()
    trainer = JepaTrainer(
        model=build_default_model(tokenizer, seed=3),
        args=training_args(tmp_path),
        train_dataset=rows(),
        processing_class=tokenizer,
        view_config=view_config,
    )
    assert isinstance(trainer.executor, ViewReadout)
    trainer.train()
    assert all(math.isfinite(r["loss"]) for r in trainer.history)
