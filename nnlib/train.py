"""The training loop: mini-batches, seeded shuffling, validation, early stopping, progress."""

from __future__ import annotations

import dataclasses

import numpy as np

from .loss import Loss
from .module import Module
from .optim import Adam, Optim, Optimizer

__all__ = ["History", "accuracy", "evaluate", "fit"]


@dataclasses.dataclass
class History:
    """Per-epoch figures of a :func:`fit` run (validation lists stay empty without data)."""

    loss: list[float] = dataclasses.field(default_factory=list)
    accuracy: list[float] = dataclasses.field(default_factory=list)
    val_loss: list[float] = dataclasses.field(default_factory=list)
    val_accuracy: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


def _class_indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y if y.ndim == 1 else y.argmax(axis=-1)


def accuracy(y: np.ndarray, yhat: np.ndarray) -> float:
    """Share of samples whose arg-max of ``yhat`` is the target class (one-hot or labels)."""
    return float(np.mean(yhat.argmax(axis=-1) == _class_indices(y)))


def evaluate(net: Module, loss: Loss, X: np.ndarray, y: np.ndarray,
             batch_size: int = 1024) -> tuple[float, float]:
    """Return the mean loss and the accuracy of ``net`` on ``(X, y)``, without training."""
    losses, hits = 0.0, 0
    for start in range(0, len(X), batch_size):
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        yhat = net.predict(xb)
        losses += float(np.sum(loss.forward(yb, yhat)))
        hits += int(np.sum(yhat.argmax(axis=-1) == _class_indices(yb)))
    return losses / len(X), hits / len(X)


def _progress(epochs: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: train without it when tqdm is absent
        return None
    return tqdm(total=epochs, unit="epoch", dynamic_ncols=True)


def fit(
    net: Module,
    loss: Loss,
    X: np.ndarray,
    y: np.ndarray,
    *,
    optimizer: Optimizer | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = 0,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    validation_split: float = 0.0,
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = True,
    progress: bool = True,
) -> History:
    """Train ``net`` on ``(X, y)`` with mini-batches and return the :class:`History`.

    Args:
        net: the network; trained in place.
        loss: the loss, e.g. :class:`~nnlib.CrossEntropyLoss`.
        X: inputs, shape (N, *input_shape).
        y: targets, one-hot (N, C) or integer labels (N,).
        optimizer: defaults to ``Adam(1e-3)``.
        epochs: passes over the data.
        batch_size: samples per update (the last batch of an epoch may be smaller).
        shuffle: reshuffle the training data every epoch.
        seed: seed of the shuffling; the same seed, data and network give bit-identical
            parameters.
        validation_data: held-out ``(X_val, y_val)``.
        validation_split: else, the share of ``(X, y)`` held out, taken from the end
            before shuffling (as Keras does).
        patience: stop after this many epochs without improvement of the monitored loss
            (validation loss when there is validation data, else training loss).
        min_delta: the smallest decrease that counts as an improvement.
        restore_best: on early stopping, put back the parameters of the best epoch.
        progress: show a tqdm progress bar with the per-epoch figures.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    if batch_size < 1 or epochs < 0:
        raise ValueError("batch_size must be positive and epochs non-negative")
    if validation_data is None and validation_split:
        if not 0 < validation_split < 1:
            raise ValueError("validation_split must lie in (0, 1)")
        n_val = max(1, round(len(X) * validation_split))
        X, y, validation_data = X[:-n_val], y[:-n_val], (X[-n_val:], y[-n_val:])

    step = Optim(net, loss, optimizer=optimizer if optimizer is not None else Adam(1e-3))
    rng = np.random.default_rng(seed)
    history = History()
    best, best_params, waited = np.inf, None, 0
    bar = _progress(epochs, progress)
    try:
        for epoch in range(epochs):
            order = rng.permutation(len(X)) if shuffle else np.arange(len(X))
            total_loss, hits = 0.0, 0
            for start in range(0, len(X), batch_size):
                index = order[start : start + batch_size]
                xb, yb = X[index], y[index]
                losses, yhat = step.train_batch(xb, yb)
                # (np.add.reduce and count_nonzero: np.sum's Python wrapper costs more
                # than the sum on a batch of 32)
                total_loss += float(np.add.reduce(losses))
                hits += np.count_nonzero(yhat.argmax(axis=-1) == _class_indices(yb))
            history.loss.append(total_loss / len(X))
            history.accuracy.append(hits / len(X))
            figures = {"loss": history.loss[-1], "acc": history.accuracy[-1]}
            if validation_data is not None:
                val_loss, val_acc = evaluate(net, loss, *validation_data)
                history.val_loss.append(val_loss)
                history.val_accuracy.append(val_acc)
                figures.update(val_loss=val_loss, val_acc=val_acc)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in figures.items()})
                bar.write(f"epoch {epoch + 1}/{epochs} "
                          + " ".join(f"{k}={v:.4f}" for k, v in figures.items()))

            monitored = history.val_loss[-1] if validation_data is not None else history.loss[-1]
            if monitored < best - min_delta:
                best, waited, history.best_epoch = monitored, 0, epoch
                if patience is not None and restore_best:
                    best_params = {k: v.copy() for k, v in net.parameters().items()}
            else:
                waited += 1
                if patience is not None and waited >= patience:
                    history.stopped_early = True
                    break
    finally:
        if bar is not None:
            bar.close()
    if history.stopped_early and best_params is not None:
        for name, value in net.parameters().items():
            value[...] = best_params[name]
    return history
