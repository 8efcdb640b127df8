"""llmjepa-sweep on the embedded default, CI-sized: 2 settings x 1 seed, 2 steps, 2 eval examples."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from llmjepa import sweep
from llmjepa.default_model import sample_data_path


def tiny_config(tmp_path: Path) -> Path:
    config = {
        "train_args": ["--train_file", str(sample_data_path("train")), "--batch_size", "2", "--grad_accum", "1"]
        + ["--max_train_steps", "2", "--learning_rate", "1e-3"],
        "settings": {"regular": ["--regular"], "jepa": ["--predictors", "1"]},
        "seeds": [5],
        "eval_args": ["--input_file", str(sample_data_path("eval")), "--max_examples", "2", "--max_new_tokens", "4"],
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(config))
    return path


def test_sweep_end_to_end_and_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    argv = ["--config", str(tiny_config(tmp_path)), "--output_dir", str(out)]
    assert sweep.main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [(r["setting"], r["seed"]) for r in result["runs"]] == [("regular", 5), ("jepa", 5)]
    for r in result["runs"]:
        summary = json.loads((out / r["setting"] / "seed5" / "eval" / "summary.json").read_text())
        assert r["accuracy"] == summary["accuracy"] and r["n"] == 2
        assert (
            json.loads((out / r["setting"] / "seed5" / "model" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
            == 2
        )
    jepa_metrics = (out / "jepa" / "seed5" / "model" / "metrics.jsonl").read_text()
    assert '"jepa_loss"' in jepa_metrics  # the setting's flags reached llmjepa-train
    assert set(result["settings"]) == {"regular", "jepa"} and result["settings"]["jepa"]["seeds"] == 1
    assert (out / "sweep.png").stat().st_size > 0
    assert "| regular |" in (out / "sweep.md").read_text() and "| jepa |" in capsys.readouterr().out
    # finished runs are not run again
    calls = []
    monkeypatch.setattr(sweep, "run_tool", lambda *a: calls.append(a))
    assert sweep.main(argv) == 0
    assert calls == []


def test_aggregate_mean_and_sample_std() -> None:
    runs = [{"setting": "a", "accuracy": x} for x in (0.2, 0.4, 0.6)] + [{"setting": "b", "accuracy": 0.5}]
    stats = sweep.aggregate(runs, ["a", "b"])
    assert stats["a"]["mean"] == pytest.approx(0.4) and stats["a"]["std"] == pytest.approx(0.2)
    assert stats["b"] == {"mean": 0.5, "std": 0.0, "seeds": 1, "accuracies": [0.5]}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"settings": {}, "seeds": [1], "eval_args": ["--input_file", "x"]}, '"settings" must map'),
        ({"settings": {"r": ["--regular"]}, "seeds": [], "eval_args": ["--input_file", "x"]}, '"seeds" must'),
        ({"settings": {"r": ["--regular"]}, "seeds": [1], "eval_args": []}, "must give --input_file"),
        ({"settings": {"r": "--regular"}, "seeds": [1], "eval_args": ["--input_file", "x"]}, '"settings" must map'),
    ],
)
def test_bad_config(tmp_path: Path, capsys, config: dict, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert sweep.main(["--config", str(path), "--output_dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_default_config_names_existing_files() -> None:
    config = sweep.default_config()
    sweep.check_config(config, "default")
    assert Path(sweep.flag_value(config["eval_args"], "--input_file")).is_file()


def test_launcher_runs_the_tools_as_child_processes(tmp_path: Path) -> None:
    """--launcher "python": each tool runs as `python <console script> ...`, as under torchrun."""
    out = tmp_path / "out"
    argv = ["--config", str(tiny_config(tmp_path)), "--output_dir", str(out), "--settings", "regular"]
    assert sweep.main([*argv, "--launcher", shlex.quote(sys.executable)]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [r["setting"] for r in result["runs"]] == ["regular"] and result["runs"][0]["n"] == 2
    assert (out / "regular" / "seed5" / "model" / "config.json").is_file()
