"""--eval_accuracy: the callback scores the training model's greedy answers and logs through trainer.log."""

import json
from pathlib import Path

import pytest

from llmjepa.commands.run import build_run
from llmjepa.commands.train import parse_args
from llmjepa.default_model import sample_data_path
from llmjepa.errors import UserError
from llmjepa.evaluation.callback import GenerationAccuracyCallback, generating
from llmjepa.evaluation.generation import GenerationSettings, HFGenerator


def eval_file(tmp_path: Path, n: int) -> Path:
    lines = sample_data_path("eval").read_text().splitlines()[:n]
    path = tmp_path / "arith_eval.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(tmp_path: Path, *extra: str):
    argv = ["--output_dir", str(tmp_path / "run"), "--max_train_steps", "1", "--batch_size", "2", "--grad_accum", "1"]
    return build_run(parse_args([*argv, *extra]))


@pytest.mark.parametrize("mode", [["--regular", "--impl", "reference"], ["--predictors", "1", "--impl", "fast"]])
def test_logged_accuracy_is_the_share_of_matching_greedy_answers(tmp_path: Path, mode: list) -> None:
    data = eval_file(tmp_path, 4)
    flags = ["--eval_accuracy", "--eval_accuracy_samples", "4", "--eval_accuracy_max_new_tokens", "6"]
    run = build(tmp_path, *mode, "--eval_file", str(data), *flags)
    [callback] = [c for c in run.trainer.callback_handler.callbacks if isinstance(c, GenerationAccuracyCallback)]
    assert callback.settings.max_new_tokens == 6 and not callback.settings.do_sample
    model, tokenizer = run.trainer.model, run.trainer.processing_class
    with generating(model):
        greedy = HFGenerator(model, tokenizer, GenerationSettings(max_new_tokens=6)).generate(callback.prompts)
    answers = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in greedy]
    assert all(answers), "the references below must be non-empty"
    # references equal to the model's own greedy answer for examples 0 and 2: accuracy must be 2/4
    for i in (0, 2):
        callback.examples[i].messages[-1]["content"] = answers[i]
    model.train()
    callback.on_evaluate(run.trainer.args, run.trainer.state, run.trainer.control)
    assert run.trainer.state.log_history[-1]["eval_accuracy"] == 0.5
    assert run.trainer.state.log_history[-1]["eval_accuracy_n"] == 4
    assert model.training  # the training mode (and the fast path's attention) is given back
    assert model.config._attn_implementation == ("sdpa" if "reference" in mode else "llmjepa_block_causal")


def test_needs_an_eval_set(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--eval_accuracy needs an eval set"):
        build(tmp_path, "--regular", "--eval_accuracy")


def test_gsm8k_eval_file_without_answers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k_small.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "4"}]}))
    with pytest.raises(UserError, match="gsm8k_small.jsonl:1: gsm8k scoring"):
        build(tmp_path, "--regular", "--eval_file", str(path), "--eval_accuracy", "--batch_size", "1")
