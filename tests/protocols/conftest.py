"""One torch thread for the protocol tests."""

from __future__ import annotations

import pytest
import torch

from fewbits.train.threads import choose_threads


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, so that every caller's run sums in the same order (and the shared cores are not fought over)."""
    before = torch.get_num_threads()
    yield choose_threads(1)
    torch.set_num_threads(before)
