"""``nnlib-train``: train a digit classifier on scikit-learn's digits and save an artifact.

Example::

    nnlib-train --arch mlp --epochs 60 --seed 0 --out models/digits-mlp.joblib

The networks take the raw pixels of :func:`sklearn.datasets.load_digits` (grey levels
0..16): the scaling to [0, 1] is their first layer, ``Scale(1/16)``, so clients never
preprocess. The held-out split is stratified and seeded (``--split-seed``), recorded in the
artifact's ``metadata["dataset"]["split"]`` and reproducible with :func:`split_indices`.
The same command and seed give bit-identical parameters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .activation import LogSoftmax, ReLU, Softmax
from .conv import Conv1D, Flatten, MaxPool1D
from .io import save
from .linear import Linear, Scale
from .loss import CrossEntropyLoss, Loss, NLLLoss, one_hot
from .module import Sequential
from .optim import Adam
from .train import evaluate, fit

__all__ = ["ARCHITECTURES", "build_network", "indices_digest", "load_data", "main",
           "shift_augment", "split_indices", "train"]

LABELS = [str(digit) for digit in range(10)]
PIXEL_MAX = 16  # load_digits gives grey levels 0..16


def _mlp(rng: np.random.Generator) -> Sequential:
    return Sequential(
        Scale(1 / PIXEL_MAX),
        Linear(64, 256, rng=rng), ReLU(),
        Linear(256, 10, rng=rng),
        Softmax(),
    )


def _cnn(rng: np.random.Generator) -> Sequential:
    # An 8x8 image as a sequence of 8 rows with 8 channels (the pixels of the row), in the
    # course's (batch, length, channels) layout.
    return Sequential(
        Scale(1 / PIXEL_MAX),
        Conv1D(3, 8, 64, rng=rng), ReLU(),  # (8, 8) -> (6, 64)
        MaxPool1D(2),  # -> (3, 64)
        Flatten(),  # -> 192
        Linear(192, 10, rng=rng),
        LogSoftmax(),
    )


#: arch -> (builder, input_shape, description)
ARCHITECTURES: dict[str, tuple[Callable[[np.random.Generator], Sequential], list[int], str]] = {
    "mlp": (_mlp, [64],
            "Digit classifier (0-9) for 8x8 images given as 64 raw grey levels 0..16: "
            "Scale(1/16) -> Linear(64, 256) -> ReLU -> Linear(256, 10) -> Softmax."),
    "cnn": (_cnn, [8, 8],
            "Digit classifier (0-9) for 8x8 images given as 8 rows of 8 raw grey levels "
            "0..16: Scale(1/16) -> Conv1D(3, 8, 64) -> ReLU -> MaxPool1D(2) -> Flatten -> "
            "Linear(192, 10) -> LogSoftmax."),
}


def build_network(arch: str, seed: int) -> Sequential:
    """Return the untrained network ``arch`` with weights drawn from ``seed``."""
    builder = ARCHITECTURES[arch][0]
    return builder(np.random.default_rng(seed))


_MISSING_EXTRA = ("nnlib-train needs scikit-learn, from the 'train' extra: "
                  "pip install 'nnserve[train]'")


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits as raw float32 pixels (N, 64) and integer labels (N,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # an optional dependency: say how to get it
        raise SystemExit(_MISSING_EXTRA) from exc
    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Return sorted (train, test) indices: a stratified split drawn from ``seed``.

    Every class gives ``round(count * test_size)`` samples to the test set, chosen by a
    numpy ``default_rng(seed)`` permutation, so the split depends on nothing but the labels,
    the share and the seed.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must lie in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[: round(len(members) * test_size)])
    test_index = np.sort(np.concatenate(test))
    train_index = np.setdiff1d(np.arange(len(labels)), test_index)
    return train_index, test_index


def shift_augment(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, Y)`` plus four copies of every image moved one pixel up, down, left and
    right (the pixel shifted in is 0, the background), in that order: 5x the samples.

    Args:
        X: images as (N, 64) raw pixels of 8x8 digits.
        Y: their targets (N, ...), repeated for each copy.
    """
    images = X.reshape(-1, 8, 8)
    copies = [images]
    for axis in (1, 2):
        for step in (-1, 1):
            moved = np.zeros_like(images)
            source = [slice(None)] * 3
            target = [slice(None)] * 3
            source[axis] = slice(max(0, -step), 8 - max(0, step))
            target[axis] = slice(max(0, step), 8 - max(0, -step))
            moved[tuple(target)] = images[tuple(source)]
            copies.append(moved)
    return np.concatenate(copies).reshape(-1, 64), np.concatenate([Y] * len(copies))


def indices_digest(indices: np.ndarray) -> str:
    """Return the sha256 of a list of sample indices (recorded to pin the split)."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def _created() -> str:
    # SOURCE_DATE_EPOCH (reproducible-builds.org) pins the timestamp, so the same command
    # can also give the same file; parameters are bit-identical either way.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
    return when.isoformat()


def _one_blas_thread():
    """Return a context that runs BLAS on one thread.

    These matrices are small: threads only add synchronisation, and on a busy machine
    OpenBLAS's spinning threads made an epoch 60x slower. One thread also keeps the
    summation order, hence the bits of the parameters, independent of the core count.
    """
    try:
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError as exc:
        raise SystemExit(_MISSING_EXTRA) from exc
    return threadpool_limits(limits=1, user_api="blas")


def _objective(net: Sequential) -> tuple[Sequential, Loss]:
    """Return the part of ``net`` to train and its loss.

    A Softmax head is trained through its logits with the fused, stable CrossEntropyLoss
    (the body shares its layers with ``net``); a LogSoftmax head with NLLLoss.
    """
    if isinstance(net.modules[-1], Softmax):
        return Sequential(*net.modules[:-1]), CrossEntropyLoss()
    return net, NLLLoss()


def train(arch: str, *, epochs: int, seed: int, batch_size: int = 32, lr: float = 1e-3,
          test_size: float = 0.2, split_seed: int = 0, augment: bool = True,
          progress: bool = True, name: str | None = None,
          version: str = "1.0.0") -> tuple[Sequential, dict]:
    """Train ``arch`` on the digits; return the network and its artifact metadata."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose from {sorted(ARCHITECTURES)}")
    _, input_shape, description = ARCHITECTURES[arch]
    X, y = load_data()
    train_index, test_index = split_indices(y, test_size, split_seed)
    Y = one_hot(y, len(LABELS))
    X_train, Y_train = X[train_index], Y[train_index]
    if augment:  # only the training set: the test metrics are on untouched images
        X_train, Y_train = shift_augment(X_train, Y_train)

    def shaped(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), *input_shape)

    net = build_network(arch, seed)
    trained, loss = _objective(net)
    with _one_blas_thread():
        history = fit(trained, loss, shaped(X_train), Y_train, optimizer=Adam(lr),
                      epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
        test_loss, test_accuracy = evaluate(trained, loss, shaped(X[test_index]),
                                            Y[test_index])
        train_loss, train_accuracy = evaluate(trained, loss, shaped(X[train_index]),
                                              Y[train_index])
    head = "softmax" if isinstance(net.modules[-1], Softmax) else "log_softmax"
    metadata = {
        "name": name or f"digits-{arch}",
        "version": version,
        "description": description,
        "input_shape": input_shape,
        "labels": LABELS,
        "output": head,
        "dataset": {
            "name": "sklearn.datasets.load_digits",
            "n_samples": len(y),
            "features": "8x8 images, raw grey levels 0..16 (scaled inside the network)",
            "split": {
                "method": "stratified per class, numpy default_rng(seed) permutation "
                          "(nnlib.cli.split_indices)",
                "test_size": test_size,
                "seed": split_seed,
                "n_train": len(train_index),
                "n_test": len(test_index),
                "test_indices_sha256": indices_digest(test_index),
            },
        },
        "metrics": {
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            "train_accuracy": train_accuracy,
            "train_loss": train_loss,
            "loss": "mean cross-entropy (nats)",
        },
        "training": {
            "arch": arch,
            "epochs": epochs,
            "seed": seed,
            "batch_size": batch_size,
            "optimizer": f"Adam(lr={lr})",
            "augmentation": ("one-pixel shifts up/down/left/right, zero-filled "
                             "(nnlib.cli.shift_augment): 5x the training images")
                            if augment else None,
            "loss": type(loss).__name__,
            "final_epoch_loss": history.loss[-1] if history.loss else None,
            "blas_threads": 1,
        },
        "created": _created(),
        "nnlib_version": __version__,
    }
    return net, metadata


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnlib-train",
        description="Train a digit classifier on scikit-learn's digits and save it as an "
                    "nnlib artifact (see models/README.md).",
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), required=True,
                        help="mlp: Linear/ReLU ending in Softmax, input [64]; cnn: Conv1D "
                             "ending in LogSoftmax, input [8, 8]")
    parser.add_argument("--epochs", type=int, default=60, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and of the shuffling")
    parser.add_argument("--out", type=Path, required=True, help="artifact path (.joblib)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--test-size", type=float, default=0.2,
                        help="share of each class held out for the test metrics")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the held-out split (kept apart from --seed so that "
                             "models trained with different seeds share one test set)")
    parser.add_argument("--no-augment", action="store_true",
                        help="train on the training images only, without their one-pixel "
                             "shifted copies")
    parser.add_argument("--name", help="model name (default: digits-<arch>)")
    parser.add_argument("--version", default="1.0.0", help="model version")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar nor per-epoch figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0:
        _parser().error("--epochs, --batch-size and --lr must be positive")
    if not 0 < args.test_size < 1:
        _parser().error("--test-size must lie strictly between 0 and 1")
    if not args.no_progress:
        try:
            import tqdm  # noqa: F401  (fit draws its bar with it)
        except ImportError:
            print("nnlib-train: tqdm is missing (pip install 'nnserve[train]'); "
                  "training without a progress bar", file=sys.stderr)
    net, metadata = train(args.arch, epochs=args.epochs, seed=args.seed,
                          batch_size=args.batch_size, lr=args.lr, test_size=args.test_size,
                          split_seed=args.split_seed, augment=not args.no_augment,
                          progress=not args.no_progress,
                          name=args.name, version=args.version)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(args.out, net, metadata)
    metrics = metadata["metrics"]
    print(f"{metadata['name']}: held-out accuracy {metrics['test_accuracy']:.4f}, loss "
          f"{metrics['test_loss']:.4f} on {metadata['dataset']['split']['n_test']} samples; "
          f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
