"""Train llmjepa's embedded default tokenizer, offline, on the bundled sample data.

Writes llmjepa/assets/tokenizer.json (the `tokenizers` model, pre-tokenizer and special tokens)
and llmjepa/assets/tokenizer_config.json (bos/eos and the Llama-3-style chat template).

Byte-level BPE, so any text encodes without unknown tokens. The pre-tokenizer is Llama 3's
split pattern with two changes. Newlines are pieces of their own: "\\n\\n" (the step separator)
is always one token, never merged with the text around it as Llama 3 merges ".\\n\\n" or
" \\n\\n", and a lone "\\n" is one token too. Digits are single tokens, so any number costs one
token a digit and arithmetic is learnable by a tiny model.
Training is deterministic (the corpus is fed in file order; runs under other PYTHONHASHSEED and
RAYON_NUM_THREADS values give the same bytes); `--check` verifies the committed files.

    python scripts/make_default_tokenizer.py          # (re)write both files
    python scripts/make_default_tokenizer.py --check  # exit 1 if they differ from what it would write
"""

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

DATA_DIR = Path(__file__).resolve().parent.parent / "llmjepa" / "assets"
CORPUS_FILE = DATA_DIR / "arith_train.jsonl"
TOKENIZER_FILE = DATA_DIR / "tokenizer.json"
CONFIG_FILE = DATA_DIR / "tokenizer_config.json"
VOCAB_SIZE = 1024  # an upper bound: the sample data runs out of pairs to merge at 876 tokens

BOS = "<|begin_of_text|>"
EOS = "<|eot_id|>"  # end of a turn, as in Llama 3 Instruct: generation stops here
JEPA_TOKENS = [*[f"<|predictor_{k}|>" for k in range(1, 11)], "<|perception|>"]
# First in the vocabulary, so their ids (0..15) do not depend on training.
SPECIAL_TOKENS = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOS, *JEPA_TOKENS]
# Llama 3's pattern, changed as the module docstring says. Each alternative keeps newlines out
# of the pieces around them, so "\n\n" never merges with the text before or after it.
SPLIT_PIECES = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
    r"[^\r\n\p{L}\p{N}]?\p{L}+",  # a word, with the space or symbol before it
    r"\p{N}",  # one digit
    r" ?[^\s\p{L}\p{N}]+",  # punctuation, without trailing newlines
    r"\r?\n\r?\n",  # the step separator, alone
    r"\r?\n",
    r"[^\S\r\n]+(?!\S)",  # spaces before spaces or a newline
    r"[^\S\r\n]+",
    r"\r",
)
SPLIT_PATTERN = "|".join(SPLIT_PIECES)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def corpus() -> Iterator[str]:
    """The texts the chat template puts between special tokens, in file order."""
    with CORPUS_FILE.open(encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                yield message["role"]
                yield "\n\n" + message["content"]


def new_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Llama 3's post-processor: keep offsets untrimmed and put bos before a single text, so
    # `tokenizer(text)` behaves as it does on a Llama 3 checkpoint.
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))],
            ),
        ]
    )
    return tokenizer


def train() -> Tokenizer:
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def config() -> dict:
    """What transformers reads besides tokenizer.json; there is no pad token on purpose."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,  # what the post-processor does; transformers rebuilds it from this flag
        # Listed as a Llama 3 tokenizer lists them once llmjepa has added the ones it lacks.
        "extra_special_tokens": JEPA_TOKENS,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def outputs() -> dict[Path, bytes]:
    tokenizer_text = train().to_str(pretty=True) + "\n"
    config_text = json.dumps(config(), indent=2) + "\n"
    return {TOKENIZER_FILE: tokenizer_text.encode("utf-8"), CONFIG_FILE: config_text.encode("utf-8")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    files = outputs()
    if args.check:
        stale = [path for path, data in files.items() if not path.is_file() or path.read_bytes() != data]
        for path in stale:
            print(f"{path}: differs from what scripts/make_default_tokenizer.py generates; rerun it", file=sys.stderr)
        return 1 if stale else 0
    for path, data in files.items():
        path.write_bytes(data)
        print(f"wrote {path} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
