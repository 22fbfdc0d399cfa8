"""Optimisers against hand computations, the Optim step, fit(), and real-data accuracy (digits)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import nnlib as nn


def grad_sequence(shape, steps=4, seed=0):
    """Return ``steps`` random gradients, so stateful optimisers see changing inputs."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for _ in range(steps)]


def run_optimizer(optimizer, grads, seed=0):
    """Step a float64 Linear(2, 3) with the given weight gradients; return the weight history."""
    lin = nn.Linear(2, 3, bias=False, dtype=np.float64, rng=seed)
    history = [lin.weight.copy()]
    for g in grads:
        lin.gradients()["weight"][...] = g
        optimizer.step(lin)
        history.append(lin.weight.copy())
    return history


def mlp(seed=0, hidden=32):
    """Scale(1/16) -> Linear(64, hidden) -> ReLU -> Linear(hidden, 10): logits for digits."""
    return nn.Sequential(
        nn.Scale(1 / 16),
        nn.Linear(64, hidden, rng=seed),
        nn.ReLU(),
        nn.Linear(hidden, 10, rng=seed + 1),
    )


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits (shipped with it), float32, with a fixed stratified split."""
    data = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=0.25, random_state=0,
        stratify=data.target)
    return X_train, X_test, y_train, y_test


# --- optimisers against hand computations ---------------------------------------------------


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0, 0), (0.9, 0), (0, 0.1), (0.8, 0.05)])
def test_sgd_matches_pytorch_formulas(momentum, weight_decay):
    lr = 0.1
    grads = grad_sequence((2, 3))
    got = run_optimizer(nn.SGD(lr, momentum=momentum, weight_decay=weight_decay), grads)
    # torch.optim.SGD (dampening 0, no Nesterov): d = g + wd p; buf = d at the first step,
    # then buf = mu buf + d; p -= lr buf
    p, buf = got[0].copy(), None
    for t, g in enumerate(grads):
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = buf
        p = p - lr * d
        np.testing.assert_allclose(got[t + 1], p, rtol=1e-14, atol=1e-15)


def test_sgd_momentum_differs_from_plain_sgd():
    # guards the reference above against a momentum that is silently ignored
    grads = grad_sequence((2, 3))
    plain = run_optimizer(nn.SGD(0.1), grads)
    heavy = run_optimizer(nn.SGD(0.1, momentum=0.9), grads)
    assert np.array_equal(plain[1], heavy[1])  # the buffer starts at the first gradient
    assert not np.allclose(plain[-1], heavy[-1])


@pytest.mark.parametrize(("lr", "betas", "eps"), [(1e-3, (0.9, 0.999), 1e-8),
                                                  (0.05, (0.5, 0.9), 1e-3)])
def test_adam_matches_a_hand_written_reference(lr, betas, eps):
    grads = grad_sequence((2, 3), steps=5, seed=1)
    got = run_optimizer(nn.Adam(lr, betas=betas, eps=eps), grads)
    b1, b2 = betas
    p, m, v = got[0].copy(), np.zeros((2, 3)), np.zeros((2, 3))
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(got[t], p, rtol=1e-12, atol=1e-15)


def test_adam_first_step_moves_each_weight_by_lr():
    # with bias correction, |step 1| = lr * |g| / (|g| + eps) ~ lr whatever the gradient scale
    grads = [np.array([[1e-4, -3.0, 50.0], [-2e-2, 7.0, -1e3]])]
    got = run_optimizer(nn.Adam(0.01), grads)
    np.testing.assert_allclose(got[1] - got[0], -0.01 * np.sign(grads[0]), rtol=1e-3)


def test_optimizers_keep_float32_and_reject_bad_lr():
    for optimizer in (nn.SGD(0.1, momentum=0.9, weight_decay=0.01), nn.Adam(0.1)):
        lin = nn.Linear(3, 2, rng=0)
        lin.gradients()["weight"][...] = 1
        optimizer.step(lin)
        optimizer.step(lin)
        assert lin.weight.dtype == np.float32 and lin.bias.dtype == np.float32
    with pytest.raises(ValueError):
        nn.SGD(0)
    with pytest.raises(ValueError):
        nn.Adam(-1e-3)
    assert repr(nn.SGD(0.1, momentum=0.9)) == "SGD(lr=0.1, momentum=0.9, weight_decay=0.0)"


# --- Optim ----------------------------------------------------------------------------------


def regression_problem(seed=0):
    """Return (X, y) of a noiseless linear map 3 -> 2."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(64, 3))
    return X, X @ rng.normal(size=(3, 2)) + rng.normal(size=2)


def test_optim_step_is_gradient_descent_on_the_mean_loss():
    X, y = regression_problem()
    lin = nn.Linear(3, 2, dtype=np.float64, rng=0)
    W, b = lin.weight.copy(), lin.bias.copy()
    mean_loss = nn.Optim(lin, nn.MSELoss(), eps=0.05).step(X, y)
    residual = X @ W + b - y
    assert mean_loss == pytest.approx(np.mean(np.sum(residual**2, axis=1)), rel=1e-14)
    np.testing.assert_allclose(lin.weight, W - 0.05 * X.T @ (2 * residual) / len(X), rtol=1e-13)
    np.testing.assert_allclose(lin.bias, b - 0.05 * np.mean(2 * residual, axis=0), rtol=1e-13)


def test_optim_reduces_the_loss_on_a_toy_problem():
    X, y = regression_problem()
    net = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0))
    optim = nn.Optim(net, nn.MSELoss(), eps=0.05)
    losses = [optim.step(X, y) for _ in range(200)]
    # a convex quadratic with a small step: the loss never goes up and nearly vanishes
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 1e-6 * losses[0]


def test_optim_with_an_optimizer_equals_plain_descent_for_sgd():
    X, y = regression_problem()
    a, b = nn.Linear(3, 2, dtype=np.float64, rng=0), nn.Linear(3, 2, dtype=np.float64, rng=0)
    plain = nn.Optim(a, nn.MSELoss(), eps=0.05)
    with_sgd = nn.Optim(b, nn.MSELoss(), optimizer=nn.SGD(0.05))
    for _ in range(3):
        plain.step(X, y)
        with_sgd.step(X, y)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-15)


# --- fit ------------------------------------------------------------------------------------


def small_digits(digits, n=400):
    """A quick subset of the digits training split: (X, one-hot y)."""
    X_train, _, y_train, _ = digits
    return X_train[:n], nn.one_hot(y_train[:n], 10)


def test_fit_history_lengths(digits):
    X, y = small_digits(digits)
    history = nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, epochs=4, progress=False)
    assert len(history.loss) == len(history.accuracy) == 4
    assert history.val_loss == [] and history.val_accuracy == []
    assert not history.stopped_early
    assert history.loss[-1] < history.loss[0]
    history = nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, epochs=3, validation_split=0.2,
                     progress=False)
    assert len(history.loss) == len(history.val_loss) == len(history.val_accuracy) == 3
    assert all(0 <= a <= 1 for a in history.accuracy + history.val_accuracy)


def test_fit_same_seed_is_bit_identical_and_other_seeds_differ(digits):
    X, y = small_digits(digits)

    def train(seed):
        net = mlp()
        history = nn.fit(net, nn.CrossEntropyLoss(), X, y, epochs=3, batch_size=16, seed=seed,
                         progress=False)
        return net.parameters(), history

    params_a, history_a = train(7)
    params_b, history_b = train(7)
    params_c, _ = train(8)
    assert all(np.array_equal(params_a[k], params_b[k]) for k in params_a)
    assert history_a == history_b
    assert not all(np.array_equal(params_a[k], params_c[k]) for k in params_a)


def test_fit_validation_split_holds_out_the_end(digits):
    X, y = small_digits(digits)
    n_val = round(len(X) * 0.25)
    split_net, data_net = mlp(), mlp()
    split = nn.fit(split_net, nn.CrossEntropyLoss(), X, y, epochs=3, validation_split=0.25,
                   progress=False)
    explicit = nn.fit(data_net, nn.CrossEntropyLoss(), X[:-n_val], y[:-n_val], epochs=3,
                      validation_data=(X[-n_val:], y[-n_val:]), progress=False)
    assert split == explicit
    for name, value in split_net.parameters().items():
        assert np.array_equal(value, data_net.parameters()[name])
    val_loss, val_acc = nn.evaluate(split_net, nn.CrossEntropyLoss(), X[-n_val:], y[-n_val:])
    assert split.val_loss[-1] == pytest.approx(val_loss, rel=1e-6)
    assert split.val_accuracy[-1] == val_acc


def test_fit_early_stopping_restores_the_best_parameters(digits):
    X_train, X_test, y_train, y_test = digits
    # 60 training images and a large step: the network overfits and the validation loss turns
    X, y = X_train[:60], nn.one_hot(y_train[:60], 10)
    validation = (X_test[:200], y_test[:200])

    def train(epochs, patience=None, restore_best=True):
        net = mlp()
        history = nn.fit(net, nn.CrossEntropyLoss(), X, y, epochs=epochs, seed=3,
                         optimizer=nn.Adam(3e-2), validation_data=validation,
                         patience=patience, restore_best=restore_best, progress=False)
        return net.parameters(), history

    params, history = train(epochs=50, patience=3)
    assert history.stopped_early
    best = history.best_epoch
    assert best > 0 and len(history.val_loss) == best + 1 + 3 < 50
    assert history.val_loss[best] == min(history.val_loss)
    # the same run cut at the best epoch (same seed: same batches) is the restored network
    best_params, _ = train(epochs=best + 1)
    for name, value in params.items():
        assert np.array_equal(value, best_params[name]), name
    # without restoring, the network is the one of the last epoch, not the best one
    last_params, _ = train(epochs=50, patience=3, restore_best=False)
    assert not all(np.array_equal(last_params[k], best_params[k]) for k in params)


def test_fit_progress_false_prints_nothing(digits, capsys):
    X, y = small_digits(digits, n=64)
    nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, epochs=2, validation_split=0.25, progress=False)
    assert capsys.readouterr() == ("", "")
    # ...whereas the default shows the bar and one line per epoch (so the check above can fail)
    nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, epochs=2)
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.out + captured.err


def test_fit_rejects_bad_arguments(digits):
    X, y = small_digits(digits, n=64)
    with pytest.raises(ValueError):
        nn.fit(mlp(), nn.CrossEntropyLoss(), X, y[:-1], progress=False)
    with pytest.raises(ValueError):
        nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, validation_split=1.5, progress=False)
    with pytest.raises(ValueError):
        nn.fit(mlp(), nn.CrossEntropyLoss(), X, y, batch_size=0, progress=False)


def test_fit_accepts_integer_labels(digits):
    X, y = small_digits(digits)
    labels = y.argmax(axis=1)
    net_a, net_b = mlp(), mlp()
    a = nn.fit(net_a, nn.CrossEntropyLoss(), X, y, epochs=2, progress=False)
    b = nn.fit(net_b, nn.CrossEntropyLoss(), X, labels, epochs=2, progress=False)
    assert a == b


def test_evaluate_and_accuracy():
    yhat = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert nn.accuracy(np.array([1, 0, 0]), yhat) == pytest.approx(2 / 3)
    assert nn.accuracy(np.eye(2)[[1, 0, 0]], yhat) == pytest.approx(2 / 3)
    net = nn.Sequential(nn.Scale(1.0))
    loss, acc = nn.evaluate(net, nn.NLLLoss(), np.log(yhat), np.array([1, 0, 0]), batch_size=2)
    assert loss == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.3)) / 3)
    assert acc == pytest.approx(2 / 3)


# --- real data: scikit-learn digits ---------------------------------------------------------


def test_digits_mlp_ending_in_softmax(digits):
    X_train, X_test, y_train, y_test = digits
    net = nn.Sequential(*mlp(seed=0, hidden=128).modules, nn.Softmax())
    # train the logits (the body shares its modules with `net`) with the fused, stable loss
    body = nn.Sequential(*net.modules[:-1])
    nn.fit(body, nn.CrossEntropyLoss(), X_train, nn.one_hot(y_train, 10),
           optimizer=nn.Adam(2e-3), epochs=40, batch_size=32, seed=0, progress=False)
    probabilities = net.predict(X_test)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    accuracy = nn.accuracy(y_test, probabilities)
    print(f"digits MLP held-out accuracy: {accuracy:.4f}")
    assert accuracy >= 0.96


def test_digits_conv1d_ending_in_logsoftmax(digits):
    X_train, X_test, y_train, y_test = digits
    # each 8x8 image is a sequence of 8 rows of 8 channels
    net = nn.Sequential(
        nn.Scale(1 / 16),
        nn.Conv1D(3, 8, 64, rng=0),
        nn.ReLU(),
        nn.MaxPool1D(2),
        nn.Flatten(),
        nn.Linear(3 * 64, 10, rng=1),
        nn.LogSoftmax(),
    )
    nn.fit(net, nn.NLLLoss(), X_train.reshape(-1, 8, 8), nn.one_hot(y_train, 10),
           optimizer=nn.Adam(2e-3), epochs=40, batch_size=32, seed=0, progress=False)
    log_probabilities = net.predict(X_test.reshape(-1, 8, 8))
    assert log_probabilities.dtype == np.float32
    np.testing.assert_allclose(np.exp(log_probabilities).sum(axis=1), 1, rtol=1e-5)
    accuracy = nn.accuracy(y_test, log_probabilities)
    print(f"digits Conv1D held-out accuracy: {accuracy:.4f}")
    assert accuracy >= 0.96
