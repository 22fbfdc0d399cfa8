"""Activations: gradient checks, closed forms, an independent reference, extreme inputs, dtypes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nnlib as nn
from tests.helpers.gradcheck import check_delta, check_module, numerical_gradient, relative_error

ALL = [
    nn.TanH,
    nn.Sigmoid,
    nn.StableSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.ReLU,
    lambda: nn.LeakyReLU(0.2),
    nn.Softplus,
]
IDS = ["TanH", "Sigmoid", "StableSigmoid", "Softmax", "LogSoftmax", "ReLU", "LeakyReLU",
       "Softplus"]


def away_from_zero(x: np.ndarray, gap: float = 1e-2) -> np.ndarray:
    """Push entries out of (-gap, gap), so eps steps never cross the ReLU kink at 0."""
    return np.where(np.abs(x) < gap, np.copysign(gap, x) + x, x)


# --- gradient checks ------------------------------------------------------------------------


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 6)])
def test_backward_delta_gradcheck(make, shape):
    x = away_from_zero(np.random.default_rng(1).normal(scale=2.0, size=shape))
    check_module(make(), x)


def test_gradcheck_catches_the_original_softmax_defect():
    """The original diagonal-only Softmax Jacobian must fail the check (the check can fail)."""

    class DiagonalSoftmax(nn.Softmax):
        def backward_delta(self, input, delta):
            s = self.forward(input)
            return delta * s * (1 - s)

    x = np.random.default_rng(2).normal(size=(3, 4))
    with pytest.raises(AssertionError, match="relative error"):
        check_delta(DiagonalSoftmax(), x)
    check_delta(nn.Softmax(), x)


def test_gradcheck_catches_a_slightly_wrong_derivative():
    """A derivative off by one part in 1e4 is caught: the tolerance is tight, not decorative."""

    class AlmostTanH(nn.TanH):
        def backward_delta(self, input, delta):
            return super().backward_delta(input, delta) * (1 + 1e-4)

    with pytest.raises(AssertionError):
        check_delta(AlmostTanH(), np.linspace(-2, 2, 12).reshape(3, 4))


def test_numerical_gradient_of_a_known_function():
    x = np.array([0.3, -1.2, 2.0])
    numerical = numerical_gradient(lambda: float(np.sum(np.sin(x) * x)), x)
    assert relative_error(numerical, np.cos(x) * x + np.sin(x)) < 1e-9
    assert np.array_equal(x, [0.3, -1.2, 2.0])  # restored after the perturbations


def test_relative_error_is_nan_safe():
    assert not relative_error(np.array([1.0]), np.array([np.nan])) <= 1e-6


# --- closed forms ---------------------------------------------------------------------------


def test_sigmoid_closed_forms():
    for cls in (nn.Sigmoid, nn.StableSigmoid):
        m = cls()
        assert m(np.array([0.0]))[0] == 0.5
        assert m.backward_delta(np.array([0.0]), np.array([1.0]))[0] == 0.25
        assert m(np.array([math.log(3)]))[0] == pytest.approx(0.75, rel=1e-15)


def test_softmax_of_equal_logits_is_uniform():
    for c in (1, 2, 7, 10):
        x = np.full((3, c), 4.2)
        np.testing.assert_allclose(nn.Softmax()(x), 1 / c, rtol=1e-15)
        np.testing.assert_allclose(nn.LogSoftmax()(x), -math.log(c), rtol=1e-15)


def test_softmax_is_shift_invariant_and_matches_a_hand_example():
    x = np.array([[0.0, math.log(2), math.log(5)]])
    np.testing.assert_allclose(nn.Softmax()(x), [[1 / 8, 2 / 8, 5 / 8]], rtol=1e-14)
    np.testing.assert_allclose(nn.Softmax()(x + 100), nn.Softmax()(x), rtol=1e-14)


def test_softplus_closed_forms():
    m = nn.Softplus()
    assert m(np.array([0.0]))[0] == pytest.approx(math.log(2), rel=1e-15)
    # precise for negative x, where log(1 + exp(x)) would round to 0
    assert m(np.array([-50.0]))[0] == pytest.approx(math.exp(-50), rel=1e-14)
    assert m(np.array([800.0]))[0] == 800.0  # no overflow above ~709
    assert m.backward_delta(np.array([0.0]), np.array([1.0]))[0] == 0.5


def test_logsoftmax_is_log_of_softmax():
    x = np.random.default_rng(3).normal(scale=3, size=(6, 5))
    # absolute tolerance: log(s) of an s near 1 is the less accurate side of the comparison
    np.testing.assert_allclose(nn.LogSoftmax()(x), np.log(nn.Softmax()(x)), rtol=1e-13,
                               atol=1e-15)
    np.testing.assert_allclose(np.exp(nn.LogSoftmax()(x)).sum(axis=-1), 1, rtol=1e-14)


def test_tanh_identities():
    x = np.linspace(-3, 3, 13)
    m = nn.TanH()
    assert m(np.array([0.0]))[0] == 0
    np.testing.assert_allclose(m(-x), -m(x), rtol=0, atol=0)  # odd function
    # tanh(x) = 2 sigmoid(2x) - 1
    np.testing.assert_allclose(m(x), 2 * nn.Sigmoid()(2 * x) - 1, atol=1e-15)
    np.testing.assert_allclose(m.backward_delta(x, np.ones_like(x)), 1 / np.cosh(x) ** 2,
                               rtol=1e-14)


def test_relu_and_leaky_relu_slopes():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(nn.ReLU()(x), [0, 0, 0, 0.5, 3])
    np.testing.assert_array_equal(nn.ReLU().backward_delta(x, np.full(5, 2.0)), [0, 0, 0, 2, 2])
    leaky = nn.LeakyReLU(alpha=0.2)
    np.testing.assert_allclose(leaky(x), [-0.6, -0.1, 0, 0.5, 3], rtol=1e-15)
    np.testing.assert_allclose(leaky.backward_delta(x, np.full(5, 2.0)),
                               [0.4, 0.4, 0.4, 2, 2], rtol=1e-15)
    assert nn.LeakyReLU().alpha == 0.01  # the default slope


# --- independent reference (scipy) ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_against_scipy(dtype):
    x = np.random.default_rng(4).normal(scale=10, size=(50, 7)).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    ref = x.astype(np.float64)
    np.testing.assert_allclose(nn.Sigmoid()(x), scipy.special.expit(ref), rtol=rtol)
    np.testing.assert_allclose(nn.StableSigmoid()(x), scipy.special.expit(ref), rtol=rtol)
    np.testing.assert_allclose(nn.Softmax()(x), scipy.special.softmax(ref, axis=-1), rtol=rtol,
                               atol=1e-30)
    # log-sum-exp rounds to the dtype's eps in absolute terms: log-probs near 0 need an atol
    np.testing.assert_allclose(nn.LogSoftmax()(x), scipy.special.log_softmax(ref, axis=-1),
                               rtol=rtol, atol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_allclose(nn.Softplus()(x), np.logaddexp(0, ref), rtol=rtol)
    np.testing.assert_allclose(nn.TanH()(x), np.tanh(ref), rtol=rtol)
    # derivatives: sigma' = expit * expit(-x); softplus' = expit
    d = np.ones_like(x)
    np.testing.assert_allclose(nn.Sigmoid().backward_delta(x, d),
                               scipy.special.expit(ref) * scipy.special.expit(-ref), rtol=rtol,
                               atol=1e-30)
    np.testing.assert_allclose(nn.Softplus().backward_delta(x, d), scipy.special.expit(ref),
                               rtol=rtol)


def test_sigmoid_derivative_is_precise_in_the_tails():
    # sigma (1 - sigma) would round to 0 at x = 40; sigma(x) sigma(-x) keeps ~4e-18.
    x = np.array([40.0, -40.0])
    np.testing.assert_allclose(nn.Sigmoid().backward_delta(x, np.ones(2)),
                               scipy.special.expit(40.0) * scipy.special.expit(-40.0),
                               rtol=1e-14)


# --- Softmax is the full Jacobian-vector product --------------------------------------------


def test_softmax_backward_is_the_full_jacobian_product():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4))
    delta = rng.normal(size=(3, 4))
    s = nn.Softmax()(x)
    for n in range(3):
        jacobian = np.diag(s[n]) - np.outer(s[n], s[n])  # J[i, j] = s_i (delta_ij - s_j)
        np.testing.assert_allclose(nn.Softmax().backward_delta(x, delta)[n],
                                   jacobian.T @ delta[n], rtol=1e-12, atol=1e-15)
        log_jacobian = np.eye(4) - s[n][None, :]  # d log s_i / d x_j = delta_ij - s_j
        np.testing.assert_allclose(nn.LogSoftmax().backward_delta(x, delta)[n],
                                   log_jacobian.T @ delta[n], rtol=1e-12, atol=1e-15)


# --- extreme inputs, dtypes, shapes ---------------------------------------------------------

EXTREMES = [
    (np.float32, 1e3),
    (np.float32, 1e30),
    (np.float32, 3e38),
    (np.float64, 1e3),
    (np.float64, 1e30),
    (np.float64, 1e300),
    (np.float64, 1.7e308),
]


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize(("dtype", "big"), EXTREMES)
def test_extreme_inputs_stay_finite_and_silent(make, dtype, big):
    # rows mixing huge values of both signs with ordinary ones, and all-huge rows
    x = np.array([[big, -big, 0.5, -0.5], [-big, -big, -big, -big], [big, big, 1.0, -big]],
                 dtype=dtype)
    delta = np.array([[1, -2, 3, 0.5], [1, 1, -1, 2], [-1, 2, 0.25, 1]], dtype=dtype)
    m = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # numpy's default error state, whatever the runner set; underflow to 0 is harmless
        with np.errstate(divide="warn", over="warn", invalid="warn", under="ignore"):
            out = m.forward(x)
            back = m.backward_delta(x, delta)
    assert np.all(np.isfinite(out)), out
    assert np.all(np.isfinite(back)), back
    assert out.dtype == dtype and back.dtype == dtype


@pytest.mark.parametrize("make", ALL, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_dtype_and_shape_preserved(make, dtype, shape):
    rng = np.random.default_rng(6)
    x = rng.normal(size=shape).astype(dtype)
    delta = rng.normal(size=shape).astype(dtype)
    m = make()
    out = m(x)
    back = m.backward_delta(x, delta)
    assert out.dtype == dtype and out.shape == shape
    assert back.dtype == dtype and back.shape == shape
    # activations have no parameters: the gradient calls are harmless no-ops
    assert m.parameters() == {} and m.gradients() == {}
    m.backward_update_gradient(x, delta)
    m.zero_grad()
    m.update_parameters(0.1)


def test_extreme_logits_give_exact_probabilities():
    x = np.array([[1e3, -1e3], [3e38, -3e38]], dtype=np.float32)
    np.testing.assert_array_equal(nn.Softmax()(x), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(nn.LogSoftmax()(x[:1]), [[0, -2e3]])
    x64 = np.array([[1e300, -1e300]])
    np.testing.assert_array_equal(nn.LogSoftmax()(x64), [[0, -2e300]])
    np.testing.assert_array_equal(nn.Sigmoid()(x64), [[1, 0]])
    np.testing.assert_array_equal(nn.Softplus()(x64), [[1e300, 0]])


def test_repr_shows_settings():
    assert repr(nn.LeakyReLU(alpha=0.2)) == "LeakyReLU(alpha=0.2)"
    assert repr(nn.LeakyReLU()) == "LeakyReLU(alpha=0.01)"
    assert repr(nn.Softmax()) == "Softmax()"
    assert repr(nn.StableSigmoid()) == "StableSigmoid()"


def test_call_is_forward():
    x = np.random.default_rng(7).normal(size=(2, 3))
    for make in ALL:
        m = make()
        np.testing.assert_array_equal(m(x), m.forward(x))


# --- properties -----------------------------------------------------------------------------

finite64 = st.floats(allow_nan=False, allow_infinity=False, width=64)
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                  elements=finite64))
def test_softmax_rows_sum_to_one(x):
    s = nn.Softmax()(x)
    assert np.all(s >= 0)
    np.testing.assert_allclose(s.sum(axis=-1), 1, rtol=1e-12)
    log_s = nn.LogSoftmax()(x)
    assert np.all(np.isfinite(log_s)) and np.all(log_s <= 0)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=8), elements=finite32))
def test_softmax_rows_sum_to_one_float32(x):
    s = nn.Softmax()(x)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s.sum(axis=-1), 1, rtol=1e-5)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=8), elements=finite64))
def test_sigmoid_bounds_and_symmetry(x):
    s = nn.Sigmoid()(x)
    assert np.all((s >= 0) & (s <= 1))
    np.testing.assert_allclose(nn.Sigmoid()(-x), 1 - s, rtol=0, atol=1e-15)
    d = nn.Sigmoid().backward_delta(x, np.ones_like(x))
    assert np.all((d >= 0) & (d <= 0.25 + 1e-16))  # rounding near x = 0 may add an ulp


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=8), elements=finite64))
def test_softplus_is_above_relu_and_below_relu_plus_log2(x):
    y = nn.Softplus()(x)
    relu = np.maximum(x, 0)
    assert np.all(y >= relu)
    assert np.all(y - relu <= math.log(2) + 1e-15)
