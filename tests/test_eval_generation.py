"""Generation for llmjepa-eval on the embedded tiny model (random weights: we compare token ids, not accuracy)."""

import argparse

import pytest
import torch

from llmjepa.commands.evaluate import build_parser, check_args, similarity_cosines
from llmjepa.default_model import sample_data_path
from llmjepa.errors import UserError
from llmjepa.evaluation.generation import (
    CHOICES,
    ChoiceGenerator,
    GenerationSettings,
    HFGenerator,
    embeddings,
    prompt_ids,
    single_message_ids,
)
from llmjepa.evaluation.loading import load_eval_model
from llmjepa.views.encoding import EncodeReport, ViewConfig, encode
from llmjepa.views.examples import load_examples

TINY = "llmjepa/tiny-llama"


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return load_eval_model(TINY, dtype="float32", seed=3, adapter_base=None, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def examples() -> list:
    return load_examples(sample_data_path("eval"))[:6]


@pytest.mark.parametrize("plain", [False, True])
def test_prompt_is_the_training_prompt(tiny: tuple, examples: list, plain: bool) -> None:
    _, tokenizer = tiny
    cfg = ViewConfig(plain=plain, regular=True)
    for i, ex in enumerate(examples):
        enc = encode(ex, i, tokenizer, cfg, EncodeReport())
        assert prompt_ids(tokenizer, ex.messages, cfg) == enc.input_ids[: enc.assistant_start]
    if plain:  # upstream --plain: the user's content then <|perception|>, no system prompt
        text = tokenizer.decode(prompt_ids(tokenizer, examples[0].messages, cfg), skip_special_tokens=False)
        assert text.endswith(examples[0].messages[1]["content"] + "<|perception|>")


def test_batched_greedy_equals_one_at_a_time(tiny: tuple, examples: list) -> None:
    model, tokenizer = tiny
    cfg = ViewConfig()
    prompts = [prompt_ids(tokenizer, ex.messages, cfg) for ex in examples]
    assert len({len(p) for p in prompts}) > 1, "prompts of different lengths exercise the left padding"
    gen = HFGenerator(model, tokenizer, GenerationSettings(max_new_tokens=12))
    batched = gen.generate(prompts)
    single = [gen.generate([p])[0] for p in prompts]
    assert batched == single
    assert any(len(ids) > 0 for ids in batched)


def test_choice_is_the_argmax_over_a_to_d_batched_or_not(tiny: tuple, examples: list) -> None:
    model, tokenizer = tiny
    prompts = [prompt_ids(tokenizer, ex.messages, ViewConfig()) for ex in examples]
    choice = ChoiceGenerator(model, tokenizer)
    batched = choice.generate(prompts)
    ids = [tokenizer.convert_tokens_to_ids(c) for c in CHOICES]
    for p, got in zip(prompts, batched):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p])).logits[0, -1].double()
        probs = torch.softmax(logits, -1)[ids]
        assert got == [ids[int(probs.argmax())]]
        assert tokenizer.decode(got) in CHOICES


def test_sampling_flags_reach_generate(tiny: tuple, examples: list) -> None:
    model, tokenizer = tiny
    s = GenerationSettings(8, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, repetition_penalty=1.3)
    config = s.hf_config([4], 4)
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.9, 5)
    assert config.repetition_penalty == 1.3 and config.max_new_tokens == 8 and config.use_cache
    greedy = GenerationSettings(max_new_tokens=8, num_beams=2).hf_config([4], 4)
    assert not greedy.do_sample and greedy.num_beams == 2
    # sampling changes the output (a random model at temperature 5 almost never repeats greedy's 16 tokens)
    prompt = [prompt_ids(tokenizer, examples[0].messages, ViewConfig())]
    torch.manual_seed(0)
    hot = HFGenerator(model, tokenizer, GenerationSettings(max_new_tokens=16, do_sample=True, temperature=5.0))
    cold = HFGenerator(model, tokenizer, GenerationSettings(max_new_tokens=16))
    assert hot.generate(prompt) != cold.generate(prompt)


def parse(*argv: str) -> argparse.Namespace:
    return check_args(build_parser().parse_args(["--input_file", "x.jsonl", "--output_dir", "o", *argv]))


def test_flags_are_checked() -> None:
    with pytest.raises(UserError, match="--top_p and --top_k"):
        parse("--model_name", TINY, "--top_k", "5")
    args = parse("--model_name", TINY, "--temperature", "0.5", "--top_k", "5")
    from llmjepa.commands.evaluate import settings_from

    assert settings_from(args).do_sample and settings_from(args).temperature == 0.5
    with pytest.raises(UserError, match="one of them"):
        parse()
    with pytest.raises(UserError, match="one of them"):
        parse("--model_name", TINY, "--predictions_file", "p.jsonl")
    with pytest.raises(UserError, match="--temperature must be a finite number"):
        parse("--model_name", TINY, "--temperature", "nan")
    with pytest.raises(UserError, match="--spider_path"):
        parse("--model_name", TINY, "--dataset", "spider")


def test_similarity_equals_unbatched_embeddings(tiny: tuple, examples: list) -> None:
    model, tokenizer = tiny
    cfg = ViewConfig()
    for pooling in ("last", "mean", "cls"):
        args = argparse.Namespace(max_length=512, embedding_layer=-1, embedding_pooling=pooling, batch_size=4)
        got = similarity_cosines(model, tokenizer, examples, cfg, args)
        for ex, cos in zip(examples, got):
            vecs = []
            for message in ex.messages[-2:]:
                ids = torch.tensor([single_message_ids(tokenizer, message, cfg)])
                with torch.no_grad():
                    h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
                vecs.append({"last": h[-1], "mean": h.mean(0), "cls": h[0]}[pooling])
            ref = torch.nn.functional.cosine_similarity(vecs[0], vecs[1], dim=0).item()
            assert abs(cos - ref) < 1e-5, (pooling, cos, ref)


def test_embeddings_layer_choice(tiny: tuple, examples: list) -> None:
    model, tokenizer = tiny
    rows = [single_message_ids(tokenizer, ex.messages[-2], ViewConfig()) for ex in examples[:2]]
    first = embeddings(model, rows, tokenizer.pad_token_id, 0, "last", 2)
    last = embeddings(model, rows, tokenizer.pad_token_id, -1, "last", 2)
    assert first.shape == last.shape and not torch.allclose(first, last)


def test_lora_adapter_is_merged_into_its_base(tmp_path, tiny: tuple, examples: list) -> None:
    from llmjepa.model import add_lora

    base, tokenizer = load_eval_model(TINY, dtype="float32", seed=7, adapter_base=None, device=torch.device("cpu"))
    peft_model = add_lora(base, rank=4)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # a trained-looking adapter: B is zero at init
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    ids = torch.tensor([prompt_ids(tokenizer, examples[0].messages, ViewConfig())])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits.double()
    with pytest.raises(UserError, match="--adapter_base"):
        load_eval_model(str(tmp_path / "adapter"), "float32", 7, None, torch.device("cpu"))
    merged, _ = load_eval_model(str(tmp_path / "adapter"), "float32", 7, TINY, torch.device("cpu"))
    with torch.no_grad():
        got = merged(input_ids=ids).logits.double()
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_backend_choice() -> None:
    """vLLM only where usable (installed, CUDA, a checkpoint folder, no beams) and in one process."""
    from llmjepa.commands.evaluate import uses_vllm
    from llmjepa.evaluation.generation import vllm_usable

    settings = GenerationSettings()
    args = parse("--model_name", TINY)
    assert not vllm_usable(TINY, settings)  # the embedded default is no checkpoint folder vLLM could load
    assert not uses_vllm(TINY, settings, args, world=1)
    args.backend = "vllm"
    with pytest.raises(UserError, match="one process"):
        uses_vllm(TINY, settings, args, world=2)
    with pytest.raises(UserError, match="--backend vllm needs"):
        parse("--model_name", TINY, "--backend", "vllm")
