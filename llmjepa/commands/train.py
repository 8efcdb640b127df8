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

from ..distributed import initialized, launched_world_size
from ..errors import EXIT_NOT_FINITE, EXIT_SIGINT, EXIT_USER_ERROR, TrainingStopped, UserError
from ..execution.fast import fast_path_available  # --impl's default (here since 0.1)
from ..tokens import MAX_PREDICTORS
from ..views.encoding import ENTROPY_NEEDS_STEPS, ENTROPY_NUMBERS, ISOLATED_NEEDS_STEPS

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


def build_parser() -> argparse.ArgumentParser:
    from ..default_model import DEFAULT_MODEL_NAME

    p = argparse.ArgumentParser(
        prog="llmjepa-train", description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = p.add_argument_group("data (upstream)")
    data.add_argument("--train_file", help="JSONL in the messages format (default: the bundled demo sums)")
    data.add_argument("--eval_file")
    data.add_argument("--data_file", help="one file split into train and eval by --eval_split")
    data.add_argument("--eval_split", type=float, default=None, help="fraction held out of --data_file (default 0.2)")
    data.add_argument("--split_seed", type=int, default=42)
    data.add_argument("--max_length", type=int, default=512)
    data.add_argument("--plain", action="store_true", help="no chat template: user <|perception|> assistant <|eot_id|>")
    data.add_argument("--train_all", action="store_true", help="LM labels on every token, not only the answer")
    model = p.add_argument_group("model (upstream)")
    model.add_argument(
        "--model_name",
        default=DEFAULT_MODEL_NAME,
        help=f"a local Hugging Face checkpoint, or {DEFAULT_MODEL_NAME} (embedded, no download)",
    )
    model.add_argument("--lora", action="store_true")
    model.add_argument("--lora_rank", type=int, default=16)
    model.add_argument(
        "--lora_target_modules",
        default=None,
        help="modules LoRA adapts: 'all-linear' or names joined by commas (default: upstream's q,k,v,o,gate,up,down)",
    )
    model.add_argument(
        "--lora_freeze_new_tokens",
        action="store_true",
        help="keep the embedding rows of llmjepa's tokens (predictors, added chat markers) frozen under --lora, as "
        "upstream does (default: they train, through peft's trainable_token_indices)",
    )
    model.add_argument("--merge_lora", action="store_true", help="save the final model with the adapters merged")
    model.add_argument("--pretrain", action="store_true", help="random init from the checkpoint's config")
    train = p.add_argument_group("training (upstream)")
    train.add_argument("--output_dir", help="default: a new folder runs/<date>-<time>-<mode>")
    train.add_argument("--batch_size", type=int, default=4)
    train.add_argument("--grad_accum", type=int, default=4)
    train.add_argument("--learning_rate", type=float, default=2e-5)
    train.add_argument("--num_epochs", type=int, default=3)
    train.add_argument("--eval_steps", type=int, default=10, help="evaluate every N steps when an eval set exists")
    train.add_argument("--finetune_seed", "--seed", dest="finetune_seed", type=int, default=42)
    train.add_argument("--debug", type=int, default=0, help="print every microbatch of the first N optimizer steps")
    train.add_argument("--track_flop", action="store_true", help="add estimated FLOPs to metrics.jsonl")
    train.add_argument("--same_flop", action="store_true", help="divide epochs by the views' cost, as upstream")
    jepa = p.add_argument_group("LLM-JEPA (upstream)")
    jepa.add_argument("--regular", action="store_true", help="plain SFT: no views")
    jepa.add_argument("--predictors", type=int, default=0, help="K predictor tokens (per insertion in multi-step mode)")
    jepa.add_argument("--lbd", type=float, default=None, help="JEPA weight (default 0.1)")
    jepa.add_argument("--gamma", type=float, default=1.0, help="LM weight")
    jepa.add_argument("--last_token", type=int, default=-1, help="embedding index relative to the end (-2 for Llama-3)")
    jepa.add_argument("--additive_mask", action="store_true", help="Text and Code packed in one row")
    jepa.add_argument("--jepa_l2", action="store_true")
    jepa.add_argument("--jepa_mse", action="store_true")
    jepa.add_argument("--infonce", action="store_true")
    jepa.add_argument("--front_pred", action="store_true")
    jepa.add_argument("--reverse_pred", action="store_true")
    jepa.add_argument("--jepa_ratio", type=float, default=-1.0, help="run the views on this fraction of microbatches")
    steps = p.add_argument_group("multi-step Step-JEPA (train.py fork)")
    steps.add_argument("--num_prediction_steps", type=int, default=0, help="N step pairs; 0 = view-based LLM-JEPA")
    steps.add_argument("--no_localized_masks", dest="localized_masks", action="store_false")
    steps.add_argument("--use_localized_masks", dest="localized_masks", action="store_true", help="(the default)")
    steps.add_argument("--isolated_predictors", action="store_true", help="predictors as side branches of view 1")
    steps.add_argument(
        "--include_last_step_target",
        dest="include_last_step_target",
        action="store_true",
        help="(the default) the answer's end is the last target",
    )
    steps.add_argument("--omit_last_step_target", dest="include_last_step_target", action="store_false")
    steps.add_argument("--view_based_jepa", action="store_true", help="N = 1: user turn's end -> the answer's end")
    steps.add_argument("--unmask_user", action="store_true", help="LM loss on the user content too")
    steps.add_argument("--entropy_filter", action="store_true", help="per example, the top-k pairs by entropy")
    steps.add_argument("--entropy_top_k", type=int, default=2, help="pairs --entropy_filter keeps per example")
    steps.add_argument("--entropy_context_window", type=int, default=2, help="tokens each side of a boundary")
    p.set_defaults(localized_masks=True, include_last_step_target=True)
    ours = p.add_argument_group("llmjepa")
    ours.add_argument(
        "--step_separator", default="\n\n", help="text that ends a reasoning step (backslash escapes: '\\n')"
    )
    ours.add_argument(
        "--upstream_labels",
        action="store_true",
        help="upstream's effective labels: every token but the pad id (pad = eos)",
    )
    ours.add_argument(
        "--additive_mask_positions",
        choices=["continue", "reset"],
        default="continue",
        help="Code's positions under --additive_mask: continue after Text (upstream) or restart at 0",
    )
    ours.add_argument(
        "--impl",
        choices=["reference", "fast"],
        default=None,
        help="executor of the views: reference (padded rows, dense masks, upstream semantics) or fast (one "
        "packed stream, Triton attention on CUDA, its PyTorch form on the CPU); default: fast, except on CUDA "
        "without Triton",
    )
    ours.add_argument(
        "--attention_backend",
        choices=["triton", "flex", "torch"],
        default=None,
        help="--impl fast's attention: the Triton kernel, torch's FlexAttention (trains on CUDA only) or the "
        "PyTorch form; default: triton on CUDA, torch on the CPU",
    )
    ours.add_argument(
        "--kernel_check",
        choices=["auto", "strict", "off"],
        default="auto",
        help="--impl fast on CUDA: before the first step, the attention backend against the PyTorch form on a "
        "small layout at the run's dtype and heads (verdict cached per device and versions). auto: on a mismatch "
        "one line, then the PyTorch form; strict: stop with exit status 4; off: no check",
    )
    ours.add_argument("--max_train_steps", type=int, default=-1)
    ours.add_argument("--logging_steps", type=int, default=1)
    ours.add_argument("--save_steps", type=int, default=0, help="checkpoint every N steps (0: every epoch)")
    ours.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=None,
        help="worker processes that collate and pack microbatches; default 2 with CUDA, 0 on the CPU",
    )
    ours.add_argument("--resume_from_checkpoint", help="a checkpoint directory, or 'latest' in --output_dir")
    ours.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="weights' dtype; auto = bfloat16 on CUDA (as upstream), float32 on CPU",
    )
    ours.add_argument(
        "--gradient_checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on with CUDA (as upstream), off on CPU",
    )
    ours.add_argument("--dropout", type=float, default=None, help="override the model's attention dropout")
    ours.add_argument("--eval_accuracy", action="store_true", help="generation accuracy at each evaluation")
    ours.add_argument("--eval_accuracy_samples", type=int, default=32, help="eval examples it generates for")
    ours.add_argument("--eval_accuracy_max_new_tokens", type=int, default=128)
    from .stp_flags import add_stp_arguments

    add_stp_arguments(p)  # group "STP (upstream stp.py)": --linear and its flags (llmjepa/stp.py)
    from .hf_args import add_training_arguments

    add_training_arguments(p)  # last: every TrainingArguments field no flag above is, and --config (hf_args.py)
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject contradictory flags; fill defaults that depend on other flags."""
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
        args.impl = "fast" if fast_path_available() else "reference"
    args.attention_backend = attention_backend_choice(args)
    if sum([args.jepa_l2, args.jepa_mse, args.infonce]) > 1:
        raise UserError("choose one of --jepa_l2, --jepa_mse, --infonce")
    if args.train_all and args.upstream_labels:
        raise UserError("--train_all and --upstream_labels choose different labels; give one")
    if args.train_file and args.data_file:
        raise UserError("give --train_file or --data_file, not both")
    if args.eval_split is not None and not args.data_file:
        raise UserError("--eval_split splits --data_file; with --train_file use --eval_file")
    args.eval_split = 0.2 if args.eval_split is None else args.eval_split
    check_numbers(args)
    check_fork_extras(args)
    if args.num_prediction_steps > 0:
        bad = [f"--{f}" for f in ("additive_mask", "front_pred", "reverse_pred") if getattr(args, f)]
        if bad:
            raise UserError(f"{', '.join(bad)} apply to view-based LLM-JEPA, not --num_prediction_steps")
    elif args.isolated_predictors:
        raise UserError(ISOLATED_NEEDS_STEPS)
    elif not args.localized_masks or not args.include_last_step_target:
        raise UserError("--no_localized_masks and --omit_last_step_target need --num_prediction_steps >= 1")
    args.step_separator = unescape(args.step_separator)
    if not args.step_separator:
        raise UserError("--step_separator must not be empty")
    from .stp_flags import check_stp_args

    check_stp_args(args)
    if args.regular and args.jepa_layer != -1:
        raise UserError("--regular trains without views; --jepa_layer chooses the layer the views read")
    check_paths(args)
    return args


def check_fork_extras(args: argparse.Namespace) -> None:
    """The Step-JEPA fork's --view_based_jepa (its N = 1) and --entropy_filter's numbers."""
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

    if name == DEFAULT_MODEL_NAME or os.path.isdir(name):
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
    if launched_world_size() > 1:
        raise UserError("under torchrun give --output_dir: each rank would pick its own default folder")
    steps = args.num_prediction_steps
    mode = "regular" if args.regular else f"step-jepa-n{steps}" if steps else "jepa"
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
    cuda = torch.cuda.is_available()
    if chosen is None:
        return "triton" if cuda else "torch"
    if chosen == "flex" and not cuda:
        raise UserError(
            "--attention_backend flex trains on CUDA only: torch's FlexAttention has no backward on the CPU"
        )
    if chosen == "triton" and not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("--attention_backend triton needs CUDA (or the Triton interpreter: TRITON_INTERPRET=1)")
    return chosen


def unescape(text: str) -> str:
    """--step_separator '\\n' means a newline: shells pass backslash escapes through as two characters."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .hf_args import parse_with_config  # --config FILE.yaml; TrainingArguments fields -> args.training_overrides

    return check_args(parse_with_config(build_parser(), argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        from .run import train

        train(args, argv)
    except UserError as e:
        print(f"llmjepa-train: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingStopped as e:
        prefix = "error: " if e.exit_code == EXIT_NOT_FINITE else ""
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
    if not initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
