"""What the collator costs and ships per microbatch: the time to collate, pickled bytes, and the time to
pickle and unpickle them.

With data-loader workers, each microbatch the collator returns is pickled in a worker and unpickled in
the training process; the unpickling is the training process's cost. Measured here on real data
(gsm8k by default), the collator as llmjepa-train builds it for --impl fast:

    python bench/bench_collate.py --data_file /work/shared/datasets/gsm8k_test.jsonl \
        --num_prediction_steps 2 --predictors 1 --batch_size 4

Prints one Markdown table: for the whole output and for its parts (the stream, its layout), mean bytes
and mean microseconds to pickle and to unpickle, over --microbatches microbatches, each timed
--repeats times (best taken).
"""

import argparse
import pickle
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llmjepa.commands.run import encode_split, load_data, view_config  # noqa: E402
from llmjepa.commands.train import parse_args  # noqa: E402
from llmjepa.model import load_tokenizer  # noqa: E402
from llmjepa.views.collate import ViewCollator  # noqa: E402
from llmjepa.views.layout import AttentionShape  # noqa: E402


def best_us(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def measure(obj, repeats: int) -> tuple[int, float, float]:
    """(bytes, us to pickle, us to unpickle) of obj with the data loader's protocol (the default)."""
    data = pickle.dumps(obj)
    return len(data), best_us(lambda: pickle.dumps(obj), repeats), best_us(lambda: pickle.loads(data), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--microbatches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiles", choices=["none", "triton", "flex"], default="none", help="tile lists built")
    parser.add_argument("--keep_rows", action="store_true", help="ship the plan's rows too (as with --debug)")
    ours, rest = parser.parse_known_args()
    args = parse_args([*rest, "--impl", "fast", "--output_dir", "/tmp/bench_collate"])
    tokenizer = load_tokenizer(args.model_name)
    cfg = view_config(args)
    train_examples, _, source = load_data(args)
    encoded = encode_split(train_examples[: args.batch_size * ours.microbatches], tokenizer, cfg, source)
    k = max(args.predictors, 1)
    predictor_ids = tokenizer.convert_tokens_to_ids([f"<|predictor_{j}|>" for j in range(1, k + 1)])
    # also runs on a checkout from before PackedPlan (ac43b0a^: no backend, no keep_rows), for the before/after
    fields = AttentionShape.__dataclass_fields__
    backend = {"backend": ours.tiles} if "backend" in fields else {}
    shape = None if ours.tiles == "none" else AttentionShape(64, torch.float32, **backend)
    options = {"keep_rows": ours.keep_rows} if "keep_rows" in ViewCollator.__init__.__code__.co_varnames else {}
    collate = ViewCollator(cfg, predictor_ids, pack=True, attention=shape, **options)
    parts: dict[str, list[tuple[int, float, float]]] = {"whole output": [], "stream + layout": [], "layout": []}
    tokens, collate_us = [], []
    for b in range(len(encoded) // args.batch_size):
        batch = encoded[b * args.batch_size : (b + 1) * args.batch_size]
        out = collate(batch)
        collate_us.append(best_us(lambda batch=batch: collate(batch), ours.repeats))
        stream = out["plan"].packed
        tokens.append(stream.n_tokens)
        parts["whole output"].append(measure(out, ours.repeats))
        parts["stream + layout"].append(measure(stream, ours.repeats))
        parts["layout"].append(measure(stream.layout, ours.repeats))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{platform.processor() or platform.machine()}, {when}, {args.data_file}, N={args.num_prediction_steps}")
    print(f"K={args.predictors}, batch {args.batch_size}, {len(tokens)} microbatches, ")
    print(f"mean stream {statistics.mean(tokens):.0f} tokens, tiles {ours.tiles}, keep_rows {ours.keep_rows}\n")
    print(f"collation (plan, packing, layout): median {statistics.median(collate_us):.0f} us per microbatch\n")
    print("| part | bytes | pickle (us) | unpickle (us) |\n|---|---|---|---|")
    for name, rows in parts.items():
        size, dump, load = (statistics.mean(x[i] for x in rows) for i in range(3))
        print(f"| {name} | {size:.0f} | {dump:.0f} | {load:.0f} |")


if __name__ == "__main__":
    main()
