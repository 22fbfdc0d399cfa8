"""Fully connected layer."""

from __future__ import annotations

import numpy as np

from .module import Module, WeightedModule

_FLOAT32 = np.dtype(np.float32)


class Linear(WeightedModule):
    r"""Affine map of the last axis: :math:`y = xW + b`.

    .. math::
        y = x W + b, \qquad
        \frac{\partial L}{\partial W} = x^\top \delta, \quad
        \frac{\partial L}{\partial b} = \textstyle\sum_n \delta_n, \quad
        \frac{\partial L}{\partial x} = \delta W^\top

    Weights and bias start uniform in :math:`[-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}}]`, as
    PyTorch's default initialisation.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias. Default: ``True``.
        dtype: dtype of the parameters. Default: ``np.float32``.
        rng: a ``numpy.random.Generator`` or a seed for the initialisation.

    Shape:
        - Input: :math:`(N, \text{in})`.
        - Output: :math:`(N, \text{out})`.
        - ``weight``: :math:`(\text{in}, \text{out})`; ``bias``: :math:`(\text{out},)`.
    """

    output_is_new = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype=np.float32,
        *,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear needs positive sizes, got {in_features}, {out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self._init_parameters((self.in_features, self.out_features), self.in_features, bias,
                              dtype, rng)

    def forward(self, X: np.ndarray) -> np.ndarray:
        params = self._parameters
        weight, bias = params["weight"], params.get("bias")
        # ndarray.dot reaches BLAS with less dispatch than the matmul operator (0.7 µs less
        # per call at batch 1) and gives the same numbers for 2-D inputs.
        try:
            out = X.dot(weight) if X.ndim == 2 else X @ weight
        except AttributeError:  # not an array: @ converts it
            out = X @ weight
        if bias is not None:
            out += bias
        return out

    def backward_update_gradient(self, input: np.ndarray, delta: np.ndarray) -> None:
        self._gradients["weight"] += input.T @ delta
        if self.bias is not None:
            self._gradients["bias"] += delta.sum(axis=0)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return delta @ self.weight.T

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "dtype": self.dtype.name,
        }


class Scale(Module):
    r"""Multiply by a fixed factor: parameter-free preprocessing saved with the network.

    .. math:: y = a x, \qquad \frac{\partial L}{\partial x} = a \delta

    A network trained on pixels scaled to :math:`[0, 1]` starts with ``Scale(1 / 16)`` so
    clients send the raw values.

    Args:
        factor: the constant :math:`a`.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input.
    """

    output_is_new = True

    def __init__(self, factor: float) -> None:
        super().__init__()
        self._factor = float(factor)
        self._factor32 = np.float32(self._factor)

    @property
    def factor(self) -> float:
        return self._factor

    def forward(self, X: np.ndarray) -> np.ndarray:
        # A Python float keeps float32 arrays float32 and promotes integer arrays to float;
        # X.dtype.type(factor) truncated the factor to 0 for integer pixels. For float32
        # arrays the float32 constant gives the same product without converting the Python
        # float on every call.
        return X * (self._factor32 if X.dtype is _FLOAT32 else self._factor)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return delta * delta.dtype.type(self.factor)

    def config(self) -> dict:
        return {"factor": self.factor}
