"""From examples to view plans: tokenization once per example, then a ViewPlan per microbatch.

Modes (see docs/views.md for the pictures):
- regular: view 1 only.
- view-based LLM-JEPA (upstream finetune.py): view 1; "Text" = the user message alone through
  the chat template with K predictors appended (<|predictor_K|>..<|predictor_1|>, or prepended
  1..K with --front_pred); "Code" = the assistant message alone. Pair: Text at len+last_token,
  Code at len+last_token. --reverse_pred swaps the two messages; --additive_mask packs Text and
  Code into one row, block-diagonal causal.
- multi-step Step-JEPA (--num_prediction_steps N >= 1): boundaries b_0 < .. < b_P inside the
  assistant turn; the predictor row is view 1 with K predictors inserted after b_0..b_{P-1};
  pair k reads the last predictor after b_k and the target at b_{k+1}: from a row where each
  step segment sees only itself (localized, N > 1), from an isolated segment of the predictor
  row (localized, N = 1, as upstream's double batch), or from the predictor row itself
  (--no_localized_masks).
- --isolated_predictors (multi-step only; a variant, not upstream's): each group of K predictors is a
  side branch of view 1 after b_k, seen by no other token; targets come from the localized target
  row, or from view 1 itself with --no_localized_masks.
- the Step-JEPA fork's extras: --view_based_jepa (N = 1, boundaries = the end of the user turn and the
  end of the answer), --unmask_user (LM labels on the user content too), --entropy_filter (per example,
  the top-k pairs by view 1's next-token entropy around their predictor boundary: the plan carries every
  pair and the entropy reads, `EntropyPlan`; `execution.readout.ViewReadout` chooses after the forward).

This module tokenizes (ViewConfig, Encoded, encode_all); `builders.py` lays each mode's views out as rows
of a ViewPlan (build_plan).
"""

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..errors import UserError
from ..tokens import EOT, PERCEPTION, predictor_string
from .examples import Example
from .formats import assistant_turns, last_user_index
from .plan import IGNORE_INDEX
from .stp import check_spans, find_content_spans


@dataclass
class ViewConfig:
    regular: bool = False
    predictors: int = 0  # K
    last_token: int = -1
    num_prediction_steps: int = 0  # N; 0 = view-based LLM-JEPA
    localized_masks: bool = True
    isolated_predictors: bool = False  # predictor groups as side branches of view 1 (a variant)
    include_last_step_target: bool = True
    step_separator: str = "\n\n"
    additive_mask: bool = False
    additive_positions: str = "continue"  # upstream: Code continues Text's positions; "reset" restarts at 0
    front_pred: bool = False
    reverse_pred: bool = False
    plain: bool = False
    merge_system: bool = False  # Gemma: system folded into the user turn
    labels: str = "assistant"  # assistant | all | upstream
    max_length: int = 512
    stp: Any = None  # --linear: stp.StpConfig; the plan is view 1 alone, with STP's terms (llmjepa/stp.py)
    view_based_jepa: bool = False  # fork: N = 1 with boundaries [end of the user turn, end of the answer]
    unmask_user: bool = False  # fork: LM labels on the user content as well as the answer
    entropy_top_k: int = 0  # fork --entropy_filter: keep this many pairs per example (0: every pair)
    entropy_window: int = 2  # tokens each side of a boundary whose entropies count
    jepa_layer: int = -1  # hidden_states index the pairs read (-1: the last, after the final norm)
    drop_long_prompts: bool = True  # a prompt alone filling max_length: example dropped, counted (False: refused)
    label_turns: str = "all"  # multi-turn conversations: LM labels on every assistant turn, or "last" only
    jepa_turns: str = "last"  # view-based: the last exchange's Text -> Code pair, or "all": one per exchange

    def __post_init__(self) -> None:
        if self.isolated_predictors and not self.multi_step:
            raise UserError(ISOLATED_NEEDS_STEPS)
        if self.view_based_jepa and self.num_prediction_steps != 1:
            raise UserError("--view_based_jepa has one pair (user end -> answer end): --num_prediction_steps 1")
        if self.entropy_top_k and self.num_prediction_steps < 2:
            raise UserError(ENTROPY_NEEDS_STEPS)
        if self.entropy_top_k < 0 or self.entropy_window < 0:
            raise UserError(ENTROPY_NUMBERS)
        if self.plain and self.labels == "all" and (self.multi_step or self.stp is not None):
            raise UserError(
                "--plain --train_all trains on the user text alone: view 1 holds no answer to find steps in"
            )
        if self.unmask_user and self.labels != "assistant":
            raise UserError(f"--unmask_user adds the user content to the answer's labels; labels {self.labels!r}")
        if self.label_turns not in ("all", "last"):
            raise UserError(f"--label_turns {self.label_turns!r}: expected 'all' or 'last'")
        if self.jepa_turns not in ("all", "last"):
            raise UserError(f"--jepa_turns {self.jepa_turns!r}: expected 'all' or 'last'")
        if self.jepa_turns == "all" and (self.regular or self.multi_step or self.stp is not None):
            raise UserError(JEPA_TURNS_VIEW_BASED)

    @property
    def multi_step(self) -> bool:
        return self.num_prediction_steps > 0


# Why view-based mode (N = 0) refuses --isolated_predictors: its target, Code, is the answer alone, no
# prefix of view 1, so only the Text view could become a branch, and that branch would see what Text
# does not (the system prompt, view 1's template) and need the template's closing tokens after the
# predictors. It would change the method and still run a full Code view. docs/views.md says more.
ENTROPY_NEEDS_STEPS = "--entropy_filter chooses among step pairs: it needs --num_prediction_steps >= 2"
ENTROPY_NUMBERS = "--entropy_top_k must be >= 1 and --entropy_context_window >= 0"
JEPA_TURNS_VIEW_BASED = (
    "--jepa_turns all gives one Text -> Code pair per user -> assistant exchange: view-based LLM-JEPA only "
    "(not --regular, --num_prediction_steps or --linear)"
)
TEXT_NEEDS_REGULAR = (
    'a "text" row is plain language modeling: it has no user and assistant turns to make JEPA views of; '
    'train it with --regular, or give "messages" or "prompt"/"completion" rows (--formatting_func maps other columns)'
)
ISOLATED_NEEDS_STEPS = (
    "--isolated_predictors needs --num_prediction_steps >= 1: in view-based LLM-JEPA the target view "
    "(the answer alone) is no part of view 1, so predictors cannot branch off it"
)


@dataclass
class Encoded:
    """One example, tokenized once: view 1, its labels, and what the views need."""

    index: int
    source: str
    input_ids: list[int]
    labels: list[int]
    assistant_start: int
    assistant_end: int = -1  # the answer's end-of-turn token (inclusive); template text after it is not trained
    text_ids: list[int] = field(default_factory=list)  # view-based
    code_ids: list[int] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)  # multi-step
    truncated: bool = False
    fallback: bool = False  # multi-step: no separator in the answer
    content_spans: tuple = ()  # STP: (s_u, e_u, s_a, e_a), the user and assistant contents in view 1
    user_end: int = -1  # --view_based_jepa: the user turn's end-of-turn token (first token after its content)
    earlier_views: list = field(default_factory=list)  # --jepa_turns all: earlier exchanges' (text_ids, code_ids)


@dataclass
class EncodeReport:
    examples: int = 0
    truncated: int = 0
    fewer_steps: int = 0  # multi-step: fewer separators than N (fewer pairs)
    fallback: int = 0  # multi-step: no separator at all (answer split at its middle)
    dropped: int = 0  # the prompt alone fills max_length: nothing to train (drop_long_prompts)
    dropped_sources: list[str] = field(default_factory=list)  # "file:line" of the first few dropped

    def lines(self, path: str, max_length: int, n_steps: int) -> list[str]:
        out = []
        if self.dropped:
            shown = ", ".join(self.dropped_sources[:DROPPED_SHOWN]) + (", ..." if self.dropped > DROPPED_SHOWN else "")
            out.append(
                f"{path}: {self.dropped} of {self.examples + self.dropped} examples dropped: the prompt alone fills "
                f"--max_length {max_length} ({shown}; --drop_long_prompts false refuses them)"
            )
        if self.truncated:
            out.append(
                f"{path}: {self.truncated} of {self.examples} examples longer than --max_length {max_length}, truncated"
            )
        if self.fewer_steps:
            out.append(
                f"{path}: {self.fewer_steps} of {self.examples} examples have fewer than {n_steps} step "
                "separators and give fewer pairs"
            )
        if self.fallback:
            out.append(
                f"{path}: {self.fallback} of {self.examples} examples have no step separator; "
                "fallback: one pair, the answer cut at its middle"
            )
        return out


DROPPED_SHOWN = 3  # dropped examples named in the report's line


# ---- rendering and tokenization -----------------------------------------------------------
@lru_cache(maxsize=8)
def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the characters one token covers: the longest vocabulary entry (byte-level BPE
    spells each byte as one character, so an entry is never shorter than the text it stands for)."""
    return max((len(piece) for piece in tokenizer.get_vocab()), default=1)


CUT_MARGIN_TOKENS = 16  # tokens past max_length kept in a cut message: the word the cut splits lies beyond


def content_bound(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """Characters of a message that can reach the first max_length tokens; tokenization is local to a
    word, so cutting a message there leaves the first max_length tokens of any view as they were."""
    return (max_length + CUT_MARGIN_TOKENS) * longest_token_chars(tokenizer)


def cut_messages(messages: list[dict] | None, bound: int) -> list[dict] | None:
    if messages is None or all(len(m["content"]) <= bound for m in messages):
        return messages
    return [{**m, "content": m["content"][:bound]} for m in messages]


def bounded(example: Example, tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig) -> Example:
    """The example with every message cut to content_bound characters before tokenization: a 50 MB line
    costs what a max_length one does (the tokenizer's time and memory grow with the text's length)."""
    bound = content_bound(tokenizer, cfg.max_length)
    if example.text is not None:
        return example if len(example.text) <= bound else replace(example, text=example.text[:bound])
    cut = cut_messages(example.messages, bound)
    text, code = cut_messages(example.text_view, bound), cut_messages(example.code_view, bound)
    if cut is example.messages and text is example.text_view and code is example.code_view:
        return example
    return replace(example, messages=cut, text_view=text, code_view=code)


def template_options(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Chat-template options: enable_thinking=False where the template reads it (Qwen3), so that the
    answer follows the empty think block of the generation prompt instead of holding it."""
    template = getattr(tokenizer, "chat_template", None)
    return {"enable_thinking": False} if isinstance(template, str) and "enable_thinking" in template else {}


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], cfg: ViewConfig, generation_prompt: bool) -> str:
    if cfg.plain:
        # upstream --plain: no template; user <|perception|> assistant <|eot_id|>
        text = "".join(
            m["content"] + (PERCEPTION if m["role"] == "user" else "") for m in messages if m["role"] != "system"
        )
        return text if generation_prompt else text + EOT
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **template_options(tokenizer)
    )


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str, cfg: ViewConfig) -> list[int]:
    # A template already holds BOS (upstream finetune.py adds a second one, a quirk we drop);
    # --plain text has no template, so the tokenizer adds it, as upstream.
    return tokenizer(text, add_special_tokens=cfg.plain)["input_ids"]


def end_of_turn_index(
    tokenizer: PreTrainedTokenizerBase, text: str, prompt_text: str, answer: str, cfg: ViewConfig, enc: Any = None
) -> int:
    """Index of the first token after the answer's content (its end-of-turn token).

    Templates such as Qwen's and Gemma's put text after it ("\n"); Step-JEPA ends the answer's
    span, and its labels, at the end-of-turn token. enc: the text already tokenized with its offsets."""
    enc = enc if enc is not None else tokenizer(text, add_special_tokens=cfg.plain, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    content = answer.strip()
    start = text.find(content, len(prompt_text))
    if not tokenizer.is_fast or start < 0 or not content:  # empty: a turn of tool calls alone, rendered before it
        return n - 1
    content_end = start + len(content)
    after = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= content_end and b > a]
    return after[0] if after else n - 1


def first_token_after(tokenizer: PreTrainedTokenizerBase, text: str, end: int, cfg: ViewConfig) -> int | None:
    """Index of the first token of `text` that starts at or after character `end` (None if none)."""
    enc = tokenizer(text, add_special_tokens=cfg.plain, return_offsets_mapping=True)
    after = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a >= end and b > a]
    return after[0] if after else None


def user_end_index(
    tokenizer: PreTrainedTokenizerBase, full_text: str, prompt_text: str, messages: list[dict], cfg
) -> int:
    """--view_based_jepa's first boundary: the user turn's end-of-turn token, the first token after the
    user content (the fork's `len(user_only_ids) - 1`, the last token of [system, user] rendered: the
    same token for Llama-3; this form also finds Qwen's <|im_end|> rather than the "\n" after it)."""
    u = last_user_index(messages)
    content = messages[u]["content"].strip()
    start = prompt_text.rfind(content)
    if tokenizer.is_fast and start >= 0:
        found = first_token_after(tokenizer, full_text, start + len(content), cfg)
        if found is not None:
            return found
    return len(tokenize(tokenizer, render(tokenizer, messages[: u + 1], cfg, generation_prompt=False), cfg)) - 1


def decoded_match(tokenizer: PreTrainedTokenizerBase, ids: list[int], content: str) -> tuple[int, int] | None:
    """[start, end) of the first place where the content's own tokens appear in ids, compared token by
    token as decoded text (the fork's create_masked_labels), or None."""
    want = [tokenizer.decode([t]) for t in tokenizer.encode(content, add_special_tokens=False)]
    have = [tokenizer.decode([t]) for t in ids]
    n = len(want)
    for i in range(len(have) - n + 1):
        if have[i : i + n] == want:
            return i, i + n
    return None


def unmask_user_labels(tokenizer: PreTrainedTokenizerBase, enc: "Encoded", user: str) -> None:
    """--unmask_user (fork): the user content's tokens are trained too (not its template tokens)."""
    found = decoded_match(tokenizer, enc.input_ids, user)
    if found is None:
        raise UserError(
            f"{enc.source}: --unmask_user: the user content's tokens are not found in the conversation (cut by "
            "--max_length, or merged with template text by the tokenizer)"
        )
    for i in range(*found):
        enc.labels[i] = enc.input_ids[i]


def view1_messages(messages: list[dict], cfg: ViewConfig) -> list[dict]:
    """View 1's messages: the conversation, with the system message folded into the first user turn where the
    template has no system role (Gemma)."""
    if cfg.merge_system and messages[0]["role"] == "system" and messages[1]["role"] == "user":
        user = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        return [user, *messages[2:]]
    return messages


def earlier_turn_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    full: list[int],
    label_from: int,
    cfg: ViewConfig,
    source: str,
) -> list[tuple[int, int]]:
    """[start, end] (inclusive, end = its end-of-turn token) in view 1 of each assistant turn before the last
    that trains (index >= label_from): its conversation prefix rendered must be a prefix of the whole."""
    spans = []
    for j in assistant_turns(messages[:-1], label_from):
        prompt_text = render(tokenizer, messages[:j], cfg, generation_prompt=True)
        turn_text = render(tokenizer, messages[: j + 1], cfg, generation_prompt=False)
        turn = tokenize(tokenizer, turn_text, cfg)
        if full[: len(turn)] != turn:
            raise UserError(
                f"{source}: the chat template does not render assistant turn {j} as a prefix of the conversation, "
                "so its tokens cannot be located (--label_turns last trains the final turn only)"
            )
        start = len(tokenize(tokenizer, prompt_text, cfg))
        spans.append((start, end_of_turn_index(tokenizer, turn_text, prompt_text, messages[j]["content"], cfg)))
    return spans


def single_message_text(tokenizer: PreTrainedTokenizerBase, message: dict, cfg: ViewConfig, predictors: str) -> str:
    """Text or Code: one message alone through the chat template (--plain: its raw content)."""
    content = message["content"]
    if predictors:
        content = predictors + content if cfg.front_pred else content + predictors
    if cfg.plain:
        return content
    role = "user" if cfg.merge_system else message["role"]  # Gemma's template has no lone assistant turn
    return tokenizer.apply_chat_template(
        [{"role": role, "content": content}], tokenize=False, **template_options(tokenizer)
    )


def field_view_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], cfg: ViewConfig, predictors: str) -> str:
    """A hellaswag file's Text or Code view: its own messages through the template as they are (upstream:
    no role renamed), the predictors added to the first message's content (--plain: that content alone)."""
    messages = [dict(m) for m in messages]
    if predictors:
        first = messages[0]["content"]
        messages[0]["content"] = predictors + first if cfg.front_pred else first + predictors
    if cfg.plain:
        return messages[0]["content"]
    return tokenizer.apply_chat_template(messages, tokenize=False, **template_options(tokenizer))


def view1_labels(ids: list[int], start: int, end: int, cfg: ViewConfig, pad_token_id: int) -> list[int]:
    if cfg.labels == "all":
        return list(ids)
    if cfg.labels == "upstream":  # upstream's collator: every token but the pad id (pad = eos there)
        return [t if t != pad_token_id else IGNORE_INDEX for t in ids]
    return [t if start <= i <= end else IGNORE_INDEX for i, t in enumerate(ids)]


@lru_cache(maxsize=8)
def separator_token_ids(tokenizer: PreTrainedTokenizerBase, separator: str) -> frozenset[int]:
    """Ids whose text contains the separator (upstream ships such a list for Llama-3 alone)."""
    return frozenset(i for i in range(len(tokenizer)) if separator in tokenizer.decode([i]))


def step_boundaries(ids: list[int], a_start: int, a_end: int, sep_ids: frozenset[int], cfg: ViewConfig) -> tuple:
    """(boundaries, separators found). Step-JEPA: the first N separator tokens of the answer,
    then its last token, each shifted by last_token and clamped to [0, a_end]. With no
    separator: one pair, the (shifted) answer cut at its middle."""
    found = [i for i in range(a_start, a_end) if ids[i] in sep_ids][: cfg.num_prediction_steps]
    points = found + ([a_end] if cfg.include_last_step_target else [])
    shifted = sorted({min(max(p + cfg.last_token, 0), a_end) for p in points})
    if not found or len(shifted) < 2:
        end = min(max(a_end + cfg.last_token, a_start + 1), a_end)
        return [a_start + (end - a_start) // 2, end], 0
    return shifted, len(found)


def pretraining(cfg: ViewConfig) -> bool:
    """Upstream --plain --train_all: view 1 is the user text and <|eot_id|>, every token trained."""
    return cfg.plain and cfg.labels == "all"


def encode_text(example: Example, index: int, tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, report) -> Encoded:
    """A "text" row (language modeling, --regular only): the text with the tokenizer's special tokens and an
    end-of-sequence token, every token trained (as TRL's language-modeling format)."""
    if not cfg.regular:
        raise UserError(f"{example.source}: {TEXT_NEEDS_REGULAR}")
    ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    enc = Encoded(index=index, source=example.source, input_ids=ids[: cfg.max_length], labels=[], assistant_start=0)
    enc.truncated = len(ids) > cfg.max_length
    enc.assistant_end = len(enc.input_ids) - 1
    enc.labels = list(enc.input_ids)
    report.examples += 1
    report.truncated += enc.truncated
    return enc


def encode(
    example: Example, index: int, tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, report: EncodeReport
) -> Encoded | None:
    """One example tokenized; None where its prompt alone fills max_length and drop_long_prompts is on."""
    example = bounded(example, tokenizer, cfg)
    if example.text is not None:
        return encode_text(example, index, tokenizer, cfg, report)
    messages = view1_messages(example.messages, cfg)
    full_text = render(tokenizer, messages, cfg, generation_prompt=False)
    prompt_text = render(tokenizer, messages[:-1], cfg, generation_prompt=True)
    if pretraining(cfg):
        full_text, prompt_text = example.user + EOT, ""
    offsets = tokenizer.is_fast  # the full text tokenized once: its ids here, its offsets for the answer's end
    full_enc = tokenizer(full_text, add_special_tokens=cfg.plain, return_offsets_mapping=offsets)
    full, prompt = full_enc["input_ids"], tokenize(tokenizer, prompt_text, cfg)
    if full[: len(prompt)] != prompt:
        raise UserError(
            f"{example.source}: the chat template does not render the prompt as a prefix of the "
            "conversation, so the answer's tokens cannot be located"
        )
    if len(prompt) >= min(len(full), cfg.max_length) - 1:
        if not cfg.drop_long_prompts:
            raise UserError(f"{example.source}: the prompt alone fills --max_length {cfg.max_length}; nothing to train")
        report.dropped += 1
        report.dropped_sources.append(example.source)
        return None
    report.examples += 1
    enc = Encoded(index=index, source=example.source, input_ids=full, labels=[], assistant_start=len(prompt))
    answer = messages[-1]["content"]
    enc.assistant_end = end_of_turn_index(tokenizer, full_text, prompt_text, answer, cfg, full_enc if offsets else None)
    if len(full) > cfg.max_length:
        enc.input_ids, enc.truncated = full[: cfg.max_length], True
        enc.assistant_end = min(enc.assistant_end, cfg.max_length - 1)
        report.truncated += 1
    enc.labels = view1_labels(enc.input_ids, enc.assistant_start, enc.assistant_end, cfg, tokenizer.pad_token_id)
    if cfg.label_turns == "all" and cfg.labels == "assistant" and not cfg.plain:
        label_from = max(0, example.label_from - (len(example.messages) - len(messages)))  # merge_system: one fewer
        for start, end in earlier_turn_spans(tokenizer, messages, full, label_from, cfg, example.source):
            for i in range(start, min(end + 1, len(enc.input_ids))):
                enc.labels[i] = enc.input_ids[i]
    if cfg.unmask_user:
        unmask_user_labels(tokenizer, enc, example.user)
    if cfg.regular:
        return enc
    if cfg.stp is not None:
        user, answer = example.user, example.messages[-1]["content"]
        enc.content_spans = find_content_spans(tokenizer, enc.input_ids, user, answer, example.source)
        check_spans(enc.content_spans, cfg.stp, example.source)
        return enc
    if cfg.view_based_jepa:  # the fork's spans as they are: no --last_token shift
        enc.user_end = user_end_index(tokenizer, full_text, prompt_text, messages, cfg)
        if not enc.user_end < enc.assistant_end:
            raise UserError(f"{example.source}: --view_based_jepa: the user turn's end is not before the answer's end")
        enc.boundaries = [enc.user_end, enc.assistant_end]
        return enc
    if cfg.multi_step:
        sep_ids = separator_token_ids(tokenizer, cfg.step_separator)
        enc.boundaries, n_found = step_boundaries(enc.input_ids, enc.assistant_start, enc.assistant_end, sep_ids, cfg)
        enc.fallback = n_found == 0
        report.fallback += enc.fallback
        report.fewer_steps += 0 < n_found < cfg.num_prediction_steps
        return enc
    predictors = predictor_string(cfg.predictors, cfg.front_pred)
    if example.text_view is not None:  # hellaswag files carry the two views (upstream ignores --reverse_pred there)
        text = field_view_text(tokenizer, example.text_view, cfg, predictors)
        code = field_view_text(tokenizer, example.code_view, cfg, "")
        enc.text_ids, enc.code_ids = exchange_ids(tokenizer, text, code, cfg, example.source)
        return enc
    user, assistant = example.messages[example.user_index], example.messages[-1]
    enc.text_ids, enc.code_ids = exchange_view_ids(tokenizer, user, assistant, cfg, predictors, example.source)
    if cfg.jepa_turns == "all":
        for j in assistant_turns(example.messages[:-1], example.label_from):
            users = [i for i in range(j) if example.messages[i]["role"] == "user"]
            if users and example.messages[j]["content"].strip():
                pair = (example.messages[users[-1]], example.messages[j])
                enc.earlier_views.append(exchange_view_ids(tokenizer, *pair, cfg, predictors, example.source))
    return enc


def exchange_view_ids(
    tokenizer: PreTrainedTokenizerBase, user: dict, assistant: dict, cfg: ViewConfig, predictors: str, source: str
) -> tuple[list[int], list[int]]:
    """One exchange's Text (the user message with the predictors) and Code (the answer) token ids."""
    if cfg.reverse_pred:
        user, assistant = assistant, user
    text = single_message_text(tokenizer, user, cfg, predictors)
    code = single_message_text(tokenizer, assistant, cfg, "")
    return exchange_ids(tokenizer, text, code, cfg, source)


def exchange_ids(tokenizer: PreTrainedTokenizerBase, text: str, code: str, cfg: ViewConfig, source: str) -> tuple:
    text_ids = tokenize(tokenizer, text, cfg)[: cfg.max_length]
    code_ids = tokenize(tokenizer, code, cfg)[: cfg.max_length]
    for name, ids in (("Text", text_ids), ("Code", code_ids)):
        if not 0 <= len(ids) + cfg.last_token < len(ids):
            where = f"the {name} view ({len(ids)} tokens)"
            raise UserError(f"{source}: --last_token {cfg.last_token} falls outside {where}")
    return text_ids, code_ids


def encode_all(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig) -> tuple:
    """Every example tokenized once, with the report of what was truncated or dropped. Refuses a set
    whose every example was dropped (nothing to train)."""
    report = EncodeReport()
    encoded = [enc for i, e in enumerate(examples) if (enc := encode(e, i, tokenizer, cfg, report)) is not None]
    if examples and not encoded:
        raise UserError(
            f"{examples[0].source.rsplit(':', 1)[0]}: all {len(examples)} examples dropped: the prompt alone "
            f"fills --max_length {cfg.max_length}"
        )
    return encoded, report
