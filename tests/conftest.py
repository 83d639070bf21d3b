"""Test-wide settings.

One torch thread: on a shared 2-core machine, multi-threaded kernels on tiny tensors spend their
time waiting for each other (a tiny forward took 1.7 s with the default threads, 25 ms with one).
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
