"""Linear, Conv1D, MaxPool1D, Flatten, Scale and Sequential: references, gradients, API."""

from __future__ import annotations

import numpy as np
import pytest

import nnlib as nn
from tests.helpers.gradcheck import check_delta, check_module, check_parameters, numerical_gradient

# --- plain-loop references (deliberately naive: one scalar operation at a time) ------------


def conv_reference(x, weight, bias, stride):
    """y[n, l, o] = b[o] + sum_k sum_c x[n, l*stride + k, c] * W[k, c, o]."""
    n_batch, length, chan_in = x.shape
    k_size, _, chan_out = weight.shape
    l_out = (length - k_size) // stride + 1
    y = np.zeros((n_batch, l_out, chan_out))
    for n in range(n_batch):
        for l in range(l_out):  # noqa: E741
            for o in range(chan_out):
                total = 0.0 if bias is None else bias[o]
                for k in range(k_size):
                    for c in range(chan_in):
                        total += x[n, l * stride + k, c] * weight[k, c, o]
                y[n, l, o] = total
    return y


def conv_backward_reference(x, weight, delta, stride):
    """Return (dx, dW, db) of sum(y * delta) by the same loops."""
    n_batch, l_out, chan_out = delta.shape
    k_size, chan_in, _ = weight.shape
    dx, dw, db = np.zeros(x.shape), np.zeros(weight.shape), np.zeros(chan_out)
    for n in range(n_batch):
        for l in range(l_out):  # noqa: E741
            for o in range(chan_out):
                db[o] += delta[n, l, o]
                for k in range(k_size):
                    for c in range(chan_in):
                        dx[n, l * stride + k, c] += delta[n, l, o] * weight[k, c, o]
                        dw[k, c, o] += delta[n, l, o] * x[n, l * stride + k, c]
    return dx, dw, db


def maxpool_reference(x, k_size, stride):
    """Return (y, dx_of(delta)): window maxima and a backward sending delta to the first max."""
    n_batch, length, chans = x.shape
    l_out = (length - k_size) // stride + 1
    y = np.zeros((n_batch, l_out, chans))
    where = np.zeros((n_batch, l_out, chans), dtype=int)
    for n in range(n_batch):
        for l in range(l_out):  # noqa: E741
            for c in range(chans):
                best = 0
                for k in range(1, k_size):
                    if x[n, l * stride + k, c] > x[n, l * stride + best, c]:
                        best = k
                y[n, l, c] = x[n, l * stride + best, c]
                where[n, l, c] = l * stride + best

    def backward(delta):
        dx = np.zeros(x.shape)
        for n in range(n_batch):
            for l in range(l_out):  # noqa: E741
                for c in range(chans):
                    dx[n, where[n, l, c], c] += delta[n, l, c]
        return dx

    return y, backward


def distinct_values(shape, seed, gap=0.05):
    """Values at least ``gap`` apart (no ties), shuffled: max positions stay put under eps."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    return (rng.permutation(size) * gap - size * gap / 2).reshape(shape).astype(np.float64)


# (k_size, stride, chan_in, chan_out, length): overlapping (stride < k), stride > k, stride = k,
# lengths not divisible, length equal to the kernel, 1x1 kernels.
CONV_CASES = [
    (3, 1, 2, 4, 10),
    (3, 2, 2, 3, 11),
    (4, 3, 1, 2, 13),
    (2, 3, 3, 2, 12),
    (2, 5, 2, 2, 14),
    (5, 5, 2, 2, 17),
    (1, 1, 3, 2, 5),
    (3, 1, 1, 1, 3),
]

# --- Linear ---------------------------------------------------------------------------------


def test_linear_shapes_and_default_dtype():
    lin = nn.Linear(3, 5)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (5,)
    assert lin.weight.dtype == np.float32 and lin.bias.dtype == np.float32
    out = lin(np.ones((7, 3), dtype=np.float32))
    assert out.shape == (7, 5) and out.dtype == np.float32
    back = lin.backward_delta(np.ones((7, 3), np.float32), np.ones((7, 5), np.float32))
    assert back.shape == (7, 3) and back.dtype == np.float32
    assert nn.Linear(3, 5, dtype=np.float64).weight.dtype == np.float64


def test_linear_forward_is_affine():
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    x = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(lin(x), x @ lin.weight + lin.bias, rtol=1e-15)


def test_linear_init_is_uniform_within_pytorch_bound():
    in_features = 16
    lin = nn.Linear(in_features, 500, rng=0)
    bound = 1 / np.sqrt(in_features)
    for values in (lin.weight, lin.bias):
        assert np.all(np.abs(values) <= bound)
        # spread over the whole interval, not a narrower one (e.g. a 1/in bound)
        assert values.max() > 0.95 * bound and values.min() < -0.95 * bound
    # uniform on [-b, b]: mean 0, variance b^2 / 3
    assert abs(lin.weight.mean()) < 0.02 * bound
    assert lin.weight.var() == pytest.approx(bound**2 / 3, rel=0.05)


def test_linear_is_seedable():
    a, b = nn.Linear(6, 4, rng=42), nn.Linear(6, 4, rng=42)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    c = nn.Linear(6, 4, rng=43)
    assert not np.array_equal(a.weight, c.weight)
    d = nn.Linear(6, 4, rng=np.random.default_rng(42))
    assert np.array_equal(a.weight, d.weight)


def test_linear_without_bias():
    lin = nn.Linear(3, 2, bias=False, dtype=np.float64, rng=0)
    assert lin.bias is None
    assert set(lin.parameters()) == {"weight"} and set(lin.gradients()) == {"weight"}
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(lin(x), x @ lin.weight)
    check_module(lin, x)
    assert lin.config()["bias"] is False


def test_linear_parameters_and_gradients_are_live_views():
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    params, grads = lin.parameters(), lin.gradients()
    assert params.keys() == grads.keys() == {"weight", "bias"}
    x = np.ones((1, 3))
    params["weight"][...] = 0
    params["bias"][...] = [1.5, -2.0]
    np.testing.assert_array_equal(lin(x), [[1.5, -2.0]])
    lin.backward_update_gradient(x, np.array([[1.0, 2.0]]))
    np.testing.assert_array_equal(grads["weight"], [[1, 2]] * 3)  # the dict fetched earlier
    np.testing.assert_array_equal(grads["bias"], [1, 2])
    for name in params:
        assert params[name].shape == grads[name].shape
        assert params[name].dtype == grads[name].dtype


def test_linear_gradcheck():
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    errors = check_module(lin, np.random.default_rng(1).normal(size=(5, 4)))
    assert set(errors) == {"delta", "weight", "bias"}


def test_gradcheck_catches_a_wrong_parameter_gradient():
    """A weight gradient that forgets the transpose convention (delta^T x) is caught."""

    class BadLinear(nn.Linear):
        def backward_update_gradient(self, input, delta):
            self._gradients["weight"] += (input.T @ delta) * 0.5
            self._gradients["bias"] += delta.sum(axis=0)

    lin = BadLinear(4, 3, dtype=np.float64, rng=0)
    with pytest.raises(AssertionError, match="grad of weight"):
        check_parameters(lin, np.random.default_rng(1).normal(size=(5, 4)))


def test_linear_gradients_accumulate_and_zero_grad_resets():
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    x, delta = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    lin.backward_update_gradient(x, delta)
    once = {k: v.copy() for k, v in lin.gradients().items()}
    lin.backward_update_gradient(x, delta)
    for name, grad in lin.gradients().items():
        np.testing.assert_allclose(grad, 2 * once[name], rtol=1e-15)
    grads = lin.gradients()
    lin.zero_grad()
    for name, grad in grads.items():
        assert grad is lin.gradients()[name]  # zeroed in place, not replaced
        assert not grad.any()


def test_linear_update_parameters_is_a_gradient_step():
    lin = nn.Linear(4, 3, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    lin.backward_update_gradient(rng.normal(size=(5, 4)), rng.normal(size=(5, 3)))
    before = {k: v.copy() for k, v in lin.parameters().items()}
    weight = lin.parameters()["weight"]
    lin.update_parameters(0.1)
    assert lin.parameters()["weight"] is weight  # updated in place: views stay live
    for name, value in lin.parameters().items():
        np.testing.assert_allclose(value, before[name] - 0.1 * lin.gradients()[name], rtol=1e-15)


def test_linear_repr_and_bad_sizes():
    assert repr(nn.Linear(3, 2)) == (
        "Linear(in_features=3, out_features=2, bias=True, dtype='float32')"
    )
    with pytest.raises(ValueError):
        nn.Linear(0, 2)


# --- Conv1D ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("k_size", "stride", "chan_in", "chan_out", "length"), CONV_CASES)
def test_conv1d_matches_loop_reference(k_size, stride, chan_in, chan_out, length):
    conv = nn.Conv1D(k_size, chan_in, chan_out, stride=stride, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, length, chan_in))
    y = conv(x)
    l_out = (length - k_size) // stride + 1
    assert y.shape == (3, l_out, chan_out)
    np.testing.assert_allclose(y, conv_reference(x, conv.weight, conv.bias, stride), rtol=1e-12,
                               atol=1e-14)

    delta = rng.normal(size=y.shape)
    dx, dw, db = conv_backward_reference(x, conv.weight, delta, stride)
    np.testing.assert_allclose(conv.backward_delta(x, delta), dx, rtol=1e-12, atol=1e-14)
    conv.zero_grad()
    conv.backward_update_gradient(x, delta)
    np.testing.assert_allclose(conv.gradients()["weight"], dw, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(conv.gradients()["bias"], db, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("k_size", "stride", "chan_in", "chan_out", "length"), CONV_CASES)
def test_conv1d_gradcheck(k_size, stride, chan_in, chan_out, length):
    conv = nn.Conv1D(k_size, chan_in, chan_out, stride=stride, dtype=np.float64, rng=0)
    x = np.random.default_rng(2).normal(size=(2, length, chan_in))
    errors = check_module(conv, x)
    assert set(errors) == {"delta", "weight", "bias"}


def test_conv1d_without_bias_dtype_and_init():
    conv = nn.Conv1D(3, 2, 4, bias=False, rng=0)
    assert set(conv.parameters()) == {"weight"} and conv.weight.shape == (3, 2, 4)
    assert conv.weight.dtype == np.float32
    x = np.random.default_rng(0).normal(size=(2, 9, 2)).astype(np.float32)
    y = conv(x)
    assert y.dtype == np.float32
    assert conv.backward_delta(x, np.ones_like(y)).dtype == np.float32
    np.testing.assert_allclose(y, conv_reference(x.astype(np.float64), conv.weight, None, 1),
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(conv.weight) <= 1 / np.sqrt(3 * 2))
    a, b = nn.Conv1D(3, 2, 4, rng=5), nn.Conv1D(3, 2, 4, rng=5)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    conv64 = nn.Conv1D(3, 2, 4, bias=False, dtype=np.float64, rng=0)
    check_module(conv64, np.random.default_rng(1).normal(size=(2, 7, 2)))


def test_conv1d_rejects_short_inputs_and_bad_sizes():
    with pytest.raises(ValueError):
        nn.Conv1D(5, 1, 1)(np.zeros((1, 4, 1)))
    with pytest.raises(ValueError):
        nn.Conv1D(3, 1, 1, stride=0)


def test_conv1d_repr():
    assert repr(nn.Conv1D(3, 2, 4, stride=2)) == (
        "Conv1D(k_size=3, chan_in=2, chan_out=4, stride=2, bias=True, dtype='float32')"
    )


# --- MaxPool1D ------------------------------------------------------------------------------

POOL_CASES = [(2, 2, 10), (2, 1, 9), (3, 1, 10), (3, 2, 11), (2, 3, 11), (4, 4, 15), (3, 3, 3)]


@pytest.mark.parametrize(("k_size", "stride", "length"), POOL_CASES)
def test_maxpool_matches_loop_reference(k_size, stride, length):
    rng = np.random.default_rng(3)
    # small integers: many ties, which the first-maximum rule must break as the loop does
    x = rng.integers(0, 4, size=(2, length, 3)).astype(np.float64)
    pool = nn.MaxPool1D(k_size, stride)
    y_ref, backward_ref = maxpool_reference(x, k_size, stride)
    np.testing.assert_array_equal(pool(x), y_ref)
    delta = rng.normal(size=y_ref.shape)
    # the same deltas summed in another order: equal up to rounding
    np.testing.assert_allclose(pool.backward_delta(x, delta), backward_ref(delta), rtol=1e-12,
                               atol=1e-15)


@pytest.mark.parametrize(("k_size", "stride", "length"), POOL_CASES)
def test_maxpool_gradcheck(k_size, stride, length):
    check_delta(nn.MaxPool1D(k_size, stride), distinct_values((2, length, 3), seed=4))


def test_maxpool_overlapping_windows_accumulate():
    # windows [0, 5], [5, 1], [1, 0]: 5 is the maximum of the first two
    x = np.array([[[0.0], [5.0], [1.0], [0.0]]])
    pool = nn.MaxPool1D(2, stride=1)
    np.testing.assert_array_equal(pool(x), [[[5], [5], [1]]])
    dx = pool.backward_delta(x, np.array([[[10.0], [100.0], [1000.0]]]))
    np.testing.assert_array_equal(dx, [[[0], [110], [1000], [0]]])
    # one value that is the max of three windows gets all three deltas
    x = np.array([[[0.0], [1.0], [9.0], [2.0], [3.0]]])
    dx = nn.MaxPool1D(3, stride=1).backward_delta(x, np.array([[[1.0], [2.0], [4.0]]]))
    np.testing.assert_array_equal(dx, [[[0], [0], [7], [0], [0]]])


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.array([[[2.0], [2.0], [1.0], [1.0]]])
    dx = nn.MaxPool1D(2).backward_delta(x, np.array([[[3.0], [5.0]]]))
    np.testing.assert_array_equal(dx, [[[3], [0], [5], [0]]])


def test_maxpool_defaults_dtype_and_repr():
    pool = nn.MaxPool1D(3)
    assert pool.stride == 3
    assert repr(pool) == "MaxPool1D(k_size=3, stride=3)"
    x = np.random.default_rng(0).normal(size=(2, 7, 2)).astype(np.float32)
    y = pool(x)
    assert y.shape == (2, 2, 2) and y.dtype == np.float32
    back = pool.backward_delta(x, np.ones_like(y))
    assert back.shape == x.shape and back.dtype == np.float32
    with pytest.raises(ValueError):
        pool(np.zeros((1, 2, 1)))


# --- Flatten and Scale ----------------------------------------------------------------------


def test_flatten():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = nn.Flatten()
    y = flat(x)
    assert y.shape == (2, 12) and y.dtype == np.float32
    np.testing.assert_array_equal(y[1], np.arange(12, 24))
    back = flat.backward_delta(x, y * 2)
    assert back.shape == x.shape
    np.testing.assert_array_equal(back, x * 2)
    check_delta(flat, np.random.default_rng(0).normal(size=(2, 3, 4)))
    assert repr(flat) == "Flatten()"


def test_scale():
    scale = nn.Scale(1 / 16)
    x = np.array([[0.0, 8.0, 16.0]], dtype=np.float32)
    y = scale(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 0.5, 1]])
    back = scale.backward_delta(x, np.ones_like(x))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.full((1, 3), 1 / 16))
    check_delta(nn.Scale(-2.5), np.random.default_rng(0).normal(size=(3, 4)))
    assert scale.parameters() == {}
    assert repr(scale) == "Scale(factor=0.0625)"


def test_scale_of_integer_pixels_is_not_truncated():
    # raw pixel counts may arrive as integers: 16 * (1/16) must be 1, not int(1/16) * 16 = 0
    y = nn.Scale(1 / 16)(np.array([[0, 8, 16]]))
    np.testing.assert_allclose(y, [[0, 0.5, 1]])


# --- Sequential -----------------------------------------------------------------------------


def small_net(seed=0):
    """Linear -> TanH -> Linear -> Softmax in float64."""
    return nn.Sequential(
        nn.Linear(4, 6, dtype=np.float64, rng=seed),
        nn.TanH(),
        nn.Linear(6, 3, dtype=np.float64, rng=seed + 1),
        nn.Softmax(),
    )


def conv_net(seed=0):
    """Scale -> Conv1D -> LeakyReLU -> MaxPool1D -> Flatten -> Linear -> LogSoftmax, float64."""
    return nn.Sequential(
        nn.Scale(0.5),
        nn.Conv1D(3, 2, 4, stride=1, dtype=np.float64, rng=seed),
        nn.LeakyReLU(0.1),
        nn.MaxPool1D(2, stride=2),
        nn.Flatten(),
        nn.Linear(16, 3, dtype=np.float64, rng=seed + 1),
        nn.LogSoftmax(),
    )


def test_sequential_backward_matches_finite_differences():
    net = small_net()
    rng = np.random.default_rng(1)
    x, R = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    net.zero_grad()
    net.forward(x)
    dx = net.backward(R)
    grads = {k: v.copy() for k, v in net.gradients().items()}

    def f():
        return float(np.sum(net.forward(x) * R))

    for name, param in net.parameters().items():
        numerical = numerical_gradient(f, param)
        err = np.max(np.abs(numerical - grads[name])) / np.max(np.abs(numerical))
        assert err <= 1e-6, name
    probe = x.copy()
    numerical = numerical_gradient(lambda: float(np.sum(net.forward(probe) * R)), probe)
    assert np.max(np.abs(numerical - dx)) / np.max(np.abs(numerical)) <= 1e-6


@pytest.mark.parametrize("make", [small_net, conv_net], ids=["mlp", "conv"])
def test_sequential_gradcheck(make):
    net = make()
    shape = (5, 4) if make is small_net else (3, 10, 2)
    errors = check_module(net, np.random.default_rng(2).normal(size=shape))
    assert set(errors) == {"delta", *net.parameters()}


def test_sequential_parameter_names_and_live_views():
    net = small_net()
    assert list(net.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(net.gradients()) == list(net.parameters())
    assert net.parameters()["2.weight"] is net.modules[2].weight
    x = np.random.default_rng(0).normal(size=(2, 4))
    net.parameters()["2.weight"][...] = 0
    net.parameters()["2.bias"][...] = 0
    np.testing.assert_allclose(net(x), 1 / 3, rtol=1e-15)  # equal logits -> uniform


def test_sequential_update_and_zero_grad_reach_every_module():
    net = small_net()
    x = np.random.default_rng(0).normal(size=(2, 4))
    net.forward(x)
    net.backward(np.ones((2, 3)))
    before = {k: v.copy() for k, v in net.parameters().items()}
    net.update_parameters(0.5)
    for name, value in net.parameters().items():
        np.testing.assert_allclose(value, before[name] - 0.5 * net.gradients()[name])
    net.zero_grad()
    assert not any(g.any() for g in net.gradients().values())


def test_sequential_predict_equals_forward_and_caches_nothing():
    net = small_net()
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    out = net.predict(x1)
    np.testing.assert_array_equal(out, net.forward(x1))
    fresh = small_net()
    fresh.predict(x1)
    with pytest.raises(RuntimeError):
        fresh.backward(np.ones((3, 3)))  # predict() left no forward cache behind
    # a predict() between forward() and backward() must not disturb the cache
    net.forward(x1)
    net.zero_grad()
    net.backward(np.ones((3, 3)))
    expected = {k: v.copy() for k, v in net.gradients().items()}
    net.forward(x1)
    net.predict(x2)
    net.zero_grad()
    net.backward(np.ones((3, 3)))
    for name, grad in net.gradients().items():
        np.testing.assert_array_equal(grad, expected[name])


def test_sequential_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="forward"):
        small_net().backward(np.ones((2, 3)))


def test_sequential_backward_update_gradient_uses_the_given_input():
    net = small_net()
    rng = np.random.default_rng(0)
    x1, x2, R = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 3))
    net.forward(x2)
    net.zero_grad()
    net.backward(R)
    expected = {k: v.copy() for k, v in net.gradients().items()}
    net.forward(x1)  # the cache now holds x1; the call below is about x2
    net.zero_grad()
    net.backward_update_gradient(x2, R)
    for name, grad in net.gradients().items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-15)


def test_sequential_keeps_float32():
    net = nn.Sequential(nn.Conv1D(3, 2, 4, rng=0), nn.ReLU(), nn.MaxPool1D(2), nn.Flatten(),
                        nn.Linear(16, 3, rng=1), nn.Softmax())
    x = np.random.default_rng(0).normal(size=(2, 10, 2)).astype(np.float32)
    y = net(x)
    assert y.shape == (2, 3) and y.dtype == np.float32
    assert net.backward(np.ones_like(y)).dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradients().values())


def test_sequential_repr_and_modules():
    inner = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    net = nn.Sequential(nn.Scale(0.5), inner, nn.LeakyReLU(alpha=0.2))
    assert net.modules[1] is inner and len(net.modules) == 3
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Scale(factor=0.5)\n"
        "  (1): Sequential(\n"
        "    (0): Linear(in_features=2, out_features=2, bias=True, dtype='float32')\n"
        "    (1): ReLU()\n"
        "  )\n"
        "  (2): LeakyReLU(alpha=0.2)\n"
        ")"
    )
    assert list(net.parameters()) == ["1.0.weight", "1.0.bias"]
    with pytest.raises(TypeError):
        nn.Sequential(nn.ReLU(), "not a module")


# --- fast paths: never bypass a subclass's forward --------------------------------------------


class Clip(nn.ReLU):
    """ReLU clipped at 1: overrides forward only, so ReLU's in-place path must not apply."""

    def forward(self, X):
        return np.clip(X, 0, 1)


class Hard(nn.Sigmoid):
    """A piecewise-linear sigmoid: overrides forward only."""

    def forward(self, X):
        return np.clip(0.25 * X + 0.5, 0, 1)


class Identity(nn.Linear):
    """Returns its input: its output is *not* new, whatever Linear declares."""

    def forward(self, X):
        return X


@pytest.mark.parametrize("layer", [Clip(), Hard()])
def test_a_subclass_overriding_forward_is_never_bypassed(layer):
    x = np.random.default_rng(0).normal(scale=3, size=(5, 4)).astype(np.float32)
    net = nn.Sequential(nn.Linear(4, 4, rng=0), layer)
    expected = net.forward(x)
    assert np.abs(expected).max() <= 1
    np.testing.assert_array_equal(net.predict(x), expected)
    np.testing.assert_array_equal(layer.predict(x), layer.forward(x))
    assert type(layer)._predict_inplace is None


def test_output_is_new_is_trusted_only_from_the_class_defining_forward():
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    keep = x.copy()
    net = nn.Sequential(Identity(4, 4, rng=0), nn.ReLU())
    np.testing.assert_array_equal(net.predict(x), np.maximum(keep, 0))
    np.testing.assert_array_equal(x, keep)  # the caller's array was not overwritten
    assert nn.Linear._output_is_new and not Identity._output_is_new


def test_relu_keeps_its_in_place_fast_path():
    assert nn.ReLU._predict_inplace is nn.ReLU.predict_inplace
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    keep = x.copy()
    net = nn.Sequential(nn.Linear(4, 4, rng=0), nn.ReLU())
    np.testing.assert_array_equal(net.predict(x), net.forward(x))
    np.testing.assert_array_equal(x, keep)
