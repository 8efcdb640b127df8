"""llmjepa-train takes every TrainingArguments field beside upstream's flags, --config FILE.yaml for any of them,
--bf16 mixed precision beside --dtype bfloat16 weights, and writes one checkpoint per epoch under any number of
ranks (torchrun, 2 CPU processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from llmjepa.commands.train import main, parse_args
from llmjepa.default_model import sample_data_path

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_training_arguments_fields_and_aliases(tmp_path: Path) -> None:
    args = parse_args(
        ["--output_dir", str(tmp_path), "--report_to", "tensorboard", "--lr_scheduler_type", "cosine"]
        + ["--warmup_ratio", "0.1", "--weight_decay", "0.01", "--deepspeed", "ds.json"]
        + ["--per_device_train_batch_size", "5", "--max_steps", "7", "--learning_rate", "3e-4"]
    )
    assert args.training_overrides == {
        "report_to": "tensorboard",
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,  # transformers 5's warmup_steps below 1 is a ratio
        "weight_decay": 0.01,
        "deepspeed": "ds.json",
    }
    # the fields that upstream flags already are: aliases of upstream's names
    assert (args.batch_size, args.max_train_steps, args.learning_rate) == (5, 7, 3e-4)
    # upstream's defaults where nothing is given
    plain = parse_args(["--output_dir", str(tmp_path)])
    assert plain.training_overrides == {} and (plain.batch_size, plain.grad_accum, plain.debug) == (4, 4, 0)


def test_config_file_sets_any_flag_and_the_command_line_wins(tmp_path: Path) -> None:
    config = write(
        tmp_path / "run.yaml",
        "regular: true\nbatch_size: 2\nlearning_rate: 1e-3\nno_localized_masks: false\n"
        "lr_scheduler_type: constant\nreport_to: none\nbf16: true\n",
    )
    args = parse_args(["--config", str(config), "--batch_size", "3", "--output_dir", str(tmp_path)])
    assert (args.regular, args.batch_size, args.learning_rate, args.localized_masks) == (True, 3, 1e-3, True)
    assert args.training_overrides == {"lr_scheduler_type": "constant", "report_to": "none", "bf16": True}
    assert args.dtype == "float32"  # mixed precision keeps float32 master weights


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("regular: true\nfoo: 1\n", "run.yaml line 2: unknown setting 'foo'"),
        ("regular: 1\n", "run.yaml line 1: regular: expected true or false, got 1"),
        ("batch_size: two\n", "run.yaml line 1: batch_size: 'two' is not valid"),
        ("lr_scheduler_type: fancy\n", "run.yaml line 1: lr_scheduler_type: 'fancy' is not one of linear"),
        ("regular: [1\n", "run.yaml line 2: not valid YAML"),
        ("- regular\n", "run.yaml: expected `name: value` lines"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    config = write(tmp_path / "run.yaml", text)
    assert main(["--config", str(config), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bf16", "--dtype", "bfloat16"], "--bf16 is mixed precision over float32 weights; --dtype bfloat16"),
        (["--bf16", "--fp16"], "--bf16 and --fp16 are two mixed precisions"),
        (["--remove_unused_columns", "true"], "--remove_unused_columns: not supported"),
        (["--enable_jit_checkpoint"], "--enable_jit_checkpoint: not supported (llmjepa already finishes the step"),
        pytest.param(
            ["--fsdp"],
            "--fsdp needs CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal"),
        ),
        (["--warmup_ratio", "1.5"], "--warmup_ratio 1.5: must be in [0, 1)"),
        (["--config", "missing.yaml"], "--config missing.yaml: no such file"),
    ],
)
def test_bad_training_flags(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_contradictory_training_arguments_fail_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmjepa.commands.run

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("data or model loaded before TrainingArguments were checked")

    monkeypatch.setattr(llmjepa.commands.run, "build_run", no_loading)
    argv = ["--load_best_model_at_end", "--eval_strategy", "epoch", "--save_steps", "3"]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmjepa-train: error: TrainingArguments: --load_best_model_at_end requires")
    assert len(err.splitlines()) == 1


def test_schedule_report_to_and_bf16_mixed_precision_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    out, ref = tmp_path / "out", tmp_path / "ref"
    argv = ["--regular", "--max_train_steps", "4", "--learning_rate", "1e-3"]
    argv += ["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "2", "--report_to", "tensorboard"]
    assert main([*argv, "--bf16", "--output_dir", str(out)]) == 0, capsys.readouterr().err[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])  # warmup, then constant
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard wrote its event file
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # fp32 master weights
    # the same run in float32 throughout: bf16 autocast changes the loss, by bf16's rounding only
    assert main([*argv, "--output_dir", str(ref)]) == 0
    ref_records = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    first, ref_first = records[0]["lm_loss"], ref_records[0]["lm_loss"]
    assert first != ref_first and abs(first - ref_first) / ref_first < 1e-2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)
def test_one_checkpoint_per_epoch_under_two_ranks(tmp_path: Path) -> None:
    """16 examples, 2 ranks x batch 2 x grad_accum 2: 2 steps an epoch, 2 epochs: checkpoints 2 and 4."""
    lines = sample_data_path("train").read_text(encoding="utf-8").splitlines()[:16]
    data = write(tmp_path / "sixteen.jsonl", "".join(line + "\n" for line in lines))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), "train.py", "--train_file", str(data), "--regular"]
    cmd += ["--num_epochs", "2", "--batch_size", "2", "--grad_accum", "2", "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints == [2, 4]
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["epoch"] == 2.0 and state["global_step"] == 4


FSDP_PROBE = """
import json, os, sys
import torch.distributed as dist
from llmjepa.commands.train import parse_args
from llmjepa.commands.run import build_run

run = build_run(parse_args(sys.argv[1:]))
run.trainer.train()
if dist.get_rank() == 0:
    record = {"fsdp": run.trainer.is_fsdp_enabled, "losses": [r["loss"] for r in run.trainer.history]}
    print("PROBE " + json.dumps(record), flush=True)
dist.barrier()
sys.stdout.flush()
os._exit(0)  # as cli.exit_torchrun_worker: no process-group teardown after the work is done
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate runs FSDP on GPUs only: the GPU acceptance run")
def test_fsdp_trains_as_ddp_does(tmp_path: Path) -> None:
    """--fsdp through TrainingArguments engages FSDP (2 GPUs where there are, else 1) and follows DDP's losses."""
    lines = sample_data_path("train").read_text(encoding="utf-8").splitlines()[:16]
    data = write(tmp_path / "sixteen.jsonl", "".join(line + "\n" for line in lines))
    probe = write(tmp_path / "probe.py", FSDP_PROBE)
    fsdp_config = write(tmp_path / "fsdp.json", json.dumps({"version": 2}))
    ranks = str(min(2, torch.cuda.device_count()))
    results = {}
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp", "--fsdp_config", str(fsdp_config)])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", ranks, "--master_addr", "127.0.0.1"]
        cmd += ["--master_port", str(free_port()), str(probe), "--train_file", str(data), "--regular"]
        cmd += ["--max_train_steps", "3", "--batch_size", "2", "--grad_accum", "2", "--learning_rate", "1e-3"]
        cmd += ["--dtype", "float32", "--impl", "reference", "--output_dir", str(tmp_path / name), *extra]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        probe_line = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
        results[name] = json.loads(probe_line[-1][len("PROBE ") :])
    assert results["fsdp"]["fsdp"] and not results["ddp"]["fsdp"]
    assert results["fsdp"]["losses"] == pytest.approx(results["ddp"]["losses"], rel=1e-4)
