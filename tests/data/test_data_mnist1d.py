"""MNIST-1D generated offline by the mnist1d package."""

from __future__ import annotations

import random

import numpy as np

from fewbits.data import load_task
from fewbits.data import mnist1d as fewbits_mnist1d


def test_splits_shapes_and_classes():
    task = load_task("mnist1d")
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 4000, "test": 1000}
    assert task.eval_split == "test" and task.kind == "signal" and task.num_labels == 10
    ex = task.splits["test"][0]
    assert ex.signal.shape == (40,) and ex.signal.dtype == np.float32 and isinstance(ex.label, int)
    labels = np.array([e.label for e in task.splits["train"]])
    assert np.array_equal(np.unique(labels), np.arange(10))
    assert len(task.splits["train"][10:20]) == 10


def test_generation_is_offline_seeded_and_leaves_global_rngs_alone(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to download")

    before = load_task("mnist1d").splits["train"].inputs.copy()
    monkeypatch.setattr(requests, "get", no_network)
    fewbits_mnist1d._generate.cache_clear()
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    task = load_task("mnist1d")  # generated again, without network
    assert np.random.rand() == expected_np and random.random() == expected_py
    # the package seeds its generator (seed 42 in its defaults): the same signals every time
    assert np.array_equal(task.splits["train"].inputs, before)


def test_disk_cache_round_trip(tmp_path):
    task = load_task("mnist1d", data_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [fewbits_mnist1d.CACHE_FILE]
    cached = load_task("mnist1d", data_dir=tmp_path)
    assert np.array_equal(cached.splits["test"].inputs, task.splits["test"].inputs)
    assert np.array_equal(cached.splits["test"].labels, task.splits["test"].labels)
