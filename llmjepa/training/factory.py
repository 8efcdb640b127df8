"""The one place a training run is decided, for the library path and for llmjepa-train alike:

    JepaTrainer(model=model, args=TrainingArguments(...), train_dataset=rows, processing_class=tokenizer,
                loss_config=LossConfig(lbd=0.1), view_config=ViewConfig(predictors=1))

llmjepa-train (commands/run.py) loads its data and model and calls the same constructor, with its flags'
`RunOptions`. What is not given is decided here (`decide`), and nowhere else:
the view config (view-based LLM-JEPA, or regular with LossConfig(regular=True)); the predictor tokens (added to
the tokenizer, embeddings resized); the layer the pairs read, checked against the model; STP's linear
predictor, attached; the executor (`make_executor`: the fast path where execution.fast.fast_path_available
says so, with its attention backend and kernel self-check; else the reference) and its readout (--jepa_layer,
--entropy_filter); the fused pair loss (fast path where Triton runs); the collator, packing for a packing
executor with the tile lists of the dtype the kernels will see. peft_config wraps the model, as TRL does.
rows: a list of dicts or a datasets.Dataset with a "messages" column, checked and tokenized once here.
"""

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from ..distributed import base_model, unwrap
from ..errors import UserError
from ..execution.protocol import Executor, executor_packs
from ..execution.readout import readout_for
from ..execution.reference import run_reference
from ..tokens import predictor_tokens, view_tokens
from ..views.encoding import Encoded, ViewConfig

logger = logging.getLogger("llmjepa")
DATASETS = ("train_dataset", "eval_dataset")


@dataclass
class RunOptions:
    """How a run executes, apart from its method (ViewConfig) and loss (LossConfig): llmjepa-train's --impl,
    --attention_backend, --kernel_check and --load_lp. The defaults are the library path's."""

    impl: str | None = None  # "fast" | "reference"; None: fast where available and the model supports it
    attention_backend: str | None = None  # run_fast's `attention`; None: execution.fast.default_attention_backend
    kernel_check: str = "auto"  # run_fast's self-check of the backend on CUDA: auto | strict | off
    linear_predictor_from: str | None = None  # --load_lp: the model directory whose linear predictor to load
    data_format: Any = None  # views.formats.DataFormat: column names, system prompt, formatting function
    dataset_num_proc: int | None = None  # processes that encode the datasets (datasets.map; None: one)


@dataclass
class Decided:
    """What `decide` hands JepaTrainer: the Trainer's keywords (datasets tokenized, collator made), the loss
    config with its fused-kernel choice made, and the executor the trainer calls."""

    kwargs: dict[str, Any]
    loss_config: Any  # training.trainer.LossConfig
    executor: Executor


def is_encoded(dataset: Any) -> bool:
    """Already tokenized (by llmjepa-train, encode_dataset or encode_all), or absent."""
    from ..views.encoded_rows import EncodedRows
    from ..views.streaming import EncodedStream

    if isinstance(dataset, (EncodedStream, EncodedRows)):
        return True
    return dataset is None or (isinstance(dataset, list) and all(isinstance(e, Encoded) for e in dataset))


def make_executor(model: nn.Module, pad_token_id: int | None, options: RunOptions, use_cpu: bool = False) -> Executor:
    """The executor of `options.impl`: "reference"; "fast" (the model's attention switched to ours, refused
    with one line where the fast path would be wrong); None: fast where the model already runs our attention,
    or where it is available (CUDA with Triton, or the CPU: execution.fast.fast_path_available) and the model is
    one it supports; else the reference."""
    from ..execution.fast import check_fast_supported, default_attention_backend, fast_path_available, run_fast

    reference = partial(run_reference, pad_token_id=pad_token_id)
    if options.impl == "reference":
        return reference
    try:
        from llmjepa_kernels import hf_attention
    except ImportError as e:
        if options.impl == "fast":
            raise UserError(f"--impl fast needs triton ({e}): pip install 'llmjepa[triton]'") from e
        return reference
    backend = options.attention_backend or default_attention_backend(use_cpu)
    fast = partial(run_fast, pad_token_id=pad_token_id, attention=backend, kernel_check=options.kernel_check)
    ours = getattr(unwrap(model).config, "_attn_implementation", None) == hf_attention.ATTENTION_NAME
    if options.impl is None and not ours and not fast_path_available():
        return reference
    try:
        check_fast_supported(model)
    except UserError as e:
        if options.impl == "fast":
            raise
        logger.warning("llmjepa: the reference executor, not the fast path: %s", e)
        return reference
    if not ours:
        hf_attention.register()
        base_model(model).set_attn_implementation(hf_attention.ATTENTION_NAME)
    return fast


def default_executor(model: nn.Module, pad_token_id: int | None) -> Executor:
    """The library's default executor (make_executor with no options); kept for callers of 0.2."""
    return make_executor(model, pad_token_id, RunOptions())


def fused_pair_loss_where_triton_runs(executor: Executor, use_cpu: bool = False) -> bool:
    """The fused JEPA loss kernel with the fast path, where Triton runs: training on CUDA, or the CPU
    interpreter (use_cpu: TrainingArguments.use_cpu)."""
    import torch

    cuda = torch.cuda.is_available() and not use_cpu
    return executor_packs(executor) and (cuda or os.environ.get("TRITON_INTERPRET") == "1")


def readout_layer(cfg: ViewConfig) -> int:
    """The hidden_states index the JEPA term reads: STP's own layer, or --jepa_layer (-1: the last)."""
    return cfg.stp.layer if cfg.stp is not None else cfg.jepa_layer


def prepare_model(model: nn.Module, cfg: ViewConfig, options: RunOptions) -> None:
    """What the view config asks of the model before training: the layer its pairs read exists, and STP's
    linear predictor is attached (loaded from options.linear_predictor_from where given)."""
    from ..execution.stp import attach_linear_predictor, check_layer, linear_predictor_of

    if readout_layer(cfg) != -1:
        check_layer(model, readout_layer(cfg))
    if cfg.stp is not None and cfg.stp.linear_predictor:
        try:
            linear_predictor_of(model)
        except AttributeError:  # not attached yet (a model built by hand may bring its own)
            attach_linear_predictor(model, cfg.stp.seed, options.linear_predictor_from)


def make_collator(
    cfg: ViewConfig,
    tokenizer: Any,
    model: nn.Module,
    loss_config: Any,
    executor: Executor,
    options: RunOptions,
    training_args: Any,
) -> Any:
    """The ViewCollator: packing for a packing executor, with the tile lists for the dtype the kernels will
    see (the weights', or the autocast dtype of training_args' --bf16/--fp16)."""
    from ..execution.fast import collator_attention_shape, mixed_precision_dtype
    from ..views.collate import ViewCollator

    pack = executor_packs(executor)
    backend = getattr(executor, "keywords", {}).get("attention")  # the fast executor's backend (make_executor)
    shape = collator_attention_shape(model, backend, mixed_precision_dtype(training_args)) if pack else None
    return ViewCollator(
        cfg,
        tokenizer.convert_tokens_to_ids(predictor_tokens(cfg.predictors)),
        loss_config.jepa_ratio,
        loss_config.seed,
        pack=pack,
        attention=shape,
        keep_rows=loss_config.debug > 0,  # only --debug's printing reads the rows of a packed plan
    )


def tokenize_datasets(kwargs: dict[str, Any], tokenizer: Any, cfg: ViewConfig, options: RunOptions) -> None:
    """Datasets of rows in any format views/formats.py recognises (a list, a datasets.Dataset, a DatasetDict's
    split), checked and tokenized once with datasets.map into Arrow (views/encoded_rows.py; a bad row: one line
    naming it)."""
    from ..views.encoded_rows import encode_dataset
    from ..views.formats import DEFAULT_FORMAT, dataset_split
    from ..views.streaming import EncodedStream, is_stream

    fmt = options.data_format or DEFAULT_FORMAT
    for name in DATASETS:
        if not is_encoded(kwargs.get(name)):
            rows, label = dataset_split(kwargs[name], name)
            if is_stream(rows):  # an IterableDataset: tokenized as the data loader draws it (max_steps needed)
                kwargs[name] = EncodedStream(rows, tokenizer, cfg, fmt, name=label)
                continue
            encoded, report = encode_dataset(rows, tokenizer, cfg, fmt, label, options.dataset_num_proc)
            for line in report.lines(name, cfg.max_length, cfg.num_prediction_steps):
                logger.warning("llmjepa: %s", line)
            kwargs[name] = encoded


def stream_without_dispatch(kwargs: dict[str, Any]) -> None:
    """A streamed dataset's batches are plans, not tensors: accelerate must not fetch them on rank 0 and
    dispatch them (its default for an iterable dataset), so each process iterates its own share."""
    from ..views.streaming import EncodedStream

    config = getattr(kwargs.get("args"), "accelerator_config", None)
    if config is not None and any(isinstance(kwargs.get(name), EncodedStream) for name in DATASETS):
        config.dispatch_batches = False


def decide(
    kwargs: dict[str, Any],
    loss_config: Any,  # training.trainer.LossConfig (JepaTrainer makes the default one)
    view_config: ViewConfig | None,
    peft_config: Any = None,
    executor: Executor | None = None,
    options: RunOptions | None = None,
) -> Decided:
    """Every decision of a run (module docstring), from what the caller gave."""
    from ..model import add_missing_tokens

    options = RunOptions() if options is None else options
    cfg = ViewConfig(regular=loss_config.regular) if view_config is None else view_config
    if cfg.regular != loss_config.regular:
        raise ValueError(f"view_config.regular={cfg.regular} but loss_config.regular={loss_config.regular}")
    model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
    if not (all(is_encoded(kwargs.get(name)) for name in DATASETS) and kwargs.get("data_collator") and executor):
        if tokenizer is None or model is None:
            raise ValueError(
                "JepaTrainer needs model= and processing_class= (the tokenizer): they tokenize the datasets, "
                "hold the predictor tokens and give the pad id"
            )
        add_missing_tokens(tokenizer, model, view_tokens(cfg.predictors, cfg.plain))
    if model is not None:
        prepare_model(model, cfg, options)
    use_cpu = bool(getattr(kwargs.get("args"), "use_cpu", False))  # training on the CPU beside a GPU
    if executor is None:
        executor = make_executor(model, tokenizer.pad_token_id, options, use_cpu)
    if loss_config.fused_pair_loss is None:
        fused = fused_pair_loss_where_triton_runs(executor, use_cpu)
        loss_config = dataclasses.replace(loss_config, fused_pair_loss=fused)
    if peft_config is not None:
        from peft import get_peft_model

        model = kwargs["model"] = get_peft_model(model, peft_config)
        if getattr(kwargs.get("args"), "gradient_checkpointing", False):
            model.enable_input_require_grads()  # checkpointed LoRA layers need inputs that require grad
    tokenize_datasets(kwargs, tokenizer, cfg, options)
    stream_without_dispatch(kwargs)
    if kwargs.get("data_collator") is None:
        kwargs["data_collator"] = make_collator(
            cfg, tokenizer, model, loss_config, executor, options, kwargs.get("args")
        )
    # --jepa_layer and --entropy_filter read their pairs through a wrapper; wrapped after the collator,
    # which asks whether the bare executor is the fast one
    return Decided(kwargs, loss_config, readout_for(executor, cfg))


def library_defaults(
    kwargs: dict[str, Any], loss_config: Any, view_config: ViewConfig | None, peft_config: Any, executor: Any
) -> tuple[dict[str, Any], Any, Executor]:
    """decide() with the library's options, as a tuple (the 0.2 name)."""
    decided = decide(kwargs, loss_config, view_config, peft_config, executor)
    return decided.kwargs, decided.loss_config, decided.executor


def trainer_keywords(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer's positional arguments (model, args, data_collator, ...) as keywords."""
    import inspect

    from transformers import Trainer

    names = [n for n in inspect.signature(Trainer.__init__).parameters if n != "self"]
    return {**dict(zip(names, args)), **kwargs}
