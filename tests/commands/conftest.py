"""One torch thread per test process: the models here are tiny, and on a shared 2-core machine several
threads per process spend their time waiting on each other (a 32-wide linear layer took 30 ms)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
