"""Data in as users have it (issue 18): --dataset_name over local files and folders of any format datasets reads,
the formats TRL recognises (multi-turn messages, prompt-completion, text), column mapping and a formatting
function, and bad rows named or dropped and counted. Every dataset is built here; nothing touches the network."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjepa import JepaTrainer, LossConfig, load_model, load_tokenizer, sample_data_path
from llmjepa.commands.run import build_run
from llmjepa.commands.train import main, parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME
from llmjepa.errors import UserError
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import examples_from_records
from llmjepa.views.plan import IGNORE_INDEX

datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install datasets)")

ROOT = Path(__file__).resolve().parent.parent
N_ROWS = 8
COMPARED = ("loss", "lm_loss", "jepa_loss", "label_tokens", "pairs", "tokens", "rows")
IMPLS = ("reference", "fast")


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets' cache in the test's folder, and the Hub offline: a test that reached for it would fail."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def bundled_rows(n: int = N_ROWS) -> list[dict]:
    return [json.loads(line) for line in sample_data_path("train").read_text().splitlines()[:n]]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def first_record(tmp_path: Path, name: str, *flags: object) -> dict:
    common = [
        "--batch_size",
        "2",
        "--grad_accum",
        "1",
        "--max_train_steps",
        "1",
        "--output_dir",
        tmp_path / f"run-{name}",
    ]
    trainer = build_run(parse_args([str(f) for f in [*common, *flags]])).trainer
    trainer.train()
    return trainer.history[0]


def assert_same_step(got: dict, want: dict) -> None:
    for key in COMPARED:
        if isinstance(want[key], float):
            assert math.isclose(got[key], want[key], rel_tol=1e-6, abs_tol=1e-7), (key, got[key], want[key])
        else:
            assert got[key] == want[key], (key, got[key], want[key])


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("llmjepa-train: error: "), (rc, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


TRAIN = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", "1"]


# ---- sources: one-turn conversations give exactly today's step, whatever holds them ------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_every_local_source_takes_the_train_file_step(tmp_path: Path, impl: str) -> None:
    rows = bundled_rows()
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    want = first_record(tmp_path, "jsonl", "--train_file", jsonl, "--predictors", "1", "--impl", impl)
    assert want["pairs"] > 0 and want["jepa_loss"] > 0
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    table.to_json(str(tmp_path / "rows.json"))
    datasets.DatasetDict({"train": table, "test": table.select(range(2))}).save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "parquet-folder"
    folder.mkdir()
    table.to_parquet(str(folder / "part-0.parquet"))
    for source in ("rows.parquet", "rows.json", "saved", "parquet-folder", "rows.jsonl"):
        got = first_record(tmp_path, source, "--dataset_name", tmp_path / source, "--predictors", "1", "--impl", impl)
        assert_same_step(got, want)


def test_csv_prompt_completion_equals_the_same_messages(tmp_path: Path) -> None:
    """prompt = the user view, completion = the assistant view: the same step as the conversation."""
    rows = bundled_rows()
    messages = [{"messages": r["messages"][-2:]} for r in rows]
    want = first_record(tmp_path, "messages", "--train_file", write_jsonl(tmp_path / "m.jsonl", messages))
    pairs = [{"prompt": r["messages"][-2]["content"], "completion": r["messages"][-1]["content"]} for r in rows]
    datasets.Dataset.from_list(pairs).to_csv(str(tmp_path / "pc.csv"), index=False)
    assert_same_step(first_record(tmp_path, "csv", "--dataset_name", tmp_path / "pc.csv"), want)
    # the system message: --system_prompt puts it first, as the conversation with it
    system = "Solve the math word problem step by step."
    with_system = [{"messages": [{"role": "system", "content": system}, *m["messages"]]} for m in messages]
    want = first_record(tmp_path, "sys", "--train_file", write_jsonl(tmp_path / "s.jsonl", with_system))
    got = first_record(tmp_path, "csv-sys", "--dataset_name", tmp_path / "pc.csv", "--system_prompt", system)
    assert_same_step(got, want)


def test_dataset_eval_split_and_eval_fraction(tmp_path: Path) -> None:
    table = datasets.Dataset.from_list(bundled_rows(10))
    datasets.DatasetDict({"train": table, "validation": table.select(range(3))}).save_to_disk(str(tmp_path / "saved"))
    base = [*TRAIN, "--dataset_name", str(tmp_path / "saved")]
    run = build_run(parse_args([*base, "--dataset_eval_split", "validation", "--output_dir", str(tmp_path / "a")]))
    assert len(run.trainer.train_dataset) == 10 and len(run.trainer.eval_dataset) == 3
    run = build_run(parse_args([*base, "--eval_split", "0.2", "--output_dir", str(tmp_path / "b")]))
    assert len(run.trainer.train_dataset) == 8 and len(run.trainer.eval_dataset) == 2
    with pytest.raises(UserError, match=r"no split 'dev' \(splits: train, validation\)"):
        build_run(parse_args([*base, "--dataset_eval_split", "dev", "--output_dir", str(tmp_path / "c")]))


# ---- multi-turn conversations --------------------------------------------------------------------------
def multi_turn_rows(n: int = N_ROWS) -> list[dict]:
    out = []
    for k, r in enumerate(bundled_rows(n)):
        system, user, answer = r["messages"]
        first = [{"role": "user", "content": f"What is {k} + 1?"}, {"role": "assistant", "content": f"{k + 1}."}]
        tool = [{"role": "tool", "content": f"calculator: {k} + 1 = {k + 1}"}] if k % 2 else []
        out.append({"messages": [system, *first, *tool, user, answer]})
    return out


def label_text(tokenizer, enc) -> str:
    return tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])


def test_multi_turn_labels_every_assistant_turn_and_pairs_the_last_exchange() -> None:
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    rows = multi_turn_rows(2)
    examples = examples_from_records(rows)
    everything, _ = encode_all(examples, tokenizer, ViewConfig(predictors=1))
    last, _ = encode_all(examples, tokenizer, ViewConfig(predictors=1, label_turns="last"))
    for row, enc_all, enc_last in zip(rows, everything, last):
        first_answer, final = row["messages"][2]["content"], row["messages"][-1]["content"]
        assert label_text(tokenizer, enc_all) == f"{first_answer}<|eot_id|>{final}<|eot_id|>"
        assert label_text(tokenizer, enc_last) == f"{final}<|eot_id|>"
        assert enc_all.text_ids == enc_last.text_ids and enc_all.code_ids == enc_last.code_ids
        # the pair reads the last user turn (Text) and the last assistant turn (Code)
        assert row["messages"][-2]["content"] in tokenizer.decode(enc_all.text_ids)
        assert tokenizer.decode(enc_all.code_ids).endswith(f"{final}<|eot_id|>")


@pytest.mark.parametrize("impl", IMPLS)
def test_multi_turn_trains_in_both_executors(tmp_path: Path, impl: str) -> None:
    data = write_jsonl(tmp_path / "multi.jsonl", multi_turn_rows())
    flags = ["--dataset_name", data, "--predictors", "1", "--impl", impl]
    every = first_record(tmp_path, "all", *flags)
    last = first_record(tmp_path, "last", *flags, "--label_turns", "last")
    assert every["pairs"] == last["pairs"] > 0 and every["jepa_loss"] > 0
    assert every["label_tokens"] > last["label_tokens"] > 0
    assert math.isfinite(every["loss"]) and math.isfinite(last["loss"])


def test_conversational_prompt_completion_trains_only_the_completion() -> None:
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    prompt = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": "And 2 + 2?"},
    ]
    row = {"prompt": prompt, "completion": [{"role": "assistant", "content": "4."}]}
    (enc,), _ = encode_all(examples_from_records([row]), tokenizer, ViewConfig(predictors=1))
    assert label_text(tokenizer, enc) == "4.<|eot_id|>"
    assert "And 2 + 2?" in tokenizer.decode(enc.text_ids)


# ---- column mapping and a formatting function: gsm8k's layout ----------------------------------------------
GSM8K = [
    {"question": f"Tom has {k} apples and buys 2 more. How many now?", "answer": f"{k} + 2 = {k + 2}\n#### {k + 2}"}
    for k in range(N_ROWS)
]


@pytest.mark.parametrize("impl", IMPLS)
def test_gsm8k_layout_by_field_mapping_or_formatting_function(tmp_path: Path, impl: str) -> None:
    datasets.Dataset.from_list(GSM8K).to_parquet(str(tmp_path / "gsm8k.parquet"))
    (tmp_path / "gsm8k_format.py").write_text(
        "def to_prompt_completion(row):\n    return {'prompt': row['question'], 'completion': row['answer']}\n"
    )
    source = ["--dataset_name", tmp_path / "gsm8k.parquet", "--impl", impl, "--predictors", "1"]
    mapped = first_record(tmp_path, "mapped", *source, "--prompt_field", "question", "--completion_field", "answer")
    func = f"{tmp_path / 'gsm8k_format.py'}:to_prompt_completion"
    formatted = first_record(tmp_path, "formatted", *source, "--formatting_func", func)
    assert_same_step(formatted, mapped)
    assert mapped["pairs"] > 0 and mapped["jepa_loss"] > 0


def test_formatting_func_and_columns_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    datasets.Dataset.from_list(GSM8K).to_parquet(str(tmp_path / "gsm8k.parquet"))
    base = ["--dataset_name", tmp_path / "gsm8k.parquet", "--output_dir", tmp_path / "out", *TRAIN]
    rc, _, err = run_cli(capsys, *base)
    one_line_error(rc, err, "(split train, row 0)", '"messages"', "columns: answer, question")
    rc, _, err = run_cli(capsys, *base, "--formatting_func", "no_such_module_xyz:f")
    one_line_error(rc, err, "--formatting_func no_such_module_xyz:f: cannot import")
    (tmp_path / "broken.py").write_text("def f(row):\n    return row['missing']\n")
    rc, _, err = run_cli(capsys, *base, "--formatting_func", f"{tmp_path / 'broken.py'}:f")
    one_line_error(rc, err, "(split train, row 0)", "--formatting_func raised KeyError")


# ---- plain text: --regular only ---------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_text_rows_train_regular_and_are_refused_with_jepa(
    tmp_path: Path, capsys: pytest.CaptureFixture, impl: str
) -> None:
    text = [{"text": f"{k} plus {k} is {2 * k}."} for k in range(N_ROWS)]
    datasets.Dataset.from_list(text).to_parquet(str(tmp_path / "text.parquet"))
    record = first_record(tmp_path, "regular", "--dataset_name", tmp_path / "text.parquet", "--regular", "--impl", impl)
    assert record["pairs"] == 0 and math.isfinite(record["loss"]) and record["label_tokens"] > 0
    rc, _, err = run_cli(capsys, "--dataset_name", tmp_path / "text.parquet", "--output_dir", tmp_path / "x", *TRAIN)
    one_line_error(rc, err, "(split train, row 0)", '"text" row', "--regular")


# ---- bad rows: named, or dropped and counted ----------------------------------------------------------------
def test_bad_rows_are_named_or_dropped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pairs = [{"prompt": f"What is {k} + 1?", "completion": f"{k + 1}"} for k in range(6)]
    pairs[2]["completion"] = " "
    pairs[4]["prompt"] = ""
    datasets.Dataset.from_list(pairs).to_parquet(str(tmp_path / "pc.parquet"))
    base = ["--dataset_name", tmp_path / "pc.parquet", *TRAIN]
    rc, _, err = run_cli(capsys, *base, "--output_dir", tmp_path / "a")
    one_line_error(rc, err, f"{tmp_path / 'pc.parquet'} (split train, row 2): empty assistant message")
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    rc, out, err = run_cli(capsys, *base, "--drop_bad_rows", "--output_dir", tmp_path / "b")
    assert rc == 0, err
    assert "2 bad rows dropped (1 empty assistant, 1 empty user;" in out
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    dropped = record["sessions"][-1]["dropped_bad_rows"]
    assert dropped == {f"{tmp_path / 'pc.parquet'} (split train)": {"empty assistant": 1, "empty user": 1}}
    # a JSONL file: the line is named, also when dropped
    lines = [json.dumps({"prompt": "1 + 1?", "completion": "2"})] * 4
    lines[1] = "{not json"
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    rc, _, err = run_cli(capsys, "--train_file", data, *TRAIN, "--output_dir", tmp_path / "c")
    one_line_error(rc, err, f"{data}:2: malformed JSON")
    rc, out, err = run_cli(capsys, "--train_file", data, *TRAIN, "--drop_bad_rows", "--output_dir", tmp_path / "d")
    assert rc == 0, err
    assert f"{data}: 1 bad rows dropped (1 malformed JSON; {data}:2)" in out


def test_source_flags_refused_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "data.xlsx").write_text("x")
    cases = [
        (["--dataset_name", tmp_path / "missing.parquet"], "no such file or folder"),
        (["--dataset_name", tmp_path / "data.xlsx"], "unknown file type .xlsx"),
        (["--dataset_split", "test"], "--dataset_split applies to --dataset_name"),
        (["--dataset_name", tmp_path, "--train_file", tmp_path / "x.jsonl"], "not both"),
        (["--dataset_name", tmp_path, "--dataset_streaming", "--eval_split", "0.1"], "as unbounded as the stream"),
        (["--dataset_num_proc", "0"], "--dataset_num_proc"),
        (["--dataset_name", tmp_path, "--dataset_streaming", "--dataset_num_proc", "2"], "as training draws it"),
    ]
    for flags, needle in cases:
        rc, _, err = run_cli(capsys, *flags, *TRAIN, "--output_dir", tmp_path / "out")
        one_line_error(rc, err, needle)


def test_an_unreachable_hub_id_fails_in_one_line_before_torch_loads(tmp_path: Path) -> None:
    """The Hub id is probed on the command line before the flags' parser (transformers, torch) is imported, so
    it fails in about a second: asserted as what was imported, not as a time."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("HF_HUB_OFFLINE",)}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")  # nothing listens on port 9
    argv = ["--dataset_name", "someone/some-dataset", "--max_train_steps", "1", "--output_dir", str(tmp_path / "o")]
    code = (
        "import sys; from llmjepa.commands.train import main; rc = main(sys.argv[1:]); "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    want = "llmjepa-train: error: --dataset_name someone/some-dataset: no such local file or folder"
    assert lines[0].startswith(want)
    assert "and 127.0.0.1 is unreachable" in lines[0]
    assert result.stdout.strip() == "[]", result.stdout  # neither torch, transformers nor datasets was imported
    assert not (tmp_path / "o").exists()


# ---- the library: Dataset, DatasetDict ------------------------------------------------------------------
def test_library_takes_a_dataset_dict_and_prompt_completion(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    rows = bundled_rows()
    pairs = [{"prompt": r["messages"][-2]["content"], "completion": r["messages"][-1]["content"]} for r in rows]
    table = datasets.Dataset.from_list(pairs)
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, use_cpu=True)
    args.report_to = []
    trainer = JepaTrainer(
        model=load_model(DEFAULT_MODEL_NAME, tokenizer),
        args=args,
        train_dataset=datasets.DatasetDict({"train": table, "test": table.select(range(2))}),
        eval_dataset=datasets.DatasetDict({"test": table.select(range(2))}),
        processing_class=tokenizer,
        loss_config=LossConfig(lbd=0.1),
        view_config=ViewConfig(predictors=1),
    )
    assert len(trainer.train_dataset) == N_ROWS and len(trainer.eval_dataset) == 2
    with pytest.raises(UserError, match=r"train_dataset: a DatasetDict with splits a, b"):
        JepaTrainer(
            model=load_model(DEFAULT_MODEL_NAME, tokenizer),
            args=args,
            train_dataset=datasets.DatasetDict({"a": table, "b": table}),
            processing_class=tokenizer,
        )


# ---- streaming: an IterableDataset, tokenized as training draws it ------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_streaming_takes_the_same_step_as_the_whole_dataset(tmp_path: Path, impl: str) -> None:
    """Two rows, one batch of two: the stream's first step is the loaded dataset's (within float sums' order)."""
    datasets.Dataset.from_list(bundled_rows(2)).to_parquet(str(tmp_path / "two.parquet"))
    flags = ["--dataset_name", tmp_path / "two.parquet", "--predictors", "1", "--impl", impl]
    want = first_record(tmp_path, "whole", *flags)
    got = first_record(tmp_path, "stream", *flags, "--dataset_streaming")
    for key in COMPARED:
        assert math.isclose(got[key], want[key], rel_tol=1e-5, abs_tol=1e-6), (key, got[key], want[key])


def test_streaming_trains_its_steps_and_needs_max_train_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = [{"prompt": f"What is {k} + 1?", "completion": f"{k + 1}"} for k in range(5)]
    pairs[1]["completion"] = ""
    datasets.Dataset.from_list(pairs).to_parquet(str(tmp_path / "pc.parquet"))
    base = ["--dataset_name", tmp_path / "pc.parquet", "--dataset_streaming", "--batch_size", "2", "--grad_accum", "1"]
    rc, _, err = run_cli(capsys, *base, "--output_dir", tmp_path / "a")
    one_line_error(rc, err, "--dataset_streaming", "--max_train_steps")
    rc, _, err = run_cli(capsys, *base, "--max_train_steps", "3", "--output_dir", tmp_path / "b")
    assert rc == 2 and "Traceback" not in err, err  # met while training (after the progress bar has started)
    assert err.strip().endswith(
        "llmjepa-train: error: " + f"{tmp_path / 'pc.parquet'} (split train, row 1): empty assistant message"
    )
    rc, out, err = run_cli(capsys, *base, "--max_train_steps", "3", "--drop_bad_rows", "--output_dir", tmp_path / "c")
    assert rc == 0, err
    assert "llmjepa: bad row dropped: " in caplog.text and "(split train, row 1): empty assistant" in caplog.text
    steps = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in steps)
    assert "| training examples | streamed |" in (tmp_path / "c" / "README.md").read_text()  # the card has no count
    source = str(tmp_path / "pc.parquet")  # the stream's drops counted as drawn (row 1 once, though met twice)
    assert (
        f"llmjepa-train: warning: {source}: 1 bad rows dropped (1 empty assistant; {source} (split train, row 1))"
        in out
    )
    session = json.loads((tmp_path / "c" / "run.json").read_text())["sessions"][-1]
    assert session["dropped_bad_rows"] == {source: {"empty assistant": 1}}


def test_streaming_counts_truncated_examples_once_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A stream's examples longer than --max_length are truncated and counted in a warning line, as a whole
    dataset's are: each row once, though 4 steps of 2 draw the 5 rows twice over."""
    pairs = [{"prompt": f"What is {k} + 1?", "completion": f"{k + 1}"} for k in range(5)]
    for k in (0, 3):
        pairs[k]["completion"] = " ".join(f"{k + 1}" for _ in range(60))  # far past --max_length 48
    datasets.Dataset.from_list(pairs).to_parquet(str(tmp_path / "pc.parquet"))
    argv = ["--dataset_name", tmp_path / "pc.parquet", "--dataset_streaming", "--max_length", "48", *TRAIN[:4]]
    rc, out, err = run_cli(capsys, *argv, "--max_train_steps", "4", "--output_dir", tmp_path / "run")
    assert rc == 0, err
    source = str(tmp_path / "pc.parquet")
    assert f"llmjepa-train: warning: {source}: 2 streamed examples longer than --max_length, truncated" in out, out


def test_library_takes_an_iterable_dataset(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    stream = datasets.Dataset.from_list(bundled_rows()).to_iterable_dataset()
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, use_cpu=True)
    args.report_to = []
    trainer = JepaTrainer(
        model=load_model(DEFAULT_MODEL_NAME, tokenizer),
        args=args,
        train_dataset=stream,
        processing_class=tokenizer,
        view_config=ViewConfig(predictors=1),
    )
    trainer.train()
    assert len(trainer.history) == 3 and all(r["pairs"] > 0 and math.isfinite(r["loss"]) for r in trainer.history)


def test_library_maps_columns_with_a_data_format(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from llmjepa import DataFormat, RunOptions

    table = datasets.Dataset.from_list(GSM8K)
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, use_cpu=True)
    args.report_to = []
    model = load_model(DEFAULT_MODEL_NAME, tokenizer)
    with pytest.raises(UserError, match=r"train_dataset\[0\]: expected an object with .*columns: answer, question"):
        JepaTrainer(model=model, args=args, train_dataset=table, processing_class=tokenizer)
    trainer = JepaTrainer(
        model=model,
        args=args,
        train_dataset=table,
        processing_class=tokenizer,
        run_options=RunOptions(data_format=DataFormat(prompt_field="question", completion_field="answer")),
    )
    assert len(trainer.train_dataset) == N_ROWS and trainer.train_dataset[0].code_ids


# ---- --jepa_turns all: one Text -> Code pair per exchange ------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("additive", [False, True])
def test_jepa_turns_all_pairs_every_exchange(tmp_path: Path, impl: str, additive: bool) -> None:
    data = write_jsonl(tmp_path / "multi.jsonl", multi_turn_rows())
    flags = ["--dataset_name", data, "--predictors", "1", "--impl", impl, *(["--additive_mask"] * additive)]
    last = first_record(tmp_path, "last", *flags)
    every = first_record(tmp_path, "all", *flags, "--jepa_turns", "all")
    assert every["pairs"] == 2 * last["pairs"] == 4  # a batch of 2 conversations of 2 exchanges each
    assert every["label_tokens"] == last["label_tokens"] and every["rows"] > last["rows"]
    assert math.isfinite(every["jepa_loss"]) and every["jepa_loss"] > 0
    # one-turn rows: the same step as without it
    one = write_jsonl(tmp_path / "one.jsonl", bundled_rows())
    assert_same_step(
        first_record(tmp_path, "one-all", "--train_file", one, "--jepa_turns", "all", "--impl", impl),
        first_record(tmp_path, "one-last", "--train_file", one, "--impl", impl),
    )


def test_jepa_turns_all_reads_each_exchange_and_is_view_based_only() -> None:
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    row = multi_turn_rows(1)[0]
    (enc,), _ = encode_all(examples_from_records([row]), tokenizer, ViewConfig(predictors=1, jepa_turns="all"))
    ((text, code),) = enc.earlier_views
    assert row["messages"][1]["content"] in tokenizer.decode(text) and "<|predictor_1|>" in tokenizer.decode(text)
    assert tokenizer.decode(code).endswith(row["messages"][2]["content"] + "<|eot_id|>")
    with pytest.raises(UserError, match="view-based LLM-JEPA only"):
        ViewConfig(num_prediction_steps=2, jepa_turns="all")
