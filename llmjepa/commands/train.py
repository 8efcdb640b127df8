"""llmjepa-train: upstream finetune.py's and Step-JEPA train.py's flags, one trainer.

    llmjepa-train --train_file data.jsonl --regular --batch_size 4 --max_train_steps 10
    llmjepa-train --train_file data.jsonl --lbd 0 --num_prediction_steps 2 --predictors 1

Defaults follow upstream finetune.py except where a line below says why. A user error prints
one line and exits 2.
"""

import argparse
import math
import os
import re
import sys
import time

from ..errors import EXIT_NOT_FINITE, EXIT_SAVE_FAILED, EXIT_SIGINT, EXIT_USER_ERROR, TrainingStopped, UserError
from ..tokens import MAX_PREDICTORS

# torch, transformers and the layers that use them are imported inside the functions that need them, after the
# flags are parsed: `llmjepa-train --help` and a flag error take a fraction of a second (issue 17).

POSITIVE_INTS = ("batch_size", "grad_accum", "num_epochs", "logging_steps", "eval_steps")
JEPA_ONLY_FLAGS = (
    "additive_mask",
    "jepa_l2",
    "jepa_mse",
    "infonce",
    "front_pred",
    "reverse_pred",
    "isolated_predictors",
    "view_based_jepa",
    "entropy_filter",
)


class OneDefaultFormatter(argparse.HelpFormatter):
    """Each option's help with its default said once: "(default: X)" added where the help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0 and action.default is False:  # a switch: off unless given
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def build_parser(help_only: bool = False) -> argparse.ArgumentParser:
    """llmjepa-train's flags: the dataclasses of commands/arguments.py through HfArgumentParser, then every
    TrainingArguments field and --config (hf_args.py). help_only: the TrainingArguments group read from
    transformers' source (for --help, no torch import) rather than from TrainingArguments itself."""
    from .arguments import flag_parser
    from .hf_args import add_training_arguments, training_fields_from_source

    p = flag_parser(prog="llmjepa-train", description=__doc__.split("\n")[0], formatter_class=OneDefaultFormatter)
    add_training_arguments(p, training_fields_from_source() if help_only else None)  # last: the fields no flag is
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject contradictory flags; fill defaults that depend on other flags."""
    from .sources import check_dataset_args

    check_dataset_args(args, hub_unreachable)  # --dataset_name first: a Hub id that does not answer fails before torch
    if args.regular:
        given = [f"--{f}" for f in JEPA_ONLY_FLAGS if getattr(args, f)]
        given += ["--lbd"] * (args.lbd is not None) + ["--predictors"] * (args.predictors != 0)
        given += ["--num_prediction_steps"] * (args.num_prediction_steps != 0) + ["--jepa_ratio"] * (
            args.jepa_ratio > 0
        )
        if given:
            raise UserError(f"--regular trains without views; it contradicts {', '.join(given)}")
    if not args.lora:
        given = [f for f in ("lora_target_modules", "lora_freeze_new_tokens", "merge_lora") if getattr(args, f)]
        if given:
            raise UserError(f"--{given[0]} applies to --lora")
    if args.lbd is None:
        args.lbd = 0.1
    if args.impl is None:
        from ..execution.fast import fast_path_available  # --impl's default, as the library's (training/factory.py)

        args.impl = "fast" if fast_path_available() else "reference"
    args.attention_backend = attention_backend_choice(args)
    if sum([args.jepa_l2, args.jepa_mse, args.infonce]) > 1:
        raise UserError("choose one of --jepa_l2, --jepa_mse, --infonce")
    if args.train_all and args.upstream_labels:
        raise UserError("--train_all and --upstream_labels choose different labels; give one")
    if args.train_file and args.data_file:
        raise UserError("give --train_file or --data_file, not both")
    if args.eval_split is not None and not (args.data_file or args.dataset_name):
        raise UserError("--eval_split splits --data_file or --dataset_name; with --train_file use --eval_file")
    if args.eval_split is None:  # --dataset_name: no held-out fraction unless asked for
        args.eval_split = 0.0 if args.dataset_name else 0.2
    check_numbers(args)
    check_fork_extras(args)
    if args.num_prediction_steps > 0:
        bad = [f"--{f}" for f in ("additive_mask", "front_pred", "reverse_pred") if getattr(args, f)]
        if bad:
            raise UserError(f"{', '.join(bad)} apply to view-based LLM-JEPA, not --num_prediction_steps")
    elif args.isolated_predictors:
        from ..views.encoding import ISOLATED_NEEDS_STEPS

        raise UserError(ISOLATED_NEEDS_STEPS)
    elif not args.localized_masks or not args.include_last_step_target:
        raise UserError("--no_localized_masks and --omit_last_step_target need --num_prediction_steps >= 1")
    args.step_separator = unescape(args.step_separator)
    if not args.step_separator:
        raise UserError("--step_separator must not be empty")
    from .stp_flags import check_stp_args

    check_stp_args(args)
    check_liger(args)
    if args.regular and args.jepa_layer != -1:
        raise UserError("--regular trains without views; --jepa_layer chooses the layer the views read")
    check_paths(args)
    from .share import check_push

    check_push(args)  # --push_to_hub without a token: exit 2 now, not after training
    return args


def check_fork_extras(args: argparse.Namespace) -> None:
    """The Step-JEPA fork's --view_based_jepa (its N = 1) and --entropy_filter's numbers."""
    from ..views.encoding import ENTROPY_NEEDS_STEPS, ENTROPY_NUMBERS

    if args.view_based_jepa:
        if args.num_prediction_steps > 1:
            raise UserError(
                "--view_based_jepa has one pair (user end -> answer end); it contradicts --num_prediction_steps > 1"
            )
        args.num_prediction_steps = 1
    if args.entropy_filter:
        if args.num_prediction_steps < 2:
            raise UserError(ENTROPY_NEEDS_STEPS)
        if args.entropy_top_k < 1 or args.entropy_context_window < 0:
            raise UserError(ENTROPY_NUMBERS)
    elif args.entropy_top_k != 2 or args.entropy_context_window != 2:
        raise UserError("--entropy_top_k and --entropy_context_window apply to --entropy_filter")
    if args.unmask_user and (args.train_all or args.upstream_labels):
        raise UserError(
            "--unmask_user adds the user content to the answer's labels; --train_all/--upstream_labels train all"
        )


SEED_RANGE = (0, 2**32 - 1)  # numpy's, which transformers.set_seed seeds too


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in its range, before anything is loaded: one line naming the flag."""
    rules: list[tuple[str, bool, str]] = [
        ("learning_rate", args.learning_rate >= 0, "a finite number >= 0"),
        ("lbd", args.lbd >= 0, "a finite number >= 0"),
        ("gamma", args.gamma >= 0, "a finite number >= 0"),
        ("eval_split", 0 <= args.eval_split < 1, "in [0, 1)"),
        ("jepa_ratio", args.jepa_ratio <= 1, "<= 1 (a fraction of microbatches; <= 0: all)"),
        ("dropout", args.dropout is None or 0 <= args.dropout < 1, "in [0, 1)"),
        ("num_prediction_steps", args.num_prediction_steps >= 0, ">= 0"),
        ("predictors", 0 <= args.predictors <= MAX_PREDICTORS, f"in 0..{MAX_PREDICTORS}"),
        ("max_length", args.max_length >= 8, ">= 8"),
        ("max_train_steps", args.max_train_steps == -1 or args.max_train_steps >= 1, ">= 1, or -1 (--num_epochs)"),
        ("save_steps", args.save_steps >= 0, ">= 0 (0: every epoch)"),
        ("debug", args.debug >= 0, ">= 0"),
        ("dataloader_num_workers", args.dataloader_num_workers is None or args.dataloader_num_workers >= 0, ">= 0"),
        ("lora_rank", args.lora_rank >= 1, ">= 1"),
        ("dataset_num_proc", args.dataset_num_proc is None or args.dataset_num_proc >= 1, ">= 1"),
        ("last_token", args.last_token <= -1, "<= -1 (an index from the end)"),
        ("finetune_seed", SEED_RANGE[0] <= args.finetune_seed <= SEED_RANGE[1], f"in {SEED_RANGE[0]}..2**32-1"),
        ("split_seed", SEED_RANGE[0] <= args.split_seed <= SEED_RANGE[1], f"in {SEED_RANGE[0]}..2**32-1"),
    ]
    rules += [(name, getattr(args, name) >= 1, ">= 1") for name in POSITIVE_INTS]
    for name, ok, rule in rules:
        value = getattr(args, name)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not (ok and finite):
            flag = "--seed" if name == "finetune_seed" else f"--{name}"
            raise UserError(f"{flag} {value}: must be {rule}")


def check_paths(args: argparse.Namespace) -> None:
    """Paths of the right kind, before anything is loaded (a missing checkpoint, a directory given
    as a data file, an output folder that is a file)."""
    for flag in ("train_file", "eval_file", "data_file"):
        path = getattr(args, flag)
        if path is None:
            continue
        if os.path.isdir(path):
            raise UserError(f"--{flag} {path}: is a directory; expected a JSONL file")
        if not os.path.isfile(path):
            raise UserError(f"--{flag} {path}: no such file")
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    check_output_dir(args.output_dir)
    resume = args.resume_from_checkpoint
    if resume and resume != "latest":
        if not os.path.isdir(resume):
            raise UserError(f"--resume_from_checkpoint {resume}: no such directory")
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise UserError(f"--resume_from_checkpoint {resume}: not a checkpoint directory (no trainer_state.json)")
    check_model_name(args.model_name)


def check_model_name(name: str) -> None:
    """A local folder, the embedded default, a model in the Hugging Face cache, or a Hub id the Hub can
    be reached for. Otherwise fail now, in a second, rather than after the Hub client's retries."""
    from ..default_model import DEFAULT_MODEL_NAME

    if name == DEFAULT_MODEL_NAME:
        return
    if os.path.isdir(name):
        from .file_checks import check_model_folder

        check_model_folder(name)  # truncated or damaged weights: one line now, not a traceback after loading
        return
    # a local path (a Hub id "org/name" never starts with "." or "~"): say so, rather than let the Hub
    # client report an invalid repo id or try the network
    if os.path.isabs(name) or name.startswith((".", "~")):
        raise UserError(f"--model_name {name}: no such local directory")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # HFValidationError: not of the form "org/name"
        raise UserError(f"--model_name {name}: no such local directory, and not a Hub model id") from None
    if isinstance(cached, str):
        return
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline:
        raise UserError(f"--model_name {name}: no such local directory, and not in the Hugging Face cache (offline)")
    host = hub_unreachable(constants.ENDPOINT)
    if host:
        raise UserError(
            f"--model_name {name}: no such local directory, not in the Hugging Face cache, and {host} is unreachable"
        )


def hub_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """The Hub's host if a TCP connection to it fails within `timeout` seconds, else None (also None behind
    a proxy, which the Hub client uses and a plain socket would not)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return host
    return None


def default_output_dir(args: argparse.Namespace) -> str:
    """runs/<date>-<time>-<mode>, a folder no earlier run wrote (runs/ is git-ignored)."""
    if args.resume_from_checkpoint == "latest":
        raise UserError("--resume_from_checkpoint latest needs --output_dir (by default every run gets a new folder)")
    from ..distributed import launched_world_size

    if launched_world_size() > 1:
        raise UserError("under torchrun give --output_dir: each rank would pick its own default folder")
    from .config import Mode, mode_of

    mode = {Mode.REGULAR: "regular", Mode.STEP_JEPA: f"step-jepa-n{args.num_prediction_steps}"}.get(
        mode_of(args), "jepa"
    )
    base = os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{mode}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def check_output_dir(output_dir: str) -> None:
    """A directory, or a path whose nearest existing ancestor is a writable directory."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir}: is a file, not a directory")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--output_dir {output_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output_dir {output_dir}: {existing} is not writable")


def attention_backend_choice(args: argparse.Namespace) -> str | None:
    """--attention_backend, for --impl fast only: default triton on CUDA, torch on the CPU."""
    import torch

    chosen = args.attention_backend
    if args.impl != "fast":
        if chosen is not None:
            raise UserError(f"--attention_backend {chosen} applies to --impl fast; this run is --impl {args.impl}")
        return None
    from ..execution.fast import default_attention_backend

    cuda = torch.cuda.is_available()
    if chosen is None:  # training on the CPU (--use_cpu) beside a GPU: the PyTorch form
        return default_attention_backend(bool(getattr(args, "training_overrides", {}).get("use_cpu")))
    if chosen == "flex" and not cuda:
        raise UserError(
            "--attention_backend flex trains on CUDA only: torch's FlexAttention has no backward on the CPU"
        )
    if chosen == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("--attention_backend triton needs CUDA (or the Triton interpreter: TRITON_INTERPRET=1)")
    return chosen


def check_liger(args: argparse.Namespace) -> None:
    """--use_liger_kernel (a TrainingArguments field: the Trainer patches the model's RMSNorm, SwiGLU MLP and
    RoPE with Liger's Triton kernels when training starts; both executors then run the patched modules). Checked
    here, so that a missing package or a machine without CUDA is one line before anything loads, not an
    ImportError or a Triton error with its traceback once the model is loaded."""
    overrides = getattr(args, "training_overrides", None) or {}
    if not overrides.get("use_liger_kernel"):
        if overrides.get("liger_kernel_config"):
            raise UserError("--liger_kernel_config configures --use_liger_kernel: add it, or drop the config")
        return
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError('--use_liger_kernel needs the liger-kernel package: pip install -e ".[liger]"')
    import torch

    if (overrides.get("use_cpu") or not torch.cuda.is_available()) and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("--use_liger_kernel: Liger's kernels are Triton GPU kernels; this run has no CUDA device")


def unescape(text: str) -> str:
    """--step_separator '\\n' means a newline: shells pass backslash escapes through as two characters."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def probe_dataset_name(argv: list[str]) -> None:
    """--dataset_name as the command line spells it, checked before the flags' parser is built: building it
    imports transformers and torch (seconds), and an unreachable Hub id should fail at once. check_args checks
    it again after parsing (a --config file may name it)."""
    if any(arg in ("-h", "--help") for arg in argv):
        return
    from .sources import check_dataset_name

    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[1] if arg.startswith("--dataset_name=") else None
        if arg == "--dataset_name" and i + 1 < len(argv):
            name = argv[i + 1]
        if name:
            check_dataset_name(name, hub_unreachable)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .hf_args import parse_with_config  # --config FILE.yaml; TrainingArguments fields -> args.training_overrides

    if any(arg in ("-h", "--help") for arg in (sys.argv[1:] if argv is None else argv)):
        build_parser(help_only=True).parse_args(argv)  # prints the help and exits, torch never imported
    return check_args(parse_with_config(build_parser(), argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        probe_dataset_name(argv)  # a Hub id that does not answer: one line in a second, before transformers loads
        args = parse_args(argv)
        from .run import train

        train(args, argv)
    except UserError as e:
        print(f"llmjepa-train: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        prefix = "error: " if e.exit_code in (EXIT_NOT_FINITE, EXIT_SAVE_FAILED) else ""
        print(f"llmjepa-train: {prefix}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C while loading or writing the final files (during training a handler takes it)
        print("\nllmjepa-train: interrupted outside a training step; nothing saved by this stop", file=sys.stderr)
        return EXIT_SIGINT
    exit_torchrun_worker()
    return 0


def exit_torchrun_worker() -> None:
    """A torchrun worker whose training finished (all ranks past the final barrier, rank 0's files
    written) leaves with os._exit(0). A normal exit runs torch's C++ teardown, which aborted a gloo
    worker now and then after all its work was done ("terminate called without an active exception",
    exit -6; 2 of 2 CI runs on 2026-11-24, one with the process group destroyed first), and torchrun
    then fails the whole launch."""
    if "torch" not in sys.modules:  # nothing was trained (a flag error, --help): no process group
        return
    from ..distributed import initialized

    if not initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
