"""Losses: per-sample values against independent computations, gradients of the sum, targets."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special

import nnlib as nn
from tests.helpers.gradcheck import check_loss

LOSSES = [nn.MSELoss, nn.BCELoss, nn.CrossEntropyLoss, nn.NLLLoss]
LOSS_IDS = ["MSE", "BCE", "CrossEntropy", "NLL"]


def sample(loss_cls, n=5, c=4, seed=0):
    """Return (one-hot y, a valid yhat) for ``loss_cls``: probabilities, logits or log-probs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    y = np.eye(c)[labels]
    if loss_cls is nn.BCELoss:
        yhat = rng.uniform(0.05, 0.95, size=(n, c))  # away from 0 and 1, where BCE is steep
    elif loss_cls is nn.NLLLoss:
        yhat = scipy.special.log_softmax(rng.normal(size=(n, c)), axis=-1)
    else:
        yhat = rng.normal(scale=2, size=(n, c))
    return labels, y, yhat


def bce_reference(y, p):
    """Binary cross-entropy summed over features, one math.log at a time, logs floored at -100."""

    def clamped_log(v):
        return -100.0 if v <= 0 else max(math.log(v), -100.0)

    return np.array([
        -sum(t * clamped_log(q) + (1 - t) * clamped_log(1 - q) for t, q in zip(row_y, row_p,
                                                                                strict=True))
        for row_y, row_p in zip(y, p, strict=True)
    ])


# --- gradients of the summed loss -----------------------------------------------------------


@pytest.mark.parametrize("loss_cls", LOSSES, ids=LOSS_IDS)
def test_backward_is_gradient_of_the_sum(loss_cls):
    _, y, yhat = sample(loss_cls)
    check_loss(loss_cls(), y, yhat)


@pytest.mark.parametrize("loss_cls", LOSSES, ids=LOSS_IDS)
def test_backward_with_soft_targets(loss_cls):
    # targets that are not one-hot (label smoothing, BCE soft labels) exercise every term
    rng = np.random.default_rng(1)
    _, _, yhat = sample(loss_cls, seed=1)
    y = rng.dirichlet(np.ones(4), size=5) * rng.uniform(0.5, 1.5, size=(5, 1))
    check_loss(loss_cls(), y, yhat)


def test_gradcheck_catches_the_gradient_of_the_mean():
    """A backward that returns the gradient of the mean instead of the sum fails the check."""

    class MeanMSE(nn.MSELoss):
        def backward(self, y, yhat):
            return super().backward(y, yhat) / len(yhat)

    _, y, yhat = sample(nn.MSELoss)
    with pytest.raises(AssertionError):
        check_loss(MeanMSE(), y, yhat)


@pytest.mark.parametrize("loss_cls", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_and_dtypes(loss_cls, dtype):
    _, y, yhat = sample(loss_cls, n=6, c=3)
    yhat = yhat.astype(dtype)
    out = loss_cls().forward(y, yhat)
    grad = loss_cls().backward(y, yhat)
    assert out.shape == (6,) and out.dtype == dtype
    assert grad.shape == yhat.shape and grad.dtype == dtype
    np.testing.assert_array_equal(loss_cls()(y, yhat), out)


@pytest.mark.parametrize("loss_cls", LOSSES, ids=LOSS_IDS)
def test_integer_labels_equal_one_hot(loss_cls):
    labels, y, yhat = sample(loss_cls, n=7, c=5, seed=3)
    loss = loss_cls()
    np.testing.assert_array_equal(loss.forward(labels, yhat), loss.forward(y, yhat))
    np.testing.assert_array_equal(loss.backward(labels, yhat), loss.backward(y, yhat))


@pytest.mark.parametrize("loss_cls", LOSSES, ids=LOSS_IDS)
def test_mismatched_targets_raise_value_error(loss_cls):
    _, _, yhat = sample(loss_cls, n=4, c=3)
    bad_targets = [
        np.zeros((4, 2)),  # wrong number of classes
        np.zeros((3, 3)),  # wrong batch
        np.zeros((1, 3)),  # would broadcast silently
        np.zeros((4,)),  # float vector: not labels
        np.array([0]),  # labels for 1 sample, batch of 4: would broadcast silently
        np.array([0, 1]),  # labels for 2 samples
        np.array([0, 1, 2, 3]),  # label out of range
        np.array([0, 1, -1, 2]),  # negative label
    ]
    for y in bad_targets:
        for method in (loss_cls().forward, loss_cls().backward):
            with pytest.raises(ValueError):
                method(y, yhat)


def test_repr():
    assert [repr(cls()) for cls in LOSSES] == [
        "MSELoss()", "BCELoss()", "CrossEntropyLoss()", "NLLLoss()"
    ]


def test_one_hot():
    np.testing.assert_array_equal(nn.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert nn.one_hot(np.array([1]), 2).dtype == np.float32
    with pytest.raises(ValueError):
        nn.one_hot(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError):
        nn.one_hot(np.array([3]), 3)


# --- MSE ------------------------------------------------------------------------------------


def test_mse_sums_squared_errors_over_features():
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    yhat = np.array([[0.5, 0.5, 0.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(nn.MSELoss().forward(y, yhat), [0.5, 9.0], rtol=1e-15)
    np.testing.assert_allclose(nn.MSELoss().backward(y, yhat), 2 * (yhat - y), rtol=1e-15)


# --- BCE ------------------------------------------------------------------------------------


def test_bce_matches_an_independent_computation():
    rng = np.random.default_rng(4)
    y = rng.uniform(size=(6, 3))
    p = rng.uniform(size=(6, 3))
    np.testing.assert_allclose(nn.BCELoss().forward(y, p), bce_reference(y, p), rtol=1e-13)


def test_bce_is_finite_at_exactly_zero_and_one():
    y = np.array([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0]])
    p = np.array([[0.0, 1.0, 0.0, 1.0, 0.5, 0.5]])
    for dtype in (np.float32, np.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = nn.BCELoss().forward(y, p.astype(dtype))
            grad = nn.BCELoss().backward(y, p.astype(dtype))
        # right at 0 and 1: 0 each; wrong at 0 and 1: the clamp, 100 each; 2 * log 2 for 0.5
        np.testing.assert_allclose(loss, [200 + 2 * math.log(2)], rtol=1e-6)
        assert np.all(np.isfinite(grad)) and grad.dtype == dtype
    np.testing.assert_allclose(nn.BCELoss().forward(y, p), bce_reference(y, p), rtol=1e-15)


def test_bce_log_clamp_at_minus_100():
    # log(1e-50) = -115.1 is clamped to -100; log(1e-40) = -92.1 is not
    p = np.array([[1e-50, 1e-40]])
    y = np.array([[1.0, 1.0]])
    np.testing.assert_allclose(nn.BCELoss().forward(y, p), [100 - math.log(1e-40)], rtol=1e-14)
    # 1 - 1e-50 and 1 - 1e-40 round to exactly 1: log(1 - 1) = -inf, clamped, twice
    np.testing.assert_allclose(nn.BCELoss().forward(1 - y, 1 - p), [200.0], rtol=1e-14)


def test_bce_gradient_matches_pytorch_formula():
    rng = np.random.default_rng(5)
    y, p = rng.uniform(size=(4, 3)), rng.uniform(0.01, 0.99, size=(4, 3))
    np.testing.assert_allclose(nn.BCELoss().backward(y, p), (p - y) / (p * (1 - p)),
                               rtol=1e-13)


# --- CrossEntropy and NLL -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_exact_for_huge_logits(dtype):
    logits = np.array([[1000.0, -1000.0], [1000.0, -1000.0]], dtype=dtype)
    y = np.array([[1, 0], [0, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = nn.CrossEntropyLoss().forward(y, logits)
        grad = nn.CrossEntropyLoss().backward(y, logits)
    np.testing.assert_array_equal(loss, [0.0, 2000.0])
    np.testing.assert_array_equal(grad, [[0, 0], [1, -1]])
    big = np.array([[1e30, -1e30, 0.0]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(nn.CrossEntropyLoss().forward(np.array([1]), big),
                                      np.array([2e30], dtype=dtype))
        assert np.all(np.isfinite(nn.CrossEntropyLoss().backward(np.array([1]), big)))


def test_cross_entropy_matches_scipy_and_nll_of_log_softmax():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, size=8)
    logits = rng.normal(scale=4, size=(8, 5))
    expected = -scipy.special.log_softmax(logits, axis=-1)[np.arange(8), labels]
    ce = nn.CrossEntropyLoss()
    np.testing.assert_allclose(ce.forward(labels, logits), expected, rtol=1e-13)
    log_probs = nn.LogSoftmax()(logits)
    np.testing.assert_allclose(ce.forward(labels, logits),
                               nn.NLLLoss().forward(labels, log_probs), rtol=1e-15)
    # the fused gradient equals NLL's gradient pushed back through LogSoftmax
    chained = nn.LogSoftmax().backward_delta(logits, nn.NLLLoss().backward(labels, log_probs))
    np.testing.assert_allclose(ce.backward(labels, logits), chained, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(ce.backward(labels, logits),
                               scipy.special.softmax(logits, axis=-1) - np.eye(5)[labels],
                               rtol=1e-13, atol=1e-16)


def test_nll_picks_the_target_log_probability():
    log_probs = np.log(np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    np.testing.assert_allclose(nn.NLLLoss().forward(np.array([0, 2]), log_probs),
                               [-math.log(0.7), -math.log(0.5)], rtol=1e-15)
    np.testing.assert_array_equal(nn.NLLLoss().backward(np.array([0, 2]), log_probs),
                                  [[-1, 0, 0], [0, 0, -1]])


def test_backward_does_not_alias_the_targets():
    # Optim scales the returned delta in place: it must not write through into y
    y = np.eye(3)[[0, 2]]
    for loss_cls in LOSSES:
        yhat = np.full((2, 3), 0.3)
        grad = loss_cls().backward(y, yhat)
        grad *= 0
        np.testing.assert_array_equal(y, np.eye(3)[[0, 2]])
