"""Each metric against a value worked out by hand, plus the degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewbits.data import metrics
from fewbits.errors import FewbitsValueError


def test_accuracy_by_hand():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_matthews_by_hand():
    # TP=2 FP=1 TN=2 FN=0: (2*2 - 1*0) / sqrt(3*2*3*2) = 4/6
    assert metrics.matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(4 / 6)


def test_f1_of_positive_class_by_hand():
    # precision 2/3, recall 1 -> 2 * (2/3) / (5/3) = 0.8
    assert metrics.f1([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(0.8)
    # the positive class is 1, not the majority class: swapping classes changes F1
    assert metrics.f1([0, 0, 1, 1, 0], [0, 1, 1, 1, 0]) == pytest.approx(0.8)
    assert metrics.f1([1, 1, 0, 0, 1], [1, 1, 1, 0, 1]) == pytest.approx(2 * 1 * 0.75 / 1.75)


def test_pearson_by_hand():
    # deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 14/3) = sqrt(27/28)
    assert metrics.pearson([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(math.sqrt(27 / 28))


def test_spearman_by_hand():
    # ranks differ by (0, 1, -1, 0): 1 - 6*2 / (4*(16-1)) = 0.8
    assert metrics.spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)


def test_degenerate_cases_are_zero_not_nan():
    assert metrics.matthews_corrcoef([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0
    assert metrics.f1([0, 0, 0], [0, 0, 0]) == 0.0
    assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert metrics.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert metrics.pearson([1.0], [2.0]) == 0.0
    assert metrics.pearson([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]) == 0.0


def test_logits_are_argmaxed_and_regression_column_squeezed():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5]])
    assert metrics.accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    assert metrics.pearson(np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 4.0]) == pytest.approx(math.sqrt(27 / 28))


def test_task_metric_sets():
    assert set(metrics.mcc_metrics(np.array([1, 0]), np.array([1, 0]))) == {"mcc", "accuracy"}
    assert metrics.f1_metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 0, 1])) == pytest.approx(
        {"accuracy": 0.8, "f1": 0.8}
    )
    assert metrics.correlation_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(
        {"pearson": 1.0, "spearman": 1.0}
    )


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(FewbitsValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([1, 0, 1], [1, 0])
    with pytest.raises(FewbitsValueError, match="class ids"):
        metrics.accuracy([0.5, 1.0], [1, 0])
    with pytest.raises(FewbitsValueError, match="at least one"):
        metrics.f1([], [])
