"""The model card (README.md with Hugging Face Hub metadata) written beside every final model.

A card says how the weights were made, so that a model on the Hub (or a folder passed around) can be read
without the run's logs: the method and its settings, the data, the steps, the final metrics, the evaluation
when there was one, and the paper to cite. `card_text` is a pure function of a `CardRecord` (tests compare
its text); `write_card` writes it. llmjepa-train fills the record from its flags and the trainer
(commands/share.py); a library user can fill one from their own run.

The YAML metadata names only what the Hub can resolve: `base_model` only for a Hub model id (not a local
folder, not the embedded llmjepa/tiny-llama), `datasets` only for Hub dataset ids; local files are named
in the text instead.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CARD_NAME = "README.md"
LIBRARY_NAME = "llmjepa"
TAGS = ("llm-jepa", "jepa", "llmjepa")
CITATION = """@article{huang2025llmjepa,
  title   = {LLM-JEPA: Large Language Models Meet Joint Embedding Predictive Architectures},
  author  = {Huang, Hai and LeCun, Yann and Balestriero, Randall},
  journal = {arXiv preprint arXiv:2509.14252},
  year    = {2025},
  url     = {https://arxiv.org/abs/2509.14252}
}"""
PAPER = (
    "[LLM-JEPA: Large Language Models Meet Joint Embedding Predictive Architectures](https://arxiv.org/abs/2509.14252)"
)


@dataclass
class CardRecord:
    """What a card says. Dict fields are shown as tables in their insertion order."""

    name: str  # the model's name (the folder, or the Hub repo's name)
    base_model: str  # as the run named it (a Hub id, a local folder, llmjepa/tiny-llama)
    base_model_hub_id: str | None = None  # the same, where it is a Hub model id (the metadata's base_model)
    license: str | None = None  # the base model's license, where known
    mode: str = "view_jepa"  # regular | view_jepa | step_jepa | stp
    method: dict[str, Any] = field(default_factory=dict)  # lbd, gamma, predictors, N, the JEPA loss, STP options
    data: dict[str, Any] = field(default_factory=dict)  # file -> examples (or a description)
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids (metadata)
    training: dict[str, Any] = field(default_factory=dict)  # steps, epochs, batch, learning rate, LoRA, dtype
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last step's (and its health numbers)
    eval_summary: dict[str, float] = field(default_factory=dict)  # the last evaluation's, when there was one
    merged_lora: bool = False  # LoRA adapters merged into the weights (a plain model)
    adapter: bool = False  # the folder holds LoRA adapters (load with peft on the base model)


MODE_TEXT = {
    "regular": "plain supervised fine-tuning (next-token loss only; no JEPA term)",
    "view_jepa": "LLM-JEPA over two views of each example (Text and Code): gamma * LM loss + lbd * JEPA loss "
    "between the predictor's embedding of one view and the embedding of the other",
    "step_jepa": "multi-step LLM-JEPA (Step-JEPA): the embedding after each of N reasoning steps predicts the "
    "embedding of the step that follows, beside the LM loss",
    "stp": "Semantic Tube Prediction (STP): JEPA terms over spans of view 1's hidden states, beside the LM loss",
}


def metadata(record: CardRecord) -> dict[str, Any]:
    """The card's YAML header: what the Hub indexes."""
    meta: dict[str, Any] = {"library_name": LIBRARY_NAME}
    if record.base_model_hub_id:
        meta["base_model"] = record.base_model_hub_id
    if record.license:
        meta["license"] = record.license
    tags = [*TAGS, record.mode.replace("_", "-")]
    if record.adapter:
        tags.append("lora")
    meta["tags"] = tags
    if record.datasets:
        meta["datasets"] = list(record.datasets)
    if record.adapter and record.base_model_hub_id:
        meta["pipeline_tag"] = "text-generation"
    return meta


def shown(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", "\\n")


def table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {shown(key)} | {shown(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def card_text(record: CardRecord) -> str:
    """The README.md of a trained model: YAML metadata, then the method, data, training, results, citation."""
    header = yaml.safe_dump(metadata(record), sort_keys=False, allow_unicode=True).strip()
    if record.merged_lora:
        weights = "LoRA adapters trained, then merged into the base weights: a plain model that loads without peft."
    elif record.adapter:
        weights = f"LoRA adapters: load them with peft on top of `{record.base_model}`."
    else:
        weights = "All weights trained."
    parts = [
        f"---\n{header}\n---",
        f"# {record.name}",
        f"Fine-tuned from `{record.base_model}` with llmjepa, a trainer for "
        f"{PAPER} (Huang, LeCun, Balestriero 2025). {weights}",
        "## Method",
        f"Mode `{record.mode}`: {MODE_TEXT.get(record.mode, record.mode)}.",
    ]
    if record.method:
        parts.append(table(record.method))
    parts.append("## Data")
    parts.append(table(record.data) if record.data else "Not recorded.")
    if record.datasets:
        parts.append("Hub datasets: " + ", ".join(f"`{d}`" for d in record.datasets))
    parts.append("## Training")
    parts.append(table(record.training) if record.training else "Not recorded.")
    parts.append("## Results")
    if record.final_metrics:
        parts.append("Final training metrics (the last optimizer step; the embedding health numbers of the last log):")
        parts.append(table(record.final_metrics))
    else:
        parts.append("No training metrics recorded.")
    if record.eval_summary:
        parts.append("Evaluation (the last one during training):")
        parts.append(table(record.eval_summary))
    parts.append("## Citation")
    parts.append(f"```bibtex\n{CITATION}\n```")
    return "\n\n".join(parts) + "\n"


# ---- what a trainer knows ------------------------------------------------------------------------------------
FINAL_KEYS = ("step", "loss", "lm_loss", "jepa_loss", "mean_cos")
HEALTH_KEYS = ("jepa_pred_std", "jepa_target_std", "jepa_pred_rank", "jepa_target_rank")
EVAL_TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def final_metrics(trainer: Any) -> dict[str, float]:
    """The last optimizer step's numbers (JepaTrainer.history) and the last log's embedding health."""
    history = getattr(trainer, "history", None) or [{}]
    final = {k: v for k, v in history[-1].items() if k in FINAL_KEYS}
    health = next((e for e in reversed(trainer.state.log_history) if HEALTH_KEYS[0] in e), {})
    final.update({k: health[k] for k in HEALTH_KEYS if k in health})
    return final


def eval_summary(trainer: Any) -> dict[str, float]:
    """The last evaluation's numbers during training (none: {}), without its timing."""
    evaluated = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), {})
    summary = {k: v for k, v in evaluated.items() if k.startswith("eval_") and k not in EVAL_TIMING}
    if summary:
        summary["step"] = evaluated.get("step")
    return summary


def hub_model_id(name: str) -> str | None:
    """`name` if it can be a Hub model id: not a local folder, not the embedded default."""
    import os

    from ..default_model import DEFAULT_MODEL_NAME

    if not name or name == DEFAULT_MODEL_NAME or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    parts = name.split("/")
    return name if 1 <= len(parts) <= 2 and all(parts) else None


def record_from_trainer(trainer: Any, name: str | None = None, **hub_kwargs: Any) -> CardRecord:
    """A card from what a JepaTrainer knows (the library's path: Trainer.push_to_hub writes it through
    JepaTrainer.create_model_card): its loss and view configs, its arguments, its last numbers. hub_kwargs:
    Trainer.create_model_card's `license`, `dataset` (Hub ids), `tags`."""
    from ..distributed import base_model

    config = getattr(base_model(trainer.model), "config", None)
    base = str(getattr(config, "_name_or_path", "") or "unknown")
    loss, view = trainer.loss_config, getattr(trainer.data_collator, "cfg", None)
    steps = getattr(view, "num_prediction_steps", 0)
    mode = "regular" if loss.regular else ("step_jepa" if steps > 0 else "view_jepa")
    method: dict[str, Any] = {"gamma (LM weight)": loss.gamma}
    if not loss.regular:
        method.update({"lbd (JEPA weight)": loss.lbd, "JEPA loss": loss.jepa_kind})
        method["predictor tokens (K)"] = getattr(view, "predictors", None)
        if steps > 0:
            method["N (num_prediction_steps)"] = steps
    args = trainer.args
    datasets = hub_kwargs.get("dataset") or []
    return CardRecord(
        name=name or Path(args.output_dir).name,
        base_model=base,
        base_model_hub_id=hub_model_id(base),
        license=hub_kwargs.get("license"),
        mode=mode,
        method=method,
        data={"training examples": len(trainer.train_dataset) if trainer.train_dataset is not None else None},
        datasets=[datasets] if isinstance(datasets, str) else list(datasets),
        training={
            "optimizer steps": trainer.state.global_step,
            "examples per microbatch and device": args.per_device_train_batch_size,
            "gradient accumulation": args.gradient_accumulation_steps,
            "learning rate": args.learning_rate,
        },
        final_metrics=final_metrics(trainer),
        eval_summary=eval_summary(trainer),
        adapter=hasattr(trainer.model, "peft_config"),
    )


def write_card(folder: str | Path, record: CardRecord) -> Path:
    """Write folder/README.md (replacing one the model's save may have written); returns its path."""
    path = Path(folder) / CARD_NAME
    path.write_text(card_text(record), encoding="utf-8")
    return path


# ---- llmjepa-eval's results, added to the card of the model it evaluated ---------------------------------------
EVAL_SHOWN = ("scorer", "n", "correct", "accuracy", "pass@1", "model")


def eval_block(summary: dict[str, Any]) -> str:
    """One llmjepa-eval result as a card section, between markers that name its data set (so a later
    evaluation on the same data replaces it and one on other data adds beside it)."""
    dataset = str(summary.get("dataset", "?"))
    rows = {key: summary[key] for key in EVAL_SHOWN if key in summary}
    decoding = summary.get("generation")
    if decoding:
        rows["decoding"] = ", ".join(f"{k} {v}" for k, v in decoding.items())
    heading = f"### llmjepa-eval on `{dataset}`"
    return "\n\n".join([f"<!-- llmjepa-eval {dataset} -->", heading, table(rows), f"<!-- /llmjepa-eval {dataset} -->"])


def is_llmjepa_card(text: str) -> bool:
    """A card llmjepa wrote (its metadata says library_name: llmjepa): llmjepa-eval edits no other README."""
    if not text.startswith("---\n"):
        return False
    try:
        meta = yaml.safe_load(text[4 : text.find("\n---", 4)])
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and meta.get("library_name") == LIBRARY_NAME


def add_eval_results(folder: str | Path, summary: dict[str, Any]) -> Path | None:
    """Put llmjepa-eval's summary into the model folder's llmjepa card (replacing an earlier result on the same
    data set, else before the citation); returns the card's path, or None where the folder has no llmjepa card
    (a base model, another library's README: left as it is)."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if not is_llmjepa_card(text):
        return None
    block = eval_block(summary)
    start_marker = block.split("\n", 1)[0]
    end_marker = block.rsplit("\n", 1)[1]
    start = text.find(start_marker)
    end = text.find(end_marker, start) if start >= 0 else -1
    if start >= 0 and end >= 0:
        text = text[:start] + block + text[end + len(end_marker) :]
    elif "\n## Citation" in text:
        at = text.index("\n## Citation")
        text = text[:at] + "\n" + block + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path
