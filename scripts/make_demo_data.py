"""Generate llmjepa's demo data: one-digit addition word problems the embedded tiny Llama can learn.

Writes llmjepa/assets/sums_train.jsonl and llmjepa/assets/sums_eval.jsonl in the upstream "messages"
format. These are what `llmjepa-train` and `llmjepa-sweep` use by default, and what `llmjepa-eval`
scores with its `sums` scorer (the last number of the answer, compared as a number), so that the
whole loop (train, then evaluate, regular against JEPA) shows a result on a CPU in minutes.

Why this task: the embedded model has 204k parameters and trains for a few hundred CPU steps. The
bundled arithmetic sample (scripts/make_sample_data.py: multi-step word problems with three-digit
products) is out of its reach, so it scored 0 by construction. Here each answer has three steps
separated by a blank line ("\\n\\n", the step separator Step-JEPA splits on): two steps copy a
number from the question (learnable by attention alone) and the last adds two digits (a table of
100 sums) and ends in the final number. The words come from the sample data's vocabulary, so the
embedded tokenizer (trained on that data) spells them in few tokens; digits are one token each.

The eval questions are texts that do not occur in the training file; the sums they ask are from the
same table of 100 (the model is asked to apply what it learned to new sentences, not to new sums).
Every sum is recomputed before it is written.

    python scripts/make_demo_data.py          # (re)write both files
    python scripts/make_demo_data.py --check  # exit 1 if the files differ from what it would write
"""

import random
import re
import sys
from pathlib import Path

from make_sample_data import to_jsonl, write_or_check  # scripts/ is sys.path[0] when run as a script

DATA_DIR = Path(__file__).resolve().parent.parent / "llmjepa" / "assets"
TRAIN_FILE = DATA_DIR / "sums_train.jsonl"
EVAL_FILE = DATA_DIR / "sums_eval.jsonl"
N_TRAIN = 2048
N_EVAL = 64
SEED = 20261205
STEP_SEPARATOR = "\n\n"
SYSTEM_PROMPT = "Solve the math word problem step by step."
NAMES = ("Tom", "Mia", "Leo", "Sara", "Ben", "Anna", "Omar", "Lily", "Raj", "Emma", "Noah", "Zoe")
THINGS = ("apples", "oranges", "pears", "candies", "cookies", "stickers", "marbles", "cards", "pens", "tickets")
# (question, first step, second step): {a} and {b} are the two numbers, {name} and {thing} the words.
TEMPLATES = (
    (
        "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?",
        "{name} has {a} {thing}.",
        "{name} gets {b} more.",
    ),
    (
        "{name} buys {a} {thing} in the morning and {b} {thing} in the afternoon. How many {thing} does {name} buy?",
        "In the morning {name} buys {a} {thing}.",
        "In the afternoon {name} buys {b} {thing}.",
    ),
    (
        "A box has {a} {thing} and a bag has {b} {thing}. How many {thing} are there in all?",
        "The box has {a} {thing}.",
        "The bag has {b} {thing}.",
    ),
)
FINAL_NUMBER = re.compile(r"The answer is (\d+)\.$")


def make_example(rng: random.Random) -> dict:
    """One problem a + b with a, b in 0..9, its three-step answer ending in 'The answer is N.'."""
    question, first, second = rng.choice(TEMPLATES)
    words = {"name": rng.choice(NAMES), "thing": rng.choice(THINGS), "a": rng.randint(0, 9), "b": rng.randint(0, 9)}
    total = words["a"] + words["b"]
    steps = [first.format(**words), second.format(**words), f"{words['a']} + {words['b']} = {total}."]
    steps[-1] += f" The answer is {total}."
    answer = STEP_SEPARATOR.join(steps)
    match = FINAL_NUMBER.search(answer)
    assert match is not None and int(match.group(1)) == words["a"] + words["b"], answer
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question.format(**words)},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages}


def make_splits() -> tuple[list[dict], list[dict]]:
    """Eval first (N_EVAL distinct questions), then training examples whose question is none of them."""
    rng = random.Random(SEED)
    evaluation: dict[str, dict] = {}
    while len(evaluation) < N_EVAL:
        example = make_example(rng)
        evaluation.setdefault(example["messages"][1]["content"], example)
    train: list[dict] = []
    while len(train) < N_TRAIN:
        example = make_example(rng)
        if example["messages"][1]["content"] not in evaluation:
            train.append(example)
    return train, list(evaluation.values())


def main() -> int:
    train, evaluation = make_splits()
    return write_or_check({TRAIN_FILE: to_jsonl(train), EVAL_FILE: to_jsonl(evaluation)}, "scripts/make_demo_data.py")


if __name__ == "__main__":
    sys.exit(main())
