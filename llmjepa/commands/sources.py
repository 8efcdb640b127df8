"""llmjepa-train's data sources beside --train_file/--data_file: --dataset_name (a local file or folder in any
format datasets reads, a folder written by save_to_disk, or a Hub id), and how rows are read (--messages_field,
--prompt_field, --completion_field, --system_prompt, --formatting_func, --drop_bad_rows).

Every source a run trains or evaluates on is encoded here, before the model loads (`encode_data`): JSONL files
(--train_file, --data_file, --eval_file, a .jsonl --dataset_name) as tables of their lines, so a bad row is named
by file and line; other sources by datasets' own columns; both through views/encoded_rows.py (datasets.map,
--dataset_num_proc, cached). `datasets` and transformers are imported inside the functions that read a source:
`llmjepa-train --help` and the Hub probe (`check_dataset_name`) import none of them.
"""

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..views.examples import Example, examples_from_records, has_view_fields, load_examples, split_examples
from ..views.formats import BadRows, DataFormat

if TYPE_CHECKING:  # encoded_rows imports transformers: --help and the Hub probe import none of it
    from ..views.encoded_rows import EncodedTable

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
            sys.modules.setdefault(loaded.name, module)  # datasets.map's processes unpickle the function by name
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
    if args.dataset_streaming and args.dataset_num_proc:
        raise UserError(
            "--dataset_num_proc encodes a whole dataset before training; a stream is encoded as training draws it "
            "(in --dataloader_num_workers processes)"
        )
    if args.dataset_streaming and args.eval_split:
        raise UserError(
            "--eval_split holds out a fraction, and a fraction of a stream is as unbounded as the stream: evaluating "
            "it every --eval_steps would not end; with --dataset_streaming give --dataset_eval_split (read whole)"
        )
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


def row_name(name: str, split: str, k: int) -> str:
    """How row k of a --dataset_name split is named in messages (a function, so map's processes can pickle it)."""
    return f"{name} (split {split}, row {k})"


def encoded_jsonl(
    path: str | Path, fmt: DataFormat, tokenizer: Any, cfg: Any, num_proc: int | None, bad_rows: BadRows
) -> "EncodedTable":
    """A JSONL file encoded (views/encoded_rows.py), its rows named file:line; cached by the file's bytes."""
    from ..views.encoded_rows import RowReader, encode_table, file_fingerprint, jsonl_table

    path = check_jsonl(path)
    reader = RowReader("jsonl", fmt, path=str(path), view_fields=has_view_fields(path))
    return encode_table(jsonl_table(path), tokenizer, cfg, reader, num_proc, file_fingerprint(path), bad_rows)


def check_jsonl(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a JSONL file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path


def encoded_split(
    args: argparse.Namespace, split: str, fmt: DataFormat, tokenizer: Any, cfg: Any, bad_rows: BadRows
) -> "EncodedTable":
    """One split of --dataset_name encoded (a local JSONL file: by its lines), cached by datasets' fingerprint."""
    from ..views.encoded_rows import RowReader, encode_table

    name, jsonl = args.dataset_name, jsonl_dataset(args.dataset_name, split)
    if jsonl is not None:
        return encoded_jsonl(jsonl, fmt, tokenizer, cfg, args.dataset_num_proc, bad_rows)
    reader = RowReader("rows", fmt, name=split_label(name, split), where=partial(row_name, name, split))
    return encode_table(open_split(args, split), tokenizer, cfg, reader, args.dataset_num_proc, bad_rows=bad_rows)


def jsonl_dataset(name: str, split: str) -> Path | None:
    """A --dataset_name that is a local JSONL file (read line by line, rows named by line): its one split is train."""
    path = Path(name).expanduser()
    if not (path.is_file() and path.suffix.lower() == ".jsonl"):
        return None
    if split != "train":
        raise UserError(f"--dataset_name {name}: one JSONL file, no splits; split {split!r} is not in it")
    return path


def read_split(args: argparse.Namespace, split: str, fmt: DataFormat, bad_rows: BadRows) -> list[Example]:
    """One split of --dataset_name as a list of examples (run.load_data's: parity and the benchmarks; a run
    encodes its data with encode_data)."""
    name, jsonl = args.dataset_name, jsonl_dataset(args.dataset_name, split)
    if jsonl is not None:
        return load_examples(jsonl, fmt=fmt, bad_rows=bad_rows)
    where = partial(row_name, name, split)
    return examples_from_records(open_split(args, split), split_label(name, split), fmt, bad_rows, where=where)


def load_dataset_examples(
    args: argparse.Namespace, fmt: DataFormat, bad_rows: dict[str, BadRows]
) -> tuple[list[Example], list[Example]]:
    """--dataset_name's train split and held-out examples as lists (--dataset_eval_split, or --eval_split's
    fraction of the train split); bad_rows gets each split's collector by its name."""
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


@dataclass
class EncodedPart:
    """The examples a run trains or evaluates on: rows of an encoded table (a held-out fraction shares its
    table with the train part), and the source's name for warnings."""

    source: str
    table: "EncodedTable"
    rows: Any  # numpy array of the table's rows, in order


def encode_data(
    args: argparse.Namespace, tokenizer: Any, cfg: Any, bad_rows: dict[str, BadRows]
) -> tuple[EncodedPart | None, EncodedPart | None]:
    """The run's train and held-out examples, encoded: --dataset_name's split (None when streamed: the stream is
    stream_train_set's), --data_file, --train_file (default: the demo data); held out: --dataset_eval_split, an
    --eval_split fraction, or --eval_file. bad_rows gets each source's collector (--drop_bad_rows counts there;
    without it the first bad row is raised, before anything else is encoded)."""
    from ..default_model import demo_data_path
    from ..views.encoded_rows import split_rows

    for given in (args.train_file, args.data_file, args.eval_file):
        if given:
            check_jsonl(given)  # every file there before any is encoded
    fmt = data_format_of(args)
    collect = lambda source: bad_rows.setdefault(source, BadRows(drop=args.drop_bad_rows))  # noqa: E731

    def jsonl_part(path: str) -> EncodedPart:
        table = encoded_jsonl(path, fmt, tokenizer, cfg, args.dataset_num_proc, collect(path))
        return EncodedPart(path, table, table.good_rows(str(Path(path))))

    def split_part(split: str) -> EncodedPart:
        label = split_label(args.dataset_name, split)
        table = encoded_split(args, split, fmt, tokenizer, cfg, collect(label))
        return EncodedPart(args.dataset_name, table, table.good_rows(label))

    train = held = None
    if args.dataset_name:
        train = None if args.dataset_streaming else split_part(args.dataset_split)
        held = split_part(args.dataset_eval_split) if args.dataset_eval_split else None
    else:
        train = jsonl_part(args.data_file or args.train_file or str(demo_data_path("train")))
    if train is not None and args.eval_split and (args.data_file or args.dataset_name) and not held:
        kept, held_rows = split_rows(train.rows, args.eval_split, args.split_seed)
        train, held = EncodedPart(train.source, train.table, kept), EncodedPart(train.source, train.table, held_rows)
    if args.eval_file:
        held = jsonl_part(args.eval_file)
    return train, held


def split_label(name: str, split: str) -> str:
    """The name a --dataset_name split's bad rows are counted under (run.json's dropped_bad_rows)."""
    return f"{name} (split {split})"


def stream_train_set(args: argparse.Namespace, tokenizer: Any, cfg: Any) -> Any:
    """--dataset_streaming: the train split as an EncodedStream (views/streaming.py), its first example read and
    tokenized now (a bad first row, or text rows with a JEPA mode, fail before the model loads); its bad rows and
    dropped prompts are counted as training draws them (EncodedStream.counts)."""
    from ..views.streaming import EncodedStream

    name, split = args.dataset_name, args.dataset_split
    fmt = data_format_of(args)
    where = partial(row_name, name, split)
    stream = EncodedStream(open_split(args, split, streaming=True), tokenizer, cfg, fmt, args.drop_bad_rows, where)
    if next(iter(stream), None) is None:
        raise UserError(f"--dataset_name {name}: split {split!r}: no examples")
    stream.restart_counts()  # counted from the start of training
    return stream
