"""A row's format, recognised from its columns as TRL recognises them, and its messages checked.

- conversational: a "messages" list (`--messages_field`) of {"role", "content"} with any number of turns:
  an optional system message first, then user, assistant and tool messages, the last one an assistant turn
  after at least one user turn. View 1 is the whole conversation; the JEPA pair reads the last user turn
  (Text) and the last assistant turn (Code).
- prompt-completion: "prompt" and "completion" (`--prompt_field`, `--completion_field`), both strings (one
  user turn, one assistant turn) or both lists of messages (the prompt's messages, then the completion's;
  only the completion's assistant turns are trained, as TRL's completion-only loss).
- language modeling: "text", a string: plain SFT on every token (--regular only; no turns to make views of).
- anything else: a formatting function (`--formatting_func module:function`) maps each row to one of the
  above: a dict with those columns, a list of messages, or a string (text).

`--system_prompt` puts a system message first where a conversation has none. A row that fits no format, or
whose messages are malformed, is a `BadRow` naming where it is and what kind of fault it is (the kinds are
counted when `--drop_bad_rows` drops them). Nothing here imports datasets or torch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

ROLES = ("system", "user", "assistant", "tool")
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # kept beside role and content (None, as datasets fills: absent)


@dataclass(frozen=True)
class DataFormat:
    """How rows are read: column names, a system prompt, a formatting function (docs/views.md, "Data formats")."""

    messages_field: str = "messages"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    text_field: str = "text"
    system_prompt: str | None = None
    formatting_func: Callable[[dict], Any] | None = None

    def describe(self) -> str:
        return (
            f'a "{self.messages_field}" list, "{self.prompt_field}" and "{self.completion_field}", '
            f'or "{self.text_field}"'
        )


DEFAULT_FORMAT = DataFormat()


class BadRow(UserError):
    """A row no format accepts; `kind` names the fault for --drop_bad_rows' counts."""

    def __init__(self, where: str, kind: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.kind, self.message = where, kind, message


@dataclass
class Row:
    """A row made into messages (or plain text); label_from: the first message whose assistant turns train."""

    messages: list[dict]
    text: str | None = None
    label_from: int = 0
    format: str = "messages"  # messages | prompt-completion | text


def recognize(row: Any, where: str, fmt: DataFormat = DEFAULT_FORMAT) -> Row:
    """The row's format by its columns (a formatting function first, where given), its messages checked."""
    if fmt.formatting_func is not None:
        row = formatted(row, where, fmt.formatting_func)
        fmt = DataFormat(system_prompt=fmt.system_prompt)  # the function's output has the default columns
    if not isinstance(row, dict):
        raise BadRow(where, "not an object", f"expected an object with {fmt.describe()}")
    if fmt.messages_field in row:
        messages = row[fmt.messages_field]
        if not isinstance(messages, list):
            raise BadRow(where, "bad messages", f'"{fmt.messages_field}": expected a list of messages')
        return Row(check_messages(with_system(messages, fmt), where, fmt.messages_field))
    if fmt.prompt_field in row and fmt.completion_field in row:
        return prompt_completion(row[fmt.prompt_field], row[fmt.completion_field], where, fmt)
    if fmt.text_field in row:
        text = row[fmt.text_field]
        if not isinstance(text, str) or not text.strip():
            raise BadRow(where, "empty text", f'"{fmt.text_field}": expected a non-empty string')
        if fmt.system_prompt is not None:
            raise UserError(f"{where}: --system_prompt applies to conversations and prompt-completion rows, not text")
        return Row([], text=text, format="text")
    columns = ", ".join(sorted(map(str, row))) or "none"
    raise BadRow(where, "no known columns", f"expected an object with {fmt.describe()} (columns: {columns})")


def formatted(row: Any, where: str, func: Callable[[dict], Any]) -> Any:
    """A formatting function's output as a row: a dict as it is, a list as messages, a string as text."""
    try:
        out = func(row)
    except Exception as e:  # the user's function: any failure is this row's
        raise BadRow(where, "formatting_func failed", f"--formatting_func raised {type(e).__name__}: {e}") from None
    if isinstance(out, str):
        return {"text": out}
    if isinstance(out, list):
        return {"messages": out}
    if isinstance(out, dict):
        return out
    raise BadRow(
        where,
        "formatting_func failed",
        f"--formatting_func returned {type(out).__name__}: expected a dict, a list of messages or a string",
    )


def with_system(messages: list, fmt: DataFormat) -> list:
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    if fmt.system_prompt is None or first.get("role") == "system":
        return messages
    return [{"role": "system", "content": fmt.system_prompt}, *messages]


def prompt_completion(prompt: Any, completion: Any, where: str, fmt: DataFormat) -> Row:
    names = f'"{fmt.prompt_field}" and "{fmt.completion_field}"'
    if isinstance(prompt, str) and isinstance(completion, str):
        messages = with_system([{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], fmt)
        return Row(check_messages(messages, where, names), format="prompt-completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        prompt = with_system(prompt, fmt)
        if not completion:
            raise BadRow(where, "bad roles", f'"{fmt.completion_field}": an empty list of messages')
        messages = check_messages(prompt + completion, where, names)
        if messages[len(prompt)]["role"] != "assistant":
            raise BadRow(where, "bad roles", f'"{fmt.completion_field}" must begin with an assistant message')
        return Row(messages, label_from=len(prompt), format="prompt-completion")
    kinds = f"{type(prompt).__name__} and {type(completion).__name__}"
    raise BadRow(where, "bad prompt-completion", f"{names}: expected two strings or two lists of messages, got {kinds}")


def check_messages(messages: list, where: str, field: str = "messages") -> list[dict]:
    """{"role", "content"} dicts (and TOOL_KEYS where given); a system message only first; the last an assistant
    turn after a user turn; the last user and assistant turns not empty. A null content (datasets fills absent
    keys with None) is ""."""
    out = []
    for k, m in enumerate(messages):
        content = m.get("content", 0) if isinstance(m, dict) else 0
        content = "" if content is None else content
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise BadRow(where, "bad message", f'message {k} needs string "role" and "content"')
        # tool calls and their results' ids go to the chat template as users' tools write them (TRL does too)
        out.append({"role": m["role"], "content": content} | {k: m[k] for k in TOOL_KEYS if m.get(k) is not None})
    roles = [m["role"] for m in out]
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise BadRow(where, "bad roles", f"roles {roles}: unknown role {unknown[0]!r} (known: {', '.join(ROLES)})")
    if "system" in roles[1:]:
        raise BadRow(where, "bad roles", f"roles {roles}: a system message may come first only")
    if not roles or roles[-1] != "assistant" or "user" not in roles:
        raise BadRow(where, "bad roles", f"roles {roles}: expected a user turn, and an assistant turn last")
    if not out[-1]["content"].strip():
        raise BadRow(where, "empty assistant", "empty assistant message")
    if not out[last_user_index(out)]["content"].strip():
        raise BadRow(where, "empty user", "empty user message")
    return out


def last_user_index(messages: list[dict]) -> int:
    """The index of the last user turn (the Text view's message; the JEPA pair's predictor side)."""
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def assistant_turns(messages: list[dict], label_from: int = 0) -> list[int]:
    """Indices of the assistant turns that train (from label_from on), the last one included."""
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= label_from]


@dataclass
class BadRows:
    """--drop_bad_rows: bad rows counted by kind (the first few named); without it the first one is raised."""

    drop: bool = False
    counts: dict[str, int] | None = None
    first: list[str] | None = None

    def take(self, error: BadRow) -> None:
        if not self.drop:
            raise error
        self.counts = self.counts or {}
        self.first = self.first or []
        self.counts[error.kind] = self.counts.get(error.kind, 0) + 1
        if len(self.first) < SHOWN:
            self.first.append(error.where)

    @property
    def total(self) -> int:
        return sum((self.counts or {}).values())

    def line(self, source: str) -> str | None:
        if not self.total:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        shown = ", ".join(self.first) + (", ..." if self.total > len(self.first) else "")
        return f"{source}: {self.total} bad rows dropped ({kinds}; {shown})"


SHOWN = 3


SPLIT_PREFERENCE = {"train_dataset": ("train",), "eval_dataset": ("validation", "test", "eval")}


def dataset_split(dataset: Any, name: str) -> tuple[Any, str]:
    """A DatasetDict given as the library's train_dataset or eval_dataset: its "train" split (eval: its one
    split, or "validation", "test", "eval"); anything else as it is. Returns the rows and their name."""
    if not (isinstance(dataset, dict) and dataset and all(hasattr(d, "column_names") for d in dataset.values())):
        return dataset, name
    wanted = SPLIT_PREFERENCE[name] if name in SPLIT_PREFERENCE else ()
    chosen = next((s for s in wanted if s in dataset), None)
    if chosen is None and len(dataset) == 1 and name != "train_dataset":
        chosen = next(iter(dataset))
    if chosen is None:
        raise UserError(
            f"{name}: a DatasetDict with splits {', '.join(dataset)}; give {name}=dataset[split] "
            f"(taken by itself: {' or '.join(wanted)})"
        )
    return dataset[chosen], f"{name}[{chosen!r}]"
