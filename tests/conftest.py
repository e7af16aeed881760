import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Measured machine rates (vlmoe.nn.machine) go to a per-session folder, not the user's cache.
os.environ.setdefault("VLMOE_CACHE_DIR", tempfile.mkdtemp(prefix="vlmoe-test-cache-"))

import torch  # noqa: E402

# Tests use tiny tensors: one thread is faster than two and keeps results reproducible.
torch.set_num_threads(1)
