"""llmjepa-parity: show that --lbd 0 trains exactly as --regular (or as plain Hugging Face SFT).

    llmjepa-parity --train_file data.jsonl --predictors 1 --steps 20
    llmjepa-parity --train_file data.jsonl --num_prediction_steps 2 --predictors 1 --against hf

Takes llmjepa-train's flags. Configuration A is those flags with --lbd 0 (unless --lbd is
given): the views are built and run, their loss is weighted by 0. Configuration B is the same
data, model, order, labels, optimizer and schedule with --regular (no views), or with
`--against hf` a plain transformers.Trainer on the view-1 ids and labels. B runs first; A then
runs step by step against B's record and stops at the first step where they part. Prints one
table row per optimizer step, names the first step and quantity that differ by more than
--tolerance, and plots both curves. Exit 0: they agree on every step; 1: they part; 2: a user
error.

Parity needs what any two runs need to match: no dropout (the extra rows of the views draw
other random numbers; --lora brings LoRA's dropout 0.1), and a tolerance that suits the dtype
(1e-5 holds in float32; if bfloat16 parts by a little, rerun with --dtype float32 to tell
rounding from a real difference). See docs/parity.md.
"""

import argparse
import copy
import gc
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .train import JEPA_ONLY_FLAGS, build_parser, check_args

QUANTITIES = ("microbatches", "label_tokens", "loss", "grad_norm")  # checked in this order at each step
EXACT = ("microbatches", "label_tokens")
StepHook = Callable[[dict], bool]  # called with each step's record; False stops the run


# ---- flags --------------------------------------------------------------------------------
def build_parity_parser() -> argparse.ArgumentParser:
    p = build_parser()
    p.prog = "llmjepa-parity"
    p.description = __doc__.split("\n")[0]
    p.set_defaults(output_dir="runs/parity")  # runs/ is git-ignored, as every command's default output
    g = p.add_argument_group("llmjepa-parity")
    g.add_argument(
        "--against",
        choices=["regular", "hf"],
        default="regular",
        help="B: llmjepa --regular, or a plain transformers.Trainer (SFT on view 1)",
    )
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps to compare; None: --max_train_steps if given, else 20",
    )
    g.add_argument("--tolerance", type=float, default=1e-5, help="largest relative difference that still agrees")
    g.add_argument("--plot", help="PNG of both curves; None: OUTPUT_DIR/parity.png")
    return p


def parse_parity_args(argv: list[str] | None) -> argparse.Namespace:
    """Configuration A's flags, checked; `.raw` keeps the unchecked ones that B is made from."""
    raw = build_parity_parser().parse_args(argv)
    args = side_flags(raw, regular=raw.regular)
    if raw.steps is None:
        raw.steps = args.steps = raw.max_train_steps if raw.max_train_steps > 0 else 20
    if raw.steps < 1:
        raise UserError("--steps must be >= 1")
    if not raw.tolerance > 0:
        raise UserError("--tolerance must be > 0")
    if raw.resume_from_checkpoint:
        raise UserError("--resume_from_checkpoint: llmjepa-parity starts both runs from the same weights; drop it")
    if raw.regular and raw.against == "regular":
        raise UserError("--regular --against regular compares a run with itself; use --against hf")
    side_flags(raw, regular=True)  # B's flags: any user error shows before training starts
    args.raw = raw
    return args


def side_flags(raw: argparse.Namespace, regular: bool) -> argparse.Namespace:
    """One side's flags, checked by llmjepa-train's own rules: A = the user's with --lbd 0 unless
    given; B = the user's without any view flag, plus --regular."""
    a = copy.copy(raw)
    if regular and not raw.regular:
        a.regular = True
        for name in JEPA_ONLY_FLAGS:
            setattr(a, name, False)
        a.lbd, a.predictors, a.num_prediction_steps, a.jepa_ratio = None, 0, 0, -1.0
        a.localized_masks = a.include_last_step_target = True
    elif not raw.regular and a.lbd is None:
        a.lbd = 0.0  # configuration A: the views run, their loss weighs nothing
    return check_args(a)


def run_args(args: argparse.Namespace, out_dir: Path, regular: bool) -> argparse.Namespace:
    """The flags of one run: one side's, with N steps, a log every step, no checkpoints."""
    a = side_flags(args.raw, regular)
    a.output_dir = str(out_dir)
    a.max_train_steps = args.steps
    a.logging_steps = 1
    a.save_steps = args.steps + 1
    return a


# ---- callbacks ----------------------------------------------------------------------------
def quiet_trainer(trainer: Any) -> None:
    """No progress bar or printed log dicts: the parity table is the output."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)


def hook_callback(get_record: Callable[[], dict | None], hook: StepHook | None) -> Any:
    from transformers import TrainerCallback

    class ParityHook(TrainerCallback):
        """Never saves or evaluates; hands each step's record to `hook`, which may stop the run."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            control.should_save = False
            control.should_evaluate = False

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            record = get_record()
            if record is not None and hook is not None and not hook(record):
                control.should_training_stop = True

    return ParityHook()


# ---- configuration A, or B = --regular: our trainer ---------------------------------------
def run_ours(args: argparse.Namespace, hook: StepHook | None = None) -> list[dict]:
    """Train with llmjepa's JepaTrainer for args.max_train_steps; return its per-step records."""
    from .run import build_run, prepare_metrics_file

    run = build_run(args)  # seeds before loading the model (see run.load_model_from_args)
    trainer = run.trainer
    prepare_metrics_file(run.metrics_path, None)
    quiet_trainer(trainer)
    done: list[int] = []

    def latest() -> dict | None:
        if not trainer.history or len(trainer.history) == len(done):
            return None
        done.append(1)
        return trainer.history[-1]

    trainer.add_callback(hook_callback(latest, hook))
    trainer.train()
    records = list(trainer.history)
    release(trainer)
    return records


# ---- B = plain Hugging Face SFT -----------------------------------------------------------
class SFTCollator:
    """Right-pads view-1 ids and labels: what DataCollatorForSeq2Seq-style SFT feeds a causal LM."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        length = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        for r, e in enumerate(batch):
            n = len(e.input_ids)
            input_ids[r, :n] = torch.tensor(e.input_ids)
            attention_mask[r, :n] = 1
            labels[r, :n] = torch.tensor(e.labels)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def recording_trainer_class() -> type:
    from transformers import Trainer

    class RecordingTrainer(Trainer):
        """transformers.Trainer unchanged; it only notes what each optimizer step consumed."""

        step_inputs: dict = {}

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple:
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            counted = sum(int(b["labels"][..., 1:].ne(-100).sum()) for b in batches)
            self.step_inputs = {
                "label_tokens": int(num_items) if num_items is not None else counted,
                "rows": sum(len(b["input_ids"]) for b in batches),
                "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
                "microbatches": len(batches),
                "started": time.perf_counter(),
            }
            return batches, num_items

    return RecordingTrainer


def build_hf_sft(args: argparse.Namespace) -> Any:
    """A plain transformers.Trainer doing SFT on what --regular trains on: the same encoded view-1
    ids and labels, model and weights, TrainingArguments (optimizer, schedule, clipping, seed,
    sampler, drop_last). Returns the trainer; `records` on it fills during train()."""
    from ..model import load_tokenizer
    from .run import (
        check_enough,
        encode_split,
        load_data,
        load_model_from_args,
        resolve_device_defaults,
        training_arguments,
        view_config,
    )

    dtype, checkpointing = resolve_device_defaults(args)
    tokenizer = load_tokenizer(args.model_name)
    train_examples, _, source = load_data(args)
    train_set = encode_split(train_examples, tokenizer, view_config(args), source)
    check_enough(train_set, args.batch_size, source)
    # plain HF SFT runs the model as users do (SDPA, padding mask), never our block-causal attention
    model = load_model_from_args(argparse.Namespace(**{**vars(args), "impl": "reference"}), tokenizer, dtype)
    trainer = recording_trainer_class()(
        model=model,
        args=training_arguments(args, len(train_set), False, checkpointing),
        train_dataset=train_set,
        data_collator=SFTCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.records = []
    return trainer


def run_hf(args: argparse.Namespace, hook: StepHook | None = None) -> list[dict]:
    """Train the plain Trainer for args.max_train_steps; per-step records read from its logs
    (transformers 5 keeps the logged floats unrounded in state.log_history)."""
    trainer = build_hf_sft(args)
    quiet_trainer(trainer)
    metrics = Path(args.output_dir) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text("")

    def latest() -> dict | None:
        logs = trainer.state.log_history[-1] if trainer.state.log_history else {}
        if "loss" not in logs or logs["step"] == (trainer.records[-1]["step"] if trainer.records else 0):
            return None
        seen = trainer.step_inputs
        record = {
            "step": logs["step"],
            "loss": float(logs["loss"]),
            "grad_norm": float(logs.get("grad_norm", math.nan)),
            "lr": logs.get("learning_rate"),
            **{k: seen[k] for k in ("label_tokens", "rows", "tokens", "microbatches")},
            "step_seconds": time.perf_counter() - seen["started"],
        }
        trainer.records.append(record)
        with metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    trainer.add_callback(hook_callback(latest, hook))
    trainer.train()
    records = list(trainer.records)
    release(trainer)
    return records


def release(trainer: Any) -> None:
    """Free a finished run's model and optimizer before the other side loads its own."""
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- comparison ---------------------------------------------------------------------------
def rel_diff(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|); 0 when equal; inf when either is NaN or infinite (never agrees)."""
    if a == b and math.isfinite(a):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def partings(a: dict, b: dict, tolerance: float) -> list[tuple[str, float]]:
    """(quantity, relative difference) of every quantity in which step records a and b differ."""
    out = []
    for q in QUANTITIES:
        d = rel_diff(float(a[q]), float(b[q]))
        if (d > 0) if q in EXACT else not d <= tolerance:
            out.append((q, d))
    return out


@dataclass
class Table:
    tolerance: float
    rows: list[tuple[dict, dict]] = field(default_factory=list)
    first: tuple[int, list[tuple[str, float]], dict, dict] | None = None  # step, [(quantity, rel diff)], A, B

    HEADER = (
        f"{'step':>4}  {'loss A':>11} {'loss B':>11} {'rel diff':>8}  {'grad A':>10} {'grad B':>10} "
        f"{'rel diff':>8}  {'label tok A/B':>13}  {'rows A/B':>9}  {'mb A/B':>6}  {'tokens A/B':>11}"
    )

    def header(self) -> None:
        print(self.HEADER)
        print("-" * len(self.HEADER))

    def add(self, a: dict, b: dict) -> bool:
        """Print one step; False once A and B have parted."""
        if not self.rows:
            self.header()
        self.rows.append((a, b))
        dl, dg = rel_diff(a["loss"], b["loss"]), rel_diff(a["grad_norm"], b["grad_norm"])
        pair = lambda k: f"{a[k]}/{b[k]}"  # noqa: E731
        print(
            f"{a['step']:>4}  {a['loss']:>11.7f} {b['loss']:>11.7f} {dl:>8.1e}  {a['grad_norm']:>10.6f} "
            f"{b['grad_norm']:>10.6f} {dg:>8.1e}  {pair('label_tokens'):>13}  {pair('rows'):>9}  "
            f"{pair('microbatches'):>6}  {pair('tokens'):>11}",
            flush=True,
        )
        parted = partings(a, b, self.tolerance)
        if parted and self.first is None:
            self.first = (a["step"], parted, a, b)
        return not parted

    def max_diff(self, key: str) -> tuple[float, int]:
        """(largest relative difference of `key`, the first step where it occurs)."""
        diffs = [(rel_diff(a[key], b[key]), a["step"]) for a, b in self.rows]
        return max(diffs, key=lambda d: d[0], default=(0.0, 0))


def describe(args: argparse.Namespace) -> tuple[str, str]:
    a_flags = [f"--lbd {args.lbd:g}"] if not args.regular else ["--regular"]
    if not args.regular:
        if args.num_prediction_steps:
            a_flags.append(f"--num_prediction_steps {args.num_prediction_steps}")
        a_flags.append(f"--predictors {args.predictors}")
        a_flags += [f"--{f}" for f in JEPA_ONLY_FLAGS if getattr(args, f)]
        if args.gamma != 1.0:
            a_flags.append(f"--gamma {args.gamma:g}")
    b = "llmjepa --regular" if args.against == "regular" else "plain transformers.Trainer SFT"
    return f"llmjepa {' '.join(a_flags)}", b


def plot(path: Path, a_name: str, b_name: str, table: Table, a_records: list, b_records: list) -> None:
    from .plots import plot_curves

    diffs = {
        "rel diff loss": [{"step": a["step"], "rel_diff": rel_diff(a["loss"], b["loss"])} for a, b in table.rows],
        "rel diff grad norm": [
            {"step": a["step"], "rel_diff": rel_diff(a["grad_norm"], b["grad_norm"])} for a, b in table.rows
        ],
    }
    title = f"llmjepa-parity   A = {a_name}   B = {b_name}"
    plot_curves(path, {"A": a_records, "B": b_records, **diffs}, ("loss", "grad_norm", "rel_diff"), title)


def median_step_seconds(records: list[dict]) -> float:
    times = sorted(r["step_seconds"] for r in records)
    return times[len(times) // 2] if times else math.nan


def compare(args: argparse.Namespace) -> tuple[Table, list[dict], list[dict]]:
    """Run B, then A against B's record step by step. Returns the table and both records."""
    root = Path(args.output_dir)
    b_args = run_args(args, root / f"B-{args.against}", regular=True)
    a_args = run_args(args, root / "A", regular=args.regular)
    a_name, b_name = describe(args)
    print(
        f"llmjepa-parity: A = {a_name}; B = {b_name}; {args.steps} steps, batch {args.batch_size} x grad_accum "
        f"{args.grad_accum}, tolerance {args.tolerance:g}",
        flush=True,
    )
    if args.lora or (args.dropout or 0) > 0:
        print(
            "llmjepa-parity: note: dropout is on (--lora brings LoRA's dropout 0.1); A's extra rows draw other "
            "random masks, so A and B are expected to part"
        )
    b_records = (run_hf if args.against == "hf" else run_ours)(b_args)
    if len(b_records) < args.steps:
        raise UserError(f"B stopped after {len(b_records)} of {args.steps} steps")
    by_step = {r["step"]: r for r in b_records}
    table = Table(args.tolerance)
    a_records = run_ours(a_args, hook=lambda a: table.add(a, by_step[a["step"]]))
    a_time, b_time = median_step_seconds(a_records), median_step_seconds(b_records)
    print(f"median time per optimizer step: A {a_time:.3f} s, B {b_time:.3f} s")
    return table, a_records, b_records


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_parity_args(argv)
        table, a_records, b_records = compare(args)
    except UserError as e:
        print(f"llmjepa-parity: error: {e}", file=sys.stderr)
        return 2
    a_name, b_name = describe(args)
    path = Path(args.plot) if args.plot else Path(args.output_dir) / "parity.png"
    plot(path, a_name, b_name, table, a_records, b_records[: len(a_records)])
    (dl, sl), (dg, sg) = table.max_diff("loss"), table.max_diff("grad_norm")
    print(f"max rel diff: loss {dl:.1e} (step {sl}), grad norm {dg:.1e} (step {sg}); plot {path}")
    if table.first is None:
        print(f"AGREE: A and B agree on all {len(table.rows)} steps (tolerance {args.tolerance:g})")
        return 0
    step, parted, a, b = table.first
    said = [
        f"{q}: A {a[q]} vs B {b[q]}" if q in EXACT else f"{q}: A {a[q]:.9g} vs B {b[q]:.9g} (rel diff {d:.1e})"
        for q, d in parted
    ]
    print(f"PART: A and B part at step {step}, first in {said[0]}" + "".join(f"; also {x}" for x in said[1:]))
    print(f"(tolerance {args.tolerance:g}; label tokens and microbatches must be equal)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
