"""--use_liger_kernel with both executors: the Trainer patches the model with Liger's kernels when training
starts (RoPE, RMSNorm, SwiGLU, and the CausalLM forward for its fused linear cross entropy); llmjepa's
executors call that forward without labels, so they keep their own LM loss, and the step must be the one
they take without Liger. On the CPU, Liger's kernels run only where the Triton interpreter can run them: its
RoPE can, its RMSNorm and SwiGLU cannot (a float kernel argument the interpreter passes as a Python float, and
libdevice's rsqrt, which it does not map), so the CPU tests patch RoPE and the forward. The whole set, RMSNorm and
SwiGLU included, is `test_every_liger_kernel_composes_on_cuda`: the GPU acceptance's tests_liger step runs it."""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from llmjepa.commands.train import main, parse_args

liger = pytest.importorskip("liger_kernel", reason="liger-kernel is not installed (pip install -e '.[liger]')")

ON_CPU = '{"rms_norm": false, "swiglu": false}'  # what the Triton interpreter can run
COMPARED = ("loss", "lm_loss", "jepa_loss", "mean_cos", "grad_norm", "label_tokens", "pairs")


@pytest.fixture
def restore_llama_module():
    """Liger patches transformers' llama module itself (not only the model given): undone after each test."""
    from transformers.models.llama import modeling_llama

    names = ("apply_rotary_pos_emb", "LlamaRMSNorm", "LlamaMLP")
    saved = {name: getattr(modeling_llama, name) for name in names}
    forward = modeling_llama.LlamaForCausalLM.forward
    yield modeling_llama
    for name, value in saved.items():
        setattr(modeling_llama, name, value)
    modeling_llama.LlamaForCausalLM.forward = forward


def first_steps(tmp_path: Path, flags: list[str], steps: int = 1) -> tuple[list[dict], object]:
    from llmjepa.commands.run import build_run

    argv = ["--batch_size", "2", "--grad_accum", "1", "--max_train_steps", str(steps), "--save_strategy", "no"]
    trainer = build_run(parse_args([*argv, "--output_dir", str(tmp_path / "run"), *flags])).trainer
    trainer.train()
    return trainer.history, trainer


def first_step(tmp_path: Path, flags: list[str]) -> tuple[dict, object]:
    history, trainer = first_steps(tmp_path, flags)
    return history[0], trainer


@pytest.mark.interpreter
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_liger_composes_with_both_executors(tmp_path: Path, impl: str, restore_llama_module) -> None:
    from liger_kernel.transformers.model.llama import lce_forward
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    plain, _ = first_step(tmp_path / "plain", ["--impl", impl])
    patched, trainer = first_step(
        tmp_path / "liger", ["--impl", impl, "--use_liger_kernel", "--liger_kernel_config", ON_CPU]
    )
    assert restore_llama_module.apply_rotary_pos_emb is liger_rotary_pos_emb  # Liger ran, with its RoPE
    assert trainer.model.forward.__func__ is lce_forward  # and its forward, which the executors called
    for key in COMPARED:
        assert math.isclose(patched[key], plain[key], rel_tol=1e-4, abs_tol=1e-6), (key, patched[key], plain[key])


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: Liger's RMSNorm and SwiGLU kernels fail in the interpreter"
)
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_every_liger_kernel_composes_on_cuda(tmp_path: Path, impl: str, restore_llama_module) -> None:
    """Every kernel Liger applies to a Llama (RoPE, RMSNorm, SwiGLU and its forward), on the GPU, fp32: three
    optimizer steps equal the steps without Liger (the same operations fused; llmjepa's attention and LM loss)."""
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    plain, _ = first_steps(tmp_path / "plain", ["--impl", impl], steps=3)
    patched, trainer = first_steps(tmp_path / "liger", ["--impl", impl, "--use_liger_kernel"], steps=3)
    forwards = {getattr(m.forward, "__func__", None) for m in trainer.model.modules()}  # Liger rebinds forward
    assert LigerRMSNorm.forward in forwards and LigerSwiGLUMLP.forward in forwards, forwards
    assert len(patched) == len(plain) == 3
    for step, (a, b) in enumerate(zip(patched, plain), 1):
        for key in COMPARED:
            assert math.isfinite(a[key]), (step, key, a[key])
            assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-5), (step, key, a[key], b[key])


def test_liger_kernel_config_is_read_as_json_from_the_command_line_and_yaml(tmp_path: Path) -> None:
    """HfArgumentParser types the field dict[str, bool], which refused every command-line value."""
    flags = ["--use_liger_kernel", "--liger_kernel_config", ON_CPU, "--output_dir", str(tmp_path)]
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("without CUDA, --use_liger_kernel is refused unless the interpreter is on")
    overrides = parse_args(flags).training_overrides
    assert overrides["liger_kernel_config"] == json.loads(ON_CPU) and overrides["use_liger_kernel"] is True
    config = tmp_path / "run.yaml"
    config.write_text("use_liger_kernel: true\nliger_kernel_config: {rms_norm: false}\n")
    overrides = parse_args(["--config", str(config), "--output_dir", str(tmp_path)]).training_overrides
    assert overrides["liger_kernel_config"] == {"rms_norm": False}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--liger_kernel_config", "{bad"], "is not JSON"),
        (["--liger_kernel_config", "[1]"], "expected a JSON object"),
        (["--liger_kernel_config", '{"rope": false}'], "--liger_kernel_config configures --use_liger_kernel"),
    ],
)
def test_bad_liger_flags_are_one_line(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    """A value argparse refuses exits 2 through argparse (usage, then the error line); the others through main."""
    try:
        status = main([*flags, "--output_dir", str(tmp_path / "out")])
    except SystemExit as e:
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_liger_without_the_package_or_a_device_is_refused_before_loading(tmp_path: Path, capsys, monkeypatch) -> None:
    import importlib.util

    argv = ["--use_liger_kernel", "--output_dir", str(tmp_path / "out")]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a)
    )
    assert main(argv) == 2
    assert 'needs the liger-kernel package: pip install -e ".[liger]"' in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)

    if torch.cuda.is_available():
        return
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Liger's kernels are Triton GPU kernels; this run has no CUDA device" in err
    assert not (tmp_path / "out").exists()


def test_liger_is_not_part_of_the_run_identity(tmp_path: Path, monkeypatch) -> None:
    """How the run computes, as --impl: a checkpoint trained without Liger resumes with it."""
    from llmjepa.commands.run_folder import run_flags

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # lets --use_liger_kernel past its device check on a CPU
    base = ["--output_dir", str(tmp_path)]
    plain = run_flags(parse_args(base))
    with_liger = run_flags(parse_args([*base, "--use_liger_kernel", "--liger_kernel_config", ON_CPU]))
    assert plain == with_liger
    assert run_flags(parse_args([*base, "--lbd", "0.5"])) != plain  # a flag that does change the run
