"""SIGTERM under load: every request the server took gets its whole answer; exit status 0.

A load generator (threads, keep-alive and one-shot connections, native and V2 requests of
several batch sizes, each with its own X-Request-ID) runs while the server gets SIGTERM;
slow clients are in the middle of sending their bodies at that moment. The server's JSON
access log says which requests it took; each of them must have reached its client complete.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.helpers.servers import Server, run_server, server_env

THREADS = 12
LOAD_BEFORE_SIGTERM = 1.5  # seconds of traffic before the signal
EXIT_WITHIN = 60.0  # generous bound on the whole shutdown; no test measures its speed
CLIENT_TIMEOUT = 60.0


# --- the load generator ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one request got: "ok", "refused" (no connection), or the failure."""

    kind: str
    detail: str = ""


@dataclass
class Load:
    """Threads sending requests until told to stop; outcomes by request id."""

    server: Server
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, count: int) -> None:
        for number in range(count):
            thread = threading.Thread(target=self._run, args=(number,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT * 2)

    def _request(self, rng: random.Random) -> tuple[str, str, dict, int]:
        """A random valid request: (method, path, JSON body, expected batch size)."""
        batch = rng.choice([1, 1, 8, 64, 256])
        kind = rng.choice(["mlp", "cnn", "v2"])
        if kind == "mlp":
            return (
                "POST",
                "/predict",
                {"inputs": [[rng.randint(0, 16)] * 64] * batch, "model": "mlp"},
                batch,
            )
        if kind == "cnn":
            return "POST", "/models/cnn/predict", {"inputs": [[[3] * 8] * 8] * batch}, batch
        data = [float(rng.randint(0, 16))] * (batch * 64)
        return (
            "POST",
            "/v2/models/mlp/infer",
            {"inputs": [{"name": "input", "shape": [batch, 64], "datatype": "FP32", "data": data}]},
            batch,
        )

    def _run(self, number: int) -> None:
        rng = random.Random(number)
        keep_alive = number % 2 == 0  # half reuse one connection, half open one per request
        refused_in_a_row = 0
        client = httpx.Client(base_url=self.server.url, timeout=CLIENT_TIMEOUT)
        try:
            sequence = 0
            while not self.stop.is_set() and refused_in_a_row < 20:
                sequence += 1
                request_id = f"load-{number}-{sequence}"
                method, path, body, batch = self._request(rng)
                headers = {"X-Request-ID": request_id}
                if not keep_alive:
                    headers["Connection"] = "close"
                outcome = self._send(client, method, path, body, batch, headers)
                self.outcomes[request_id] = outcome
                if outcome.kind == "refused":
                    refused_in_a_row += 1
                    time.sleep(0.05)
                else:
                    refused_in_a_row = 0
        finally:
            client.close()

    @staticmethod
    def _send(
        client: httpx.Client, method: str, path: str, body: dict, batch: int, headers: dict
    ) -> Outcome:
        try:
            response = client.request(method, path, json=body, headers=headers)
        except httpx.ConnectError as exc:
            return Outcome("refused", str(exc))
        except httpx.TransportError as exc:
            return Outcome("transport", f"{type(exc).__name__}: {exc}")
        if response.status_code != 200:
            return Outcome("status", f"{response.status_code} {response.text[:200]}")
        try:
            answer = response.json()
            rows = (
                len(answer["predictions"])
                if "predictions" in answer
                else answer["outputs"][0]["shape"][0]
            )
        except (ValueError, KeyError, IndexError) as exc:
            return Outcome("incomplete", f"{type(exc).__name__}: {response.text[:200]}")
        if rows != batch:
            return Outcome("incomplete", f"{rows} rows for a batch of {batch}")
        return Outcome("ok")


@contextlib.contextmanager
def slow_bodies(server: Server, count: int) -> Iterator[list[bytes]]:
    """``count`` requests whose bodies are half sent on entry and finished on exit."""
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"inputs": [[5] * 64]}).encode()
    head = (
        b"POST /models/mlp/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nX-Request-ID: slow\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    sockets = [
        socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT) for _ in range(count)
    ]
    answers: list[bytes] = []
    try:
        for sock in sockets:
            sock.sendall(head + body[: len(body) // 2])
        yield answers
        for sock in sockets:
            sock.sendall(body[len(body) // 2 :])
        for sock in sockets:
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
            answers.append(answer)
    finally:
        for sock in sockets:
            sock.close()


def access_log(server: Server) -> dict[str, int]:
    """Request id -> status, from the server's JSON access-log lines."""
    seen: dict[str, int] = {}
    for line in server.log().splitlines():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("logger") == "nnserve.access":
                seen[entry["request_id"]] = entry["status"]
    return seen


def wait_exit(server: Server) -> int:
    try:
        return server.process.wait(EXIT_WITHIN)
    except Exception:
        pytest.fail(
            f"the server did not exit within {EXIT_WITHIN} s of SIGTERM:\n{server.log()[-3000:]}"
        )


def summary(outcomes: dict[str, Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
    return counts


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_sigterm_under_load_answers_every_request_it_took(tmp_path, artifact_dir):
    """Load plus half-sent bodies, then SIGTERM: whatever the server took, it answered."""
    env = server_env(log_format="json", graceful_timeout=20)
    with run_server(tmp_path, "--model-dir", str(artifact_dir), env=env) as server:
        load = Load(server)
        load.start(THREADS)
        try:
            with slow_bodies(server, 4) as slow_answers:
                time.sleep(LOAD_BEFORE_SIGTERM)
                server.process.send_signal(signal.SIGTERM)
                time.sleep(1.0)  # the bodies finish after the signal: they were in flight
            status = wait_exit(server)
        finally:
            load.join()
        log = server.log()
    seen = access_log(server)
    counts = summary(load.outcomes)
    print(f"client outcomes {counts}; the server logged {len(seen)} requests")
    assert status == 0, f"exit status {status}\n{log[-3000:]}"
    assert counts.get("ok", 0) > 0, counts
    # Every request the server logged reached its client whole and right.
    lost = {
        request_id: (seen[request_id], load.outcomes[request_id])
        for request_id in seen
        if request_id in load.outcomes and load.outcomes[request_id].kind != "ok"
    }
    assert not lost, f"the server took these requests but their clients got: {lost}"
    # No valid request got an error status, in flight or not.
    assert not [o for o in load.outcomes.values() if o.kind in ("status", "incomplete")], counts
    assert all(
        status == 200 for request_id, status in seen.items() if request_id.startswith("load-")
    ), seen
    # The half-sent bodies were in flight at SIGTERM: they got complete answers.
    assert len(slow_answers) == 4
    for answer in slow_answers:
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert b'"predictions"' in answer
    assert "Traceback" not in log


@pytest.mark.timeout(180)
def test_sigterm_with_a_drain_delay_loses_nothing(tmp_path, artifact_dir):
    """With NNSERVE_DRAIN_DELAY, clients that stop when /ready turns 503 lose nothing at all."""
    env = server_env(log_format="json", drain_delay=3)
    with run_server(tmp_path, "--model-dir", str(artifact_dir), env=env) as server:
        load = Load(server)
        load.start(THREADS)
        try:
            time.sleep(LOAD_BEFORE_SIGTERM)
            server.process.send_signal(signal.SIGTERM)
            # A load balancer's view: poll readiness, stop routing at the first 503.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(server.url + "/ready", timeout=5).status_code == 503:
                        break
                time.sleep(0.05)
            else:
                pytest.fail("/ready never turned 503 after SIGTERM")
        finally:
            load.join()
        status = wait_exit(server)
        log = server.log()
    counts = summary(load.outcomes)
    print(f"client outcomes {counts}")
    assert status == 0, f"exit status {status}\n{log[-3000:]}"
    assert counts.get("ok", 0) > 0
    failed = {
        request_id: outcome for request_id, outcome in load.outcomes.items() if outcome.kind != "ok"
    }
    assert not failed, f"{counts}; failures: {dict(list(failed.items())[:10])}"


@pytest.mark.timeout(180)
def test_stalled_and_idle_clients_do_not_hold_the_shutdown(tmp_path, artifact_dir):
    """A request stalled mid-body, idle and silent connections: the server still exits 0."""
    env = server_env(graceful_timeout=2)
    with run_server(tmp_path, "--model-dir", str(artifact_dir), env=env) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with contextlib.ExitStack() as stack:

            def connect(first_bytes: bytes) -> socket.socket:
                sock = stack.enter_context(socket.create_connection((host, int(port))))
                sock.sendall(first_bytes)
                return sock

            connect(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"in')
            connect(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            connect(b"")
            idle = connect(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            status = wait_exit(server)
    assert status == 0, f"exit status {status}\n{server.log()[-3000:]}"


@pytest.mark.timeout(180)
def test_sigterm_with_two_workers_exits_0(tmp_path, artifact_dir):
    """``--workers 2`` under load: the supervisor and its workers stop cleanly, status 0."""
    env = server_env(log_format="json")
    args = ("--model-dir", str(artifact_dir), "--workers", "2")
    with run_server(tmp_path, *args, env=env) as server:
        load = Load(server)
        load.start(4)
        try:
            time.sleep(LOAD_BEFORE_SIGTERM)
            server.process.send_signal(signal.SIGTERM)
            status = wait_exit(server)
        finally:
            load.join()
    seen = access_log(server)
    lost = [
        request_id
        for request_id in seen
        if request_id in load.outcomes and load.outcomes[request_id].kind != "ok"
    ]
    assert status == 0, f"exit status {status}\n{server.log()[-3000:]}"
    assert not lost, {request_id: load.outcomes[request_id] for request_id in lost}
