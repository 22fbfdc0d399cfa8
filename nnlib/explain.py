r"""Input attributions from a network's own backward pass: gradients and integrated gradients.

Everything here runs the layers one by one, keeping each layer's input in local variables,
and calls each layer's ``backward_delta(input, delta)`` in reverse. It never uses
:meth:`Sequential.forward`'s cache (``Sequential._inputs``), so any number of threads may
explain and predict with one network at once: every nnlib layer's ``forward`` and
``backward_delta`` are pure functions of their arguments and the parameters.

Examples::

    >>> probabilities, gradient = nnlib.probability_gradient(net, X, targets)
    >>> attributions, p_x, p_baseline = nnlib.integrated_gradients(net, X, targets)
    >>> # completeness: attributions.reshape(len(X), -1).sum(1) ~ p_x - p_baseline
"""

from __future__ import annotations

import numpy as np

from .module import Module, Sequential

__all__ = ["DEFAULT_STEPS", "input_gradient", "integrated_gradients", "probability_gradient"]

#: Trapezoidal intervals of :func:`integrated_gradients` when none are given.
DEFAULT_STEPS = 128
#: Interpolated samples run through the network in one pass: bounds the memory of one
#: chunk to a few megabytes for networks of this size, whatever ``len(X) * steps`` is.
CHUNK_ROWS = 4096

HEADS = ("softmax", "log_softmax")


def _layers(network: Module) -> list[Module]:
    """Return the chain of leaf modules, nested Sequentials unrolled (their cache unused)."""
    if not isinstance(network, Sequential):
        return [network]
    return [leaf for module in network.modules for leaf in _layers(module)]


def _forward(layers: list[Module], X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Return every layer's input (locals of this call, never a cache) and the output."""
    inputs = []
    for layer in layers:
        inputs.append(X)
        X = layer.forward(X)
    return inputs, X


def _backward(layers: list[Module], inputs: list[np.ndarray], delta: np.ndarray) -> np.ndarray:
    for layer, x in zip(reversed(layers), reversed(inputs), strict=True):
        delta = layer.backward_delta(x, delta)
    return delta


def input_gradient(network: Module, X: np.ndarray, grad_output: np.ndarray) -> np.ndarray:
    r"""Return the vector-Jacobian product of the network at ``X`` with ``grad_output``.

    .. math::
        g_{n} = \frac{\partial}{\partial x_{n}} \sum_{c} f(x)_{n,c}\, \delta_{n,c}
        = J_f(x_n)^\top \delta_n

    computed by each layer's ``backward_delta`` through the chain, thread-safe (no cached
    activation is read or written).

    Shape:
        - ``X``: :math:`(N, *)`, the network's input.
        - ``grad_output``: the shape of the network's output, e.g. :math:`(N, C)`.
        - Output: the shape of ``X``.
    """
    layers = _layers(network)
    inputs, out = _forward(layers, X)
    if np.shape(grad_output) != out.shape:
        raise ValueError(f"grad_output has shape {list(np.shape(grad_output))}; the network's "
                         f"output has {list(out.shape)}")
    return _backward(layers, inputs, np.asarray(grad_output, dtype=out.dtype))


def _targets(targets, n: int, n_classes: int) -> np.ndarray:
    targets = np.broadcast_to(np.asarray(targets), (n,))
    if targets.dtype.kind not in "iu" or ((targets < 0) | (targets >= n_classes)).any():
        raise ValueError(f"targets must be class indices in 0..{n_classes - 1}")
    return targets.astype(np.intp)


def probability_gradient(network: Module, X: np.ndarray, targets, head: str = "softmax",
                         ) -> tuple[np.ndarray, np.ndarray]:
    r"""Return the class probabilities at ``X`` and the gradient of each target's probability.

    With :math:`p = \text{Softmax}` output (``head="softmax"``) or :math:`p = e^{f(x)}` of a
    LogSoftmax output (``head="log_softmax"``), for the target class :math:`t_n` of sample n:

    .. math::
        \frac{\partial p_{t}}{\partial x} = J_f(x)^\top e_{t} \quad\text{(softmax)},
        \qquad
        \frac{\partial p_{t}}{\partial x} = p_t\, \frac{\partial \log p_t}{\partial x}
        = J_f(x)^\top (p_t\, e_{t}) \quad\text{(log-softmax)}

    through the network's own preprocessing layers, so the gradient is with respect to the
    raw input. One forward and one backward pass.

    Shape:
        - ``X``: :math:`(N, *)`; ``targets``: :math:`(N,)` class indices (or one for all).
        - Output: probabilities :math:`(N, C)` and the gradient, the shape of ``X``.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    layers = _layers(network)
    inputs, out = _forward(layers, X)
    probs = np.exp(out) if head == "log_softmax" else out
    rows = np.arange(len(out))
    targets = _targets(targets, len(out), out.shape[-1])
    seed = np.zeros_like(out)
    seed[rows, targets] = probs[rows, targets] if head == "log_softmax" else 1
    return probs, _backward(layers, inputs, seed)


def integrated_gradients(network: Module, X: np.ndarray, targets, baseline=None,
                         steps: int = DEFAULT_STEPS, head: str = "softmax",
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Return the integrated gradients (Sundararajan et al., 2017) of the target probability.

    For sample :math:`x`, baseline :math:`x'` and the target probability :math:`p_t`,

    .. math::
        \text{IG}_i(x) = (x_i - x'_i) \int_0^1
            \frac{\partial p_t}{\partial x_i}\big(x' + \alpha (x - x')\big)\, d\alpha
        \approx (x_i - x'_i) \sum_{k=0}^{m} w_k\,
            \frac{\partial p_t}{\partial x_i}\Big(x' + \tfrac{k}{m} (x - x')\Big)

    with the trapezoidal rule on :math:`m` = ``steps`` intervals
    (:math:`w_0 = w_m = \tfrac{1}{2m}`, otherwise :math:`w_k = \tfrac{1}{m}`), so
    ``steps + 1`` gradients per sample, run in chunks of at most :data:`CHUNK_ROWS` rows.
    Completeness: :math:`\sum_i \text{IG}_i(x) = p_t(x) - p_t(x')` exactly for the
    integral; the rule's error shrinks as :math:`1/m^2` where the network is smooth along
    the path (and as :math:`1/m` across ReLU kinks).

    Args:
        baseline: one sample of ``X``'s sample shape, or one per sample; zeros when None.
        steps: :math:`m \ge 1`.

    Shape:
        - ``X``: :math:`(N, *)`; ``targets``: :math:`(N,)` class indices (or one for all).
        - Output: attributions (the shape of ``X``), :math:`p_t(x)` and :math:`p_t(x')`,
          each :math:`(N,)`.
    """
    X = np.asarray(X)
    if X.dtype.kind != "f":
        X = X.astype(np.float64)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    n, sample_shape = len(X), X.shape[1:]
    if baseline is None:
        baseline = np.zeros(sample_shape, dtype=X.dtype)
    baseline = np.asarray(baseline, dtype=X.dtype)
    if baseline.shape == sample_shape:
        baseline = np.broadcast_to(baseline, X.shape)
    if baseline.shape != X.shape:
        raise ValueError(f"baseline has shape {list(baseline.shape)}; it must be one sample "
                         f"{list(sample_shape)} or one per sample {list(X.shape)}")
    alphas_grid = np.linspace(0, 1, steps + 1, dtype=X.dtype).reshape(
        1, steps + 1, *([1] * len(sample_shape)))
    weights = np.full(steps + 1, 1 / steps, dtype=np.float64)
    weights[[0, -1]] /= 2
    total = np.zeros(X.shape, dtype=np.float64)
    p_target = np.empty(n, dtype=np.float64)
    p_baseline = np.empty(n, dtype=np.float64)
    per_chunk = max(1, CHUNK_ROWS // (steps + 1))  # samples whose whole path fits a chunk
    for start in range(0, n, per_chunk):
        x, x0 = X[start:start + per_chunk], baseline[start:start + per_chunk]
        t = np.broadcast_to(np.asarray(targets), (n,))[start:start + per_chunk]
        diff = x - x0
        path = x0[:, None] + alphas_grid * diff[:, None]  # (b, steps + 1, *)
        probs, grads = probability_gradient(network, path.reshape(-1, *sample_shape),
                                            np.repeat(t, steps + 1), head)
        grads = grads.reshape(len(x), steps + 1, *sample_shape).astype(np.float64)
        total[start:start + len(x)] = diff * np.tensordot(weights, grads, axes=([0], [1]))
        rows = np.arange(len(x)) * (steps + 1)
        chosen = probs[np.arange(len(probs)), np.repeat(t, steps + 1)]
        p_target[start:start + len(x)] = chosen[rows + steps]
        p_baseline[start:start + len(x)] = chosen[rows]
    return total.astype(X.dtype, copy=False), p_target, p_baseline
