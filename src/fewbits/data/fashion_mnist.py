"""Fashion-MNIST (Xiao et al., 2017) from its four IDX files, gzipped or not.

Layout (the official download, and Debian's ``dataset-fashion-mnist`` package under :data:`DEBIAN_DIR`)::

    <data_dir>/train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]     60,000 images
    <data_dir>/t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]      10,000 images

An IDX file is a big-endian header (two zero bytes, the type code 0x08 for unsigned bytes, the number of
dimensions, then each dimension as a 32-bit int) followed by the values. Images are uint8 28x28 and
become ImageExamples of shape (28, 28, 1); splits are 'train' and 'test' (``Task.eval_split`` is
'test', as in the benchmark), normalized by the training images' mean and std.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fewbits.data.base import ArraySplit, ImageExample, Task
from fewbits.data.cifar import channel_stats
from fewbits.data.metrics import accuracy_metrics
from fewbits.errors import FewbitsError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
LABEL_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
INSTALL_HINT = ("install Debian's package (apt-get install dataset-fashion-mnist, files in "
                f"{DEBIAN_DIR}) or pass --data-dir, a folder holding the four IDX files of Fashion-MNIST")


def read_idx(path: str | Path) -> np.ndarray:
    """The uint8 array of one IDX file (``.gz`` read through gzip); a malformed file raises FewbitsError."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise FewbitsError(f"could not read {path} ({exc}); {INSTALL_HINT}.") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise FewbitsError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()}); {INSTALL_HINT}.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4")) if len(data) >= header else ()
    if len(shape) != ndim or len(data) - header != int(np.prod(shape)):
        raise FewbitsError(f"{path}: the header promises shape {shape} but {len(data) - header} values follow; "
                           f"the file is truncated or altered ({INSTALL_HINT}).")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise FewbitsError(f"Fashion-MNIST file not found: neither {folder / stem} nor {folder / stem}.gz exists; "
                       f"{INSTALL_HINT}.")


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 28, 28, 1) and labels int64 (N,) of 'train' or 'test', validated."""
    images_path, labels_path = (_find(folder, stem) for stem in FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise FewbitsError(f"{images_path} and {labels_path} must hold (N, H, W) images and N labels; got shapes "
                           f"{images.shape} and {labels.shape} ({INSTALL_HINT}).")
    if len(labels) and labels.max() >= len(LABEL_NAMES):
        raise FewbitsError(f"{labels_path}: labels must be class ids 0..9; found {int(labels.max())}.")
    return np.ascontiguousarray(images[..., None]), labels.astype(np.int64)


def load_fashion_mnist(data_dir: str | Path | None = None) -> Task:
    """Load Fashion-MNIST from ``data_dir`` (None: :data:`DEBIAN_DIR`, Debian's dataset-fashion-mnist).

    >>> task = load_fashion_mnist()                     # doctest: +SKIP
    >>> len(task.splits["train"]), task.splits["test"][0].image.shape   # doctest: +SKIP
    (60000, (28, 28, 1))
    """
    folder = DEBIAN_DIR if data_dir is None else Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FewbitsError(f"Fashion-MNIST folder {folder} does not exist; {INSTALL_HINT}.")
    (train_x, train_y), (test_x, test_y) = read_split(folder, "train"), read_split(folder, "test")
    mean, std = channel_stats(train_x)
    splits = {"train": ArraySplit(train_x, train_y, ImageExample), "test": ArraySplit(test_x, test_y, ImageExample)}
    info = {"source": str(folder), "mean": mean, "std": std}
    return Task("fashion-mnist", "image", len(LABEL_NAMES), splits, accuracy_metrics, "accuracy", LABEL_NAMES, info)
