"""llmjepa-train's data sources beside --train_file/--data_file: --dataset_name (a local file or folder in any
format datasets reads, a folder written by save_to_disk, or a Hub id), and how rows are read (--messages_field,
--prompt_field, --completion_field, --system_prompt, --formatting_func, --drop_bad_rows).

`datasets` is imported inside the functions that read a source: `llmjepa-train --help` imports none of it.
A local JSONL file given as --dataset_name is read by views/examples.py, so a bad row is named by its line.
"""

import argparse
import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..views.examples import Example, examples_from_records, load_examples, split_examples
from ..views.formats import BadRows, DataFormat

# a local file's datasets builder, by its suffix (a JSONL file is read here, naming lines)
BUILDERS = {".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes at a folder's top
DATASET_ONLY_FLAGS = ("dataset_config", "dataset_eval_split", "dataset_streaming")


def data_format_of(args: argparse.Namespace) -> DataFormat:
    """The flags' DataFormat (the formatting function imported: a bad one fails here, before anything loads)."""
    func = load_formatting_func(args.formatting_func) if getattr(args, "formatting_func", None) else None
    return DataFormat(
        messages_field=args.messages_field,
        prompt_field=args.prompt_field,
        completion_field=args.completion_field,
        system_prompt=args.system_prompt,
        formatting_func=func,
    )


def load_formatting_func(spec: str) -> Callable[[dict], Any]:
    """--formatting_func module:function (an importable module, or a path to a .py file)."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise UserError(f"--formatting_func {spec}: expected module:function (or path/to/file.py:function)")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise UserError(f"--formatting_func {spec}: no such file {module_name}")
            loaded = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as e:  # the user's module: any failure to import it is this flag's
        raise UserError(f"--formatting_func {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserError(f"--formatting_func {spec}: {module_name} has no function {func_name}")
    return func


def is_local(name: str) -> bool:
    """A path rather than a Hub id: it exists, or is spelled as a path (absolute, ./, ~, a file suffix)."""
    path = Path(name).expanduser()
    return path.exists() or os.path.isabs(name) or name.startswith((".", "~")) or path.suffix.lower() in BUILDERS


def check_dataset_args(args: argparse.Namespace, hub_unreachable: Callable[[str, float], str | None]) -> None:
    """--dataset_name and its flags, before anything loads: one source, an existing local path, or a Hub id
    whose host answers within a second (hub_unreachable: commands/train.py's probe)."""
    if not args.dataset_name:
        given = [f"--{f}" for f in DATASET_ONLY_FLAGS if getattr(args, f)]
        given += ["--dataset_split"] * (args.dataset_split != "train")
        if given:
            raise UserError(f"{given[0]} applies to --dataset_name")
        return
    if args.train_file or args.data_file:
        raise UserError("give --dataset_name or --train_file/--data_file, not both")
    if args.dataset_eval_split and (args.eval_split or args.eval_file):
        raise UserError("--dataset_eval_split holds out a split; it contradicts --eval_split and --eval_file")
    if args.dataset_streaming and args.max_train_steps < 1:
        raise UserError("--dataset_streaming has no length to count epochs by: give --max_train_steps")
    if args.dataset_streaming and args.eval_split:
        raise UserError("--dataset_streaming cannot hold out a fraction (--eval_split): give --dataset_eval_split")
    check_dataset_name(args.dataset_name, hub_unreachable)


def check_dataset_name(name: str, hub_unreachable: Callable[[str, float], str | None]) -> None:
    """An existing local file or folder of a known type, or a Hub id whose host answers within a second. Cheap
    (no torch, no transformers): llmjepa-train calls it on the command line before the flags' parser loads."""
    if is_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"--dataset_name {name}: no such file or folder")
        if path.is_file() and path.suffix.lower() not in (*BUILDERS, ".jsonl"):
            known = ", ".join(sorted({*BUILDERS, ".jsonl"}))
            raise UserError(f"--dataset_name {name}: unknown file type {path.suffix or '(none)'} (known: {known})")
        return
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline:
        return  # datasets reads its cache, or fails in load_dataset_examples with one line
    host = hub_unreachable(constants.ENDPOINT, 1.5)
    if host:
        raise UserError(
            f"--dataset_name {name}: no such local file or folder, and {host} is unreachable "
            "(HF_HUB_OFFLINE=1 reads a dataset already in the datasets cache)"
        )


def open_split(args: argparse.Namespace, split: str, streaming: bool = False) -> Any:
    """One split of --dataset_name as a datasets.Dataset (streaming: an IterableDataset)."""
    import datasets

    name = args.dataset_name
    path = Path(name).expanduser()
    if path.exists():  # a local source reads in moments: no progress bars before a bad row's one line
        datasets.disable_progress_bars()
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise UserError(f"--dataset_name {name}: no split {split!r} (splits: {', '.join(saved)})")
                saved = saved[split]
            elif split != "train":
                raise UserError(f"--dataset_name {name}: one dataset saved, no splits; split {split!r} is not in it")
            return saved.to_iterable_dataset() if streaming else saved
        if path.is_file():
            builder = BUILDERS.get(path.suffix.lower(), "json")  # a .jsonl streamed: datasets' json reader
            return datasets.load_dataset(builder, data_files={"train": str(path)}, split=split, streaming=streaming)
        source = str(path) if path.is_dir() else name
        return datasets.load_dataset(source, args.dataset_config, split=split, streaming=streaming)
    except UserError:
        raise
    except Exception as e:  # datasets' own errors (a missing split, an unreadable file, the Hub): one line
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(f"--dataset_name {name}: split {split!r}: {type(e).__name__}: {reason}") from None


def read_split(args: argparse.Namespace, split: str, fmt: DataFormat, bad_rows: BadRows) -> list[Example]:
    name = args.dataset_name
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        if split != "train":
            raise UserError(f"--dataset_name {name}: one JSONL file, no splits; split {split!r} is not in it")
        return load_examples(path, fmt=fmt, bad_rows=bad_rows)
    rows = open_split(args, split)
    label = f"{name} (split {split})"
    return examples_from_records(rows, label, fmt, bad_rows, where=lambda k: f"{name} (split {split}, row {k})")


def load_dataset_examples(
    args: argparse.Namespace, fmt: DataFormat, bad_rows: dict[str, BadRows]
) -> tuple[list[Example], list[Example]]:
    """--dataset_name's train split and held-out examples (--dataset_eval_split, or --eval_split's fraction of
    the train split); bad_rows gets each split's collector by its name."""
    split = args.dataset_split
    bad_rows[split] = BadRows(drop=args.drop_bad_rows)
    train = read_split(args, split, fmt, bad_rows[split])
    held: list[Example] = []
    if args.dataset_eval_split:
        eval_split = args.dataset_eval_split
        bad_rows[eval_split] = BadRows(drop=args.drop_bad_rows)
        held = read_split(args, eval_split, fmt, bad_rows[eval_split])
    elif args.eval_split:
        train, held = split_examples(train, args.eval_split, args.split_seed)
    return train, held


def stream_train_set(args: argparse.Namespace, tokenizer: Any, cfg: Any) -> tuple[Any, list[Example]]:
    """--dataset_streaming: the train split as an EncodedStream (views/streaming.py), its first example read and
    tokenized now (a bad first row, or text rows with a JEPA mode, fail before the model loads), and the eval
    split (--dataset_eval_split) read whole."""
    from ..views.streaming import EncodedStream

    name, split = args.dataset_name, args.dataset_split
    fmt = data_format_of(args)
    where = lambda k: f"{name} (split {split}, row {k})"  # noqa: E731
    stream = EncodedStream(open_split(args, split, streaming=True), tokenizer, cfg, fmt, args.drop_bad_rows, where)
    if next(iter(stream), None) is None:
        raise UserError(f"--dataset_name {name}: split {split!r}: no examples")
    stream.bad_rows, stream.report = BadRows(drop=args.drop_bad_rows), type(stream.report)()  # counted from the start
    held: list[Example] = []
    if args.dataset_eval_split:
        eval_split = args.dataset_eval_split
        held = read_split(args, eval_split, fmt, BadRows(drop=args.drop_bad_rows))
    return stream, held
