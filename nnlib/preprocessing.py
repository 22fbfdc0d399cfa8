"""Preprocessing layers: statistics fitted once on training data and saved with the network."""

from __future__ import annotations

import numpy as np

from .module import Module

__all__ = ["Standardize"]


class Standardize(Module):
    r"""Centre and scale each feature with statistics fitted on the training data.

    .. math::
        y = \frac{x - \mu}{\sigma}, \qquad
        \frac{\partial L}{\partial x} = \frac{\delta}{\sigma}

    :math:`\mu` and :math:`\sigma` are the per-feature mean and standard deviation set by
    :meth:`fit` (a zero deviation becomes 1, so a constant feature maps to 0). They are
    saved as the parameters ``mean`` and ``scale``, so clients send raw features, but they
    are statistics, not weights: their gradients stay zero and a training step leaves them
    alone (with one exception, see below).

    Note:
        An optimizer with weight decay would still shrink them, as it shrinks every
        parameter; ``nnlib train`` trains around them. When calling :func:`~nnlib.fit`
        with ``SGD(weight_decay=...)`` yourself, train the layers after the Standardize.

    Args:
        features: size of the last axis.
        dtype: dtype of ``mean`` and ``scale``. Default: ``np.float32``. Inputs of another
            float dtype are standardized in their own dtype.

    Shape:
        - Input: :math:`(*, \text{features})`.
        - Output: :math:`(*, \text{features})`, the shape of the input.
        - ``mean``, ``scale``: :math:`(\text{features},)`.

    Examples::

        >>> layer = Standardize(2).fit(np.array([[0.0, 5.0], [2.0, 5.0]]))
        >>> layer.predict(np.array([[1.0, 7.0]], dtype=np.float32))
        array([[0., 2.]], dtype=float32)
    """

    output_is_new = True

    def __init__(self, features: int, dtype=np.float32) -> None:
        super().__init__()
        if int(features) < 1:
            raise ValueError(f"Standardize needs a positive number of features, got {features}")
        self.features = int(features)
        self.dtype = np.dtype(dtype)
        self._add_parameter("mean", np.zeros(self.features, dtype=self.dtype))
        self._add_parameter("scale", np.ones(self.features, dtype=self.dtype))

    @property
    def mean(self) -> np.ndarray:
        return self._parameters["mean"]

    @property
    def scale(self) -> np.ndarray:
        return self._parameters["scale"]

    def fit(self, X: np.ndarray) -> Standardize:
        r"""Set ``mean`` and ``scale`` from the samples ``X`` (computed in float64); return self.

        .. math::
            \mu_j = \frac{1}{N} \sum_n x_{n,j}, \qquad
            \sigma_j = \sqrt{\frac{1}{N} \sum_n (x_{n,j} - \mu_j)^2}
            \ (1 \text{ where that is } 0)

        Args:
            X: samples of shape :math:`(*, \text{features})`, finite.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim < 1 or X.shape[-1] != self.features:
            raise ValueError(f"Standardize({self.features}) cannot fit samples of shape "
                             f"{list(X.shape)}: the last axis must have {self.features} values")
        X = X.reshape(-1, self.features)
        if len(X) == 0:
            raise ValueError("Standardize.fit needs at least one sample")
        if not np.isfinite(X).all():
            raise ValueError("Standardize.fit needs finite samples")
        self.mean[...] = X.mean(axis=0)
        scale = X.std(axis=0).astype(self.dtype)
        # Tested after the cast: a deviation that rounds to 0 in `dtype` would divide by 0.
        scale[scale == 0] = 1
        self.scale[...] = scale
        return self

    def _statistics(self, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        mean, scale = self._parameters["mean"], self._parameters["scale"]
        if dtype.kind == "f" and dtype != self.dtype:  # keep the input's float dtype
            return mean.astype(dtype), scale.astype(dtype)
        return mean, scale

    def forward(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        mean, scale = self._statistics(X.dtype)
        out = X - mean
        out /= scale
        return out

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return delta / self._statistics(delta.dtype)[1]

    def backward_update_gradient(self, input: np.ndarray, delta: np.ndarray) -> None:
        """Add nothing: ``mean`` and ``scale`` are fitted statistics, not trained."""

    def update_parameters(self, learning_rate: float = 1e-3) -> None:
        """Leave ``mean`` and ``scale`` as fitted."""

    def config(self) -> dict:
        return {"features": self.features, "dtype": self.dtype.name}
