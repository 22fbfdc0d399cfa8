"""The data readers: label order, .npz files, and the stratified split."""

from __future__ import annotations

import numpy as np
import pytest

from nnlib.data import DataError, read_csv, read_data, read_npz, split_indices


def test_integer_labels_sort_by_value_and_are_canonical(tmp_path):
    (tmp_path / "d.csv").write_text("x,y\n1,10\n2,9\n3,09\n4,10\n")
    data = read_csv(tmp_path / "d.csv", "y")
    assert data.labels == ["9", "10"] and data.y.tolist() == [1, 0, 0, 1]
    assert data.X.dtype == np.float32 and data.features == ["x"]


def test_given_labels_and_features_select_and_order(tmp_path):
    (tmp_path / "d.csv").write_text("b,id,a,y\n1,x,2,dog\n3,y,4,cat\n")
    data = read_csv(tmp_path / "d.csv", "y", features=["a", "b"], labels=["dog", "cat"])
    assert data.X.tolist() == [[2, 1], [4, 3]] and data.y.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"line 2, column 'y': label 'cow' is not one of"):
        (tmp_path / "e.csv").write_text("a,b,y\n1,2,cow\n")
        read_csv(tmp_path / "e.csv", "y", labels=["dog", "cat"])


def test_npz_files(tmp_path):
    np.savez(tmp_path / "ok.npz", X=np.ones((3, 2, 2)), y=np.array(["b", "a", "b"]))
    data = read_npz(tmp_path / "ok.npz")
    assert data.input_shape == [2, 2] and data.labels == ["a", "b"]
    np.savez(tmp_path / "nan.npz", X=np.array([[1.0, np.nan]]), y=np.array([0]))
    with pytest.raises(DataError, match=r"X\[0, 1\] = nan is not a finite"):
        read_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([[1.0]]), y=np.array([{}], dtype=object))
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        read_npz(tmp_path / "obj.npz")  # object arrays need pickle: refused
    np.savez(tmp_path / "noy.npz", X=np.ones((2, 2)))
    with pytest.raises(DataError, match="needs the arrays 'X' and 'y'"):
        read_npz(tmp_path / "noy.npz")
    with pytest.raises(DataError, match=r"unknown data format '\.txt'"):
        read_data(tmp_path / "d.txt", "y")


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    train, test = split_indices(labels, 0.2, seed=3)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    assert not np.intersect1d(train, test).size and len(train) + len(test) == 60
    assert np.array_equal(split_indices(labels, 0.2, seed=3)[1], test)
