"""Fashion-MNIST from IDX files the tests write (gzipped or not), in the official layout."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fewbits.data import load_task, make_collate
from fewbits.data import fashion_mnist as F
from fewbits.errors import FewbitsError


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, type 0x08, ndim, big-endian dims, values."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_set(tmp_path, gz=gz)
    task = load_task("fashion-mnist", tmp_path)
    assert (task.kind, task.num_labels, task.eval_split, task.main_metric) == ("image", 10, "test", "accuracy")
    assert len(task.splits["train"]) == 12 and len(task.splits["test"]) == 5
    first = task.splits["test"][0]
    assert first.image.shape == (28, 28, 1) and first.label == 4
    assert np.array_equal(first.image[..., 0], arrays["t10k-images-idx3-ubyte"][0])
    pixels = arrays["train-images-idx3-ubyte"] / 255.0
    assert task.info["mean"] == pytest.approx((pixels.mean(),)) and task.info["std"] == pytest.approx((pixels.std(),))
    assert task.label_names[9] == "Ankle boot"
    batch = make_collate(task)([task.splits["train"][i] for i in range(4)])
    assert batch["x"].shape == (4, 1, 28, 28) and batch["labels"].tolist() == [0, 1, 2, 3]


def test_read_idx_exact(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert np.array_equal(F.read_idx(tmp_path / "a"), array)


def test_malformed_idx(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((2, 3), np.uint8))
    cases = {"float": bytes([0, 0, 0x0D, 1]) + good[4:], "short": good[:-1], "header": b"\0\0",
             "magic": b"\1" + good[1:]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(FewbitsError, match="not an IDX file of unsigned bytes"):
        F.read_idx(tmp_path / "float")
    with pytest.raises(FewbitsError, match=r"promises shape \(2, 3\) but 5 values follow"):
        F.read_idx(tmp_path / "short")
    with pytest.raises(FewbitsError, match="not an IDX file"):
        F.read_idx(tmp_path / "header")
    with pytest.raises(FewbitsError, match="not an IDX file"):
        F.read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(FewbitsError, match="could not read .*bad.gz"):
        F.read_idx(tmp_path / "bad.gz")


def test_missing_or_inconsistent_files(tmp_path: Path) -> None:
    with pytest.raises(FewbitsError, match="does not exist; install Debian's package .*apt-get install "
                                           "dataset-fashion-mnist"):
        load_task("fashion-mnist", tmp_path / "nowhere")
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FewbitsError, match="neither .*t10k-labels-idx1-ubyte nor .*t10k-labels-idx1-ubyte.gz"):
        load_task("fashion-mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(FewbitsError, match=r"shapes \(5, 28, 28\) and \(4,\)"):
        load_task("fashion-mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(5, 10, np.uint8)))
    with pytest.raises(FewbitsError, match="class ids 0..9; found 10"):
        load_task("fashion-mnist", tmp_path)


@pytest.mark.skipif(not (F.DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist not installed")
def test_debian_package_default() -> None:
    task = load_task("fashion-mnist")
    assert len(task.splits["train"]) == 60_000 and len(task.splits["test"]) == 10_000
    assert np.bincount(task.splits["test"].labels).tolist() == [1000] * 10
