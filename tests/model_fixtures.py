"""Shared by the model and training tests: a smaller magma-tiny and one torch thread per module."""
from __future__ import annotations

import pytest
import torch

# A smaller magma-tiny for speed: 64 px crops (4x4 features + separators = 20 positions), 2 decoder layers.
SMALL = dict(text={"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256}, vision={"hidden_sizes": [16, 32, 64]}, image_size=64)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices: a second thread only adds contention on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
