"""The fast path under torch.compile (`--torch_compile`, issue 20), on the CPU.

- The kernels are torch.library custom ops: `torch.library.opcheck` checks each one's schema, fake
  (meta) implementation against the real one (shapes, strides, dtypes), and registered autograd.
- No graph break: `torch._dynamo.explain` over a fast-path forward (the model on a packed stream, every
  attention backend) with the fused pair loss gives one graph; its backward (AOTAutograd's) gives the
  eager gradients.
- Recompiles bounded: 20 microbatches of different stream lengths through a compiled model compile once
  (run_fast marks the stream's sizes dynamic; the layout's T is a tensor size, not an int).
- `llmjepa-train --torch_compile` equals the eager run over 5 optimizer steps in float32.

The default tests compile with `aot_eager` (Dynamo and AOTAutograd, no code generation: what decides graph
breaks, guards and recompiles, in seconds); the one with Inductor (C++ code generation on the CPU, minutes)
is marked slow.
"""

from __future__ import annotations

import importlib
import os
import random

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from llmjepa.commands.run import train
from llmjepa.commands.train import parse_args
from llmjepa.default_model import DEFAULT_MODEL_NAME, sample_data_path
from llmjepa.execution.fast import collator_attention_shape, install_output_hooks, mark_dynamic, run_fast
from llmjepa.model import ModelSpec, load_model, load_tokenizer
from llmjepa.views.collate import ViewCollator
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import load_examples
from llmjepa_kernels import hf_attention
from llmjepa_kernels.block_layout import BlockCausalLayout

SEED = int(os.environ.get("LLMJEPA_TEST_SEED", random.SystemRandom().randrange(2**31)))
NOTE = f"(rerun with LLMJEPA_TEST_SEED={SEED})"
CFG = ViewConfig(predictors=1, num_prediction_steps=2)
FP32 = 1e-5  # relative, compiled vs eager in float32


@pytest.fixture(autouse=True)
def fresh_compile_state():
    """transformers 5.25 keeps hidden-state capture in a context var that, once set while Dynamo traces,
    acts as a global until reset (`output_capturing.CompileableContextVar`); after Dynamo traced the flex
    forward under no_grad here it stayed in that mode, and the next eager forward captured no hidden states.
    Reset after each test so one test's tracing cannot empty another's hidden states. Dynamo's caches too:
    every compile of a new model counts against its per-function recompile limit (8), past which it runs
    eagerly without a word, and the counts here would count nothing."""
    torch._dynamo.reset()
    yield
    from transformers.utils import output_capturing

    collector = getattr(output_capturing, "_active_collector", None)
    if getattr(collector, "compiling", False):
        collector.reset(None)


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    examples = load_examples(str(sample_data_path("train")))
    random.Random(SEED).shuffle(examples)
    encoded, _ = encode_all(examples[:40], tokenizer, CFG)
    hf_attention.register()
    model = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float32", seed=SEED % 1000), tokenizer)
    model.set_attn_implementation(hf_attention.ATTENTION_NAME)
    predictor_ids = tokenizer.convert_tokens_to_ids(["<|predictor_1|>"])
    return model, encoded, predictor_ids


def packed(setup, backend: str, examples: slice):
    """The collator's packed stream (tile lists for the backend built on the host), marked dynamic."""
    model, encoded, predictor_ids = setup
    collator = ViewCollator(CFG, predictor_ids, pack=True, attention=collator_attention_shape(model, backend))
    stream = collator(encoded[examples])["plan"].packed
    mark_dynamic(stream)
    return stream


def forward_and_losses(model, stream, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What a fast-path microbatch runs on the device: the model on the stream, then the fused pair loss
    and a loss on the label positions' hidden rows (the LM head runs outside the model)."""
    from llmjepa_kernels import cosine_jepa_loss

    out = model(
        input_ids=stream.input_ids[None],
        position_ids=stream.position_ids[None],
        block_causal_layout=stream.layout,
        block_causal_backend=backend,
        logits_to_keep=stream.label_index[:0],
        output_hidden_states=True,
        use_cache=False,
    )
    hidden = out.hidden_states[-1][0]
    jepa, _ = cosine_jepa_loss(hidden, stream.pred_index, stream.target_index, reduction="sum", check_indices=False)
    return jepa, hidden[stream.label_index].square().mean()


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


# ---- the custom ops ------------------------------------------------------------------------------------
def random_layout(t: int, rng: random.Random) -> BlockCausalLayout:
    """Two examples: causal view 1, a view sharing a prefix of it (tile-unaligned lengths)."""
    a, b, s = [], [], []
    start = 0
    for _ in range(2):
        view1, view2 = rng.randint(5, t // 4), rng.randint(3, t // 4)
        for _ in range(view1):
            a, b, s = a + [0], b + [-1], s + [start]
        for _ in range(view2):
            a, b, s = a + [start], b + [start + rng.randint(0, view1 - 1)], s + [start + view1]
        start += view1 + view2
    return BlockCausalLayout(*(torch.tensor(x, dtype=torch.int32) for x in (a, b, s)))


def attention_inputs(layout: BlockCausalLayout, dtype: torch.dtype = torch.float32):
    t = layout.num_tokens
    q = torch.randn(8, t, 16, dtype=dtype).transpose(0, 1).requires_grad_()  # head-major, as transformers has it
    k, v = (torch.randn(t, 2, 16, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_torch_form(dtype: torch.dtype) -> None:
    from llmjepa_kernels import torch_attention

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    layout = random_layout(60, rng)
    q, k, v = attention_inputs(layout, dtype)
    torch.library.opcheck(torch_attention._attention_op, (q, k, v, list(layout.ranges()), 0.25))


@pytest.mark.interpreter
def test_opcheck_triton_attention_and_pair_loss() -> None:
    attention = importlib.import_module("llmjepa_kernels.block_causal_attention")  # the package exports a function
    cosine_loss = importlib.import_module("llmjepa_kernels.cosine_loss")

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    layout = random_layout(40, rng)
    q, k, v = attention_inputs(layout)
    config = attention.default_config(16, torch.float32)
    lists = attention._layout_lists(layout, config)
    args = (q, k, v, list(layout.ranges()), lists, 0.25, attention._config_ints(config))
    torch.library.opcheck(attention._attention_op, args)
    hidden = torch.randn(12, 24, requires_grad=True)
    index = torch.tensor([rng.randrange(12) for _ in range(10)])
    for kind, reduction in ((0, "sum"), (1, "mean"), (2, "mean")):
        torch.library.opcheck(cosine_loss._pair_loss_op, (hidden, index[:5], index[5:], kind, reduction, 1e-8, True))


# ---- no graph break, compiled gradients equal eager ----------------------------------------------------
BACKENDS = [
    pytest.param("torch", slice(0, 4), id="torch form"),
    # interpreted Triton runs every program in Python: one example, and 38 s on the 2-core CPU (slow)
    pytest.param("triton", slice(0, 1), id="triton", marks=[pytest.mark.interpreter, pytest.mark.slow]),
]


@pytest.mark.parametrize("backend, examples", BACKENDS)
def test_no_graph_break_and_compiled_gradients_equal_eager(setup, backend: str, examples: slice) -> None:
    model = setup[0]
    stream = packed(setup, backend, examples)
    install_output_hooks(model)  # as run_fast does before the model's first call
    explained = torch._dynamo.explain(forward_and_losses)(model, stream, backend)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1

    def grads(fn) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        jepa, lm = fn(model, stream, backend)
        (jepa + lm).backward()
        return [jepa.detach(), lm.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager = grads(forward_and_losses)
    compiled = grads(torch.compile(forward_and_losses, backend="aot_eager", fullgraph=True))
    assert len(compiled) == len(eager)
    for i, (x, ref) in enumerate(zip(compiled, eager)):
        assert torch.isfinite(x).all(), (i, NOTE)
        assert rel(x, ref) < FP32, (i, rel(x, ref), NOTE)


@pytest.mark.slow  # 20 s on the 2-core CPU: eager flex_attention is compiled on its own, then again in the graph
def test_flex_forward_compiles_without_break(setup) -> None:
    """FlexAttention has no backward on the CPU (torch 2.13): its forward, under no_grad, compiles to one
    graph (the BlockMask traced from the layout's lists) and equals the eager flex forward."""
    model = setup[0]
    stream = packed(setup, "flex", slice(0, 1))
    install_output_hooks(model)
    with torch.no_grad():
        # eager first: after Dynamo traced this forward, eager flex returned no hidden states (torch 2.13,
        # transformers 5.25; fresh_compile_state above)
        eager = forward_and_losses(model, stream, "flex")
        explained = torch._dynamo.explain(forward_and_losses)(model, stream, "flex")
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        compiled = torch.compile(forward_and_losses, backend="aot_eager", fullgraph=True)(model, stream, "flex")
    for x, ref in zip(compiled, eager):
        assert torch.isfinite(x) and rel(x, ref) < FP32, (float(x), float(ref), NOTE)


def test_hooks_installed_ahead_give_one_hidden_state_per_layer(setup) -> None:
    """run_fast installs the capture hooks on the decoder, as its own first call would: one hidden state per
    layer plus the embeddings (hooks on the causal-LM wrapper too recorded each layer twice, and
    --jepa_layer -2 read another state: caught by test_fork_extras)."""
    _, encoded, predictor_ids = setup
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    model = load_model(ModelSpec(DEFAULT_MODEL_NAME, dtype="float32", seed=SEED % 1000), tokenizer)
    model.set_attn_implementation("sdpa")
    collator = ViewCollator(CFG, predictor_ids, pack=True)
    with torch.no_grad():  # a forward of its own first (the reference executor's, say): the decoder hooks itself
        model(input_ids=torch.tensor([encoded[0].input_ids]), output_hidden_states=True)
        model.set_attn_implementation(hf_attention.ATTENTION_NAME)
        out = run_fast(model, collator(encoded[:2])["plan"], attention="torch")
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1


# ---- recompiles over microbatches of different lengths -------------------------------------------------
def test_recompiles_stay_bounded_over_20_microbatches(setup) -> None:
    """run_fast marks the stream's sizes dynamic: one graph for 20 streams of different lengths (without
    the marks and with the layout's T an int attribute, 4 frames: static graphs, then dynamic ones)."""
    model, encoded, predictor_ids = setup
    collator = ViewCollator(CFG, predictor_ids, pack=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    lengths = set()
    for i in range(20):
        plan = collator(encoded[2 * i : 2 * i + 2])["plan"]
        out = run_fast(compiled, plan, attention="torch")
        (out.ce_sum + out.hidden[out.pred_index].sum()).backward()
        lengths.add(out.hidden.shape[0])
    assert len(lengths) >= 10, lengths
    assert counter.frame_count <= 2, f"{counter.frame_count} compiles over {len(lengths)} stream lengths {NOTE}"


# ---- llmjepa-train --torch_compile ---------------------------------------------------------------------
BASE = ["--batch_size", "2", "--grad_accum", "2", "--learning_rate", "1e-3", "--dropout", "0", "--dtype", "float32"]
JEPA = ["--lbd", "0.5", "--predictors", "1", "--num_prediction_steps", "2", "--impl", "fast", "--max_train_steps"]


def assert_same_history(eager: list[dict], compiled: list[dict], tolerance: float) -> None:
    assert len(eager) == len(compiled)
    for x, y in zip(eager, compiled):
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            assert abs(x[key] - y[key]) <= tolerance * abs(x[key]), (x["step"], key, x[key], y[key])


def test_torch_compile_flag_equals_eager_over_5_steps(tmp_path) -> None:
    """--torch_compile (the Trainer compiles the model; the fused pair loss runs on its outputs) with
    aot_eager: the 5 steps' losses and gradient norms equal the eager run's within fp32 tolerance."""
    argv = [*BASE, *JEPA, "5"]
    eager = train(parse_args([*argv, "--output_dir", str(tmp_path / "eager")])).history
    compiled_argv = [*argv, "--torch_compile", "--torch_compile_backend", "aot_eager"]
    compiled = train(parse_args([*compiled_argv, "--output_dir", str(tmp_path / "compiled")])).history
    assert len(eager) == 5
    assert_same_history(eager, compiled, FP32)


@pytest.mark.slow
def test_torch_compile_flag_with_inductor(tmp_path) -> None:
    """The same with Inductor (C++ code for the CPU; the custom ops stay calls into our kernels)."""
    argv = [*BASE, *JEPA, "5"]
    eager = train(parse_args([*argv, "--output_dir", str(tmp_path / "eager")])).history
    compiled = train(parse_args([*argv, "--torch_compile", "--output_dir", str(tmp_path / "compiled")])).history
    assert_same_history(eager, compiled, 1e-4)  # Inductor reorders float sums (fused kernels): 5 steps of lr 1e-3
