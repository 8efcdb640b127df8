"""Encoding a whole dataset with `datasets.map` (batched, `num_proc` processes, cached), the result kept in Arrow.

A source's raw rows become one Arrow table whose row k is row k encoded (views/encoding.py `encode`), or the
reason it is not: a bad row (its kind and message, views/formats.py), a prompt that fills max_length (dropped and
counted), or an error that refuses the run (a UserError's line). Nothing is raised inside `map`, so every process
encodes its shard whole and the main process then reports, in row order, exactly what encode_all over a list
would have: the first bad row (or the bad rows counted, with drop), the first refused row, the report's counts.
Bad rows are found first by a cheaper pass (`take_bad_rows`: rows read and recognised, not tokenized), so that
one stops the run before the encoding's minutes.

`EncodedRows` is the map-style dataset the Trainer's data loader indexes: row i is read from the Arrow table and
made into an `Encoded` when the collator's batch asks for it; the examples are never all in Python objects.

Cache: the encoded table is written to `<datasets cache>/llmjepa-encoded/<key>.arrow` (with num_proc: one file a
process), where the key hashes the source's fingerprint (datasets' own, or a JSONL file's bytes and path), the
tokenizer's content, the ViewConfig and DataFormat (the formatting function's code), and the encoding code itself;
`map` reads the files back when they exist. A source without a fingerprint (an in-memory list or Dataset) is
encoded in memory, uncached. docs/views.md, "Encoding", says more.
"""

import gc
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .encoding import Encoded, EncodeReport, ViewConfig, encode
from .examples import Example, dropped_note, parse_line, parse_object
from .formats import DEFAULT_FORMAT, BadRow, BadRows, DataFormat

OK, BAD, DROPPED, REFUSED = 0, 1, 2, 3  # a row's status after encoding
LISTS = ("input_ids", "labels", "text_ids", "code_ids", "boundaries", "content_spans")
NESTED = ("earlier_text_ids", "earlier_code_ids")
NUMBERS = ("assistant_start", "assistant_end", "user_end")
FLAGS = ("truncated", "fallback", "fewer_steps")
CACHE_FOLDER = "llmjepa-encoded"
PROGRESS_FROM = 10_000  # rows: smaller sets encode in moments, without datasets' progress bars


# ---- how a raw row becomes an Example -----------------------------------------------------------------------
@dataclass(frozen=True)
class RowReader:
    """Reads row k of a raw table as an Example (raises BadRow). kind: "jsonl" (columns line, text, utf8_error:
    a JSONL file's lines, named file:line), "json" (column json: the library's records, serialized), "rows" (a
    datasets table's own columns). `name` names rows as name[k], or `where` as where(k)."""

    kind: str
    fmt: DataFormat = DEFAULT_FORMAT
    name: str = "train_dataset"
    where: Callable[[int], str] | None = None
    path: str = ""  # jsonl: the file, as load_examples names it
    view_fields: bool = False  # jsonl: hellaswag's "text"/"code" views

    def example(self, row: dict, k: int) -> Example:
        if self.kind == "jsonl":
            if row["utf8_error"]:
                raise BadRow(f"{self.path}:{row['line']}", "not UTF-8", row["utf8_error"])
            return parse_line(row["text"], Path(self.path), row["line"], self.view_fields, self.fmt)
        where = self.where(k) if self.where else f"{self.name}[{k}]"
        obj = json.loads(row["json"]) if self.kind == "json" else row
        return parse_object(obj, where, None, self.fmt)


def jsonl_table(path: Path) -> Any:
    """A JSONL file's non-blank lines as a datasets table (line number, text, UTF-8 fault): parsed in `map`'s
    processes, named file:line as load_examples names them."""
    import datasets

    lines, texts, faults = [], [], []
    with path.open("rb") as f:  # bytes, so that a decoding error can name its line
        for line, raw in enumerate(f, start=1):
            try:
                text, fault = raw.decode("utf-8-sig" if line == 1 else "utf-8"), ""
            except UnicodeDecodeError as e:
                text, fault = "", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})"
            if fault or text.strip():
                lines.append(line)
                texts.append(text)
                faults.append(fault)
    columns = {
        "line": datasets.Value("int64"),
        "text": datasets.Value("string"),
        "utf8_error": datasets.Value("string"),
    }
    return datasets.Dataset.from_dict(
        {"line": lines, "text": texts, "utf8_error": faults}, features=datasets.Features(columns)
    )


def records_table(records: list) -> Any:
    """The library's list of records as a one-column table of their JSON (rows of any shape, even mixed)."""
    import datasets

    features = datasets.Features({"json": datasets.Value("string")})
    # a value JSON cannot hold (a date in a column no format reads) goes as its repr
    return datasets.Dataset.from_dict({"json": [json.dumps(r, default=repr) for r in records]}, features=features)


# ---- the map function ---------------------------------------------------------------------------------------
def encode_batch(batch: dict, indices: list[int], tokenizer: Any, cfg: ViewConfig, reader: RowReader) -> dict:
    """datasets.map's batched function: each row read, checked and encoded, or its status and message."""
    out: dict[str, list] = {name: [] for name in ("status", "kind", "message", "source", *LISTS, *NESTED)}
    out.update({name: [] for name in (*NUMBERS, *FLAGS)})
    columns = list(batch)
    for i, k in enumerate(indices):
        row = encode_row({c: batch[c][i] for c in columns}, k, tokenizer, cfg, reader)
        for name, values in out.items():
            values.append(row[name])
    return out


def encode_row(row: dict, k: int, tokenizer: Any, cfg: ViewConfig, reader: RowReader) -> dict:
    """Row k's columns: its Encoded fields, or its status and why (nothing raised, so a process finishes its shard)."""
    out = {"status": OK, "kind": "", "message": "", "source": "", **{n: [] for n in (*LISTS, *NESTED)}}
    out.update({n: -1 for n in NUMBERS}, **{n: False for n in FLAGS})
    try:
        example = reader.example(row, k)
    except BadRow as e:
        return {**out, "status": BAD, "kind": e.kind, "message": e.message, "source": e.where}
    out["source"] = example.source
    report = EncodeReport()
    try:
        enc = encode(example, k, tokenizer, cfg, report)
    except UserError as e:  # refuses the run, if no earlier row does: raised in row order afterwards
        return {**out, "status": REFUSED, "message": str(e)}
    if enc is None:
        return {**out, "status": DROPPED}
    out.update({name: getattr(enc, name) for name in (*LISTS, *NUMBERS, "truncated", "fallback")})
    out["content_spans"] = list(enc.content_spans)
    out["earlier_text_ids"] = [text for text, _ in enc.earlier_views]
    out["earlier_code_ids"] = [code for _, code in enc.earlier_views]
    out["fewer_steps"] = bool(report.fewer_steps)
    return out


def encoded_features() -> Any:
    import datasets

    ids = datasets.List(datasets.Value("int32"))
    return datasets.Features(
        {
            "status": datasets.Value("int8"),
            **{name: datasets.Value("string") for name in ("kind", "message", "source")},
            **{name: ids for name in LISTS},
            **{name: datasets.List(ids) for name in NESTED},
            **{name: datasets.Value("int32") for name in NUMBERS},
            **{name: datasets.Value("bool") for name in FLAGS},
        }
    )


# ---- the cache key ------------------------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's content: its vocabulary, merges, added tokens and normalizers (the fast tokenizer's JSON,
    or the slow one's vocabulary), chat template and special tokens; not the folder it came from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, vocab, str(tokenizer.chat_template), json.dumps(tokenizer.special_tokens_map)]
    parts += [str(tokenizer.pad_token_id), str(tokenizer.eos_token_id), str(tokenizer.bos_token_id)]
    return sha256_of(parts)


def code_fingerprint() -> str:
    """The source of the modules whose code decides an encoded row: a changed encoder never reads an old cache."""
    from importlib.metadata import version

    from .. import tokens
    from . import encoding, examples, formats, stp

    modules = (encoding, examples, formats, stp, tokens, sys.modules[__name__])
    try:
        sources = [inspect.getsource(m) for m in modules]
    except OSError:  # installed without its .py files: the version stands for the code
        sources = [version("llmjepa")]
    return sha256_of(sources)


def encoding_key(source_fingerprint: str, tokenizer: Any, cfg: ViewConfig, reader: RowReader) -> str | None:
    """The encoded table's cache key, or None where the row reader cannot be hashed (a formatting function
    datasets' Hasher cannot pickle): then nothing is cached."""
    from datasets.fingerprint import Hasher

    try:
        func = Hasher.hash(reader.fmt.formatting_func) if reader.fmt.formatting_func else ""
    except Exception:  # the user's function: whatever pickling raises means "no stable hash"
        return None
    fmt = {f.name: getattr(reader.fmt, f.name) for f in fields(reader.fmt) if f.name != "formatting_func"}
    names = [reader.where(k) for k in (0, 1)] if reader.where else []  # how rows are named, not the function's code
    reading = [reader.kind, reader.name, reader.path, str(reader.view_fields), repr(fmt), func, *names]
    parts = [source_fingerprint, tokenizer_fingerprint(tokenizer), repr(cfg), *reading, code_fingerprint()]
    return sha256_of(parts)[:32]


def sha256_of(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """A JSONL file's bytes and path (its rows are named by the path): its source fingerprint."""
    digest = hashlib.sha256(str(path.resolve()).encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(key: str | None) -> str | None:
    import datasets

    if key is None:
        return None
    folder = Path(datasets.config.HF_DATASETS_CACHE) / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{key}.arrow")


# ---- encoding a table ---------------------------------------------------------------------------------------
def encode_table(
    table: Any,
    tokenizer: Any,
    cfg: ViewConfig,
    reader: RowReader,
    num_proc: int | None = None,
    source_fingerprint: str | None = None,
    bad_rows: BadRows | None = None,
) -> "EncodedTable":
    """The raw table encoded by datasets.map (batched; num_proc processes), read from the cache where this
    source, tokenizer and every option were encoded before. source_fingerprint: the source's own (default: the
    table's, where it is backed by files; an in-memory table is not cached). bad_rows: takes the bad rows, found by a
    check pass before the encoding (the first raised unless it drops)."""
    import datasets

    bad_rows = BadRows() if bad_rows is None else bad_rows

    if not len(table):  # map gives an empty table no columns
        features = encoded_features()
        empty = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
        return EncodedTable(empty, table, reader, cfg.max_length, bad_rows)
    if source_fingerprint is None and table.cache_files:
        source_fingerprint = table._fingerprint  # datasets' fingerprint of a loaded (file-backed) dataset
    key = encoding_key(source_fingerprint, tokenizer, cfg, reader) if source_fingerprint else None
    path = cache_file(key)
    procs = num_proc if num_proc and num_proc > 1 and len(table) >= num_proc else None
    quiet, bars = len(table) < PROGRESS_FROM, not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    if procs:  # the forked processes' garbage collector then never writes to (so never copies) the parent's objects
        gc.freeze()
    try:
        take_bad_rows(table, reader, bad_rows, key, procs)
        encoded = table.map(
            encode_batch,
            with_indices=True,
            batched=True,
            batch_size=256,
            remove_columns=table.column_names,
            features=encoded_features(),
            fn_kwargs={"tokenizer": tokenizer, "cfg": cfg, "reader": reader},
            num_proc=procs,
            cache_file_name=path,
            load_from_cache_file=path is not None,
            keep_in_memory=path is None,
            new_fingerprint=key,
            desc="llmjepa: encoding",
        )
    finally:
        if procs:
            gc.unfreeze()
        if quiet and bars:
            datasets.enable_progress_bars()
    return EncodedTable(encoded, table, reader, cfg.max_length, bad_rows)


def take_bad_rows(table: Any, reader: RowReader, bad_rows: BadRows, key: str | None, procs: int | None) -> None:
    """The check pass: every row read and checked, without tokenizing (seconds where the encoding takes minutes),
    and the bad ones taken in row order, so that the first bad row stops the run before the encoding starts."""
    import datasets

    path = cache_file(f"{key}-checked" if key else None)
    checked = table.map(
        check_batch,
        with_indices=True,
        batched=True,
        batch_size=1000,
        remove_columns=table.column_names,
        features=datasets.Features(
            {"bad": datasets.Value("bool"), **{c: datasets.Value("string") for c in ("kind", "message", "where")}}
        ),
        fn_kwargs={"reader": reader},
        num_proc=procs,
        cache_file_name=path,
        load_from_cache_file=path is not None,
        keep_in_memory=path is None,
        new_fingerprint=f"{key}-checked" if key else None,
        desc="llmjepa: checking rows",
    )
    for row in np.flatnonzero(checked.data.column("bad").to_numpy(zero_copy_only=False)).tolist():
        fault = checked[row]
        bad_rows.take(BadRow(fault["where"], fault["kind"], fault["message"]))


def check_batch(batch: dict, indices: list[int], reader: RowReader) -> dict:
    """datasets.map's batched function of the check pass: whether each row is bad, and how."""
    out: dict[str, list] = {"bad": [], "kind": [], "message": [], "where": []}
    columns = list(batch)
    for i, k in enumerate(indices):
        try:
            reader.example({c: batch[c][i] for c in columns}, k)
            fault = (False, "", "", "")
        except BadRow as e:
            fault = (True, e.kind, e.message, e.where)
        for values, value in zip(out.values(), fault):
            values.append(value)
    return out


@dataclass
class EncodedTable:
    """A source encoded: the Arrow table of encoded rows and statuses, and the raw rows (to re-read an example)."""

    table: Any  # datasets.Dataset: encode_row's columns
    raw: Any  # datasets.Dataset: the source's rows
    reader: RowReader
    max_length: int
    bad_rows: BadRows  # the check pass's (encode_table)

    def __post_init__(self) -> None:
        self.status = self.table.data.column("status").to_numpy(zero_copy_only=False)

    def example(self, row: int) -> Example:
        return self.reader.example(self.raw[row], row)

    def good_rows(self, name: str) -> np.ndarray:
        """The rows that are examples (the bad ones were taken by the check pass, encode_table)."""
        good = np.flatnonzero(self.status != BAD)
        if not len(good):
            raise UserError(f"{name}: no examples" + dropped_note(self.bad_rows))
        return good

    def encoded(self, rows: np.ndarray) -> tuple["EncodedRows", EncodeReport]:
        """These examples (rows, in order) as encode_all would give them: Encoded.index = the position among
        them; refused rows raise the first one's line; prompts that fill max_length dropped and counted."""
        status = self.status[rows]
        refused = rows[status == REFUSED]
        if len(refused):
            raise UserError(self.table[int(refused[0])]["message"])
        keep = status == OK
        if len(rows) and not keep.any():
            where = self.table[int(rows[0])]["source"].rsplit(":", 1)[0]
            raise UserError(
                f"{where}: all {len(rows)} examples dropped: the prompt alone fills --max_length {self.max_length}"
            )
        kept = rows[keep]
        flag = lambda name: self.table.data.column(name).to_numpy(zero_copy_only=False)[kept]  # noqa: E731
        dropped = rows[status == DROPPED]
        report = EncodeReport(
            examples=len(kept),
            truncated=int(flag("truncated").sum()),
            fewer_steps=int(flag("fewer_steps").sum()),
            fallback=int(flag("fallback").sum()),
            dropped=len(dropped),
            dropped_sources=self.table.data.column("source").take(dropped).to_pylist(),
        )
        return EncodedRows(self, kept, np.flatnonzero(keep)), report


class EncodedRows:
    """The encoded examples of a source (or of its split) as a map-style dataset: item i is an `Encoded` read
    from the Arrow table when the data loader asks for it."""

    def __init__(self, source: EncodedTable, rows: np.ndarray, indices: np.ndarray) -> None:
        self.source, self.rows, self.indices = source, rows, indices

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int | slice) -> Encoded | list[Encoded]:
        if isinstance(i, slice):  # as the list it replaces: trainer.train_dataset[:2]
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.source.table[int(self.rows[i])]
        return Encoded(
            index=int(self.indices[i]),
            source=row["source"],
            **{name: row[name] for name in (*LISTS[:-1], *NUMBERS, "truncated", "fallback")},
            content_spans=tuple(row["content_spans"]),
            earlier_views=list(zip(row["earlier_text_ids"], row["earlier_code_ids"])),
        )

    def __iter__(self) -> Iterator[Encoded]:
        return (self[i] for i in range(len(self)))

    def flagged(self, name: str) -> list[int]:
        """The items whose flag column (truncated, fallback, fewer_steps) is set."""
        column = self.source.table.data.column(name).to_numpy(zero_copy_only=False)
        return np.flatnonzero(column[self.rows]).tolist()

    def example(self, i: int) -> Example:
        """Item i's example, read again from the raw row (for the rare reader of the text: hints, generation)."""
        return self.source.example(int(self.rows[i]))


def split_rows(rows: np.ndarray, eval_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """views/examples.py split_examples over rows: the same seeded shuffle holds out the same examples."""
    from .examples import split_examples

    train, held = split_examples(list(range(len(rows))), eval_split, seed)
    return rows[np.asarray(train, dtype=np.int64)], rows[np.asarray(held, dtype=np.int64)]


def encode_dataset(
    rows: Any,
    tokenizer: Any,
    cfg: ViewConfig,
    fmt: DataFormat = DEFAULT_FORMAT,
    name: str = "train_dataset",
    num_proc: int | None = None,
) -> tuple[EncodedRows, EncodeReport]:
    """The library's train_dataset or eval_dataset encoded: a datasets.Dataset by its own columns (cached where it
    is file-backed), any other iterable of records (a list of dicts) through their JSON. A bad row raises its one
    line (row k named name[k]), as encode_all over examples_from_records would."""
    import datasets

    if isinstance(rows, datasets.Dataset):
        table, reader = rows, RowReader("rows", fmt, name=name)
    else:
        table, reader = records_table(list(rows)), RowReader("json", fmt, name=name)
    encoded = encode_table(table, tokenizer, cfg, reader, num_proc)
    return encoded.encoded(encoded.good_rows(name))
