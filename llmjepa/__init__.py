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

from . import _moved
from .default_model import DEFAULT_MODEL_NAME, build_default_model, build_default_tokenizer, sample_data_path
from .execution.fast import run_fast
from .execution.protocol import Executed
from .execution.reference import run_reference
from .model import ModelSpec, load_model, load_tokenizer
from .training.trainer import JepaTrainer, LossConfig
from .views.builders import build_plan
from .views.collate import ViewCollator
from .views.encoding import Encoded, ViewConfig, encode_all
from .views.examples import Example, examples_from_records, load_examples
from .views.plan import ViewPlan, ViewRow

_moved.install()  # llmjepa.cli, llmjepa.fast, ... (0.1's flat modules): the new modules, with a DeprecationWarning

__all__ = [
    "__version__",
    "DEFAULT_MODEL_NAME",
    "Encoded",
    "Example",
    "Executed",
    "JepaTrainer",
    "LossConfig",
    "ModelSpec",
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
