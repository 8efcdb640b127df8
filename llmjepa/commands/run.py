"""Assembling a training run from parsed flags: data, model, views, trainer, outputs."""

import argparse
import json
import math
import os
import shlex
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed

from ..distributed import barrier, is_main_process, launched_world_size
from ..errors import EXIT_NOT_FINITE, NonFiniteLoss, TrainingStopped, UserError
from ..execution.fast import check_fast_supported, collator_attention_shape, mixed_precision_dtype, run_fast
from ..execution.readout import readout_for
from ..execution.reference import Executor, run_reference
from ..execution.stp import check_layer, prepare_model
from ..model import ModelSpec, load_model, load_tokenizer
from ..tokens import predictor_tokens
from ..training.callbacks import StopOnSignal, add_profiled_flops
from ..training.trainer import JepaTrainer, LossConfig
from ..views.collate import ViewCollator
from ..views.encoding import Encoded, ViewConfig, encode_all
from ..views.examples import load_examples, split_examples
from .plots import plot_curves
from .stp_flags import stp_config


def view_config(args: argparse.Namespace) -> ViewConfig:
    labels = "all" if args.train_all else "upstream" if args.upstream_labels else "assistant"
    return ViewConfig(
        regular=args.regular,
        predictors=args.predictors,
        last_token=args.last_token,
        num_prediction_steps=args.num_prediction_steps,
        localized_masks=args.localized_masks,
        isolated_predictors=args.isolated_predictors,
        include_last_step_target=args.include_last_step_target,
        step_separator=args.step_separator,
        additive_mask=args.additive_mask,
        additive_positions=args.additive_mask_positions,
        front_pred=args.front_pred,
        reverse_pred=args.reverse_pred,
        plain=args.plain,
        merge_system="gemma" in args.model_name.lower(),
        labels=labels,
        max_length=args.max_length,
        stp=stp_config(args),
        view_based_jepa=args.view_based_jepa,
        unmask_user=args.unmask_user,
        entropy_top_k=args.entropy_top_k if args.entropy_filter else 0,
        entropy_window=args.entropy_context_window,
        jepa_layer=args.jepa_layer if args.linear is None else -1,  # STP reads its layer itself (stp.py)
    )


def loss_config(args: argparse.Namespace) -> LossConfig:
    kind = "l2" if args.jepa_l2 else "mse" if args.jepa_mse else "infonce" if args.infonce else "cosine"
    return LossConfig(
        regular=args.regular,
        lbd=args.lbd,
        gamma=args.gamma,
        jepa_kind=kind,
        jepa_ratio=args.jepa_ratio,
        seed=args.finetune_seed,
        debug=args.debug,
        fused_pair_loss=fused_pair_loss(args),
    )


def same_flop_factor(args: argparse.Namespace) -> float:
    """Upstream --same_flop: the cost of a step's views relative to regular SFT (3 rows; 2 packed with
    --additive_mask; 1 + r with --jepa_ratio r; 1 for --regular). Epochs and the checkpoint interval
    are divided by it."""
    if args.jepa_ratio > 0:
        return 1 + args.jepa_ratio
    if args.additive_mask:
        return 2
    return 1 if args.regular else 3


def same_flop_epochs(args: argparse.Namespace) -> int:
    """Upstream --same_flop: epochs divided by the cost of the views, rounded up."""
    epochs = math.ceil(args.num_epochs / same_flop_factor(args))
    if is_main_process():
        print(f">>>>> --same_flop is active: {args.num_epochs} epochs -> {epochs}")
    return epochs


def same_flop_save_steps(args: argparse.Namespace, steps_per_epoch: int) -> int:
    """Upstream --same_flop also divides the checkpoint interval (an epoch's steps) by the views' cost, as
    it rounds: int(s / (1 + r)), s // 2, s // 3; at least 1 here (the Trainer refuses 0)."""
    return max(1, int(steps_per_epoch / same_flop_factor(args)))


def load_data(args: argparse.Namespace) -> tuple[list, list, str]:
    from ..default_model import demo_data_path

    if args.data_file:
        train, held = split_examples(load_examples(args.data_file), args.eval_split, args.split_seed)
        source = args.data_file
    else:
        source = args.train_file or str(demo_data_path("train"))
        train, held = load_examples(source), []
    if args.eval_file:
        held = load_examples(args.eval_file)
    return train, held, source


def encode_split(examples: list, tokenizer, cfg: ViewConfig, source: str) -> list[Encoded]:
    encoded, report = encode_all(examples, tokenizer, cfg)
    hint = separator_hint(examples, encoded, cfg.step_separator)
    for line in report.lines(source, cfg.max_length, cfg.num_prediction_steps) if is_main_process() else []:
        print(f"llmjepa-train: warning: {line}" + (f"; {hint}" if hint and "no step separator" in line else ""))
    return encoded


SEPARATOR_CANDIDATES = ("\n\n", "\n", ". ", "; ")  # what ends a reasoning step in common data (gsm8k: "\n")


def separator_hint(examples: list, encoded: list[Encoded], separator: str) -> str | None:
    """For the step-separator fallback warning: which candidate separators the fallen-back answers do
    contain, and the flag that would use one."""
    answers = [ex.assistant.strip() for ex, enc in zip(examples, encoded) if getattr(enc, "fallback", False)]
    if not answers:
        return None
    counts = [(sep, sum(sep in a for a in answers)) for sep in SEPARATOR_CANDIDATES if sep != separator]
    found = [(sep, n) for sep, n in counts if n]
    shown = lambda sep: sep.replace("\n", "\\n")  # noqa: E731
    if not found:
        tried = ", ".join(f"'{shown(sep)}'" for sep, _ in counts)
        return f"they contain none of {tried} either: set --step_separator"
    listed = ", ".join(f"'{shown(sep)}' ({n} of {len(answers)})" for sep, n in found)
    return f"they contain {listed}: try --step_separator '{shown(found[0][0])}'"


def resolve_device_defaults(args: argparse.Namespace) -> tuple[str, bool]:
    cuda = torch.cuda.is_available()
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")
    checkpointing = args.gradient_checkpointing if args.gradient_checkpointing is not None else cuda
    return dtype, checkpointing


# transformers 5.x renamed gradient_checkpointing to activation_checkpointing and warns (FutureWarning, on
# every run) when the old name is given; the oldest supported transformers (5.17) may know only the old one.
CHECKPOINTING_FIELD = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in TrainingArguments.__dataclass_fields__
)


def training_arguments(
    args: argparse.Namespace, n_train: int, has_eval: bool, checkpointing: bool
) -> TrainingArguments:
    epochs = same_flop_epochs(args) if args.same_flop else args.num_epochs
    ranks = launched_world_size()  # torchrun: each rank takes its share of every epoch
    steps_per_epoch = max(1, n_train // (args.batch_size * args.grad_accum * ranks))
    ours = dict(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        num_train_epochs=epochs,
        max_steps=args.max_train_steps if args.max_train_steps > 0 else -1,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=args.finetune_seed,
        data_seed=args.finetune_seed,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        report_to="none",
        logging_steps=args.logging_steps,
        # at the Trainer's own epoch ends (under any number of ranks) unless steps are asked for
        save_strategy="steps" if args.save_steps > 0 or args.same_flop else "epoch",
        save_steps=args.save_steps if args.save_steps > 0 else save_interval(args, steps_per_epoch),
        save_total_limit=max(1, 4 * args.num_epochs),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=args.eval_steps if has_eval else None,
        prediction_loss_only=True,
        **{CHECKPOINTING_FIELD: checkpointing},
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        # Collation (packing, layout, tile lists) in worker processes where a GPU computes meanwhile; on
        # the CPU workers only compete with the step for the cores (measured: docs/fast_path.md).
        dataloader_num_workers=loader_workers(args),
        dataloader_pin_memory=torch.cuda.is_available(),  # the pin thread pins the stream and its layout
        dataloader_persistent_workers=loader_workers(args) > 0,
        # JepaTrainer.finish_step stops the run at a non-finite loss; the Trainer's filter would read
        # every microbatch's loss on the host (two syncs per microbatch)
        logging_nan_inf_filter=False,
        bf16=False,  # the weights carry the dtype (--dtype), as upstream's bf16 weights do; --bf16: mixed precision
    )
    try:  # TrainingArguments fields given as flags or in --config win (llmjepa/hf_args.py)
        return TrainingArguments(**{**ours, **getattr(args, "training_overrides", {})})
    except ValueError as e:  # contradictory fields: one line, as every flag error
        raise UserError(f"TrainingArguments: {' '.join(str(e).split())}") from None


def save_interval(args: argparse.Namespace, steps_per_epoch: int) -> int:
    """Checkpoint every epoch, or with --same_flop every epoch's steps over the views' cost (upstream)."""
    return same_flop_save_steps(args, steps_per_epoch) if args.same_flop else steps_per_epoch


def loader_workers(args: argparse.Namespace) -> int:
    """--dataloader_num_workers, by default 2 with CUDA and 0 on the CPU."""
    if args.dataloader_num_workers is not None:
        return args.dataloader_num_workers
    return 2 if torch.cuda.is_available() else 0


def resume_point(args: argparse.Namespace) -> str | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = [
            p
            for p in Path(args.output_dir).glob("checkpoint-*")
            if p.name[11:].isdigit() and (p / "trainer_state.json").is_file()  # complete checkpoints only
        ]
        found.sort(key=lambda p: int(p.name[11:]))
        if not found:
            raise UserError(f"--resume_from_checkpoint latest: no checkpoint-* in {args.output_dir}")
        return str(found[-1])
    if not Path(args.resume_from_checkpoint, "trainer_state.json").is_file():
        raise UserError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: not a checkpoint directory")
    return args.resume_from_checkpoint


def prepare_metrics_file(path: Path, resume_from: str | None) -> None:
    """Fresh run: start the file anew. Resumed run: keep the steps the checkpoint had done."""
    if not path.exists():
        return
    if resume_from is None:
        path.unlink()
        return
    done = json.loads(Path(resume_from, "trainer_state.json").read_text())["global_step"]
    kept = [line for line in path.read_text().splitlines() if metrics_step(line) <= done]
    path.write_text("".join(line + "\n" for line in kept))


def metrics_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line the interruption cut short (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def set_attention_dropout(model: torch.nn.Module, dropout: float) -> None:
    """--dropout: the attention modules copied config.attention_dropout when built, so set theirs too."""
    model.config.attention_dropout = dropout
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = dropout


def check_enough(train_set: list[Encoded], batch_size: int, source: str) -> None:
    if len(train_set) < batch_size:
        raise UserError(f"{source}: {len(train_set)} examples, fewer than one batch of {batch_size}")


def load_model_from_args(args: argparse.Namespace, tokenizer, dtype: str) -> torch.nn.Module:
    spec = ModelSpec(
        args.model_name,
        pretrain=args.pretrain,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lora_target_modules=args.lora_target_modules,
        lora_train_new_tokens=not args.lora_freeze_new_tokens,
        dtype=dtype,
        seed=args.finetune_seed,
        attn_implementation=register_fast_attention() if args.impl == "fast" else "sdpa",
    )
    set_seed(args.finetune_seed)  # rows added for new tokens are random: same seed, same start
    model = load_model(spec, tokenizer)
    if args.dropout is not None:
        set_attention_dropout(model, args.dropout)
    if args.impl == "fast":
        check_fast_supported(model)
    return model


def register_fast_attention() -> str:
    """Register the block-causal attention with transformers; returns its attn_implementation name."""
    try:
        from llmjepa_kernels import hf_attention
    except ImportError as e:
        raise UserError(f"--impl fast needs triton ({e}): pip install 'llmjepa[triton]'") from e
    hf_attention.register()
    return hf_attention.ATTENTION_NAME


def executor_for(args: argparse.Namespace, pad_token_id: int) -> Executor:
    if args.impl == "fast":  # --attention_backend: resolved by cli.check_args (None: run_fast's per-device choice)
        executor = partial(run_fast, pad_token_id=pad_token_id, attention=getattr(args, "attention_backend", None))
        executor.keywords["kernel_check"] = getattr(args, "kernel_check", "auto")  # llmjepa/execution/kernel_check.py
    else:
        executor = partial(run_reference, pad_token_id=pad_token_id)
    return readout_for(executor, view_config(args))  # --jepa_layer, --entropy_filter: execution.readout


def fused_pair_loss(args: argparse.Namespace) -> bool:
    """The fused JEPA loss kernel with the fast path, where Triton runs: CUDA, or its CPU interpreter."""
    return args.impl == "fast" and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass
class Run:
    trainer: JepaTrainer
    metrics_path: Path


def build_run(args: argparse.Namespace) -> Run:
    dtype, checkpointing = resolve_device_defaults(args)
    tokenizer = load_tokenizer(args.model_name)
    cfg = view_config(args)
    train_examples, eval_examples, source = load_data(args)
    train_set = encode_split(train_examples, tokenizer, cfg, source)
    eval_set = encode_split(eval_examples, tokenizer, cfg, args.eval_file or source) if eval_examples else None
    check_enough(train_set, args.batch_size, source)
    model = load_model_from_args(args, tokenizer, dtype)
    prepare_model(args, model)  # STP: --jepa_layer checked, the linear predictor attached (llmjepa/stp.py)
    if cfg.jepa_layer != -1:
        check_layer(model, cfg.jepa_layer)
    predictor_ids = tokenizer.convert_tokens_to_ids(predictor_tokens(args.predictors))
    metrics_path = Path(args.output_dir) / "metrics.jsonl"
    backend = getattr(args, "attention_backend", None)
    mixed = mixed_precision_dtype(getattr(args, "training_overrides", {}))  # --bf16/--fp16: what the kernels see
    # the collator's tile lists: for the dtype the kernels will see
    kernel_shape = collator_attention_shape(model, backend, mixed) if args.impl == "fast" else None
    trainer = JepaTrainer(
        model=model,
        args=training_arguments(args, len(train_set), eval_set is not None, checkpointing),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=ViewCollator(
            cfg,
            predictor_ids,
            args.jepa_ratio,
            args.finetune_seed,
            pack=args.impl == "fast",
            attention=kernel_shape,
            keep_rows=args.debug > 0,  # only --debug's printing reads the rows of a packed plan
        ),
        processing_class=tokenizer,
        executor=executor_for(args, tokenizer.pad_token_id),
        loss_config=loss_config(args),
        metrics_path=metrics_path,
        track_flops=args.track_flop,
    )
    if args.track_flop:  # upstream's profiler count too, over the first steps (training/callbacks.py)
        add_profiled_flops(trainer)
    if args.eval_accuracy:  # llmjepa-eval's accuracy at each evaluation, logged through trainer.log
        from ..evaluation.callback import add_accuracy_callback

        add_accuracy_callback(trainer, eval_examples, tokenizer, cfg, args)
    return Run(trainer, metrics_path)


def train(args: argparse.Namespace, argv: list[str] | None = None) -> JepaTrainer | None:
    """One training run from parsed flags (argv: the command line, for the resume command printed when
    a signal stops the run). Returns the trainer, or None when the checkpoint resumed had finished."""
    if is_main_process():
        print(f"llmjepa-train: output in {args.output_dir}")
    resume_from = resume_point(args)  # before anything is loaded: a bad checkpoint fails in a second
    if resume_from and finished_already(args, resume_from):
        return None
    if getattr(args, "training_overrides", None):  # contradictory TrainingArguments fields, before anything loads
        has_eval = bool(args.eval_file or args.data_file)
        training_arguments(args, args.batch_size * args.grad_accum, has_eval, resolve_device_defaults(args)[1])
    run = build_run(args)
    if run.trainer.is_world_process_zero():
        prepare_metrics_file(run.metrics_path, resume_from)
    stop = StopOnSignal()
    run.trainer.add_callback(stop)
    stop.install()
    try:
        run.trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLoss as e:
        raise stopped_not_finite(args, run, e) from None
    finally:
        stop.uninstall()
    if stop.stopped_at is not None and stop.stopped_at < run.trainer.state.max_steps:
        raise stopped_by_signal(args, stop, argv)
    if run.trainer.is_world_process_zero():
        finish(args, run)
    wait_for_rank_zero()
    return run.trainer


# ---- runs that end early --------------------------------------------------------------------
def checkpoint_step(path: Path) -> int:
    return json.loads((path / "trainer_state.json").read_text())["global_step"]


def complete_checkpoints(output_dir: str) -> list[Path]:
    """checkpoint-N folders with their trainer state (a save cut short has none), by step."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.name[11:].isdigit()]
    return sorted((p for p in found if (p / "trainer_state.json").is_file()), key=lambda p: int(p.name[11:]))


def planned_epochs(args: argparse.Namespace) -> int:
    return math.ceil(args.num_epochs / same_flop_factor(args)) if args.same_flop else args.num_epochs


def finished_already(args: argparse.Namespace, checkpoint: str) -> bool:
    """A checkpoint at the end of the run these flags ask for: say so, and train nothing (the Trainer
    would run one step past it)."""
    state = json.loads(Path(checkpoint, "trainer_state.json").read_text())
    done = state["global_step"]
    if args.max_train_steps > 0:
        finished, total = done >= args.max_train_steps, args.max_train_steps
    else:
        total = state.get("max_steps", 0)
        finished = done >= total and state.get("num_train_epochs") == planned_epochs(args)
    if finished and is_main_process():
        print(
            f"llmjepa-train: {checkpoint} is step {done} of {total}: this run has finished; nothing to train "
            "(raise --max_train_steps or --num_epochs to train further)"
        )
    return finished


def resume_command(args: argparse.Namespace, argv: list[str] | None, checkpoint: Path) -> str:
    """The command line that continues from `checkpoint`: argv without its --resume_from_checkpoint,
    with --output_dir spelled out (by default a new run gets a new folder)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--resume_from_checkpoint", "--output_dir"):
            skip = "=" not in arg
            continue
        kept.append(arg)
    return shlex.join(
        ["llmjepa-train", *kept, "--output_dir", args.output_dir, "--resume_from_checkpoint", str(checkpoint)]
    )


def stopped_by_signal(args: argparse.Namespace, stop: StopOnSignal, argv: list[str] | None) -> TrainingStopped:
    name = signal.Signals(stop.signum).name
    checkpoint = Path(args.output_dir) / f"checkpoint-{stop.stopped_at}"
    return TrainingStopped(
        f"stopped by {name} after step {stop.stopped_at}, saved {checkpoint}; resume with: "
        + resume_command(args, argv, checkpoint),
        128 + stop.signum,
    )


def stopped_not_finite(args: argparse.Namespace, run: Run, e: NonFiniteLoss) -> TrainingStopped:
    """The step's record goes to metrics.jsonl (null where non-finite); the message names the last good
    checkpoint. The weights were never updated from the non-finite values, and no final model is written."""
    if run.trainer.is_world_process_zero():
        with run.metrics_path.open("a") as f:
            f.write(json.dumps(e.record, allow_nan=False) + "\n")
    good = [p for p in complete_checkpoints(args.output_dir) if checkpoint_step(p) < e.step]
    kept = f"last good checkpoint: {good[-1]}" if good else "no checkpoint was saved before it"
    return TrainingStopped(
        f"{e}: training stopped before this step's update, no final model written; {kept}", EXIT_NOT_FINITE
    )


def wait_for_rank_zero() -> None:
    """Under torchrun: every rank waits here until rank 0 has saved the model, metrics and plot."""
    barrier()


def finish(args: argparse.Namespace, run: Run) -> None:
    if args.merge_lora:  # a plain model, loadable without peft (the adapters stay in the checkpoints)
        from ..model import save_merged

        save_merged(
            run.trainer.accelerator.unwrap_model(run.trainer.model), run.trainer.processing_class, args.output_dir
        )
    else:
        run.trainer.save_model(args.output_dir)
    records = (
        [json.loads(line) for line in run.metrics_path.read_text().splitlines()] if run.metrics_path.exists() else []
    )
    plot = Path(args.output_dir) / "loss_curve.png"
    keys = ("loss", "lm_loss") if args.regular else ("loss", "lm_loss", "jepa_loss")
    name = os.path.basename(os.path.normpath(args.output_dir))
    plotted = plot_curves(plot, {name: records}, keys, "llmjepa-train")  # False: no matplotlib (a note said so)
    shown = f", plot {plot}" if plotted else ""
    print(f"llmjepa-train: {len(records)} steps; metrics {run.metrics_path}{shown}, model {args.output_dir}")
