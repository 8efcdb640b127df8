"""llmjepa: a drop-in, fast trainer for LLM-JEPA fine-tuning.

    from transformers import TrainingArguments
    from llmjepa import JepaTrainer, LossConfig, ViewConfig, load_model, load_tokenizer

    tokenizer = load_tokenizer("llmjepa/tiny-llama")  # or a local Hugging Face checkpoint folder
    model = load_model("llmjepa/tiny-llama", tokenizer)
    trainer = JepaTrainer(model=model, args=TrainingArguments("out"), train_dataset=rows,
                          processing_class=tokenizer, loss_config=LossConfig(lbd=0.1))

rows: dicts (or a datasets.Dataset) with a "messages" list, as in the JSONL files.

Layers (docs/architecture.md): views (examples -> encoded views -> plans -> packed streams, the
collator) -> execution (executors, readout, LM head, losses) -> training (JepaTrainer, its factory and
callbacks) and evaluation (generation, scorers) -> commands (llmjepa-train, -parity, -eval, -sweep).
"""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)

from importlib import import_module

from . import _moved

# Public name -> the module that holds it, imported on first use (PEP 562): `llmjepa-train --help` and the
# commands' flag parsing load no torch or transformers (issue 17); `from llmjepa import JepaTrainer` works as before.
_EXPORTS = {
    "DEFAULT_MODEL_NAME": ".default_model",
    "build_default_model": ".default_model",
    "build_default_tokenizer": ".default_model",
    "sample_data_path": ".default_model",
    "run_fast": ".execution.fast",
    "Executed": ".execution.protocol",
    "run_reference": ".execution.reference",
    "ModelSpec": ".model",
    "load_model": ".model",
    "load_tokenizer": ".model",
    "JepaTrainer": ".training.trainer",
    "LossConfig": ".training.trainer",
    "RunOptions": ".training.factory",
    "DataFormat": ".views.formats",
    "build_plan": ".views.builders",
    "ViewCollator": ".views.collate",
    "Encoded": ".views.encoding",
    "ViewConfig": ".views.encoding",
    "encode_all": ".views.encoding",
    "Example": ".views.examples",
    "examples_from_records": ".views.examples",
    "load_examples": ".views.examples",
    "ViewPlan": ".views.plan",
    "ViewRow": ".views.plan",
}


def __getattr__(name: str):
    """A public name's module imported when the name is first read."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llmjepa' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # the next read is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


_moved.install()  # llmjepa.cli, llmjepa.fast, ... (0.1's flat modules): the new modules, with a DeprecationWarning

__all__ = [
    "__version__",
    "DEFAULT_MODEL_NAME",
    "DataFormat",
    "Encoded",
    "Example",
    "Executed",
    "JepaTrainer",
    "LossConfig",
    "ModelSpec",
    "RunOptions",
    "ViewCollator",
    "ViewConfig",
    "ViewPlan",
    "ViewRow",
    "build_default_model",
    "build_default_tokenizer",
    "build_plan",
    "encode_all",
    "examples_from_records",
    "load_examples",
    "load_model",
    "load_tokenizer",
    "run_fast",
    "run_reference",
    "sample_data_path",
]
