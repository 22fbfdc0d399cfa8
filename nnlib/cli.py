"""The ``nnlib`` command: train, inspect, evaluate, predict with and export networks.

Examples::

    nnlib train --dataset wine --arch "Standardize -> Linear(13, 32) -> ReLU -> \
        Linear(32, 3) -> Softmax" --epochs 200 --seed 0 --name wine-mlp \
        --out models/wine-mlp.joblib
    nnlib inspect models/wine-mlp.joblib
    nnlib evaluate models/wine-mlp.joblib --dataset wine --split val
    nnlib predict models/wine-mlp.joblib samples.csv
    nnlib export models/wine-mlp.joblib --onnx wine-mlp.onnx

``nnlib-train`` (:func:`nnlib_train_main`) is the original digits command, kept as it was:
``nnlib-train --arch mlp`` trains the same parameters as ``nnlib train --arch digits-mlp``.
The digits networks take the raw pixels of :func:`sklearn.datasets.load_digits` (grey
levels 0..16): the scaling to [0, 1] is their first layer, ``Scale(1/16)``, so clients never
preprocess. Every held-out split is stratified and seeded (:func:`split_indices`) and
recorded in the artifact's ``metadata["dataset"]["split"]``. The same command and seed give
bit-identical parameters; with ``SOURCE_DATE_EPOCH`` set, a bit-identical file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .activation import LogSoftmax, ReLU, Softmax
from .conv import Conv1D, Flatten, MaxPool1D
from .data import (
    BUNDLED,
    DataError,
    Dataset,
    file_digest,
    indices_digest,
    load_bundled,
    read_csv,
    read_data,
    split_indices,
)
from .io import FORMAT_VERSION, Artifact, load, save
from .limits import ArtifactError
from .linear import Linear, Scale
from .loss import CrossEntropyLoss, Loss, NLLLoss, one_hot
from .metrics import classification_report
from .module import Module, Sequential
from .optim import SGD, Adam
from .preprocessing import Standardize
from .spec import SpecError, build, format_spec, load_spec
from .train import History, evaluate, fit

__all__ = ["ARCHITECTURES", "PRESETS", "CommandError", "build_network", "fit_standardizers",
           "indices_digest", "load_data", "main", "nnlib_train_main", "probabilities",
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
        # For clients that draw or show the input (the demo page): an 8x8 grey-level grid.
        "input_kind": {"type": "image", "grid": [8, 8], "range": [0, PIXEL_MAX]},
    }
    return net, metadata


def _nnlib_train_parser() -> argparse.ArgumentParser:
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


def nnlib_train_main(argv: list[str] | None = None) -> int:
    """Run ``nnlib-train`` (the digits presets); return the exit status."""
    args = _nnlib_train_parser().parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or not args.lr > 0:
        _nnlib_train_parser().error("--epochs, --batch-size and --lr must be positive")
    if not 0 < args.test_size < 1:
        _nnlib_train_parser().error("--test-size must lie strictly between 0 and 1")
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




# ---------------------------------------------------------------------------------------
# The `nnlib` command.

_PROG = "nnlib"
OUTPUT_FORMATS = ("csv", "jsonl")


class CommandError(Exception):
    """A sub-command cannot go on; ``status`` is the exit status (2: input, 1: file/tool)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


class _Fixed(Module):
    """A parameter-free view of a layer, so that no optimizer step can change it.

    ``nnlib train`` trains through it around each :class:`Standardize`: its statistics
    would otherwise be shrunk by weight decay, like any parameter.
    """

    def __init__(self, module: Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.module.forward(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.module.predict(X)

    def backward_delta(self, input: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.module.backward_delta(input, delta)


def _leaves(module: Module) -> list[Module]:
    """Return the layers of nested Sequentials in forward order (they chain the same)."""
    if type(module) is Sequential:
        return [leaf for child in module.modules for leaf in _leaves(child)]
    return [module]


def _fix_statistics(module: Module) -> Module:
    if type(module) is Sequential:
        return Sequential(*map(_fix_statistics, module.modules))
    return _Fixed(module) if isinstance(module, Standardize) else module


def fit_standardizers(net: Sequential, X: np.ndarray) -> int:
    """Fit every :class:`Standardize` of ``net`` on what reaches it from ``X``; return how many.

    Raises:
        CommandError: a Standardize after a layer with trainable parameters (its input
            would change during training, and its statistics are fitted once, before).
    """
    layers, count = _leaves(net), 0
    for index, layer in enumerate(layers):
        if not isinstance(layer, Standardize):
            continue
        trained = next((m for m in layers[:index]
                        if m.parameters() and not isinstance(m, Standardize)), None)
        if trained is not None:
            raise CommandError(f"Standardize must come before every trainable layer: its "
                               f"statistics are fitted once, before training, but it follows "
                               f"{trained!r}")
        layer.fit(Sequential(*layers[:index]).predict(X) if index else X)
        count += 1
    return count


def probabilities(model: Sequential, output: str, X: np.ndarray) -> np.ndarray:
    """Return the class probabilities the server's ``/predict`` gives for ``X``.

    As ``app.inference``: the network's output, exponentiated for a ``"log_softmax"``
    head, as C-contiguous float32 of shape (N, classes).
    """
    with np.errstate(all="ignore"):  # an overflow shows as non-finite values, checked by callers
        out = model.predict(np.asarray(X, dtype=np.float32))
        probs = np.exp(out) if output == "log_softmax" else out
    return np.ascontiguousarray(probs, dtype=np.float32)


# --- train ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named network: how to build it for (features, classes), and the data it is for."""

    build: Callable[[int, int, np.random.Generator], Sequential]
    help: str
    dataset: str | None = None  # the only dataset it trains on, if any
    input_shape: list[int] | None = None
    augment: Callable | None = None
    description: str | None = None


def _tabular_mlp(features: int, classes: int, rng: np.random.Generator) -> Sequential:
    return Sequential(Standardize(features), Linear(features, 64, rng=rng), ReLU(),
                      Linear(64, classes, rng=rng), Softmax())


PRESETS: dict[str, Preset] = {
    "digits-mlp": Preset(lambda f, c, rng: _mlp(rng), "nnlib-train's mlp on the digits",
                         "digits", [64], shift_augment, ARCHITECTURES["mlp"][2]),
    "digits-cnn": Preset(lambda f, c, rng: _cnn(rng), "nnlib-train's cnn on the digits",
                         "digits", [8, 8], shift_augment, ARCHITECTURES["cnn"][2]),
    "mlp": Preset(_tabular_mlp, "Standardize -> Linear(F, 64) -> ReLU -> Linear(64, C) -> "
                  "Softmax, for F features and C classes"),
}


def _optimizer(args: argparse.Namespace):
    sgd_only = {"--momentum": args.momentum, "--weight-decay": args.weight_decay}
    adam_only = {"--betas": args.betas, "--eps": args.eps}
    wrong = [flag for flag, value in (adam_only if args.optimizer == "sgd" else sgd_only)
             .items() if value is not None]
    if wrong:
        raise CommandError(f"{', '.join(wrong)} do not apply to --optimizer {args.optimizer}")
    if args.optimizer == "sgd":
        return SGD(args.lr if args.lr is not None else 1e-2, momentum=args.momentum or 0.0,
                   weight_decay=args.weight_decay or 0.0)
    return Adam(args.lr if args.lr is not None else 1e-3,
                betas=tuple(args.betas) if args.betas else (0.9, 0.999),
                eps=args.eps if args.eps is not None else 1e-8)


def _training_data(args: argparse.Namespace, preset: Preset | None) -> Dataset:
    dataset = args.dataset
    if preset is not None and preset.dataset is not None:
        if args.data is not None or dataset not in (None, preset.dataset):
            raise CommandError(f"--arch {args.arch} trains on --dataset {preset.dataset} only")
        dataset = preset.dataset
    if (args.data is None) == (dataset is None):
        raise CommandError("give the training data: a DATA file (.csv or .npz) or --dataset")
    if dataset is not None:
        return load_bundled(dataset)
    return read_data(args.data, args.target)


def _shaped(X: np.ndarray, input_shape: list[int], what: str) -> np.ndarray:
    if math.prod(input_shape) != math.prod(X.shape[1:]):
        raise CommandError(f"{what} has samples of shape {list(X.shape[1:])}, which cannot be "
                           f"read as the network's input shape {input_shape}")
    return X.reshape(len(X), *input_shape)


def _plot(history: History, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history.loss) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, train_values, val_values, title in (
            (loss_axes, history.loss, history.val_loss, "loss (mean cross-entropy)"),
            (accuracy_axes, history.accuracy, history.val_accuracy, "accuracy")):
        axes.plot(epochs, train_values, label="train")
        if val_values:
            axes.plot(epochs, val_values, label="validation")
        axes.set(title=title, xlabel="epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _check_plot_extra() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError("--plot needs matplotlib, from the 'plot' extra: "
                           "pip install 'nnserve[plot]'", status=1) from None


def run_train(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib train``: read, split, build, check, train, evaluate, save (see its help)."""
    if args.plot is not None:
        _check_plot_extra()
    preset = PRESETS.get(args.arch)
    data = _training_data(args, preset)
    if len(data.labels) < 2 or len(np.unique(data.y)) < 2:
        raise CommandError(f"{data.source['name']}: the data has only one class "
                           f"({data.labels[int(data.y[0])]!r}): a classifier needs two or more")
    input_shape = (preset.input_shape if preset and preset.input_shape else
                   args.input_shape or data.input_shape)
    X = _shaped(data.X, input_shape, data.source["name"])
    n_classes = len(data.labels)

    # The network, checked before any training.
    rng = np.random.default_rng(args.seed)
    if preset is not None:
        net = preset.build(math.prod(input_shape), n_classes, rng)
        out_shape = list(net.predict(np.zeros((1, *input_shape), np.float32)).shape[1:])
    else:
        net, out_shape = build(load_spec(args.arch), input_shape, rng)
    head = type(net.modules[-1]) if net.modules else None
    if head not in (Softmax, LogSoftmax):
        raise CommandError("the network must end in Softmax or LogSoftmax (the served "
                           f"output heads), not {head.__name__ if head else 'nothing'}")
    if out_shape != [n_classes]:
        raise CommandError(f"the network gives samples of shape {out_shape}, but the data "
                           f"has {n_classes} classes {data.labels}: end in "
                           f"[{n_classes}]")

    # The held-out data: a separate file, or a stratified seeded split.
    if args.val is not None:
        val = read_data(args.val, args.target, features=data.features, labels=data.labels)
        train_index = np.arange(len(X))
        X_val, y_val = _shaped(val.X, input_shape, val.source["name"]), val.y
        split = {"method": "separate file", **val.source}
    elif args.val_split > 0:
        train_index, val_index = split_indices(data.y, args.val_split, args.split_seed)
        X_val, y_val = X[val_index], data.y[val_index]
        split = {"method": "stratified per class, numpy default_rng(seed) permutation "
                           "(nnlib.data.split_indices)",
                 "test_size": args.val_split, "seed": args.split_seed,
                 "n_train": len(train_index), "n_test": len(val_index),
                 "test_indices_sha256": indices_digest(val_index)}
    else:
        train_index, X_val, y_val, split = np.arange(len(X)), None, None, {"method": "none"}
    X_train, Y_train = X[train_index], one_hot(data.y[train_index], n_classes)
    if len(X_train) == 0:
        raise CommandError("no training samples are left after the split")
    fitted = fit_standardizers(net, X_train)
    augment = preset.augment if preset and args.augment else None
    if augment is not None:  # the training samples only: metrics are on untouched ones
        X_train, Y_train = augment(X_train.reshape(len(X_train), -1), Y_train)
        X_train = X_train.reshape(len(X_train), *input_shape)
    validation = None if X_val is None else (X_val, one_hot(y_val, n_classes))
    optimizer = _optimizer(args)

    body, loss = _objective(net)
    trained = _fix_statistics(body)
    with _one_blas_thread():
        history = fit(trained, loss, X_train, Y_train, optimizer=optimizer,
                      epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                      validation_data=validation, patience=args.patience,
                      min_delta=args.min_delta, progress=not args.quiet and sys.stderr.isatty())
        train_loss, train_accuracy = evaluate(trained, loss, X[train_index],
                                              one_hot(data.y[train_index], n_classes))
        metrics = {"train_accuracy": train_accuracy, "train_loss": train_loss}
        if validation is not None:
            val_loss, val_accuracy = evaluate(trained, loss, *validation)
            report = classification_report(
                y_val, probabilities(net, _head_name(net), X_val).argmax(axis=1), data.labels)
            metrics.update(val_accuracy=val_accuracy, val_loss=val_loss,
                           val_macro_f1=report["macro"]["f1"],
                           val_per_class=report["per_class"],
                           val_confusion_matrix=report["confusion_matrix"])
    metrics["loss"] = "mean cross-entropy (nats)"

    name = args.name or (args.arch if preset and preset.dataset else
                         args.dataset or Path(data.source["name"]).stem)
    spec_text = format_spec(net)
    description = args.description or (preset and preset.description) or (
        f"{n_classes}-class classifier ({', '.join(data.labels)}) of "
        f"{math.prod(input_shape)} raw features, trained on {data.source['name']}: "
        f"{spec_text}.")
    metadata = {
        "name": name,
        "version": args.version,
        "description": description,
        "input_shape": list(input_shape),
        "labels": data.labels,
        "output": _head_name(net),
        **({"features": data.features} if data.features else {}),
        # One real input, raw, for clients to start from (the demo page's form): the first
        # held-out sample, else the first training one; rounded to the data's 6 digits.
        "example": np.round((X[train_index] if X_val is None else X_val)[0].astype(
            np.float64), 6).tolist(),
        "dataset": {**data.source, "split": split},
        "metrics": metrics,
        "training": {
            "arch": args.arch,
            "network": spec_text,
            "epochs": args.epochs,
            "epochs_run": len(history.loss),
            "stopped_early": history.stopped_early,
            "best_epoch": None if history.best_epoch is None else history.best_epoch + 1,
            "patience": args.patience,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "optimizer": repr(optimizer),
            "loss": type(loss).__name__,
            "standardize_layers_fitted": fitted,
            "augmentation": "one-pixel shifts (nnlib.cli.shift_augment)" if augment else None,
            "history": dataclasses.asdict(history),
            "blas_threads": 1,
        },
        "command": shlex.join([_PROG, *argv]),
        "created": _created(),
        "nnlib_version": __version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save(args.out, net, metadata)
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        _plot(history, args.plot)
    held_out = (f"validation accuracy {metrics['val_accuracy']:.4f} on {len(y_val)} samples"
                if validation is not None else f"training accuracy {train_accuracy:.4f}")
    print(f"{name}: {held_out}, {len(history.loss)} epochs; saved {args.out}")
    return 0


def _head_name(net: Sequential) -> str:
    return "softmax" if isinstance(net.modules[-1], Softmax) else "log_softmax"


# --- inspect ----------------------------------------------------------------------------


def _load(path: Path) -> Artifact:
    try:
        return load(path)
    except ArtifactError as exc:
        raise CommandError(str(exc), status=1) from None


def _format_version(artifact: Artifact) -> int:
    # The loader reads one format only: a file it loaded is in that one.
    return FORMAT_VERSION


def _layers(model: Sequential, prefix: str = "") -> list[dict]:
    rows = []
    for index, module in enumerate(model.modules):
        if type(module) is Sequential:
            rows.extend(_layers(module, f"{prefix}{index}."))
        else:
            rows.append({"index": f"{prefix}{index}", "layer": format_spec(module),
                         "parameters": int(sum(p.size for p in module.parameters().values()))})
    return rows


def run_inspect(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib inspect``: what a file holds, or why it does not load (exit status 1)."""
    artifact = _load(args.file)
    model, metadata = artifact
    layers = _layers(model)
    report = {
        "file": str(args.file),
        "file_sha256": file_digest(args.file),
        "format_version": _format_version(artifact),
        "digest": "verified",  # load refuses any file whose sha256 does not match
        "network": format_spec(model),
        "layers": layers,
        "parameters": sum(row["parameters"] for row in layers),
        "metadata": metadata,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    width = max(len(row["layer"]) for row in layers) + 2
    print(f"{report['file']}: nnlib artifact, format {report['format_version']}, sha256 "
          f"verified\n  file sha256 {report['file_sha256']}")
    print(f"  {metadata['name']} {metadata['version']}: input {metadata['input_shape']}, "
          f"{metadata['output']} over {len(metadata['labels'])} labels")
    print(f"\n  {'layer':<{width + 4}}parameters")
    for row in layers:
        print(f"  {row['index']:<4}{row['layer']:<{width}}{row['parameters']:>10,}")
    print(f"  {'total':<{width + 4}}{report['parameters']:>10,}\n\nmetadata:")
    print(json.dumps(metadata, indent=2))
    return 0


# --- evaluate / predict -----------------------------------------------------------------


def _model_data(args: argparse.Namespace, metadata: dict, need_labels: bool) -> Dataset:
    """Read DATA or --dataset for a model: its feature columns, its labels, its shape."""
    if (args.data is None) == (args.dataset is None):
        raise CommandError("give the data: a DATA file (.csv or .npz) or --dataset")
    labels = metadata["labels"]
    if args.dataset is not None:
        data = load_bundled(args.dataset)
        if need_labels:  # map the dataset's class names onto the model's
            names = [data.labels[i] for i in data.y]
            data.y = np.array([_label_index(labels, n, args.dataset) for n in names], np.int64)
            data.labels = list(labels)
        return data
    target = args.target or metadata.get("dataset", {}).get("target")
    features = metadata.get("features")
    if Path(args.data).suffix.lower() == ".csv" and not need_labels:
        try:  # a CSV of features only: the target column is optional
            return read_csv(args.data, None, features=features or None, labels=labels)
        except DataError:
            if target is None:
                raise
    return read_data(args.data, target, features=features, labels=labels,
                     need_labels=need_labels)


def _label_index(labels: list[str], name: str, source: str) -> int:
    if name not in labels:
        raise CommandError(f"{source}: class {name!r} is not one of the model's labels {labels}")
    return labels.index(name)


def _select_split(args: argparse.Namespace, data: Dataset, metadata: dict) -> Dataset:
    if args.split == "all":
        return data
    split = metadata.get("dataset", {}).get("split", {})
    if "seed" not in split or "test_size" not in split:
        raise CommandError(f"--split {args.split}: the artifact records no seeded split")
    train_index, test_index = split_indices(data.y, split["test_size"], split["seed"])
    if indices_digest(test_index) != split.get("test_indices_sha256"):
        raise CommandError(f"--split {args.split}: this data does not give the recorded split "
                           "(its held-out indices have another sha256): is it the training "
                           "data?")
    return data.subset(test_index if args.split == "val" else train_index)


def run_evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib evaluate``: accuracy, per-class precision/recall/F1, confusion matrix."""
    model, metadata = _load(args.file)
    data = _select_split(args, _model_data(args, metadata, need_labels=True), metadata)
    probs = probabilities(model, metadata["output"],
                          _shaped(data.X, metadata["input_shape"], "the data"))
    report = classification_report(data.y, probs.argmax(axis=1), metadata["labels"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    labels = metadata["labels"]
    width = max(12, *(len(label) + 2 for label in labels))
    print(f"{metadata['name']} {metadata['version']} on {data.source['name']}"
          f"{'' if args.split == 'all' else f' ({args.split} split)'}: accuracy "
          f"{report['accuracy']:.4f} ({report['n_samples']} samples)\n")
    print(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, row in report["per_class"].items():
        print(f"{label:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}"
              f"{row['f1']:>10.4f}{row['support']:>10}")
    macro = report["macro"]
    print(f"{'macro avg':<{width}}{macro['precision']:>10.4f}{macro['recall']:>10.4f}"
          f"{macro['f1']:>10.4f}{report['n_samples']:>10}\n")
    print("confusion matrix (rows: true class, columns: predicted)")
    cell = max(6, *(len(label) + 1 for label in labels))
    print(" " * width + "".join(f"{label:>{cell}}" for label in labels))
    for label, row in zip(labels, report["confusion_matrix"], strict=True):
        print(f"{label:<{width}}" + "".join(f"{count:>{cell}}" for count in row))
    return 0


def _float32_text(value: np.float32) -> str:
    return str(value)  # numpy prints the shortest text that reads back as this float32


def run_predict(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib predict``: the server's /predict answers, offline, as CSV or JSON lines."""
    import orjson

    model, metadata = _load(args.file)
    data = _model_data(args, metadata, need_labels=False)
    X = _shaped(data.X, metadata["input_shape"], "the data")
    step = args.batch_size or max(1, len(X))
    # One forward pass per batch, as one request of that many samples gets: BLAS picks its
    # kernel by the number of rows, so other batch sizes may round the last digit otherwise.
    probs = np.concatenate([probabilities(model, metadata["output"], X[i : i + step])
                            for i in range(0, len(X), step)])
    if not np.isfinite(probs).all():
        row = int(np.argmin(np.isfinite(probs).all(axis=1)))
        raise CommandError(f"sample {row}: the network gives no finite probabilities (its "
                           "values are too large for it)", status=1)
    labels, classes = metadata["labels"], probs.argmax(axis=1)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        if args.format == "jsonl":
            for index, row in zip(classes, probs, strict=True):
                out.write(orjson.dumps({"label": labels[index], "class_index": int(index),
                                        "probabilities": row},
                                       option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        else:
            writer = csv.writer(out)
            writer.writerow(["label", "class_index", *(f"p_{label}" for label in labels)])
            for index, row in zip(classes, probs, strict=True):
                writer.writerow([labels[index], int(index), *map(_float32_text, row)])
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# --- export / convert -------------------------------------------------------------------


def run_export(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib export``: the network as a checked ONNX model."""
    from .export import OPSET, to_onnx

    model, metadata = _load(args.file)
    try:
        proto = to_onnx(model, metadata)
    except ImportError as exc:
        raise CommandError(str(exc), status=1) from None
    except ValueError as exc:
        raise CommandError(f"{args.file}: {exc}", status=1) from None
    args.onnx.parent.mkdir(parents=True, exist_ok=True)
    args.onnx.write_bytes(proto.SerializeToString())
    print(f"{args.onnx}: ONNX opset {OPSET}, {len(proto.graph.node)} nodes, input "
          f"'input' [batch, {', '.join(map(str, metadata['input_shape']))}] float32, output "
          f"'output' ({metadata['output']}); checked by onnx.checker")
    return 0


def run_convert(args: argparse.Namespace, argv: list[str]) -> int:
    """``nnlib convert``: rewrite a format-1 artifact as format 2."""
    from .format1 import convert  # imports joblib's reader only for this command

    try:
        convert(args.old, args.new)
    except ArtifactError as exc:
        raise CommandError(str(exc), status=1) from None
    print(f"{args.new}: converted from {args.old}")
    return 0


# --- the parser -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.split(",")]
    except ValueError:
        shape = []
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be positive sizes separated by commas, got "
                                         f"{text!r}")
    return shape


_TRAIN_EPILOG = """\
DATA is a CSV file with a header row (numeric features, a class column named by --target,
string or integer labels), or an .npz file with arrays X (N, features...) and y (N,).
A bad cell is refused, naming its line and column; nothing is written on any error.

--arch is a preset or a spec. A spec is text, layers joined by '->', literal arguments:
  "Standardize -> Linear(13, 32) -> ReLU -> Linear(32, 3) -> Softmax"
or a .json/.toml file of {"type": ..., "config": {...}} layers (the artifact's form; a
JSON list or an "architecture" list). Every nnlib layer may appear; the network must end
in Softmax or LogSoftmax with one output per class. Its shapes are checked layer by layer
before training. Standardize (per-feature mean and scale, fitted on the training split and
saved in the network, so clients send raw features) may omit its size.

The held-out split is stratified per class and seeded; it gives the validation figures
(the progress bar, early stopping, the metrics recorded). The artifact's metadata records
the labels, feature names, input shape, data source and sha256, the split, the metrics,
the training settings and history, and this command. The same command gives the same
parameters bit for bit; set SOURCE_DATE_EPOCH to pin 'created' and get the same file.

example:
  nnlib train --dataset wine --arch "Standardize -> Linear(13, 32) -> ReLU -> \\
    Linear(32, 3) -> Softmax" --name wine-mlp --out models/wine-mlp.joblib
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Train, inspect, evaluate, predict with and export nnlib "
                                "networks (artifacts as served by nnserve).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser(
        "train", help="train a network on a CSV/npz file or a bundled dataset",
        description="Train a classifier and save it as an nnlib artifact.",
        epilog=_TRAIN_EPILOG, formatter_class=formatter)
    data = train.add_argument_group("data")
    data.add_argument("data", nargs="?", type=Path, metavar="DATA",
                      help="training data: a .csv or .npz file")
    data.add_argument("--dataset", choices=sorted(BUNDLED),
                      help="instead of DATA, a dataset bundled with scikit-learn (no download)")
    data.add_argument("--target", metavar="COLUMN", help="the CSV column holding the classes")
    data.add_argument("--val", type=Path, metavar="FILE",
                      help="validation data in a separate file (same columns) instead of a "
                           "split")
    data.add_argument("--val-split", type=_share, default=0.2, metavar="SHARE",
                      help="share of each class held out for validation (default: 0.2; 0: "
                           "none)")
    data.add_argument("--split-seed", type=int, default=0,
                      help="seed of the split (default: 0; apart from --seed so that runs "
                           "with different seeds share one validation set)")
    data.add_argument("--input-shape", type=_shape, metavar="N[,N...]",
                      help="read each sample as this shape, e.g. 8,8 (default: as stored)")
    net = train.add_argument_group("network")
    net.add_argument("--arch", required=True, metavar="PRESET|SPEC",
                     help="a preset (" + "; ".join(f"{name}: {preset.help}"
                                                   for name, preset in PRESETS.items())
                          + "), a spec text, or a .json/.toml spec file")
    net.add_argument("--no-augment", dest="augment", action="store_false",
                     help="digits presets: no one-pixel shifted copies of the training images")
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                     help="default: adam")
    opt.add_argument("--lr", type=_positive_float,
                     help="learning rate (default: 1e-3 for adam, 1e-2 for sgd)")
    opt.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"),
                     help="adam: moment decay rates (default: 0.9 0.999)")
    opt.add_argument("--eps", type=_positive_float, help="adam: epsilon (default: 1e-8)")
    opt.add_argument("--momentum", type=float, help="sgd: momentum (default: 0)")
    opt.add_argument("--weight-decay", type=float, help="sgd: L2 weight decay (default: 0)")
    opt.add_argument("--epochs", type=_positive_int, default=60, help="default: 60")
    opt.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    opt.add_argument("--patience", type=_positive_int, metavar="EPOCHS",
                     help="stop early after this many epochs without a lower validation "
                          "loss, and keep the best epoch's parameters (default: off)")
    opt.add_argument("--min-delta", type=float, default=0.0,
                     help="the smallest decrease of the loss that counts (default: 0)")
    opt.add_argument("--seed", type=int, default=0,
                     help="seed of the initial weights and of the shuffling (default: 0)")
    out = train.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, metavar="FILE.joblib",
                     help="artifact path")
    out.add_argument("--name", help="model name (default: from the data)")
    out.add_argument("--version", default="1.0.0", help="model version (default: 1.0.0)")
    out.add_argument("--description", help="model description (default: generated)")
    out.add_argument("--plot", type=Path, metavar="FILE.png",
                     help="write the learning curves (needs the 'plot' extra)")
    out.add_argument("--quiet", action="store_true",
                     help="no progress bar (there is none when stderr is not a terminal)")
    train.set_defaults(run=run_train)

    inspect_ = commands.add_parser(
        "inspect", help="show an artifact's network, parameters and metadata",
        description="Show an artifact's architecture, parameter count per layer, metadata, "
                    "format version and digest status. A file that does not load gets the "
                    "loader's reason and exit status 1.")
    inspect_.add_argument("file", type=Path, metavar="FILE")
    inspect_.add_argument("--json", action="store_true", help="print JSON")
    inspect_.set_defaults(run=run_inspect)

    for name, run, summary in (
            ("evaluate", run_evaluate, "accuracy, per-class precision/recall/F1 and the "
                                       "confusion matrix on labelled data"),
            ("predict", run_predict, "class probabilities for each sample, as the server's "
                                     "/predict gives them")):
        sub = commands.add_parser(name, help=summary, description=summary[0].upper()
                                  + summary[1:] + ". A CSV is read by the model's feature "
                                  "names when it has them (other columns are ignored).")
        sub.add_argument("file", type=Path, metavar="FILE", help="the artifact")
        sub.add_argument("data", nargs="?", type=Path, metavar="DATA",
                         help="a .csv (header row) or .npz file")
        sub.add_argument("--dataset", choices=sorted(BUNDLED),
                         help="instead of DATA, a dataset bundled with scikit-learn")
        sub.add_argument("--target", metavar="COLUMN",
                         help="the class column (default: the one the model was trained on)")
        sub.set_defaults(run=run)
        if name == "evaluate":
            sub.add_argument("--split", choices=("all", "train", "val"), default="all",
                             help="with the training data: only the split recorded in the "
                                  "artifact (default: all samples)")
            sub.add_argument("--json", action="store_true", help="print JSON")
        else:
            sub.add_argument("--format", choices=OUTPUT_FORMATS, default="csv",
                             help="csv: label, class_index, p_<label>...; jsonl: one "
                                  "{label, class_index, probabilities} per line "
                                  "(default: csv)")
            sub.add_argument("--out", type=Path, metavar="FILE",
                             help="write there (default: standard output)")
            sub.add_argument("--batch-size", type=_positive_int, metavar="N",
                             help="samples per forward pass (default: all in one). The "
                                  "numbers are those of a /predict request of N samples; "
                                  "another batch size may differ in the last float32 digit, "
                                  "as BLAS picks its kernel by the number of rows")

    export = commands.add_parser(
        "export", help="export a network to ONNX",
        description="Export an artifact's network as standard ONNX operators (opset 17), "
                    "its metadata as ONNX metadata properties (JSON values), checked by "
                    "onnx.checker. Needs the 'onnx' extra.")
    export.add_argument("file", type=Path, metavar="FILE")
    export.add_argument("--onnx", type=Path, required=True, metavar="OUT.onnx")
    export.set_defaults(run=run_export)

    convert = commands.add_parser(
        "convert", help="convert a format-1 artifact to format 2",
        description="Read a format-1 artifact (verified as ever) and write it as format 2: "
                    "the same network, parameters and metadata.")
    convert.add_argument("old", type=Path, metavar="OLD", help="the format-1 artifact")
    convert.add_argument("new", type=Path, metavar="NEW", help="where to write format 2")
    convert.set_defaults(run=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nnlib``; return the exit status (0; 2 for bad input; 1 for a bad file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        return args.run(args, argv)
    except (CommandError, DataError, SpecError) as exc:
        status = getattr(exc, "status", 2)
        print(f"{_PROG} {args.command}: error: {exc}", file=sys.stderr)
        return status
    except BrokenPipeError:  # `nnlib inspect FILE | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
