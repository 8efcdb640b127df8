"""JepaTrainer's defaults on the library path, as users of TRL's trainers expect them:

    JepaTrainer(model=model, args=TrainingArguments(...), train_dataset=rows, processing_class=tokenizer,
                loss_config=LossConfig(lbd=0.1), view_config=ViewConfig(predictors=1))

rows: a list of dicts or a datasets.Dataset with a "messages" column, checked and tokenized once here.
What is not given is made: the view config (view-based LLM-JEPA, or regular with LossConfig(regular=True)),
the predictor tokens (added to the tokenizer, embeddings resized), the executor (the fast path where
execution.fast.fast_path_available says so: CUDA with Triton, or the CPU; else the reference) and the collator.
peft_config wraps the model, as TRL does.
"""

import logging
from functools import partial
from typing import Any

from torch import nn

from ..distributed import unwrap
from ..errors import UserError
from ..execution.protocol import Executor, executor_packs
from ..execution.readout import readout_for
from ..execution.reference import run_reference
from ..tokens import predictor_tokens, view_tokens
from ..views.encoding import Encoded, ViewConfig

logger = logging.getLogger("llmjepa")
DATASETS = ("train_dataset", "eval_dataset")


def is_encoded(dataset: Any) -> bool:
    """Already tokenized by encode_all (the CLI path, or a user who did it), or absent."""
    return dataset is None or (isinstance(dataset, list) and all(isinstance(e, Encoded) for e in dataset))


def default_executor(model: nn.Module, pad_token_id: int | None) -> Executor:
    """The fast path where the model already runs our attention, or where it is available (CUDA with Triton,
    or the CPU: execution.fast.fast_path_available) and the model is one the fast path supports (its
    attention is then switched to ours); else the reference."""
    from ..execution.fast import check_fast_supported, fast_path_available, run_fast

    try:
        from llmjepa_kernels import hf_attention
    except ImportError:
        return partial(run_reference, pad_token_id=pad_token_id)
    if getattr(unwrap(model).config, "_attn_implementation", None) == hf_attention.ATTENTION_NAME:
        return partial(run_fast, pad_token_id=pad_token_id)
    if fast_path_available():
        try:
            check_fast_supported(model)
        except UserError as e:
            logger.warning("llmjepa: the reference executor, not the fast path: %s", e)
        else:
            hf_attention.register()
            model.set_attn_implementation(hf_attention.ATTENTION_NAME)
            return partial(run_fast, pad_token_id=pad_token_id)
    return partial(run_reference, pad_token_id=pad_token_id)


def library_defaults(
    kwargs: dict[str, Any],
    loss_config: Any,  # training.trainer.LossConfig (JepaTrainer makes the default one)
    view_config: ViewConfig | None,
    peft_config: Any,
    executor: Executor | None,
) -> tuple[dict[str, Any], Any, Executor]:
    """Trainer keyword arguments with the datasets tokenized and a collator; the loss config; the executor."""
    from ..model import add_missing_tokens
    from ..views.collate import ViewCollator
    from ..views.examples import examples_from_records

    cfg = ViewConfig(regular=loss_config.regular) if view_config is None else view_config
    if cfg.regular != loss_config.regular:
        raise ValueError(f"view_config.regular={cfg.regular} but loss_config.regular={loss_config.regular}")
    model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
    raw = [name for name in DATASETS if not is_encoded(kwargs.get(name))]
    if raw or kwargs.get("data_collator") is None or executor is None:
        if tokenizer is None or model is None:
            raise ValueError(
                "JepaTrainer needs model= and processing_class= (the tokenizer): they tokenize the datasets, "
                "hold the predictor tokens and give the pad id"
            )
        add_missing_tokens(tokenizer, model, view_tokens(cfg.predictors, cfg.plain))
    if executor is None:
        executor = default_executor(model, tokenizer.pad_token_id)
    if peft_config is not None:
        from peft import get_peft_model

        model = kwargs["model"] = get_peft_model(model, peft_config)
        if getattr(kwargs.get("args"), "gradient_checkpointing", False):
            model.enable_input_require_grads()  # checkpointed LoRA layers need inputs that require grad
    for name in raw:
        from ..views.encoding import encode_all

        encoded, report = encode_all(examples_from_records(kwargs[name], name), tokenizer, cfg)
        for line in report.lines(name, cfg.max_length, cfg.num_prediction_steps):
            logger.warning("llmjepa: %s", line)
        kwargs[name] = encoded
    if kwargs.get("data_collator") is None:
        predictor_ids = tokenizer.convert_tokens_to_ids(predictor_tokens(cfg.predictors))
        kwargs["data_collator"] = ViewCollator(
            cfg,
            predictor_ids,
            loss_config.jepa_ratio,
            loss_config.seed,
            pack=executor_packs(executor),
            keep_rows=loss_config.debug > 0,  # only --debug's printing reads the rows of a packed plan
        )
    # --jepa_layer and --entropy_filter read their pairs through a wrapper; wrapped after the collator,
    # which asks whether the bare executor is the fast one
    return kwargs, loss_config, readout_for(executor, cfg)


def trainer_keywords(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer's positional arguments (model, args, data_collator, ...) as keywords."""
    import inspect

    from transformers import Trainer

    names = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self"]
    return {**dict(zip(names, args)), **kwargs}
