"""docs/faults.md, llmjepa-train's section: every fault injected, its one line and its exit status.

One short run (4 examples a step, 2 steps, a checkpoint per step) is made once for the module; each
test copies it and breaks the copy. Most faults are refused before anything is loaded (a second or two).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmjepa.commands.train import main

ROOT = Path(__file__).resolve().parent.parent
USER = {"role": "user", "content": "What is 1 + 1?"}
ANSWER = {"role": "assistant", "content": "1 + 1 = 2.\n\nThe answer is 2."}
GOOD = json.dumps({"messages": [USER, ANSWER]})
LONG_PROMPT = json.dumps({"messages": [{"role": "user", "content": "What is " + " + ".join(["1"] * 40)}, ANSWER]})


def flags(data: Path, out: Path, steps: int = 2) -> list[str]:
    return [
        "--train_file",
        str(data),
        "--batch_size",
        "2",
        "--grad_accum",
        "1",
        "--save_steps",
        "1",
        "--predictors",
        "1",
        "--max_train_steps",
        str(steps),
        "--output_dir",
        str(out),
    ]


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str, prefix: str = "llmjepa-train: error: ") -> str:
    """The run's one error line (stderr may also hold progress bars); no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("llmjepa-train:")]
    assert len(lines) == 1 and lines[0].startswith(prefix), err[-3000:]
    return lines[0]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, output folder) of a finished 2-step run with checkpoint-1 and checkpoint-2."""
    root = tmp_path_factory.mktemp("trained")
    data = write_jsonl(root / "data.jsonl", [GOOD] * 8)
    assert main(flags(data, root / "run")) == 0
    assert (root / "run" / "checkpoint-2" / "llmjepa_run.json").is_file()
    return data, root / "run"


def copy_run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained[1], out)
    return out


# ---- concurrent runs: the folder's lock ---------------------------------------------------------
HOLD = """
import fcntl, json, os, socket, sys
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".llmjepa-train.lock"), os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}).encode())
print("locked", flush=True)
sys.stdin.read()
"""  # what run_folder.FolderLock does, without importing torch (seconds)


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding out's lock, as a running llmjepa-train does, until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "busy"
    holder = hold_lock(out)
    try:
        rc, _, err = run_cli(capsys, *flags(trained[0], out))
        line = one_line(err)
        assert rc == 2 and f"--output_dir {out}: in use by another run (pid {holder.pid} on " in line, line
        assert not (out / "metrics.jsonl").exists()  # nothing of the first run was touched
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the kernel dropped the lock; another process takes it at once
    again = hold_lock(out)
    again.stdin.close()
    assert again.wait(timeout=60) == 0


@pytest.mark.slow  # ~40 s on 2 cores: two llmjepa-train processes (the lock's message: the test above)
def test_two_real_runs_on_one_folder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A second llmjepa-train started while a first trains in the folder: it exits 2 naming the first;
    the first, stopped with SIGTERM, wrote its own metrics lines alone."""
    out = tmp_path / "both"
    cmd = [sys.executable, "train.py", *flags(trained[0], out, steps=200), "--save_steps", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = out / ".llmjepa-train.lock", time.time() + 120
    while time.time() < deadline and f'"pid": {first.pid},' not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.05)  # the first run holds the lock (its import takes seconds)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"in use by another run (pid {first.pid} on " in one_line(second.stderr)
    assert first.returncode == 143, first_err[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's lines, not two interleaved


# ---- one run per folder: the run's identity ------------------------------------------------------
def test_a_new_run_refuses_a_folder_with_checkpoints_unless_overwrite(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = copy_run(trained, tmp_path)
    rc, _, err = run_cli(capsys, *flags(trained[0], out))
    line = one_line(err)
    assert rc == 2 and f"--output_dir {out} holds checkpoints of an earlier run (checkpoint-1, checkpoint-2)" in line
    rc, stdout, err = run_cli(capsys, *flags(trained[0], out, steps=1), "--save_steps", "5", "--overwrite_output_dir")
    assert rc == 0, err[-3000:]
    assert "llmjepa-train: --overwrite_output_dir: removed 2 checkpoints of the earlier run" in stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # the new run's own


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        (["--lbd", "0.5"], "--lbd 0.1 -> 0.5"),
        (["--num_prediction_steps", "2"], "--num_prediction_steps 0 -> 2"),
        (["--predictors", "2"], "--predictors 1 -> 2"),
        (["--model_name", "MODEL"], "--model_name llmjepa/tiny-llama -> MODEL"),
    ],
)
def test_resuming_with_flags_that_change_the_run_is_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, changed: list[str], difference: str
) -> None:
    out = copy_run(trained, tmp_path)
    model = str(trained[1])  # the finished run's final model: a valid local model folder
    changed = [model if x == "MODEL" else x for x in changed]
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=3), *changed, "--resume_from_checkpoint", "latest")
    line = one_line(err)
    assert rc == 2 and f"{out / 'checkpoint-2'} is a checkpoint of another run; it differs in: " in line, line
    assert difference.replace("MODEL", model) in line and "--allow_changed_flags" in line


def test_changed_data_is_another_run(trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = copy_run(trained, tmp_path)
    data = write_jsonl(tmp_path / "other.jsonl", [GOOD] * 9)
    rc, _, err = run_cli(capsys, *flags(data, out, steps=3), "--resume_from_checkpoint", "latest")
    assert rc == 2 and "it differs in: the training data's contents" in one_line(err)


def test_allow_changed_flags_resumes_and_records_the_change(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = copy_run(trained, tmp_path)
    argv = [*flags(trained[0], out, steps=3), "--lbd", "0.5", "--allow_changed_flags", "--resume_from_checkpoint"]
    rc, stdout, err = run_cli(capsys, *argv, "latest")
    assert rc == 0, err[-3000:]
    assert "llmjepa-train: warning: resuming" in stdout and "--lbd 0.1 -> 0.5" in stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 2, "event": "changed_flags", "changes": ["--lbd 0.1 -> 0.5"]} in records
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3]
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert sessions[-1]["changed"] == ["--lbd 0.1 -> 0.5"] and sessions[-1]["resumed_from"] == str(out / "checkpoint-2")
    identity = json.loads((out / "checkpoint-3" / "llmjepa_run.json").read_text())
    assert identity["flags"]["lbd"] == 0.5  # the checkpoints from here on are of the changed run


def test_latest_refuses_a_checkpoint_that_records_no_run(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = copy_run(trained, tmp_path)
    (out / "checkpoint-2" / "llmjepa_run.json").unlink()
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=3), "--resume_from_checkpoint", "latest")
    assert rc == 2 and "records no run identity (written by an older llmjepa)" in one_line(err)


# ---- atomic checkpoints: a full disk, a kill during a save ---------------------------------------
def full_disk_at(monkeypatch: pytest.MonkeyPatch, needle: str) -> None:
    """torch.save writes a part of the file, then fails as a full disk does, for paths containing needle."""
    real_save = torch.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(f, (str, os.PathLike)) and needle in str(f):
            Path(f).write_bytes(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_during_a_checkpoint_exits_4_and_leaves_no_partial_checkpoint(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    full_disk_at(monkeypatch, f"checkpoint-2{os.sep}optimizer.pt")
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=3))
    line = one_line(err)
    assert rc == 4, err[-3000:]
    assert line.startswith(f"llmjepa-train: error: could not write {out / 'checkpoint-2'}: [Errno 28] No space left")
    assert f"last good checkpoint: {out / 'checkpoint-1'}; free space, then resume with: llmjepa-train " in line
    assert line.endswith(f"--output_dir {out} --resume_from_checkpoint {out / 'checkpoint-1'}")
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]  # no partial folder
    assert not (out / "model.safetensors").exists()
    monkeypatch.undo()
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=3), "--resume_from_checkpoint", "latest")
    assert rc == 0, err[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_full_disk_at_the_final_model_exits_4(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "final"
    import transformers.modeling_utils

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run_save = transformers.modeling_utils.PreTrainedModel.save_pretrained

    def save_pretrained(self: object, directory: str, *args: object, **kwargs: object) -> None:
        if Path(directory) == out:
            full()
        run_save(self, directory, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils.PreTrainedModel, "save_pretrained", save_pretrained)
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=1))
    line = one_line(err)
    assert rc == 4 and line.startswith(f"llmjepa-train: error: could not write the final model in {out}: [Errno 28]")
    assert f"last good checkpoint: {out / 'checkpoint-1'}" in line


def test_a_save_killed_midway_is_never_resumed(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """kill -9 during a save leaves only the staging folder: 'latest' takes the last published checkpoint,
    and the next run in the folder removes the staging folder."""
    out = copy_run(trained, tmp_path)
    partial = out / ".partial-checkpoint-3" / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", partial)
    (partial / "optimizer.pt").write_bytes(b"PK\x03\x04cut")
    rc, stdout, err = run_cli(capsys, *flags(trained[0], out), "--resume_from_checkpoint", "latest")
    assert rc == 0, err[-3000:]
    assert f"{out / 'checkpoint-2'} is step 2 of 2: this run has finished" in stdout
    assert not (out / ".partial-checkpoint-3").exists()


def test_a_real_kill_9_during_training_leaves_only_complete_checkpoints(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGKILL a run that checkpoints every step, while it saves: every checkpoint-N left is whole, and
    'latest' resumes it."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "train.py", *flags(trained[0], out, steps=40)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob(".partial-checkpoint-*")):
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert time.time() < deadline, "no save was seen in progress"  # killed during a save, as intended
    from llmjepa.commands.file_checks import check_folder

    for checkpoint in out.glob("checkpoint-*"):
        check_folder(checkpoint, "test", "")  # raises on a truncated file
        assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "llmjepa_run.json").is_file()


# ---- damaged files: refused before anything is loaded ------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "model.safetensors truncated": ("model.safetensors", truncate, "truncated: its tensors need"),
    "model.safetensors header": (
        "model.safetensors",
        lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]),
        "header length is past the file's end",
    ),
    "optimizer.pt truncated": ("optimizer.pt", truncate, "truncated or not a torch.save file"),
    "optimizer.pt damaged": ("optimizer.pt", flip_middle_byte, "fails its CRC check"),
    "scheduler.pt truncated": ("scheduler.pt", truncate, "truncated or not a torch.save file"),
    "rng_state.pth truncated": ("rng_state.pth", truncate, "truncated or not a torch.save file"),
    "trainer_state.json corrupt": ("trainer_state.json", lambda p: p.write_text('{"global_step": '), "not valid JSON"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_is_one_line_before_loading(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    name, damage, needle = DAMAGE[case]
    out = copy_run(trained, tmp_path)
    damage(out / "checkpoint-2" / name)
    started = time.perf_counter()
    rc, _, err = run_cli(capsys, *flags(trained[0], out, steps=3), "--resume_from_checkpoint", "latest")
    line = one_line(err)
    assert rc == 2 and f"--resume_from_checkpoint latest: {out / 'checkpoint-2' / name}: " in line, line
    assert needle in line and line.endswith(f"resume from {out / 'checkpoint-1'} instead")
    assert time.perf_counter() - started < 30


def test_a_truncated_model_given_as_model_name(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for p in trained[1].iterdir():
        if p.is_file():
            shutil.copy(p, model / p.name)
    truncate(model / "model.safetensors")
    rc, _, err = run_cli(capsys, *flags(trained[0], tmp_path / "out"), "--model_name", model)
    line = one_line(err)
    assert rc == 2 and f"--model_name {model}: {model / 'model.safetensors'}: truncated" in line


# ---- --config: YAML of the wrong type, duplicate keys ---------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train_file: {path: x}\n", "run.yaml line 1: train_file: expected a string, got a mapping"),
        ("model_name: [a, b]\n", "run.yaml line 1: model_name: expected a string, got a list"),
        ("step_separator: 5\n", "run.yaml line 1: step_separator: expected a string, got a number (5)"),
        ("output_dir: true\n", "run.yaml line 1: output_dir: expected a string, got a boolean (true)"),
        ("batch_size: true\n", "run.yaml line 1: batch_size: expected an integer, got a boolean (true)"),
        ("batch_size: {n: 2}\n", "run.yaml line 1: batch_size: expected an integer, got a mapping"),
        ("batch_size: null\n", "run.yaml line 1: batch_size: expected a value, got null"),
        ("max_length: 3.5\n", "run.yaml line 1: max_length: expected an integer, got a number (3.5)"),
        ("max_length: many\n", "run.yaml line 1: max_length: 'many' is not valid"),
        ("learning_rate: [1, 2]\n", "run.yaml line 1: learning_rate: expected a number, got a list"),
        ("learning_rate: false\n", "run.yaml line 1: learning_rate: expected a number, got a boolean (false)"),
        ("impl: 3\n", "run.yaml line 1: impl: 3 is not one of reference, fast"),
        ("regular: yes please\n", "run.yaml line 1: regular: expected true or false"),
        ("drop_long_prompts: maybe\n", "run.yaml line 1: drop_long_prompts: expected true or false, got 'maybe'"),
        ("warmup_steps: {a: 1}\n", "run.yaml line 1: warmup_steps: expected a number, got a mapping"),
        ("regular: true\nbatch_size: 2\nregular: false\n", "run.yaml line 3: 'regular' is set twice (also on line 1)"),
        ("lr_scheduler_kwargs: {power: 1, power: 2}\n", "run.yaml line 1: 'power' is set twice (also on line 1)"),
    ],
)
def test_config_values_of_the_wrong_type_and_duplicate_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text)
    rc, _, err = run_cli(capsys, "--config", config, "--output_dir", tmp_path / "out")
    line = one_line(err)
    assert rc == 2 and message in line, line
    assert not (tmp_path / "out").exists()  # refused while parsing: nothing created


def test_config_values_of_the_right_type_pass(tmp_path: Path) -> None:
    from llmjepa.commands.train import parse_args

    config = tmp_path / "run.yaml"
    config.write_text("lr_scheduler_kwargs: {power: 2.0}\ndrop_long_prompts: false\nlbd: null\nmax_length: 64\n")
    args = parse_args(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert args.training_overrides["lr_scheduler_kwargs"] == {"power": 2.0}
    assert (args.drop_long_prompts, args.lbd, args.max_length) == (False, 0.1, 64)


# ---- over-long examples ----------------------------------------------------------------------------
def test_an_example_whose_prompt_fills_max_length_is_dropped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [GOOD, GOOD, LONG_PROMPT, GOOD, LONG_PROMPT, GOOD])
    out = tmp_path / "out"
    argv = [*flags(data, out, steps=1), "--max_length", "64"]
    rc, stdout, err = run_cli(capsys, *argv)
    assert rc == 0, err[-3000:]
    assert (
        f"llmjepa-train: warning: {data}: 2 of 6 examples dropped: the prompt alone fills --max_length 64 "
        f"({data}:3, {data}:5; --drop_long_prompts false refuses them)"
    ) in stdout.splitlines()
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["dropped_long_prompts"] == {str(data): 2}
    argv = [*flags(data, tmp_path / "strict", steps=1), "--max_length", "64", "--drop_long_prompts", "false"]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and f"{data}:3: the prompt alone fills --max_length 64; nothing to train" in one_line(err)


def test_every_example_dropped_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", [LONG_PROMPT] * 4)
    rc, _, err = run_cli(capsys, *flags(data, tmp_path / "out"), "--max_length", "64")
    assert rc == 2 and f"{data}: all 4 examples dropped: the prompt alone fills --max_length 64" in one_line(err)


@pytest.mark.parametrize("mode", ["regular", "jepa", "steps"])
def test_a_long_message_is_cut_before_tokenization_without_changing_the_tokens(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut keeps every view's first max_length tokens as they were, and a 10 MB message costs what a
    short one does (docs/faults.md has the 50 MB measurement)."""
    from llmjepa.default_model import DEFAULT_MODEL_NAME
    from llmjepa.model import load_tokenizer
    from llmjepa.views import encoding
    from llmjepa.views.examples import Example

    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    cfg = encoding.ViewConfig(
        regular=mode == "regular", predictors=1, num_prediction_steps=2 if mode == "steps" else 0, max_length=128
    )
    bound = encoding.content_bound(tokenizer, cfg.max_length)
    long_answer = "1 + 1 = 2.\n\n" * (3 * bound // 12)  # three times the bound: cut
    example = Example(messages=[USER, {"role": "assistant", "content": long_answer}], source="x.jsonl:1")
    [cut], _ = encoding.encode_all([example], tokenizer, cfg)
    monkeypatch.setattr(encoding, "content_bound", lambda tokenizer, max_length: 10**12)  # no cut: as before
    [whole], _ = encoding.encode_all([example], tokenizer, cfg)
    assert cut == whole and cut.truncated and len(cut.input_ids) == 128
    monkeypatch.undo()
    huge = Example(messages=[USER, {"role": "assistant", "content": "7 " * 5_000_000}], source="x.jsonl:2")
    started = time.perf_counter()
    [enc], _ = encoding.encode_all([huge], tokenizer, cfg)
    assert len(enc.input_ids) == 128 and time.perf_counter() - started < 5.0


# ---- the documentation names every exit status -------------------------------------------------------
def test_readme_and_faults_doc_name_every_exit_status() -> None:
    import llmjepa.errors as errors

    codes = sorted({value for name, value in vars(errors).items() if name.startswith("EXIT_")})
    assert codes == [0, 1, 2, 3, 4, 5, 130, 143]
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("exit statuses say how a run ended") :][:2500]
    for code in codes:
        assert f"{code} " in paragraph, code
    table = (ROOT / "docs" / "faults.md").read_text()
    for code in codes:
        assert f"| {code} |" in table or f"| {code}, " in table or f", {code} |" in table, code
