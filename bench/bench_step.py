"""Whole optimizer steps (forward + backward + clipping + AdamW, one microbatch): upstream-style vs packed.

    python bench/bench_step.py --config proxy                      # CPU proxy, gsm8k, N=2, K=1, batch 4
    python bench/bench_step.py --config llama-1b                   # GPU: the Llama-3.2-1B shape, bf16
    python bench/bench_step.py --config proxy --sweep length 256 512 1024 2048   # scaling tables
    python bench/bench_step.py --config proxy --sweep N 1 2 4 8
    python bench/bench_step.py --config tiny --rounds 2 --microbatches 1        # CI smoke run

Methods, all on the same microbatches from the same initial weights:
  (a) upstream_regular  regular SFT as upstream runs it: rows right-padded to max_length, dense additive
                        masks, logits at every position (execute.run_reference).
  (b) packed_regular    regular SFT through fast.run_fast: one padding-free stream.
  (c) upstream_jepa     the Step-JEPA plan (N, K) through run_reference: the triple batch with dense masks.
  (d) fast_jepa         the same plan through run_fast (prefix sharing, view truncation).
  (e) fast_isolated     --isolated_predictors --no_localized_masks through run_fast (a variant, not
                        upstream's semantics: predictors are side branches of view 1, targets read from view 1).
  and, where they exist, fast_jepa with each other attention backend (attn=triton|flex|torch) and each
  other LM-head way (lm_head=chunks|logits; (d) runs the default, F.linear_cross_entropy where torch has
  it). A method whose dependency is missing is recorded as skipped with the reason; one that raises
  (Triton compile or resource errors included) or runs out of memory is recorded as failed; the others
  still run.

How it measures (the defects of the first version fixed, issue 7):
- Plans are built and packed by the trainer's collator (llmjepa.views.collate.ViewCollator) before timing, as
  data-loader workers do in training; the timed step starts from the collator's output.
- Gradient checkpointing as llmjepa-train uses it: on with CUDA, off on CPU (--gradient_checkpointing).
- Warm-up: on CUDA every microbatch that will be timed runs once per method first (so every shape is
  compiled before timing); on CPU --warmup steps per method. The first warm-up step of each method runs
  from the initial weights and gives its first-step loss.
- Interleaved rounds: in each round every method runs one step on each of the --microbatches microbatches,
  the order of methods rotated from round to round; a method's time per step in a round is its round
  total / microbatches, and its reported time the median over --rounds rounds. One model and one AdamW
  serve all methods (the weights drift by lr 1e-5 steps: no effect on time). On CPU, torch runs one thread.
- Memory. CUDA: peak torch.cuda.max_memory_allocated over the method's warm-up (weights, gradients, AdamW
  state, activations). CPU: each method in a fresh process (this script with --memory_probe): the peak
  resident set (VmHWM, reset through /proc/self/clear_refs after the model is loaded; not ru_maxrss, which
  Linux carries over from the parent across fork and exec) minus the resident set after loading the model
  and the data, over one step on each timed microbatch: gradients, AdamW state and activations.
- FLOPs: bench/floor.py counts each method's floor from its plans (tokens, LM head at label positions,
  attention over visible pairs; training = 3x forward). Reported beside time and memory: FLOP ratio to
  packed_regular, time ratio, and efficiency = FLOP ratio / time ratio; and computed / visible attention
  pairs of the fast path's stream for the Triton tile shapes and the PyTorch form.

Configs: `proxy`, a Llama-shaped 19M-parameter model (hidden 512, 4 layers, 8 query and 2 KV heads of 64,
MLP 2048, vocab 8192, tied head) whose LM-head-to-layers FLOP ratio matches Llama-3.2-1B's, float32 on
CPU; `llama-1b`, Llama-3.2-1B's shape (random weights, bf16 on CUDA); both on gsm8k_test.jsonl from
../shared/datasets (or ./shared/datasets on a device machine) with "\\n" as the step separator, tokenized
with the embedded tiny tokenizer (the only one offline); `tiny`, the embedded tiny model on the bundled
sample (CI). --sweep length L...: gsm8k examples of exactly L view-1 tokens: one question, then the answers of
consecutive examples joined by "\\n" until view 1 reaches L tokens, truncated to L. Results:
--out_dir/step_<name>.json and .md (and sweep_<what>.json and .md).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parent))
import floor  # noqa: E402  (bench/floor.py)
from bench_memory import reset_peak_rss, rss_kib  # noqa: E402

from llmjepa.default_model import build_default_model, sample_data_path  # noqa: E402
from llmjepa.errors import UserError  # noqa: E402
from llmjepa.execution.fast import check_fast_supported, run_fast  # noqa: E402
from llmjepa.execution.losses import jepa_pair_losses  # noqa: E402
from llmjepa.execution.reference import Executed, run_reference  # noqa: E402
from llmjepa.model import load_tokenizer  # noqa: E402
from llmjepa.views.collate import ViewCollator  # noqa: E402
from llmjepa.views.encoding import Encoded, ViewConfig, encode_all  # noqa: E402
from llmjepa.views.examples import Example, load_examples  # noqa: E402
from llmjepa.views.plan import IGNORE_INDEX, NO_SHARED, ViewPlan, ViewRow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_GRAD_NORM = 1.0  # the trainer's max_grad_norm
LEARNING_RATE = 1e-5  # only the first step's loss is compared, so any small rate will do
BASELINE = "packed_regular"


# ---- methods -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    name: str
    label: str  # (a)..(e), or "variant"
    packed: bool  # run_fast (one packed stream) or run_reference (padded rows, dense masks)
    jepa: bool  # the JEPA plan, or view 1 alone (regular SFT)
    pad_to_max_length: bool = False  # upstream SFT pads every row to max_length, not to the longest
    view_changes: dict = field(default_factory=dict, hash=False)  # ViewConfig fields this method changes
    attention: str | None = None  # run_fast's attention backend; None: the device's default
    lm_head: str | None = None  # run_fast's LM-head way; None: its default
    compiled: bool = False  # the model through torch.compile (--compile_backend), as --torch_compile does


CORE = (
    Method("upstream_regular", "(a)", packed=False, jepa=False, pad_to_max_length=True),
    Method("packed_regular", "(b)", packed=True, jepa=False),
    Method("upstream_jepa", "(c)", packed=False, jepa=True),
    Method("fast_jepa", "(d)", packed=True, jepa=True),
    Method(
        "fast_isolated",
        "(e)",
        packed=True,
        jepa=True,
        view_changes={"isolated_predictors": True, "localized_masks": False},
    ),
)
ATTENTION_BACKENDS = ("triton", "flex", "torch")
# (d) runs the LM head the fast path's default way ("auto": F.linear_cross_entropy where it applies, else
# checkpointed chunks); the variants run the others.
LM_HEAD_WAYS = ("chunks", "logits")
SAME_LOSS = (("upstream_regular", "packed_regular"), ("upstream_jepa", "fast_jepa"))


def compiled_variants() -> list[Method]:
    """packed_regular and fast_jepa with the model compiled (--compiled): run in the same interleaved rounds."""
    return [
        Method("packed_regular/compiled", "variant", packed=True, jepa=False, compiled=True),
        Method("fast_jepa/compiled", "variant", packed=True, jepa=True, compiled=True),
    ]


def variants(device: torch.device) -> list[Method]:
    """fast_jepa with every attention backend and LM-head way other than its defaults."""
    default_attention = "triton" if device.type == "cuda" else "torch"
    out = [
        Method(f"fast_jepa/attn={b}", "variant", packed=True, jepa=True, attention=b)
        for b in ATTENTION_BACKENDS
        if b != default_attention
    ]
    out += [Method(f"fast_jepa/lm_head={w}", "variant", packed=True, jepa=True, lm_head=w) for w in LM_HEAD_WAYS]
    return out


def unavailable(method: Method, device: torch.device) -> str | None:
    """Why this method cannot run here (recorded as skipped), or None."""
    missing = [name for name in method.view_changes if name not in ViewConfig.__dataclass_fields__]
    if missing:
        return f"ViewConfig has no {', '.join(missing)} (not in this checkout)"
    if not method.packed:
        return None
    parameters = inspect.signature(run_fast).parameters
    if method.attention is not None:
        if "attention" not in parameters:
            return "run_fast takes no attention backend"
        from llmjepa_kernels import hf_attention

        backends = getattr(hf_attention, "BACKENDS", ())
        if method.attention not in backends:
            return f"hf_attention has no {method.attention!r} backend (it has {', '.join(backends)})"
        if method.attention == "triton" and device.type != "cuda":
            return "Triton needs CUDA (the CPU interpreter is for tests, not timing)"
        if method.attention == "flex" and device.type != "cuda":
            return "FlexAttention has no backward on the CPU (torch raises NotImplementedError)"
    if method.lm_head is not None:
        keyword = lm_head_keyword()
        if keyword is None:
            return "run_fast takes no LM-head choice (llmjepa/execution/lm_head.py not wired in)"
        from llmjepa import lm_head

        if method.lm_head not in lm_head.LM_HEAD_METHODS:
            return f"llmjepa.execution.lm_head has no {method.lm_head!r} (it has {', '.join(lm_head.LM_HEAD_METHODS)})"
        if method.lm_head == "linear_ce" and not hasattr(torch.nn.functional, "linear_cross_entropy"):
            return f"torch {torch.__version__} has no F.linear_cross_entropy"
    return None


def lm_head_keyword() -> str | None:
    parameters = inspect.signature(run_fast).parameters
    return next((k for k in ("lm_head_method", "lm_head") if k in parameters), None)


def executor(method: Method, pad_token_id: int):
    if not method.packed:
        return partial(run_reference, pad_token_id=pad_token_id)
    kwargs = {}
    if method.attention is not None:
        kwargs["attention"] = method.attention
    if method.lm_head is not None:
        kwargs[lm_head_keyword()] = method.lm_head
    return partial(run_fast, **kwargs)


# ---- configs and model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """What --config selects; --batch_size, --max_length, --data and --step_separator override."""

    data: Path | None  # None: gsm8k from the shared datasets
    step_separator: str
    batch_size: int
    max_length: int
    cuda_if_available: bool  # tiny stays on CPU: its smoke test checks float32 losses to 1e-5
    shape: floor.ModelShape | None  # None: the embedded tiny model


CONFIGS = {
    "proxy": BenchConfig(None, "\n", 4, 512, False, floor.PROXY),
    "llama-1b": BenchConfig(None, "\n", 4, 512, True, floor.LLAMA_1B),
    "tiny": BenchConfig(sample_data_path("train"), "\n\n", 4, 256, False, None),
}


def gsm8k_path() -> Path:
    """../shared/datasets beside the checkout, or ./shared/datasets inside it (what travels to a device)."""
    for base in (ROOT.parent / "shared", ROOT / "shared"):
        path = base / "datasets" / "gsm8k_test.jsonl"
        if path.is_file():
            return path
    raise UserError(f"gsm8k_test.jsonl is in neither {ROOT.parent / 'shared'} nor {ROOT / 'shared'}/datasets; --data")


def llama_config(shape: floor.ModelShape, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    """A Llama with this shape (plain RoPE: Llama 3's frequency scaling does not change the cost)."""
    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.q_heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, device: torch.device) -> torch.nn.Module:
    bench = CONFIGS[args.config]
    if bench.shape is None:
        return build_default_model(tokenizer, seed=args.seed).to(device)
    shape = replace(bench.shape, layers=args.num_layers) if args.num_layers else bench.shape
    if len(tokenizer) > shape.vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} ids, more than the vocabulary {shape.vocab}")
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialize on the GPU: 1.2B parameters are slow to draw on a CPU
        model = LlamaForCausalLM(llama_config(shape, tokenizer))
    return model.to(model_dtype(args, device))


def model_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    if args.config == "tiny":
        return torch.float32
    if args.dtype != "auto":
        return getattr(torch, args.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def enable_checkpointing(model: torch.nn.Module) -> None:
    """As the Trainer does with gradient_checkpointing=True and no kwargs."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()


def set_attention(model: torch.nn.Module, packed: bool) -> None:
    """Dense masks need SDPA; the packed stream needs the ranges-based attention."""
    if not packed:
        model.set_attn_implementation("sdpa")
        return
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    model.set_attn_implementation(hf_attention.ATTENTION_NAME)
    check_fast_supported(model)


# ---- data and plans ------------------------------------------------------------------------------
MIN_ANSWER_TOKENS = 64  # --concatenate: an example whose prompt leaves fewer answer tokens is passed over


def concatenated(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, count: int) -> list:
    """`count` examples of at least cfg.max_length view-1 tokens: one gsm8k question, then the answers of
    consecutive examples joined by the step separator; a question whose prompt leaves fewer than
    MIN_ANSWER_TOKENS before max_length is passed over."""

    def length(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out, i, tried = [], 0, 0
    while len(out) < count:
        prompt = examples[i % len(examples)].messages[:-1]
        answers, i, tried = [], i + 1, tried + 1
        if tried > 10 * len(examples):
            raise UserError(f"--concatenate: no question leaves {MIN_ANSWER_TOKENS} tokens of {cfg.max_length}")
        if length(prompt) > cfg.max_length - MIN_ANSWER_TOKENS:
            continue
        while True:
            answers.append(examples[(i + len(answers)) % len(examples)].messages[-1]["content"])
            joined = prompt + [{"role": "assistant", "content": cfg.step_separator.join(answers)}]
            if length(joined) >= cfg.max_length:
                break
        i += len(answers)
        out.append(Example(messages=joined, source=f"concatenated gsm8k #{len(out)}"))
    return out


def load_microbatches(
    tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, data: Path, batch_size: int, count: int, concat: bool
) -> tuple[list[list[Encoded]], dict]:
    """`count` consecutive microbatches of the data (cycled if it is short), and their view-1 lengths."""
    examples = load_examples(data)
    examples = concatenated(examples, tokenizer, cfg, batch_size * count) if concat else examples[: batch_size * count]
    encoded, report = encode_all(examples, tokenizer, cfg)
    batches = [[encoded[(b * batch_size + i) % len(encoded)] for i in range(batch_size)] for b in range(count)]
    lengths = [len(e.input_ids) for batch in batches for e in batch]
    stats = {
        "examples": len(encoded),
        "mean_view1_length": statistics.mean(lengths),
        "max_view1_length": max(lengths),
        "truncated_to_max_length": report.truncated,
        "fewer_steps_than_N": report.fewer_steps,
        "no_separator": report.fallback,
    }
    return batches, stats


def pad_rows(plan: ViewPlan, length: int, pad_token_id: int) -> ViewPlan:
    """The plan with every row right-padded to `length` (upstream's padding="max_length").

    Pad tokens see only themselves, as padded_inputs' padding does, and carry no labels, so
    run_reference computes the same losses over a wider tensor. Pairs are row-local: unchanged."""
    rows = []
    for row in plan.rows:
        n, extra = len(row), max(0, length - len(row))
        rows.append(
            ViewRow(
                example=row.example,
                view=row.view,
                input_ids=row.input_ids + [pad_token_id] * extra,
                position_ids=row.position_ids + [0] * extra,
                causal_start=row.causal_start + list(range(n, n + extra)),
                shared_start=row.shared_start + [NO_SHARED[0]] * extra,
                shared_end=row.shared_end + [NO_SHARED[1]] * extra,
                labels=row.labels + [IGNORE_INDEX] * extra,
            )
        )
    return ViewPlan(rows=rows, pairs=list(plan.pairs), n_examples=plan.n_examples)


def method_plans(
    method: Method, batches: list[list[Encoded]], cfg: ViewConfig, predictor_ids: list[int], model: torch.nn.Module
) -> list:
    """The collator's plans for this method: packed by the collator for run_fast, with the attention layout
    (and on CUDA the Triton tile lists) built there, as llmjepa-train's collator does."""
    view_cfg = replace(cfg, regular=not method.jepa, **method.view_changes)
    options = {}
    if method.packed and "attention" in inspect.signature(ViewCollator).parameters:
        from llmjepa.execution.fast import triton_attention_shape

        options["attention"] = triton_attention_shape(model)
    collate = ViewCollator(view_cfg, predictor_ids, pack=method.packed, **options)
    return [collate(batch)["plan"] for batch in batches]


def plan_work(
    method: Method, plan: ViewPlan, unpadded: ViewPlan, args: argparse.Namespace
) -> tuple[floor.Work, floor.Work, int]:
    """(floor, executed work, tokens run) of one step of this method; `unpadded`: the plan before upstream's
    padding to max_length (the floor counts real tokens only)."""
    if method.packed:
        backend = method.attention or ("triton" if args.device == "cuda" else "torch")
        tile = floor.triton_tiles(args.head_dim, torch.bfloat16)[0] if backend == "triton" else None
        executed = floor.stream_executed(plan.packed, backend, tile)
        return floor.stream_floor(plan.packed), executed, plan.packed.n_tokens
    width = args.max_length if method.pad_to_max_length else None
    executed = floor.padded_executed(plan, width)
    return floor.rows_floor(unpadded), executed, executed.tokens


# ---- one step ------------------------------------------------------------------------------------
def step_loss(out: Executed, plan: ViewPlan, lbd: float, fused: bool) -> torch.Tensor:
    """JepaTrainer.plan_losses for a step of one microbatch (gamma 1): mean token CE + lbd * mean pair loss."""
    lm = out.ce_sum / max(plan.label_tokens, 1)
    if plan.n_pairs == 0:
        return lm
    if fused:
        from llmjepa_kernels import cosine_jepa_loss

        # as JepaTrainer calls it: the plan's indices are in range by construction, and the check costs two host
        # syncs per step that training does not make
        jepa_sum, _ = cosine_jepa_loss(
            out.hidden, out.pred_index, out.target_index, reduction="sum", check_indices=False
        )
    else:
        terms, _ = jepa_pair_losses(out.hidden[out.pred_index], out.hidden[out.target_index], "cosine")
        jepa_sum = terms.sum()
    return lm + lbd * jepa_sum / plan.n_pairs


@dataclass
class Runner:
    """One method's plans and executor, ready to step the shared model and optimizer."""

    method: Method
    plans: list[ViewPlan]  # the warm-up plans, then the timed ones
    run: object
    fused: bool
    floor_plans: list[ViewPlan] = field(default_factory=list)  # the same without upstream's padding
    error: str | None = None
    first_loss: float | None = None
    first_step_s: float | None = None  # the first warm-up step: with --compiled it holds the compilation
    graphs_compiled: int | None = None  # Dynamo graphs compiled in the first step (--compiled methods)
    model: torch.nn.Module | None = None  # what the executor runs: the compiled model, else None (the shared one)
    peak_mib: float | None = None
    peak_extra_mib: float | None = None  # CUDA: above the model, its gradients and AdamW's state
    round_ms: list[float] = field(default_factory=list)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, runner: Runner, plan: ViewPlan, lbd: float):
    optimizer.zero_grad(set_to_none=True)
    run_on = model if runner.model is None else runner.model  # (a compiled module has no truth value)
    loss = step_loss(runner.run(run_on, plan), plan, lbd, runner.fused)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def failure(err: BaseException) -> str:
    """One line for the table; the traceback goes to stderr."""
    traceback.print_exception(err, file=sys.stderr)
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory"
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"


def prime_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Allocate AdamW's state before any method runs (zero gradients: a zero update), so no method's
    memory includes its creation and none pays for it in its first step."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def warm_up(model, optimizer, initial: dict, runner: Runner, args: argparse.Namespace, device: torch.device) -> None:
    """The first step from the initial weights (its loss), then the rest of the warm-up steps; on CUDA the
    peak memory of them all."""
    set_attention(model, runner.method.packed)
    model.load_state_dict(initial)
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for i, plan in enumerate(runner.plans[: args.warmup_steps]):
            started, graphs = time.perf_counter(), compiled_graphs()
            loss = train_step(model, optimizer, runner, plan, args.lbd)
            if i == 0:
                runner.first_loss = float(loss)
                runner.first_step_s = time.perf_counter() - started
                runner.graphs_compiled = compiled_graphs() - graphs
        synchronize(device)
    except Exception as err:  # Triton compile and resource errors are Exceptions, not RuntimeErrors
        runner.error = failure(err)
        optimizer.zero_grad(set_to_none=True)
        free_memory(device)
        return
    if device.type == "cuda":
        runner.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        runner.peak_extra_mib = runner.peak_mib - args.static_mib


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def static_mib(model: torch.nn.Module, device: torch.device) -> float:
    """CUDA memory a step starts from and keeps: the loaded model and AdamW's state (allocated now, after
    prime_optimizer), plus one gradient per parameter (set to None between steps, allocated in every step)."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return (torch.cuda.memory_allocated(device) + grads) / 2**20


def timed_round(model, optimizer, runner: Runner, args: argparse.Namespace, device: torch.device) -> None:
    set_attention(model, runner.method.packed)
    timed = runner.plans[args.warmup_steps :]
    try:
        synchronize(device)
        start = time.perf_counter()
        for plan in timed:
            train_step(model, optimizer, runner, plan, args.lbd)
        synchronize(device)
        runner.round_ms.append(1000 * (time.perf_counter() - start) / len(timed))
    except Exception as err:
        runner.error = failure(err)
        optimizer.zero_grad(set_to_none=True)
        free_memory(device)


# ---- memory in a fresh process (CPU) -------------------------------------------------------------
def release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so the baseline is what is in use
    except (OSError, AttributeError):
        pass


def memory_probe(args: argparse.Namespace, setup: dict) -> dict:
    """In this (fresh) process: one step of the method on each timed microbatch; peak RSS above the loaded
    model and data."""
    runner = setup["runners"][args.memory_probe]
    if runner.error:
        return {"error": runner.error}
    model, device = setup["model"], setup["device"]
    set_attention(model, runner.method.packed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    release_free_memory()
    baseline = rss_kib("VmRSS")
    # ru_maxrss cannot stand in: Linux keeps it across fork and exec, so a probe would report the parent's peak
    if baseline is None or not reset_peak_rss():
        return {"error": "no /proc/self/status or clear_refs refused: the peak resident set cannot be reset"}
    try:
        for plan in runner.plans[args.warmup_steps :]:
            train_step(model, optimizer, runner, plan, args.lbd)
    except Exception as err:
        return {"error": failure(err)}
    peak = rss_kib("VmHWM")
    return {
        "peak_extra_mib": (peak - baseline) / 1024,
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "how": "VmHWM after clear_refs",
        "device": str(device),
    }


def probe_in_fresh_process(name: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--memory_probe", name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=args.probe_timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("MEMORY_PROBE "):
            return json.loads(line.removeprefix("MEMORY_PROBE "))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"error": f"memory probe exited {done.returncode}: {tail}"}


# ---- the benchmark -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="proxy")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (median reported)")
    p.add_argument("--microbatches", type=int, default=4, help="timed microbatches, one step each per round")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per method on CPU (CUDA: all timed ones)")
    p.add_argument("--num_prediction_steps", type=int, default=2, help="N of the JEPA plan")
    p.add_argument("--predictors", type=int, default=1, help="K predictor tokens")
    p.add_argument("--lbd", type=float, default=0.1)
    p.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    p.add_argument("--max_length", type=int, default=None, help="default: the config's")
    p.add_argument("--data", type=Path, default=None, help="default: the config's data file")
    p.add_argument("--step_separator", default=None, help="default: the config's")
    p.add_argument("--concatenate", action="store_true", help="examples of --max_length tokens (see --sweep)")
    p.add_argument("--gradient_checkpointing", choices=("auto", "on", "off"), default="auto", help="auto: on with CUDA")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto")
    p.add_argument("--num_layers", type=int, default=None, help="fewer layers (quick checks)")
    p.add_argument("--methods", nargs="+", default=None, help="names to run (default: (a)-(e) and the variants)")
    p.add_argument("--no_variants", action="store_true", help="only (a)-(e)")
    p.add_argument(
        "--compiled", action="store_true", help="also packed_regular and fast_jepa with the model torch.compile'd"
    )
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend of --compiled")
    p.add_argument(
        "--skip_methods", nargs="+", default=(), help="names not to run (packed_regular, the baseline, always runs)"
    )
    p.add_argument("--no_memory", action="store_true", help="CPU: skip the fresh-process memory probes")
    p.add_argument("--memory_methods", nargs="+", default=None, help="CPU: probe only these (default: all)")
    p.add_argument("--probe_workers", type=int, default=3, help="CPU: memory probes run at once")
    p.add_argument("--threads", type=int, default=1, help="CPU: torch threads")
    p.add_argument("--sweep", nargs="+", default=None, metavar=("length|N", "VALUE"), help="scaling table")
    p.add_argument(
        "--sweep_tokens", type=int, default=None, help="--sweep length: batch = this // length (view-1 tokens)"
    )
    p.add_argument("--name", default=None, help="output file stem (default: step_<config>)")
    p.add_argument(
        "--time_budget", type=float, default=None, help="seconds: fewer rounds (at least one) to end within it"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--probe_timeout", type=float, default=900, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.microbatches < 1 or args.warmup < 0:
        p.error("--rounds and --microbatches must be >= 1, --warmup >= 0")
    if args.sweep and (args.sweep[0] not in ("length", "N") or len(args.sweep) < 2):
        p.error("--sweep takes length or N, then one or more values")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def setup_bench(args: argparse.Namespace) -> dict:
    """Model, initial weights, microbatches and every method's plans: all that is done before timing."""
    bench = CONFIGS[args.config]
    device = torch.device("cuda" if bench.cuda_if_available and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.device = device.type
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    args.max_length = args.max_length or bench.max_length
    cfg = ViewConfig(
        num_prediction_steps=args.num_prediction_steps,
        predictors=args.predictors,
        step_separator=args.step_separator if args.step_separator is not None else bench.step_separator,
        max_length=args.max_length,
    )
    batch_size = args.batch_size or bench.batch_size
    data = args.data or bench.data or gsm8k_path()
    args.warmup_steps = args.microbatches if device.type == "cuda" else args.warmup
    warmup_batches = 0 if device.type == "cuda" else args.warmup_steps
    count = warmup_batches + args.microbatches
    batches, data_stats = load_microbatches(tokenizer, cfg, data, batch_size, count, args.concatenate)
    if device.type == "cuda":  # the warm-up runs exactly the microbatches that will be timed: every shape
        batches = batches + batches
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, args.predictors + 1)])
    model = build_model(args, tokenizer, device)
    model.train()
    checkpointing = args.gradient_checkpointing == "on" or (
        args.gradient_checkpointing == "auto" and device.type == "cuda"
    )
    if checkpointing:
        enable_checkpointing(model)
    args.head_dim = (
        getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    )
    methods = list(CORE) + ([] if args.no_variants else variants(device))
    methods += compiled_variants() if args.compiled else []
    if args.methods:
        unknown = set(args.methods) - {m.name for m in methods}
        if unknown:
            raise UserError(f"--methods: unknown {sorted(unknown)}; known: {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in args.methods or m.name == BASELINE]
    methods = [m for m in methods if m.name not in args.skip_methods or m.name == BASELINE]
    if args.memory_probe:  # a fresh process measures one method
        methods = [m for m in methods if m.name == args.memory_probe]
    runners, skipped, compiled = {}, {}, None
    for method in methods:
        reason = unavailable(method, device)
        if reason is not None:
            skipped[method.name] = {"label": method.label, "status": "skipped", "reason": reason}
            continue
        runner = Runner(method, [], executor(method, tokenizer.pad_token_id), method.packed and method.jepa)
        runner.fused = runner.fused and device.type == "cuda"
        if method.compiled:  # one compiled wrapper of the shared model (same parameters), as the Trainer makes
            if compiled is None:
                compiled = torch.compile(model, backend=args.compile_backend)
            runner.model = compiled
        try:
            runner.floor_plans = method_plans(method, batches, cfg, predictor_ids, model)
            runner.plans = runner.floor_plans
            if method.pad_to_max_length:
                runner.plans = [pad_rows(plan, cfg.max_length, tokenizer.pad_token_id) for plan in runner.plans]
        except Exception as err:
            runner.error = failure(err)
        runners[method.name] = runner
    return {
        "device": device,
        "model": model,
        "cfg": cfg,
        "data": data,
        "batch_size": batch_size,
        "data_stats": data_stats,
        "checkpointing": checkpointing,
        "runners": runners,
        "skipped": skipped,
    }


def run_bench(args: argparse.Namespace, setup: dict) -> dict:
    """Warm-up of every method, interleaved timed rounds, then (CPU) the memory probes; the report."""
    device, model, runners = setup["device"], setup["model"], setup["runners"]
    initial = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=device.type == "cuda")
    prime_optimizer(model, optimizer)
    args.static_mib = static_mib(model, device) if device.type == "cuda" else None
    started = time.monotonic()
    for runner in runners.values():
        if runner.error is None:
            if args.time_budget is not None and time.monotonic() - started > args.time_budget / 2:
                runner.error = f"not run: half of --time_budget {args.time_budget:.0f} s went to earlier warm-ups"
            else:
                warm_up(model, optimizer, initial, runner, args, device)
        print(f"bench_step: warmed {runner.method.name}: {runner.error or 'ok'}", file=sys.stderr, flush=True)
    order = [r for r in runners.values()]
    args.rounds_run = 0
    for round_index in range(args.rounds):
        round_start = time.monotonic()
        shift = round_index % len(order)
        for runner in order[shift:] + order[:shift]:
            if runner.error is None:
                timed_round(model, optimizer, runner, args, device)
        args.rounds_run += 1
        print(f"bench_step: round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        now = time.monotonic()
        if args.time_budget is not None and now + (now - round_start) - started > args.time_budget:
            print(f"bench_step: --time_budget {args.time_budget:.0f} s: stopping after {args.rounds_run} rounds",
                  file=sys.stderr, flush=True)  # fmt: skip
            break
    del optimizer
    free_memory(device)
    memory = {}
    if device.type == "cpu" and not args.no_memory:
        names = [
            name
            for name, runner in runners.items()
            if runner.error is None and (args.memory_methods is None or name in args.memory_methods)
        ]
        # each probe is its own process; memory does not depend on who shares the CPU, so run a few at once
        with ThreadPoolExecutor(max_workers=args.probe_workers) as pool:
            for name, result in zip(names, pool.map(lambda n: probe_in_fresh_process(n, args), names)):
                memory[name] = result
                print(f"bench_step: memory {name}: {result}", file=sys.stderr, flush=True)
    return build_report(args, setup, memory)


def method_record(runner: Runner, args: argparse.Namespace, memory: dict, shape: floor.ModelShape) -> dict:
    timed = runner.plans[args.warmup_steps :]
    record = {"label": runner.method.label, "status": "ok" if runner.error is None else "failed"}
    if runner.error is not None:
        record["reason"] = runner.error
    if not timed:
        return record
    unpadded = runner.floor_plans[args.warmup_steps :]
    works = [plan_work(runner.method, plan, bare, args) for plan, bare in zip(timed, unpadded)]
    floor_work = sum((w[0] for w in works), floor.Work(0, 0, 0))
    executed = sum((w[1] for w in works), floor.Work(0, 0, 0))
    record.update(
        tokens_per_step=statistics.mean(w[2] for w in works),
        rows_per_step=statistics.mean(len(p.rows) for p in timed),
        floor=vars(floor_work) | {"train_flops_per_step": floor_work.train_flops(shape) / len(timed)},
        executed=vars(executed) | {"train_flops_per_step": executed.train_flops(shape) / len(timed)},
        first_step_loss=runner.first_loss,
        round_ms=runner.round_ms,
        median_ms=statistics.median(runner.round_ms) if runner.round_ms else None,
        first_step_s=runner.first_step_s,
        graphs_compiled=runner.graphs_compiled,
    )
    if runner.method.compiled and runner.first_step_s is not None and record["median_ms"] is not None:
        # compilation, apart from the step time: the first step less a steady one
        record["compile_s"] = runner.first_step_s - record["median_ms"] / 1000
    if args.device == "cuda":
        record["peak_memory_mib"] = runner.peak_mib
        record["peak_extra_mib"] = runner.peak_extra_mib
    elif runner.method.name in memory:
        probe = memory[runner.method.name]
        record["memory_probe"] = probe
        record["peak_memory_mib"] = probe.get("peak_extra_mib")
        if "error" in probe and record["status"] == "ok":
            record["memory_error"] = probe["error"]
    return record


def add_ratios(methods: dict) -> None:
    base = methods.get(BASELINE, {})
    for record in methods.values():
        if record.get("median_ms") is None or base.get("median_ms") is None:
            continue
        record["time_ratio"] = record["median_ms"] / base["median_ms"]
        # paired per round (both met the same load): their spread says how far the shared CPU moved the ratio
        record["round_time_ratios"] = [a / b for a, b in zip(record["round_ms"], base["round_ms"])]
        # the fastest round of each method: on a shared CPU, load only ever adds time, so the minimum is the
        # least disturbed measurement
        record["best_ms"] = min(record["round_ms"])
        record["best_time_ratio"] = record["best_ms"] / min(base["round_ms"])
        record["flop_ratio"] = record["floor"]["train_flops_per_step"] / base["floor"]["train_flops_per_step"]
        record["efficiency"] = record["flop_ratio"] / record["time_ratio"]
        record["best_efficiency"] = record["flop_ratio"] / record["best_time_ratio"]
        if record.get("peak_memory_mib") is not None and base.get("peak_memory_mib"):
            record["memory_ratio"] = record["peak_memory_mib"] / base["peak_memory_mib"]


def attention_waste(setup: dict, args: argparse.Namespace) -> dict:
    """Computed / visible attention pairs of the fast paths' streams (timed microbatches together)."""
    tiles = floor.triton_tiles(args.head_dim, torch.bfloat16)
    out = {}
    for name, runner in setup["runners"].items():
        method = runner.method
        if not method.packed or method.attention or method.lm_head or method.compiled or not runner.plans:
            continue
        ratios = [floor.attention_waste(floor.stream_ranges(p.packed), tiles) for p in runner.plans]
        out[name] = {k: statistics.mean(r[k] for r in ratios) for k in ratios[0]}
    return out


def build_report(args: argparse.Namespace, setup: dict, memory: dict) -> dict:
    device, model = setup["device"], setup["model"]
    shape = floor.ModelShape.from_config(model.config)
    methods = {name: method_record(r, args, memory, shape) for name, r in setup["runners"].items()}
    methods.update(setup["skipped"])
    add_ratios(methods)
    loss_agreement = {}
    for a, b in SAME_LOSS:
        la, lb = (methods.get(x, {}).get("first_step_loss") for x in (a, b))
        loss_agreement[f"{a} vs {b}"] = abs(la - lb) / abs(lb) if la is not None and lb is not None else None
    cfg = setup["cfg"]
    return {
        "config": args.config,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": {name: version(name) for name in ("torch", "transformers", "triton")},
        "dtype": str(model_dtype(args, device)).removeprefix("torch."),
        "data": str(setup["data"]) + (" (concatenated to max_length)" if args.concatenate else ""),
        "rounds": getattr(args, "rounds_run", args.rounds),
        "rounds_asked": args.rounds,
        "static_mib": getattr(args, "static_mib", None),
        "microbatches": args.microbatches,
        "warmup_steps_per_method": args.warmup_steps,
        "shapes": {
            **model_shapes(model),
            "batch_size": setup["batch_size"],
            "max_length": cfg.max_length,
            "num_prediction_steps": cfg.num_prediction_steps,
            "predictors": cfg.predictors,
            "step_separator": cfg.step_separator,
            "lbd": args.lbd,
            "gradient_checkpointing": setup["checkpointing"],
            **setup["data_stats"],
        },
        "lm_head_default": "linear_ce" if hasattr(torch.nn.functional, "linear_cross_entropy") else "chunks",
        "flop_model": {
            "head_to_layers_ratio": shape.head_to_layers_ratio,
            "llama_1b_head_to_layers_ratio": floor.LLAMA_1B.head_to_layers_ratio,
        },
        "memory_method": (
            "CUDA max_memory_allocated over the method's warm-up: in total (weights, grads, AdamW, activations) "
            "and above the loaded model, its gradients and AdamW's state (extra)"
            if device.type == "cuda"
            else "fresh process per method: peak RSS (VmHWM reset after load) minus RSS after loading model "
            "and data, over one step per timed microbatch (grads, AdamW state, activations)"
        ),
        "methods": methods,
        "compile_backend": args.compile_backend if args.compiled else None,
        "attention_computed_over_visible": attention_waste(setup, args),
        "loss_agreement": loss_agreement,
    }


# ---- output --------------------------------------------------------------------------------------
def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    s = report["shapes"]
    lines = [
        f"### Optimizer step, {report['config']}: {report['device']}, {report['dtype']}, {report['date']}",
        "",
        f"{s['parameters'] / 1e6:.1f}M parameters (hidden {s['hidden_size']}, {s['num_hidden_layers']} layers, "
        f"{s['num_attention_heads']}/{s['num_key_value_heads']} heads of {s['head_dim']}, MLP "
        f"{s['intermediate_size']}, vocab {s['vocab_size']}); LM head / layers FLOPs "
        f"{report['flop_model']['head_to_layers_ratio']:.3f} (Llama-3.2-1B "
        f"{report['flop_model']['llama_1b_head_to_layers_ratio']:.3f}). Data {report['data']}: batch "
        f"{s['batch_size']}, max_length {s['max_length']}, mean view-1 length {s['mean_view1_length']:.1f}, "
        f"N={s['num_prediction_steps']}, K={s['predictors']}, gradient checkpointing {s['gradient_checkpointing']}, "
        f"LM head of (b)-(e): {report['lm_head_default']}. "
        f"Time: median over {report['rounds']} interleaved rounds of {report['microbatches']} microbatches, "
        f"{report['warmup_steps_per_method']} warm-up steps per method. Memory: {report['memory_method']}.",
        "",
        "| method | ms/step | time ratio | FLOP ratio | efficiency | best-round ratio | best-round efficiency "
        "| memory MiB | extra MiB | memory ratio | tokens/step | floor GFLOP/step | executed GFLOP/step "
        "| first-step loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["methods"].items():
        label = f"{r['label']} {name}"
        if r["status"] != "ok" and r.get("median_ms") is None:
            lines.append(f"| {label} | {r['status']}: {r.get('reason', '')} |" + " |" * 12)
            continue
        lines.append(
            f"| {label} | {fmt(r['median_ms'], '.1f')} | {fmt(r.get('time_ratio'), '.2f')} "
            f"| {fmt(r.get('flop_ratio'), '.2f')} | {fmt(r.get('efficiency'), '.2f')} "
            f"| {fmt(r.get('best_time_ratio'), '.2f')} | {fmt(r.get('best_efficiency'), '.2f')} "
            f"| {fmt(r.get('peak_memory_mib'), '.0f')} | {fmt(r.get('peak_extra_mib'), '.0f')} "
            f"| {fmt(r.get('memory_ratio'), '.2f')} "
            f"| {r['tokens_per_step']:.0f} | {r['floor']['train_flops_per_step'] / 1e9:.2f} "
            f"| {r['executed']['train_flops_per_step'] / 1e9:.2f} | {fmt(r['first_step_loss'], '.6f')} |"
        )
    spread = [
        f"{name} {min(r['round_ms']):.0f}-{max(r['round_ms']):.0f}"
        for name, r in report["methods"].items()
        if r.get("round_ms")
    ]
    paired = [
        f"{name} {min(r['round_time_ratios']):.2f}-{max(r['round_time_ratios']):.2f}"
        for name, r in report["methods"].items()
        if r.get("round_time_ratios") and name != BASELINE
    ]
    lines += ["", "Per-round ms/step (min-max): " + ", ".join(spread)]
    lines += ["", "Per-round time ratio to packed_regular, same round (min-max): " + ", ".join(paired)]
    lines += [f"First-step loss, relative difference {k}: {fmt(v, '.1e')}" for k, v in report["loss_agreement"].items()]
    compiled = {name: r for name, r in report["methods"].items() if r.get("compile_s") is not None}
    if compiled:
        lines += ["", f"torch.compile (backend {report.get('compile_backend')}), apart from the step times above:", ""]
        lines += [
            "| method | graphs compiled in its first step | first step s | compile s (first step - median step) "
            "| eager / compiled ms |"
        ]
        lines += ["|---|---|---|---|---|"]
        for name, r in compiled.items():
            eager = report["methods"].get(name.removesuffix("/compiled"), {}).get("median_ms")
            speedup = eager / r["median_ms"] if eager and r.get("median_ms") else None
            lines.append(
                f"| {name} | {r['graphs_compiled']} | {r['first_step_s']:.1f} | {r['compile_s']:.1f} "
                f"| {fmt(speedup, '.2f')} |"
            )
        lines += ["", "Both compiled methods share one compiled model; 0 graphs: the earlier method's graph served it."]
    waste = report["attention_computed_over_visible"]
    if waste:
        lines += ["", "Attention pairs computed / visible (mean over microbatches):", ""]
        kinds = list(next(iter(waste.values())))
        lines += ["| stream | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        lines += [f"| {n} | " + " | ".join(f"{w[k]:.2f}" for k in kinds) + " |" for n, w in waste.items()]
    return "\n".join(lines) + "\n"


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s)"


def model_shapes(model: torch.nn.Module) -> dict:
    c = model.config
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
    shapes = {name: getattr(c, name) for name in names}
    shapes.update(intermediate_size=c.intermediate_size, vocab_size=c.vocab_size)
    shapes["parameters"] = sum(p.numel() for p in model.parameters())
    return shapes


def write_outputs(report: dict, stem: Path, table: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)


# ---- sweeps --------------------------------------------------------------------------------------
def sweep(args: argparse.Namespace) -> dict:
    """One interleaved benchmark per value of sequence length or N; one table of ratios over the values."""
    what, values = args.sweep[0], [int(v) for v in args.sweep[1:]]
    reports = []
    for value in values:
        one = argparse.Namespace(**vars(args))
        one.sweep = None
        if what == "length":
            one.max_length, one.concatenate = value, True
            one.argv = strip_sweep(args.argv) + ["--max_length", str(value), "--concatenate"]
            if args.sweep_tokens:  # the same view-1 tokens per microbatch at every length
                one.batch_size = max(1, args.sweep_tokens // value)
                one.argv += ["--batch_size", str(one.batch_size)]
        else:
            one.num_prediction_steps = value
            one.argv = strip_sweep(args.argv) + ["--num_prediction_steps", str(value)]
        print(f"bench_step: sweep {what} = {value}", file=sys.stderr, flush=True)
        reports.append(run_bench(one, setup_bench(one)))
    report = {"sweep": what, "values": values, "reports": reports}
    stem = args.out_dir / (args.name or f"sweep_{what}_{args.config}")
    table = sweep_markdown(report)
    write_outputs(report, stem, table)
    print(table)
    return report


def strip_sweep(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if a == "--sweep":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def sweep_markdown(report: dict) -> str:
    first = report["reports"][0]
    what = "view-1 length (concatenated gsm8k)" if report["sweep"] == "length" else "N"
    lines = [
        f"### Scaling over {what}, {first['config']}: {first['device']}, {first['dtype']}, {first['date']}",
        "",
        f"Each value its own interleaved run ({first['rounds']} rounds x {first['microbatches']} microbatches, "
        f"batch {', '.join(str(r['shapes']['batch_size']) for r in report['reports'])}, view-1 length "
        f"{', '.join(str(r['shapes']['max_length']) for r in report['reports'])}). Ratios to packed_regular of the "
        "same run; efficiency = FLOP "
        f"ratio / time ratio; memory: {first['memory_method']}.",
        "",
        f"| {report['sweep']} | method | ms/step | time ratio | FLOP ratio | efficiency | best-round ratio "
        "| memory MiB | memory ratio | tokens/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for value, rep in zip(report["values"], report["reports"]):
        for name, r in rep["methods"].items():
            if r["label"] == "variant":
                continue
            if r.get("median_ms") is None:
                lines.append(f"| {value} | {r['label']} {name} | {r['status']}: {r.get('reason', '')} |" + " |" * 7)
                continue
            lines.append(
                f"| {value} | {r['label']} {name} | {r['median_ms']:.0f} | {fmt(r.get('time_ratio'), '.2f')} "
                f"| {fmt(r.get('flop_ratio'), '.2f')} | {fmt(r.get('efficiency'), '.2f')} "
                f"| {fmt(r.get('best_time_ratio'), '.2f')} "
                f"| {fmt(r.get('peak_memory_mib'), '.0f')} | {fmt(r.get('memory_ratio'), '.2f')} "
                f"| {r['tokens_per_step']:.0f} |"
            )
    return "\n".join(lines) + "\n"


# ---- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    print(
        f"bench_step: LM head / all layers FLOPs per token: proxy {floor.PROXY.head_to_layers_ratio:.3f}, "
        f"Llama-3.2-1B {floor.LLAMA_1B.head_to_layers_ratio:.3f}",
        file=sys.stderr,
    )
    if args.sweep:
        return sweep(args)
    setup = setup_bench(args)
    if args.memory_probe:
        result = memory_probe(args, setup)
        print("MEMORY_PROBE " + json.dumps(result), flush=True)
        return result
    report = run_bench(args, setup)
    table = markdown(report)
    write_outputs(report, args.out_dir / (args.name or f"step_{args.config}"), table)
    print(table)
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad data or flags: one line, as llmjepa-train prints them
        sys.exit(f"bench_step: {e}")
