"""--lbd 0 trains exactly as --regular and as plain Hugging Face SFT; the step loss is per token.

Float32 on CPU, dropout off, lr 1e-3 so the weights move: at every one of 20 optimizer steps the
loss and the gradient norm of the run that builds and runs the views with weight 0 equal those
of --regular and of a plain transformers.Trainer to a relative 1e-5, with grad_accum 1 and 4,
for view-based, multi-step and --additive_mask LLM-JEPA. Also llmjepa-parity, the tool that
shows the same on a user's data and model.
"""

import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from llmjepa import parity
from llmjepa.commands.run import build_run, train
from llmjepa.commands.train import parse_args

STEPS = 20
TOLERANCE = 1e-5
BASE = ["--batch_size", "2", "--learning_rate", "1e-3", "--dropout", "0", "--dtype", "float32"]
MODES = {
    "view-based": ["--lbd", "0", "--predictors", "1"],
    "multi-step": ["--lbd", "0", "--num_prediction_steps", "2", "--predictors", "1"],
    "additive-mask": ["--lbd", "0", "--predictors", "1", "--additive_mask"],
}
OUT = Path("unset")  # the module's scratch folder, set by the fixture below


@pytest.fixture(scope="module", autouse=True)
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A scratch folder shared by the module's runs."""
    global OUT
    OUT = tmp_path_factory.mktemp("parity")
    yield


def flags(mode_flags: list[str], grad_accum: int, name: str, steps: int = STEPS) -> list[str]:
    out = OUT / f"{name}-ga{grad_accum}"
    return [
        *BASE,
        *mode_flags,
        "--grad_accum",
        str(grad_accum),
        "--max_train_steps",
        str(steps),
        "--output_dir",
        str(out),
    ]


@cache
def ours(mode: str, grad_accum: int) -> tuple[dict, ...]:
    """Per-step records of llmjepa's trainer, through the same entry point as llmjepa-train."""
    mode_flags = ["--regular"] if mode == "regular" else MODES[mode]
    return tuple(train(parse_args(flags(mode_flags, grad_accum, mode))).history)


@cache
def plain_hf(grad_accum: int) -> tuple[dict, ...]:
    """Per-step records of a plain transformers.Trainer on the same view-1 ids and labels."""
    args = parse_args(flags(["--regular"], grad_accum, "hf"))
    return tuple(parity.run_hf(args))


def assert_same_steps(a: tuple[dict, ...], b: tuple[dict, ...], what: str) -> float:
    """Every step: same data consumed, same lr, loss and grad norm within TOLERANCE. Returns the max rel diff."""
    assert len(a) == len(b) == STEPS, what
    worst = 0.0
    for x, y in zip(a, b):
        step = x["step"]
        assert (x["label_tokens"], x["microbatches"]) == (y["label_tokens"], y["microbatches"]), (what, step)
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-12), (what, step)
        for key in ("loss", "grad_norm"):
            d = parity.rel_diff(x[key], y[key])
            assert d < TOLERANCE, f"{what}: step {step} {key} {x[key]!r} vs {y[key]!r} (rel diff {d:.2e})"
            worst = max(worst, d)
    return worst


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_regular_equals_plain_hf_sft(grad_accum: int) -> None:
    regular, hf = ours("regular", grad_accum), plain_hf(grad_accum)
    assert all(r["pairs"] == 0 and r["rows"] == 2 * r["microbatches"] for r in regular)
    assert all(r["rows"] == 2 * r["microbatches"] == 2 * grad_accum for r in hf)
    worst = assert_same_steps(regular, hf, f"--regular vs plain HF, grad_accum {grad_accum}")
    print(f"--regular vs HF, grad_accum {grad_accum}: max rel diff {worst:.2e}")


@pytest.mark.parametrize("grad_accum", [1, 4])
@pytest.mark.parametrize("mode", list(MODES))
def test_lbd_0_equals_regular_and_plain_hf_sft(mode: str, grad_accum: int) -> None:
    views = ours(mode, grad_accum)
    # the views were built and run: extra rows and JEPA pairs in every microbatch
    rows_per_example = {"view-based": 3, "multi-step": 3, "additive-mask": 2}[mode]
    assert all(r["rows"] == 2 * rows_per_example * r["microbatches"] for r in views)
    assert all(r["pairs"] >= 2 * r["microbatches"] and r["jepa_loss"] > 0 for r in views)
    assert views[-1]["loss"] < views[0]["loss"] - 0.3  # the weights moved
    worst_regular = assert_same_steps(views, ours("regular", grad_accum), f"{mode} --lbd 0 vs --regular")
    worst_hf = assert_same_steps(views, plain_hf(grad_accum), f"{mode} --lbd 0 vs plain HF")
    print(f"{mode}, grad_accum {grad_accum}: max rel diff vs regular {worst_regular:.2e}, vs HF {worst_hf:.2e}")


@pytest.mark.parametrize("mode_flags", [["--regular"], ["--lbd", "0.1", "--predictors", "1"]], ids=["regular", "jepa"])
def test_grad_accum_4_of_2_equals_one_batch_of_8(mode_flags: list[str]) -> None:
    """Per-token weighting: the step over 4 microbatches of 2 is the step over the 8 at once."""
    records, label_counts = [], []
    for batch, accum in ((2, 4), (8, 1)):
        argv = [*BASE, *mode_flags, "--max_train_steps", "1", "--output_dir", str(OUT / f"norm-{batch}x{accum}")]
        args = parse_args([*argv, "--batch_size", str(batch), "--grad_accum", str(accum)])
        run = build_run(args)
        collate = run.trainer.data_collator
        counts: list[int] = []

        def counting(batch_items: list, collate=collate, counts=counts) -> dict:
            out = collate(batch_items)
            counts.append(out["plan"].label_tokens)
            return out

        run.trainer.data_collator = counting
        run.trainer.train()
        records.append(run.trainer.history[0])
        label_counts.append(counts[:accum])  # the data loader may collate one batch ahead
    small, large = records
    assert len(set(label_counts[0])) > 1, "microbatches with equal label counts would not test the weighting"
    assert sum(label_counts[0]) == label_counts[1][0] == small["label_tokens"] == large["label_tokens"]
    assert (small["microbatches"], large["microbatches"]) == (4, 1)
    for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
        assert parity.rel_diff(small[key], large[key]) < TOLERANCE, (key, small[key], large[key])


# ---- llmjepa-parity -------------------------------------------------------------------------
def parity_argv(tmp_path: Path, *extra: str) -> list[str]:
    views = [] if "--regular" in extra else ["--predictors", "1"]
    return [
        *BASE,
        *views,
        "--grad_accum",
        "2",
        "--steps",
        "3",
        "--output_dir",
        str(tmp_path),
        "--plot",
        str(tmp_path / "curves.png"),
        *extra,
    ]


@pytest.mark.parametrize("against", ["regular", "hf"])
def test_parity_tool_agrees(tmp_path: Path, capsys: pytest.CaptureFixture, against: str) -> None:
    assert parity.main(parity_argv(tmp_path, "--num_prediction_steps", "2", "--against", against)) == 0
    out = capsys.readouterr().out
    assert "loss A" in out and "grad B" in out and "label tok A/B" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in {"1", "2", "3"}]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert float(r[3]) < TOLERANCE and float(r[6]) < TOLERANCE  # loss and grad norm rel diffs
        a_tokens, b_tokens = r[7].split("/")
        assert a_tokens == b_tokens and r[8] == "12/4" and r[9] == "2/2"  # 3 rows per example in A
    assert "AGREE: A and B agree on all 3 steps" in out
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    assert len((tmp_path / "A" / "metrics.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / f"B-{against}" / "metrics.jsonl").read_text().splitlines()) == 3


def test_parity_tool_across_epochs_and_short_last_steps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """10 examples, batch 2 x grad_accum 4: each epoch is a step of 4 microbatches and one of 1;
    6 steps cross 3 epochs (the sampler's order comes from data_seed and the epoch alone)."""
    from llmjepa.default_model import sample_data_path

    data = tmp_path / "ten.jsonl"
    data.write_text("".join(sample_data_path().read_text().splitlines(keepends=True)[:10]))
    argv = [*BASE, "--train_file", str(data), "--grad_accum", "4", "--num_prediction_steps", "2", "--predictors", "1"]
    argv += ["--steps", "6", "--against", "hf", "--output_dir", str(tmp_path / "out")]
    assert parity.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[9] for r in rows] == ["4/4", "1/1"] * 3  # microbatches per step, A/B
    assert "AGREE: A and B agree on all 6 steps" in out


def test_parity_tool_names_the_first_step_and_quantity_where_they_part(tmp_path: Path, capsys) -> None:
    assert parity.main(parity_argv(tmp_path, "--gamma", "2")) == 1
    out = capsys.readouterr().out
    assert "PART: A and B part at step 1, first in loss: A 13." in out and "also grad_norm" in out
    # lockstep: A stopped at the step where it parted from B
    assert len((tmp_path / "A" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "curves.png").is_file()


def test_parity_tool_parts_with_dropout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Dropout draws other random numbers when the views add rows: parity needs it off."""
    assert parity.main(parity_argv(tmp_path, "--dropout", "0.1", "--impl", "reference")) == 1  # fast has no dropout
    part = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PART:")]
    assert part and part[0].startswith("PART: A and B part at step 1") and "grad_norm" in part[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--regular", "--against", "regular"], "compares a run with itself"),
        (["--train_file", "/nonexistent/data.jsonl"], "no such file"),
    ],
)
def test_parity_tool_user_errors(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert parity.main(parity_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmjepa-parity: error:") and message in err and "\n" not in err


def test_parity_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "llmjepa.commands.parity", "--tolerance", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "llmjepa-parity: error: --tolerance must be > 0"


def test_rel_diff_never_agrees_on_nan_or_inf() -> None:
    nan, inf = float("nan"), float("inf")
    assert parity.rel_diff(1.0, 1.0) == 0.0 and parity.rel_diff(2.0, 1.0) == 0.5
    assert parity.rel_diff(nan, nan) == inf and parity.rel_diff(inf, inf) == inf and parity.rel_diff(1.0, nan) == inf
    same = dict.fromkeys(parity.QUANTITIES, 1)
    assert parity.partings({**same, "loss": nan}, same, 1e-5) == [("loss", inf)]
