"""Shared fixtures: small in-memory models, artifacts in tmp_path, in-process clients and a
real ``python -m app`` server on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import nnlib
from app.config import Settings
from app.main import create_app
from app.registry import Registry, ServedModel, default_model_dir

with warnings.catch_warnings():
    # Starlette suggests another HTTP client for its TestClient; the tests keep httpx's.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
DIGIT_LABELS = [str(digit) for digit in range(10)]
# A real server on a 2-core CI machine imports numpy, FastAPI and the models: be patient.
STARTUP_TIMEOUT = 60.0


def _metadata(name: str, input_shape: list[int], output: str) -> dict:
    return {
        "name": name,
        "version": "1",
        "input_shape": input_shape,
        "labels": DIGIT_LABELS,
        "output": output,
        "description": f"test network {name}",
        "dataset": {"name": "none"},
        "metrics": {"accuracy": 0.0},
        "created": "2026-01-01T00:00:00Z",
    }


def tiny_mlp(name: str = "mlp", seed: int = 0) -> tuple[nnlib.Sequential, dict]:
    """A Softmax network taking 64 raw pixel values, with fixed random weights."""
    net = nnlib.Sequential(
        nnlib.Scale(1 / 16),
        nnlib.Linear(64, 16, rng=seed),
        nnlib.TanH(),
        nnlib.Linear(16, 10, rng=seed + 1),
        nnlib.Softmax(),
    )
    return net, _metadata(name, [64], "softmax")


def tiny_cnn(name: str = "cnn", seed: int = 0) -> tuple[nnlib.Sequential, dict]:
    """A LogSoftmax network taking an 8x8 image (rows as the length axis)."""
    net = nnlib.Sequential(
        nnlib.Scale(1 / 16),
        nnlib.Conv1D(3, 8, 4, rng=seed),
        nnlib.ReLU(),
        nnlib.Flatten(),
        nnlib.Linear(24, 10, rng=seed + 1),
        nnlib.LogSoftmax(),
    )
    return net, _metadata(name, [8, 8], "log_softmax")


@pytest.fixture(scope="session")
def served_models() -> dict[str, ServedModel]:
    """The two tiny networks as loaded models, by name ("mlp", "cnn")."""
    models = [ServedModel.build(*tiny_mlp()), ServedModel.build(*tiny_cnn())]
    return {model.name: model for model in models}


def save_tiny_models(folder: Path) -> Path:
    """Write the two tiny networks into ``folder`` (created if needed) as nnlib artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    for net, metadata in (tiny_mlp(), tiny_cnn()):
        nnlib.save(folder / f"{metadata['name']}.joblib", net, metadata)
    return folder


@pytest.fixture
def artifact_dir(tmp_path: Path) -> Path:
    """A model folder holding the two tiny networks as nnlib artifacts."""
    return save_tiny_models(tmp_path / "models")


@pytest.fixture
def make_client(served_models) -> Iterator[Callable[..., TestClient]]:
    """Build in-process clients: ``make_client(max_batch=4, registry=...)``; started apps."""
    stack = contextlib.ExitStack()

    def make(registry: Registry | None = None, **settings) -> TestClient:
        if registry is None and "model_dir" not in settings:
            registry = Registry(served_models.values(), default=settings.get("default_model"))
        app = create_app(Settings(**settings), registry=registry)
        return stack.enter_context(TestClient(app, raise_server_exceptions=False))

    with stack:
        yield make


@pytest.fixture
def client(make_client) -> TestClient:
    """An in-process client of an app serving the tiny "mlp" (default) and "cnn"."""
    return make_client(default_model="mlp")


@pytest.fixture(scope="session")
def shipped_dir() -> Path:
    """The shipped model folder, which must hold both digit models."""
    folder = default_model_dir()
    for name in ("digits-mlp", "digits-cnn"):
        assert (folder / f"{name}.joblib").is_file(), f"{name}.joblib is not in {folder}"
    return folder


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as raw pixels (n, 8, 8) float32 and their targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target


# ---------------------------------------------------------------------------------------
# Real servers.


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running ``python -m app`` process."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def server_env(**settings: str) -> dict[str, str]:
    """The test run's environment without NNSERVE_* variables, plus ``settings``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("NNSERVE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update({f"NNSERVE_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@contextlib.contextmanager
def run_server(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True
) -> Iterator[Server]:
    """Start ``python -m app --port <free> *args``, wait for /ready, stop it afterwards."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env or server_env(),
            cwd=tmp_path,  # the shipped models must be found from any working directory
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        if wait_ready:
            wait_until_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(server: Server, timeout: float = STARTUP_TIMEOUT) -> None:
    """Poll /ready until it answers 200; fail with the server's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server was not ready within {timeout} s:\n{server.log()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory, shipped_dir) -> Iterator[Server]:
    """One real server for the session, serving the shipped models with default settings."""
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running
