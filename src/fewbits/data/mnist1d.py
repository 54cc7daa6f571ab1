"""MNIST-1D (Greydanus, 2020), generated offline by the ``mnist1d`` package.

``make_dataset`` with the package's default arguments (5,000 signals of length 40, 10 classes,
seed 42) is called directly: the package's ``get_dataset`` would try to download a pickle first.
Splits are the package's own: 'train' (4,000) and 'test' (1,000); there is no 'dev', so
``Task.eval_split`` is 'test', as in the MNIST-1D paper. Generation takes about 1.5 s, so the
arrays are cached in memory per process, and on disk as ``.npz`` (no pickle) when ``data_dir``
names a cache folder.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from fewbits.data.base import ArraySplit, SignalExample, Task
from fewbits.data.metrics import accuracy_metrics

log = logging.getLogger(__name__)

CACHE_FILE = "mnist1d_default.npz"
_KEYS = ("x", "y", "x_test", "y_test")


@functools.lru_cache(maxsize=1)
def _generate() -> dict[str, np.ndarray]:
    """Run mnist1d's make_dataset with default args, leaving the global RNGs as they were."""
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset reseeds numpy's and python's global RNGs
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = {k: np.ascontiguousarray(data[k], dtype=np.float32 if k.startswith("x") else np.int64) for k in _KEYS}
    for array in out.values():
        array.flags.writeable = False
    return out


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays when ``path`` holds well-formed MNIST-1D arrays, else None (damaged or foreign)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not all(k in f.files for k in _KEYS):
                return None
            data = {k: f[k] for k in _KEYS}
    except Exception:  # noqa: BLE001 - zip, npy and OS errors of a damaged file all mean "regenerate"
        return None
    for x, y in ((data["x"], data["y"]), (data["x_test"], data["y_test"])):
        if (x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or y.shape != (len(x),) or not len(x)
                or x.shape[1] != data["x"].shape[1] or y.min() < 0 or y.max() > 9):
            return None
    return data


def _cached(cache_dir: Path) -> dict[str, np.ndarray]:
    """Read the arrays from ``cache_dir``, writing them there first (atomically) if absent or damaged."""
    path = cache_dir / CACHE_FILE
    if path.is_file() and (data := _read_cache(path)) is not None:
        return data
    if path.exists():
        log.warning("%s: damaged or stale MNIST-1D cache, written again", path)
    data = _generate()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".mnist1d-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return data


def load_mnist1d(data_dir: str | Path | None = None) -> Task:
    """Load MNIST-1D: SignalExample(signal float32 (40,), label 0..9), splits 'train' and 'test'.

    >>> task = load_mnist1d()
    >>> len(task.splits["train"]), task.splits["test"][0].signal.shape
    (4000, (40,))
    """
    data = _generate() if data_dir is None else _cached(Path(data_dir))
    splits = {
        "train": ArraySplit(data["x"], data["y"], SignalExample),
        "test": ArraySplit(data["x_test"], data["y_test"], SignalExample),
    }
    info = {"source": "mnist1d.make_dataset (default args)", "length": int(data["x"].shape[1])}
    return Task("mnist1d", "signal", 10, splits, accuracy_metrics, "accuracy", [str(d) for d in range(10)], info)
