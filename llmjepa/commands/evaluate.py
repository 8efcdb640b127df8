"""llmjepa-eval: generation accuracy as the LLM-JEPA paper reports it (upstream evaluate.py's scorers).

    llmjepa-eval --model_name runs/demo                  # the demo sums llmjepa-train's default trains on
    llmjepa-eval --input_file gsm8k_test.jsonl --model_name runs/jepa --output_dir runs/jepa/eval
    llmjepa-eval --input_file gsm8k_test.jsonl --predictions_file preds.jsonl --output_dir out
    llmjepa-eval --input_file nq_open_test.jsonl --model_name runs/jepa --base_model base/ --output_dir out

Writes output_dir/predictions.jsonl (index, prompt, prediction, reference, correct), summary.json and
prints a table. A run that stops can be started again: examples already in predictions.jsonl are kept.
Under torchrun each rank takes examples i % world_size == rank and rank 0 merges. docs/eval.md has more.
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..errors import UserError
from ..evaluation.code_execution import (
    REASONS,
    CodeLimits,
    program_tests,
    read_test_fields,
    sandbox_description,
    score_code,
    source_line,
)
from ..evaluation.generation import (
    ChoiceGenerator,
    GenerationSettings,
    HFGenerator,
    VllmGenerator,
    embeddings,
    length_batches,
    prompt_ids,
    single_message_ids,
    vllm_usable,
    write_json,
)
from ..evaluation.scorers import (
    SCORERS,
    ScoreConfig,
    clean_prediction,
    gsm8k_answer,
    is_correct,
    last_number,
    scorer_for,
    spider_db_file,
    spider_db_id,
    startswith_correct,
)
from ..views.encoding import ViewConfig
from ..views.examples import Example, load_examples

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
RUN_CONFIG = "run.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmjepa-eval", description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--input_file",
        help="JSONL in the messages format; the answer is the reference (default: the bundled demo sums, "
        "the held-out half of what llmjepa-train trains on by default)",
    )
    p.add_argument("--output_dir", help="default: a new folder runs/eval-<date>-<time> (runs/ is git-ignored)")
    src = p.add_argument_group("what to score (one of)")
    src.add_argument(
        "--model_name", help="a local checkpoint, a LoRA adapter folder, a merged model, or llmjepa/tiny-llama"
    )
    src.add_argument("--predictions_file", help='JSONL with "prediction", one a line, in the order of --input_file')
    sc = p.add_argument_group("scoring (upstream evaluate.py)")
    sc.add_argument("--dataset", choices=SCORERS, help="scorer; default: from the input file's base name")
    sc.add_argument("--numeric", action="store_true", help="gsm8k: also accept equal numbers (1,000 == 1000.0)")
    sc.add_argument("--startswith", action="store_true", help="also report the prefix-match rate (untemplated models)")
    sc.add_argument("--spider_path", help="spider databases: <spider_path>/<db_id>/<db_id>.sqlite")
    sc.add_argument("--spider_timeout", type=float, default=30.0, help="seconds a query may run before it is wrong")
    sc.add_argument("--max_examples", type=int, default=0, help="the first N examples (0: all)")
    sc.add_argument(
        "--allow_code_execution",
        action="store_true",
        help="--dataset code: run the generated programs (in a limited process; docs/eval.md says what that "
        "guards against and what not; off by default)",
    )
    sc.add_argument("--code_timeout", type=float, default=5.0, help="--dataset code: wall seconds per program")
    sc.add_argument("--code_memory_mb", type=int, default=1024, help="--dataset code: address space per program")
    gen = p.add_argument_group("generation")
    gen.add_argument("--batch_size", type=int, default=16)
    gen.add_argument("--max_new_tokens", type=int, default=128)
    gen.add_argument("--max_length", type=int, default=512, help="longer prompts keep their last tokens (warned)")
    gen.add_argument("--do_sample", action="store_true", help="sample (default greedy)")
    gen.add_argument("--temperature", type=float, default=0.0, help="> 0 samples at this temperature")
    gen.add_argument("--top_p", type=float, default=1.0)
    gen.add_argument("--top_k", type=int, default=0, help="0: off")
    gen.add_argument("--repetition_penalty", type=float, default=1.0)
    gen.add_argument("--num_beams", type=int, default=1)
    gen.add_argument("--seed", type=int, default=42, help="sampling seed, and the embedded default's weights")
    gen.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto", help="auto: vLLM when usable")
    gen.add_argument("--plain", action="store_true", help="upstream --plain prompts: user <|perception|>")
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    gen.add_argument("--adapter_base", help="base model of a LoRA adapter whose adapter_config names none")
    gen.add_argument("--no_progress", action="store_true", help="no progress bar")
    cmp = p.add_argument_group("comparison and diagnostics")
    cmp.add_argument("--base_model", help="also evaluate this model on the same examples and compare")
    cmp.add_argument("--similarity", action="store_true", help="cosine of user and answer embeddings (upstream)")
    cmp.add_argument("--embedding_layer", type=int, default=-1)
    cmp.add_argument("--embedding_pooling", choices=["last", "mean", "cls"], default="last")
    p.add_argument("--overwrite", action="store_true", help="start afresh rather than resume")
    return p


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    if bool(args.model_name) == bool(args.predictions_file):
        raise UserError("give --model_name (generate) or --predictions_file (score given predictions), one of them")
    if args.predictions_file and (args.base_model or args.similarity):
        raise UserError("--base_model and --similarity need a model: use --model_name, not --predictions_file")
    if args.dataset == "code" and not args.allow_code_execution:
        raise UserError("--dataset code runs the generated programs: add --allow_code_execution to allow it")
    if not (math.isfinite(args.code_timeout) and args.code_timeout > 0) or args.code_memory_mb < 64:
        raise UserError("--code_timeout must be a finite number > 0 and --code_memory_mb >= 64")
    for name in ("temperature", "top_p", "repetition_penalty", "spider_timeout"):
        if not math.isfinite(getattr(args, name)):
            raise UserError(f"--{name} must be a finite number (got {getattr(args, name)})")
    for name in ("batch_size", "max_new_tokens", "max_length", "num_beams"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if args.max_examples < 0 or args.top_k < 0 or args.temperature < 0 or args.spider_timeout <= 0:
        raise UserError("--max_examples, --top_k, --temperature must be >= 0 and --spider_timeout > 0")
    if not 0 < args.top_p <= 1 or args.repetition_penalty <= 0:
        raise UserError("--top_p must be in (0, 1] and --repetition_penalty > 0")
    sampling = args.do_sample or args.temperature > 0
    if not sampling and (args.top_p < 1 or args.top_k > 0):
        raise UserError("--top_p and --top_k shape sampling: add --do_sample or --temperature > 0")
    from .train import check_model_name  # llmjepa-train's check: a missing local path fails in a second

    for flag in ("model_name", "base_model", "adapter_base"):
        if getattr(args, flag):
            try:
                check_model_name(getattr(args, flag))
            except UserError as e:
                raise UserError(str(e).replace("--model_name", f"--{flag}", 1)) from None
    if args.input_file is None:
        from ..default_model import demo_data_path

        args.input_file = str(demo_data_path("eval"))
    if args.output_dir is None:
        args.output_dir = time.strftime("runs/eval-%Y%m%d-%H%M%S")
    args.scorer = scorer_for(args.input_file, args.dataset)
    if args.scorer == "spider" and not (args.spider_path and os.path.isdir(args.spider_path)):
        raise UserError(f"--spider_path {args.spider_path}: spider scoring needs the databases' directory")
    if args.backend == "vllm" and args.model_name and not vllm_usable(args.model_name, settings_from(args)):
        raise UserError("--backend vllm needs vllm installed, CUDA, a checkpoint directory and --num_beams 1")
    return args


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    sampling = args.do_sample or args.temperature > 0
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        temperature=(args.temperature or 1.0) if sampling else 1.0,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        num_beams=args.num_beams,
        seed=args.seed,
    )


# ---- data and references --------------------------------------------------------------------
def load_input(args: argparse.Namespace) -> list[Example]:
    examples = load_examples(args.input_file, view_fields=False)  # hellaswag's Text/Code views train only
    if args.max_examples:
        examples = examples[: args.max_examples]
    check_references(examples, args)
    if args.scorer == "code":
        args.code_tests = code_tests(args.input_file, examples)
    return examples


def code_tests(path: str, examples: list[Example]) -> dict[str, str]:
    """Example.source -> the Python that tests its program ("test", "test_list"; code_execution.program_tests),
    every example checked before any generation."""
    fields = read_test_fields(path)
    tests = {}
    for ex in examples:
        test = program_tests(fields[source_line(ex.source)])
        if test is None:
            raise UserError(f'{ex.source}: code scoring needs a "test" string or a "test_list" of strings')
        tests[ex.source] = test
    return tests


def check_references(examples: list[Example], args: argparse.Namespace) -> None:
    """Refuse, before any generation, examples the scorer cannot score (naming file and line)."""
    for ex in examples:
        if args.scorer == "gsm8k" and gsm8k_answer(ex.assistant) is None:
            raise UserError(f"{ex.source}: gsm8k scoring needs the answer to end with a '\\n#### ' line")
        if args.scorer == "sums" and last_number(ex.assistant) is None:
            raise UserError(f"{ex.source}: sums scoring needs a number in the answer (the last one is compared)")
        if args.scorer == "spider":
            db_id = spider_db_id(ex.user)
            if db_id is None:
                raise UserError(f'{ex.source}: spider scoring needs "For db_id:[...]" in the user message')
            if not spider_db_file(args.spider_path, db_id).is_file():
                raise UserError(f"{ex.source}: no database {spider_db_file(args.spider_path, db_id)}")
        if args.scorer == "hellaswag" and ex.assistant not in ("A", "B", "C", "D"):
            raise UserError(f"{ex.source}: hellaswag answers are one of A, B, C, D, not {ex.assistant[:20]!r}")


def read_predictions(path: str, n: int, max_examples: int = 0) -> list[str]:
    """One JSON object a line with a string "prediction", one line per example (blank lines skipped):
    a file with more or fewer lines belongs to other examples, and is refused rather than cut."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line_no}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prediction"), str):
                raise UserError(f'{path}:{line_no}: expected an object with a string "prediction"')
            out.append(obj["prediction"])
    if max_examples and len(out) >= n:
        out = out[:n]  # --max_examples takes the first n of both
    if len(out) != n:
        raise UserError(f"{path}: {len(out)} predictions for {n} examples (one line per example, in order)")
    return out


# ---- records ----------------------------------------------------------------------------------
@dataclass
class Scoring:
    cfg: ScoreConfig
    startswith: bool
    code_tests: dict[str, str] | None = None  # --dataset code: Example.source -> its tests
    code_limits: CodeLimits = field(default_factory=CodeLimits)

    def record(self, index: int, example: Example, prompt: str, raw: str) -> dict:
        prediction = clean_prediction(raw)
        rec = {"index": index, "prompt": prompt, "prediction": prediction, "reference": example.assistant}
        if self.cfg.scorer == "code":
            result = score_code(prediction, self.code_tests[example.source], self.code_limits)
            rec.update(correct=result.passed, code_result=result.reason, code_detail=result.detail)
            rec["code_seconds"] = result.seconds
        else:
            try:
                rec["correct"] = is_correct(self.cfg, prediction, example.messages)
            except ValueError as e:
                raise UserError(f"{example.source}: {e}") from None
        if self.startswith:
            rec["startswith"] = startswith_correct(prediction, example.assistant)
        return rec


def scoring_for(args: argparse.Namespace) -> Scoring:
    cfg = ScoreConfig(args.scorer, args.numeric, args.spider_path, args.spider_timeout)
    limits = CodeLimits(timeout_s=args.code_timeout, memory_mb=args.code_memory_mb)
    return Scoring(cfg, args.startswith, getattr(args, "code_tests", None), limits)


def rank_file(out: Path, rank: int, world: int) -> Path:
    return out / (PREDICTIONS if world == 1 else f"predictions.rank{rank}.jsonl")


def load_done(out: Path, examples: list[Example]) -> dict[int, dict]:
    """Records already written (predictions.jsonl and any rank files); a line cut short is dropped."""
    done: dict[int, dict] = {}
    for path in sorted(out.glob("predictions*.jsonl")):
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rec = json.loads(line)
                index = rec["index"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # an interrupted write: the example is generated again
            if not (isinstance(index, int) and 0 <= index < len(examples)):
                raise UserError(f"{path}:{line_no}: index {index!r} is not an example of the input file")
            if rec.get("reference") != examples[index].assistant:
                raise UserError(
                    f"{path}:{line_no}: example {index} has another reference than the input file "
                    "(another input?): use --overwrite or a fresh --output_dir"
                )
            done[index] = rec
    return done


def drop_partial_lines(path: Path) -> None:
    """An interrupted write leaves a line cut short (and no newline): remove it before appending."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
            kept.append(line + "\n")
        except json.JSONDecodeError:
            pass
    path.write_text("".join(kept), encoding="utf-8")


def check_run_config(out: Path, config: dict, overwrite: bool, rank: int) -> None:
    """A resumed run must be the same run: same input, model and generation settings."""
    path = out / RUN_CONFIG
    if overwrite:
        if rank == 0:
            for old in [*out.glob("predictions*.jsonl"), out / SUMMARY, path]:
                old.unlink(missing_ok=True)
    elif path.is_file() and json.loads(path.read_text()) != config:
        raise UserError(f"{path}: {out} holds another run's predictions: use --overwrite or a fresh --output_dir")
    if rank == 0:
        write_json(path, config)


def merge(out: Path, examples: list[Example], world: int) -> list[dict]:
    """Rank 0: every record into predictions.jsonl, in index order; rank files removed."""
    done = load_done(out, examples)
    records = [done[i] for i in sorted(done)]
    tmp = out / (PREDICTIONS + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out / PREDICTIONS)
    for path in out.glob("predictions.rank*.jsonl"):
        path.unlink()
    return records


# ---- distributed (torchrun) ---------------------------------------------------------------------
def rank_and_world() -> tuple[int, int]:
    """This rank and the ranks, from torchrun's environment (before any process group)."""
    return distributed.launched_rank(), distributed.launched_world_size()


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not distributed.initialized():
            dist.init_process_group("gloo")
        distributed.barrier()


def all_ranks_sum(values: list[float], world: int) -> list[float]:
    return values if world == 1 else distributed.all_reduce_sums(values)


def device_for(rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count()))))
    return torch.device("cpu")


# ---- one model on one input ---------------------------------------------------------------------
@dataclass
class Outcome:
    records: list[dict]
    seconds: float
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    truncated_prompts: int = 0
    backend: str = "predictions_file"
    extra: dict = field(default_factory=dict)


def load_for_eval(name: str, args: argparse.Namespace, device: torch.device) -> tuple:
    from ..evaluation.loading import load_eval_model

    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return load_eval_model(name, dtype=dtype, seed=args.seed, adapter_base=args.adapter_base, device=device)


def view_config_for(name: str, model: torch.nn.Module | None, args: argparse.Namespace) -> ViewConfig:
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    gemma = "gemma" in name.lower() or model_type.startswith("gemma")  # run.py's rule, plus the config's type
    return ViewConfig(plain=args.plain, merge_system=gemma, max_length=args.max_length)


def evaluate_model(name: str, examples: list[Example], args: argparse.Namespace, out: Path) -> Outcome:
    rank, world = rank_and_world()
    start = time.perf_counter()
    device = device_for(rank)
    settings = settings_from(args)
    config = {"input_file": os.path.abspath(args.input_file), "n": len(examples), "model": name}
    config.update(scorer=args.scorer, plain=args.plain, max_length=args.max_length, generation=settings.as_dict())
    if args.scorer == "code":  # records scored under other limits are not this run's
        config["code_limits"] = {"timeout_s": args.code_timeout, "memory_mb": args.code_memory_mb}
    out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        barrier(world)  # rank 0 made the folder
    check_run_config(out, config, args.overwrite, rank)
    barrier(world)  # --overwrite's removal done before anyone reads
    done = load_done(out, examples)
    drop_partial_lines(rank_file(out, rank, world))
    pending = [i for i in range(len(examples)) if i not in done and i % world == rank]
    vllm = uses_vllm(name, settings, args, world)
    if vllm:  # vLLM loads the weights itself; the HF model is loaded only if --similarity needs it
        from ..model import load_tokenizer

        model, tokenizer = None, load_tokenizer(name)
    else:
        model, tokenizer = load_for_eval(name, args, device)
    torch.manual_seed(settings.seed)
    cfg = view_config_for(name, model, args)
    prompts = [prompt_ids(tokenizer, ex.messages, cfg) for ex in examples]
    truncated = sum(len(p) > args.max_length for p in prompts)
    prompts = [p[-args.max_length :] for p in prompts]
    generator = make_generator(name, model, tokenizer, settings, args, vllm)
    batch_size = max(args.batch_size, 1024) if vllm else args.batch_size  # vLLM schedules its own batches
    scoring = scoring_for(args)
    tokens, gen_seconds = 0, 0.0
    progress = progress_bar(len(pending), f"{os.path.basename(name.rstrip('/'))} rank {rank}", args, rank)
    with open(rank_file(out, rank, world), "a", encoding="utf-8") as f:
        for batch in length_batches(pending, [len(p) for p in prompts], batch_size):
            t0 = time.perf_counter()
            generated = generator.generate([prompts[i] for i in batch])
            gen_seconds += time.perf_counter() - t0
            for i, ids in zip(batch, generated):
                tokens += len(ids)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                prompt = tokenizer.decode(prompts[i])
                f.write(json.dumps(scoring.record(i, examples[i], prompt, text), ensure_ascii=False) + "\n")
            f.flush()
            progress.update(len(batch))
    progress.close()
    outcome = Outcome([], 0.0, tokens, gen_seconds, truncated, generator.name)
    del generator
    if args.similarity and rank == 0:
        if model is None:
            model, tokenizer = load_for_eval(name, args, device)
        outcome.extra["cosine"] = similarity_cosines(model, tokenizer, examples, cfg, args)
    del model
    tokens, gen_seconds = all_ranks_sum([tokens, gen_seconds], world)
    barrier(world)
    outcome.generated_tokens, outcome.generation_seconds = int(tokens), gen_seconds / world
    outcome.records = merge(out, examples, world) if rank == 0 else []
    barrier(world)
    outcome.seconds = time.perf_counter() - start
    return outcome


def uses_vllm(name: str, settings: GenerationSettings, args: argparse.Namespace, world: int) -> bool:
    """--backend vllm, or auto where vLLM is usable in one process (torchrun ranks use HF generate:
    vLLM under torchrun needs its own launch mode, untested here)."""
    if args.scorer == "hellaswag" or args.backend == "hf":
        return False
    if args.backend == "vllm":
        if world > 1:
            raise UserError("--backend vllm runs in one process: start llmjepa-eval without torchrun")
        return True
    return world == 1 and vllm_usable(name, settings)


def make_generator(name: str, model, tokenizer, settings: GenerationSettings, args: argparse.Namespace, vllm: bool):
    if args.scorer == "hellaswag":
        return ChoiceGenerator(model, tokenizer)
    if vllm:
        dtype = args.dtype if args.dtype != "auto" else "bfloat16"
        return VllmGenerator(name, tokenizer, settings, dtype)
    return HFGenerator(model, tokenizer, settings)


class NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, args: argparse.Namespace, rank: int):
    if args.no_progress or rank != 0:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", file=sys.stderr)


def evaluate_predictions(examples: list[Example], args: argparse.Namespace, out: Path) -> Outcome:
    start = time.perf_counter()
    predictions = read_predictions(args.predictions_file, len(examples), args.max_examples)
    scoring = scoring_for(args)
    records = [scoring.record(i, ex, ex.user, p) for i, (ex, p) in enumerate(zip(examples, predictions))]
    out.mkdir(parents=True, exist_ok=True)
    for stale in [out / RUN_CONFIG, *out.glob("predictions.rank*.jsonl")]:  # a model run's: not to be resumed
        stale.unlink(missing_ok=True)
    (out / PREDICTIONS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return Outcome(records, time.perf_counter() - start)


# ---- similarity (upstream's embedding diagnostic) ---------------------------------------------------
def similarity_cosines(model, tokenizer, examples: list[Example], cfg: ViewConfig, args: argparse.Namespace) -> list:
    """cos(user message embedding, answer embedding) per example, upstream's get_sequence_embedding."""
    users = [single_message_ids(tokenizer, ex.messages[ex.user_index], cfg)[-args.max_length :] for ex in examples]
    answers = [single_message_ids(tokenizer, ex.messages[-1], cfg)[-args.max_length :] for ex in examples]
    pad, layer, pooling = tokenizer.pad_token_id, args.embedding_layer, args.embedding_pooling
    u = embeddings(model, users, pad, layer, pooling, args.batch_size)
    a = embeddings(model, answers, pad, layer, pooling, args.batch_size)
    return torch.nn.functional.cosine_similarity(u, a, dim=-1).tolist()


def cosine_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    q = np.quantile(values, [0.1, 0.2, 0.5, 0.8, 0.9]).tolist()
    return {"n": len(values), "mean": float(np.mean(values)), "std": float(np.std(values)), "quantiles": q}


# ---- summary --------------------------------------------------------------------------------------
def summarize(outcome: Outcome, args: argparse.Namespace, model: str) -> dict:
    records = outcome.records
    n, correct = len(records), sum(r["correct"] for r in records)
    summary = {
        "dataset": os.path.basename(args.input_file),
        "scorer": args.scorer,
        "model": model,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "seconds": round(outcome.seconds, 3),
        "backend": outcome.backend,
    }
    if args.scorer == "code":
        summary["pass@1"] = summary["accuracy"]
        summary["code_results"] = {reason: sum(r["code_result"] == reason for r in records) for reason in REASONS}
        summary["code_limits"] = {"timeout_s": args.code_timeout, "memory_mb": args.code_memory_mb}
        summary["code_sandbox"] = sandbox_description()
    if args.startswith:
        summary["startswith_accuracy"] = sum(r["startswith"] for r in records) / n if n else 0.0
    if outcome.backend != "predictions_file":
        summary["generated_tokens"] = outcome.generated_tokens
        summary["generation_seconds"] = round(outcome.generation_seconds, 3)
        tps = outcome.generated_tokens / outcome.generation_seconds if outcome.generation_seconds else 0.0
        summary["tokens_per_second"] = round(tps, 1)
        summary["truncated_prompts"] = outcome.truncated_prompts
        summary["generation"] = settings_from(args).decoding()
    if "cosine" in outcome.extra:
        cos = outcome.extra["cosine"]
        by_index = {r["index"]: r["correct"] for r in records}
        summary["similarity"] = {
            "layer": args.embedding_layer,
            "pooling": args.embedding_pooling,
            "correct": cosine_stats([c for i, c in enumerate(cos) if by_index.get(i)]),
            "wrong": cosine_stats([c for i, c in enumerate(cos) if not by_index.get(i)]),
        }
    return summary


def compare(tuned: list[dict], base: list[dict]) -> dict:
    """Which examples the fine-tuning fixed (base wrong, tuned right) and broke (the reverse)."""
    base_ok = {r["index"]: r["correct"] for r in base}
    fixed = [r["index"] for r in tuned if r["correct"] and not base_ok[r["index"]]]
    broken = [r["index"] for r in tuned if not r["correct"] and base_ok[r["index"]]]
    return {"fixed": fixed, "broken": broken, "unchanged": len(tuned) - len(fixed) - len(broken)}


def table(rows: list[dict]) -> str:
    lines = ["| model | accuracy | correct | n | seconds | tokens/s |", "|---|---|---|---|---|---|"]
    for s in rows:
        tps = s.get("tokens_per_second", "-")
        lines.append(f"| {s['model']} | {s['accuracy']:.4f} | {s['correct']} | {s['n']} | {s['seconds']:.1f} | {tps} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    examples = load_input(args)
    out = Path(args.output_dir)
    rank, _ = rank_and_world()
    if args.predictions_file:
        outcome = evaluate_predictions(examples, args, out)
        model = args.predictions_file
    else:
        outcome = evaluate_model(args.model_name, examples, args, out)
        model = args.model_name
    base_outcome = evaluate_model(args.base_model, examples, args, out / "base") if args.base_model else None
    if rank != 0:
        return {}
    summary = summarize(outcome, args, model)
    rows = [summary]
    if base_outcome is not None:
        base_summary = summarize(base_outcome, args, args.base_model)
        write_json(out / "base" / SUMMARY, base_summary)
        summary["base"] = {k: base_summary[k] for k in ("model", "accuracy", "correct", "n")}
        summary["comparison"] = compare(outcome.records, base_outcome.records)
        rows.append(base_summary)
    write_json(out / SUMMARY, summary)
    print(f"llmjepa-eval: {summary['dataset']} ({summary['scorer']} scorer), {summary['n']} examples")
    print(table(rows))
    if "comparison" in summary:
        c = summary["comparison"]
        print(f"changed by fine-tuning: {len(c['fixed'])} fixed, {len(c['broken'])} broken, {c['unchanged']} unchanged")
    if "code_results" in summary:
        counts = ", ".join(f"{n} {reason}" for reason, n in summary["code_results"].items() if n)
        print(f"pass@1 {summary['pass@1']:.4f}: {counts} ({summary['code_sandbox']})")
    if "startswith_accuracy" in summary:
        print(f"startswith accuracy: {summary['startswith_accuracy']:.4f}")
    if "similarity" in summary:
        s = summary["similarity"]
        for k in ("correct", "wrong"):
            st = s[k]
            stats = f"n={st['n']} mean={st['mean']:.4f} std={st['std']:.4f}" if st["n"] else "n=0"
            print(f"cosine(user, answer) on {k} examples: {stats}")
    print(f"llmjepa-eval: wrote {out / PREDICTIONS} and {out / SUMMARY}")
    if not args.predictions_file and Path(args.model_name).is_dir():
        from ..training.model_card import add_eval_results

        card = add_eval_results(args.model_name, summary)
        if card is not None:
            print(f"llmjepa-eval: added the result to the model card {card}")
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        args = check_args(build_parser().parse_args(argv))
        run(args)
    except UserError as e:
        print(f"llmjepa-eval: error: {e}", file=sys.stderr)
        return 2
    from .train import exit_torchrun_worker

    exit_torchrun_worker()
    return 0


if __name__ == "__main__":
    sys.exit(main())
