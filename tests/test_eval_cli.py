"""llmjepa-eval end to end: outputs, --predictions_file, bad input, resume, --base_model, ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjepa import evaluate
from llmjepa.default_model import sample_data_path
from llmjepa.evaluation.generation import HFGenerator

TINY = "llmjepa/tiny-llama"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_rows() -> list[dict]:
    def row(q: str, a: str) -> dict:
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    return [row("2+2?", "2+2=4\n#### 4"), row("3+3?", "3+3=6\n#### 6"), row("1000+1?", "so\n#### 1,001")]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predictions_file_scores_without_a_model(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "gsm8k_test.jsonl", gsm8k_rows())
    preds = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prediction": "  x\n#### 4\n"}, {"prediction": "#### 6"}, {"prediction": "y\n#### 1001"}],
    )
    out = tmp_path / "out"
    argv = ["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(out)]
    assert evaluate.main(argv) == 0
    recs = records(out)
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert [r["correct"] for r in recs] == [True, False, False]  # "#### 6" lacks the newline; 1001 != 1,001
    assert recs[0]["prediction"] == "x\n#### 4"  # stripped as generated responses are
    assert recs[0]["reference"] == "2+2=4\n#### 4" and recs[0]["prompt"] == "2+2?"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "gsm8k" and summary["n"] == 3 and summary["correct"] == 1
    assert summary["accuracy"] == pytest.approx(1 / 3) and "seconds" in summary
    printed = capsys.readouterr().out
    assert "| model | accuracy |" in printed and "0.3333" in printed
    assert evaluate.main([*argv, "--numeric"]) == 0
    assert [r["correct"] for r in records(out)] == [True, False, True]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prediction": "a"}', "{bad json", '{"prediction": "c"}'], "p.jsonl:2: malformed JSON"),
        (
            ['{"prediction": "a"}', '{"text": "b"}', '{"prediction": "c"}'],
            'p.jsonl:2: expected an object with a string "prediction"',
        ),
        (['{"prediction": "a"}'], "p.jsonl: 1 predictions for 3 examples"),
    ],
)
def test_bad_predictions_file(tmp_path: Path, capsys, lines: list, message: str) -> None:
    data = write_jsonl(tmp_path / "gsm8k_test.jsonl", gsm8k_rows())
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["--input_file", str(data), "--predictions_file", str(tmp_path / "p.jsonl"), "--output_dir", str(tmp_path)]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_reference_the_scorer_cannot_use_is_refused_before_generation(tmp_path: Path, capsys) -> None:
    rows = gsm8k_rows()
    rows[1]["messages"][1]["content"] = "6"  # no "#### " line
    data = write_jsonl(tmp_path / "gsm8k_test.jsonl", rows)
    argv = ["--input_file", str(data), "--model_name", TINY, "--output_dir", str(tmp_path / "o")]
    assert evaluate.main(argv) == 2
    assert "gsm8k_test.jsonl:2: gsm8k scoring needs" in capsys.readouterr().err


def eval_argv(out: Path, *extra: str) -> list[str]:
    data = str(sample_data_path("eval"))
    return ["--input_file", data, "--model_name", TINY, "--output_dir", str(out), "--max_examples", "6"] + [
        "--max_new_tokens",
        "6",
        "--batch_size",
        "4",
        "--no_progress",
        *extra,
    ]


def test_resume_generates_only_what_is_missing(tmp_path: Path, monkeypatch, capsys) -> None:
    fresh = tmp_path / "fresh"
    assert evaluate.main(eval_argv(fresh)) == 0
    want = records(fresh)
    assert len(want) == 6 and all(r["correct"] is False for r in want)  # random weights
    summary = json.loads((fresh / "summary.json").read_text())
    assert summary["backend"] == "hf" and summary["generated_tokens"] > 0 and summary["tokens_per_second"] > 0

    # an interrupted run: four records kept, the fifth cut mid-line
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run.json").write_text((fresh / "run.json").read_text())
    lines = (fresh / "predictions.jsonl").read_text().splitlines()
    (resumed / "predictions.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    seen = []
    original = HFGenerator.generate
    monkeypatch.setattr(
        HFGenerator, "generate", lambda self, prompts: seen.append(len(prompts)) or original(self, prompts)
    )
    assert evaluate.main(eval_argv(resumed)) == 0
    assert seen == [2]  # examples 4 and 5 only
    assert records(resumed) == want

    # the same folder with other settings is refused, --overwrite starts afresh
    assert evaluate.main(eval_argv(resumed, "--max_new_tokens", "7")) == 2
    assert "another run's predictions" in capsys.readouterr().err
    assert evaluate.main(eval_argv(resumed, "--max_new_tokens", "7", "--overwrite")) == 0
    assert len(records(resumed)) == 6


def test_base_model_comparison(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    # the tuned model is the embedded default with other weights (--seed), the base the same model: the
    # comparison must list exactly the examples whose correctness differs
    assert evaluate.main(eval_argv(out, "--base_model", TINY, "--startswith")) == 0
    summary = json.loads((out / "summary.json").read_text())
    base = json.loads((out / "base" / "summary.json").read_text())
    assert summary["base"]["accuracy"] == base["accuracy"] == summary["accuracy"]
    assert summary["comparison"] == {"fixed": [], "broken": [], "unchanged": 6}
    assert records(out) == records(out / "base")
    assert "changed by fine-tuning: 0 fixed, 0 broken, 6 unchanged" in capsys.readouterr().out
    tuned = [{"index": 0, "correct": True}, {"index": 1, "correct": False}, {"index": 2, "correct": True}]
    base_recs = [{"index": 0, "correct": False}, {"index": 1, "correct": True}, {"index": 2, "correct": True}]
    assert evaluate.compare(tuned, base_recs) == {"fixed": [0], "broken": [1], "unchanged": 1}


def test_two_ranks_equal_one(tmp_path: Path) -> None:
    """torchrun's environment on two CPU processes: each takes i % 2 == rank, rank 0 merges."""
    one = tmp_path / "one"
    assert evaluate.main(eval_argv(one)) == 0
    two = tmp_path / "two"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
        cmd = [sys.executable, "-m", "llmjepa.commands.evaluate", *eval_argv(two)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert records(two) == records(one)
    assert not list(two.glob("predictions.rank*.jsonl"))
    assert json.loads((two / "summary.json").read_text())["n"] == 6


def test_references_equal_to_the_greedy_answers_score_one(tmp_path: Path) -> None:
    """A check that can fail on a random model: the first run's predictions become the references."""
    first = tmp_path / "first"
    assert evaluate.main(eval_argv(first)) == 0
    rows = [json.loads(line) for line in sample_data_path("eval").read_text().splitlines()[:6]]
    for row, rec in zip(rows, records(first)):
        assert rec["prediction"], "a reference must not be empty"
        row["messages"][-1]["content"] = rec["prediction"] if rec["index"] % 2 == 0 else rec["prediction"] + "!"
    data = write_jsonl(tmp_path / "arith_self.jsonl", rows)
    argv = eval_argv(tmp_path / "second")
    argv[argv.index("--input_file") + 1] = str(data)
    assert evaluate.main(argv) == 0
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert (summary["correct"], summary["n"]) == (3, 6)
    assert [r["correct"] for r in records(tmp_path / "second")] == [True, False] * 3


def test_long_prompts_keep_their_end(tmp_path: Path) -> None:
    """Upstream truncates prompts on the right (to --max_length, and hellaswag's to max_new_tokens), which
    cuts the generation prompt; here a long prompt keeps its last --max_length tokens and is counted."""
    out = tmp_path / "short"
    assert evaluate.main(eval_argv(out, "--max_length", "12")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["truncated_prompts"] == 6
    for rec in records(out):
        assert rec["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert not rec["prompt"].startswith("<|begin_of_text|>")


def test_hellaswag_chooses_a_letter_without_generating(tmp_path: Path) -> None:
    rows = []
    for k, line in enumerate(sample_data_path("eval").read_text().splitlines()[:4]):
        row = json.loads(line)
        row["messages"][-2]["content"] += "\nA) one\nB) two\nC) three\nD) four"
        row["messages"][-1]["content"] = "ABCD"[k]
        rows.append(row)
    data = write_jsonl(tmp_path / "hellaswag_test.jsonl", rows)
    argv = eval_argv(tmp_path / "h")
    argv[argv.index("--input_file") + 1] = str(data)
    assert evaluate.main(argv) == 0
    summary = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert summary["scorer"] == "hellaswag" and summary["backend"] == "choice"
    recs = records(tmp_path / "h")
    assert all(r["prediction"] in "ABCD" and len(r["prediction"]) == 1 for r in recs)
    assert summary["correct"] == sum(r["prediction"] == r["reference"] for r in recs)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets (the upstream test files) is not present")
@pytest.mark.parametrize("name", ["gsm8k_test.jsonl", "nq_open_test.jsonl", "synth_test.jsonl"])
def test_real_test_files_score_their_own_references_as_correct(tmp_path: Path, name: str) -> None:
    """On the upstream data: the reference as the prediction is always right, an empty one always wrong."""
    rows = [json.loads(line) for line in (SHARED / name).read_text().splitlines()]
    for predictions, accuracy in (([r["messages"][-1]["content"] for r in rows], 1.0), ([""] * len(rows), 0.0)):
        preds = write_jsonl(tmp_path / "p.jsonl", [{"prediction": p} for p in predictions])
        argv = ["--input_file", str(SHARED / name), "--predictions_file", str(preds), "--output_dir", str(tmp_path)]
        assert evaluate.main(argv) == 0
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["scorer"] == name.split("_test")[0] and summary["n"] == len(rows)
        assert summary["accuracy"] == accuracy


def test_multi_turn_examples_are_prompted_by_their_last_user_turn(tmp_path: Path) -> None:
    """A conversation of several turns, a tool result before the final answer: the record's prompt is the last
    user turn (not the message before the answer, the tool's)."""
    messages = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "#### 2"},
        {"role": "user", "content": "and 2+2?"},
        {"role": "tool", "content": "calculator: 4"},
        {"role": "assistant", "content": "2+2=4\n#### 4"},
    ]
    data = write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"messages": messages}])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prediction": "so\n#### 4"}])
    out = tmp_path / "out"
    argv = ["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(out)]
    assert evaluate.main(argv) == 0
    (rec,) = records(out)
    assert rec["prompt"] == "and 2+2?" and rec["correct"] is True and rec["reference"] == "2+2=4\n#### 4"
