r"""Losses: ``forward(y, yhat)`` gives one value per sample, ``backward(y, yhat)`` the gradient
of their sum with respect to ``yhat``.

``y`` is one-hot (or any target distribution) with the shape of ``yhat``; integer class
labels of shape :math:`(N,)` are accepted too and one-hot encoded.
"""

from __future__ import annotations

import numpy as np

from .functional import log_softmax

__all__ = ["BCELoss", "CrossEntropyLoss", "Loss", "MSELoss", "NLLLoss"]


def one_hot(labels: np.ndarray, n_classes: int, dtype=np.float32) -> np.ndarray:
    """Return the one-hot encoding (N, n_classes) of integer labels (N,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("class labels must be a 1-D integer array")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"class labels must lie in [0, {n_classes})")
    out = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


class Loss:
    """Base class of the losses."""

    def forward(self, y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
        """Return the loss of each sample, shape (N,)."""
        raise NotImplementedError

    def backward(self, y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
        """Return the gradient of the summed loss w.r.t. ``yhat`` (shape of ``yhat``)."""
        raise NotImplementedError

    def __call__(self, y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
        return self.forward(y, yhat)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @staticmethod
    def _targets(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim == yhat.ndim - 1 and np.issubdtype(y.dtype, np.integer):
            # one label per sample: a single label would otherwise broadcast over the batch
            if y.shape != yhat.shape[:-1]:
                raise ValueError(f"label shape {y.shape} does not match prediction {yhat.shape}")
            return one_hot(y, yhat.shape[-1], dtype=yhat.dtype)
        if y.shape != yhat.shape:
            raise ValueError(f"target shape {y.shape} does not match prediction {yhat.shape}")
        return y.astype(yhat.dtype, copy=False)


class MSELoss(Loss):
    r"""Squared error summed over the features of each sample.

    .. math:: \ell_n = \sum_i (y_{n,i} - \hat y_{n,i})^2, \qquad
        \frac{\partial \ell_n}{\partial \hat y_{n,i}} = 2(\hat y_{n,i} - y_{n,i})

    Shape: ``yhat`` :math:`(N, C)`, ``y`` :math:`(N, C)`; output :math:`(N,)`.
    """

    def forward(self, y, yhat):
        diff = yhat - self._targets(y, yhat)
        return np.sum(diff * diff, axis=-1)

    def backward(self, y, yhat):
        return 2 * (yhat - self._targets(y, yhat))


class BCELoss(Loss):
    r"""Binary cross-entropy on probabilities, logs clamped at -100 (as PyTorch).

    .. math:: \ell_n = -\sum_i \big[y_{n,i} \max(\log \hat y_{n,i}, -100)
        + (1 - y_{n,i}) \max(\log(1 - \hat y_{n,i}), -100)\big]

    .. math:: \frac{\partial \ell_n}{\partial \hat y_{n,i}} =
        \frac{\hat y_{n,i} - y_{n,i}}{\max(\hat y_{n,i}(1 - \hat y_{n,i}), 10^{-12})}

    Finite for :math:`\hat y` exactly 0 or 1.

    Shape: ``yhat`` :math:`(N, C)` in :math:`[0, 1]`, ``y`` :math:`(N, C)`; output :math:`(N,)`.
    """

    def forward(self, y, yhat):
        y = self._targets(y, yhat)
        with np.errstate(divide="ignore"):  # log(0) = -inf is clamped just below
            log_p = np.maximum(np.log(yhat), -100)
            log_q = np.maximum(np.log1p(-yhat), -100)
        return -np.sum(y * log_p + (1 - y) * log_q, axis=-1)

    def backward(self, y, yhat):
        y = self._targets(y, yhat)
        return (yhat - y) / np.maximum(yhat * (1 - yhat), 1e-12)


class CrossEntropyLoss(Loss):
    r"""Cross-entropy from logits, with a fused and stable log-softmax.

    .. math:: \ell_n = -\sum_i y_{n,i} \log \operatorname{softmax}(\hat y_n)_i, \qquad
        \frac{\partial \ell_n}{\partial \hat y_{n,i}} =
        \operatorname{softmax}(\hat y_n)_i \sum_j y_{n,j} - y_{n,i}

    Shape: ``yhat`` :math:`(N, C)` logits, ``y`` :math:`(N, C)`; output :math:`(N,)`.
    """

    def forward(self, y, yhat):
        return -np.add.reduce(self._targets(y, yhat) * log_softmax(yhat), axis=-1)

    def backward(self, y, yhat):
        y = self._targets(y, yhat)
        s = np.exp(log_softmax(yhat))
        return s * np.add.reduce(y, axis=-1, keepdims=True) - y


class NLLLoss(Loss):
    r"""Negative log-likelihood of log-probabilities (the output of ``LogSoftmax``).

    .. math:: \ell_n = -\sum_i y_{n,i} \hat y_{n,i}, \qquad
        \frac{\partial \ell_n}{\partial \hat y_{n,i}} = -y_{n,i}

    Shape: ``yhat`` :math:`(N, C)` log-probabilities, ``y`` :math:`(N, C)`; output :math:`(N,)`.
    """

    def forward(self, y, yhat):
        return -np.add.reduce(self._targets(y, yhat) * yhat, axis=-1)

    def backward(self, y, yhat):
        return -self._targets(y, yhat)
