"""llmjepa-train's own flags as dataclasses, parsed by transformers.HfArgumentParser.

One dataclass per group (upstream finetune.py's data, model, training and LLM-JEPA flags; the Step-JEPA
fork's; llmjepa's; upstream stp.py's), each field with its help and aliases in its metadata. `flag_parser`
makes the HfArgumentParser over them; commands/hf_args.py adds every transformers.TrainingArguments field no
field here already is, and --config (YAML, read through the same parser's actions). HfArgumentParser gives
each switch an optional value (`--lora`, `--lora true`, `--lora false`) and each name its dashed spelling
(`--lora-rank`); the flags accepted before all parse as they did.

transformers.hf_argparser imports no torch: `llmjepa-train --help` stays under a second.
"""

import argparse
from dataclasses import dataclass, field
from typing import Any, Literal

from ..default_model import DEFAULT_MODEL_NAME
from ..views.stp import LENGTH_ADJUSTMENTS, STP_MODES


@dataclass
class DataArguments:
    """Upstream finetune.py's data flags (group 'data (upstream)')."""

    _argument_group_name = "data (upstream)"
    train_file: str | None = field(
        default=None, metadata={"help": "JSONL in the messages format (default: the bundled demo sums)"}
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "JSONL evaluated every --eval_steps (default: none; no evaluation)"}
    )
    data_file: str | None = field(
        default=None,
        metadata={"help": "one file split into train and eval by --eval_split (default: none; --train_file)"},
    )
    eval_split: float | None = field(default=None, metadata={"help": "fraction held out of --data_file (default 0.2)"})
    split_seed: int = field(default=42, metadata={"help": "seed of the --data_file split"})
    max_length: int = field(default=512, metadata={"help": "tokens per view; longer ones are truncated"})
    plain: bool = field(default=False, metadata={"help": "no chat template: user <|perception|> assistant <|eot_id|>"})
    train_all: bool = field(default=False, metadata={"help": "LM labels on every token, not only the answer"})


@dataclass
class ModelArguments:
    """Upstream finetune.py's model flags (group 'model (upstream)')."""

    _argument_group_name = "model (upstream)"
    model_name: str = field(
        default=DEFAULT_MODEL_NAME,
        metadata={
            "help": (
                f"a local Hugging Face checkpoint, a Hub id, or {DEFAULT_MODEL_NAME} "
                "(embedded, no download; the default)"
            )
        },
    )
    lora: bool = field(
        default=False, metadata={"help": "train LoRA adapters (r, alpha 2r, dropout 0.1) instead of all weights"}
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA's rank r"})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": (
                "modules LoRA adapts: 'all-linear' or names joined by commas (default: upstream's q,k,v,o,gate,up,down)"
            )
        },
    )
    lora_freeze_new_tokens: bool = field(
        default=False,
        metadata={
            "help": (
                "keep the embedding rows of llmjepa's tokens (predictors, added chat markers) frozen "
                "under --lora, as upstream does (default: they train, through peft's "
                "trainable_token_indices)"
            )
        },
    )
    merge_lora: bool = field(default=False, metadata={"help": "save the final model with the adapters merged"})
    pretrain: bool = field(default=False, metadata={"help": "random init from the checkpoint's config"})


@dataclass
class UpstreamTrainingArguments:
    """Upstream finetune.py's training flags (group 'training (upstream)')."""

    _argument_group_name = "training (upstream)"
    output_dir: str | None = field(default=None, metadata={"help": "default: a new folder runs/<date>-<time>-<mode>"})
    batch_size: int = field(default=4, metadata={"help": "examples per microbatch and device"})
    grad_accum: int = field(default=4, metadata={"help": "microbatches per optimizer step"})
    learning_rate: float = field(default=2e-05, metadata={"help": "peak learning rate (linear decay)"})
    num_epochs: int = field(default=3, metadata={"help": "passes over the training data"})
    eval_steps: int = field(default=10, metadata={"help": "evaluate every N steps when an eval set exists"})
    finetune_seed: int = field(
        default=42, metadata={"help": "seed of weights, data order, views", "aliases": ["--seed"]}
    )
    debug: int = field(default=0, metadata={"help": "print every microbatch of the first N optimizer steps"})
    track_flop: bool = field(default=False, metadata={"help": "add estimated FLOPs to metrics.jsonl"})
    same_flop: bool = field(default=False, metadata={"help": "divide epochs by the views' cost, as upstream"})


@dataclass
class JepaArguments:
    """Upstream finetune.py's LLM-JEPA flags (group 'LLM-JEPA (upstream)')."""

    _argument_group_name = "LLM-JEPA (upstream)"
    regular: bool = field(default=False, metadata={"help": "plain SFT: no views"})
    predictors: int = field(default=0, metadata={"help": "K predictor tokens (per insertion in multi-step mode)"})
    lbd: float | None = field(default=None, metadata={"help": "JEPA weight (default 0.1)"})
    gamma: float = field(default=1.0, metadata={"help": "LM weight"})
    last_token: int = field(default=-1, metadata={"help": "embedding index relative to the end (-2 for Llama-3)"})
    additive_mask: bool = field(default=False, metadata={"help": "Text and Code packed in one row"})
    jepa_l2: bool = field(default=False, metadata={"help": "JEPA term: L2 distance instead of 1 - cosine"})
    jepa_mse: bool = field(default=False, metadata={"help": "JEPA term: mean squared error instead of 1 - cosine"})
    infonce: bool = field(default=False, metadata={"help": "JEPA term: InfoNCE over the microbatch's pairs"})
    front_pred: bool = field(default=False, metadata={"help": "predictor tokens before the Text view, not after"})
    reverse_pred: bool = field(default=False, metadata={"help": "predict Text from Code (the reverse direction)"})
    jepa_ratio: float = field(default=-1.0, metadata={"help": "run the views on this fraction of microbatches"})


@dataclass
class StepJepaArguments:
    """The Step-JEPA fork's (train.py) flags (group 'multi-step Step-JEPA (train.py fork)')."""

    _argument_group_name = "multi-step Step-JEPA (train.py fork)"
    num_prediction_steps: int = field(default=0, metadata={"help": "N step pairs; 0 = view-based LLM-JEPA"})
    localized_masks: bool = field(
        default=True,
        metadata={
            "help": (
                "each step view sees its own step only; --no_localized_masks: the whole context before it"
                " (default: True)"
            ),
            "aliases": ["--use_localized_masks"],
        },
    )
    isolated_predictors: bool = field(default=False, metadata={"help": "predictors as side branches of view 1"})
    include_last_step_target: bool = field(
        default=True,
        metadata={"help": "the answer's end is the last target; --omit_last_step_target: it is not (default: True)"},
    )
    view_based_jepa: bool = field(default=False, metadata={"help": "N = 1: user turn's end -> the answer's end"})
    unmask_user: bool = field(default=False, metadata={"help": "LM loss on the user content too"})
    entropy_filter: bool = field(default=False, metadata={"help": "per example, the top-k pairs by entropy"})
    entropy_top_k: int = field(default=2, metadata={"help": "pairs --entropy_filter keeps per example"})
    entropy_context_window: int = field(default=2, metadata={"help": "tokens each side of a boundary"})


@dataclass
class LlmjepaArguments:
    """Llmjepa's own flags (group 'llmjepa')."""

    _argument_group_name = "llmjepa"
    step_separator: str = field(
        default="\n\n", metadata={"help": "text that ends a reasoning step (backslash escapes: '\\n')"}
    )
    upstream_labels: bool = field(
        default=False, metadata={"help": "upstream's effective labels: every token but the pad id (pad = eos)"}
    )
    additive_mask_positions: Literal["continue", "reset"] = field(
        default="continue",
        metadata={"help": "Code's positions under --additive_mask: continue after Text (upstream) or restart at 0"},
    )
    impl: Literal["reference", "fast"] | None = field(
        default=None,
        metadata={
            "help": (
                "executor of the views: reference (padded rows, dense masks, upstream semantics) or fast "
                "(one packed stream, Triton attention on CUDA, its PyTorch form on the CPU); default: "
                "fast, except on CUDA without Triton"
            )
        },
    )
    attention_backend: Literal["triton", "flex", "torch"] | None = field(
        default=None,
        metadata={
            "help": (
                "--impl fast's attention: the Triton kernel, torch's FlexAttention (trains on CUDA only) "
                "or the PyTorch form; default: triton on CUDA, torch on the CPU"
            )
        },
    )
    kernel_check: Literal["auto", "strict", "off"] = field(
        default="auto",
        metadata={
            "help": (
                "--impl fast on CUDA: before the first step, the attention backend against the PyTorch "
                "form on a small layout at the run's dtype and heads (verdict cached per device and "
                "versions). auto: on a mismatch one line, then the PyTorch form; strict: stop with exit "
                "status 5; off: no check"
            )
        },
    )
    max_train_steps: int = field(
        default=-1, metadata={"help": "stop after N optimizer steps (-1: --num_epochs decides)"}
    )
    logging_steps: int = field(default=1, metadata={"help": "log to report_to every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: every epoch)"})
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={"help": "worker processes that collate and pack microbatches; default 2 with CUDA, 0 on the CPU"},
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "a checkpoint directory, or 'latest' in --output_dir (default: a fresh start)"}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "weights' dtype; auto = bfloat16 on CUDA (as upstream), float32 on CPU"}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "default: on with CUDA (as upstream), off on CPU", "nargs": "?", "const": True}
    )
    dropout: float | None = field(
        default=None, metadata={"help": "the model's attention dropout (default: the checkpoint's)"}
    )
    card_datasets: str | None = field(
        default=None,
        metadata={"help": "Hub dataset ids the training data came from, joined by commas: the model card's datasets"},
    )
    eval_accuracy: bool = field(default=False, metadata={"help": "generation accuracy at each evaluation"})
    eval_accuracy_samples: int = field(default=32, metadata={"help": "eval examples it generates for"})
    eval_accuracy_max_new_tokens: int = field(
        default=128, metadata={"help": "tokens --eval_accuracy generates per answer"}
    )


@dataclass
class StpArguments:
    """Upstream stp.py's flags (group 'STP (upstream stp.py)')."""

    _argument_group_name = "STP (upstream stp.py)"
    linear: Literal[STP_MODES] | None = field(
        default=None, metadata={"help": "Semantic Tube Prediction from view 1 alone"}
    )
    linear_predictor: bool = field(default=False, metadata={"help": "a bias-free d x d map on the predictor side"})
    load_lp: bool = field(default=False, metadata={"help": "load the linear predictor saved in --model_name"})
    lbd_warmup: bool = field(default=False, metadata={"help": "lbd rises linearly from --min_lbd to --lbd"})
    min_lbd: float = field(default=0.0, metadata={"help": "--lbd_warmup's starting lbd"})
    length_adjustment: Literal[LENGTH_ADJUSTMENTS] | None = field(
        default=None, metadata={"help": "random_span weights (default: none, uniform)"}
    )
    random_span_zero: bool = field(default=False, metadata={"help": "spans start at the first content token"})
    random_span_e2e: bool = field(default=False, metadata={"help": "spans may cover the tokens between the turns"})
    random_span_all: bool = field(default=False, metadata={"help": "the user part starts at token 1"})
    random_span_max_length: int = field(default=-1, metadata={"help": "longest span (-1: no limit)"})
    random_span_times: int = field(default=1, metadata={"help": "spans drawn per example"})
    random_span_draw_both: bool = field(default=False, metadata={"help": "draw both span ends at once"})
    random_span_uniform: bool = field(default=False, metadata={"help": "spans uniform over all spans"})
    jepa_layer: int = field(
        default=-1,
        metadata={"help": "hidden_states index the JEPA term reads (-1: the last)", "aliases": ["--random_span_layer"]},
    )
    random_span_mask: bool = field(default=False, metadata={"help": "refused: no working meaning upstream"})
    random_span_mask_recover: bool = field(default=False, metadata={"help": "refused: no working meaning upstream"})


@dataclass
class RunFolderArguments:
    """One run per output folder, resumes of the same run, long prompts (group 'run integrity'; docs/faults.md)."""

    _argument_group_name = "run integrity (docs/faults.md)"
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": (
                "a new run in a folder holding another run's checkpoints: delete those checkpoints (and run.json, "
                "metrics.jsonl) first; without it such a folder is refused"
            )
        },
    )
    allow_changed_flags: bool = field(
        default=False,
        metadata={
            "help": (
                "resume a checkpoint although flags, data or model that change the run differ; the differences "
                "are recorded in metrics.jsonl and run.json"
            )
        },
    )
    drop_long_prompts: bool = field(
        default=True,
        metadata={
            "help": "drop (and count) an example whose prompt alone fills --max_length; false: refuse it (exit 2)"
        },
    )


@dataclass
class DatasetArguments:
    """Data as users have it: datasets sources, formats and column mapping, bad rows (group 'datasets';
    docs/views.md "Data formats", docs/faults.md "Bad rows")."""

    _argument_group_name = "datasets (docs/views.md: data formats)"
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": (
                "a local file (.jsonl .json .csv .tsv .parquet .arrow .txt) or folder that datasets.load_dataset "
                "reads, a folder written by save_to_disk, or a Hub dataset id (instead of --train_file)"
            )
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the --dataset_name configuration (Hub)"})
    dataset_split: str = field(default="train", metadata={"help": "the --dataset_name split trained on"})
    dataset_eval_split: str | None = field(
        default=None,
        metadata={"help": "a --dataset_name split evaluated every --eval_steps (or --eval_split: a fraction)"},
    )
    messages_field: str = field(default="messages", metadata={"help": "the column holding conversations"})
    prompt_field: str = field(default="prompt", metadata={"help": "the prompt column of prompt-completion rows"})
    completion_field: str = field(
        default="completion", metadata={"help": "the completion column of prompt-completion rows"}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "a system message put first in every conversation that has none"}
    )
    formatting_func: str | None = field(
        default=None,
        metadata={
            "help": (
                "module:function (or file.py:function) mapping each row to a dict with messages, prompt/completion "
                "or text, a list of messages, or a string"
            )
        },
    )
    label_turns: Literal["all", "last"] = field(
        default="all", metadata={"help": "multi-turn conversations: LM labels on every assistant turn, or the last"}
    )
    jepa_turns: Literal["last", "all"] = field(
        default="last",
        metadata={"help": "view-based JEPA on multi-turn conversations: the last exchange's pair, or one per exchange"},
    )
    drop_bad_rows: bool = field(
        default=False,
        metadata={"help": "drop rows no format accepts and count them by kind (default: the first one is refused)"},
    )
    dataset_num_proc: int | None = field(
        default=None,
        metadata={
            "help": (
                "processes that encode the data (datasets.map, batched); the encoded set is cached by the source's "
                "fingerprint, the tokenizer and the options, so a second run on the same data starts in seconds "
                "(docs/views.md, Encoding; default: one process)"
            )
        },
    )
    dataset_streaming: bool = field(
        default=False,
        metadata={
            "help": (
                "read --dataset_name as a stream (datasets.IterableDataset), tokenized as training draws it, in "
                "the source's order; needs --max_train_steps"
            )
        },
    )


ARGUMENT_CLASSES = (
    DataArguments,
    ModelArguments,
    UpstreamTrainingArguments,
    JepaArguments,
    StepJepaArguments,
    LlmjepaArguments,
    StpArguments,
    RunFolderArguments,
    DatasetArguments,
)


def flag_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An HfArgumentParser over ARGUMENT_CLASSES (kwargs: ArgumentParser's), with the negative spellings
    argparse had and HfArgumentParser does not make: --omit_last_step_target, --no-gradient_checkpointing."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ARGUMENT_CLASSES, **kwargs)
    groups = {group.title: group for group in parser._action_groups}
    groups[StepJepaArguments._argument_group_name].add_argument(
        "--omit_last_step_target",
        dest="include_last_step_target",
        action="store_false",
        help="the answer's end is no target (= --include_last_step_target false; default: it is)",
    )
    groups[LlmjepaArguments._argument_group_name].add_argument(
        "--no-gradient_checkpointing",
        "--no_gradient_checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="= --gradient_checkpointing false (default: on with CUDA, off on CPU)",
    )
    return parser
