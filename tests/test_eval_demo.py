"""The embedded default's demo loop (issue 17 items 3, 5, 6): the sums data and scorer, llmjepa-eval's
refusals (predictions of the wrong length, a missing model path) and what it records, default outputs
under runs/."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmjepa.commands import evaluate, parity, sweep
from llmjepa.default_model import demo_data_path
from llmjepa.evaluation.scorers import ScoreConfig, is_correct, last_number, scorer_for, sums_correct

ROOT = Path(__file__).resolve().parent.parent


def demo_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in demo_data_path("eval").read_text().splitlines()[:n]]


def test_demo_data_is_what_the_generator_writes() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--check"], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


def test_demo_eval_is_scored_by_its_final_number() -> None:
    assert scorer_for(str(demo_data_path("eval"))) == "sums"
    messages = demo_rows(1)[0]["messages"]
    reference = messages[-1]["content"]
    answer = int(reference.rsplit(" ", 1)[1].rstrip("."))
    cfg = ScoreConfig("sums")
    assert is_correct(cfg, reference, messages)
    assert is_correct(cfg, f"Some other steps.\n\nThe answer is {answer}.", messages)
    assert is_correct(cfg, f"{answer}.0", messages)  # compared as numbers
    assert not is_correct(cfg, f"The answer is {answer + 1}.", messages)
    assert not is_correct(cfg, f"The answer is {answer}. Then 3 more.", messages)  # the last number counts
    assert not is_correct(cfg, "I do not know.", messages)


def test_last_number_reads_signs_commas_and_decimals_but_not_operators() -> None:
    assert last_number("3 + 4 = 7. The answer is 7.") == 7.0
    assert last_number("It is -5 now") == -5.0 and last_number("10-5") == 5.0
    assert last_number("$1,234.50.") == 1234.5 and last_number("no digits") is None
    with pytest.raises(ValueError, match="without a number"):
        sums_correct("7", "no number here")


def test_sums_reference_without_a_number_is_refused_naming_the_line(tmp_path: Path, capsys) -> None:
    rows = demo_rows(2)
    rows[1]["messages"][-1]["content"] = "seven"
    data = tmp_path / "sums_eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"prediction": "7"}\n' * 2)
    assert evaluate.main(["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "sums_eval.jsonl:2: sums scoring needs a number" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("count", [63, 65, 69])
def test_predictions_file_of_another_length_is_refused(tmp_path: Path, capsys, count: int) -> None:
    """Too few and too many lines both belong to other examples: before, 69 lines for 64 examples scored."""
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"prediction": "7"}\n' * count)
    argv = ["--input_file", str(demo_data_path("eval")), "--predictions_file", str(preds)]
    assert evaluate.main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl: {count} predictions for 64 examples" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_max_examples_takes_the_first_predictions(tmp_path: Path) -> None:
    rows = demo_rows(64)
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"prediction": r["messages"][-1]["content"]}) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["--input_file", str(demo_data_path("eval")), "--predictions_file", str(preds), "--max_examples", "5"]
    assert evaluate.main([*argv, "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n"], summary["accuracy"]) == (5, 1.0)


def test_missing_local_model_fails_in_seconds(tmp_path: Path) -> None:
    """llmjepa-train's check: before, `--model_name runs/nope` spent ~57 s in the Hub client's retries."""
    argv = ["--input_file", str(demo_data_path("eval")), "--model_name", str(tmp_path / "nope")]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "llmjepa.commands.evaluate", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"llmjepa-eval: error: --model_name {tmp_path / 'nope'}: no such local directory"
    assert seconds < 20  # the interpreter and imports on a loaded 2-core machine; the check itself is instant
    assert not (tmp_path / "runs").exists()


def test_missing_base_model_names_its_flag(tmp_path: Path, capsys) -> None:
    argv = ["--input_file", str(demo_data_path("eval")), "--model_name", "llmjepa/tiny-llama"]
    assert evaluate.main([*argv, "--base_model", "./nope", "--output_dir", str(tmp_path)]) == 2
    assert "--base_model ./nope: no such local directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], {"decoding": "greedy", "max_new_tokens": 4, "repetition_penalty": 1.0}),
        (
            ["--temperature", "0.7", "--top_p", "0.9"],
            {"decoding": "sample", "max_new_tokens": 4, "repetition_penalty": 1.0, "temperature": 0.7}
            | {"top_p": 0.9, "top_k": 0, "seed": 42},
        ),
    ],
)
def test_summary_records_the_decoding_that_ran(tmp_path: Path, flags: list, expected: dict) -> None:
    """Before, greedy decoding was recorded with temperature 1.0."""
    out = tmp_path / "out"
    argv = ["--input_file", str(demo_data_path("eval")), "--model_name", "llmjepa/tiny-llama", "--max_examples", "2"]
    argv += ["--max_new_tokens", "4", "--backend", "hf", "--no_progress", "--output_dir", str(out), *flags]
    assert evaluate.main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["generation"] == expected


def test_default_outputs_are_under_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"prediction": "7"}\n' * 64)
    assert evaluate.main(["--input_file", str(demo_data_path("eval")), "--predictions_file", str(preds)]) == 0
    (eval_dir,) = (tmp_path / "runs").iterdir()
    assert eval_dir.name.startswith("eval-") and (eval_dir / "summary.json").is_file()
    assert parity.build_parity_parser().parse_args([]).output_dir == "runs/parity"
    assert sweep.build_parser().parse_args([]).output_dir is None  # sweep() then picks runs/sweep-<date>-<time>
    source = (ROOT / "llmjepa" / "commands" / "sweep.py").read_text()
    assert 'time.strftime("runs/sweep-' in source


def test_sweep_default_trains_and_evaluates_on_the_demo_data() -> None:
    config = sweep.default_config()
    assert Path(sweep.flag_value(config["train_args"], "--train_file")) == demo_data_path("train")
    assert Path(sweep.flag_value(config["eval_args"], "--input_file")) == demo_data_path("eval")
    assert "--max_examples" not in config["eval_args"]  # all 64 examples: accuracy in steps of 1/64


def test_train_defaults_to_the_demo_data(tmp_path: Path) -> None:
    from llmjepa.commands.run import load_data
    from llmjepa.commands.train import parse_args

    train, held, source = load_data(parse_args(["--regular", "--output_dir", str(tmp_path)]))
    assert Path(source) == demo_data_path("train") and len(train) == 2048 and held == []
