"""CIFAR-10/100 from small pickles written exactly like the official python archives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fewbits.data import load_task, make_collate
from fewbits.errors import FewbitsError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def batch(rng, n, label_key, num_labels, name):
    return {
        b"batch_label": name.encode(),
        label_key: [int(v) for v in rng.integers(0, num_labels, n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root, n=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    batches = [batch(rng, n, b"labels", 10, f"training batch {i} of 5") for i in range(1, 6)]
    for i, b in enumerate(batches, start=1):
        dump(folder / f"data_batch_{i}", b)
    test = batch(rng, n + 2, b"labels", 10, "testing batch 1 of 1")
    dump(folder / "test_batch", test)
    dump(folder / "batches.meta", {b"num_cases_per_batch": n, b"label_names": [s.encode() for s in CIFAR10_NAMES],
                                   b"num_vis": 3072})
    return batches, test


def test_cifar10_layout_pixels_labels_and_stats(tmp_path):
    batches, test = write_cifar10(tmp_path)
    task = load_task("cifar10", data_dir=tmp_path)
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 20, "test": 6}
    assert task.eval_split == "test" and task.num_labels == 10 and task.label_names == CIFAR10_NAMES
    ex = task.splits["train"][5]  # batch 2, row 1
    assert ex.image.shape == (32, 32, 3) and ex.image.dtype == np.uint8
    row = batches[1][b"data"][1]
    # channel-major row: red plane, then green, then blue; each plane row by row
    assert ex.image[7, 3, 0] == row[7 * 32 + 3]
    assert ex.image[7, 3, 1] == row[1024 + 7 * 32 + 3]
    assert ex.image[31, 30, 2] == row[2048 + 31 * 32 + 30]
    assert ex.label == batches[1][b"labels"][1]
    assert [e.label for e in task.splits["test"]] == test[b"labels"]
    train = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 1024) / 255.0
    assert np.allclose(task.info["mean"], train.mean(axis=(0, 2)))
    assert np.allclose(task.info["std"], train.std(axis=(0, 2)))
    # the folder itself works too
    same = load_task("cifar10", data_dir=tmp_path / "cifar-10-batches-py")
    assert np.array_equal(same.splits["test"][3].image, task.splits["test"][3].image)


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    train = batch(rng, 7, b"fine_labels", 100, "training batch 1 of 1")
    train[b"coarse_labels"] = [0] * 7
    dump(folder / "train", train)
    dump(folder / "test", {**batch(rng, 3, b"fine_labels", 100, "testing batch 1 of 1"), b"coarse_labels": [1] * 3})
    dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                           b"coarse_label_names": [b"x"] * 20})
    task = load_task("cifar100", data_dir=tmp_path)
    assert task.num_labels == 100 and len(task.splits["train"]) == 7 and len(task.splits["test"]) == 3
    assert [e.label for e in task.splits["train"]] == train[b"fine_labels"]
    assert task.label_names[42] == "c42"


def test_collate_normalizes_with_the_task_stats(tmp_path):
    write_cifar10(tmp_path)
    task = load_task("cifar10", data_dir=tmp_path)
    rows = list(task.splits["train"])
    x = make_collate(task)(rows)["x"]
    assert x.shape == (20, 3, 32, 32)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    torch.manual_seed(0)
    augmented = make_collate(task, train=True)(rows)["x"]
    assert augmented.shape == x.shape and not torch.equal(augmented, x)


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FewbitsError, match="cifar10 needs data_dir: the folder holding cifar-10-batches-py/"):
        load_task("cifar10")
    with pytest.raises(FewbitsError, match=r"CIFAR batches not found: .*cifar-10-batches-py/data_batch_1"):
        load_task("cifar10", data_dir=tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FewbitsError, match=r"CIFAR file not found: .*data_batch_3"):
        load_task("cifar10", data_dir=tmp_path)
    rng = np.random.default_rng(0)
    dump(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": batch(rng, 2, b"labels", 10, "")[b"data"]})
    with pytest.raises(FewbitsError, match=r"data_batch_3: missing key\(s\) \['labels'\]"):
        load_task("cifar10", data_dir=tmp_path)
    dump(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    with pytest.raises(FewbitsError, match=r"b'data' must be uint8 of shape \(N, 3072\)"):
        load_task("cifar10", data_dir=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(FewbitsError, match="data_batch_3 is not a CIFAR batch"):
        load_task("cifar10", data_dir=tmp_path)
    with pytest.raises(FewbitsError, match="takes no options"):
        load_task("cifar10", data_dir=tmp_path, seed=1)
