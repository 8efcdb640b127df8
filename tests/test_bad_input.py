"""Bad input gives one clear line naming the file and line (exit 2, no traceback); odd but valid
input trains and says what it did (truncation, step fallbacks) as warning lines with counts."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmjepa.commands.train import main

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
    flags = ["--max_length", "64", "--drop_long_prompts", "false"]  # by default dropped (tests/test_faults.py)
    rc, _, err = run_cli(capsys, "--train_file", data, *flags, "--output_dir", tmp_path / "out", *TRAIN)
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
        out = tmp_path / f"out{len(mode)}{mode[0]}"  # a folder per run: a new run refuses another's checkpoints
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
        "fallback: one pair, the answer cut at its middle; they contain '. ' (5 of 5): try --step_separator '. '",
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
    "empty separator": (["--step_separator", ""], "--step_separator must not be empty"),
    "eval_split without data_file": (["--eval_split", "0.1"], "--eval_split splits --data_file"),
}


@pytest.mark.parametrize("case", CONTRADICTIONS)
def test_contradictory_flags(capsys: pytest.CaptureFixture, case: str) -> None:
    flags, needle = CONTRADICTIONS[case]
    rc, _, err = run_cli(capsys, *flags)
    assert_one_line_error(rc, err, needle)


# Out-of-range and non-finite values: each refused before data or model is loaded, naming the flag.
BAD_VALUES = {
    "lbd nan": (["--lbd", "nan"], "--lbd nan: must be a finite number >= 0"),
    "lbd negative": (["--lbd", "-1"], "--lbd -1.0: must be a finite number >= 0"),
    "lbd inf": (["--lbd", "inf"], "--lbd inf: must be a finite number >= 0"),
    "gamma nan": (["--gamma", "nan"], "--gamma nan: must be a finite number >= 0"),
    "gamma negative": (["--gamma", "-0.5"], "--gamma -0.5: must be a finite number >= 0"),
    "lr negative": (["--learning_rate", "-1"], "--learning_rate -1.0: must be a finite number >= 0"),
    "lr nan": (["--learning_rate", "nan"], "--learning_rate nan: must be a finite number >= 0"),
    "lr inf": (["--learning_rate", "inf"], "--learning_rate inf: must be a finite number >= 0"),
    "epochs 0": (["--num_epochs", "0"], "--num_epochs 0: must be >= 1"),
    "steps 0": (["--max_train_steps", "0"], "--max_train_steps 0: must be >= 1, or -1"),
    "steps -5": (["--max_train_steps", "-5"], "--max_train_steps -5: must be >= 1, or -1"),
    "batch 0": (["--batch_size", "0"], "--batch_size 0: must be >= 1"),
    "grad_accum 0": (["--grad_accum", "0"], "--grad_accum 0: must be >= 1"),
    "logging 0": (["--logging_steps", "0"], "--logging_steps 0: must be >= 1"),
    "eval_steps 0": (["--eval_steps", "0"], "--eval_steps 0: must be >= 1"),
    "save_steps negative": (["--save_steps", "-1"], "--save_steps -1: must be >= 0"),
    "max_length 4": (["--max_length", "4"], "--max_length 4: must be >= 8"),
    "eval_split 1": (["--data_file", "d.jsonl", "--eval_split", "1"], "--eval_split 1.0: must be in [0, 1)"),
    "eval_split nan": (["--data_file", "d.jsonl", "--eval_split", "nan"], "--eval_split nan: must be in [0, 1)"),
    "ratio above 1": (["--jepa_ratio", "1.5"], "--jepa_ratio 1.5: must be <= 1"),
    "ratio nan": (["--jepa_ratio", "nan"], "--jepa_ratio nan: must be <= 1"),
    "dropout 1": (["--dropout", "1"], "--dropout 1.0: must be in [0, 1)"),
    "dropout nan": (["--dropout", "nan"], "--dropout nan: must be in [0, 1)"),
    "predictors 11": (["--predictors", "11"], "--predictors 11: must be in 0..10"),
    "predictors negative": (["--predictors", "-1"], "--predictors -1: must be in 0..10"),
    "negative steps": (["--num_prediction_steps", "-1"], "--num_prediction_steps -1: must be >= 0"),
    "lora_rank 0": (["--lora_rank", "0"], "--lora_rank 0: must be >= 1"),
    "debug negative": (["--debug", "-1"], "--debug -1: must be >= 0"),
    "last_token 0": (["--last_token", "0"], "--last_token 0: must be <= -1"),
    "seed negative": (["--seed", "-1"], "--seed -1: must be in 0..2**32-1"),
    "split_seed huge": (["--split_seed", str(2**32)], f"--split_seed {2**32}: must be in 0..2**32-1"),
}


@pytest.fixture
def nothing_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the run gets as far as reading data or loading a model."""
    import llmjepa.commands.run

    def loaded(*_: object, **__: object) -> None:
        raise AssertionError("data or model loaded before the flags were checked")

    for name in ("load_data", "load_tokenizer", "load_model_from_args"):
        monkeypatch.setattr(llmjepa.commands.run, name, loaded)


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture, nothing_loaded: None, case: str
) -> None:
    flags, needle = BAD_VALUES[case]
    rc, _, err = run_cli(capsys, *flags, "--output_dir", tmp_path / "out")
    assert_one_line_error(rc, err, needle)


def test_paths_of_the_wrong_kind(tmp_path: Path, capsys: pytest.CaptureFixture, nothing_loaded: None) -> None:
    a_file = write_jsonl(tmp_path / "data.jsonl", [GOOD] * 4)
    out = ["--output_dir", tmp_path / "out"]
    cases = [
        (["--output_dir", a_file], f"--output_dir {a_file}: is a file, not a directory"),
        (["--output_dir", a_file / "sub"], f"--output_dir {a_file / 'sub'}: {a_file} is a file, not a directory"),
        (["--train_file", tmp_path, *out], f"--train_file {tmp_path}: is a directory; expected a JSONL file"),
        (["--eval_file", tmp_path, *out], f"--eval_file {tmp_path}: is a directory; expected a JSONL file"),
        (["--data_file", tmp_path / "no.jsonl", *out], f"--data_file {tmp_path / 'no.jsonl'}: no such file"),
        (
            ["--resume_from_checkpoint", tmp_path / "nope", *out],
            f"--resume_from_checkpoint {tmp_path / 'nope'}: no such directory",
        ),
        (
            ["--resume_from_checkpoint", tmp_path, *out],
            f"--resume_from_checkpoint {tmp_path}: not a checkpoint directory (no trainer_state.json)",
        ),
        (["--resume_from_checkpoint", "latest", *out], f"--resume_from_checkpoint latest: no checkpoint-* in {out[1]}"),
    ]
    for flags, message in cases:
        rc, _, err = run_cli(capsys, *flags)
        assert assert_one_line_error(rc, err) == f"llmjepa-train: error: {message}"


def test_directory_as_data_file_in_the_library(tmp_path: Path) -> None:
    from llmjepa.errors import UserError
    from llmjepa.views.examples import load_examples

    with pytest.raises(UserError, match="is a directory; expected a JSONL file"):
        load_examples(tmp_path)


@pytest.mark.parametrize("relative", [False, True])
def test_model_name_missing_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture, relative: bool) -> None:
    name = "./no_such_model_dir" if relative else str(tmp_path / "no_such_model")
    rc, _, err = run_cli(capsys, "--model_name", name, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"--model_name {name}: no such local directory")


def test_model_name_dir_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run_cli(capsys, "--model_name", tmp_path, "--output_dir", tmp_path / "out", *TRAIN)
    assert_one_line_error(rc, err, f"--model_name {tmp_path}: cannot load")


# ---- non-finite training stops ---------------------------------------------------------------
def poison_from_microbatch(monkeypatch: pytest.MonkeyPatch, first: int, quantity: str) -> None:
    """Make the executor's output non-finite from the `first`-th microbatch on (1-based)."""
    import llmjepa.training.factory

    build = llmjepa.training.factory.make_executor

    def poisoned_executor_for(model: object, pad_token_id: int, options: object, use_cpu: bool = False) -> object:
        executor, calls = build(model, pad_token_id, options, use_cpu), [0]

        def run(model: object, plan: object) -> object:
            calls[0] += 1
            out = executor(model, plan)
            if calls[0] >= first:
                if quantity == "ce_sum":
                    out.ce_sum = out.ce_sum * float("nan")
                else:  # an inf hidden state: a non-finite JEPA term
                    out.hidden = out.hidden * float("inf")
            return out

        run.packs = llmjepa.training.factory.executor_packs(executor)  # the collator packs as for the real one
        return run

    monkeypatch.setattr(llmjepa.training.factory, "make_executor", poisoned_executor_for)


@pytest.mark.parametrize("quantity", ["ce_sum", "hidden"])
def test_non_finite_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, quantity: str
) -> None:
    poison_from_microbatch(monkeypatch, 5, quantity)
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD] * 8)
    out = tmp_path / "out"
    flags = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "8", "--save_steps", "2"]
    flags += ["--predictors", "1"]
    rc, _, err = run_cli(capsys, "--train_file", data, "--output_dir", out, *flags)
    assert rc == 3, err
    [line] = [x for x in err.strip().splitlines() if x.startswith("llmjepa-train")]
    bad = "loss = nan, lm_loss = nan" if quantity == "ce_sum" else "loss = nan, jepa_loss = nan"
    assert line.startswith(f"llmjepa-train: error: step 5: {bad}"), line
    assert line.endswith(
        "training stopped before this step's update, no final model written; "
        f"last good checkpoint: {out / 'checkpoint-4'}"
    ), line
    assert "Traceback" not in err
    assert not (out / "model.safetensors").exists() and not (out / "checkpoint-6").exists()
    # strict JSON: no NaN or Infinity tokens, null for the non-finite values
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for x in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["loss"] is None and all(math.isfinite(r["loss"]) for r in records[:-1])
    # the checkpoint holds finite weights, and resuming from it with the bug gone trains on
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_at_the_first_step_says_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_from_microbatch(monkeypatch, 1, "ce_sum")
    rc, _, err = run_cli(capsys, "--output_dir", tmp_path / "out", *TRAIN)
    assert rc == 3 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("no final model written; no checkpoint was saved before it")


# ---- messages ---------------------------------------------------------------------------------
def test_separator_warning_names_the_separators_found_and_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """gsm8k ends its steps with a single newline: the fallback warning says so, and `--step_separator '\\n'`
    (a backslash escape, as a shell passes it) then finds every step."""

    def answer(text: str) -> str:
        return conversation(USER, {"role": "assistant", "content": text})

    data = write_jsonl(tmp_path / "gsm8k_like.jsonl", [answer("1 + 1 = 2.\nSo 2 + 1 = 3.\n#### 3")] * 4)
    flags = ["--train_file", data, "--num_prediction_steps", "2", "--predictors", "1", *TRAIN]
    rc, stdout, err = run_cli(capsys, *flags, "--output_dir", tmp_path / "a")
    assert rc == 0, err
    assert (
        f"llmjepa-train: warning: {data}: 4 of 4 examples have no step separator; fallback: one pair, the answer "
        "cut at its middle; they contain '\\n' (4 of 4): try --step_separator '\\n'"
    ) in stdout.splitlines(), stdout
    rc, stdout, err = run_cli(capsys, *flags, "--output_dir", tmp_path / "b", "--step_separator", "\\n")
    assert rc == 0, err
    assert "llmjepa-train: warning" not in stdout
    assert {r["pairs"] for r in read_metrics(tmp_path / "b")} == {2 * 2}


def test_truncation_warning_is_ours_alone(tmp_path: Path) -> None:
    """transformers' "will result in indexing errors" would contradict our truncation: not printed."""
    long_answer = {"role": "assistant", "content": " + ".join(["1"] * 1000)}  # 3000 tokens: over the tokenizer's 2048
    data = write_jsonl(tmp_path / "long.jsonl", [GOOD] * 3 + [conversation(USER, long_answer)])
    cmd = [sys.executable, "train.py", "--train_file", str(data), "--max_length", "512", "--regular"]
    cmd += ["--output_dir", str(tmp_path / "out"), *TRAIN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"llmjepa-train: warning: {data}: 1 of 4 examples longer than --max_length 512, truncated" in result.stdout
    assert "indexing errors" not in result.stderr + result.stdout
    assert "sequence length is longer" not in result.stderr + result.stdout


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_missing_model_fails_in_seconds_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, nothing_loaded: None, how: str
) -> None:
    """A relative folder that does not exist, read as a Hub id: no retries against an unreachable Hub."""
    import time

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        expected = "--model_name models/llama: no such local directory, and not in the Hugging Face cache (offline)"
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
        for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.delenv(proxy, raising=False)
        expected = (
            "--model_name models/llama: no such local directory, not in the Hugging Face cache, "
            "and 127.0.0.1 is unreachable"
        )
    started = time.monotonic()
    rc, _, err = run_cli(capsys, "--model_name", "models/llama", "--output_dir", tmp_path / "out")
    assert time.monotonic() - started < 10
    assert assert_one_line_error(rc, err) == f"llmjepa-train: error: {expected}"
