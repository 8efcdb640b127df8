"""Checkpoints written atomically: a crash, kill -9 or full disk never leaves a checkpoint-N folder.

The Trainer writes checkpoint-N into `<output_dir>/.partial-checkpoint-N/` (its own writers, unchanged);
then rank 0 writes the run's identity beside them, fsyncs every file and the folder, and renames the
folder to `<output_dir>/checkpoint-N` (one rename on one filesystem: atomic), then fsyncs the output
folder. A folder named checkpoint-N is therefore complete; `.partial-*` folders are what a kill left,
and the next run in the folder removes them (under the folder's lock, commands/run_folder.py).

A failure while writing (ENOSPC, EDQUOT, EIO: torch.save reports these as RuntimeError "failed writing
file", safetensors as its own error) removes the partial folder and raises SaveFailed, which
llmjepa-train turns into exit status 4 and one line naming the last good checkpoint.
"""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import barrier, is_main_process
from ..errors import SaveFailed

IDENTITY_FILE = "llmjepa_run.json"  # the run identity a checkpoint carries (commands/run_folder.py)
PARTIAL_PREFIX = ".partial-"


def checkpoint_number(path: Path) -> int | None:
    name = path.name
    return int(name[11:]) if name.startswith("checkpoint-") and name[11:].isdigit() else None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders with their trainer state, by step (a folder of another name is no checkpoint)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_number(p) is not None and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: checkpoint_number(p) or 0)


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """The .partial-* folders a killed save left; removed (only call under the folder's lock)."""
    folder = Path(output_dir)
    found = sorted(folder.glob(PARTIAL_PREFIX + "*")) if folder.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def fsync_tree(root: Path) -> None:
    """Every file under root, then every folder, to stable storage (a rename is durable only after)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not fsync folders (the files are synced)
        pass
    finally:
        os.close(fd)


def save_atomically(trainer: Any, run_dir: str, step: int, save: Callable[[str], None], identity: dict | None) -> Path:
    """Run `save(staging_run_dir)` (the Trainer's writer, which makes staging_run_dir/checkpoint-N), then
    publish it as run_dir/checkpoint-N. Raises SaveFailed, partial folder removed, if any write fails."""
    name = f"checkpoint-{step}"
    staging = Path(run_dir) / f"{PARTIAL_PREFIX}{name}"
    final = Path(run_dir) / name
    try:
        save(str(staging))
        barrier()  # every rank has written its files (rng state, shards) into staging
        if is_main_process():
            publish(staging / name, final, identity, trainer)
            shutil.rmtree(staging, ignore_errors=True)
        barrier()
    except (OSError, RuntimeError) as e:
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        raise SaveFailed(str(final), e) from e
    except Exception as e:  # safetensors' SafetensorError and the like: still a failed write
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        if type(e).__name__ in ("SafetensorError",):
            raise SaveFailed(str(final), e) from e
        raise
    return final


def publish(written: Path, final: Path, identity: dict | None, trainer: Any) -> None:
    """Identity in, best-checkpoint path fixed, everything fsynced, then one rename into place."""
    if identity is not None:
        (written / IDENTITY_FILE).write_text(json.dumps(identity, indent=1) + "\n")
    fix_best_checkpoint_path(written, final, trainer)
    fsync_tree(written)
    if final.exists():  # the same step saved again (a resumed run's last step): replace it whole
        old = final.with_name(PARTIAL_PREFIX + final.name + ".old")
        os.replace(final, old)
        os.replace(written, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(written, final)
    fsync_dir(final.parent)


def fix_best_checkpoint_path(written: Path, final: Path, trainer: Any) -> None:
    """load_best_model_at_end: the Trainer recorded the staging path when this step is the best; the
    state must name the published folder."""
    best = getattr(trainer.state, "best_model_checkpoint", None)
    if best and PARTIAL_PREFIX in str(best):
        trainer.state.best_model_checkpoint = str(final)
        state = written / "trainer_state.json"
        if state.is_file():
            trainer.state.save_to_json(str(state))
