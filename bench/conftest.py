"""pytest-benchmark suites under bench/ (test_bench_*.py, bench_kernels.py): shared set-up.

Triton runs on the CPU only through its interpreter, which it reads when triton is first imported: set
here, before any suite imports a kernel (tests/conftest.py does the same for the tests). One intra-op
thread on the CPU: these shapes are tiny, and on shared cores threads waiting on each other's spinning
make timings noisier, not faster. The suites import the bench scripts (bench/ on sys.path) and llmjepa.
"""

import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)

BENCH = Path(__file__).resolve().parent
for path in (BENCH, BENCH.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
