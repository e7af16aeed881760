import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

# Tests use tiny tensors: one thread is faster than two and keeps results reproducible.
torch.set_num_threads(1)
