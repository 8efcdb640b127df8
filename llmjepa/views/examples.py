"""Reading and checking JSONL data in the upstream format.

One JSON object a line: {"messages": [system?, user, assistant]}. Every problem is a UserError
naming the file and line; blank lines are allowed and skipped (they hold no example).
"""

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, located

ROLE_ORDERS = (("system", "user", "assistant"), ("user", "assistant"))


@dataclass
class Example:
    messages: list[dict]
    source: str  # "file:line", for messages about this example
    text_view: list[dict] | None = None  # hellaswag files: the Text view's messages (field "text")
    code_view: list[dict] | None = None  # and the Code view's (field "code")

    @property
    def assistant(self) -> str:
        return self.messages[-1]["content"]


def parse_line(text: str, path: Path, line: int, view_fields: bool = False) -> Example:
    try:
        obj = json.loads(text.rstrip("\r\n"))  # an error at the line's end names its column, not line 2 column 1
    except json.JSONDecodeError as e:
        raise located(path, line, f"malformed JSON ({e.msg} at column {e.colno})") from None
    example = parse_object(obj, path, line)
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
        raise located(path, line, f'hellaswag file: expected a "{name}" list of messages (the {name} view)')
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise located(path, line, f'"{name}" message {k} needs string "role" and "content"')
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def examples_from_records(records: Iterable[Any], name: str = "train_dataset") -> list[Example]:
    """Examples from in-memory records: a list of dicts, or a datasets.Dataset, each with a "messages"
    list (the library path); checked as the lines of a file are, row k (0-based) named as name[k]."""
    examples = [parse_object(obj, f"{name}[{k}]", None) for k, obj in enumerate(records)]
    if not examples:
        raise UserError(f"{name}: no examples")
    return examples


def parse_object(obj: Any, path: Path | str, line: int | None) -> Example:
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise located(path, line, 'expected an object with a "messages" list')
    messages = obj["messages"]
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise located(path, line, f'message {k} needs string "role" and "content"')
    roles = tuple(m["role"] for m in messages)
    if roles not in ROLE_ORDERS:
        raise located(path, line, f"roles {list(roles)}: expected [system, user, assistant] or [user, assistant]")
    if not messages[-1]["content"].strip():
        raise located(path, line, "empty assistant message")
    if not messages[-2]["content"].strip():
        raise located(path, line, "empty user message")
    source = f"{path}:{line}" if line is not None else str(path)
    return Example(messages=[{"role": m["role"], "content": m["content"]} for m in messages], source=source)


def load_examples(path: str | Path, view_fields: bool | None = None) -> list[Example]:
    """view_fields: read hellaswag's "text"/"code" views (training); None: by the file's name; evaluation,
    which reads "messages" alone, passes False."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a JSONL file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    examples = []
    view_fields = has_view_fields(path) if view_fields is None else view_fields
    with path.open("rb") as f:  # bytes, so that a decoding error can name its line
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # a leading BOM is allowed
            except UnicodeDecodeError as e:
                bad = f"byte 0x{raw[e.start]:02x} at byte {e.start + 1}"
                raise located(path, line, f"not valid UTF-8 ({bad})") from None
            if text.strip():
                examples.append(parse_line(text, path, line, view_fields))
    if not examples:
        raise UserError(f"{path}: no examples")
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
