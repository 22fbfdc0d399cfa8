"""Central finite-difference gradient checks in float64 (eps 1e-6, as torch.autograd.gradcheck).

Every check reduces the output to a scalar with a random linear functional
``f(x) = sum(out * R)``: its gradient w.r.t. the output is ``R`` itself, so feeding ``R`` as
the back-propagated delta exercises the full Jacobian (off-diagonal terms included), not just
its diagonal as ``R = 1`` would for element-wise-looking bugs.

The error is norm-wise: ``max|num - ana| / max(max|num|, max|ana|, floor)``. An element-wise
ratio would blow up on gradient entries that are tiny next to the round-off of the difference
quotient (about ``1e-16 * |f| / eps``); the floor only matters when the true gradient is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPS = 1e-6
TOL = 1e-6
FLOOR = 1e-10


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Return d f() / d x by central differences, perturbing ``x`` in place (restored)."""
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays, got {x.dtype}")
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        f_plus = f()
        x[index] = original - eps
        f_minus = f()
        x[index] = original
        grad[index] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(numerical: np.ndarray, analytic: np.ndarray, floor: float = FLOOR) -> float:
    """Return ``max|num - ana| / max(max|num|, max|ana|, floor)``."""
    if numerical.shape != analytic.shape:
        raise AssertionError(f"gradient shape {analytic.shape} != expected {numerical.shape}")
    scale = max(np.max(np.abs(numerical), initial=0), np.max(np.abs(analytic), initial=0), floor)
    return float(np.max(np.abs(numerical - analytic), initial=0) / scale)


def assert_gradient(numerical: np.ndarray, analytic: np.ndarray, what: str,
                    tol: float = TOL) -> float:
    """Raise AssertionError when the relative error exceeds ``tol``; return the error."""
    error = relative_error(numerical, analytic)
    if not error <= tol:  # `not <=` also catches NaN
        raise AssertionError(f"{what}: relative error {error:.3e} > {tol:.0e}\n"
                             f"numerical={numerical}\nanalytic={analytic}")
    return error


def _probe(module, x: np.ndarray, seed: int) -> np.ndarray:
    """Return the random weights R of the functional sum(out * R), shaped like the output."""
    return np.random.default_rng(seed).standard_normal(module.forward(x).shape)


def check_delta(module, x: np.ndarray, seed: int = 0, tol: float = TOL) -> float:
    """Check ``module.backward_delta`` at ``x`` against finite differences."""
    x = np.array(x, dtype=np.float64)
    R = _probe(module, x, seed)
    module.forward(x)  # a Sequential reads its forward cache
    analytic = module.backward_delta(x, R)
    probe = x.copy()  # perturbed in place: keep `x` (and any cache pointing to it) intact
    numerical = numerical_gradient(lambda: float(np.sum(module.forward(probe) * R)), probe)
    return assert_gradient(numerical, analytic, f"{module!r} backward_delta", tol)


def check_parameters(module, x: np.ndarray, seed: int = 0,
                     tol: float = TOL) -> dict[str, float]:
    """Check every parameter gradient of ``backward_update_gradient`` at ``x``.

    The gradients accumulate, so they are zeroed first. Parameters must be float64.
    """
    x = np.array(x, dtype=np.float64)
    R = _probe(module, x, seed)
    params = module.parameters()
    if not params:
        raise AssertionError(f"{module!r} has no parameters to check")
    module.zero_grad()
    module.forward(x)
    module.backward_update_gradient(x, R)
    analytic = {name: grad.copy() for name, grad in module.gradients().items()}
    if analytic.keys() != params.keys():
        raise AssertionError(f"gradients() keys {sorted(analytic)} != {sorted(params)}")
    errors = {}
    for name, param in params.items():
        numerical = numerical_gradient(lambda: float(np.sum(module.forward(x) * R)), param)
        errors[name] = assert_gradient(numerical, analytic[name], f"{module!r} grad of {name}",
                                       tol)
    return errors


def check_module(module, x: np.ndarray, seed: int = 0, tol: float = TOL) -> dict[str, float]:
    """Check ``backward_delta`` and, if any, every parameter gradient; return the errors."""
    errors = {"delta": check_delta(module, x, seed, tol)}
    if module.parameters():
        errors.update(check_parameters(module, x, seed, tol))
    return errors


def check_loss(loss, y: np.ndarray, yhat: np.ndarray, tol: float = TOL) -> float:
    """Check ``loss.backward(y, yhat)`` against the gradient of ``sum(loss.forward(y, yhat))``."""
    yhat = np.array(yhat, dtype=np.float64)
    analytic = loss.backward(y, yhat)
    probe = yhat.copy()
    numerical = numerical_gradient(lambda: float(np.sum(loss.forward(y, probe))), probe)
    return assert_gradient(numerical, analytic, f"{loss!r} backward", tol)
