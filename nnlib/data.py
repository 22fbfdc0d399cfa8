"""Labelled tables for training and evaluation: CSV files, ``.npz`` arrays, scikit-learn's
bundled datasets, and the seeded stratified split.

Every reader returns a :class:`Dataset` of float32 features and integer class indices, or
raises :class:`DataError` naming the file, the line and the column of the first bad value.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["BUNDLED", "DataError", "Dataset", "indices_digest", "load_bundled", "read_csv",
           "read_data", "read_npz", "split_indices"]

#: ``--dataset`` name -> scikit-learn loader; all ship with scikit-learn (no download).
BUNDLED = {
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MISSING_SKLEARN = ("scikit-learn is needed for the bundled datasets, from the 'train' "
                   "extra: pip install 'nnserve[train]'")


class DataError(ValueError):
    """Data that cannot be used: the message names the source and, for a cell, where it is."""


@dataclasses.dataclass
class Dataset:
    """Samples with their classes, and where they came from.

    Attributes:
        X: float32 features, shape (N, *input_shape).
        y: class indices into ``labels``, int64 of shape (N,); None for unlabelled data.
        labels: class names, in class-index order.
        features: the names of the features (the last axis), or None.
        source: plain-data description: name, format, n_samples, sha256 (and of what).
    """

    X: np.ndarray
    y: np.ndarray | None
    labels: list[str]
    features: list[str] | None
    source: dict

    @property
    def input_shape(self) -> list[int]:
        return list(self.X.shape[1:])

    def subset(self, index: np.ndarray) -> Dataset:
        """Return the samples at ``index`` (same labels, features and source)."""
        return Dataset(self.X[index], None if self.y is None else self.y[index], self.labels,
                       self.features, self.source)


def file_digest(path: Path) -> str:
    """Return the sha256 of the file's bytes (what ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _label_text(value: str) -> str:
    """Return a label as written, but an integer label in canonical form ("07" is "7")."""
    value = value.strip()
    try:
        return str(int(value))
    except ValueError:
        return value


def _order_labels(names: Sequence[str]) -> list[str]:
    """Return the distinct labels sorted: by value when all are integers, else as text."""
    distinct = set(names)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def _encode(names: Sequence[str], labels: Sequence[str] | None,
            where: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Return the class index of each name, and the labels (inferred when not given)."""
    known = list(labels) if labels is not None else _order_labels(names)
    index = {label: i for i, label in enumerate(known)}
    y = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        if name not in index:
            raise DataError(f"{where[i]}: label {name!r} is not one of the model's labels "
                            f"{known}")
        y[i] = index[name]
    return y, known


def read_csv(path: str | os.PathLike, target: str | None, *,
             features: Sequence[str] | None = None,
             labels: Sequence[str] | None = None) -> Dataset:
    """Read a CSV file with a header row: numeric feature columns and a class column.

    Args:
        path: the file (UTF-8, comma-separated, optionally quoted).
        target: the column of class labels (strings or integers); None for unlabelled data.
        features: the feature columns to take, in this order; by default every column but
            ``target``, in file order. Other columns are ignored.
        labels: the known class names (e.g. a model's); by default the distinct values of
            ``target``, sorted (numerically when all are integers).

    Raises:
        DataError: an empty file, a header without rows, a duplicate or missing column, a
            row whose field count differs from the header's, or a feature cell that is
            empty, not a number, NaN or infinite; the message names the line and column.
    """
    path = Path(path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a header row)")
            header = [name.strip() for name in header]
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise DataError(f"{path}: the header names columns {duplicates} more than once")
            if target is not None and target not in header:
                raise DataError(f"{path}: there is no column {target!r}; the columns are "
                                f"{header}")
            names = list(features) if features is not None else \
                [name for name in header if name != target]
            absent = [name for name in names if name not in header]
            if absent:
                raise DataError(f"{path}: there is no column {absent[0]!r}, a feature of the "
                                f"model; the columns are {header}")
            if not names:
                raise DataError(f"{path}: there is no feature column besides {target!r}")
            columns = [header.index(name) for name in names]
            rows, classes, where = [], [], []
            for fields in reader:
                line = reader.line_num
                if not fields:  # a blank line, as csv.reader gives it
                    continue
                if len(fields) != len(header):
                    raise DataError(f"{path}, line {line}: {len(fields)} fields, but the "
                                    f"header has {len(header)}")
                rows.append([_number(fields[c], path, line, header[c]) for c in columns])
                if target is not None:
                    label = _label_text(fields[header.index(target)])
                    if not label:
                        raise DataError(f"{path}, line {line}, column {target!r}: missing "
                                        "label")
                    classes.append(label)
                    where.append(f"{path}, line {line}, column {target!r}")
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
    if not rows:
        raise DataError(f"{path}: the header has no data rows after it")
    y, known = (None, list(labels or [])) if target is None else _encode(classes, labels,
                                                                        where)
    source = {"name": path.name, "format": "csv", "target": target, "n_samples": len(rows),
              "sha256": file_digest(path), "sha256_of": "the file's bytes"}
    return Dataset(np.array(rows, dtype=np.float32), y, known, names, source)


def _number(cell: str, path: Path, line: int, column: str) -> float:
    where = f"{path}, line {line}, column {column!r}"
    text = cell.strip()
    if not text:
        raise DataError(f"{where}: missing value")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {cell!r} is not a number") from None
    # float32 is what the network sees: a value beyond its range would become infinite.
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise DataError(f"{where}: {cell!r} is not a finite float32 number")
    return value


def read_npz(path: str | os.PathLike, *, labels: Sequence[str] | None = None,
             need_labels: bool = True) -> Dataset:
    """Read ``X`` (N, *input_shape) numbers and ``y`` (N,) labels from a numpy ``.npz`` file.

    Pickled objects are refused (``allow_pickle=False``). ``y`` holds integers or strings;
    ``labels`` works as in :func:`read_csv`. With ``need_labels=False`` ``y`` may be absent.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files if key in ("X", "y")}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "X" not in arrays or (need_labels and "y" not in arrays):
        raise DataError(f"{path}: an .npz data file needs the arrays 'X' and 'y'")
    X = arrays["X"]
    if X.dtype.kind not in "biuf" or X.ndim < 2 or len(X) == 0:
        raise DataError(f"{path}: 'X' must be a non-empty numeric array (N, features...), got "
                        f"{X.dtype} of shape {list(X.shape)}")
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    bad = np.argwhere(~np.isfinite(X32))
    if len(bad):
        at = ", ".join(map(str, bad[0]))
        raise DataError(f"{path}: X[{at}] = {X[tuple(bad[0])].item()!r} is not a finite float32 "
                        "number")
    y, known = None, list(labels or [])
    if "y" in arrays:
        raw = arrays["y"]
        if raw.shape != (len(X),) or raw.dtype.kind not in "biuU":
            raise DataError(f"{path}: 'y' must hold {len(X)} integer or string labels, got "
                            f"{raw.dtype} of shape {list(raw.shape)}")
        names = [_label_text(str(value)) for value in raw.tolist()]
        y, known = _encode(names, labels, [f"{path}: y[{i}]" for i in range(len(names))])
    source = {"name": path.name, "format": "npz", "n_samples": len(X),
              "sha256": file_digest(path), "sha256_of": "the file's bytes"}
    return Dataset(X32, y, known, None, source)


def load_bundled(name: str) -> Dataset:
    """Return one of scikit-learn's bundled datasets (:data:`BUNDLED`), raw float32 features."""
    if name not in BUNDLED:
        raise DataError(f"unknown dataset {name!r}: choose from {sorted(BUNDLED)}")
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise DataError(MISSING_SKLEARN) from exc
    bunch = getattr(datasets, BUNDLED[name])()
    X = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    labels = [str(label) for label in bunch.target_names]
    features = [str(feature) for feature in getattr(bunch, "feature_names", [])] or None
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(X, "<f4"), np.ascontiguousarray(y, "<i8")):
        digest.update(json.dumps(list(part.shape)).encode())
        digest.update(part.tobytes())
    source = {"name": f"sklearn.datasets.{BUNDLED[name]}", "format": "bundled",
              "n_samples": len(X), "sha256": digest.hexdigest(),
              "sha256_of": "X as little-endian float32 and y as int64, each after its "
                           "shape as JSON"}
    return Dataset(X, y, labels, features, source)


def read_data(path: str | os.PathLike, target: str | None, *,
              features: Sequence[str] | None = None,
              labels: Sequence[str] | None = None, need_labels: bool = True) -> Dataset:
    """Read a ``.csv`` or ``.npz`` file, chosen by its suffix (see the two readers)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, labels=labels, need_labels=need_labels)
    if suffix == ".csv":
        if need_labels and target is None:
            raise DataError(f"{path}: say which column holds the classes (--target COLUMN)")
        return read_csv(path, target, features=features, labels=labels)
    raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'!r}: use a .csv "
                    "file with a header row or an .npz file with arrays X and y")


def split_indices(labels: np.ndarray, test_size: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def indices_digest(indices: np.ndarray) -> str:
    """Return the sha256 of a list of sample indices (recorded to pin the split)."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()
