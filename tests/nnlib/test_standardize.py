"""Standardize: fitted statistics, an exact input gradient, no trainable update, saved."""

from __future__ import annotations

import numpy as np
import pytest

import nnlib
from nnlib.preprocessing import Standardize
from tests.helpers.gradcheck import check_delta


def fitted(features: int = 4, seed: int = 0, dtype=np.float64) -> Standardize:
    rng = np.random.default_rng(seed)
    X = rng.normal(loc=[1.0, -50.0, 300.0, 0.0][:features],
                   scale=[0.1, 10.0, 100.0, 1.0][:features], size=(40, features))
    return Standardize(features, dtype=dtype).fit(X)


def test_fit_sets_mean_and_population_std_and_output_is_standardized():
    X = np.random.default_rng(1).normal(5.0, 3.0, size=(200, 3))
    layer = Standardize(3, dtype=np.float64).fit(X)
    np.testing.assert_allclose(layer.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(layer.scale, X.std(axis=0), rtol=1e-12)
    out = layer.forward(X)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), 1, rtol=1e-12)


def test_a_constant_feature_gets_scale_one_and_maps_to_zero():
    X = np.array([[1.0, 7.0], [3.0, 7.0]])
    layer = Standardize(2).fit(X)
    assert layer.scale.tolist() == [1.0, 1.0]
    assert layer.predict(X.astype(np.float32))[:, 1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_backward_delta_matches_finite_differences(shape):
    x = np.random.default_rng(2).normal(size=shape)
    assert check_delta(fitted(), x) < 1e-6


def test_statistics_are_not_trained():
    layer = fitted()
    before = {name: value.copy() for name, value in layer.parameters().items()}
    x = np.random.default_rng(3).normal(size=(6, 4))
    layer.forward(x)
    layer.backward_update_gradient(x, np.ones((6, 4)))
    assert layer.gradients().keys() == layer.parameters().keys()
    assert all(not grad.any() for grad in layer.gradients().values())
    layer.update_parameters(1.0)
    nnlib.Adam(0.1).step(layer)
    for name, value in layer.parameters().items():
        assert np.array_equal(value, before[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keeps_the_input_float_dtype(dtype):
    layer = fitted(dtype=np.float32)
    assert layer.predict(np.ones((2, 4), dtype=dtype)).dtype == dtype


def test_fit_refuses_wrong_width_and_non_finite_samples():
    with pytest.raises(ValueError, match="last axis must have 3 values"):
        Standardize(3).fit(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        Standardize(1).fit(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="positive"):
        Standardize(0)


def test_saved_and_loaded_with_its_statistics(tmp_path):
    net = nnlib.Sequential(fitted(dtype=np.float32), nnlib.Linear(4, 2, rng=0),
                           nnlib.Softmax())
    metadata = {"name": "s", "version": "1", "input_shape": [4], "labels": ["a", "b"],
                "output": "softmax", "description": "d", "dataset": {}, "metrics": {},
                "created": "2026-01-01T00:00:00Z"}
    nnlib.save(tmp_path / "s.joblib", net, metadata)
    loaded = nnlib.load(tmp_path / "s.joblib").model
    assert loaded.modules[0].config() == {"features": 4, "dtype": "float32"}
    X = np.random.default_rng(4).normal(100, 50, size=(3, 4)).astype(np.float32)
    assert np.array_equal(loaded.predict(X), net.predict(X))
