import os

import torch

# Triton runs on CPU only through its interpreter, which it reads when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread: the tests' models are tiny, and on 2 shared cores two threads waiting on each
# other's spinning ran them 3-10x slower (measured while writing these tests).
torch.set_num_threads(1)
