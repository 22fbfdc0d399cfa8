"""Classification metrics: the confusion matrix and per-class precision, recall and F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["classification_report", "confusion_matrix"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the counts ``C[i, j]`` of samples of class ``i`` predicted as ``j``.

    Shape:
        - ``y_true``, ``y_pred``: :math:`(N,)` class indices in ``[0, n_classes)``.
        - Output: :math:`(\\text{n\\_classes}, \\text{n\\_classes})`, int64.
    """
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y_true * n_classes + y_pred,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray,
                          labels: Sequence[str]) -> dict:
    r"""Return accuracy, per-class precision/recall/F1/support, their macro means, and the
    confusion matrix, as plain data.

    .. math::
        P_k = \frac{C_{kk}}{\sum_i C_{ik}}, \quad
        R_k = \frac{C_{kk}}{\sum_j C_{kj}}, \quad
        F_k = \frac{2 P_k R_k}{P_k + R_k}

    A ratio whose denominator is 0 (a class never predicted, or absent) is 0, as
    scikit-learn's ``zero_division=0``.
    """
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(actual > 0, hits / actual, 0.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / (precision + recall), 0.0)
    per_class = {
        label: {"precision": float(precision[k]), "recall": float(recall[k]),
                "f1": float(f1[k]), "support": int(actual[k])}
        for k, label in enumerate(labels)
    }
    return {
        "n_samples": int(matrix.sum()),
        "accuracy": float(hits.sum() / max(1, matrix.sum())),
        "per_class": per_class,
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()),
                  "f1": float(f1.mean())},
        "confusion_matrix": matrix.tolist(),
    }
