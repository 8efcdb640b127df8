"""The embedded default: tokenizer, chat template, tiny Llama and bundled sample data."""

import json
import re
import subprocess
import sys
from fractions import Fraction
from functools import cache
from pathlib import Path

import pytest
import torch

from llmjepa.default_model import (
    BOS_TOKEN_ID,
    DEFAULT_MODEL_NAME,
    EOS_TOKEN_ID,
    build_default_model,
    build_default_tokenizer,
    default_model_config,
    sample_data_path,
)

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "datasets" / "gsm8k_test.jsonl"
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    *[f"<|predictor_{k}|>" for k in range(1, 11)],
    "<|perception|>",
]
EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")
GSM8K_STYLE = (
    "Janet\u2019s ducks lay 16 eggs per day.  She sells them for $2 each, a 150% markup.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day (80,000+50,000=$130,000).\n\n#### 18\n"
)


@cache
def tokenizer():
    return build_default_tokenizer()


@cache
def examples() -> list[list[dict]]:
    lines = []
    for split in ("train", "eval"):
        lines += sample_data_path(split).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines]


def ids_of(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def chat_ids(messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    encoded = tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=True)
    return encoded["input_ids"]


def evaluate(expression: str) -> Fraction:
    """Left to right, as the sample data writes its equations."""
    tokens = expression.split(" ")
    value = Fraction(int(tokens[0]))
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        b = Fraction(int(operand))
        value = value + b if op == "+" else value - b if op == "-" else value * b if op == "*" else value / b
    return value


def test_sample_data_is_what_the_script_generates() -> None:
    script = ROOT / "scripts" / "make_sample_data.py"
    result = subprocess.run([sys.executable, str(script), "--check"], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tokenizer_is_what_the_script_generates() -> None:
    script = ROOT / "scripts" / "make_default_tokenizer.py"
    result = subprocess.run([sys.executable, str(script), "--check"], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sample_data_shape() -> None:
    assert len(examples()) == 512 + 64
    assert sample_data_path() == sample_data_path("train")
    with pytest.raises(ValueError):
        sample_data_path("test")


def test_every_example_has_steps_and_correct_arithmetic() -> None:
    for messages in examples():
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        steps = messages[2]["content"].split("\n\n")
        assert 2 <= len(steps) <= 5
        equations = []
        for step in steps:
            found = EQUATION.findall(step)
            assert found and "\n" not in step, step
            equations += found
        for expression, result in equations:
            assert evaluate(expression) == int(result), expression
        answer = re.fullmatch(r".* The answer is (\d+)\.", steps[-1])
        assert answer is not None and answer.group(1) == equations[-1][1], steps[-1]


def test_round_trip() -> None:
    texts = [m["content"] for messages in examples() for m in messages]
    texts += [GSM8K_STYLE, "\t tabs,  double  spaces \r\n and \u00e9\u00e8 \u4e2d\u6587 \U0001f600 \n\n\n"]
    if GSM8K.is_file():
        with GSM8K.open(encoding="utf-8") as f:
            texts += [m["content"] for line in list(f)[:200] for m in json.loads(line)["messages"]]
    for text in texts:
        ids = ids_of(text)
        assert tokenizer().decode(ids) == text
        assert max(ids) < len(tokenizer())


def test_special_tokens_are_single_ids() -> None:
    tok = tokenizer()
    for k, token in enumerate(SPECIAL_TOKENS):
        assert ids_of(token) == [k]
        assert ids_of(f"a{token}b") == [ids_of("a")[0], k, ids_of("b")[0]]
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_TOKEN_ID, EOS_TOKEN_ID)
    assert tok.pad_token_id == EOS_TOKEN_ID  # pad = eos, as upstream sets it for Llama 3
    assert tok("x")["input_ids"][0] == BOS_TOKEN_ID  # like Llama 3: plain encoding starts with bos


def test_step_separator_is_its_own_token() -> None:
    [separator] = ids_of("\n\n")
    for before, after in (("a.", "The"), ("36 apples.", "The answer"), (" ", " "), ("1", "2"), ("x", "\n")):
        ids = ids_of(f"{before}\n\n{after}")
        assert ids == ids_of(before) + [separator] + ids_of(after)


def test_chat_template_prompt_is_a_prefix_and_steps_are_located() -> None:
    tok = tokenizer()
    separator = ids_of("\n\n")[0]
    for messages in examples():
        prompt = chat_ids(messages[:2], add_generation_prompt=True)
        full = chat_ids(messages)
        assert full[: len(prompt)] == prompt
        assistant = full[len(prompt) :]
        content = messages[2]["content"]
        assert assistant[-1] == EOS_TOKEN_ID and tok.decode(assistant[:-1]) == content
        assert assistant.count(separator) == content.count("\n\n")
        # The same ids come from tokenizing the rendered text, with offsets that find each separator.
        text = tok.apply_chat_template(messages, tokenize=False)
        encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoded["input_ids"] == full
        starts = [m.start() for m in re.finditer("\n\n", text)]
        spans = [(s, s + 2) for s in starts]
        assert [encoded["offset_mapping"][i] for i, t in enumerate(full) if t == separator] == spans


def test_model_config() -> None:
    config = default_model_config(1000)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (64, 2, 176)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert config.max_position_embeddings == 2048 and not config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id) == (BOS_TOKEN_ID, EOS_TOKEN_ID)


def test_model_forward_gives_finite_loss() -> None:
    model = build_default_model(tokenizer())
    assert next(model.parameters()).dtype == torch.float32
    assert model.get_input_embeddings().num_embeddings == len(tokenizer())
    ids = torch.tensor([chat_ids(examples()[0])])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(len(tokenizer()))).item()) < 0.5


def test_same_seed_same_weights() -> None:
    state = torch.random.get_rng_state()
    first = build_default_model(tokenizer(), seed=3).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    second = build_default_model(tokenizer(), seed=3).state_dict()
    other = build_default_model(tokenizer(), seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_default_name_loads_through_the_model_module() -> None:
    from llmjepa.model import ModelSpec, load_model, load_tokenizer

    tok = load_tokenizer(DEFAULT_MODEL_NAME)
    assert len(tok) == len(tokenizer()) and tok.pad_token_id == EOS_TOKEN_ID
    model = load_model(ModelSpec(model_name=DEFAULT_MODEL_NAME, seed=0), tok)
    assert model.config.pad_token_id == EOS_TOKEN_ID
