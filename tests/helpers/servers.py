"""Real ``python -m app`` servers on a free loopback port, started and stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# A real server on a 2-core CI machine imports numpy, FastAPI and the models: be patient.
STARTUP_TIMEOUT = 60.0


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


