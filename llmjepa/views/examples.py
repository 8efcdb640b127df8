"""Reading and checking JSONL data and in-memory rows.

One JSON object a line, in any format views/formats.py recognises (upstream's {"messages": [system?, user,
assistant]}, multi-turn conversations, prompt-completion, text). Every problem is a UserError naming the file
and line (a row: its index); blank lines are allowed and skipped (they hold no example). With a `BadRows`
collector that drops, bad rows are counted by kind instead.
"""

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .formats import DEFAULT_FORMAT, BadRow, BadRows, DataFormat, last_user_index, recognize


@dataclass
class Example:
    messages: list[dict]
    source: str  # "file:line", for messages about this example
    text_view: list[dict] | None = None  # hellaswag files: the Text view's messages (field "text")
    code_view: list[dict] | None = None  # and the Code view's (field "code")
    text: str | None = None  # a "text" row (language modeling, --regular only): no messages
    label_from: int = 0  # prompt-completion lists: the completion's first message (earlier turns are not trained)

    @property
    def assistant(self) -> str:
        return self.messages[-1]["content"]

    @property
    def user_index(self) -> int:
        """The last user turn (the Text view; its end is --view_based_jepa's first boundary)."""
        return last_user_index(self.messages)

    @property
    def user(self) -> str:
        return self.messages[self.user_index]["content"]


def parse_line(
    text: str, path: Path, line: int, view_fields: bool = False, fmt: DataFormat = DEFAULT_FORMAT
) -> Example:
    try:
        obj = json.loads(text.rstrip("\r\n"))  # an error at the line's end names its column, not line 2 column 1
    except json.JSONDecodeError as e:
        raise BadRow(f"{path}:{line}", "malformed JSON", f"malformed JSON ({e.msg} at column {e.colno})") from None
    example = parse_object(obj, path, line, fmt)
    if view_fields:
        example.text_view, example.code_view = (view_messages(obj, name, path, line) for name in ("text", "code"))
    return example


def has_view_fields(path: Path) -> bool:
    """Upstream finetune.py takes Text and Code from the fields "text" and "code" of hellaswag files (its
    test: the path given starts with "hellaswag"; here the file's name does)."""
    return path.name.startswith("hellaswag")


def view_messages(obj: dict, name: str, path: Path, line: int) -> list[dict]:
    """A hellaswag view: a non-empty list of messages; upstream appends the predictors to the first."""
    messages = obj.get(name)
    if not isinstance(messages, list) or not messages:
        where = f"{path}:{line}"
        raise BadRow(where, "bad views", f'hellaswag file: expected a "{name}" list of messages (the {name} view)')
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRow(f"{path}:{line}", "bad views", f'"{name}" message {k} needs string "role" and "content"')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def examples_from_records(
    records: Iterable[Any],
    name: str = "train_dataset",
    fmt: DataFormat = DEFAULT_FORMAT,
    bad_rows: BadRows | None = None,
    where: Any = None,
) -> list[Example]:
    """Examples from in-memory records: a list of dicts, or a datasets.Dataset, in any format views/formats.py
    recognises (the library path, and llmjepa-train's --dataset_name); checked as the lines of a file are, row
    k (0-based) named as name[k] (or as where(k))."""
    bad_rows = BadRows() if bad_rows is None else bad_rows
    examples = []
    for k, obj in enumerate(records):
        try:
            examples.append(parse_object(obj, where(k) if where else f"{name}[{k}]", None, fmt))
        except BadRow as e:
            bad_rows.take(e)
    if not examples:
        raise UserError(f"{name}: no examples" + dropped_note(bad_rows))
    return examples


def dropped_note(bad_rows: BadRows) -> str:
    return f" ({bad_rows.total} bad rows dropped)" if bad_rows.total else ""


def parse_object(obj: Any, path: Path | str, line: int | None, fmt: DataFormat = DEFAULT_FORMAT) -> Example:
    source = f"{path}:{line}" if line is not None else str(path)
    row = recognize(obj, source, fmt)
    return Example(messages=row.messages, source=source, text=row.text, label_from=row.label_from)


def load_examples(
    path: str | Path,
    view_fields: bool | None = None,
    fmt: DataFormat = DEFAULT_FORMAT,
    bad_rows: BadRows | None = None,
) -> list[Example]:
    """view_fields: read hellaswag's "text"/"code" views (training); None: by the file's name; evaluation,
    which reads "messages" alone, passes False. bad_rows: drops and counts bad lines where it drops."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a JSONL file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    examples = []
    bad_rows = BadRows() if bad_rows is None else bad_rows
    view_fields = has_view_fields(path) if view_fields is None else view_fields
    with path.open("rb") as f:  # bytes, so that a decoding error can name its line
        for line, raw in enumerate(f, start=1):
            try:
                try:
                    text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # a leading BOM is allowed
                except UnicodeDecodeError as e:
                    bad = f"byte 0x{raw[e.start]:02x} at byte {e.start + 1}"
                    raise BadRow(f"{path}:{line}", "not UTF-8", f"not valid UTF-8 ({bad})") from None
                if text.strip():
                    examples.append(parse_line(text, path, line, view_fields, fmt))
            except BadRow as e:
                bad_rows.take(e)
    if not examples:
        raise UserError(f"{path}: no examples" + dropped_note(bad_rows))
    return examples


def split_examples(examples: list[Example], eval_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a fraction for evaluation with a seeded shuffle (upstream's --eval_split/--split_seed)."""
    if eval_split <= 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * eval_split)))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
