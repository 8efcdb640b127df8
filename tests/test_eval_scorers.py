"""Scorers on crafted cases: upstream evaluate.py's semantics, its edge cases, and each deviation."""

import sqlite3
from pathlib import Path

import pytest

from llmjepa.errors import UserError
from llmjepa.evaluation.scorers import (
    ScoreConfig,
    clean_prediction,
    gsm8k_answer,
    gsm8k_correct,
    is_correct,
    nq_open_correct,
    scorer_for,
    spider_correct,
    sqlite_text,
    startswith_correct,
)


def messages(user: str, reference: str) -> list[dict]:
    system = {"role": "system", "content": "s"}
    return [system, {"role": "user", "content": user}, {"role": "assistant", "content": reference}]


# ---- choosing the scorer ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, expected",
    [
        ("gsm8k_test.jsonl", "gsm8k"),
        ("../shared/datasets/gsm8k_test.jsonl", "gsm8k"),  # upstream: whole path -> exact match
        ("/data/spider_test.jsonl", "spider"),
        ("nq_open_test.jsonl", "nq_open"),
        ("hellaswag_test.jsonl", "hellaswag"),
        ("synth_test.jsonl", "synth"),
        ("turk_test.jsonl", "turk"),
        ("arith_eval.jsonl", "exact"),
        ("data/my_gsm8k.jsonl", "exact"),  # the base name must start with the family
    ],
)
def test_scorer_from_base_name(path: str, expected: str) -> None:
    assert scorer_for(path) == expected


def test_dataset_flag_wins_and_is_checked() -> None:
    assert scorer_for("whatever.jsonl", "gsm8k") == "gsm8k"
    with pytest.raises(UserError, match="--dataset"):
        scorer_for("x.jsonl", "mmlu")


def test_clean_prediction_strips_as_upstream() -> None:
    assert clean_prediction("  \n answer \n") == "answer"
    assert clean_prediction("answer <|end|>") == "answer"
    assert clean_prediction("a<|end|>b") == "a<|end|>b"


# ---- gsm8k -----------------------------------------------------------------------------------
REF = "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18"


def test_gsm8k_answer_is_the_last_line_after_a_newline() -> None:
    assert gsm8k_answer(REF) == "18"
    assert gsm8k_answer("#### 18") is None  # upstream's pattern needs the newline before ####
    assert gsm8k_answer("x\n#### 18\nmore") is None  # "$" without MULTILINE: only at the end
    assert gsm8k_answer("x\n#### 17\n#### 18") == "18"
    assert gsm8k_answer("x\n####18") is None  # the space is part of the marker


@pytest.mark.parametrize(
    "prediction, correct",
    [
        ("steps\n#### 18", True),
        ("other steps entirely\n#### 18", True),  # only the final answer counts
        ("steps\n#### 18.0", False),  # strings, as upstream
        ("steps\n#### 17", False),
        ("18", False),  # no #### line
        ("#### 18", False),  # no newline before it (upstream too)
        ("steps\n#### 18 ", False),  # the caller strips the whole prediction first (clean_prediction)
    ],
)
def test_gsm8k_strings(prediction: str, correct: bool) -> None:
    assert gsm8k_correct(prediction, REF) == correct
    assert gsm8k_correct(clean_prediction(prediction + "\n"), REF) == (correct or prediction.endswith("18 "))


def test_gsm8k_numeric_also_compares_numbers() -> None:
    assert gsm8k_correct("a\n#### 18.0", REF, numeric=True)
    assert gsm8k_correct("a\n#### $18", REF, numeric=True)
    assert gsm8k_correct("a\n#### 1,000", "b\n#### 1000", numeric=True)
    assert not gsm8k_correct("a\n#### 1,000", "b\n#### 1000", numeric=False)
    assert not gsm8k_correct("a\n#### 19", REF, numeric=True)
    assert not gsm8k_correct("a\n#### eighteen", REF, numeric=True)


def test_gsm8k_reference_without_answer_is_refused() -> None:
    # upstream: None == None, so a prediction without "####" would count as correct
    with pytest.raises(ValueError, match="####"):
        gsm8k_correct("no answer", "no answer either")


# ---- nq_open ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction, reference, correct",
    [
        ("Guy Henry", "actor Guy Henry's; Guy Henry", True),
        ("Henry", "actor Guy Henry's; Guy Henry", True),  # the piece lies inside the reference
        ("Peter Cushing; Guy Henry", "Guy Henry", True),  # some piece
        ("Guy Henry was the actor", "Guy Henry", False),  # upstream's direction: not reference-in-prediction
        ("guy henry", "Guy Henry", False),  # case matters, as upstream
        ("759;527", "759; 527", False),  # split on "; " only: "759;527" is one piece, not inside
        ("527", "759; 527", True),
    ],
)
def test_nq_open(prediction: str, reference: str, correct: bool) -> None:
    assert nq_open_correct(prediction, reference) == correct


def test_nq_open_empty_prediction_is_wrong() -> None:
    # upstream: "".split("; ") == [""] and "" in reference -> correct
    assert not nq_open_correct("", "Nine")
    assert not nq_open_correct("Eight; ", "Nine")  # an empty piece counts for nothing either
    assert not nq_open_correct("Eight;  ", "Nine Ten")  # nor a blank one
    assert nq_open_correct("Eight; Nine", "Nine")


# ---- exact match, startswith -----------------------------------------------------------------
def test_exact_match_for_synth_turk_and_others() -> None:
    m = messages("lines with dog", "(dog).*")
    for scorer in ("synth", "turk", "exact", "hellaswag"):
        cfg = ScoreConfig(scorer=scorer)
        assert is_correct(cfg, "(dog).*", m)
        assert not is_correct(cfg, "(dog).* ", m)
        assert not is_correct(cfg, "(dog)", m)


def test_startswith() -> None:
    assert startswith_correct("(dog).*<junk after>", "(dog).*")
    assert not startswith_correct("x(dog).*", "(dog).*")


# ---- spider ----------------------------------------------------------------------------------
@pytest.fixture()
def spider_root(tmp_path: Path) -> Path:
    db_dir = tmp_path / "pets"
    db_dir.mkdir()
    conn = sqlite3.connect(db_dir / "pets.sqlite")
    conn.execute("CREATE TABLE pet (id INTEGER, name TEXT, weight REAL, owner TEXT)")
    conn.executemany(
        "INSERT INTO pet VALUES (?, ?, ?, ?)",
        [(1, "Rex", 10.0, "Ann"), (2, "Tom", 4.5, None), (3, "Kit", 3.0, "Bob")],
    )
    conn.commit()
    conn.close()
    return tmp_path


def spider_messages(sql: str, db_id: str = "pets") -> list[dict]:
    return messages(f"For db_id:[{db_id}]\n\nHow many pets?", sql)


def test_spider_equal_results_are_correct(spider_root: Path) -> None:
    cfg = ScoreConfig(scorer="spider", spider_path=str(spider_root))
    ref = spider_messages("SELECT count(*) FROM pet")
    assert is_correct(cfg, "SELECT count(*) FROM pet", ref)
    assert is_correct(cfg, "select COUNT(id) from pet;", ref)  # a different query, the same rows
    assert is_correct(cfg, "SELECT 3", ref)
    assert not is_correct(cfg, "SELECT count(*) FROM pet WHERE id > 1", ref)


def test_spider_row_order_and_values_matter(spider_root: Path) -> None:
    db = spider_root / "pets" / "pets.sqlite"
    ref = "SELECT name FROM pet ORDER BY id"
    assert spider_correct("SELECT name FROM pet ORDER BY id ASC", ref, db)
    assert not spider_correct("SELECT name FROM pet ORDER BY id DESC", ref, db)  # the shell's stdout is ordered
    # the shell prints NULL as "" and 10.0 as "10.0", so these compare as the shell's text would
    assert spider_correct("SELECT ''", "SELECT NULL", db)
    assert spider_correct("SELECT '10.0'", "SELECT weight FROM pet WHERE id = 1", db)
    assert not spider_correct("SELECT 10", "SELECT weight FROM pet WHERE id = 1", db)
    assert sqlite_text(4.5) == "4.5" and sqlite_text(3) == "3" and sqlite_text(None) == ""


def test_spider_invalid_query_is_wrong_even_on_empty_reference(spider_root: Path) -> None:
    db = spider_root / "pets" / "pets.sqlite"
    empty_ref = "SELECT name FROM pet WHERE id > 100"
    # upstream: the shell prints nothing for both, so the invalid query counted as correct
    assert not spider_correct("SELEC name FROM pet", empty_ref, db)
    assert not spider_correct("SELECT nosuchcolumn FROM pet", empty_ref, db)
    assert not spider_correct("", empty_ref, db)
    assert not spider_correct("SELECT 1; SELECT 2", "SELECT 1", db)  # one statement only


def test_spider_is_read_only(spider_root: Path) -> None:
    db = spider_root / "pets" / "pets.sqlite"
    assert not spider_correct("DROP TABLE pet", "SELECT count(*) FROM pet", db)
    assert not spider_correct("DELETE FROM pet", "SELECT count(*) FROM pet", db)
    assert spider_correct("SELECT 3", "SELECT count(*) FROM pet", db)  # still all there


def test_spider_runaway_query_times_out_as_wrong(spider_root: Path) -> None:
    db = spider_root / "pets" / "pets.sqlite"
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    assert not spider_correct(runaway, "SELECT 1", db, timeout_s=0.2)


def test_spider_missing_database_or_bad_reference_is_an_error(spider_root: Path) -> None:
    cfg = ScoreConfig(scorer="spider", spider_path=str(spider_root))
    with pytest.raises(ValueError, match="no spider database"):
        is_correct(cfg, "SELECT 1", spider_messages("SELECT 1", db_id="nosuch"))
    assert not (spider_root / "nosuch").exists()  # upstream's shell would create an empty database
    with pytest.raises(ValueError, match="reference query fails"):
        is_correct(cfg, "SELECT 1", spider_messages("SELECT nope FROM pet"))
    with pytest.raises(ValueError, match="db_id"):
        is_correct(cfg, "SELECT 1", messages("no id here", "SELECT 1"))


SPIDER_TEST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "spider_test.jsonl"


@pytest.mark.skipif(not SPIDER_TEST.is_file(), reason="../shared/datasets/spider_test.jsonl is not present")
def test_every_upstream_spider_example_names_its_database() -> None:
    import json

    from llmjepa.evaluation.scorers import spider_db_id

    ids = [spider_db_id(json.loads(line)["messages"][1]["content"]) for line in SPIDER_TEST.read_text().splitlines()]
    assert len(ids) == 1447 and all(ids) and all("]" not in i for i in ids)
