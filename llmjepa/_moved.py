"""The flat module names of llmjepa 0.1 (llmjepa.cli, llmjepa.fast, ...), kept importable for one release.

`import llmjepa.cli` (or `from llmjepa.fast import run_fast`) still works and gives the module that now
holds the code, the same module object (so patching one patches the other), with a DeprecationWarning
that names the new path. Nothing inside llmjepa imports these names (tests/test_layout.py checks).
No file stands at an old path: a finder on sys.meta_path answers for them.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.2"
MOVED = {  # old module -> new module
    "llmjepa.data": "llmjepa.views.examples",
    "llmjepa.plan": "llmjepa.views.plan",
    "llmjepa.pack": "llmjepa.views.pack",
    "llmjepa.collate": "llmjepa.views.collate",
    "llmjepa.stp": "llmjepa.views.stp",
    "llmjepa.execute": "llmjepa.execution.reference",
    "llmjepa.fast": "llmjepa.execution.fast",
    "llmjepa.lm_head": "llmjepa.execution.lm_head",
    "llmjepa.losses": "llmjepa.execution.losses",
    "llmjepa.trainer": "llmjepa.training.trainer",
    "llmjepa.defaults": "llmjepa.training.factory",
    "llmjepa.interrupt": "llmjepa.training.callbacks",
    "llmjepa.profiled_flops": "llmjepa.training.callbacks",
    "llmjepa.debug": "llmjepa.training.debug",
    "llmjepa.cli": "llmjepa.commands.train",
    "llmjepa.run": "llmjepa.commands.run",
    "llmjepa.hf_args": "llmjepa.commands.hf_args",
    "llmjepa.parity": "llmjepa.commands.parity",
    "llmjepa.sweep": "llmjepa.commands.sweep",
    "llmjepa.evaluate": "llmjepa.commands.evaluate",
    "llmjepa.plots": "llmjepa.commands.plots",
    "llmjepa.generation": "llmjepa.evaluation.generation",
    "llmjepa.scorers": "llmjepa.evaluation.scorers",
    "llmjepa.eval_callback": "llmjepa.evaluation.callback",
    "llmjepa.checkpoints": "llmjepa.evaluation.loading",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # the new module itself, not a copy
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec on it: put its own back


class MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        if new is None:
            return None
        warnings.warn(
            f"{name} is now {new}; the old name goes in llmjepa {REMOVED_IN}", DeprecationWarning, stacklevel=3
        )
        return importlib.util.spec_from_loader(name, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.append(MovedModules())
