"""Sharing a trained model: its card from the run's flags and trainer (training/model_card.py), and --push_to_hub.

Every final model llmjepa-train saves (the trained weights, or with --merge_lora the merged model) gets a
README.md model card. With --push_to_hub the final folder is uploaded once, at the end, card included: the
model (or the merged model, not the adapters) with its tokenizer, metrics.jsonl and the loss curve. The
Trainer's own pushing is switched off (run.training_arguments): it would push at every checkpoint from
the checkpoints' staging folders, write its own card over this one, and with --merge_lora upload the
adapters rather than the merged model. Checkpoints, run.json (local paths of the data and the machine's
folders) and hidden files (the folder's lock, partial checkpoints) stay local.

The hub fields are TrainingArguments': --hub_model_id (default: the output folder's name, in the token's
namespace), --hub_token (default: the saved login or HF_TOKEN), --hub_private_repo, --hub_revision.
"""

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import EXIT_SAVE_FAILED, TrainingStopped, UserError
from ..training.model_card import CardRecord, eval_summary, final_metrics, hub_model_id, write_card

# what --push_to_hub leaves out of the upload (huggingface_hub's fnmatch patterns; "*" crosses folders)
NOT_PUSHED = ["checkpoint-*", ".*", "run.json", "training_args.bin"]


def hub(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """A hub field of TrainingArguments as given (flags or --config), else its default."""
    return getattr(args, "training_overrides", {}).get(name, default)


def pushes(args: argparse.Namespace) -> bool:
    return bool(hub(args, "push_to_hub", False))


def check_push(args: argparse.Namespace) -> None:
    """Before training: --push_to_hub needs a token (exit 2 now, rather than after the run)."""
    if not pushes(args) or hub(args, "hub_token"):
        return
    from huggingface_hub import get_token

    if not get_token():
        raise UserError("--push_to_hub: no Hugging Face token (run `hf auth login`, set HF_TOKEN, or give --hub_token)")


# ---- the card's record --------------------------------------------------------------------------------------
def base_license(name: str) -> str | None:
    """The base model's license where it can be known without the network: the embedded model's (llmjepa's,
    Apache-2.0), or the `license:` of a README.md in the local folder or in the Hugging Face cache."""
    from ..default_model import DEFAULT_MODEL_NAME

    if name == DEFAULT_MODEL_NAME:
        return "apache-2.0"
    readme: Any = Path(name, "README.md") if os.path.isdir(name) else None
    if readme is None and hub_model_id(name):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "README.md")
        except ValueError:
            cached = None
        readme = Path(cached) if isinstance(cached, str) else None
    if readme is None or not readme.is_file():
        return None
    return card_license(readme.read_text(encoding="utf-8", errors="replace"))


def card_license(text: str) -> str | None:
    """The `license:` of a model card's YAML header, if it has one."""
    import yaml

    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def method_settings(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The flags that define the method, by mode (the ones that differ from no JEPA at all)."""
    from .config import derive

    loss = derive(args).loss
    if mode == "regular":
        return {"gamma (LM weight)": 1.0}
    kind = loss.jepa_kind
    settings: dict[str, Any] = {"lbd (JEPA weight)": loss.lbd, "gamma (LM weight)": loss.gamma, "JEPA loss": kind}
    if mode == "stp":
        settings.update(
            {
                "STP mode (--linear)": args.linear,
                "linear predictor": args.linear_predictor,
                "lbd warm-up": f"{args.min_lbd} -> {loss.lbd}" if args.lbd_warmup else "no",
                "length adjustment": args.length_adjustment or "none",
                "spans per example": args.random_span_times,
                "longest span": args.random_span_max_length,
                "hidden layer read (--jepa_layer)": args.jepa_layer,
            }
        )
        return settings
    settings["predictor tokens (K)"] = args.predictors
    if mode == "step_jepa":
        settings.update(
            {
                "N (num_prediction_steps)": args.num_prediction_steps,
                "step separator": args.step_separator,
                "localized masks": args.localized_masks,
                "isolated predictors": args.isolated_predictors,
                "last step's target": args.include_last_step_target,
            }
        )
        if args.entropy_filter:
            settings["entropy filter (top k, window)"] = f"{args.entropy_top_k}, {args.entropy_context_window}"
    else:
        settings.update({"additive mask": args.additive_mask, "reverse prediction": args.reverse_pred})
    settings["embedding token (last_token)"] = args.last_token
    if args.jepa_ratio > 0:
        settings["views on this fraction of microbatches"] = args.jepa_ratio
    return settings


def card_record(args: argparse.Namespace, trainer: Any) -> CardRecord:
    """The card of a finished llmjepa-train run: its flags, data, steps and the trainer's last numbers."""
    from ..default_model import demo_data_path
    from ..distributed import world_size
    from .config import mode_of

    mode = mode_of(args).value
    train_source = args.data_file or args.train_file or f"{demo_data_path('train').name} (llmjepa's demo sums)"
    data: dict[str, Any] = {"training data": Path(train_source).name if os.path.exists(train_source) else train_source}
    dataset = trainer.train_dataset
    # a stream (--dataset_streaming) has no length: the card says so instead of a count
    data["training examples"] = len(dataset) if hasattr(dataset, "__len__") else "streamed" if dataset else None
    if trainer.eval_dataset is not None:
        data["evaluation data"] = Path(args.eval_file).name if args.eval_file else f"{args.eval_split or 0.2} held out"
        data["evaluation examples"] = len(trainer.eval_dataset)
    data["max tokens per view"] = args.max_length
    targs = trainer.args
    training: dict[str, Any] = {
        "optimizer steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "examples per microbatch and device": targs.per_device_train_batch_size,
        "gradient accumulation": targs.gradient_accumulation_steps,
        "ranks": world_size(),
        "learning rate": targs.learning_rate,
        "schedule": str(getattr(targs.lr_scheduler_type, "value", targs.lr_scheduler_type)),
        "weights' dtype": args.dtype,
        "seed": args.finetune_seed,
    }
    if args.lora:
        training["LoRA rank (alpha 2r)"] = args.lora_rank
    return CardRecord(
        name=Path(os.path.normpath(args.output_dir)).name,
        base_model=args.model_name,
        base_model_hub_id=hub_model_id(args.model_name),
        license=base_license(args.model_name),
        mode=mode,
        method=method_settings(args, mode),
        data=data,
        datasets=[d.strip() for d in (args.card_datasets or "").split(",") if d.strip()],
        training=training,
        final_metrics=final_metrics(trainer),
        eval_summary=eval_summary(trainer),
        merged_lora=bool(args.lora and args.merge_lora),
        adapter=bool(args.lora and not args.merge_lora),
    )


# ---- the card and the push, after the final model is saved ---------------------------------------------------
def share(args: argparse.Namespace, trainer: Any) -> None:
    """The card beside the final model; then, with --push_to_hub, the folder to the Hub."""
    card = write_card(args.output_dir, card_record(args, trainer))
    print(f"llmjepa-train: model card {card}")
    if pushes(args):
        url = push_folder(args.output_dir, args)
        print(f"llmjepa-train: pushed {args.output_dir} to {url}")


def push_folder(folder: str, args: argparse.Namespace) -> str:
    """Upload the final folder (NOT_PUSHED left out) to --hub_model_id; a failure is one line, exit status 4,
    the model kept locally."""
    from huggingface_hub import HfApi

    repo_id = hub(args, "hub_model_id") or Path(os.path.normpath(folder)).name
    revision = hub(args, "hub_revision")
    api = HfApi(token=hub(args, "hub_token"))
    try:
        repo = api.create_repo(repo_id, private=hub(args, "hub_private_repo"), exist_ok=True)
        repo_id = repo.repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            ignore_patterns=NOT_PUSHED,
            commit_message="llmjepa-train: final model and model card",
        )
    except Exception as e:  # HTTP, authentication, network: the run itself succeeded
        reason = " ".join(str(e).split()) or type(e).__name__
        excluded = " ".join(f"--exclude '{pattern}'" for pattern in NOT_PUSHED)
        raise TrainingStopped(
            f"--push_to_hub {repo_id}: {reason}; the model and its card are saved in {folder} "
            f"(push them later with: hf upload {repo_id} {folder} {excluded})",
            EXIT_SAVE_FAILED,
        ) from None
    return str(repo)
