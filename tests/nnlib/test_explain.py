"""nnlib.explain: input gradients against float64 finite differences, integrated gradients'
completeness, thread safety (no cached activations), and the refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nnlib as nn
from nnlib import explain
from tests.helpers.gradcheck import assert_gradient, numerical_gradient

SHIPPED = ("digits-mlp", "digits-cnn", "wine-mlp")
# The stated bound of the docs (README, /explain): with the default 128 steps, the
# attributions of a sample sum to p(x) - p(baseline) within this, on the shipped models.
COMPLETENESS_TOLERANCE = 0.025


@pytest.fixture(scope="module")
def shipped(shipped_dir):
    """The shipped networks, their heads and real samples of their datasets (float32)."""
    from sklearn.datasets import load_digits, load_wine

    images = load_digits().images.astype(np.float32)
    wines = load_wine().data.astype(np.float32)
    models = {}
    for name in SHIPPED:
        network, metadata = nn.load(shipped_dir / f"{name}.joblib")
        data = wines if name == "wine-mlp" else images.reshape(len(images),
                                                               *metadata["input_shape"])
        models[name] = network, metadata["output"], data
    return models


def probabilities(network, head, X):
    out = network.predict(X)
    return np.exp(out) if head == "log_softmax" else out


def finite_difference_gradient(network, head, x, target):
    """d p_target / d x by central differences in float64 (the same float32 weights)."""
    probe = np.array(x, dtype=np.float64)[None]
    return numerical_gradient(
        lambda: float(probabilities(network, head, probe)[0, target]), probe)[0]


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_gradient_of_the_probability_matches_float64_finite_differences(shipped, name):
    network, head, data = shipped[name]
    samples = data[::60] if len(data) > 1000 else data[::20]  # 30 digits, 9 wines
    probs = probabilities(network, head, samples)
    ranked = np.argsort(-probs, axis=1)
    eps32 = float(np.finfo(np.float32).eps)
    for column in range(probs.shape[1]):  # every class, from the most probable down
        targets = ranked[:, column]
        got_probs, gradient = nn.probability_gradient(network, samples, targets, head)
        assert gradient.dtype == np.float32 and gradient.shape == samples.shape
        np.testing.assert_array_equal(got_probs, probs)
        # The same weights in float64 arithmetic (a float64 input promotes every layer).
        _, exact = nn.probability_gradient(network, samples.astype(np.float64), targets, head)
        for index, sample in enumerate(samples):
            expected = finite_difference_gradient(network, head, sample, targets[index])
            what = f"{name} sample {index} class {targets[index]}"
            # Probabilities are at most 1, so round-off is absolute: central differences
            # of a probability in float64 are good to ~1e-10 (1e-16 / 1e-6), float32 to a
            # few eps32 (1 - p of a confident class is quantized to eps32).
            exact_error = np.abs(exact[index] - expected).max()
            assert exact_error <= 1e-8, f"{what} (float64): max abs error {exact_error:.3g}"
            error = np.abs(gradient[index] - expected).max()
            assert error <= 8 * eps32, f"{what}: max abs error {error:.3g}"


def _every_layer_network(head):
    """A float64 network through every nnlib layer type, a nested Sequential included."""
    rng = np.random.default_rng(7)
    standardize = nn.Standardize(4, dtype=np.float64).fit(rng.normal(3, 2, (50, 6, 4)))
    body = nn.Sequential(
        nn.Scale(0.5), standardize, nn.Conv1D(2, 4, 5, dtype=np.float64, rng=1), nn.TanH(),
        nn.MaxPool1D(2, 1), nn.Softplus(),
        nn.Sequential(nn.Conv1D(2, 5, 3, stride=2, dtype=np.float64, rng=2), nn.LeakyReLU(0.1)),
        nn.Flatten(), nn.Linear(6, 8, dtype=np.float64, rng=3), nn.Sigmoid(), nn.ReLU(),
        nn.Linear(8, 5, dtype=np.float64, rng=4))
    return nn.Sequential(body, nn.Softmax() if head == "softmax" else nn.LogSoftmax())


@pytest.mark.parametrize("head", ["softmax", "log_softmax"])
def test_input_gradient_is_exact_in_float64_through_every_layer(head):
    network = _every_layer_network(head)
    X = np.random.default_rng(0).normal(3, 2, (3, 6, 4))
    R = np.random.default_rng(1).standard_normal((3, 5))
    analytic = nn.input_gradient(network, X, R)
    probe = X.copy()
    numerical = numerical_gradient(lambda: float(np.sum(network.predict(probe) * R)), probe)
    assert_gradient(numerical, analytic, f"{head} network", tol=1e-6)
    # The same numbers as the course API's own chain (which reads the forward cache).
    network.forward(X)
    np.testing.assert_allclose(analytic, network.backward_delta(X, R), rtol=1e-12, atol=0)
    # probability_gradient: d p_t / d x, for a LogSoftmax head p * d log p / dx.
    targets = np.array([0, 3, 4])
    probs, gradient = nn.probability_gradient(network, X, targets, head)
    for n, target in enumerate(targets):
        sample = X[n:n + 1].copy()
        expected = numerical_gradient(
            lambda s=sample, t=target: float(probabilities(network, head, s)[0, t]), sample)
        assert_gradient(expected, gradient[n:n + 1], f"{head} dp/dx", tol=1e-6)
    assert np.allclose(probs.sum(axis=1), 1)


# --- integrated gradients -------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_integrated_gradients_complete_within_the_stated_tolerance(shipped, name):
    network, head, data = shipped[name]
    samples = data[::9]  # 200 digits, 20 wines
    targets = probabilities(network, head, samples).argmax(axis=1)
    attributions, p_x, p_baseline = nn.integrated_gradients(network, samples, targets,
                                                            head=head)
    assert attributions.shape == samples.shape and attributions.dtype == np.float32
    gap = np.abs(attributions.reshape(len(samples), -1).sum(axis=1, dtype=np.float64)
                 - (p_x - p_baseline))
    assert gap.max() <= COMPLETENESS_TOLERANCE, gap.max()
    # p(x) is the network's answer; p(baseline) its answer for zeros.
    probs = probabilities(network, head, samples)
    np.testing.assert_allclose(p_x, probs[np.arange(len(samples)), targets], rtol=1e-6)
    zero = probabilities(network, head, np.zeros((1, *samples.shape[1:]), np.float32))
    np.testing.assert_allclose(p_baseline, zero[0, targets], rtol=1e-5, atol=1e-9)
    # More steps: closer (the rule converges to the integral).
    finer, _, _ = nn.integrated_gradients(network, samples[:20], targets[:20], steps=1024,
                                          head=head)
    fine_gap = np.abs(finer.reshape(20, -1).sum(axis=1, dtype=np.float64)
                      - (p_x[:20] - p_baseline[:20]))
    assert fine_gap.max() <= 0.004, fine_gap.max()


def test_trapezoidal_rule_converges_quadratically_on_a_smooth_network():
    network = nn.Sequential(nn.Linear(5, 7, dtype=np.float64, rng=0), nn.TanH(),
                            nn.Linear(7, 3, dtype=np.float64, rng=1), nn.Softmax())
    X = np.random.default_rng(2).normal(0, 2, (4, 5))
    baseline = np.random.default_rng(3).normal(0, 1, 5)
    exact = network.predict(X)[:, 1] - network.predict(baseline[None])[0, 1]

    def gap(steps):
        a, _, _ = nn.integrated_gradients(network, X, 1, baseline, steps=steps)
        return np.abs(a.sum(axis=1) - exact).max()

    # Halving the interval divides the error by about 4 (by 2 only for a first-order rule).
    assert 3.3 < gap(16) / gap(32) < 4.7
    assert gap(512) < 1e-5


def test_integrated_gradients_of_the_baseline_itself_are_zero_and_chunks_agree(shipped):
    network, head, data = shipped["digits-cnn"]
    samples = data[:40]
    zero, _, _ = nn.integrated_gradients(network, samples, 3, baseline=samples, head=head)
    assert not zero.any()
    # 40 samples x 257 points do not fit one chunk of CHUNK_ROWS: same answer one by one.
    together, p_x, _ = nn.integrated_gradients(network, samples, 3, steps=256, head=head)
    assert len(samples) * 257 > explain.CHUNK_ROWS
    for index in (0, 17, 39):
        alone, p_alone, _ = nn.integrated_gradients(network, samples[index:index + 1], 3,
                                                    steps=256, head=head)
        np.testing.assert_allclose(together[index], alone[0], rtol=1e-5, atol=1e-7)
        assert p_x[index] == pytest.approx(p_alone[0], rel=1e-6)


# --- thread safety --------------------------------------------------------------------------


def test_concurrent_explanations_and_predictions_give_the_serial_answers(shipped):
    network, head, data = shipped["digits-cnn"]
    batches = [data[i * 7:(i + 1) * 7] for i in range(6)]
    cache_before = network._inputs

    def work(batch):
        return (network.predict(batch).copy(),
                nn.probability_gradient(network, batch, 4, head)[1],
                nn.integrated_gradients(network, batch, 2, steps=16, head=head)[0])

    serial = [work(batch) for batch in batches]
    assert network._inputs is cache_before  # the explanations left the forward cache alone
    failures, results = [], {}

    def run(thread_index):
        try:
            for round_index in range(10):
                index = (thread_index + round_index) % len(batches)
                # Training-style forward passes write Sequential's cache meanwhile: an
                # explanation reading it would mix another thread's activations in.
                network.forward(batches[(index + 1) % len(batches)])
                results[thread_index, round_index] = index, work(batches[index])
        except Exception as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and len(results) == 40
    for index, got in results.values():
        for part, expected in zip(got, serial[index], strict=True):
            np.testing.assert_array_equal(part, expected)


# --- refusals -------------------------------------------------------------------------------


def test_refusals_name_the_problem(shipped):
    network, _, data = shipped["digits-mlp"]
    X = data[:2]
    with pytest.raises(ValueError, match="grad_output has shape"):
        nn.input_gradient(network, X, np.ones((2, 9)))
    with pytest.raises(ValueError, match=r"class indices in 0\.\.9"):
        nn.probability_gradient(network, X, 10)
    with pytest.raises(ValueError, match="class indices"):
        nn.probability_gradient(network, X, [0.5, 1])
    with pytest.raises(ValueError, match="head must be one of"):
        nn.probability_gradient(network, X, 0, head="sigmoid")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        nn.integrated_gradients(network, X, 0, steps=0)
    with pytest.raises(ValueError, match="baseline has shape"):
        nn.integrated_gradients(network, X, 0, baseline=np.zeros(63))
