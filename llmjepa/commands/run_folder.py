"""One run per output folder: the folder's lock, the run's identity, and which checkpoint a run may resume.

- The lock: `<output_dir>/.llmjepa-train.lock`, a POSIX record lock (fcntl.lockf) held by rank 0 for the
  whole run. The kernel drops it when the process ends in any way (an exception, SIGTERM, kill -9), so a
  lock is never stale; the file itself stays and names the last holder. On NFS (v3 with lockd, v4) the
  server arbitrates the lock between machines; on a filesystem without locks (some FUSE mounts, Lustre
  without `-o flock`) the run says so in one line and goes on unlocked (docs/faults.md).
- The identity: the flags that change the run (every flag but those in NOT_RUN_FLAGS), a fingerprint of
  the training data (sha256 of the files' bytes) and of the model (its name; for a local folder its
  config.json and its weight files' names and sizes). Every checkpoint carries it
  (training/checkpoints.py writes IDENTITY_FILE); `--resume_from_checkpoint` resumes only a checkpoint
  of the same run unless `--allow_changed_flags`, and a new run refuses a folder holding checkpoints.
- The run's record, `<output_dir>/run.json`: the identity, what was dropped, the changes allowed.
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training.checkpoints import IDENTITY_FILE, complete_checkpoints, remove_partial_checkpoints

LOCK_NAME = ".llmjepa-train.lock"
RECORD_NAME = "run.json"
# Flags that do not change what a step computes: where the outputs go, how often they are written, how
# long the run is (raising --max_train_steps or --num_epochs trains further), how it runs (executor,
# attention backend, checkpointing: the same math) and what it prints.
NOT_RUN_FLAGS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "max_train_steps",
        "num_epochs",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "eval_file",
        "debug",
        "dataloader_num_workers",
        "track_flop",
        "eval_accuracy",
        "eval_accuracy_samples",
        "eval_accuracy_max_new_tokens",
        "card_datasets",  # the model card's metadata (commands/share.py)
        "kernel_check",
        "config",
        "allow_changed_flags",
        "overwrite_output_dir",
        "impl",
        "attention_backend",
        "gradient_checkpointing",
        "train_file",  # the data's bytes are the identity, not the path
        "data_file",
        "dataset_name",  # the data's contents are the identity (dataset_digest), not the path
        "training_overrides",  # its run-changing fields are listed one by one (run_flags)
    }
)
# TrainingArguments fields passed through that change no step: outputs, logging, evaluation, the Hub
NOT_RUN_FIELD_PREFIXES = (
    "logging_",
    "save_",
    "eval_",
    "per_device_eval",
    "report_to",
    "run_name",
    "push_to_hub",
    "hub_",
    "dataloader_",
    "disable_tqdm",
    "use_liger_kernel",  # how it runs, as --impl: the same functions through other kernels
    "liger_kernel_config",
    "log_",
    "prediction_loss_only",
    "output_dir",
    "include_",
)


class FolderLock:
    """An exclusive lock on an output folder for this process's lifetime (or until release)."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UserError naming the holder; on a filesystem without locks, warn."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (11, 13):  # EAGAIN / EACCES: another process holds it
                raise UserError(
                    f"--output_dir {self.path.parent}: in use by another run ({self.holder()}); wait for it to end "
                    "or give another --output_dir"
                ) from None
            print(
                f"llmjepa-train: warning: --output_dir {self.path.parent}: this filesystem cannot lock files "
                f"({os.strerror(e.errno or 0)}); a second run in this folder would not be detected",
                file=sys.stderr,
            )
            return
        self.fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        os.fsync(fd)

    def holder(self) -> str:
        """Who holds the lock, as its file says (written by the holder after it took the lock)."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"the lock {self.path} is held; its holder is not recorded yet"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops a POSIX lock
            self.fd = None


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- the run's identity -------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that change the run, by name, as parsed (checked and defaulted)."""
    flags = {key: value for key, value in vars(args).items() if key not in NOT_RUN_FLAGS}
    for key, value in (getattr(args, "training_overrides", None) or {}).items():
        if not key.startswith(NOT_RUN_FIELD_PREFIXES):
            flags[key] = value
    return json.loads(json.dumps(flags, default=str, sort_keys=True))


def data_fingerprint(args: argparse.Namespace) -> dict[str, str]:
    from ..default_model import demo_data_path

    if getattr(args, "dataset_name", None):
        return {"train": dataset_digest(args.dataset_name)}
    source = args.data_file or args.train_file or str(demo_data_path("train"))
    return {"train": "sha256:" + file_digest(source)}


def dataset_digest(name: str) -> str:
    """--dataset_name's contents: a local file's digest, a local folder's (each file's path and digest), or a Hub
    id as it is (its revision in the datasets cache is not read)."""
    path = Path(name).expanduser()
    if path.is_file():
        return "sha256:" + file_digest(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            digest.update(f"{p.relative_to(path)}\0{file_digest(p)}\n".encode())
        return "sha256:" + digest.hexdigest()
    return f"hub:{name}"


def model_fingerprint(name: str) -> dict[str, Any]:
    """The model's name; for a local folder its config and its weight files' names and sizes (the
    weights are not read: a fingerprint must cost nothing next to loading them)."""
    found: dict[str, Any] = {"model_name": name}
    folder = Path(name)
    if folder.is_dir():
        config = folder / "config.json"
        found["config"] = "sha256:" + file_digest(config) if config.is_file() else None
        found["weights"] = {
            p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin")
        }
    return found


def run_identity(args: argparse.Namespace) -> dict[str, Any]:
    identity = {"flags": run_flags(args), "data": data_fingerprint(args), "model": model_fingerprint(args.model_name)}
    identity["id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return identity


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's identity and this run's, one short phrase each."""
    out = []
    old, new = saved.get("flags", {}), current["flags"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"--{key} {shown(old.get(key))} -> {shown(new.get(key))}")
    if saved.get("data") != current["data"]:
        out.append("the training data's contents")
    old_model, new_model = saved.get("model", {}), current["model"]
    if old_model.get("model_name") != new_model.get("model_name"):
        out.append(f"--model_name {old_model.get('model_name')} -> {new_model.get('model_name')}")
    elif old_model != new_model:
        out.append(f"the files of --model_name {new_model.get('model_name')}")
    return out


def shown(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value) if not isinstance(value, str) else repr(value)


def saved_identity(checkpoint: Path) -> dict[str, Any] | None:
    """The identity a checkpoint carries; None for one written before llmjepa recorded it."""
    path = Path(checkpoint) / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: not valid JSON (the checkpoint's run identity is damaged)") from None
    if not isinstance(found, dict) or not isinstance(found.get("flags"), dict):
        raise UserError(f"{path}: not a run identity (expected an object with a 'flags' object)")
    return found


# ---- the folder at the start of a run -----------------------------------------------------------
@dataclass
class RunFolder:
    """The output folder as this run found it: the lock held, the identity, the changes it accepted."""

    output_dir: str
    identity: dict[str, Any]
    lock: FolderLock | None = None
    changes: list[str] = field(default_factory=list)  # --allow_changed_flags: what differs from the checkpoint
    resumed_from: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # source -> examples dropped (prompt too long)
    bad_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> kind -> rows (--drop_bad_rows)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_run_folder(args: argparse.Namespace, main_process: bool) -> RunFolder:
    """Lock the folder (rank 0), compute the identity, clear partial checkpoints a kill left behind."""
    folder = RunFolder(args.output_dir, run_identity(args))
    if main_process:
        folder.lock = FolderLock(args.output_dir)
        folder.lock.acquire()
        remove_partial_checkpoints(args.output_dir)  # safe under the lock: no other run writes here
    return folder


def choose_checkpoint(args: argparse.Namespace, folder: RunFolder) -> str | None:
    """The checkpoint to resume (checked against this run's identity), or None for a new run (which
    refuses a folder holding checkpoints unless --overwrite_output_dir)."""
    wanted = args.resume_from_checkpoint
    if not wanted:
        claim_for_new_run(args, folder)
        return None
    if wanted == "latest":
        found = complete_checkpoints(args.output_dir)
        if not found:
            raise UserError(f"--resume_from_checkpoint latest: no checkpoint-* in {args.output_dir}")
        checkpoint = found[-1]
    else:
        checkpoint = Path(wanted)
    check_same_run(args, folder, checkpoint)
    folder.resumed_from = str(checkpoint)
    return str(checkpoint)


def check_same_run(args: argparse.Namespace, folder: RunFolder, checkpoint: Path) -> None:
    saved = saved_identity(checkpoint)
    flag = f"--resume_from_checkpoint {args.resume_from_checkpoint}"
    if saved is None:
        if args.resume_from_checkpoint == "latest" and not args.allow_changed_flags:
            raise UserError(
                f"{flag}: {checkpoint} records no run identity (written by an older llmjepa), so it may be "
                "another run's: name it explicitly, or add --allow_changed_flags"
            )
        print(f"llmjepa-train: warning: {checkpoint} records no run identity; resuming it unchecked", file=sys.stderr)
        return
    changes = identity_differences(saved, folder.identity)
    if changes and not args.allow_changed_flags:
        raise UserError(
            f"{flag}: {checkpoint} is a checkpoint of another run; it differs in: {'; '.join(changes)} "
            "(give the same flags, another --output_dir, or --allow_changed_flags)"
        )
    folder.changes = changes


def claim_for_new_run(args: argparse.Namespace, folder: RunFolder) -> None:
    found = complete_checkpoints(args.output_dir)
    if not found:
        return
    if not args.overwrite_output_dir:
        names = ", ".join(p.name for p in found[-3:])
        raise UserError(
            f"--output_dir {args.output_dir} holds checkpoints of an earlier run ({names}); resume with "
            "--resume_from_checkpoint latest, clear them with --overwrite_output_dir, or give another --output_dir"
        )
    if folder.lock is not None:  # rank 0 clears; the others only read
        for path in found:
            shutil.rmtree(path)
        for name in (RECORD_NAME, "metrics.jsonl"):
            Path(args.output_dir, name).unlink(missing_ok=True)
        print(f"llmjepa-train: --overwrite_output_dir: removed {len(found)} checkpoints of the earlier run")


def write_record(folder: RunFolder, steps: int | None = None) -> None:
    """<output_dir>/run.json: this run's identity, where it resumed from, what was dropped or changed. A
    resumed run appends to the record's `sessions`."""
    path = Path(folder.output_dir) / RECORD_NAME
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    sessions = record.get("sessions", []) if isinstance(record.get("sessions"), list) else []
    sessions.append(
        {
            "started": utc_now(),
            "resumed_from": folder.resumed_from,
            "changed": folder.changes,
            "dropped_long_prompts": folder.dropped,
            "dropped_bad_rows": folder.bad_rows,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
    )
    Path(folder.output_dir).mkdir(parents=True, exist_ok=True)
    write_atomically(path, {"identity": folder.identity, "sessions": sessions})


def write_atomically(path: Path, record: dict) -> None:
    """run.json written whole or not at all (a temporary file renamed over it)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temp, path)


def record_stream_counts(folder: RunFolder, stream: Any, source: str, main: bool) -> None:
    """A streamed run's bad rows and dropped prompts, counted as training drew them: one warning line each, and
    into this session of run.json as a run over a whole dataset records them before training; the examples
    truncated (or with fewer step separators) in a warning line each, as a whole dataset's are before training."""
    bad_rows, report = stream.counts()
    if bad_rows.total:
        folder.bad_rows = {**folder.bad_rows, source: dict(bad_rows.counts)}
    if report.dropped:
        folder.dropped = {**folder.dropped, source: report.dropped}
    if not main:
        return
    line = bad_rows.line(source)
    if line:
        print(f"llmjepa-train: warning: {line}")
    if report.dropped:
        print(
            f"llmjepa-train: warning: {source}: {report.dropped} examples dropped: the prompt alone fills --max_length"
        )
    for count, what in (
        (report.truncated, "longer than --max_length, truncated"),
        (report.fewer_steps, "with fewer step separators than --num_prediction_steps (fewer pairs)"),
        (report.fallback, "with no step separator (the answer split at its middle)"),
    ):
        if count:
            print(f"llmjepa-train: warning: {source}: {count} streamed examples {what}")
    path = Path(folder.output_dir) / RECORD_NAME
    record = json.loads(path.read_text())
    record["sessions"][-1].update(dropped_long_prompts=folder.dropped, dropped_bad_rows=folder.bad_rows)
    write_atomically(path, record)


def record_changes_in_metrics(metrics_path: Path, folder: RunFolder, step: int) -> None:
    """--allow_changed_flags: one line in metrics.jsonl at the step resumed from, saying what changed."""
    if not folder.changes:
        return
    print(f"llmjepa-train: warning: resuming {folder.resumed_from} with changes: {'; '.join(folder.changes)}")
    with metrics_path.open("a") as f:
        f.write(json.dumps({"step": step, "event": "changed_flags", "changes": folder.changes}) + "\n")
