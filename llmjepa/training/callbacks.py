"""Ctrl-C and SIGTERM during training: finish the optimizer step in progress, save a checkpoint, stop.

The first SIGINT or SIGTERM (what SLURM and Kubernetes send before killing a job) only sets a flag;
at the end of the current optimizer step `StopOnSignal` asks the Trainer to save a checkpoint and
stop, and the caller (run.train) prints the command that resumes and exits 128 + the signal's number.
A second signal exits at once (os._exit: nothing saved since the last checkpoint).
"""

import os
import signal
import sys
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    def __init__(self, prog: str = "llmjepa-train") -> None:
        self.prog = prog
        self.signum: int | None = None  # the first signal received, on this rank
        self.stopped_at: int | None = None  # the optimizer step after which training stopped
        self.previous: dict[int, Any] = {}

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

    def agreed_signal(self, device: torch.device) -> int:
        """The signal any rank received (0: none); under torchrun every rank must stop at the same step."""
        mine = self.signum or 0
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return mine
        flag = torch.tensor([mine], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
