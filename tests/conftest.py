import atexit
import os
import shutil
import tempfile

import pytest
import torch

# datasets' cache, where llmjepa-train writes its encoded sets (views/encoded_rows.py), in a folder of this session's
# own, removed at its end: runs never read another session's encodings, nor fill the user's cache (set before
# datasets is imported, which reads it then; subprocesses inherit it).
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="llmjepa-tests-datasets-")
atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)

# Triton runs on CPU only through its interpreter, which it reads when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread: the tests' models are tiny, and on 2 shared cores two threads waiting on each
# other's spinning ran them 3-10x slower (measured while writing these tests).
torch.set_num_threads(1)

# Markers (pyproject.toml):
# - gpu: the tests that exercise CUDA, skipped without it; `pytest -m gpu` is the GPU acceptance subset.
# - interpreter: the Triton kernels on CPU tensors, which need TRITON_INTERPRET=1 in this process. Where it
#   is off (a GPU host: conftest leaves it off there so that the gpu tests run the compiled kernels; or
#   TRITON_INTERPRET=0), they skip here, saying so, and tests/test_interpreter_process.py runs them in a
#   process of their own with CUDA hidden and the interpreter on. No test fails by construction.
INTERPRETER_OFF = (
    "needs the Triton interpreter, off in this process (CUDA present or TRITON_INTERPRET=0): "
    "tests/test_interpreter_process.py runs it in a process of its own"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    skip = pytest.mark.skip(reason=INTERPRETER_OFF)
    for item in items:
        if item.get_closest_marker("interpreter") is not None:
            item.add_marker(skip)
