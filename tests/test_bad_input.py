"""Bad input gives one clear line naming the file and line (exit 2, no traceback); odd but valid
input trains and says what it did (truncation, step fallbacks) as warning lines with counts."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjepa.cli import main

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "Add the numbers."}
USER = {"role": "user", "content": "What is 1 + 1?"}
ANSWER = {"role": "assistant", "content": "1 + 1 = 2.\n\nThe answer is 2."}
GOOD = json.dumps({"messages": [SYSTEM, USER, ANSWER]})
TRAIN = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "2"]


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def with_bad_third_line(tmp_path: Path, bad: str) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", [GOOD, GOOD, bad, GOOD])


def conversation(*messages: dict) -> str:
    return json.dumps({"messages": list(messages)})


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("llmjepa-train: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    return lines[0]


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


BAD_LINES = {
    "malformed JSON": ('{"messages": [', "malformed JSON"),
    "not an object": ("[1, 2]", '"messages"'),
    "no messages": ('{"conversation": []}', '"messages"'),
    "messages not a list": ('{"messages": "hello"}', '"messages"'),
    "missing role": (conversation({"content": "a"}, ANSWER), '"role"'),
    "content not a string": (conversation(USER, {"role": "assistant", "content": 5}), '"content"'),
    "misordered roles": (conversation(ANSWER, USER), "roles ['assistant', 'user']"),
    "unknown role": (conversation({"role": "human", "content": "a"}, ANSWER), "'human'"),
    "system last": (conversation(USER, ANSWER, SYSTEM), "roles"),
    "user only": (conversation(USER), "roles ['user']"),
    "empty assistant": (conversation(USER, {"role": "assistant", "content": " \n"}), "empty assistant"),
    "empty user": (conversation(SYSTEM, {"role": "user", "content": ""}, ANSWER), "empty user"),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    bad, needle = BAD_LINES[case]
    data = with_bad_third_line(tmp_path, bad)
    rc, _, err = run_cli(capsys, "--train_file", data, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"{data}:3:", needle)


def test_invalid_utf8_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "latin1.jsonl"
    latin1 = json.dumps({"messages": [USER, {"role": "assistant", "content": "caf\u00e9"}]}, ensure_ascii=False)
    data.write_bytes(f"{GOOD}\n".encode() + latin1.encode("latin-1") + b"\n")
    rc, _, err = run_cli(capsys, "--train_file", data, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"{data}:2:", "UTF-8")


def test_bad_line_in_eval_and_data_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD] * 4)
    bad = with_bad_third_line(tmp_path, "{oops}")
    rc, _, err = run_cli(capsys, "--train_file", good, "--eval_file", bad, "--output_dir", tmp_path / "a", *TRAIN)
    assert_one_line_error(rc, err, f"{bad}:3:", "malformed JSON")
    rc, _, err = run_cli(capsys, "--data_file", bad, "--output_dir", tmp_path / "b", *TRAIN)
    assert_one_line_error(rc, err, f"{bad}:3:", "malformed JSON")


def test_missing_empty_and_blank_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    for name, needle in (
        ("missing.jsonl", "no such file"),
        ("empty.jsonl", "no examples"),
        ("blank.jsonl", "no examples"),
    ):
        path = tmp_path / name
        rc, _, err = run_cli(capsys, "--train_file", path, "--output_dir", tmp_path / "out", *TRAIN)
        assert_one_line_error(rc, err, f"{path}: ", needle)
    rc, _, err = run_cli(capsys, "--eval_file", tmp_path / "missing.jsonl", "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, str(tmp_path / "missing.jsonl"), "no such file")


def test_fewer_examples_than_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_jsonl(tmp_path / "one.jsonl", [GOOD])
    rc, _, err = run_cli(capsys, "--train_file", data, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, str(data), "fewer than one batch of 2")


def test_prompt_longer_than_max_length_names_the_example(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    long_user = {"role": "user", "content": "What is " + " + ".join(["1"] * 40) + "?"}
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD, conversation(long_user, ANSWER), GOOD])
    rc, _, err = run_cli(capsys, "--train_file", data, "--max_length", "64", "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"{data}:2:", "--max_length 64")


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "windows.jsonl"
    data.write_bytes(("\ufeff" + "\r\n".join([GOOD, "", GOOD, "  ", GOOD, GOOD]) + "\r\n").encode("utf-8"))
    rc, _, err = run_cli(capsys, "--train_file", data, "--output_dir", tmp_path / "out", *TRAIN)
    assert rc == 0, err
    assert len(read_metrics(tmp_path / "out")) == 2


def test_subprocess_error_is_one_line_exit_2_no_traceback(tmp_path: Path) -> None:
    data = with_bad_third_line(tmp_path, '{"messages": [}')
    cmd = [sys.executable, "train.py", "--train_file", str(data), "--output_dir", str(tmp_path / "out"), *TRAIN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"llmjepa-train: error: {data}:3: malformed JSON (Expecting value at column 15)"
    ]


# ---- odd but valid input: trains, and counts what it changed ---------------------------------
def test_truncation_is_counted_and_training_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    long_answer = {"role": "assistant", "content": "1 + 1 = 2. " * 40}
    lines = [GOOD] * 6 + [conversation(SYSTEM, USER, long_answer)] * 3  # 49 and 394 tokens
    data = write_jsonl(tmp_path / "long.jsonl", lines)
    for mode in (["--regular"], ["--predictors", "1"], ["--num_prediction_steps", "2"]):
        out = tmp_path / "out"
        rc, stdout, err = run_cli(
            capsys, "--train_file", data, "--max_length", "64", "--output_dir", out, *TRAIN, *mode
        )
        assert rc == 0, err
        warning = f"llmjepa-train: warning: {data}: 3 of 9 examples longer than --max_length 64, truncated"
        assert warning in stdout.splitlines(), stdout
        records = read_metrics(out)
        assert len(records) == 2 and all(math.isfinite(r["loss"]) for r in records)


def test_missing_steps_fall_back_and_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def answer(text: str) -> str:
        return conversation(SYSTEM, USER, {"role": "assistant", "content": text})

    lines = [answer("1 + 1 = 2.\n\nSo 2.\n\nThe answer is 2.")] * 4  # two separators: two pairs at N = 2
    lines += [answer("1 + 1 = 2.\n\nThe answer is 2.")] * 3  # one: fewer pairs
    lines += [answer("1 + 1 = 2. The answer is 2.")] * 5  # none: the fallback pair
    data = write_jsonl(tmp_path / "steps.jsonl", lines)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        capsys,
        "--train_file",
        data,
        "--num_prediction_steps",
        "2",
        "--output_dir",
        out,
        "--batch_size",
        "4",
        "--grad_accum",
        "3",
        "--max_train_steps",
        "1",
    )
    assert rc == 0, err
    warnings = [line for line in stdout.splitlines() if line.startswith("llmjepa-train: warning: ")]
    assert warnings == [
        f"llmjepa-train: warning: {data}: 3 of 12 examples have fewer than 2 step separators and give fewer pairs",
        f"llmjepa-train: warning: {data}: 5 of 12 examples have no step separator; "
        "fallback: one pair, the answer cut at its middle",
    ]
    [record] = read_metrics(out)
    assert record["pairs"] == 4 * 2 + 3 * 1 + 5 * 1 and math.isfinite(record["loss"])


# ---- flags -----------------------------------------------------------------------------------
def test_unknown_flag_exits_2_naming_it(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--regular", "--no_such_flag", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no_such_flag 3" in err.strip().splitlines()[-1]


CONTRADICTIONS = {
    "regular lbd": (["--regular", "--lbd", "0.5"], "--regular trains without views; it contradicts --lbd"),
    "regular predictors": (["--regular", "--predictors", "2"], "contradicts --predictors"),
    "regular steps": (["--regular", "--num_prediction_steps", "2"], "contradicts --num_prediction_steps"),
    "regular additive": (["--regular", "--additive_mask"], "contradicts --additive_mask"),
    "regular ratio": (["--regular", "--jepa_ratio", "0.5"], "contradicts --jepa_ratio"),
    "l2 mse": (["--jepa_l2", "--jepa_mse"], "choose one of --jepa_l2, --jepa_mse, --infonce"),
    "mse infonce": (["--jepa_mse", "--infonce"], "choose one of"),
    "all upstream": (["--train_all", "--upstream_labels"], "--train_all and --upstream_labels"),
    "additive steps": (["--additive_mask", "--num_prediction_steps", "2"], "--additive_mask apply to view-based"),
    "front steps": (["--front_pred", "--num_prediction_steps", "1"], "--front_pred apply to view-based"),
    "no localized": (["--no_localized_masks"], "--no_localized_masks and --omit_last_step_target need"),
    "omit last": (["--omit_last_step_target"], "need --num_prediction_steps >= 1"),
    "train and data": (["--train_file", "a.jsonl", "--data_file", "b.jsonl"], "--train_file or --data_file"),
    "predictors 11": (["--predictors", "11"], "--predictors in 0..10"),
    "negative steps": (["--num_prediction_steps", "-1"], "--num_prediction_steps must be >= 0"),
    "batch 0": (["--batch_size", "0"], "--batch_size must be >= 1"),
    "ratio above 1": (["--jepa_ratio", "1.5"], "--jepa_ratio must be <= 1"),
    "empty separator": (["--step_separator", ""], "--step_separator must not be empty"),
}


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_contradictory_flags(capsys: pytest.CaptureFixture, case: str) -> None:
    flags, needle = CONTRADICTIONS[case]
    rc, _, err = run_cli(capsys, *flags)
    assert_one_line_error(rc, err, needle)


@pytest.mark.parametrize("relative", [False, True])
def test_model_name_missing_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture, relative: bool) -> None:
    name = "./no_such_model_dir" if relative else str(tmp_path / "no_such_model")
    rc, _, err = run_cli(capsys, "--model_name", name, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"--model_name {name}: no such local directory")


def test_model_name_dir_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run_cli(capsys, "--model_name", tmp_path, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"--model_name {tmp_path}: cannot load")
