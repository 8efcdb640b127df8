"""llmjepa-train's pass-through of transformers.TrainingArguments, and --config FILE.yaml.

Every TrainingArguments field is a flag beside upstream's (`--report_to tensorboard`, `--lr_scheduler_type
cosine`, `--warmup_steps 0.1`, `--bf16`, `--deepspeed ds.json`, `--fsdp "full_shard auto_wrap"`, ...). Where a field
and an upstream flag mean the same, upstream's name and default win and the field's name is an alias of it
(`--per_device_train_batch_size` is `--batch_size`). Given fields override what run.training_arguments sets.

`--config FILE.yaml` holds `name: value` lines for any flag, upstream's or a field (names without the dashes);
flags on the command line win over the file.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

PREFIX = "ta__"  # namespace attributes of passed-through TrainingArguments fields
ALIASES = {  # TrainingArguments field -> the upstream flag's dest that means the same
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "num_epochs",
    "max_steps": "max_train_steps",
}
REFUSED = {  # fields llmjepa's batches cannot work with
    "remove_unused_columns": "llmjepa's batches are view plans, not model inputs; the Trainer must keep them whole",
    # the Trainer's SIGTERM handler would save mid-step, beside llmjepa's own (training/callbacks.StopOnSignal)
    "enable_jit_checkpoint": "llmjepa already finishes the step in progress and saves a checkpoint on SIGTERM "
    "and Ctrl-C; docs/faults.md",
}


@dataclass
class FieldFlag:
    """One TrainingArguments field as a flag: from HfArgumentParser's action (to parse), or from
    training_args.py's text (for --help, which imports neither torch nor transformers)."""

    names: list[str]
    dest: str
    help: str
    default: Any
    store_false: bool = False  # HfArgumentParser's --no_<field> for a boolean field whose default is True
    type: Any = None
    nargs: Any = None
    const: Any = None
    choices: Any = None
    metavar: Any = None


def json_object(text: str) -> dict:
    """The parser of a dict-typed TrainingArguments field (liger_kernel_config): HfArgumentParser gives it the
    type `dict[str, bool]`, which cannot read a command-line string, so the flag refused every value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON object")
    return value


def training_fields() -> list[FieldFlag]:
    """Every TrainingArguments field as HfArgumentParser makes its flag (imports transformers, and torch)."""
    import typing

    from transformers import HfArgumentParser, TrainingArguments

    flags = []
    for action in HfArgumentParser(TrainingArguments)._actions:
        names = [name for name in action.option_strings if name.startswith("--")]
        if not names or action.dest == "help":
            continue
        store_false = isinstance(action, argparse._StoreFalseAction)
        metavar = action.metavar or (None if action.choices else action.dest.upper())
        flags.append(
            FieldFlag(
                names,
                action.dest,
                action.help or "",
                action.default,
                store_false,
                json_object if dict in (action.type, typing.get_origin(action.type)) else action.type,
                action.nargs,
                action.const,
                action.choices,
                metavar,
            )
        )
    return flags


def training_fields_from_source() -> list[FieldFlag]:
    """training_fields for --help, read from the installed transformers' training_args.py without importing it
    (its import loads torch: seconds). Same names, help and defaults (tests/test_help.py compares the two); the
    values are not converted, as --help parses nothing."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(spec.submodule_search_locations[0], "training_args.py").read_text(encoding="utf-8")
    cls = next(
        node for node in ast.parse(source).body if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments"
    )
    constants: dict[str, list[str]] = {}
    for node in ast.walk(cls):  # e.g. default_optim = "adamw_torch" / "adamw_torch_fused", by torch version
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                constants.setdefault(target.id, []).append(str(node.value.value))
    flags = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)) or node.value is None:
            continue
        name, help_text, default, init = node.target.id, "", node.value, True
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "field":
            keywords = {k.arg: k.value for k in node.value.keywords}
            init = not (isinstance(keywords.get("init"), ast.Constant) and keywords["init"].value is False)
            default = keywords.get("default") or keywords.get("default_factory")
            meta = keywords.get("metadata")
            if isinstance(meta, ast.Dict):
                for key, value in zip(meta.keys, meta.values):
                    if isinstance(key, ast.Constant) and key.value == "help" and isinstance(value, ast.Constant):
                        help_text = value.value
        if not init:
            continue
        shown = shown_default(default, constants)
        names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        boolean = ast.unparse(node.annotation).replace(" ", "") in ("bool", "bool|None", "Optional[bool]")
        flags.append(
            FieldFlag(
                names,
                name,
                help_text,
                shown,
                nargs="?" if boolean else None,
                const=True if boolean else None,
                metavar=None if boolean else name.upper(),
            )
        )
        if boolean and shown is True:
            no = [f"--no_{name}"] + ([f"--no-{name.replace('_', '-')}"] if "_" in name else [])
            flags.append(FieldFlag(no, name, help_text, False, store_false=True))
    return flags


def shown_default(node: Any, class_constants: dict[str, list[str]]) -> Any:
    """A field's default as --help shows it: the literal, a class-level name's values (optim's default depends on
    the torch version), or the expression's text (an enum member)."""
    import ast

    if node is None:
        return None
    if isinstance(node, ast.Name) and node.id in ("list", "dict"):  # default_factory=list / dict
        return [] if node.id == "list" else {}
    if isinstance(node, ast.Name) and node.id in class_constants:  # a class-level name, set per version
        return " or ".join(class_constants[node.id])
    try:
        return ast.literal_eval(node)
    except ValueError:
        text = ast.unparse(node)
        return text.split(".")[-1].lower() if text.count(".") == 1 and text.split(".")[0][0].isupper() else text


def add_training_arguments(parser: argparse.ArgumentParser, fields: list[FieldFlag] | None = None) -> None:
    """A group with every TrainingArguments field that no flag of `parser` already is, and --config.
    fields: training_fields() (the default), or training_fields_from_source() for --help."""
    parser.add_argument("--config", help="a YAML file of `flag: value` lines (any flag below; the command line wins)")
    group = parser.add_argument_group(
        "transformers.TrainingArguments (every field; upstream's and llmjepa's flags above win where both exist)"
    )
    taken = parser._option_string_actions  # argparse keeps no public list of option strings (live: aliases join)
    for field_name, dest in ALIASES.items():
        if f"--{field_name}" not in taken:
            kind = float if field_name == "num_train_epochs" else int
            group.add_argument(
                f"--{field_name}",
                dest=dest,
                type=kind,
                default=argparse.SUPPRESS,
                help=f"the same as --{dest} (default: {taken[f'--{dest}'].default})",
            )
    for flag in training_fields() if fields is None else fields:
        if any(name in taken for name in flag.names):
            continue
        described = " ".join(flag.help.split()) or f"TrainingArguments.{flag.dest}"
        if flag.store_false:
            group.add_argument(
                *flag.names,
                dest=PREFIX + flag.dest,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"{described} (given: {flag.dest} False; default: True)".replace("%", "%%"),
            )
            continue
        group.add_argument(
            *flag.names,
            dest=PREFIX + flag.dest,
            type=flag.type,
            nargs=flag.nargs,
            const=flag.const,
            choices=flag.choices,
            metavar=flag.metavar,
            default=argparse.SUPPRESS,
            help=one_default(described, flag.default).replace("%", "%%"),  # argparse formats %
        )
    if "--warmup_ratio" not in parser._option_string_actions:  # transformers >= 5.x: warmup_steps < 1 is a ratio
        group.add_argument(
            "--warmup_ratio",
            type=float,
            default=argparse.SUPPRESS,
            help="the same as --warmup_steps with a value below 1 (default: 0)",
        )


def one_default(described: str, default: Any) -> str:
    """A field's help with its default said once: transformers' text where it speaks of its default already."""
    return described if "default" in described.lower() else f"{described} (default: {default!s})"


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse argv over the --config file's values; the given TrainingArguments fields go to
    args.training_overrides (a dict), mixed precision and the weights' dtype are checked."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(Path(known.config), parser))
    args = parser.parse_args(argv)
    overrides = {key[len(PREFIX) :]: value for key, value in vars(args).items() if key.startswith(PREFIX)}
    for key in list(vars(args)):
        if key.startswith(PREFIX):
            delattr(args, key)
    if hasattr(args, "warmup_ratio"):
        ratio = args.warmup_ratio
        del args.warmup_ratio
        if not 0 <= ratio < 1:
            raise UserError(f"--warmup_ratio {ratio}: must be in [0, 1)")
        overrides.setdefault("warmup_steps", ratio)
    for field, reason in REFUSED.items():
        if field in overrides:
            raise UserError(f"--{field}: not supported ({reason})")
    if overrides.get("fsdp") and not cuda_available():
        # accelerate builds FSDP for GPUs only: on the CPU the Trainer would train as plain DDP without a word
        raise UserError("--fsdp needs CUDA (accelerate runs FSDP on GPUs only; use torchrun alone for CPU ranks)")
    args.training_overrides = overrides
    check_precision(args, overrides)
    return args


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_precision(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    """--bf16/--fp16: mixed precision over float32 master weights (the Trainer's autocast); --dtype bfloat16:
    the weights themselves in bf16, as upstream. --dtype auto becomes float32 under mixed precision."""
    mixed = [flag for flag in ("bf16", "fp16") if overrides.get(flag)]
    if len(mixed) > 1:
        raise UserError("--bf16 and --fp16 are two mixed precisions; give one")
    if not mixed:
        return
    if args.dtype == "auto":
        args.dtype = "float32"
    elif args.dtype != "float32":
        raise UserError(
            f"--{mixed[0]} is mixed precision over float32 weights; --dtype {args.dtype} makes the weights "
            f"{args.dtype} themselves: give one"
        )


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's `name: value` settings as parser defaults (dest -> value), each checked as its flag would be."""
    import yaml

    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or root is None or not isinstance(root, yaml.MappingNode):
        raise UserError(f"{path}: expected `name: value` lines (a YAML mapping)")
    check_duplicate_keys(root, path)
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in root.value}
    actions = {}
    for action in parser._actions:
        for name in action.option_strings:
            actions[name.lstrip("-").replace("-", "_")] = action
    settings: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path} line {lines.get(str(key), '?')}"
        action = actions.get(str(key).replace("-", "_"))
        if action is None or action.dest in ("help", "config"):
            raise UserError(f"{where}: unknown setting {key!r} (llmjepa-train --help lists them)")
        settings[action.dest] = config_value(action, value, f"{where}: {key}")
    return settings


def check_duplicate_keys(node: Any, path: Path) -> None:
    """YAML takes the last of two equal keys without a word; a config that sets a flag twice is refused."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name, line = str(key.value), key.start_mark.line + 1
            if name in seen:
                raise UserError(f"{path} line {line}: {name!r} is set twice (also on line {seen[name]})")
            seen[name] = line
            check_duplicate_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicate_keys(item, path)


def takes_mapping(action: argparse.Action) -> bool:
    """TrainingArguments fields that accept a dict (typed str, read as JSON or a dict by transformers)."""
    name = action.dest[len(PREFIX) :] if action.dest.startswith(PREFIX) else None
    return name is not None and (name.endswith(("_kwargs", "_config")) or name == "deepspeed")


def yaml_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


def config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A YAML value as the flag's parsed value: booleans for switches, the flag's type (and choices) otherwise;
    mappings only for the fields that take one (fsdp_config, lr_scheduler_kwargs, deepspeed, ...). A value of
    another YAML type than the flag's (a mapping for a path, a boolean for a number) is refused in one line."""
    switch = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
    if isinstance(action, switch) or getattr(action.type, "__name__", None) == "string_to_bool":  # HfArgumentParser
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return not value if isinstance(action, argparse._StoreFalseAction) else value
    if value is None:
        if action.default is None:
            return None
        raise UserError(f"{where}: expected a value, got null (leave the line out for the default)")
    if isinstance(value, dict):
        if not takes_mapping(action):
            raise UserError(f"{where}: expected {expected_kind(action)}, got a mapping")
        return value if action.type in (None, str, json_object) else json.dumps(value)
    if isinstance(value, bool) and action.type not in (None, str) and not takes_booleans(action):
        raise UserError(f"{where}: expected {expected_kind(action)}, got {yaml_kind(value)}")
    if isinstance(value, float) and action.type is int:
        raise UserError(f"{where}: expected an integer, got {yaml_kind(value)}")
    if isinstance(value, (bool, int, float)) and action.type in (None, str) and action.choices is None:
        raise UserError(f"{where}: expected a string, got {yaml_kind(value)} (quote it to mean the text)")
    if isinstance(value, list):
        if action.nargs not in ("+", "*"):
            raise UserError(f"{where}: expected {expected_kind(action)}, got a list")
        return [config_value(action, item, where) for item in value]
    return convert(action, value, where)


def takes_booleans(action: argparse.Action) -> bool:
    """A flag whose type reads "true" as True (--bf16's string_to_bool, --drop_long_prompts)."""
    try:
        return action.type("true") is True
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        return False


def expected_kind(action: argparse.Action) -> str:
    kinds = {int: "an integer", float: "a number"}
    return kinds.get(action.type, "a string" if action.type in (None, str) else "one value")


def convert(action: argparse.Action, value: Any, where: str) -> Any:
    try:
        converted = action.type(str(value)) if action.type is not None else str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise UserError(f"{where}: {value!r} is not valid ({e})") from None
    if action.choices is not None and converted not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return converted
