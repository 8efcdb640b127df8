"""Scoring a generated answer against the reference, as upstream LLM-JEPA's evaluate.py does.

One scorer per dataset family, chosen by `--dataset` or by the input file's base name:

- gsm8k: the text after a final "\\n#### " line of the prediction equals the reference's (as strings;
  `numeric=True` also accepts equal numbers: "1,000" == "1000.0").
- spider: both queries run on `<spider_path>/<db_id>/<db_id>.sqlite`; correct when the rows are equal.
- nq_open: correct when some "; "-separated piece of the prediction lies inside the reference.
- sums (llmjepa's demo data, and any data whose answers end in a number): the last number in the
  prediction equals the last number in the reference, as numbers ("1,000" == "1000.0"); a prediction
  without a number is wrong. Not upstream's: it makes the embedded default's demo scorable.
- hellaswag: the prediction is a letter A-D chosen by the next-token probabilities (see generation.py),
  then exact match.
- code (only by `--dataset code`, never by the file's name: it runs the generated programs): pass@1,
  each program run with the example's tests in a limited process (code_execution.py).
- synth, turk and everything else: exact match.
- `startswith`: the prediction starts with the reference (for untemplated models), reported beside.

Where llmjepa departs from upstream, the function's docstring says so (docs/eval.md lists them all):
an empty nq_open prediction (or piece) is wrong, a gsm8k reference without "#### " is refused,
spider runs read-only with Python's sqlite3 under a time limit and an invalid query is wrong.
"""

import math
import re
import sqlite3
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from ..errors import UserError

SCORERS = ("gsm8k", "spider", "nq_open", "hellaswag", "sums", "synth", "turk", "code", "exact")
# Chosen by the input file's base name: all but "code" (running programs is asked for, never inferred).
BY_NAME = tuple(name for name in SCORERS[:-1] if name != "code")
GSM8K_ANSWER = re.compile(r"\n#### (.+)$")  # upstream's pattern: the last line, after a newline
SPIDER_DB_ID = re.compile(r"For db_id:\[(.+)\]")
NUMBER = re.compile(r"[-+]?\$?(\d[\d,]*(\.\d*)?|\.\d+)")
# A number inside text: digits with thousands commas and a decimal part; "-" only where it is no operator.
NUMBER_IN_TEXT = re.compile(r"(?:(?<![\w)])-)?\d(?:\d|,(?=\d{3}))*(?:\.\d+)?")


def scorer_for(input_file: str, dataset: str | None = None) -> str:
    """`--dataset` when given, else the family the file's base name starts with, else exact match.

    Upstream tests the whole path (`input_file.startswith("gsm8k")`), so `data/gsm8k_test.jsonl`
    falls through to exact match there; llmjepa reads the base name."""
    if dataset is not None:
        if dataset not in SCORERS:
            raise UserError(f"--dataset {dataset}: expected one of {', '.join(SCORERS)}")
        return dataset
    base = Path(input_file).name.lower()
    return next((name for name in BY_NAME if base.startswith(name)), "exact")


def clean_prediction(text: str) -> str:
    """A generated response as upstream keeps it: stripped, a trailing "<|end|>" removed."""
    text = text.strip()
    if text.endswith("<|end|>"):
        text = text[: -len("<|end|>")].strip()
    return text


# ---- gsm8k ----------------------------------------------------------------------------------
def gsm8k_answer(text: str) -> str | None:
    """The text after "\\n#### " on the last line, or None."""
    match = GSM8K_ANSWER.search(text)
    return match.group(1) if match else None


def number_value(text: str) -> float | None:
    """ "$1,000.50" -> 1000.5; None when the text is not one number."""
    text = text.strip().rstrip(".")
    if not NUMBER.fullmatch(text):
        return None
    return float(text.replace("$", "").replace(",", ""))


def gsm8k_correct(prediction: str, reference: str, numeric: bool = False) -> bool:
    """Upstream compares the two answers as strings. Its `None == None` (neither has a "#### " line)
    counts as correct; here the reference must have one (evaluate.py refuses the file otherwise),
    so a prediction without one is wrong."""
    want, got = gsm8k_answer(reference), gsm8k_answer(prediction)
    if want is None:
        raise ValueError(f"gsm8k reference without a final '\\n#### ' line: {reference[-60:]!r}")
    if got is None:
        return False
    if got == want:
        return True
    if numeric:
        a, b = number_value(got), number_value(want)
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return False


# ---- sums (the demo data) ------------------------------------------------------------------------
def last_number(text: str) -> float | None:
    """The value of the last number in the text ("... 3 + 4 = 7. The answer is 7." -> 7.0), or None."""
    numbers = NUMBER_IN_TEXT.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def sums_correct(prediction: str, reference: str) -> bool:
    """The last numbers of prediction and reference are equal. A reference without a number is refused
    (ValueError; evaluate.py checks every reference before generating)."""
    want = last_number(reference)
    if want is None:
        raise ValueError(f"sums reference without a number: {reference[-60:]!r}")
    got = last_number(prediction)
    return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


# ---- nq_open --------------------------------------------------------------------------------
def nq_open_correct(prediction: str, reference: str) -> bool:
    """Some "; " piece of the prediction is a substring of the reference (upstream's direction).

    Upstream counts an empty prediction as correct ("" is inside every string), and so any prediction
    with an empty piece ("Paris; "); here empty and blank pieces count for nothing."""
    return any(piece.strip() and piece in reference for piece in prediction.split("; "))


# ---- spider ---------------------------------------------------------------------------------
def spider_db_id(user_message: str) -> str | None:
    match = SPIDER_DB_ID.search(user_message)
    return match.group(1) if match else None


def spider_db_file(spider_path: str, db_id: str) -> Path:
    return Path(spider_path) / db_id / f"{db_id}.sqlite"


def sqlite_text(value: object) -> str:
    """A value as the sqlite3 shell prints it (upstream compares the shell's output): NULL as "",
    a REAL with a decimal point (1.0), text as itself."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.15g}"
        return text if any(c in text for c in ".eEn") else text + ".0"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def run_sql(db_file: Path, sql: str, timeout_s: float) -> tuple[tuple[str, ...], ...]:
    """The rows of one query, read-only (a generated DROP cannot change the database), stopped after
    timeout_s. Raises sqlite3.Error (or sqlite3.Warning) for an invalid or interrupted query."""
    conn = sqlite3.connect(f"file:{quote(str(db_file))}?mode=ro", uri=True)
    try:
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        deadline = time.monotonic() + timeout_s
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        cursor = conn.execute(sql)
        if cursor.description is None:  # an empty string, a comment, a statement that returns no columns
            raise sqlite3.ProgrammingError("not a query")
        rows = cursor.fetchall()
    finally:
        conn.close()
    return tuple(tuple(sqlite_text(v) for v in row) for row in rows)


@lru_cache(maxsize=4096)
def reference_rows(db_file: Path, sql: str, timeout_s: float) -> tuple[tuple[str, ...], ...]:
    return run_sql(db_file, sql, timeout_s)


def spider_correct(prediction: str, reference: str, db_file: Path, timeout_s: float = 30.0) -> bool:
    """Both queries' rows, in order, as the shell's text, are equal.

    Upstream runs the sqlite3 shell and compares its stdout, so an invalid generated query (empty
    stdout) counts as correct whenever the reference returns no rows, and a missing database file is
    created empty; here an invalid or timed-out query is wrong, a missing database or a reference that
    fails is an error (ValueError), and the database is opened read-only."""
    if not db_file.is_file():
        raise ValueError(f"no spider database {db_file}")
    try:
        want = reference_rows(db_file, reference, timeout_s)
    except (sqlite3.Error, sqlite3.Warning) as e:
        raise ValueError(f"the reference query fails on {db_file}: {e}") from None
    try:
        got = run_sql(db_file, prediction, timeout_s)
    except (sqlite3.Error, sqlite3.Warning):
        return False
    return got == want


# ---- one entry point ------------------------------------------------------------------------
@dataclass
class ScoreConfig:
    scorer: str = "exact"
    numeric: bool = False
    spider_path: str | None = None
    spider_timeout_s: float = 30.0


def is_correct(cfg: ScoreConfig, prediction: str, messages: list[dict]) -> bool:
    """Score one (already cleaned) prediction against an example's messages.

    Raises ValueError when the example cannot be scored (the caller names its file and line)."""
    reference = messages[-1]["content"]
    if cfg.scorer == "gsm8k":
        return gsm8k_correct(prediction, reference, cfg.numeric)
    if cfg.scorer == "spider":
        db_id = spider_db_id(next(m["content"] for m in reversed(messages) if m["role"] == "user"))
        if db_id is None:
            raise ValueError('no "For db_id:[...]" in the user message')
        db_file = spider_db_file(cfg.spider_path or ".", db_id)
        return spider_correct(prediction, reference, db_file, cfg.spider_timeout_s)
    if cfg.scorer == "sums":
        return sums_correct(prediction, reference)
    if cfg.scorer == "nq_open":
        return nq_open_correct(prediction, reference)
    if cfg.scorer == "code":  # it needs the example's tests and a sandbox: llmjepa-eval's Scoring runs it
        raise ValueError("code is scored by running it with its tests: llmjepa-eval --dataset code")
    return prediction == reference


def startswith_correct(prediction: str, reference: str) -> bool:
    """Upstream --startswith: the prediction begins with the reference."""
    return prediction.startswith(reference)
