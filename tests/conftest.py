import os

import torch

# Triton runs on CPU only through its interpreter, which it reads when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
