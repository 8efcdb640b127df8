"""--lora: the embedding rows of llmjepa's tokens (predictors, <|perception|>, chat markers it added) train by
default and stay frozen with --lora_freeze_new_tokens (upstream's behaviour); --lora_target_modules picks the
adapted modules; --merge_lora saves a plain model whose weights are the base merged with what trained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmjepa.commands.train import main
from llmjepa.model import ModelSpec, load_model, load_tokenizer, new_token_ids

pytest.importorskip("peft", reason="peft is not installed")

TRAIN = ["--num_prediction_steps", "2", "--predictors", "1", "--max_train_steps", "3", "--learning_rate", "1e-2"]


def base_embeddings() -> tuple[torch.Tensor, list[int]]:
    """The tiny model's embedding matrix before training (the CLI's seed) and llmjepa's token ids."""
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    torch.manual_seed(42)
    model = load_model(ModelSpec("llmjepa/tiny-llama", seed=42), tokenizer)
    return model.get_input_embeddings().weight.detach().clone(), new_token_ids(tokenizer)


def merged_embeddings(out: Path) -> torch.Tensor:
    assert not (out / "adapter_config.json").exists()  # a plain model: loads without peft
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    return model.get_input_embeddings().weight.detach()


def test_new_token_ids_are_llmjepas_tokens() -> None:
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    ids = new_token_ids(tokenizer)
    names = tokenizer.convert_ids_to_tokens(ids)
    assert set(names) == {f"<|predictor_{k}|>" for k in range(1, 11)} | {"<|perception|>"}


@pytest.mark.parametrize("freeze", [False, True])
def test_lora_trains_the_new_token_rows_unless_frozen(
    tmp_path: Path, capsys: pytest.CaptureFixture, freeze: bool
) -> None:
    out = tmp_path / "out"
    flags = ["--lora", "--merge_lora", *TRAIN, "--output_dir", str(out)] + ["--lora_freeze_new_tokens"] * freeze
    assert main(flags) == 0, capsys.readouterr().err[-3000:]
    before, ids = base_embeddings()
    after = merged_embeddings(out)
    assert after.shape == before.shape
    others = torch.ones(before.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(after[others], before[others])  # every other row stays the base's
    predictor = tokenizer_id("<|predictor_1|>")
    if freeze:
        assert torch.equal(after[ids], before[ids])
    else:
        assert not torch.equal(after[predictor], before[predictor])  # the predictor the views use trained


def tokenizer_id(token: str) -> int:
    return load_tokenizer("llmjepa/tiny-llama").convert_tokens_to_ids(token)


def test_lora_target_modules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from llmjepa.model import add_lora

    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    for targets, expected in (("q_proj,v_proj", {"q_proj", "v_proj"}), ("all-linear", None)):
        model = add_lora(load_model("llmjepa/tiny-llama", tokenizer), 4, targets, [])
        adapted = {name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
        if expected is None:  # every linear layer but the LM head
            assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted
            assert "lm_head" not in adapted
        else:
            assert adapted == expected
    assert main(["--lora", "--lora_target_modules", "no_such_proj", *TRAIN, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmjepa-train: error: --lora_target_modules no_such_proj:") and len(err.splitlines()) == 1


@pytest.mark.parametrize("flag", ["--merge_lora", "--lora_freeze_new_tokens"])
def test_lora_flags_need_lora(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str) -> None:
    assert main([flag, "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"llmjepa-train: error: {flag} applies to --lora"
