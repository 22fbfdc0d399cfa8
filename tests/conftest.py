"""Shared fixtures: small in-memory models, artifacts in tmp_path, in-process clients and a
real ``python -m app`` server on a free loopback port. The plain helpers behind them live in
:mod:`tests.helpers`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.main import create_app
from app.registry import Registry, ServedModel, default_model_dir
from tests.helpers import save_tiny_models, tiny_cnn, tiny_mlp
from tests.helpers.servers import Server, run_server

with warnings.catch_warnings():
    # Starlette suggests another HTTP client for its TestClient; the tests keep httpx's.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def served_models() -> dict[str, ServedModel]:
    """The two tiny networks as loaded models, by name ("mlp", "cnn")."""
    models = [ServedModel.build(*tiny_mlp()), ServedModel.build(*tiny_cnn())]
    return {model.name: model for model in models}


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    """A model folder holding the two tiny networks as nnlib artifacts."""
    return save_tiny_models(tmp_path / "models")


@pytest.fixture
def make_client(served_models) -> Iterator[Callable[..., TestClient]]:
    """Build in-process clients: ``make_client(max_batch=4, registry=..., dependencies=...)``
    (settings by keyword); started apps."""
    stack = contextlib.ExitStack()

    def make(registry: Registry | None = None, dependencies=(), **settings) -> TestClient:
        if registry is None and "model_dir" not in settings:
            registry = Registry(served_models.values(), default=settings.get("default_model"))
        app = create_app(Settings(**settings), registry=registry, dependencies=dependencies)
        return stack.enter_context(TestClient(app, raise_server_exceptions=False))

    with stack:
        yield make


@pytest.fixture
def client(make_client) -> TestClient:
    """An in-process client of an app serving the tiny "mlp" (default) and "cnn"."""
    return make_client(default_model="mlp")


@pytest.fixture(scope="session")
def shipped_dir() -> Path:
    """The shipped model folder, which must hold the two digit models and the wine model."""
    folder = default_model_dir()
    for name in ("digits-mlp", "digits-cnn", "wine-mlp"):
        assert (folder / f"{name}.joblib").is_file(), f"{name}.joblib is not in {folder}"
    return folder


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as raw pixels (n, 8, 8) float32 and their targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target


@pytest.fixture(scope="session")
def server(tmp_path_factory, shipped_dir) -> Iterator[Server]:
    """One real server for the session, serving the shipped models with default settings."""
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running
