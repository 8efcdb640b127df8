"""--track_flop's measurement, as upstream finetune.py's ProfilerFLOPCallback: torch.profiler with
with_flops=True around each of the first optimizer steps; the FLOPs it counts (the matrix products and
convolutions it has formulas for) go into the step's record as `profiled_flops`, beside the estimate
`flops` = 6 * parameters * tokens (trainer.py).

Upstream opens the profiler at on_step_begin while global_step < 10 and closes it at on_step_end under
the same test, which the Trainer has already advanced: its 10th profile is never closed. Here a profile
opened is closed at the end of its step.
"""

from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

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
    from .trainer import StepRecorder

    callback = ProfiledFlops(trainer, steps)
    callbacks = trainer.callback_handler.callbacks
    at = next((i for i, c in enumerate(callbacks) if isinstance(c, StepRecorder)), len(callbacks))
    callbacks.insert(at, callback)
    return callback
