"""The Step-JEPA fork's extras and upstream finetune.py's remaining behaviours, each against a plain
computation of what the fork (Dzungthez/jepa-math train.py, jepa_trainer.py, data/gsm8k.py) or upstream
(galilai-group/llm-jepa finetune.py) does, written here or in tests/upstream_batches.py:

- --entropy_filter: the fork's triple batch (upstream_batches.multi_step), view 1's logits from its own
  causal pass, the fork's entropy (log Z - sum p * logits), its windows, its stable top-k, the mean of
  1 - cos over the kept pairs; in both executors.
- --view_based_jepa: the fork's spans (data/gsm8k.py compute_message_spans: the user end is the last
  token of [system, user] rendered; the answer's end is the last labelled token) and its N = 1 double
  batch, with predictors after the user end; in both executors.
- --unmask_user: the fork's labels (user content found by decoded tokens; answer + eos).
- --jepa_layer in view modes, hellaswag's text/code views, --plain --train_all, --same_flop's save
  interval, Qwen3's enable_thinking.
"""

import copy
import json
from functools import cache
from pathlib import Path

import pytest
import test_upstream_equivalence as tue  # tests/ is on sys.path under pytest's default import mode
import torch
import upstream_batches as up

from llmjepa import parity
from llmjepa.commands.run import train, training_arguments
from llmjepa.commands.train import parse_args
from llmjepa.default_model import sample_data_path
from llmjepa.errors import UserError
from llmjepa.execution.fast import run_fast
from llmjepa.execution.losses import jepa_pair_losses
from llmjepa.execution.readout import ViewReadout
from llmjepa.execution.reference import run_reference
from llmjepa.model import load_tokenizer
from llmjepa.views.builders import build_plan
from llmjepa.views.encoding import EncodeReport, ViewConfig, encode
from llmjepa.views.examples import load_examples
from llmjepa.views.plan import IGNORE_INDEX

REL = 1e-5
SEED = 0


@cache
def fast_model():
    from llmjepa_kernels import hf_attention

    hf_attention.register()
    fast = copy.deepcopy(tue.model())  # its own config: the attention set here is the copy's alone
    fast.set_attn_implementation(hf_attention.ATTENTION_NAME)
    return fast


def executors():
    """(name, executor, model): the reference path and the fast path (PyTorch attention on the CPU)."""
    return [
        ("reference", lambda m, p: run_reference(m, p, tue.tokenizer().pad_token_id), tue.with_attention("sdpa")),
        ("fast", lambda m, p: run_fast(m, p), fast_model()),
    ]


def encoded(cfg: ViewConfig) -> list:
    return [encode(e, i, tue.tokenizer(), cfg, EncodeReport()) for i, e in enumerate(tue.examples())]


def our_pairs(cfg: ViewConfig, executor, m, layer: int = -1) -> tuple:
    """(jepa loss as the trainer computes it: term sum / plan.n_pairs, per-pair cosines, lm loss)."""
    plan = build_plan(encoded(cfg), cfg, tue.predictor_ids(cfg.predictors))
    with torch.no_grad():
        out = ViewReadout(executor, layer)(m, plan)
        terms, cos = jepa_pair_losses(out.hidden[out.pred_index], out.hidden[out.target_index], "cosine")
    return terms.sum() / plan.n_pairs, cos, out.ce_sum / plan.label_tokens, plan


# ---- --entropy_filter -----------------------------------------------------------------------------
def fork_entropy(logits: torch.Tensor) -> torch.Tensor:
    """jepa_trainer._compute_token_entropy: log Z - sum(p * logits), per position."""
    logits = logits.double()
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def fork_select(entropy: list[float], boundaries: list[int], top_k: int, window: int, seq_len: int) -> list[int]:
    """jepa_trainer._select_high_entropy_steps: for each boundary but the last, the maximum entropy in
    [b - w, b + w] cut to [0, seq_len); steps by that maximum, descending, Python's stable sort; the
    first min(k, steps), back in order."""
    maxima = [max(entropy[max(0, b - window) : min(seq_len, b + window + 1)]) for b in boundaries[:-1]]
    ranked = sorted(range(len(maxima)), key=lambda i: maxima[i], reverse=True)
    return sorted(ranked[: min(top_k, len(maxima))])


def fork_entropy_loss(cfg: ViewConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fork's JEPA loss under --entropy_filter (triple batch), and the kept pairs' cosines."""
    samples = [tue.upstream_sample(e, cfg) for e in tue.examples()]
    theirs = tue.run_upstream(cfg)
    pad_id = tue.tokenizer().pad_token_id
    L = max(len(s.input_ids) for s in samples) + 3
    mask = up.empty_mask(len(samples), L)
    for i, s in enumerate(samples):
        up.causal_block(mask, i, 0, len(s.input_ids))
    with torch.no_grad():
        logits = up.forward(tue.with_attention("eager"), up.pad([s.input_ids for s in samples], pad_id, L), mask).logits
    entropy = fork_entropy(logits)
    kept, first = [], 0
    for i, (s, bounds) in enumerate(zip(samples, theirs.boundaries)):
        assert bounds[-2] + cfg.entropy_window < len(s.input_ids)  # no window reaches a pad token here
        chosen = fork_select(entropy[i].tolist(), bounds, cfg.entropy_top_k, cfg.entropy_window, L)
        kept += [first + k for k in chosen]
        first += len(bounds) - 1
    cos = up.cosine(theirs.pred[kept], theirs.target[kept])
    return (1 - cos).mean(), cos


ENTROPY = [
    dict(num_prediction_steps=3, predictors=1, entropy_top_k=1, entropy_window=2),
    dict(num_prediction_steps=3, predictors=2, entropy_top_k=2, entropy_window=1),
    dict(num_prediction_steps=2, predictors=1, entropy_top_k=1, entropy_window=0, last_token=-2),
    dict(num_prediction_steps=3, predictors=1, entropy_top_k=1, entropy_window=3, localized_masks=False),
]


@pytest.mark.parametrize("fields", ENTROPY, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
def test_entropy_filter_equals_fork(fields):
    cfg = ViewConfig(**fields)
    expected, expected_cos = fork_entropy_loss(cfg)
    for name, executor, m in executors():
        loss, cos, _, plan = our_pairs(cfg, executor, m)
        assert plan.n_pairs == len(expected_cos) < plan.entropy.n_real, name  # some pairs were dropped
        assert (cos - expected_cos).abs().max() < REL, (name, cos, expected_cos)
        assert abs(loss.item() - expected.item()) < REL * abs(expected.item()), (name, loss.item(), expected.item())


def test_entropy_filter_keeps_high_entropy_not_first_pairs():
    """The choice depends on the model: not simply each example's first k pairs."""
    cfg = ViewConfig(num_prediction_steps=3, predictors=1, entropy_top_k=1, entropy_window=2)
    _, cos, _, _ = our_pairs(cfg, *executors()[0][1:])
    first_only = ViewConfig(num_prediction_steps=3, predictors=1)
    _, all_cos, _, plan = our_pairs(first_only, *executors()[0][1:])
    firsts = [0] + [len(e.boundaries) - 1 for e in encoded(first_only)][:-1]
    firsts = torch.tensor(firsts).cumsum(0)
    assert not torch.allclose(cos, all_cos[firsts]), "every example kept its first pair"


# ---- --view_based_jepa and --unmask_user --------------------------------------------------------------
def fork_spans(ex) -> tuple[int, int]:
    """data/gsm8k.py: user end = last token of [system, user] rendered (the fork renders messages[:2],
    which holds the user only when a system message comes first; the prompt's messages here); answer end
    = the last token its labels train (answer + eos, found by decoded tokens)."""
    user_end = len(tue.template(ex.messages[:-1])) - 1
    ids = tue.template(ex.messages)
    labels = fork_labels(ids, ex.messages, unmask_user=False)
    return user_end, max(i for i, v in enumerate(labels) if v != up.IGNORE)


def fork_labels(ids: list[int], messages: list[dict], unmask_user: bool) -> list[int]:
    """data/gsm8k.py create_masked_labels: the first decoded-token match of the user content (with
    unmask_user) and of the answer + eos are trained."""
    t = tue.tokenizer()
    decoded = [t.decode([i]) for i in ids]
    labels = [up.IGNORE] * len(ids)
    wanted = ([messages[-2]["content"]] if unmask_user else []) + [messages[-1]["content"] + t.eos_token]
    for text in wanted:
        part = [t.decode([i]) for i in t.encode(text, add_special_tokens=False)]
        for s in range(len(ids) - len(part) + 1):
            if decoded[s : s + len(part)] == part:
                labels[s : s + len(part)] = ids[s : s + len(part)]
                break
    return labels


def fork_view_based(predictors: int, localized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """jepa_trainer._build_double_batch(_no_isolation) with view_based_jepa: K predictors after the user
    end; predictor = the last of them, target = the answer's end (shifted by K); localized: the target
    segment (user end + K, answer end + K] sees only itself."""
    t = tue.tokenizer()
    K = tue.predictor_ids(predictors)
    rows, reads = [], []
    for ex in tue.examples():
        u, a = fork_spans(ex)
        ids = tue.template(ex.messages)
        rows.append(ids[: u + 1] + K + ids[u + 1 :])
        reads.append((u, a))
    L = max(len(r) for r in rows) + 3
    mask = up.empty_mask(len(rows), L)
    k = len(K)
    for i, (row, (u, a)) in enumerate(zip(rows, reads)):
        if localized:
            up.causal_block(mask, i, 0, u + k + 1)
            up.causal_block(mask, i, u + k + 1, a + k + 1)
            up.causal_to_all(mask, i, a + k + 1, len(row))
        else:
            up.causal_block(mask, i, 0, len(row))
    with torch.no_grad():
        h = up.forward(tue.with_attention("eager"), up.pad(rows, t.pad_token_id, L), mask).hidden_states[-1]
    pred = torch.stack([h[i, u + k] for i, (u, _) in enumerate(reads)])
    target = torch.stack([h[i, a + k] for i, (_, a) in enumerate(reads)])
    return pred, target


@pytest.mark.parametrize("localized", [True, False])
@pytest.mark.parametrize("predictors", [1, 3])
def test_view_based_jepa_equals_fork(predictors: int, localized: bool):
    cfg = ViewConfig(num_prediction_steps=1, predictors=predictors, view_based_jepa=True, localized_masks=localized)
    for enc, ex in zip(encoded(cfg), tue.examples()):
        assert enc.boundaries == list(fork_spans(ex))
        assert tue.tokenizer().decode([enc.input_ids[enc.boundaries[0]]]) == "<|eot_id|>"
    pred, target = fork_view_based(predictors, localized)
    expected = 1 - up.cosine(pred, target)
    for name, executor, m in executors():
        loss, cos, _, plan = our_pairs(cfg, executor, m)
        assert plan.n_pairs == len(tue.examples())
        assert (1 - cos - expected).abs().max() < REL, name
        assert abs(loss.item() - expected.mean().item()) < REL * expected.mean().item(), name


def test_unmask_user_labels_equal_fork():
    t = tue.tokenizer()
    cfg = ViewConfig(num_prediction_steps=2, predictors=1, unmask_user=True)
    for enc, ex in zip(encoded(cfg), tue.examples()):
        assert enc.labels == fork_labels(enc.input_ids, ex.messages, unmask_user=True)
        trained = t.decode([v for v in enc.labels if v != IGNORE_INDEX])
        assert trained.startswith(ex.messages[-2]["content"]) and trained.endswith(t.eos_token)
    plain = encoded(ViewConfig(num_prediction_steps=2, predictors=1))
    for a, b in zip(plain, encoded(cfg)):  # only labels change: the boundaries and rows are the same
        assert a.boundaries == b.boundaries and a.input_ids == b.input_ids
        assert sum(v != IGNORE_INDEX for v in b.labels) > sum(v != IGNORE_INDEX for v in a.labels)


# ---- --jepa_layer in view modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1, -2])
def test_jepa_layer_view_based_equals_separate_passes(layer: int):
    """View-based pairs read hidden_states[layer] of Text and Code at len + last_token (upstream's rows,
    each run alone)."""
    cfg = ViewConfig(predictors=1)
    samples = [tue.upstream_sample(e, cfg) for e in tue.examples()]
    pad_id = tue.tokenizer().pad_token_id
    states = []
    for rows in ([s.text_ids for s in samples], [s.code_ids for s in samples]):
        L = max(len(r) for r in rows) + 2
        mask = up.empty_mask(len(rows), L)
        for i, r in enumerate(rows):
            up.causal_block(mask, i, 0, len(r))
        with torch.no_grad():
            h = up.forward(tue.with_attention("eager"), up.pad(rows, pad_id, L), mask).hidden_states[layer]
        states.append(torch.stack([h[i, len(r) - 1] for i, r in enumerate(rows)]))
    expected = 1 - up.cosine(*states)
    for name, executor, m in executors():
        _, cos, _, _ = our_pairs(cfg, executor, m, layer=layer)
        assert (1 - cos - expected).abs().max() < REL, (name, layer)
    _, last, _, _ = our_pairs(cfg, *executors()[0][1:])
    assert (last - cos).abs().max() > 1e-3  # another layer reads other states


# ---- upstream finetune.py: hellaswag views, --plain --train_all, Qwen3 templates -------------------------
def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def hellaswag_record(k: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Which ending is best? Answer A, B, C, or D."},
            {"role": "user", "content": f"Context {k}.\nA) one\nB) two\nC) three\nD) four"},
            {"role": "assistant", "content": "B"},
        ],
        "text": [{"role": "user", "content": f"Context {k}."}],
        "code": [{"role": "assistant", "content": f"two, the ending of context {k}"}],
    }


@pytest.mark.parametrize("front", [False, True])
def test_hellaswag_views_from_text_and_code_fields(tmp_path: Path, front: bool):
    records = [hellaswag_record(k) for k in range(3)]
    found = load_examples(write_jsonl(tmp_path / "hellaswag_train.jsonl", records))
    other = load_examples(write_jsonl(tmp_path / "gsm8k_train.jsonl", records))  # upstream: by file name only
    cfg = ViewConfig(predictors=2, front_pred=front)
    preds = "<|predictor_1|><|predictor_2|>" if front else "<|predictor_2|><|predictor_1|>"
    for r, ex, ex_other in zip(records, found, other):
        enc = encode(ex, 0, tue.tokenizer(), cfg, EncodeReport())
        content = r["text"][0]["content"]
        text = [{"role": "user", "content": preds + content if front else content + preds}]
        assert enc.text_ids == tue.template(text)
        assert enc.code_ids == tue.template(r["code"])  # as given: the assistant role kept
        enc_other = encode(ex_other, 0, tue.tokenizer(), cfg, EncodeReport())
        assert enc_other.code_ids == tue.template([r["messages"][-1]])


def test_hellaswag_file_without_views_is_refused(tmp_path: Path):
    record = hellaswag_record(0)
    del record["code"]
    with pytest.raises(UserError, match=r'hellaswag_x.jsonl:1: hellaswag file: expected a "code" list'):
        load_examples(write_jsonl(tmp_path / "hellaswag_x.jsonl", [record]))


def test_plain_train_all_is_user_text_and_eot():
    """finetune.py --plain --train_all: view 1 = messages[1]["content"] + "<|eot_id|>" with BOS, every
    token trained; the Text and Code views stay the plain user and answer contents."""
    t = tue.tokenizer()
    cfg = ViewConfig(plain=True, labels="all", predictors=1)
    for ex in tue.examples()[:4]:
        enc = encode(ex, 0, t, cfg, EncodeReport())
        assert enc.input_ids == t(ex.messages[1]["content"] + "<|eot_id|>")["input_ids"]
        assert enc.labels == enc.input_ids
        assert enc.code_ids == t(ex.messages[-1]["content"])["input_ids"]
    with pytest.raises(UserError, match="no answer"):
        ViewConfig(plain=True, labels="all", num_prediction_steps=1)


# A template with Qwen3's thinking switch (written for this test): the last answer opens with an empty
# think block, and the generation prompt holds that block only when enable_thinking is false.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_qwen3_template_without_thinking():
    t = load_tokenizer("llmjepa/tiny-llama")
    t.chat_template = THINKING_TEMPLATE
    ex = tue.examples()[0]
    enc = encode(ex, 0, t, ViewConfig(regular=True), EncodeReport())
    # the answer's labels start at its content, after the empty think block the prompt now holds
    trained = t.decode([v for v in enc.labels if v != IGNORE_INDEX])
    assert trained == ex.messages[-1]["content"] + "<|eot_id|>"
    assert "<think>" in t.decode(enc.input_ids[: enc.assistant_start])


# ---- training runs: both executors, and --same_flop's save interval --------------------------------------
BASE = ["--batch_size", "2", "--grad_accum", "2", "--max_length", "192", "--learning_rate", "1e-3"]
BASE += ["--dtype", "float32", "--logging_steps", "1", "--seed", str(SEED)]
RUNS = {
    "entropy": ["--num_prediction_steps", "3", "--predictors", "1", "--entropy_filter", "--entropy_top_k", "1"],
    "view_based": ["--view_based_jepa", "--predictors", "2", "--unmask_user"],
    "layer": ["--predictors", "1", "--jepa_layer", "1"],
    "layer, steps": ["--num_prediction_steps", "2", "--predictors", "1", "--jepa_layer", "-2"],
}


def history(out: Path, impl: str, flags: list[str]) -> list[dict]:
    argv = [*BASE, *flags, "--impl", impl, "--max_train_steps", "3", "--output_dir", str(out)]
    return train(parse_args(argv)).history


@pytest.mark.parametrize("run", list(RUNS))
def test_fast_equals_reference_in_training(tmp_path: Path, run: str):
    fast = history(tmp_path / "fast", "fast", RUNS[run])
    reference = history(tmp_path / "reference", "reference", RUNS[run])
    for x, y in zip(fast, reference, strict=True):
        assert x["pairs"] == y["pairs"] > 0
        for key in ("loss", "lm_loss", "jepa_loss", "grad_norm"):
            assert parity.rel_diff(x[key], y[key]) < 1e-4, (run, x["step"], key, x[key], y[key])
    if run == "entropy":
        assert all(r["pairs"] == 4 for r in fast)  # one pair per example, 4 examples a step


@pytest.mark.parametrize(
    "flags, factor",
    [([], 3), (["--additive_mask"], 2), (["--jepa_ratio", "0.5"], 1.5), (["--regular"], 1)],
)
def test_same_flop_divides_the_save_interval(flags: list[str], factor: float):
    base = ["--batch_size", "2", "--grad_accum", "2", *flags]
    n_train = 100  # 25 steps an epoch
    upstream = int(25 / factor) if factor == 1.5 else 25 // int(factor)  # finetune.py's roundings
    assert training_arguments(parse_args(["--same_flop", *base]), n_train, False, False).save_steps == upstream
    assert training_arguments(parse_args(base), n_train, False, False).save_steps == 25


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--entropy_filter", "--num_prediction_steps", "1"], "needs --num_prediction_steps >= 2"),
        (["--entropy_top_k", "3", "--num_prediction_steps", "2"], "apply to --entropy_filter"),
        (["--entropy_filter", "--num_prediction_steps", "2", "--entropy_top_k", "0"], "--entropy_top_k must be"),
        (["--view_based_jepa", "--num_prediction_steps", "2"], "contradicts --num_prediction_steps > 1"),
        (["--unmask_user", "--train_all"], "--unmask_user"),
        (["--regular", "--entropy_filter"], "--regular"),
        (["--regular", "--jepa_layer", "1"], "--jepa_layer"),
    ],
)
def test_bad_flags(tmp_path: Path, flags: list[str], message: str):
    with pytest.raises(UserError, match=message):
        parse_args([*flags, "--output_dir", str(tmp_path / "out")])


def test_jepa_layer_out_of_range(tmp_path: Path):
    with pytest.raises(UserError, match="--jepa_layer 99"):
        history(tmp_path, "reference", ["--predictors", "1", "--jepa_layer", "99"])


def test_sample_has_what_the_tests_need():
    """The bundled sample's first examples have a system message (the fork's spans need one) and at
    least three steps (the entropy filter has a choice)."""
    for ex in load_examples(sample_data_path("train"))[:4]:
        assert ex.messages[0]["role"] == "system" and ex.assistant.count("\n\n") >= 2


def test_track_flop_profiles_the_first_steps(tmp_path: Path, capsys: pytest.CaptureFixture):
    """--track_flop: the profiler's count of each of the first steps, in its record and metrics.jsonl. The
    reference path computes logits everywhere: forward and backward of every linear layer over the padded
    tokens is 6 * (linear weights) * tokens_run, and the profiler finds that plus attention (under 5%)."""
    argv = [*BASE, "--predictors", "1", "--impl", "reference", "--max_train_steps", "2", "--track_flop"]
    trainer = train(parse_args([*argv, "--output_dir", str(tmp_path)]))
    linear = sum(m.weight.numel() for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    for record in trainer.history:
        ratio = record["profiled_flops"] / (6 * linear * record["tokens_run"])
        assert 1.0 <= ratio < 1.05, ratio
    written = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["profiled_flops"] for r in written] == [r["profiled_flops"] for r in trainer.history]
    assert f"Step 2: FLOPs: {trainer.history[1]['profiled_flops']:,}" in capsys.readouterr().out


def test_track_flop_stops_profiling_after_its_steps(tmp_path: Path):
    from llmjepa import profiled_flops

    argv = [*BASE, "--predictors", "1", "--impl", "reference", "--max_train_steps", "3", "--track_flop"]
    original = profiled_flops.PROFILED_STEPS
    profiled_flops.add_profiled_flops.__defaults__ = (2,)
    try:
        history = train(parse_args([*argv, "--output_dir", str(tmp_path)])).history
    finally:
        profiled_flops.add_profiled_flops.__defaults__ = (original,)
    assert ["profiled_flops" in r for r in history] == [True, True, False]


@pytest.mark.interpreter
def test_entropy_filter_adds_no_host_device_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """test_sync_free's counter over fast-path microbatches with --entropy_filter (as on CUDA: the Triton
    attention interpreted, the fused pair loss): choosing the pairs reads nothing back to the host."""
    import os
    from functools import partial

    import test_sync_free as sf

    from llmjepa.commands.run import build_run, view_config
    from llmjepa.execution.readout import readout_for

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("counts the CUDA path on the CPU: needs TRITON_INTERPRET=1")
    argv = ["--batch_size", "2", "--grad_accum", "2", "--dtype", "float32", "--impl", "fast", "--lbd", "0.5"]
    argv += ["--predictors", "1", "--num_prediction_steps", "3", "--entropy_filter", "--entropy_top_k", "1"]
    argv += ["--jepa_layer", "-2", "--max_train_steps", "1", "--max_length", "160", "--output_dir", str(tmp_path)]
    args = parse_args(argv)
    trainer = build_run(args).trainer
    assert trainer.loss_config.fused_pair_loss
    trainer.executor = readout_for(partial(run_fast, attention="triton"), view_config(args))
    trainer.__class__ = sf.CountedTrainer
    with sf.counting(monkeypatch) as counter:
        counter.mark([*trainer.model.parameters(), *trainer.model.buffers()])
        trainer.counter = counter
        trainer.train()
    microbatch = [f"{s.kind}: {s.op} at {s.site}" for s in counter.syncs if s.phase == "microbatch"]
    assert len(trainer.history) == 1 and trainer.history[0]["pairs"] == 4
    assert not microbatch, "\n".join(microbatch)
