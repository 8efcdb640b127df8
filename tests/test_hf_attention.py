"""attn_implementation="llmjepa_block_causal" in a tiny Llama against SDPA with the equivalent dense mask.

SDPA in transformers 5.23 takes a 4D float additive mask (B, 1, L, L) as is, so the reference is the
same model with attn_implementation="sdpa" and that mask; errors are measured against a float64 run
and bounded relative to the float32 SDPA run's own error.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM, masking_utils
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_causal_mask

from llmjepa_kernels import hf_attention, torch_attention
from llmjepa_kernels.block_layout import BlockCausalLayout
from llmjepa_kernels.hf_attention import ATTENTION_NAME, block_causal_attention_forward, register

BASE_SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
VOCAB = 100


def seed_note(case: int) -> str:
    return f"case {case}, base seed {BASE_SEED} (rerun with LLMJEPA_TEST_SEED={BASE_SEED})"


def tiny_llama(kv_heads: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    torch.manual_seed(BASE_SEED)
    return LlamaForCausalLM(config).float()


def jepa_row(rng: random.Random, length: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Examples back to back: view 1 causal, a predictor view sharing a prefix of it, step segments."""
    a: list[int] = []
    b: list[int] = []
    s: list[int] = []
    pos: list[int] = []
    while len(s) < length:
        view = len(s)
        view_len = rng.randint(1, 12)
        for i in range(view_len):
            a.append(0), b.append(-1), s.append(view), pos.append(i)
        prefix = rng.randint(0, view_len)
        start = len(s)
        for i in range(rng.randint(1, 8)):
            a.append(view), b.append(view + prefix - 1), s.append(start), pos.append(i)
        for _ in range(rng.randint(0, 3)):
            start = len(s)
            for i in range(rng.randint(1, 4)):
                a.append(0), b.append(-1), s.append(start), pos.append(view_len + i)
    return a[:length], b[:length], s[:length], pos[:length]


def make_batch(rng: random.Random, batch: int, length: int) -> dict[str, torch.Tensor]:
    rows = [jepa_row(rng, length) for _ in range(batch)]
    a, b, s, pos = (torch.tensor([row[i] for row in rows]) for i in range(4))
    return {
        "input_ids": torch.tensor([[rng.randrange(VOCAB) for _ in range(length)] for _ in range(batch)]),
        "position_ids": pos,
        "shared_start": a.to(torch.int32),
        "shared_end": b.to(torch.int32),
        "causal_start": s.to(torch.int32),
    }


def additive_mask(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    a, b, s = (batch[name].long()[:, :, None] for name in ("shared_start", "shared_end", "causal_start"))
    length = a.shape[1]
    i = torch.arange(length)[None, :, None]
    j = torch.arange(length)[None, None, :]
    visible = ((j >= a) & (j <= b)) | ((j >= s) & (j <= i))
    zero = torch.zeros((), dtype=dtype)
    return torch.where(visible, zero, torch.finfo(dtype).min)[:, None]


def logits_and_grads(model: LlamaForCausalLM, weight: torch.Tensor, **inputs) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    (logits * weight.to(logits.dtype)).sum().backward()
    return [logits.detach()] + [p.grad.detach().clone() for p in model.parameters()]


def names(model: LlamaForCausalLM) -> list[str]:
    return ["logits"] + [name for name, _ in model.named_parameters()]


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def compare_with_sdpa(model: LlamaForCausalLM, batch: dict[str, torch.Tensor], note: str, **range_shapes) -> None:
    register()
    rng = torch.Generator().manual_seed(BASE_SEED)
    weight = torch.randn(*batch["input_ids"].shape, VOCAB, generator=rng)
    common = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    ranges = {name: range_shapes.get(name, batch[name]) for name in ("shared_start", "shared_end", "causal_start")}

    model.set_attn_implementation(ATTENTION_NAME)
    ours = logits_and_grads(model, weight, **common, **ranges)
    model.set_attn_implementation("sdpa")
    sdpa = logits_and_grads(model, weight, **common, attention_mask=additive_mask(batch, torch.float32))
    model64 = copy.deepcopy(model).double()
    ref = logits_and_grads(model64, weight, **common, attention_mask=additive_mask(batch, torch.float64))

    for name, x, base, r in zip(names(model), ours, sdpa, ref):
        assert torch.isfinite(x).all(), f"{name}: non-finite; {note}"
        err, sdpa_err = rel_err(x, r), rel_err(base, r)
        assert err <= 2 * sdpa_err + 1e-6, f"{name}: error {err:.3g}, sdpa {sdpa_err:.3g}; {note}"


@pytest.mark.parametrize("case", range(4))
def test_single_stream_matches_sdpa_with_dense_mask(case: int) -> None:
    rng = random.Random(BASE_SEED + case)
    batch = make_batch(rng, 1, rng.randint(20, 64))
    flat = {name: batch[name][0] for name in ("shared_start", "shared_end", "causal_start")}
    # Ranges as (T,) for even cases, (1, T) for odd ones.
    compare_with_sdpa(tiny_llama(kv_heads=(2, 1)[case % 2]), batch, seed_note(case), **(flat if case % 2 == 0 else {}))


def test_batch_rows_match_sdpa_with_dense_mask() -> None:
    rng = random.Random(BASE_SEED + 100)
    batch = make_batch(rng, 3, rng.randint(16, 40))
    compare_with_sdpa(tiny_llama(), batch, seed_note(100))


@pytest.mark.interpreter
def test_triton_path_is_used_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hf_attention._use_triton(torch.device("cpu")):
        pytest.skip("Triton interpreter is off")

    def fail(*args, **kwargs):
        raise AssertionError("the PyTorch fallback ran instead of the Triton kernel")

    monkeypatch.setattr(torch_attention, "torch_block_causal_attention", fail)
    rng = random.Random(BASE_SEED + 200)
    batch = make_batch(rng, 1, 24)
    register()
    model = tiny_llama()
    model.set_attn_implementation(ATTENTION_NAME)
    model(**batch).logits.sum().backward()


def test_pytorch_fallback_matches_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_attention, "_use_triton", lambda device: False)
    rng = random.Random(BASE_SEED + 300)
    compare_with_sdpa(tiny_llama(), make_batch(rng, 2, 30), seed_note(300))


def test_one_layout_per_forward_and_no_dense_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    original = hf_attention._build_layout
    monkeypatch.setattr(hf_attention, "_build_layout", lambda *args: built.append(1) or original(*args))
    monkeypatch.setattr(hf_attention, "_CACHE", hf_attention._LayoutCache())
    register()
    model = tiny_llama()
    model.set_attn_implementation(ATTENTION_NAME)
    rng = random.Random(BASE_SEED + 400)
    batch = make_batch(rng, 1, 20)
    model(**batch)
    assert len(built) == 1  # two layers, one layout
    batch["causal_start"] += 0  # in-place: bumps the version, so the cached layout is stale
    model(**batch)
    assert len(built) == 2
    embeds = model.model.embed_tokens(batch["input_ids"])
    mask = create_causal_mask(model.config, embeds, None, None, position_ids=batch["position_ids"])
    assert mask is None


def test_register_is_idempotent() -> None:
    register()
    register()
    assert AttentionInterface._global_mapping[ATTENTION_NAME] is block_causal_attention_forward
    assert ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping  # see the next test


def test_transformers_does_not_look_for_packed_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a mask function registered under our name, transformers would scan position_ids for packed
    sequences in every forward without attention_mask (`.all()` on the GPU: a host-device sync)."""

    def fail(*args, **kwargs):
        raise AssertionError("transformers looked for packed sequences in position_ids")

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", fail)
    register()
    model = tiny_llama()
    model.set_attn_implementation(ATTENTION_NAME)
    batch = make_batch(random.Random(BASE_SEED + 450), 1, 40)
    assert (batch["position_ids"].diff() != 1).any()  # positions restart: a packed stream
    model(**batch).logits.sum().backward()


def test_prebuilt_layout_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """block_causal_layout=: no layout is built in the forward; outputs and gradients equal the run that
    builds its layout from the ranges (both backends)."""
    register()
    model = tiny_llama()
    model.set_attn_implementation(ATTENTION_NAME)
    batch = make_batch(random.Random(BASE_SEED + 460), 2, 24)
    weight = torch.randn(2, 24, VOCAB, generator=torch.Generator().manual_seed(BASE_SEED))
    common = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    offset = torch.arange(2)[:, None] * 24  # flat stream indices of the B * L tokens (empty ranges stay empty)
    flat = [(batch[n].long() + offset).reshape(-1) for n in ("shared_start", "shared_end", "causal_start")]
    for backend in ("torch", "triton") if hf_attention._use_triton(torch.device("cpu")) else ("torch",):
        ranges = {n: batch[n] for n in ("shared_start", "shared_end", "causal_start")}
        want = logits_and_grads(model, weight, **common, **ranges, block_causal_backend=backend)
        layout = BlockCausalLayout(*flat, tiles=[("by_query", 16, 16), ("by_key", 16, 16)])

        def no_build(*args):
            raise AssertionError("a layout was built although one was passed")

        monkeypatch.setattr(hf_attention, "_build_layout", no_build)
        got = logits_and_grads(model, weight, **common, block_causal_layout=layout, block_causal_backend=backend)
        monkeypatch.undo()
        for name, x, r in zip(names(model), got, want):
            assert torch.equal(x, r), f"{backend}: {name} differs"
    with pytest.raises(ValueError, match="block_causal_layout has 48 tokens"):
        model(input_ids=batch["input_ids"][:1], position_ids=batch["position_ids"][:1], block_causal_layout=layout)


def test_errors() -> None:
    register()
    model = tiny_llama()
    model.set_attn_implementation(ATTENTION_NAME)
    rng = random.Random(BASE_SEED + 500)
    batch = make_batch(rng, 2, 12)
    with pytest.raises(ValueError, match="missing: \\['causal_start'\\]"):
        model(**{k: v for k, v in batch.items() if k != "causal_start"})
    # a 4-D mask reaches the attention function, which refuses it (transformers drops 2-D padding masks
    # for an attention name without a mask function before any attention runs: module docstring)
    dense = torch.zeros(2, 1, 12, 12)
    with pytest.raises(ValueError, match="takes no padding or dense masks"):
        model(**batch, attention_mask=dense)
    crossing = dict(batch, shared_end=batch["shared_end"].clone(), shared_start=batch["shared_start"].clone())
    crossing["shared_start"][1, 3], crossing["shared_end"][1, 3] = 0, 12
    with pytest.raises(ValueError, match="row 1, token 3"):
        model(**crossing)
    with pytest.raises(ValueError, match=r"shape \(2, 12\)"):
        model(**dict(batch, causal_start=batch["causal_start"][0]))


@pytest.mark.parametrize("case", range(20))
def test_pytorch_form_matches_float64_reference(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    """The PyTorch form (query blocks over key windows) on randomized layouts, blocks of 16 queries so
    that layouts span several blocks, shared ranges past their query included: forward and gradients in
    float64 equal the dense reference."""
    from test_block_causal_attention import dense_mask, random_layout, reference_with_grads

    from llmjepa_kernels.block_causal_attention import BlockCausalLayout

    monkeypatch.setattr(torch_attention, "TORCH_QUERY_BLOCK", 16)
    rng = random.Random(BASE_SEED + 400 + case)
    torch.manual_seed(BASE_SEED + 400 + case)
    layout = random_layout(rng)
    kv_heads, group = rng.choice([(1, 1), (2, 2), (1, 4)])
    t = layout.num_tokens
    q, dout = (torch.randn(t, kv_heads * group, 16, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(t, kv_heads, 16, dtype=torch.float64) for _ in range(2))
    ranges = BlockCausalLayout(layout.shared_start, layout.shared_end, layout.causal_start)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = torch_attention.torch_block_causal_attention(*leaves, ranges, 16**-0.5)
    got = [out.detach(), *torch.autograd.grad(out, leaves, dout)]
    ref = reference_with_grads(q, k, v, dout, dense_mask(layout), torch.float64)
    for name, x, r in zip(("out", "dq", "dk", "dv"), got, ref):
        # relative to the reference, or to 1 where the reference vanishes (a layout whose every query sees one
        # key has dq = dk = 0 exactly, and rounding of order 1e-17 must not read as an infinite relative error);
        # the inputs are standard normal, so 1 is their scale
        err = float((x - r).norm() / r.norm().clamp_min(1.0))
        assert torch.isfinite(x).all() and err < 1e-12, (
            f"{name}: {err:.2e}; {seed_note(400 + case)} views={layout.kinds}"
        )
