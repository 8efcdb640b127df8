"""encode_all on one example with a huge message: seconds and peak RSS (docs/faults.md, over-long examples).

    python bench/long_line.py 50000000 assistant jepa    # BYTES, the message (assistant|user), the mode (regular|jepa)

Run it in a fresh process per measurement (the peak RSS is the process's). With PYTHONPATH pointing at an
older llmjepa it measures that one (the "before" of docs/faults.md). Prints one JSON line.
"""

import json
import resource
import sys
import time

import llmjepa
from llmjepa.default_model import DEFAULT_MODEL_NAME
from llmjepa.model import load_tokenizer
from llmjepa.views.encoding import ViewConfig, encode_all
from llmjepa.views.examples import Example


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def main() -> None:
    size, where = int(sys.argv[1]), sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "regular"
    tokenizer = load_tokenizer(DEFAULT_MODEL_NAME)
    body = ("The answer is 42 because of arithmetic. " * (size // 40 + 1))[:size]
    messages = [{"role": "user", "content": "What is 6*7?"}, {"role": "assistant", "content": "It is 42."}]
    messages[0 if where == "user" else 1]["content"] = body
    cfg = ViewConfig(regular=mode == "regular", predictors=1 if mode == "jepa" else 0, max_length=512)
    before = peak_rss_mib()
    started = time.perf_counter()
    try:
        encoded, _ = encode_all([Example(messages=messages, source="big.jsonl:1")], tokenizer, cfg)
        result = f"{len(encoded)} encoded, {len(encoded[0].input_ids) if encoded else 0} tokens"
    except Exception as e:  # the refusal of a prompt over max_length (before --drop_long_prompts)
        result = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - started
    report = {"module": llmjepa.__file__, "bytes": size, "where": where, "mode": mode, "seconds": round(seconds, 3)}
    report.update(peak_rss_mib=peak_rss_mib(), rss_before_mib=before, result=result)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
