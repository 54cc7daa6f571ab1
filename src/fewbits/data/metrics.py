"""The GLUE metrics, computed by scikit-learn and scipy (never re-derived here).

Every function takes ``predictions`` and ``labels`` as array-likes of equal length. Predictions
for classification may be class ids (N,) or scores/logits (N, C), which are arg-maxed; for
regression they may be (N,) or (N, 1). Correlations that are undefined (a constant input, fewer
than two rows, non-finite values) are reported as 0.0 instead of NaN, so that a model that
collapsed to one output scores "no correlation" and training loops never crash on it;
Matthews correlation is 0.0 for constant predictions, as scikit-learn defines it.

Example::

    >>> accuracy([1, 0, 1], [1, 1, 1])
    0.6666666666666666
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from fewbits.errors import FewbitsValueError

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


def _pair(predictions: object, labels: object, *, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate lengths and shapes; return (predictions, labels) as 1-D arrays."""
    p = np.asarray(predictions)
    y = np.asarray(labels)
    if regression:
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        p, y = p.astype(np.float64), y.astype(np.float64)
    elif p.ndim == 2:
        p = p.argmax(axis=1)
    if p.ndim != 1 or y.ndim != 1:
        raise FewbitsValueError(
            f"The 'predictions' parameter of the metrics must be 1-D (or (N, C) scores). "
            f"Got predictions of shape {p.shape} and labels of shape {y.shape} instead."
        )
    if len(p) != len(y) or len(p) == 0:
        raise FewbitsValueError(
            f"The 'predictions' parameter of the metrics must have as many rows as 'labels' (at least one). "
            f"Got {len(p)} predictions for {len(y)} labels instead."
        )
    if not regression:
        if p.dtype.kind == "f" and not np.all(np.isfinite(p) & (p == np.round(p))):
            raise FewbitsValueError(
                "The 'predictions' parameter of the metrics must hold class ids for a classification task. "
                f"Got non-integer values such as {p[np.argmax(p != np.round(p))]!r} instead; pass logits "
                "as an (N, C) array or arg-max them first."
            )
        p, y = p.astype(np.int64), y.astype(np.int64)
    return p, y


def accuracy(predictions: object, labels: object) -> float:
    """Fraction of predictions equal to their label."""
    p, y = _pair(predictions, labels, regression=False)
    return float(skm.accuracy_score(y, p))


def matthews_corrcoef(predictions: object, labels: object) -> float:
    """Matthews correlation (CoLA's metric); 0.0 when predictions or labels are constant."""
    p, y = _pair(predictions, labels, regression=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(skm.matthews_corrcoef(y, p))


def f1(predictions: object, labels: object) -> float:
    """F1 of the positive class 1 (MRPC, QQP); 0.0 when no row is predicted or labeled positive."""
    p, y = _pair(predictions, labels, regression=False)
    return float(skm.f1_score(y, p, pos_label=1, average="binary", zero_division=0.0))


def _correlation(fn: Callable, predictions: object, labels: object) -> float:
    p, y = _pair(predictions, labels, regression=True)
    if len(p) < 2 or not (np.all(np.isfinite(p)) and np.all(np.isfinite(y))) or np.ptp(p) == 0 or np.ptp(y) == 0:
        return 0.0  # undefined correlation: reported as none
    value = float(fn(p, y)[0])
    return value if np.isfinite(value) else 0.0


def pearson(predictions: object, labels: object) -> float:
    """Pearson correlation (STS-B); 0.0 when undefined (constant or non-finite input, < 2 rows)."""
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions: object, labels: object) -> float:
    """Spearman rank correlation (STS-B); 0.0 when undefined (constant or non-finite input, < 2 rows)."""
    return _correlation(stats.spearmanr, predictions, labels)


def accuracy_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """SST-2, MNLI, QNLI, RTE, WNLI, vader, MNIST-1D, CIFAR: {"accuracy"}."""
    return {"accuracy": accuracy(predictions, labels)}


def mcc_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """CoLA: {"mcc", "accuracy"} (GLUE scores CoLA by "mcc"; accuracy shows collapse to one class)."""
    return {"mcc": matthews_corrcoef(predictions, labels), "accuracy": accuracy(predictions, labels)}


def f1_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MRPC, QQP: {"accuracy", "f1"} as GLUE reports them."""
    return {"accuracy": accuracy(predictions, labels), "f1": f1(predictions, labels)}


def correlation_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """STS-B, vader-regression: {"pearson", "spearman"}."""
    return {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}
