"""Whole optimizer steps (forward + backward + AdamW, one microbatch): upstream-style vs packed executors.

    python bench/bench_step.py --config llama-1b [--steps 10 --warmup 3 --gradient_checkpointing]
    python bench/bench_step.py --config tiny --steps 3 --warmup 1      # CPU smoke run, seconds

Four methods run the same microbatches, one after the other in one process, each from the same
initial weights and a fresh AdamW:

  upstream_regular  regular SFT as upstream runs it: rows right-padded to --max_length, dense
                    (rows, 1, L, L) additive masks, logits for every token (execute.run_reference).
  packed_regular    regular SFT through fast.run_fast: one padding-free stream, chunked LM-head loss.
  upstream_jepa     the Step-JEPA plan (N = --num_prediction_steps, K = --predictors) through
                    run_reference: the triple batch with dense masks, padded to its longest row
                    (what `llmjepa-train --impl reference` runs today).
  fast_jepa         the same plan through run_fast (prefix sharing, view truncation), with the fused
                    JEPA loss kernel on CUDA (PyTorch pair loss on CPU).

The loss is the trainer's for a step of one microbatch (JepaTrainer.plan_losses, gamma 1):
sum of token CE / label tokens + lbd * sum(1 - cos) / pairs. Each step also clips the gradient
norm to 1, as the trainer does. Plans are built before timing (the collator's work, done by the
data loader in training); the executors' own preparation (padding and masks, or packing) is timed.

Reported per method: median step time over --steps timed steps after --warmup steps (CUDA:
synchronize around each step; CPU: perf_counter), peak memory (CUDA: max_memory_allocated since
the method started, weights + gradients + AdamW state + activations; on CPU "n/a": the process's
max RSS only ever grows, so it cannot be split per method), tokens run per step (upstream: rows x
padded length; packed: stream length) and the loss of the first step, which must agree between
upstream_regular and packed_regular and between upstream_jepa and fast_jepa (same function).

Configs: `llama-1b`, a Llama-3.2-1B-shaped model built from its config (random weights, bf16 on
CUDA), on ../shared/datasets/gsm8k_test.jsonl (steps separated by "\\n"), tokenized with the
embedded tiny tokenizer (the only one available offline; its ids are far below the vocabulary
size, and the measured view-1 lengths are in the results); `tiny`, the embedded tiny model in
float32 on CPU on the bundled sample data (CI smoke run). Results: --out_dir/step_<config>.json,
.md and .png; the Markdown table is printed at the end.
"""

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from llmjepa.data import load_examples
from llmjepa.default_model import build_default_model, sample_data_path
from llmjepa.errors import UserError
from llmjepa.execute import Executed, run_reference
from llmjepa.fast import check_fast_supported, run_fast
from llmjepa.losses import jepa_pair_losses
from llmjepa.model import load_tokenizer
from llmjepa.pack import pack_plan
from llmjepa.plan import IGNORE_INDEX, NO_SHARED, ViewPlan, ViewRow
from llmjepa.views import Encoded, ViewConfig, build_plan, encode_all

ROOT = Path(__file__).resolve().parents[1]
MAX_GRAD_NORM = 1.0  # the trainer's max_grad_norm
LEARNING_RATE = 1e-5  # only the first step's loss is compared, so any small rate will do


@dataclass(frozen=True)
class Method:
    name: str
    packed: bool  # run_fast (one packed stream) or run_reference (padded rows, dense masks)
    jepa: bool  # the JEPA plan, or view 1 alone (regular SFT)
    pad_to_max_length: bool = False  # upstream SFT pads every row to max_length, not to the longest


METHODS = (
    Method("upstream_regular", packed=False, jepa=False, pad_to_max_length=True),
    Method("packed_regular", packed=True, jepa=False),
    Method("upstream_jepa", packed=False, jepa=True),
    Method("fast_jepa", packed=True, jepa=True),
)
# (numerator, denominator) of the reported ratios of time and memory
RATIOS = (
    ("upstream_regular", "packed_regular"),
    ("upstream_jepa", "packed_regular"),
    ("fast_jepa", "packed_regular"),
    ("upstream_jepa", "fast_jepa"),
)
SAME_LOSS = (("upstream_regular", "packed_regular"), ("upstream_jepa", "fast_jepa"))


@dataclass(frozen=True)
class BenchConfig:
    """What --config selects; --batch_size, --max_length, --data and --step_separator override."""

    data: Path
    step_separator: str
    batch_size: int
    max_length: int
    cuda_if_available: bool  # tiny stays on CPU: its smoke test checks float32 losses to 1e-5


CONFIGS = {
    "llama-1b": BenchConfig(ROOT.parent / "shared" / "datasets" / "gsm8k_test.jsonl", "\n", 4, 512, True),
    "tiny": BenchConfig(sample_data_path("train"), "\n\n", 4, 256, False),
}


# ---- model -----------------------------------------------------------------------------------
def llama_1b_config(tokenizer: PreTrainedTokenizerBase, num_layers: int | None) -> LlamaConfig:
    """Llama-3.2-1B's shapes (plain RoPE: its llama3 frequency scaling does not change the cost)."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=num_layers or 16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(
    config_name: str, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace, device: torch.device
) -> torch.nn.Module:
    if config_name == "tiny":
        model = build_default_model(tokenizer, seed=args.seed)
        if args.num_layers:
            raise SystemExit("bench_step: --num_layers applies to --config llama-1b only")
        return model.to(device)
    config = llama_1b_config(tokenizer, args.num_layers)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"bench_step: tokenizer has {len(tokenizer)} ids, more than the vocabulary")
    torch.manual_seed(args.seed)
    with torch.device(device):  # initialize on the GPU: 1.2B parameters are slow to draw on a CPU
        model = LlamaForCausalLM(config)
    return model.to(model_dtype(args, device))


def model_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    if args.config == "tiny":
        return torch.float32
    if args.dtype != "auto":
        return getattr(torch, args.dtype)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The initial weights on the CPU, so every method starts from them (no second model on the GPU)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}


def set_attention(model: torch.nn.Module, packed: bool) -> None:
    """Dense masks need SDPA; the packed stream needs the ranges-based attention."""
    if not packed:
        model.set_attn_implementation("sdpa")
        return
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    model.set_attn_implementation(hf_attention.ATTENTION_NAME)
    check_fast_supported(model)


# ---- data and plans --------------------------------------------------------------------------
def load_microbatches(
    tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, data: Path, batch_size: int, count: int
) -> tuple[list[list[Encoded]], dict]:
    """`count` consecutive microbatches of the data (cycled if it is short), and their view-1 lengths."""
    examples = load_examples(data)[: batch_size * count]
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
    method: Method, batches: list[list[Encoded]], cfg: ViewConfig, predictor_ids: list[int], pad_token_id: int
) -> list[ViewPlan]:
    plans = [build_plan(batch, cfg, predictor_ids, with_views=method.jepa) for batch in batches]
    if method.pad_to_max_length:
        plans = [pad_rows(plan, cfg.max_length, pad_token_id) for plan in plans]
    return plans


def tokens_run(plan: ViewPlan, packed: bool) -> int:
    """Token positions the model computes: the packed stream, or every padded row's full width."""
    if packed:
        return pack_plan(plan).n_tokens
    return len(plan.rows) * max(len(row) for row in plan.rows)


# ---- one optimizer step ------------------------------------------------------------------------
def step_loss(out: Executed, plan: ViewPlan, lbd: float, fused: bool) -> torch.Tensor:
    """JepaTrainer.plan_losses for a step of one microbatch (gamma 1): mean token CE + lbd * mean pair loss."""
    lm = out.ce_sum / max(plan.label_tokens, 1)
    if plan.n_pairs == 0:
        return lm
    if fused:
        from llmjepa_kernels import cosine_jepa_loss

        jepa_sum, _ = cosine_jepa_loss(out.hidden, out.pred_index, out.target_index, reduction="sum")
    else:
        terms, _ = jepa_pair_losses(out.hidden[out.pred_index], out.hidden[out.target_index], "cosine")
        jepa_sum = terms.sum()
    return lm + lbd * jepa_sum / plan.n_pairs


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    executor: Callable[[torch.nn.Module, ViewPlan], Executed],
    plan: ViewPlan,
    lbd: float,
    fused: bool,
) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = step_loss(executor(model, plan), plan, lbd, fused)
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


# ---- one method ------------------------------------------------------------------------------
def run_method(
    model: torch.nn.Module,
    initial: dict[str, torch.Tensor],
    method: Method,
    plans: list[ViewPlan],
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    """Time every step of one method from the initial weights; the first args.warmup steps are not timed."""
    set_attention(model, method.packed)
    model.load_state_dict(initial)
    model.zero_grad(set_to_none=True)
    free_memory(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=device.type == "cuda")
    executor = run_fast if method.packed else partial(run_reference, pad_token_id=args.pad_token_id)
    fused = method.packed and method.jepa and device.type == "cuda"
    weights_mib = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, losses = [], []
    try:
        for plan in plans:
            synchronize(device)
            start = time.perf_counter()
            losses.append(train_step(model, optimizer, executor, plan, args.lbd, fused))
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    except torch.cuda.OutOfMemoryError:  # record it and go on to the next method
        del optimizer
        model.zero_grad(set_to_none=True)
        free_memory(device)
        return {"error": "out of memory", "steps_done": len(seconds)}
    timed = seconds[args.warmup :]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del optimizer
    free_memory(device)
    return {
        "executor": "run_fast" if method.packed else "run_reference",
        "plan": "jepa" if method.jepa else "regular",
        "fused_pair_loss": fused,
        "median_ms": 1000 * statistics.median(timed),
        "step_ms": [1000 * s for s in timed],
        "peak_memory_mib": peak,
        "weights_mib": weights_mib,
        "tokens_per_step": statistics.mean(tokens_run(p, method.packed) for p in plans[args.warmup :]),
        "rows_per_step": statistics.mean(len(p.rows) for p in plans[args.warmup :]),
        "first_step_loss": losses[0].item(),
    }


# ---- results ---------------------------------------------------------------------------------
def ratio(results: dict, numerator: str, denominator: str, key: str) -> float | None:
    a, b = results[numerator].get(key), results[denominator].get(key)
    return a / b if a is not None and b else None


def ratios(results: dict) -> dict:
    return {
        f"{a} / {b}": {"time": ratio(results, a, b, "median_ms"), "memory": ratio(results, a, b, "peak_memory_mib")}
        for a, b in RATIOS
    }


def loss_agreement(results: dict) -> dict:
    """Relative difference of first-step losses between methods that compute the same function."""
    out = {}
    for a, b in SAME_LOSS:
        la, lb = results[a].get("first_step_loss"), results[b].get("first_step_loss")
        out[f"{a} vs {b}"] = abs(la - lb) / abs(lb) if la is not None and lb is not None else None
    return out


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    results, shapes = report["methods"], report["shapes"]
    lines = [
        f"### Optimizer step, {report['config']}: {report['device']}, {report['dtype']}, {report['date']}",
        "",
        f"batch {shapes['batch_size']}, max_length {shapes['max_length']}, mean view-1 length "
        f"{shapes['mean_view1_length']:.1f} tokens, N={shapes['num_prediction_steps']}, "
        f"K={shapes['predictors']}, gradient checkpointing {shapes['gradient_checkpointing']}, "
        f"median of {report['steps']} steps after {report['warmup']} warmup",
        "",
        "| method | median step ms | peak memory MiB | tokens/step | rows/step | first-step loss "
        "| time / packed_regular | memory / packed_regular |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | | |")
            continue
        time_ratio = ratio(results, name, "packed_regular", "median_ms")
        memory_ratio = ratio(results, name, "packed_regular", "peak_memory_mib")
        lines.append(
            f"| {name} | {r['median_ms']:.1f} | {fmt(r['peak_memory_mib'], '.0f')} | {r['tokens_per_step']:.0f} "
            f"| {r['rows_per_step']:.0f} | {r['first_step_loss']:.6f} | {fmt(time_ratio, '.2f')} "
            f"| {fmt(memory_ratio, '.2f')} |"
        )
    speedup = report["ratios"]["upstream_jepa / fast_jepa"]
    time_ratio, memory_ratio = fmt(speedup["time"], ".2f"), fmt(speedup["memory"], ".2f")
    lines += ["", f"upstream_jepa / fast_jepa: time {time_ratio}, memory {memory_ratio}"]
    lines += [f"first-step loss, relative difference {k}: {fmt(v, '.1e')}" for k, v in report["loss_agreement"].items()]
    if report["memory_note"]:
        lines += ["", report["memory_note"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in report["methods"].items() if "error" not in r]
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax_time.barh(names, [report["methods"][n]["median_ms"] for n in names], color="tab:blue")
    ax_time.set_xlabel("median step time (ms)")
    memory = [report["methods"][n]["peak_memory_mib"] for n in names]
    if all(m is not None for m in memory):
        ax_memory.barh(names, memory, color="tab:orange")
        ax_memory.set_xlabel("peak memory (MiB)")
    else:
        ax_memory.text(0.5, 0.5, "peak memory: n/a on CPU", ha="center", va="center", transform=ax_memory.transAxes)
        ax_memory.set_axis_off()
    for ax in (ax_time, ax_memory):
        ax.invert_yaxis()  # methods top to bottom in table order
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"bench_step {report['config']}: {report['device']}, {report['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} torch threads"


def model_shapes(model: torch.nn.Module) -> dict:
    c = model.config
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim")
    shapes = {name: getattr(c, name) for name in names}
    shapes.update(intermediate_size=c.intermediate_size, vocab_size=c.vocab_size)
    shapes["parameters"] = sum(p.numel() for p in model.parameters())
    return shapes


def write_outputs(report: dict, out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"step_{report['config']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    stem.with_suffix(".md").write_text(table)
    plot(report, stem.with_suffix(".png"))
    return table


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="llama-1b")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one gives the loss)")
    p.add_argument("--num_prediction_steps", type=int, default=2, help="N of the JEPA plan")
    p.add_argument("--predictors", type=int, default=1, help="K predictor tokens")
    p.add_argument("--lbd", type=float, default=0.1)
    p.add_argument("--batch_size", type=int, default=None, help="default: the config's")
    p.add_argument("--max_length", type=int, default=None, help="default: the config's")
    p.add_argument("--data", type=Path, default=None, help="default: the config's data file")
    p.add_argument("--step_separator", default=None, help="default: the config's")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto", help="llama-1b")
    p.add_argument("--num_layers", type=int, default=None, help="llama-1b with fewer layers (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out_dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bench = CONFIGS[args.config]
    device = torch.device("cuda" if bench.cuda_if_available and torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer("llmjepa/tiny-llama")
    args.pad_token_id = tokenizer.pad_token_id
    cfg = ViewConfig(
        num_prediction_steps=args.num_prediction_steps,
        predictors=args.predictors,
        step_separator=args.step_separator if args.step_separator is not None else bench.step_separator,
        max_length=args.max_length or bench.max_length,
    )
    batch_size = args.batch_size or bench.batch_size
    data = args.data or bench.data
    batches, data_stats = load_microbatches(tokenizer, cfg, data, batch_size, args.warmup + args.steps)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, args.predictors + 1)])
    model = build_model(args.config, tokenizer, args, device)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    initial = snapshot(model)
    results = {}
    for method in METHODS:
        plans = method_plans(method, batches, cfg, predictor_ids, tokenizer.pad_token_id)
        results[method.name] = run_method(model, initial, method, plans, args, device)
        print(f"bench_step: {method.name}: {results[method.name]}", file=sys.stderr)
    report = {
        "config": args.config,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": {name: version(name) for name in ("torch", "transformers", "triton")},
        "dtype": str(model_dtype(args, device)).removeprefix("torch."),
        "data": str(data),
        "steps": args.steps,
        "warmup": args.warmup,
        "shapes": {
            **model_shapes(model),
            "batch_size": batch_size,
            "max_length": cfg.max_length,
            "num_prediction_steps": args.num_prediction_steps,
            "predictors": args.predictors,
            "step_separator": cfg.step_separator,
            "lbd": args.lbd,
            "gradient_checkpointing": args.gradient_checkpointing,
            **data_stats,
        },
        "memory_note": None if device.type == "cuda" else "peak memory: n/a on CPU (max RSS is per process)",
        "methods": results,
    }
    report["ratios"] = ratios(results)
    report["loss_agreement"] = loss_agreement(results)
    print(write_outputs(report, args.out_dir))
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad data or flags: one line, as llmjepa-train prints them
        sys.exit(f"bench_step: {e}")
