"""The fast path's LM-head loss (llmjepa/execution/lm_head.py) against the plain logits computation in float64.

Each way (torch's chunked F.linear_cross_entropy, checkpointed chunks, plain logits) with each head
transform (Cohere's multiplier, Granite's divisor, Gemma 2's softcapping, a bias); the transforms
against the real forward of tiny Gemma 2, Cohere and Granite models from transformers; and short
training runs of those models where --impl fast equals --impl reference.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
)

from llmjepa import lm_head, parity
from llmjepa.errors import UserError
from llmjepa.execution.lm_head import LogitTransform, head_transform, lm_head_cross_entropy_sum

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
NOTE = f"seed {SEED} (rerun with LLMJEPA_TEST_SEED={SEED})"
TRANSFORMS = {
    "plain": LogitTransform(),
    "multiplier (Cohere)": LogitTransform(multiplier=0.0625),
    "divisor (Granite)": LogitTransform(divisor=8.0),
    "softcap (Gemma 2)": LogitTransform(softcap=3.0),
}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(x).all(), NOTE
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def loss_and_grads(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear, transform: LogitTransform, method: str
) -> list[torch.Tensor]:
    hidden = hidden.detach().clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    loss = lm_head_cross_entropy_sum(hidden, targets, head, transform, method)
    (loss * 0.37).backward()  # a gradient other than 1, as the trainer's normalization gives
    grads = [hidden.grad] + [p.grad for p in head.parameters()]
    return [loss.detach()] + [g.detach().clone() for g in grads]


def reference(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear, transform: LogitTransform) -> list:
    """Float64, the plain formula written out: logits, the transform, log-softmax."""
    h = hidden.detach().double().requires_grad_()
    w = head.weight.detach().double().requires_grad_()
    b = None if head.bias is None else head.bias.detach().double().requires_grad_()
    logits = transform.apply(F.linear(h, w, b))
    loss = -logits.log_softmax(-1).gather(1, targets[:, None]).sum()
    (loss * 0.37).backward()
    return [loss.detach(), h.grad, w.grad] + ([] if b is None else [b.grad])


@pytest.mark.parametrize("bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("method", ["auto", "linear_ce", "chunks", "logits"])
def test_each_way_matches_float64(method: str, transform: str, bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    t = TRANSFORMS[transform]
    if method == "linear_ce" and not lm_head.linear_ce_applies(nn.Linear(2, 2), t):
        pytest.skip("F.linear_cross_entropy does not apply: softcapping is not linear (or torch < 2.13)")
    monkeypatch.setattr(lm_head, "LOGITS_PER_CHUNK", 97 * 40)  # several chunks, the last one ragged
    gen = torch.Generator().manual_seed(SEED)
    tokens, width, vocab = 150, 48, 97
    head = nn.Linear(width, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=gen) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=gen))
    hidden = torch.randn(tokens, width, generator=gen) * 2
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    ours = loss_and_grads(hidden, targets, head, t, method)
    ref = reference(hidden, targets, head, t)
    names = ["loss", "d hidden", "d weight", "d bias"]
    for name, x, r in zip(names, ours, ref):
        assert rel_err(x, r) < 1e-5, f"{method}, {transform}: {name} error {rel_err(x, r):.2e}; {NOTE}"
    assert ours[0].dtype == torch.float32


def test_auto_takes_linear_ce_where_it_applies() -> None:
    head = nn.Linear(8, 16)
    has_op = hasattr(F, "linear_cross_entropy")
    assert lm_head.linear_ce_applies(head, TRANSFORMS["multiplier (Cohere)"]) == has_op
    assert not lm_head.linear_ce_applies(head, TRANSFORMS["softcap (Gemma 2)"])
    with pytest.raises(ValueError, match="linear_ce needs"):
        targets = torch.zeros(2, dtype=torch.long)
        lm_head_cross_entropy_sum(torch.zeros(2, 8), targets, head, LogitTransform(softcap=2.0), "linear_ce")


def test_auto_without_linear_ce_falls_back_to_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.11 (the GPU image's, pyproject's floor) has no F.linear_cross_entropy: "auto" then takes the
    checkpointed chunks, which match the float64 formula, and asking for linear_ce says what is missing."""
    monkeypatch.delattr(F, "linear_cross_entropy", raising=False)
    monkeypatch.setattr(lm_head, "LOGITS_PER_CHUNK", 97 * 40)  # several chunks, the last one ragged
    gen = torch.Generator().manual_seed(SEED)
    head = nn.Linear(32, 97)
    hidden = torch.randn(300, 32, generator=gen)
    targets = torch.randint(0, 97, (300,), generator=gen)
    assert not lm_head.linear_ce_applies(head, TRANSFORMS["plain"])
    taken = []
    chunks = lm_head.chunked_cross_entropy_sum
    monkeypatch.setattr(lm_head, "chunked_cross_entropy_sum", lambda *a: taken.append(1) or chunks(*a))
    ours = loss_and_grads(hidden, targets, head, TRANSFORMS["plain"], "auto")
    assert taken, "auto did not take the chunks"
    for name, x, r in zip(
        ["loss", "d hidden", "d weight", "d bias"], ours, reference(hidden, targets, head, LogitTransform())
    ):
        assert rel_err(x, r) < 1e-5, f"{name}: {rel_err(x, r):.2e}; {NOTE}"
    with pytest.raises(ValueError, match="linear_ce needs F.linear_cross_entropy"):
        lm_head_cross_entropy_sum(hidden, targets, head, LogitTransform(), "linear_ce")


def test_bfloat16_sum_is_float32() -> None:
    """Half inputs: per-token losses summed in float32 (the op's own bf16 sum was 1.4e-2 off)."""
    gen = torch.Generator().manual_seed(SEED)
    head = nn.Linear(32, 64, bias=False)
    hidden = torch.randn(400, 32, generator=gen)
    targets = torch.randint(0, 64, (400,), generator=gen)
    ref = reference(hidden, targets, head, LogitTransform())[0]
    out = lm_head_cross_entropy_sum(hidden.bfloat16(), targets, head.bfloat16(), LogitTransform(), "linear_ce")
    assert out.dtype == torch.float32 and rel_err(out, ref) < 1e-2, (rel_err(out, ref), NOTE)


# ---- the transforms against the models' own forward ------------------------------------------------------
VOCAB = 120


def tiny_gemma2() -> Gemma2ForCausalLM:
    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=0.5,  # small, so the tanh bends the random model's logits
        attn_logit_softcapping=None,  # the block-causal attention has no attention softcapping
        layer_types=["full_attention", "full_attention"],  # nor a sliding window
    )
    return Gemma2ForCausalLM(config)


def tiny_gemma3() -> Gemma3ForCausalLM:
    """Gemma 3's text model with Gemma 2's head softcapping set: it has SDPA, so the reference path runs it."""
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=0.5,
        layer_types=["full_attention", "full_attention"],
    )
    return Gemma3ForCausalLM(config)


def tiny_cohere() -> CohereForCausalLM:
    config = CohereConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logit_scale=0.25,
    )
    return CohereForCausalLM(config)


def tiny_granite() -> GraniteForCausalLM:
    config = GraniteConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logits_scaling=4.0,
        embedding_multiplier=2.0,
        residual_multiplier=0.5,
        attention_multiplier=0.2,
        tie_word_embeddings=False,
    )
    return GraniteForCausalLM(config)


MODELS = {"gemma2": tiny_gemma2, "gemma3": tiny_gemma3, "cohere": tiny_cohere, "granite": tiny_granite}
TRAINED = ["gemma3", "cohere", "granite"]  # Gemma 2 has no SDPA in transformers, so no reference path


@pytest.mark.parametrize("family", list(MODELS))
def test_transform_matches_the_models_forward(family: str) -> None:
    torch.manual_seed(SEED)
    model = MODELS[family]().double()
    model.set_attn_implementation("eager")
    transform = head_transform(model.config)
    assert transform != LogitTransform(), family  # the head does more than a linear layer
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, VOCAB, (1, 40), generator=gen)
    out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-1][0]
    targets = torch.randint(0, VOCAB, (40,), generator=gen)
    # the model's own logits; ours computes the cross entropy in float32, as the reference path does
    expected = F.cross_entropy(out.logits[0], targets, reduction="sum")
    head = model.get_output_embeddings()
    for method in ("auto", "chunks", "logits"):
        got = lm_head_cross_entropy_sum(hidden, targets, head, transform, method)
        assert rel_err(got, expected) < 1e-6, (family, method, float(got), float(expected), NOTE)
    plain = head(hidden)
    assert rel_err(transform.apply(plain), out.logits[0]) < 1e-12, (family, NOTE)  # the same ops, in float64
    assert rel_err(plain, out.logits[0]) > 1e-2, family  # and they matter for these models


def test_unknown_heads_are_refused() -> None:
    llama = LlamaConfig(vocab_size=10, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    assert head_transform(llama) == LogitTransform()
    llama.final_logit_softcapping = 30.0  # Llama's forward ignores the field: not known, so refused
    with pytest.raises(UserError, match="final_logit_softcapping=30.0.*Use --impl reference"):
        head_transform(llama)
    granite = GraniteConfig(vocab_size=10, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    assert head_transform(granite) == LogitTransform(divisor=1.0)
    gemma = Gemma2Config(vocab_size=10, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    gemma.final_logit_softcapping = None
    assert head_transform(gemma) == LogitTransform()


# ---- whole training runs ---------------------------------------------------------------------------------
BASE = ["--batch_size", "2", "--grad_accum", "2", "--learning_rate", "1e-3", "--dropout", "0", "--dtype", "float32"]
JEPA = ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2"]
STEPS = 4


def checkpoint_dir(tmp_path: Path, family: str) -> Path:
    """A local checkpoint of a tiny model of `family` with the default model's tokenizer."""
    from llmjepa.default_model import DEFAULT_MODEL_NAME
    from llmjepa.model import load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    global VOCAB
    saved, VOCAB = VOCAB, len(tokenizer)
    try:
        torch.manual_seed(SEED)
        model = MODELS[family]()
    finally:
        VOCAB = saved
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    path = tmp_path / f"tiny-{family[:2]}"  # a name without "gemma": the chat template stays the default's
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", TRAINED)
def test_fast_trains_as_reference(tmp_path: Path, family: str) -> None:
    from llmjepa.commands.run import train
    from llmjepa.commands.train import parse_args

    model_dir = checkpoint_dir(tmp_path, family)
    histories = {}
    for impl in ("fast", "reference"):
        argv = [*BASE, *JEPA, "--model_name", str(model_dir), "--impl", impl, "--max_train_steps", str(STEPS)]
        histories[impl] = train(parse_args([*argv, "--output_dir", str(tmp_path / impl)])).history
    fast, ref = histories["fast"], histories["reference"]
    assert len(fast) == len(ref) == STEPS
    for x, y in zip(fast, ref):
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            d = parity.rel_diff(x[key], y[key])
            assert d < 1e-4, f"{family}: step {x['step']} {key} {x[key]!r} vs {y[key]!r} ({d:.2e}); {NOTE}"
    assert fast[-1]["lm_loss"] < fast[0]["lm_loss"], family  # the weights moved


def test_benchmark_ways_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/bench_lm_head.py's timing loop on a tiny shape: every way runs and gives the same loss."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_lm_head.py"
    spec = importlib.util.spec_from_file_location("bench_lm_head", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    results = bench.time_ways(bench.Shape(tokens=64, hidden=16, vocab=50), torch.device("cpu"), rounds=2)
    losses = [r["loss"] for r in results.values() if "skipped" not in r]
    assert len(losses) == 3 - ("skipped" in results["linear_ce"])
    assert max(losses) - min(losses) < 1e-5 * abs(losses[0]), results
    assert all(len(r["all_seconds"]) == 2 for r in results.values() if "skipped" not in r)
