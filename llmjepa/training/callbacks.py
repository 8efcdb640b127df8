"""The Trainer callbacks of a training run, in one place.

- `StepRecorder`: one JSON line per optimizer step in output_dir/metrics.jsonl (rank 0); JepaTrainer adds it.
- `ProfiledFlops` (`add_profiled_flops`): --track_flop's profiler count.
- `StopOnSignal`: Ctrl-C and SIGTERM stop the run after the step in progress, with a checkpoint.
- `evaluation.callback.GenerationAccuracyCallback` (--eval_accuracy) lives with the evaluation it runs.

Ctrl-C and SIGTERM during training: finish the optimizer step in progress, save a checkpoint, stop.
The first SIGINT or SIGTERM (what SLURM and Kubernetes send before killing a job) only sets a flag;
at the end of the current optimizer step `StopOnSignal` asks the Trainer to save a checkpoint and
stop, and the caller (run.train) prints the command that resumes and exits 128 + the signal's number.
A second signal exits at once (os._exit: nothing saved since the last checkpoint).

--track_flop's measurement, as upstream finetune.py's ProfilerFLOPCallback: torch.profiler with
with_flops=True around each of the first optimizer steps; the FLOPs it counts (the matrix products and
convolutions it has formulas for) go into the step's record as `profiled_flops`, beside the estimate
`flops` = 6 * parameters * tokens (trainer.py).

Upstream opens the profiler at on_step_begin while global_step < 10 and closes it at on_step_end under
the same test, which the Trainer has already advanced: its 10th profile is never closed. Here a profile
opened is closed at the end of its step.
"""

import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from ..distributed import all_reduce_max, world_size

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    def __init__(self, prog: str = "llmjepa-train") -> None:
        self.prog = prog
        self.signum: int | None = None  # the first signal received, on this rank
        self.stopped_at: int | None = None  # the optimizer step after which training stopped
        self.previous: dict[int, Any] = {}
        self.agreed: int | None = None  # under torchrun: the signal all ranks agreed on at this step's read

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only, as Python's signal module requires)."""
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"{self.prog}: {name} again: exiting now; nothing saved since the last checkpoint", file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(
            f"\n{self.prog}: {name}: stopping after this optimizer step, then saving a checkpoint "
            f"({again} again exits at once)",
            file=sys.stderr,
            flush=True,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        signum = self.agreed_signal(args.device)
        if signum:
            self.signum = signum
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    # ---- agreement under torchrun: every rank stops after the same step ------------------------------
    def local_flags(self) -> list[float]:
        """This rank's signal as counts (SIGINT, SIGTERM), summed over ranks with the step's own sums
        (JepaTrainer.read_step_sums): the agreement rides on the all-reduce and the read each step already
        has, so it costs no collective and no host-device sync of its own."""
        return [float(self.signum == sig) for sig in SIGNALS]

    def agree(self, summed: list[float]) -> None:
        """The flags as summed over ranks at this step's read: the signal that every rank stops for. SIGTERM
        wins over SIGINT when ranks received different ones (same answer on every rank)."""
        self.agreed = max((sig for sig, n in zip(SIGNALS, summed) if n > 0), default=0)

    def agreed_signal(self, device: torch.device) -> int:
        """The signal any rank received (0: none); under torchrun every rank must stop at the same step.

        One process: this rank's own flag. Several: what `agree` recorded from the step's all-reduce (JepaTrainer
        reads it before the optimizer step, so a signal arriving after that read stops the run one optimizer
        step later than on one process: the latency of this choice). A trainer that never calls `agree`
        (another Trainer than JepaTrainer) falls back on an all-reduce of its own, read on the host."""
        if world_size() == 1:
            return self.signum or 0
        if self.agreed is None:
            return all_reduce_max(self.signum or 0, device)
        agreed, self.agreed = self.agreed, None  # each step's value is read once
        return agreed


# ---- metrics.jsonl ----------------------------------------------------------------------------
class StepRecorder(TrainerCallback):
    """Writes one JSON line per optimizer step to output_dir/metrics.jsonl (rank 0)."""

    def __init__(self, trainer: Any, path: Path | None) -> None:
        self.trainer = trainer
        self.path = path

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_log and hasattr(self.trainer, "record_health"):  # a logging step: the window's health
            self.trainer.record_health()  # (DefaultFlowCallback, called first, has set should_log)
        if self.path is None or not self.trainer.is_world_process_zero() or not self.trainer.history:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(self.trainer.history[-1]) + "\n")


# ---- --track_flop: upstream's profiler count ------------------------------------------------------
PROFILED_STEPS = 10  # upstream's profile_steps


class ProfiledFlops(TrainerCallback):
    def __init__(self, trainer: Any, steps: int = PROFILED_STEPS) -> None:
        self.trainer = trainer
        self.steps = steps
        self.profiler: profile | None = None
        self.total = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.steps:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        self.profiler = profile(activities=activities, record_shapes=True, with_flops=True)
        self.profiler.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.profiler is None:
            return
        self.profiler.__exit__(None, None, None)
        flops = int(sum(event.flops for event in self.profiler.key_averages() if event.flops > 0))
        self.profiler = None
        self.total += flops
        if self.trainer.history:  # this step's record (finish_step appended it before the optimizer step)
            self.trainer.history[-1]["profiled_flops"] = flops
        if self.trainer.is_world_process_zero():
            print(f"Step {state.global_step}: FLOPs: {flops:,.0f}")


def add_profiled_flops(trainer: Any, steps: int = PROFILED_STEPS) -> ProfiledFlops:
    """Registered before the trainer's StepRecorder, so that the step's line in metrics.jsonl has it."""
    callback = ProfiledFlops(trainer, steps)
    callbacks = trainer.callback_handler.callbacks
    at = next((i for i, c in enumerate(callbacks) if isinstance(c, StepRecorder)), len(callbacks))
    callbacks.insert(at, callback)
    return callback
