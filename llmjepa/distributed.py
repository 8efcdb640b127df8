"""Ranks and processes, in one place: which rank this is, how many there are, sums over all of them, and
the model under its DDP and PEFT wrappers.

Two sources of the same facts: before the Trainer starts the process group, torchrun's environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`); after, torch.distributed itself. On one process every function
here is the identity or its trivial answer.
"""

import os

import torch
import torch.distributed as dist
from torch import nn


def initialized() -> bool:
    """Whether a process group runs (torch.distributed available and initialized)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Ranks of the running process group (1 without one)."""
    return dist.get_world_size() if initialized() else 1


def rank() -> int:
    """This rank in the running process group (0 without one)."""
    return dist.get_rank() if initialized() else 0


def launched_rank() -> int:
    """This rank as torchrun's environment gives it: known before the process group starts."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """Ranks as torchrun's environment gives them (WORLD_SIZE, 1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 under torchrun (set before the Trainer starts the process group), else True."""
    return launched_rank() == 0


def all_reduce_sums(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sum a few numbers over ranks (identity on one process), as float64."""
    if world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int, device: torch.device | None = None) -> int:
    """The largest of an int over ranks (identity on one process)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    """Every rank waits here for the others (nothing without a process group)."""
    if initialized():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP's wrapper (a PeftModel forwards get_output_embeddings and config itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under DDP's and PEFT's wrappers."""
    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model
