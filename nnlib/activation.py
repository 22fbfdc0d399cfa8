r"""Activation modules: parameter-free, element-wise or along the last axis.

Every activation keeps the input dtype and stays finite and silent (no ``RuntimeWarning``)
for finite inputs of any magnitude. The original course library had defects that these
implementations avoid on purpose:

- ``Softmax.backward_delta`` used the Jacobian's diagonal only; here it is the full
  Jacobian-vector product.
- ``Sigmoid`` overflowed in :math:`e^{-x}` and the old ``StableSigmoid`` evaluated both
  branches of an ``np.where``; here both are computed from :math:`e^{-|x|} \in (0, 1]`.
- ``Softplus`` computed :math:`\log(1 + e^x)` literally; here it is ``logaddexp(0, x)``.
"""

from __future__ import annotations

import numpy as np

from .functional import log_softmax, sigmoid, sigmoid_derivative, softmax
from .module import Module

__all__ = [
    "LeakyReLU",
    "LogSoftmax",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "StableSigmoid",
    "TanH",
]


class TanH(Module):
    r"""Hyperbolic tangent, element-wise.

    .. math::
        \text{TanH}(x) = \tanh(x) = \frac{e^{x} - e^{-x}}{e^{x} + e^{-x}},
        \qquad \frac{\partial\, \text{TanH}}{\partial x} = 1 - \tanh^2(x)

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.tanh(X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        t = np.tanh(input)
        return delta * (1 - t * t)


class Sigmoid(Module):
    r"""Logistic sigmoid, element-wise, computed without overflow.

    .. math::
        \sigma(x) = \frac{1}{1 + e^{-x}} =
        \begin{cases}
            \frac{1}{1 + e^{-|x|}} & x \ge 0 \\
            \frac{e^{-|x|}}{1 + e^{-|x|}} & x < 0
        \end{cases},
        \qquad \sigma'(x) = \sigma(x)\,\sigma(-x) = \frac{e^{-|x|}}{(1 + e^{-|x|})^2}

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input, values in :math:`[0, 1]`.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return sigmoid(X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return delta * sigmoid_derivative(input)


class StableSigmoid(Sigmoid):
    r"""Numerically stable logistic sigmoid (the course library's name for :class:`Sigmoid`).

    .. math::
        \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)\,\sigma(-x)

    :class:`Sigmoid` is already computed from :math:`e^{-|x|}`, so the two are the same
    function; this class keeps the original API.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input.
    """


class Softmax(Module):
    r"""Softmax over the last axis.

    .. math::
        \text{Softmax}(x)_i = s_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},
        \quad m = \max_j x_j

    Its Jacobian is :math:`\partial s_i / \partial x_j = s_i(\delta_{ij} - s_j)`, so the
    back-propagated delta is the full Jacobian-vector product

    .. math::
        \frac{\partial L}{\partial x_i} = s_i \Big(\delta_i - \sum_j \delta_j s_j\Big)

    Shape:
        - Input: :math:`(*, C)`.
        - Output: :math:`(*, C)`, each row non-negative and summing to 1.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return softmax(X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        s = softmax(input)
        return s * (delta - np.sum(delta * s, axis=-1, keepdims=True))


class LogSoftmax(Module):
    r"""Logarithm of the softmax over the last axis, by the log-sum-exp trick.

    .. math::
        \text{LogSoftmax}(x)_i = x_i - m - \log \sum_j e^{x_j - m},
        \quad m = \max_j x_j

    .. math::
        \frac{\partial L}{\partial x_i} = \delta_i - s_i \sum_j \delta_j,
        \quad s = \text{Softmax}(x)

    Outputs below the dtype's smallest finite value are clamped to it.

    Shape:
        - Input: :math:`(*, C)`.
        - Output: :math:`(*, C)`, log-probabilities whose exponentials sum to 1.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return log_softmax(X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        s = np.exp(log_softmax(input))
        return delta - s * np.sum(delta, axis=-1, keepdims=True)


class ReLU(Module):
    r"""Rectified linear unit, element-wise.

    .. math::
        \text{ReLU}(x) = \max(0, x), \qquad
        \frac{\partial\, \text{ReLU}}{\partial x} = \begin{cases} 1 & x > 0 \\ 0 & x \le 0
        \end{cases}

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.maximum(X, 0)

    def predict_inplace(self, X: np.ndarray) -> np.ndarray:
        return np.maximum(X, 0, out=X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return np.where(input > 0, delta, 0)


class LeakyReLU(Module):
    r"""Leaky rectified linear unit, element-wise.

    .. math::
        \text{LeakyReLU}(x) = \begin{cases} x & x > 0 \\ \alpha x & x \le 0 \end{cases},
        \qquad
        \frac{\partial\, \text{LeakyReLU}}{\partial x} =
        \begin{cases} 1 & x > 0 \\ \alpha & x \le 0 \end{cases}

    Args:
        alpha: slope for non-positive inputs. Default: 0.01.

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.where(X > 0, X, self.alpha * X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return np.where(input > 0, delta, self.alpha * delta)

    def config(self) -> dict:
        return {"alpha": self.alpha}


class Softplus(Module):
    r"""Softplus, a smooth ReLU, element-wise, computed without overflow.

    .. math::
        \text{Softplus}(x) = \log(1 + e^{x}) = \max(x, 0) + \log(1 + e^{-|x|}),
        \qquad \text{Softplus}'(x) = \sigma(x)

    Shape:
        - Input: :math:`(*)`, any shape.
        - Output: :math:`(*)`, the shape of the input, positive.
    """

    def forward(self, X: np.ndarray) -> np.ndarray:
        return np.logaddexp(0, X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return delta * sigmoid(input)
