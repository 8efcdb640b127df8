"""The special tokens llmjepa adds to a tokenizer, named in one place.

K predictor tokens `<|predictor_1|>` .. `<|predictor_K|>` (K <= MAX_PREDICTORS) mark where a JEPA
prediction is read; `--plain` (upstream's pretraining format) uses `<|perception|>` between user and
assistant text and `<|eot_id|>` after it.
"""

MAX_PREDICTORS = 10  # --predictors is checked against it (commands.train)
PERCEPTION = "<|perception|>"
EOT = "<|eot_id|>"


def predictor_token(k: int) -> str:
    """The k-th predictor token (1-based)."""
    return f"<|predictor_{k}|>"


def predictor_tokens(k: int) -> list[str]:
    """The first k predictor tokens, in order 1..k."""
    return [predictor_token(j) for j in range(1, k + 1)]


def predictor_string(k: int, front: bool) -> str:
    """K predictors as text after a view (<|predictor_K|>..<|predictor_1|>), or 1..K before it (--front_pred)."""
    order = range(1, k + 1) if front else range(k, 0, -1)
    return "".join(predictor_token(j) for j in order)


def view_tokens(predictors: int, plain: bool) -> list[str]:
    """The tokens a run's views use: its K predictors, and with --plain the perception and end-of-turn markers."""
    return predictor_tokens(predictors) + ([PERCEPTION, EOT] if plain else [])
