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
  pair and the entropy reads, `EntropyPlan`; `ViewReadout` chooses after the forward).
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..errors import UserError
from .examples import Example
from .plan import IGNORE_INDEX, NO_SHARED, ViewPlan, ViewRow, causal_row
from .stp import check_spans, find_content_spans, stp_plan


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

    def __post_init__(self) -> None:
        if self.isolated_predictors and not self.multi_step:
            raise UserError(ISOLATED_NEEDS_STEPS)
        if self.view_based_jepa and self.num_prediction_steps != 1:
            raise UserError("--view_based_jepa has one pair (user end -> answer end): --num_prediction_steps 1")
        if self.entropy_top_k and self.num_prediction_steps < 2:
            raise UserError("--entropy_filter chooses among step pairs: it needs --num_prediction_steps >= 2")
        if self.entropy_top_k < 0 or self.entropy_window < 0:
            raise UserError("--entropy_top_k must be >= 1 and --entropy_context_window >= 0")
        if self.plain and self.labels == "all" and (self.multi_step or self.stp is not None):
            raise UserError(
                "--plain --train_all trains on the user text alone: view 1 holds no answer to find steps in"
            )
        if self.unmask_user and self.labels != "assistant":
            raise UserError(f"--unmask_user adds the user content to the answer's labels; labels {self.labels!r}")

    @property
    def multi_step(self) -> bool:
        return self.num_prediction_steps > 0


# Why view-based mode (N = 0) refuses --isolated_predictors: its target, Code, is the answer alone, no
# prefix of view 1, so only the Text view could become a branch, and that branch would see what Text
# does not (the system prompt, view 1's template) and need the template's closing tokens after the
# predictors. It would change the method and still run a full Code view. docs/views.md says more.
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


@dataclass
class EncodeReport:
    examples: int = 0
    truncated: int = 0
    fewer_steps: int = 0  # multi-step: fewer separators than N (fewer pairs)
    fallback: int = 0  # multi-step: no separator at all (answer split at its middle)

    def lines(self, path: str, max_length: int, n_steps: int) -> list[str]:
        out = []
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


# ---- rendering and tokenization -----------------------------------------------------------
def predictor_string(k: int, front: bool) -> str:
    order = range(1, k + 1) if front else range(k, 0, -1)
    return "".join(f"<|predictor_{j}|>" for j in order)


def template_options(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Chat-template options: enable_thinking=False where the template reads it (Qwen3), so that the
    answer follows the empty think block of the generation prompt instead of holding it."""
    template = getattr(tokenizer, "chat_template", None)
    return {"enable_thinking": False} if isinstance(template, str) and "enable_thinking" in template else {}


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], cfg: ViewConfig, generation_prompt: bool) -> str:
    if cfg.plain:
        # upstream --plain: no template; user <|perception|> assistant <|eot_id|>
        text = "".join(
            m["content"] + ("<|perception|>" if m["role"] == "user" else "") for m in messages if m["role"] != "system"
        )
        return text if generation_prompt else text + "<|eot_id|>"
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **template_options(tokenizer)
    )


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str, cfg: ViewConfig) -> list[int]:
    # A template already holds BOS (upstream finetune.py adds a second one, a quirk we drop);
    # --plain text has no template, so the tokenizer adds it, as upstream.
    return tokenizer(text, add_special_tokens=cfg.plain)["input_ids"]


def end_of_turn_index(
    tokenizer: PreTrainedTokenizerBase, text: str, prompt_text: str, answer: str, cfg: ViewConfig
) -> int:
    """Index of the first token after the answer's content (its end-of-turn token).

    Templates such as Qwen's and Gemma's put text after it ("\n"); Step-JEPA ends the answer's
    span, and its labels, at the end-of-turn token."""
    enc = tokenizer(text, add_special_tokens=cfg.plain, return_offsets_mapping=True)
    n = len(enc["input_ids"])
    content = answer.strip()
    start = text.find(content, len(prompt_text))
    if not tokenizer.is_fast or start < 0:
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
    content = messages[-2]["content"].strip()
    start = prompt_text.rfind(content)
    if tokenizer.is_fast and start >= 0:
        found = first_token_after(tokenizer, full_text, start + len(content), cfg)
        if found is not None:
            return found
    return len(tokenize(tokenizer, render(tokenizer, messages[:-1], cfg, generation_prompt=False), cfg)) - 1


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
    if cfg.merge_system and messages[0]["role"] == "system":
        user = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        return [user, messages[2]]
    return messages


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


def encode(
    example: Example, index: int, tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig, report: EncodeReport
) -> Encoded:
    messages = view1_messages(example.messages, cfg)
    full_text = render(tokenizer, messages, cfg, generation_prompt=False)
    prompt_text = render(tokenizer, messages[:-1], cfg, generation_prompt=True)
    if pretraining(cfg):
        full_text, prompt_text = example.messages[-2]["content"] + "<|eot_id|>", ""
    full, prompt = tokenize(tokenizer, full_text, cfg), tokenize(tokenizer, prompt_text, cfg)
    if full[: len(prompt)] != prompt:
        raise UserError(
            f"{example.source}: the chat template does not render the prompt as a prefix of the "
            "conversation, so the answer's tokens cannot be located"
        )
    report.examples += 1
    enc = Encoded(index=index, source=example.source, input_ids=full, labels=[], assistant_start=len(prompt))
    enc.assistant_end = end_of_turn_index(tokenizer, full_text, prompt_text, messages[-1]["content"], cfg)
    if len(full) > cfg.max_length:
        enc.input_ids, enc.truncated = full[: cfg.max_length], True
        enc.assistant_end = min(enc.assistant_end, cfg.max_length - 1)
        report.truncated += 1
    if enc.assistant_start >= len(enc.input_ids) - 1:
        raise UserError(f"{example.source}: the prompt alone fills --max_length {cfg.max_length}; nothing to train")
    enc.labels = view1_labels(enc.input_ids, enc.assistant_start, enc.assistant_end, cfg, tokenizer.pad_token_id)
    if cfg.unmask_user:
        unmask_user_labels(tokenizer, enc, example.messages[-2]["content"])
    if cfg.regular:
        return enc
    if cfg.stp is not None:
        user, answer = example.messages[-2]["content"], example.messages[-1]["content"]
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
    user, assistant = example.messages[-2], example.messages[-1]
    if cfg.reverse_pred:
        user, assistant = assistant, user
    predictors = predictor_string(cfg.predictors, cfg.front_pred)
    if example.text_view is not None:  # hellaswag files carry the two views (upstream ignores --reverse_pred there)
        text = field_view_text(tokenizer, example.text_view, cfg, predictors)
        code = field_view_text(tokenizer, example.code_view, cfg, "")
    else:
        text = single_message_text(tokenizer, user, cfg, predictors)
        code = single_message_text(tokenizer, assistant, cfg, "")
    enc.text_ids = tokenize(tokenizer, text, cfg)[: cfg.max_length]
    enc.code_ids = tokenize(tokenizer, code, cfg)[: cfg.max_length]
    for name, ids in (("Text", enc.text_ids), ("Code", enc.code_ids)):
        if not 0 <= len(ids) + cfg.last_token < len(ids):
            raise UserError(
                f"{example.source}: --last_token {cfg.last_token} falls outside the {name} view ({len(ids)} tokens)"
            )
    return enc


def encode_all(examples: list[Example], tokenizer: PreTrainedTokenizerBase, cfg: ViewConfig) -> tuple:
    report = EncodeReport()
    encoded = [encode(e, i, tokenizer, cfg, report) for i, e in enumerate(examples)]
    return encoded, report


# ---- plans --------------------------------------------------------------------------------
VIEW1 = -1  # in the pairs an extra-rows function returns: this example's view 1, not one of its rows


def segment_row(example: int, view: str, ids: list[int], positions: list[int], starts: list[int]) -> ViewRow:
    """A row whose token i sees [starts[i], i] (causal within its segment)."""
    n = len(ids)
    return ViewRow(
        example,
        view,
        list(ids),
        list(positions),
        list(starts),
        [NO_SHARED[0]] * n,
        [NO_SHARED[1]] * n,
        [IGNORE_INDEX] * n,
    )


def common_causal_prefix(row: ViewRow, full: ViewRow) -> int:
    """Leading tokens a row shares with view 1: same id, same position, fully causal from 0."""
    n = 0
    for i in range(min(len(row), len(full))):
        same = row.input_ids[i] == full.input_ids[i] and row.position_ids[i] == full.position_ids[i]
        if not (same and row.causal_start[i] == 0 and row.shared_end[i] < row.shared_start[i]):
            break
        n += 1
    return n


def view_based_rows(enc: Encoded, b: int, cfg: ViewConfig) -> tuple[list[ViewRow], list[tuple[int, int]]]:
    """Rows after view 1 and the (row offset, token) of the predictor and the target."""
    i_text = len(enc.text_ids) + cfg.last_token
    i_code = len(enc.code_ids) + cfg.last_token
    if not cfg.additive_mask:
        return [causal_row(b, "text", enc.text_ids), causal_row(b, "code", enc.code_ids)], [(0, i_text), (1, i_code)]
    # upstream --additive_mask: Text[:i_text+1] | Code[:i_code+1] in one row, each block causal
    lu, la = i_text + 1, i_code + 1
    ids = enc.text_ids[:lu] + enc.code_ids[:la]
    code_positions = range(lu, lu + la) if cfg.additive_positions == "continue" else range(la)
    starts = [0] * lu + [lu] * la
    row = segment_row(b, "packed", ids, list(range(lu)) + list(code_positions), starts)
    return [row], [(0, i_text), (0, lu + i_code)]


def step_rows(enc: Encoded, b: int, cfg: ViewConfig, predictor_ids: list[int]) -> tuple:
    """Step-JEPA rows after view 1 and the (row offset, token) of every pair."""
    bounds, k = enc.boundaries, len(predictor_ids)
    n_pairs = len(bounds) - 1
    localized_row = cfg.localized_masks and cfg.num_prediction_steps > 1
    # the predictor row ends at the last token any pair reads
    last = bounds[-1] if not localized_row else bounds[n_pairs - 1]
    ids: list[int] = []
    for j, t in enumerate(enc.input_ids[: last + 1]):
        ids.append(t)
        if j in bounds[:n_pairs]:
            ids.extend(predictor_ids)
    starts = [0] * len(ids)
    if cfg.localized_masks and cfg.num_prediction_steps == 1:
        # upstream's N = 1 double batch: the target segment (b_0, b_1] sees only itself
        first = bounds[0] + k + 1
        starts[first:] = [first] * (len(ids) - first)
    pred_row = segment_row(b, "predictor", ids, list(range(len(ids))), starts)
    pred_at = [bounds[j] + (j + 1) * k for j in range(n_pairs)]
    if not localized_row:
        target_at = [bounds[j + 1] + (j + 1) * k for j in range(n_pairs)]
        return [pred_row], [((0, p), (0, t)) for p, t in zip(pred_at, target_at)]
    target_row = localized_target_row(enc, b)
    return [pred_row, target_row], [((0, p), (1, bounds[j + 1])) for j, p in enumerate(pred_at)]


def localized_target_row(enc: Encoded, b: int) -> ViewRow:
    """View 1 up to b_P in which segment 0 = [0, b_0] and segment j = (b_{j-1}, b_j] each see only
    themselves (positions as in view 1)."""
    bounds = enc.boundaries
    seg_starts = []
    start = 0
    for j in range(bounds[-1] + 1):
        seg_starts.append(start)
        if j in bounds:
            start = j + 1
    target_ids = enc.input_ids[: bounds[-1] + 1]
    return segment_row(b, "target", target_ids, list(range(len(target_ids))), seg_starts)


def isolated_step_rows(enc: Encoded, b: int, cfg: ViewConfig, predictor_ids: list[int]) -> tuple:
    """--isolated_predictors: one row per pair k, view 1 up to b_k then the K predictors (positions
    continuing after b_k), so each group sees view 1's prefix and itself and nothing sees it. The row
    repeats view 1's first b_k + 1 tokens, which build_plan records as its prefix_source: a packed
    executor runs only the K predictors. Targets: the localized target row, or view 1 itself
    (VIEW1) with --no_localized_masks. With K = 0 the predictor is view 1's own state at b_k."""
    bounds, k = enc.boundaries, len(predictor_ids)
    rows: list[ViewRow] = []
    pred_at = []
    for j in range(len(bounds) - 1):
        if not k:
            pred_at.append((VIEW1, bounds[j]))
            continue
        rows.append(causal_row(b, "predictor", enc.input_ids[: bounds[j] + 1] + list(predictor_ids)))
        pred_at.append((len(rows) - 1, bounds[j] + k))
    if cfg.localized_masks:
        rows.append(localized_target_row(enc, b))
        target_at = [(len(rows) - 1, t) for t in bounds[1:]]
    else:
        target_at = [(VIEW1, t) for t in bounds[1:]]
    return rows, list(zip(pred_at, target_at))


# ---- --entropy_filter (the fork): choose pairs by view 1's next-token entropy ----------------------
@dataclass
class EntropyChoice:
    """Which pairs --entropy_filter may keep. `plan.pairs[:n_real]` are the real pairs; each later entry is
    a probe, a view-1 token read as both predictor and target, so that every executor returns its hidden
    row's index. groups[b] = example b's real pairs; windows[j] = pair j's probes (indices into the probe
    block): the tokens within `window` of its predictor boundary in view 1."""

    top_k: int
    n_real: int
    groups: list[list[int]]
    windows: list[list[int]]
    indices: tuple | None = None  # host_indices(), made by the collator

    @property
    def n_selected(self) -> int:
        return sum(min(self.top_k, len(g)) for g in self.groups)

    def host_indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the pair of each probe; (example, its k-th pair) -> pair, -1 where none; pairs kept per
        example), host tensors built where the plan is (the collator), so the step only uploads them."""
        probe_pair = torch.tensor([j for j, w in enumerate(self.windows) for _ in w], dtype=torch.long)
        slot = torch.full((len(self.groups), max(len(g) for g in self.groups)), -1, dtype=torch.long)
        for b, g in enumerate(self.groups):
            slot[b, : len(g)] = torch.tensor(g, dtype=torch.long)
        keep_k = torch.tensor([min(self.top_k, len(g)) for g in self.groups], dtype=torch.long)
        return probe_pair, slot, keep_k


@dataclass
class EntropyPlan(ViewPlan):
    """A plan with probes; its JEPA terms are the chosen pairs alone, counted before the forward (the
    fork keeps min(top_k, pairs) per example), so the trainer's step totals hold."""

    entropy: EntropyChoice | None = None

    @property
    def n_pairs(self) -> int:
        return self.entropy.n_selected


def add_entropy_probes(plan: ViewPlan, batch: list[Encoded], cfg: ViewConfig, first_pair: list[int]) -> EntropyPlan:
    """The fork's windows: [b_k - w, b_k + w] around pair k's predictor boundary (b_k after the
    --last_token shift), cut to view 1's tokens (the fork cuts at the padded length; a pad token's
    entropy there is NaN)."""
    n_real = len(plan.pairs)
    groups, windows, probes = [], [], []
    for b, enc in enumerate(batch):
        n_pairs = len(enc.boundaries) - 1
        groups.append(list(range(first_pair[b], first_pair[b] + n_pairs)))
        for k in range(n_pairs):
            lo, hi = (
                max(0, enc.boundaries[k] - cfg.entropy_window),
                min(len(enc.input_ids), enc.boundaries[k] + cfg.entropy_window + 1),
            )
            windows.append(list(range(len(probes), len(probes) + hi - lo)))
            probes += [((b, t), (b, t)) for t in range(lo, hi)]
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    choice = EntropyChoice(cfg.entropy_top_k, n_real, groups, windows)
    choice.indices = choice.host_indices()
    out = EntropyPlan(**fields, entropy=choice)
    out.pairs = plan.pairs + probes
    return out


def next_token_entropy(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Entropy of the model's next-token distribution at each hidden row (final layer), float32, no grad:
    log Z - sum p * logits, the fork's formula."""
    from ..execution.fast import unwrap
    from ..execution.lm_head import head_transform

    base = unwrap(model)
    with torch.no_grad():
        logits = head_transform(base.config).apply(base.get_output_embeddings()(hidden)).float()
        return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def chosen_pairs(entropy: torch.Tensor, choice: EntropyChoice, indices: tuple | None = None) -> torch.Tensor:
    """Indices (into the real pairs, ascending) of each example's top_k pairs by the maximum entropy of
    their window, ties to the earlier pair (the fork's stable sort), on the device with no host sync: the
    host's index tensors go up through pinned memory without blocking, nothing is read back."""
    from llmjepa_kernels.block_layout import to_device

    device = entropy.device
    probe_pair, slot, keep_k = (to_device(t, device) for t in (indices or choice.host_indices()))
    n_groups, width = slot.shape
    per_pair = torch.full((choice.n_real,), -torch.inf, device=device).scatter_reduce(0, probe_pair, entropy, "amax")
    score = torch.where(slot >= 0, per_pair[slot.clamp(min=0)], -torch.inf)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=device).expand(n_groups, width))
    # empty slots write to a spare entry n_real (a scatter, not a boolean index, which would sync)
    at = torch.where(slot >= 0, slot, choice.n_real).flatten()
    kept = torch.zeros(choice.n_real + 1, dtype=torch.bool, device=device)
    kept = kept.scatter_(0, at, (rank < keep_k[:, None]).flatten())[: choice.n_real]
    return torch.sort(torch.argsort((~kept).to(torch.int8), stable=True)[: choice.n_selected]).values


class ViewReadout:
    """An executor that reads the pairs where the flags say: the hidden states of `layer` (--jepa_layer;
    -1 the last), and with an EntropyPlan only the pairs --entropy_filter keeps (their entropies from
    view 1's final hidden states, whichever layer the pairs read)."""

    def __init__(self, executor: Callable, layer: int = -1) -> None:
        self.executor = executor
        self.layer = layer
        self.func = getattr(executor, "func", executor)  # the path it wraps, for defaults.is_fast

    def __call__(self, model: nn.Module, plan: ViewPlan) -> Any:
        from ..execution.reference import Executed

        out = self.executor(model, plan)
        hidden, pred, target = out.hidden, out.pred_index, out.target_index
        if self.layer != -1:
            state = out.hidden_states[self.layer]
            hidden = state.reshape(-1, state.shape[-1])
        choice = getattr(plan, "entropy", None)
        if choice is not None:
            entropy = next_token_entropy(model, out.hidden[out.pred_index[choice.n_real :]])
            keep = chosen_pairs(entropy, choice, choice.indices)
            pred, target = pred[: choice.n_real][keep], target[: choice.n_real][keep]
        return Executed(out.ce_sum, hidden, pred, target, out.hidden_states)


def readout_for(executor: Callable, cfg: ViewConfig) -> Callable:
    """The executor the trainer should call for plans of `cfg`: wrapped in ViewReadout where --jepa_layer
    or --entropy_filter says what the pairs read (not STP, which reads its layer itself), else as it is.
    Wrapping twice is a no-op."""
    if isinstance(executor, ViewReadout) or cfg.stp is not None:
        return executor
    if cfg.entropy_top_k or cfg.jepa_layer != -1:
        return ViewReadout(executor, cfg.jepa_layer)
    return executor


def plan_row(r: int, example: int, offset: int) -> int:
    """A plan row index from an extra-rows function's: VIEW1 is the example's view 1 (row `example`)."""
    return example if r == VIEW1 else offset + r


def build_plan(batch: list[Encoded], cfg: ViewConfig, predictor_ids: list[int], with_views: bool = True) -> ViewPlan:
    """View 1 rows first (one per example), then each example's extra views and its pairs."""
    rows = [causal_row(b, "full", enc.input_ids, enc.labels) for b, enc in enumerate(batch)]
    plan = ViewPlan(rows=rows, n_examples=len(batch))
    if cfg.regular or not with_views:
        return plan
    if cfg.stp is not None:  # STP: view 1 alone; its terms read view 1's hidden rows
        plan.stp = stp_plan([enc.content_spans for enc in batch], cfg.stp, [enc.index for enc in batch])
        return plan
    first_pair = []
    for b, enc in enumerate(batch):
        offset = len(plan.rows)
        first_pair.append(len(plan.pairs))
        if cfg.multi_step and cfg.isolated_predictors:
            extra, pairs = isolated_step_rows(enc, b, cfg, predictor_ids)
        elif cfg.multi_step:
            extra, pairs = step_rows(enc, b, cfg, predictor_ids)
        else:
            extra, (p, t) = view_based_rows(enc, b, cfg)
            pairs = [(p, t)]
        for row in extra:
            n = common_causal_prefix(row, rows[b])
            row.prefix_source = (b, n) if n else None
        plan.rows.extend(extra)
        for (pr, pi), (tr, ti) in pairs:
            plan.pairs.append(((plan_row(pr, b, offset), pi), (plan_row(tr, b, offset), ti)))
    if cfg.entropy_top_k:
        return add_entropy_probes(plan, batch, cfg, first_pair)
    return plan
