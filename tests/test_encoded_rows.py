"""Encoding with datasets.map (issue 18, item 3): the encoded rows in Arrow are exactly encode_all's examples in
every mode and with several processes, a second run reads the cache (and a changed file, option or tokenizer
does not), and bad rows found by the processes are still named by source, split and row (file:line) or counted.
Every dataset is built here; nothing touches the network."""

import datetime
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from llmjepa import load_tokenizer, sample_data_path
from llmjepa.commands.sources import encode_data
from llmjepa.commands.train import main, parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME
from llmjepa.errors import UserError
from llmjepa.views import encoded_rows
from llmjepa.views.encoded_rows import encode_dataset
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import examples_from_records

datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install datasets)")


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """datasets' cache (and so the encoded cache) in the test's folder, and the Hub offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-datasets-cache" / encoded_rows.CACHE_FOLDER


def bundled_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in sample_data_path("train").read_text().splitlines()[:n]]


def multi_turn(rows: list[dict]) -> list[dict]:
    """Two exchanges a conversation: a row's exchange, then the next row's."""
    out = []
    for a, b in zip(rows, rows[1:] + rows[:1]):
        out.append({"messages": a["messages"] + [m for m in b["messages"] if m["role"] != "system"]})
    return out


MODES = {
    "regular": (ViewConfig(regular=True), None),
    "view_based": (ViewConfig(predictors=2, max_length=64), None),  # max_length 64: some truncated
    "steps": (ViewConfig(predictors=1, num_prediction_steps=2, step_separator=" "), None),
    "turns_all_2_procs": (ViewConfig(predictors=1, jepa_turns="all"), 2),
}


@pytest.mark.parametrize("mode", MODES)
def test_encoded_rows_are_encode_all_in_every_mode(mode: str) -> None:
    cfg, num_proc = MODES[mode]
    rows = bundled_rows(24)
    rows = multi_turn(rows) if cfg.jepa_turns == "all" else rows
    rows[3]["when"] = datetime.date(2026, 12, 5)  # a column no format reads, of a type JSON has not
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    want, want_report = encode_all(examples_from_records(rows), tokenizer, cfg)
    for table in (rows, datasets.Dataset.from_list(rows)):  # a list through its JSON, a Dataset by its columns
        got, report = encode_dataset(table, tokenizer, cfg, num_proc=num_proc)
        assert [asdict(e) for e in got] == [asdict(e) for e in want]
        assert asdict(report) == asdict(want_report)
    rows.insert(5, {"messages": "not a list"})
    with pytest.raises(UserError, match=r"train_dataset\[5\]: \"messages\": expected a list of messages"):
        encode_dataset(rows, tokenizer, cfg, num_proc=num_proc)


def encoded_by_flags(*flags: object) -> list[dict]:
    """encode_data as llmjepa-train runs it (view-based, K = 1), the examples as dicts."""
    from llmjepa.commands.config import derive
    from llmjepa.commands.run import encode_part

    args = parse_args([str(f) for f in [*flags, "--predictors", "1", "--output_dir", "/tmp/unused"]])
    cfg = derive(args).view
    train, _ = encode_data(args, load_tokenizer(args.model_name), cfg, {})
    return [asdict(e) for e in encode_part(train, cfg, {})]


def test_a_second_run_reads_the_cache_and_a_change_encodes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_datasets_cache: Path
) -> None:
    rows = bundled_rows(12)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    real = encoded_rows.encode_row
    monkeypatch.setattr(encoded_rows, "encode_row", lambda *a: calls.append(1) or real(*a))
    for source in (["--dataset_name", tmp_path / "rows.parquet"], ["--train_file", jsonl]):
        first = encoded_by_flags(*source)
        assert len(calls) == 12 and first
        assert encoded_by_flags(*source) == first and len(calls) == 12  # read from the cache: nothing encoded
        assert encoded_by_flags(*source, "--front_pred") != first and len(calls) == 24  # an option changed
        calls.clear()
    assert len(list(local_datasets_cache.glob("*-checked.arrow"))) == 4  # the check pass's, cached too
    assert len(list(local_datasets_cache.glob("*.arrow"))) == 8
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))  # the same file, other content
    assert encoded_by_flags("--train_file", jsonl) != first and len(calls) == 12

    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    other = load_tokenizer(DEFAULT_MODEL_NAME)
    other.add_tokens(["<|another|>"])
    key = lambda t: encoded_rows.tokenizer_fingerprint(t)  # noqa: E731
    assert key(tokenizer) == key(load_tokenizer(DEFAULT_MODEL_NAME)) != key(other)


def test_bad_rows_found_by_two_processes_are_named_or_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmjepa.commands.run

    def loaded(*_: object) -> None:
        raise AssertionError("the model loaded before the bad row was reported")

    monkeypatch.setattr(llmjepa.commands.run, "load_model_from_args", loaded)
    rows = bundled_rows(12)
    rows[7] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}
    rows[9] = {"question": "no known columns"}
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows[:9]) + "{not json\n")
    common = ["--dataset_num_proc", "2", "--max_train_steps", "1"]
    for source, where in (
        (["--dataset_name", tmp_path / "rows.parquet"], f"{tmp_path / 'rows.parquet'} (split train, row 7)"),
        (["--train_file", jsonl], f"{jsonl}:8"),
    ):
        capsys.readouterr()
        rc = main([str(f) for f in [*source, *common, "--output_dir", tmp_path / "out"]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0] == f"llmjepa-train: error: {where}: empty assistant message", err

    def encoded(*_: object) -> None:
        raise AssertionError("a row was encoded before the bad row was reported")

    args = parse_args([str(f) for f in ["--dataset_name", tmp_path / "rows.parquet", "--max_train_steps", "1"]])
    with monkeypatch.context() as patch:  # the check pass finds it: no row is tokenized first
        patch.setattr(encoded_rows, "encode_row", encoded)
        with pytest.raises(UserError, match=r"\(split train, row 7\): empty assistant message"):
            encode_data(args, load_tokenizer(args.model_name), ViewConfig(predictors=1), {})
    bad_rows: dict = {}
    args = parse_args([str(f) for f in ["--dataset_name", tmp_path / "rows.parquet", "--drop_bad_rows", *common[:2]]])
    from llmjepa.commands.config import derive

    train, _ = encode_data(args, load_tokenizer(args.model_name), derive(args).view, bad_rows)
    counted = bad_rows[f"{tmp_path / 'rows.parquet'} (split train)"]
    # parquet holds both columns in every row: row 9's "messages" is null
    assert counted.counts == {"empty assistant": 1, "bad messages": 1} and len(train.rows) == 10
    args = parse_args([str(f) for f in ["--train_file", jsonl, "--drop_bad_rows", *common[:2]]])
    encode_data(args, load_tokenizer(args.model_name), derive(args).view, bad_rows)
    assert bad_rows[str(jsonl)].counts == {"empty assistant": 1, "malformed JSON": 1}
    assert bad_rows[str(jsonl)].first == [f"{jsonl}:8", f"{jsonl}:10"]


def test_a_stream_counts_what_its_loader_workers_drop() -> None:
    """Streamed rows are checked in data-loader workers: what they drop reaches the training process's counts, each
    row once however many passes meet it."""
    import torch

    from llmjepa.views.formats import DataFormat
    from llmjepa.views.streaming import EncodedStream

    rows = bundled_rows(8)
    rows[2] = {"messages": "not a list"}
    rows[5] = {"prompt": "what is " + "1 + " * 300 + "1?", "completion": "301"}  # fills max_length: dropped
    rows[6] = {"prompt": "a question", "completion": ""}
    cfg = ViewConfig(predictors=1, max_length=200)
    stream = EncodedStream(rows, load_tokenizer(DEFAULT_MODEL_NAME), cfg, DataFormat(), drop_bad_rows=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=1, num_workers=2, collate_fn=lambda batch: batch[0])
    for _ in range(2):  # two passes: each dropped row counted once
        assert sorted(e.index for e in loader) == [0, 1, 3, 4, 7]
    bad_rows, report = stream.counts()
    assert bad_rows.counts == {"bad messages": 1, "empty assistant": 1}
    assert (report.dropped, report.dropped_sources) == (1, ["train_dataset[5]"])
