"""Small tasks for the QAT tests (an MNIST-1D subset, a CIFAR-10 fixture in the official pickle format), and
one torch thread per module: on the shared 2-core machine, several threads per process mostly wait on each other."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fewbits.data import load_task
from fewbits.data.base import Task


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Module scope, so that the module-scoped training fixtures run with one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_mnist1d() -> Task:
    """MNIST-1D with 256 training and 128 test signals (the real generator, fewer rows)."""
    full = load_task("mnist1d")
    splits = {"train": full.splits["train"][:256], "test": full.splits["test"][:128]}
    return Task(full.name, full.kind, full.num_labels, splits, full.metric_fn, full.main_metric,
                full.label_names, dict(full.info))


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cifar-10-batches-py folder laid out as the official archive: 5 x 8 training and 8 test images."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch(n: int, title: str) -> dict:
        return {b"batch_label": title.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                b"filenames": [f"img_{i}.png".encode() for i in range(n)]}

    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", batch(8, f"training batch {i} of 5"))
    _dump(folder / "test_batch", batch(8, "testing batch 1 of 1"))
    _dump(folder / "batches.meta", {b"num_cases_per_batch": 8, b"label_names": [n.encode() for n in names],
                                    b"num_vis": 3072})
    return root
