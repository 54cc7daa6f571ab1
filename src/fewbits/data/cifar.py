"""CIFAR-10 and CIFAR-100 from the official "python version" archives, extracted.

Layout::

    <data_dir>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <data_dir>/cifar-100-python/train, test, meta

Each batch is a pickled dict with bytes keys: ``b'data'`` uint8 (N, 3072) holding each image's
red, green and blue 32x32 planes in turn, and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'``
(CIFAR-100); the meta file holds ``b'label_names'`` / ``b'fine_label_names'``. The splits are
'train' (50,000) and 'test' (10,000) with images as stored, uint8 (32, 32, 3); ``Task.eval_split``
is 'test'. ``task.info['mean']`` and ``['std']`` are the training images' per-channel statistics
in [0, 1], which :func:`fewbits.data.make_collate` normalizes with.

Unpickling can execute code: load only files you trust, such as the archives from the CIFAR page
(https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewbits.data.base import ArraySplit, ImageExample, Task
from fewbits.data.metrics import accuracy_metrics
from fewbits.errors import FewbitsError

SIDE = 32


@dataclass(frozen=True)
class CifarSpec:
    """File names and dict keys of one CIFAR archive."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_labels: int
    archive: str


SPECS = {
    "cifar10": CifarSpec("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                         "batches.meta", b"labels", b"label_names", 10, "cifar-10-python.tar.gz"),
    "cifar100": CifarSpec("cifar-100-python", ("train",), "test", "meta", b"fine_labels", b"fine_label_names", 100,
                          "cifar-100-python.tar.gz"),
}


def _folder(spec: CifarSpec, data_dir: Path) -> Path:
    """``data_dir/<folder>``, or ``data_dir`` itself when it already holds the batches."""
    for candidate in (data_dir / spec.folder, data_dir):
        if (candidate / spec.train_files[0]).is_file():
            return candidate
    raise FewbitsError(
        f"CIFAR batches not found: neither {data_dir / spec.folder / spec.train_files[0]} nor "
        f"{data_dir / spec.train_files[0]} exists. Pass data_dir=the folder holding {spec.folder}/ "
        f"(extract {spec.archive} from https://www.cs.toronto.edu/~kriz/cifar.html there)."
    )


def _unpickle(path: Path) -> dict[bytes, Any]:
    """Load one official batch file (a pickled dict with bytes keys). Only for trusted files."""
    if not path.is_file():
        raise FewbitsError(f"CIFAR file not found: {path}. Extract the whole official archive, unchanged.")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except Exception as exc:  # truncated or foreign files fail in many ways
        raise FewbitsError(
            f"{path} is not a CIFAR batch ({type(exc).__name__}: {exc}). Re-extract the archive."
        ) from exc
    if not isinstance(data, dict):
        raise FewbitsError(f"{path} is not a CIFAR batch (a pickled dict); got {type(data).__name__}.")
    return data


def read_batch(spec: CifarSpec, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 32, 32, 3) and labels int64 (N,) of one batch file, validated."""
    data = _unpickle(path)
    missing = [k.decode() for k in (b"data", spec.label_key) if k not in data]
    if missing:
        found = ", ".join(repr(k) for k in data)
        raise FewbitsError(f"{path}: missing key(s) {missing} (found: {found}). Is this a {spec.folder} file?")
    pixels = np.asarray(data[b"data"])
    labels = np.asarray(data[spec.label_key], dtype=np.int64)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * SIDE * SIDE:
        raise FewbitsError(f"{path}: b'data' must be uint8 of shape (N, 3072); got {pixels.dtype} {pixels.shape}.")
    if len(pixels) == 0:
        raise FewbitsError(f"{path}: no examples (b'data' holds 0 images). Extract the whole official archive, unchanged.")
    if labels.shape != (len(pixels),) or (len(labels) and not 0 <= labels.min() <= labels.max() < spec.num_labels):
        raise FewbitsError(f"{path}: {spec.label_key!r} must hold {len(pixels)} class ids in 0..{spec.num_labels - 1}.")
    # channel-major rows: (N, 3, 32, 32) -> (N, 32, 32, 3)
    images = np.ascontiguousarray(pixels.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return images, labels


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1], exact, from a 256-bin histogram."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        means.append(float(mean))
        std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
        stds.append(std if std > 0 else 1.0)  # a constant channel: leave it unscaled, never divide by 0
    return tuple(means), tuple(stds)


def load_cifar(name: str, data_dir: str | Path | None) -> Task:
    """Load ``cifar10`` or ``cifar100`` from the extracted official python archive.

    >>> task = load_cifar("cifar10", "data")            # doctest: +SKIP
    >>> task.splits["train"][0].image.shape             # doctest: +SKIP
    (32, 32, 3)
    """
    spec = SPECS[name]
    if data_dir is None:
        raise FewbitsError(
            f"{name} needs data_dir: the folder holding {spec.folder}/ (extract {spec.archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html there); fewbits never downloads it."
        )
    folder = _folder(spec, Path(data_dir))
    parts = [read_batch(spec, folder / f) for f in spec.train_files]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = read_batch(spec, folder / spec.test_file)
    label_names = None
    if (folder / spec.meta_file).is_file():
        meta = _unpickle(folder / spec.meta_file)
        if spec.names_key in meta:
            label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec.names_key]]
    mean, std = channel_stats(train_images)
    splits = {
        "train": ArraySplit(train_images, train_labels, ImageExample),
        "test": ArraySplit(test_images, test_labels, ImageExample),
    }
    info = {"source": str(folder), "mean": mean, "std": std}
    return Task(name, "image", spec.num_labels, splits, accuracy_metrics, "accuracy", label_names, info)
