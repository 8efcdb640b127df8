"""llmjepa-eval --dataset code: generated programs run with their tests in a limited process (pass@1).

Every crafted program below must be scored as failed with its reason (passed only for the correct ones),
and the evaluator must finish in about the time limit of its slowest program."""

import json
import os
import time
from pathlib import Path

import pytest

from llmjepa.commands.evaluate import main
from llmjepa.evaluation.code_execution import (
    REASONS,
    CodeLimits,
    extract_program,
    network_namespace,
    program_tests,
    run_program,
    score_code,
)
from llmjepa.evaluation.scorers import scorer_for

LIMITS = CodeLimits(timeout_s=3.0, memory_mb=512)
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
CORRECT = "def add(a, b):\n    return a + b\n"
OUTSIDE = Path("/tmp/llmjepa-test-eval-code-outside.txt")  # a file the programs must not write

# program -> (reason, what the detail says)
CRAFTED = {
    "correct": (CORRECT, "passed", ""),
    "wrong": ("def add(a, b):\n    return a - b\n", "failed", "AssertionError"),
    "syntax_error": ("def add(a, b)\n    return a + b\n", "syntax_error", "SyntaxError"),
    "raises": ("def add(a, b):\n    return a + c\n", "error", "NameError"),
    "loops_forever": ("def add(a, b):\n    while True:\n        pass\n", "timeout", "wall time"),
    "sleeps": ("import time\ntime.sleep(60)\n", "timeout", "wall time"),
    "allocates_without_bound": ("x = []\nwhile True:\n    x.append(bytearray(10**8))\n", "memory", "MemoryError"),
    "reads_a_file_outside": ("print(open('/etc/hostname').read())\n" + CORRECT, "blocked", "/etc/hostname"),
    "reads_a_relative_path_outside": ("open('../../../etc/passwd').read()\n" + CORRECT, "blocked", "open"),
    "writes_a_file_outside": (f"open('{OUTSIDE}', 'w').write('x')\n" + CORRECT, "blocked", str(OUTSIDE)),
    "catches_the_refusal": (
        "try:\n    open('/etc/passwd').read()\nexcept Exception:\n    pass\n" + CORRECT,
        "blocked",
        "went on after the refusal",
    ),
    "lists_the_root": ("import os\nos.listdir('/')\n" + CORRECT, "blocked", "os.listdir"),
    "removes_a_file_outside": (f"import os\nos.remove('{OUTSIDE}')\n" + CORRECT, "blocked", "os.remove"),
    "opens_a_socket": ("import socket\nsocket.socket()\n" + CORRECT, "blocked", "socket"),
    "connects": ("import socket\nsocket.create_connection(('1.1.1.1', 80), 1)\n" + CORRECT, "blocked", "socket"),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", "blocked", "os.fork"),
    "spawns_a_subprocess": ("import subprocess\nsubprocess.run(['true'])\n" + CORRECT, "blocked", "_posixsubprocess"),
    "os_system": ("import os\nos.system('true')\n" + CORRECT, "blocked", "os.system"),
    "ctypes": ("import ctypes\n" + CORRECT, "blocked", "ctypes"),
    "exits_before_the_tests": ("import sys\n" + CORRECT + "sys.exit(0)\n", "exited", "SystemExit(0)"),
    "os_exit_before_the_tests": ("import os\n" + CORRECT + "os._exit(0)\n", "exited", "exit status 0"),
    "forges_a_passed_report": (
        'print(\'0123 {"reason": "passed", "detail": ""}\')\nimport os\nos._exit(0)\n',
        "exited",
        "exit status 0",
    ),
    "segfaults": ("import faulthandler\nfaulthandler._sigsegv()\n", "crashed", "SIGSEGV"),
    "floods_stdout": ("while True:\n    print('x' * 100000)\n", "error", "File too large"),
}


@pytest.fixture(autouse=True)
def no_outside_file():
    OUTSIDE.unlink(missing_ok=True)
    yield
    assert not OUTSIDE.exists(), "a sandboxed program wrote outside its working directory"


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_programs_fail_with_their_reason(name: str) -> None:
    program, reason, detail = CRAFTED[name]
    start = time.monotonic()
    result = run_program(program, TESTS, LIMITS)
    assert (result.reason, result.passed) == (reason, reason == "passed"), result
    assert detail in result.detail, result
    assert time.monotonic() - start < LIMITS.timeout_s + 3


def test_removing_a_file_outside_leaves_it() -> None:
    OUTSIDE.write_text("keep")
    result = run_program(CRAFTED["removes_a_file_outside"][0], TESTS, LIMITS)
    assert result.reason == "blocked" and OUTSIDE.read_text() == "keep"
    OUTSIDE.unlink()


def test_the_working_directory_is_writable_and_stdlib_imports() -> None:
    program = (
        "import collections, heapq, itertools, json, math, re, random, string, functools\n"
        "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n" + CORRECT
    )
    assert run_program(program, TESTS, LIMITS).reason == "passed"


def test_the_program_sees_neither_the_callers_environment_nor_directory() -> None:
    os.environ["LLMJEPA_TEST_SECRET"] = "s3cret"
    try:
        program = "import os\nassert 'LLMJEPA_TEST_SECRET' not in os.environ\nassert 'llmjepa-code-' in os.getcwd()\n"
        assert run_program(program + CORRECT, TESTS, LIMITS).reason == "passed"
    finally:
        del os.environ["LLMJEPA_TEST_SECRET"]


@pytest.mark.skipif(not network_namespace(), reason="unshare -rn cannot make a network namespace here")
def test_the_network_namespace_has_no_route() -> None:
    """Where unshare -rn works the kernel itself refuses: shown with the namespace the program gets."""
    import subprocess
    import sys

    probe = "import socket\ns = socket.socket()\ns.settimeout(2)\nprint(s.connect_ex(('1.1.1.1', 80)))"
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() not in ("", "0"), done


def test_extract_program_takes_the_first_fenced_block_or_the_whole_text() -> None:
    assert extract_program("Here:\n```python\nx = 1\n```\nand\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_program("```py\nx = 1\n```") == "x = 1\n"
    assert extract_program("```\nx = 1\n```") == "x = 1\n"
    assert extract_program("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert extract_program("```python\nx = 1\n") == "x = 1\n"  # cut by max_new_tokens
    assert score_code("Sure:\n```python\n" + CORRECT + "```\nDone.", TESTS, LIMITS).passed


def test_test_code_reads_humaneval_and_mbpp_forms() -> None:
    human = {"test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}
    assert program_tests(human).endswith("check(add)\n")
    assert run_program(CORRECT, program_tests(human), LIMITS).passed
    assert run_program("def add(a, b):\n    return 0\n", program_tests(human), LIMITS).reason == "failed"
    mbpp = {"test_list": ["assert add(1, 1) == 2", "assert add(0, 0) == 0"], "test_setup_code": "import math"}
    assert program_tests(mbpp) == "import math\nassert add(1, 1) == 2\nassert add(0, 0) == 0\n"
    assert program_tests({}) is None and program_tests({"test": " ", "test_list": []}) is None
    assert program_tests({"test_setup_code": "import math"}) is None


def test_code_is_never_chosen_by_the_file_name() -> None:
    assert scorer_for("code_test.jsonl") == "exact" and scorer_for("x.jsonl", "code") == "code"


# ---- llmjepa-eval ---------------------------------------------------------------------------------------
def write_input(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    data, preds = tmp_path / "mbpp_test.jsonl", tmp_path / "preds.jsonl"
    lines, predictions = [], []
    for k, name in enumerate(names):
        messages = [{"role": "user", "content": f"Write add ({name})."}, {"role": "assistant", "content": CORRECT}]
        tests = {"test_list": TESTS.splitlines()} if k % 2 else {"test": TESTS}
        lines.append(json.dumps({"messages": messages, **tests}))
        predictions.append(json.dumps({"prediction": "```python\n" + CRAFTED[name][0] + "```"}))
    data.write_text("\n".join(lines) + "\n")
    preds.write_text("\n".join(predictions) + "\n")
    return data, preds


def test_llmjepa_eval_records_pass_at_1_and_the_reasons(tmp_path: Path, capsys) -> None:
    names = ["correct", "wrong", "syntax_error", "loops_forever", "allocates_without_bound", "reads_a_file_outside"]
    names += ["opens_a_socket", "fork_bomb", "spawns_a_subprocess", "correct"]
    data, preds = write_input(tmp_path, names)
    out = tmp_path / "out"
    argv = ["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(out)]
    start = time.monotonic()
    assert main([*argv, "--dataset", "code", "--allow_code_execution", "--code_timeout", "3"]) == 0
    assert time.monotonic() - start < 25  # one program runs out its 3 s; the others take a fraction of a second
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == summary["accuracy"] == 0.2 and summary["n"] == 10
    assert summary["code_results"] == {r: 0 for r in REASONS} | {
        "passed": 2,
        "failed": 1,
        "syntax_error": 1,
        "timeout": 1,
        "memory": 1,
        "blocked": 4,
    }
    assert summary["code_limits"] == {"timeout_s": 3.0, "memory_mb": 1024}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["code_result"] for r in records][:4] == ["passed", "failed", "syntax_error", "timeout"]
    assert all(r["correct"] == (r["code_result"] == "passed") for r in records)
    assert "pass@1 0.2000: 2 passed, 1 failed" in capsys.readouterr().out


def test_code_without_allow_code_execution_is_refused(tmp_path: Path, capsys) -> None:
    data, preds = write_input(tmp_path, ["correct"])
    argv = ["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(tmp_path / "out")]
    assert main([*argv, "--dataset", "code"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --allow_code_execution" in err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--dataset", "code", "--allow_code_execution", "--code_timeout", "0"]) == 2
    assert "--code_timeout must be" in capsys.readouterr().err


def test_an_example_without_tests_is_refused_naming_its_line(tmp_path: Path, capsys) -> None:
    data, preds = write_input(tmp_path, ["correct", "correct"])
    lines = data.read_text().splitlines()
    lines[1] = json.dumps({"messages": json.loads(lines[1])["messages"]})
    data.write_text("\n".join(lines) + "\n")
    argv = ["--input_file", str(data), "--predictions_file", str(preds), "--output_dir", str(tmp_path / "out")]
    assert main([*argv, "--dataset", "code", "--allow_code_execution"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}:2: code scoring needs a" in err


def test_generating_with_a_model_scores_code_and_resumes(tmp_path: Path) -> None:
    """The model path (generate, then run): the embedded random-weights model writes no valid program, so
    every example fails with a recorded reason; a second run resumes (nothing generated or run again)."""
    data, _ = write_input(tmp_path, ["correct", "wrong"])
    out = tmp_path / "out"
    argv = ["--input_file", str(data), "--model_name", "llmjepa/tiny-llama", "--output_dir", str(out)]
    argv += ["--dataset", "code", "--allow_code_execution", "--max_new_tokens", "8", "--no_progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["pass@1"] == 0.0 and sum(summary["code_results"].values()) == 2
    assert json.loads((out / "run.json").read_text())["code_limits"] == {"timeout_s": 5.0, "memory_mb": 1024}
    first = (out / "predictions.jsonl").read_text()
    assert main(argv) == 0 and (out / "predictions.jsonl").read_text() == first
    assert main([*argv, "--code_timeout", "3"]) == 2  # other limits: another run's records
