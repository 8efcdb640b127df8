"""Assembling a training run from parsed flags: data, model, views, trainer, outputs."""

import argparse
import json
import math
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments, set_seed

from ..distributed import barrier, is_main_process, launched_world_size
from ..errors import EXIT_NOT_FINITE, EXIT_SAVE_FAILED, NonFiniteLoss, SaveFailed, TrainingStopped, UserError
from ..model import ModelSpec, load_model, load_tokenizer
from ..training.callbacks import StopOnSignal, add_profiled_flops
from ..training.checkpoints import complete_checkpoints
from ..training.trainer import JepaTrainer, LossConfig
from ..views.encoded_rows import EncodedRows
from ..views.encoding import Encoded, ViewConfig, encode_all
from ..views.examples import load_examples, split_examples
from ..views.streaming import EncodedStream
from .config import Mode, derive, mode_of
from .file_checks import check_checkpoint
from .plots import plot_curves
from .run_folder import (
    RunFolder,
    choose_checkpoint,
    open_run_folder,
    record_changes_in_metrics,
    record_stream_counts,
    write_record,
)
from .sources import EncodedPart, encode_data


def view_config(args: argparse.Namespace) -> ViewConfig:
    """The ViewConfig of checked flags (config.derive makes it, with the others)."""
    return derive(args).view


def loss_config(args: argparse.Namespace) -> LossConfig:
    """The LossConfig of checked flags (config.derive makes it, with the others)."""
    return derive(args).loss


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


def load_data(args: argparse.Namespace, bad_rows: dict | None = None) -> tuple[list, list, str]:
    """The train and held-out examples and the train source's name; bad_rows (source -> views.formats.BadRows)
    gets each source's bad rows where --drop_bad_rows drops them (commands/sources.py reads --dataset_name)."""
    from ..default_model import demo_data_path
    from ..views.formats import BadRows
    from .sources import data_format_of, load_dataset_examples

    fmt = data_format_of(args)
    bad_rows = {} if bad_rows is None else bad_rows
    collector = lambda source: bad_rows.setdefault(source, BadRows(drop=args.drop_bad_rows))  # noqa: E731
    if args.dataset_name:
        split_rows: dict = {}
        train, held = load_dataset_examples(args, fmt, split_rows)
        bad_rows.update({f"{args.dataset_name} (split {split})": rows for split, rows in split_rows.items()})
        source = args.dataset_name
    elif args.data_file:
        examples = load_examples(args.data_file, fmt=fmt, bad_rows=collector(args.data_file))
        train, held = split_examples(examples, args.eval_split, args.split_seed)
        source = args.data_file
    else:
        source = args.train_file or str(demo_data_path("train"))
        train, held = load_examples(source, fmt=fmt, bad_rows=collector(source)), []
    if args.eval_file:
        held = load_examples(args.eval_file, fmt=fmt, bad_rows=collector(args.eval_file))
    warn_bad_rows(bad_rows)
    return train, held, source


def warn_bad_rows(bad_rows: dict) -> None:
    """--drop_bad_rows: one warning line a source, with the counts by kind."""
    for name, rows in bad_rows.items():
        line = rows.line(name)
        if line and is_main_process():
            print(f"llmjepa-train: warning: {line}")


def encode_split(
    examples: list, tokenizer, cfg: ViewConfig, source: str, dropped: dict[str, int] | None = None
) -> list[Encoded]:
    """Tokenize a list of examples once (parity's and the benchmarks' path; a run encodes with datasets.map,
    encode_part); the report's lines as warnings; examples dropped (prompt over --max_length) counted into
    `dropped` by source."""
    encoded, report = encode_all(examples, tokenizer, cfg)
    answers = [examples[enc.index].assistant for enc in encoded if enc.fallback]
    warn_encoding(report, source, cfg, answers, dropped)
    return encoded


def encode_part(part: EncodedPart, cfg: ViewConfig, dropped: dict[str, int]) -> EncodedRows:
    """A run's train or held-out examples from their encoded table (commands/sources.py encode_data), with the
    report's lines as warnings and the prompts dropped counted into `dropped` by source."""
    encoded, report = part.table.encoded(part.rows)
    answers = [encoded.example(i).assistant for i in encoded.flagged("fallback")] if report.fallback else []
    warn_encoding(report, part.source, cfg, answers, dropped)
    return encoded


def warn_encoding(report, source: str, cfg: ViewConfig, fallback_answers: list[str], dropped: dict | None) -> None:
    if dropped is not None and report.dropped:
        dropped[source] = report.dropped
    hint = separator_hint(fallback_answers, cfg.step_separator)
    for line in report.lines(source, cfg.max_length, cfg.num_prediction_steps) if is_main_process() else []:
        print(f"llmjepa-train: warning: {line}" + (f"; {hint}" if hint and "no step separator" in line else ""))


SEPARATOR_CANDIDATES = ("\n\n", "\n", ". ", "; ")  # what ends a reasoning step in common data (gsm8k: "\n")


def separator_hint(fallback_answers: list[str], separator: str) -> str | None:
    """For the step-separator fallback warning: which candidate separators the fallen-back answers do
    contain, and the flag that would use one."""
    answers = [answer.strip() for answer in fallback_answers]
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
    overrides = dict(getattr(args, "training_overrides", {}))
    overrides.pop("push_to_hub", None)  # llmjepa pushes the final folder and its card itself (commands/share.py)
    try:  # TrainingArguments fields given as flags or in --config win (llmjepa/hf_args.py)
        return TrainingArguments(**{**ours, **overrides})
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


def resume_point(args: argparse.Namespace, folder: RunFolder) -> str | None:
    """The checkpoint to resume: of this run (run_folder.py), its files whole (file_checks.py); None for a
    new run, which refuses a folder holding checkpoints."""
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest":
        if not Path(args.resume_from_checkpoint, "trainer_state.json").is_file():
            raise UserError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: not a checkpoint directory")
    chosen = choose_checkpoint(args, folder)
    if chosen is not None:
        earlier = complete_checkpoints(str(Path(chosen).parent))
        check_checkpoint(Path(chosen), f"--resume_from_checkpoint {args.resume_from_checkpoint}", earlier)
    return chosen


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
    """The model of --model_name and its flags (LoRA, dtype, dropout); its attention and executor are the
    factory's decisions (training/factory.py)."""
    spec = ModelSpec(
        args.model_name,
        pretrain=args.pretrain,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lora_target_modules=args.lora_target_modules,
        lora_train_new_tokens=not args.lora_freeze_new_tokens,
        dtype=dtype,
        seed=args.finetune_seed,
    )
    set_seed(args.finetune_seed)  # rows added for new tokens are random: same seed, same start
    model = load_model(spec, tokenizer)
    if args.dropout is not None:
        set_attention_dropout(model, args.dropout)
    return model


@dataclass
class Run:
    trainer: JepaTrainer
    metrics_path: Path
    dropped: dict[str, int] = field(default_factory=dict)  # source -> examples dropped (prompt over --max_length)
    bad_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> kind -> rows (--drop_bad_rows)


def build_run(args: argparse.Namespace) -> Run:
    """Load the data and the model the flags name; every other decision (executor, attention backend, tile
    shapes, fused loss, STP's predictor, layer checks, collator) is JepaTrainer's factory's, as on the
    library path (training/factory.py)."""
    dtype, checkpointing = resolve_device_defaults(args)
    tokenizer = load_tokenizer(args.model_name)
    derived = derive(args)
    cfg = derived.view
    bad_rows: dict = {}
    dropped: dict[str, int] = {}
    train_part, held_part = encode_data(args, tokenizer, cfg, bad_rows)  # datasets.map, cached (sources.py)
    warn_bad_rows(bad_rows)
    if train_part is None:  # --dataset_streaming: tokenized as training draws it (commands/sources.py)
        from .sources import stream_train_set

        train_set = stream_train_set(args, tokenizer, cfg)
        source, n_train = args.dataset_name, args.batch_size * args.grad_accum * args.max_train_steps
    else:
        train_set = encode_part(train_part, cfg, dropped)
        source, n_train = train_part.source, len(train_set)
        check_enough(train_set, args.batch_size, source)
    eval_set = encode_part(held_part, cfg, dropped) if held_part is not None else None
    eval_examples = [eval_set.example(i) for i in range(len(eval_set))] if eval_set and args.eval_accuracy else []
    metrics_path = Path(args.output_dir) / "metrics.jsonl"
    trainer = JepaTrainer(
        model=load_model_from_args(args, tokenizer, dtype),
        args=training_arguments(args, n_train, eval_set is not None, checkpointing),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        view_config=cfg,
        loss_config=derived.loss,
        run_options=derived.options,
        metrics_path=metrics_path,
        track_flops=args.track_flop,
    )
    if args.track_flop:  # upstream's profiler count too, over the first steps (training/callbacks.py)
        add_profiled_flops(trainer)
    if args.eval_accuracy:  # llmjepa-eval's accuracy at each evaluation, logged through trainer.log
        from ..evaluation.callback import add_accuracy_callback

        source = args.eval_file or args.data_file or ""
        samples, new_tokens = args.eval_accuracy_samples, args.eval_accuracy_max_new_tokens
        add_accuracy_callback(trainer, eval_examples, tokenizer, cfg, source, samples, new_tokens, args.batch_size)
    return Run(trainer, metrics_path, dropped, {name: rows.counts for name, rows in bad_rows.items() if rows.total})


def train(args: argparse.Namespace, argv: list[str] | None = None) -> JepaTrainer | None:
    """One training run from parsed flags (argv: the command line, for the resume command printed when
    a signal stops the run). Returns the trainer, or None when the checkpoint resumed had finished."""
    if is_main_process():
        print(f"llmjepa-train: output in {args.output_dir}")
    folder = open_run_folder(args, is_main_process())  # the folder's lock (a second run: exit 2), the identity
    try:
        return train_in_folder(args, argv, folder)
    finally:
        folder.release()


def train_in_folder(args: argparse.Namespace, argv: list[str] | None, folder: RunFolder) -> JepaTrainer | None:
    """train(), with the output folder locked."""
    resume_from = resume_point(args, folder)  # before anything is loaded: a bad checkpoint fails in a second
    if resume_from and finished_already(args, resume_from):
        return None
    if getattr(args, "training_overrides", None):  # contradictory TrainingArguments fields, before anything loads
        has_eval = bool(args.eval_file or args.data_file)
        training_arguments(args, args.batch_size * args.grad_accum, has_eval, resolve_device_defaults(args)[1])
    run = build_run(args)
    run.trainer.run_identity = folder.identity  # into every checkpoint (training/checkpoints.py)
    folder.dropped = run.dropped
    folder.bad_rows = run.bad_rows
    if run.trainer.is_world_process_zero():
        prepare_metrics_file(run.metrics_path, resume_from)
        if resume_from:
            record_changes_in_metrics(run.metrics_path, folder, checkpoint_step(Path(resume_from)))
        write_record(folder)
    stop = StopOnSignal()
    run.trainer.add_callback(stop)
    stop.install()
    try:
        run.trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLoss as e:
        raise stopped_not_finite(args, run, e) from None
    except SaveFailed as e:
        raise save_failed(args, argv, e) from None
    finally:
        stop.uninstall()
    if isinstance(run.trainer.train_dataset, EncodedStream):  # a stream's drops are known as it is drawn
        record_stream_counts(folder, run.trainer.train_dataset, args.dataset_name, run.trainer.is_world_process_zero())
    if stop.stopped_at is not None and stop.stopped_at < run.trainer.state.max_steps:
        raise stopped_by_signal(args, stop, argv)
    if run.trainer.is_world_process_zero():
        try:
            finish(args, run)
        except SaveFailed as e:
            raise save_failed(args, argv, e) from None
    wait_for_rank_zero()
    return run.trainer


# ---- runs that end early --------------------------------------------------------------------
def checkpoint_step(path: Path) -> int:
    return json.loads((path / "trainer_state.json").read_text())["global_step"]


def save_failed(args: argparse.Namespace, argv: list[str] | None, e: SaveFailed) -> TrainingStopped:
    """A checkpoint or the final model could not be written: what failed, the last good checkpoint, and
    the command that resumes from it (exit status 4)."""
    good = complete_checkpoints(args.output_dir)
    if good:
        kept = f"last good checkpoint: {good[-1]}; free space, then resume with: {resume_command(args, argv, good[-1])}"
    else:
        kept = "no checkpoint was saved before it; free space and start again"
    return TrainingStopped(f"could not write {e} (partial files removed); {kept}", EXIT_SAVE_FAILED)


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
        save_final_model(run, args.output_dir)
    records = (
        [json.loads(line) for line in run.metrics_path.read_text().splitlines()] if run.metrics_path.exists() else []
    )
    records = [r for r in records if "event" not in r]  # --allow_changed_flags' lines are no steps
    plot = Path(args.output_dir) / "loss_curve.png"
    keys = ("loss", "lm_loss") if mode_of(args) is Mode.REGULAR else ("loss", "lm_loss", "jepa_loss")
    name = os.path.basename(os.path.normpath(args.output_dir))
    plotted = plot_curves(plot, {name: records}, keys, "llmjepa-train")  # False: no matplotlib (a note said so)
    shown = f", plot {plot}" if plotted else ""
    print(f"llmjepa-train: {len(records)} steps; metrics {run.metrics_path}{shown}, model {args.output_dir}")
    from .share import share

    share(args, run.trainer)  # README.md (the model card) beside the model; --push_to_hub uploads the folder


def save_final_model(run: Run, output_dir: str) -> None:
    """The final model; a failed write (a full disk) is SaveFailed, reported with the last checkpoint."""
    try:
        run.trainer.save_model(output_dir)
    except (OSError, RuntimeError) as e:
        raise SaveFailed(f"the final model in {output_dir}", e) from e
    except Exception as e:
        if type(e).__name__ == "SafetensorError":
            raise SaveFailed(f"the final model in {output_dir}", e) from e
        raise
