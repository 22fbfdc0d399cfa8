"""A real ``python -m app`` (uvicorn) process on a free loopback port, serving the shipped
models: digits end to end, API key, limits on a real socket, JSON logs, SIGTERM, workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

import nnlib
from tests.helpers import ROOT
from tests.helpers.servers import Server, free_port, run_server, server_env, wait_until_ready

MODELS = {"digits-mlp": (64,), "digits-cnn": (8, 8)}
CHUNK = 1024  # the default NNSERVE_MAX_BATCH
API_KEY = "test-key-0123"
SMALL_BODY_LIMIT = 4096


def metric(text: str, name: str, **labels: str) -> float:
    """Return one sample of a Prometheus text exposition (0 when absent)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        series_name, _, series_labels = series.partition("{")
        found = set(series_labels.rstrip("}").split(",")) - {""}
        if series_name == name and found == wanted:
            return float(value)
    return 0.0


def predict_all(url: str, model: str, images: np.ndarray, **headers: str) -> np.ndarray:
    rows = []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        for start in range(0, len(images), CHUNK):
            batch = images[start : start + CHUNK].reshape(-1, *MODELS[model]).tolist()
            response = http.post("/predict", json={"model": model, "inputs": batch})
            assert response.status_code == 200, response.text
            rows += [p["probabilities"] for p in response.json()["predictions"]]
    return np.array(rows)


def raw_exchange(url: str, request: bytes, parts: list[bytes] = (), timeout: float = 30) -> bytes:
    """Send raw bytes on one connection and return the first complete answer."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(request)
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:  # the server may answer and close before we finish
                break
        data = b""
        while True:
            head, found, body = data.partition(b"\r\n\r\n")
            if found:
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                if length and len(body) >= int(length[1]):
                    return data
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


# --- the session's server: shipped models, default settings --------------------------------


def test_serves_the_shipped_models(server):
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200
    assert set(MODELS) <= set(ready.json()["models"])
    catalogue = httpx.get(server.url + "/models").json()
    assert catalogue["default"] == "digits-mlp"
    shapes = {m["name"]: tuple(m["input_shape"]) for m in catalogue["models"]}
    assert all(shapes[name] == shape for name, shape in MODELS.items())
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize("model", list(MODELS))
def test_every_digit_matches_nnlib_locally(server, shipped_dir, digits, model):
    images, targets = digits
    served = predict_all(server.url, model, images)
    artifact = nnlib.load(shipped_dir / f"{model}.joblib")
    batch = images.reshape(-1, *MODELS[model])
    with np.errstate(all="ignore"):
        local = artifact.model.predict(batch)
    if artifact.metadata["output"] == "log_softmax":
        local = np.exp(local)
    np.testing.assert_allclose(served, local, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served.sum(axis=1), 1, atol=1e-5)
    assert (served.argmax(axis=1) == targets).mean() >= 0.95


def test_metrics_after_traffic(server, digits):
    images, _ = digits
    before = httpx.get(server.url + "/metrics").text
    with httpx.Client(base_url=server.url) as http:
        for index in range(5):
            http.post("/predict", json={"inputs": [images[index].ravel().tolist()]})
        http.post("/models/digits-cnn/predict", json={"inputs": images[:7].tolist()})
        http.post("/predict", json={"inputs": [[1, 2]]})
    after = httpx.get(server.url + "/metrics")
    assert after.status_code == 200
    text = after.text

    def delta(name, **labels):
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert delta("nnserve_http_requests_total", method="POST", route="/predict", status="200") == 5
    assert delta("nnserve_http_requests_total", method="POST", route="/predict", status="422") == 1
    assert (
        delta(
            "nnserve_http_requests_total",
            method="POST",
            route="/models/{name}/predict",
            status="200",
        )
        == 1
    )
    assert delta("nnserve_inference_requests_total", model="digits-mlp", version="1.0.0") == 5
    assert delta("nnserve_inference_requests_total", model="digits-cnn", version="1.0.0") == 1
    assert delta("nnserve_inference_batch_size_sum", model="digits-cnn", version="1.0.0") == 7
    assert metric(text, "nnserve_models_loaded") >= 2
    assert "nnserve_http_request_duration_seconds_bucket" in text


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(server):
    limit = 8 * 1024 * 1024
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}\r\n\r\n"
    ).encode()
    answer = raw_exchange(server.url, head)  # no body byte is ever sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"detail"' in answer


# --- a configured server: API key, small body limit, JSON logs --------------------------------


@pytest.fixture(scope="module")
def configured(tmp_path_factory, shipped_dir):
    env = server_env(
        api_key=API_KEY, max_body_bytes=str(SMALL_BODY_LIMIT), log_format="json", max_batch="16"
    )
    with run_server(tmp_path_factory.mktemp("configured"), env=env) as running:
        yield running


def test_api_key_on_a_real_server(configured, digits):
    images, targets = digits
    sample = {"inputs": [images[0].ravel().tolist()]}
    missing = httpx.post(configured.url + "/predict", json=sample)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(
        configured.url + "/predict", json=sample, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    right = httpx.post(
        configured.url + "/predict", json=sample, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert right.status_code == 200
    assert right.json()["predictions"][0]["label"] == str(targets[0])
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(configured.url + path).status_code == 200


def test_max_batch_on_a_real_server(configured):
    response = httpx.post(
        configured.url + "/predict",
        json={"inputs": [[0] * 64] * 17},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code in (413, 422)  # 17 samples also pass the 4 KiB limit


def test_chunked_body_over_the_limit_is_refused_while_reading(configured):
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (1000, b" " * 1000)
    # Past the limit after 5 chunks; the terminating chunk is never sent, so only an answer
    # given while reading can arrive.
    answer = raw_exchange(configured.url, head, [chunk] * 6)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_huge_bodies_never_kill_the_server(configured):
    body = b'{"inputs": [' + b"[" * 3000 + b"]" * 3000 + b"]}"
    response = httpx.post(
        configured.url + "/predict",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert httpx.get(configured.url + "/health").status_code == 200


def test_json_access_log_lines(configured):
    httpx.get(configured.url + "/ready", headers={"X-Request-ID": "trace-me-7"})
    httpx.post(
        configured.url + "/predict",
        json={"inputs": [[0] * 64] * 2},
        headers={"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "trace-me-8"},
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "trace-me-8" not in configured.log():
        time.sleep(0.05)
    lines = [line for line in configured.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    access = {e["request_id"]: e for e in entries if e.get("logger") == "nnserve.access"}
    ready, predict = access["trace-me-7"], access["trace-me-8"]
    assert ready["route"] == "/ready" and ready["status"] == 200 and ready["model"] is None
    assert predict["route"] == "/predict" and predict["status"] == 200
    assert predict["model"] == "digits-mlp" and predict["batch_size"] == 2
    assert predict["latency_ms"] >= 0 and predict["method"] == "POST"
    assert any(e["logger"].startswith("uvicorn") for e in entries)


# --- SIGTERM -------------------------------------------------------------------------------


def _connection_refused(url: str) -> bool:
    address = urlsplit(url)
    try:
        socket.create_connection((address.hostname, address.port), timeout=1).close()
    except OSError:
        return True
    return False


def _wait(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_sigterm_finishes_requests_in_flight_and_exits_0(tmp_path, shipped_dir, digits):
    images, targets = digits
    body = json.dumps({"inputs": images[:64].reshape(-1, 64).tolist()}).encode()
    n_requests = 6
    go = threading.Event()
    answers: list[httpx.Response | Exception] = []

    def slow_body():
        yield body[:100]
        go.wait(30)  # the rest of the body arrives only after SIGTERM
        yield body[100:]

    def client(url):
        try:
            answers.append(
                httpx.post(
                    url + "/predict",
                    content=slow_body(),
                    timeout=60,
                    headers={"Content-Type": "application/json"},
                )
            )
        except Exception as exc:  # recorded, so the assertion below shows it
            answers.append(exc)

    with run_server(tmp_path) as server:
        threads = [threading.Thread(target=client, args=(server.url,)) for _ in range(n_requests)]
        for thread in threads:
            thread.start()
        # Every request is being received when the in-progress gauge counts them (plus
        # the /metrics request itself).
        _wait(
            lambda: (
                metric(httpx.get(server.url + "/metrics").text, "nnserve_http_requests_in_progress")
                >= n_requests + 1
            ),
            "the requests to be in flight",
        )
        server.process.send_signal(signal.SIGTERM)
        _wait(lambda: _connection_refused(server.url), "the server to stop accepting")
        go.set()
        for thread in threads:
            thread.join(60)
        status = server.process.wait(60)

    assert len(answers) == n_requests
    for answer in answers:
        assert isinstance(answer, httpx.Response), repr(answer)
        assert answer.status_code == 200, answer.text
        labels = [int(p["label"]) for p in answer.json()["predictions"]]
        assert np.mean(np.array(labels) == targets[:64]) >= 0.9
    assert status == 0, server.log()
    assert "Finished server process" in server.log()


def test_sigterm_turns_readiness_503_at_once_and_exits_0(tmp_path, shipped_dir):
    env = server_env(drain_delay="2", graceful_timeout="5")
    with run_server(tmp_path, env=env) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/ready").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            _wait(lambda: http.get("/ready").status_code == 503, "/ready to turn 503")
            assert http.get("/ready").json()["status"] == "draining"
            # Still answering while load balancers take it out of rotation.
            assert http.get("/health").status_code == 200
            assert http.post("/predict", json={"inputs": [[0] * 64]}).status_code == 200
        status = server.process.wait(60)
    assert status == 0, server.log()


def test_sigint_stops_the_server_too(tmp_path, shipped_dir):
    with run_server(tmp_path) as server:
        server.process.send_signal(signal.SIGINT)
        status = server.process.wait(60)
    # uvicorn re-raises SIGINT after its clean shutdown, as a Ctrl+C'd program does.
    assert status in (0, -signal.SIGINT, 130), server.log()
    assert "Finished server process" in server.log()


# --- more than one worker, and other launchers ------------------------------------------------


def test_two_workers_share_their_metrics(tmp_path, shipped_dir):
    shipped = len(list(shipped_dir.glob("*.joblib")))
    with run_server(tmp_path, "--workers", "2") as server:
        n = 24
        for _ in range(n):
            # A new connection per request, so both workers take some.
            response = httpx.post(
                server.url + "/predict",
                json={"inputs": [[0] * 64]},
                headers={"Connection": "close"},
            )
            assert response.status_code == 200
        texts = [
            httpx.get(server.url + "/metrics", headers={"Connection": "close"}).text
            for _ in range(4)
        ]
        for text in texts:  # whichever worker answers, it reports the whole server
            assert metric(text, "nnserve_inference_requests_total", model="digits-mlp",
                          version="1.0.0") == n
            assert (
                metric(
                    text,
                    "nnserve_http_requests_total",
                    method="POST",
                    route="/predict",
                    status="200",
                )
                == n
            )
            assert metric(text, "nnserve_models_loaded") == shipped
        status = server.stop()
    assert status == 0, server.log()
    assert server.log().count(f"serving {shipped} model(s)") == 2


def test_uvicorn_serves_the_factory(tmp_path, shipped_dir):
    port = str(free_port())
    log_path = tmp_path / "uvicorn.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app", "--port", port],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=tmp_path,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_ready(server)
        response = httpx.post(server.url + "/predict", json={"inputs": [[0] * 64]})
        assert response.status_code == 200 and response.json()["model"] == "digits-mlp"
    finally:
        server.stop()


def test_bad_model_dir_serves_nothing_but_stays_alive(tmp_path):
    (tmp_path / "broken.joblib").write_bytes(b"junk")
    with run_server(tmp_path, "--model-dir", str(tmp_path), wait_ready=False) as server:
        _wait(lambda: _answers(server.url + "/health"), "the server to start", 60)
        assert httpx.get(server.url + "/ready").status_code == 503
        assert httpx.post(server.url + "/predict", json={"inputs": [[0]]}).status_code == 503
        assert server.stop() == 0
    assert "broken.joblib" in server.log()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_an_installed_layout_finds_its_shipped_models(tmp_path, shipped_dir):
    # The wheel puts models/ at app/shipped_models/: mimic that layout on a fresh path and
    # ask from another working directory which folder would be served.
    site = tmp_path / "site"
    shutil.copytree(
        ROOT / "app", site / "app", ignore=shutil.ignore_patterns("__pycache__", "shipped_models")
    )
    shutil.copytree(shipped_dir, site / "app" / "shipped_models")
    code = "from app.registry import default_model_dir; print(default_model_dir())"
    env = {**os.environ, "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == site / "app" / "shipped_models"


# --- slow and abusive clients (app/protocol.py) ----------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, shipped_dir):
    """A server that gives clients one second to send a head or continue a body."""
    with run_server(tmp_path_factory.mktemp("guarded"),
                    env=server_env(read_timeout="1")) as running:
        yield running


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Read until the server closes the connection; fail if it does not in time."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open over {seconds} s: {data[:200]!r}")
    return data


def _connect(server) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=30)


def test_a_connection_that_never_sends_is_closed(guarded):
    with _connect(guarded) as sock:
        assert _closed_within(sock, 20) == b""


def test_a_head_that_never_ends_gets_408(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        assert _closed_within(sock, 20).startswith(b"HTTP/1.1 408 ")


def test_a_head_over_64_kib_gets_431(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(OSError):
            for _ in range(20):
                sock.sendall(b"X-Filler: " + b"a" * 8000 + b"\r\n")
        assert _closed_within(sock, 20).startswith(b"HTTP/1.1 431 ")


def _access_entry(server, request_id: str) -> str:
    _wait(lambda: request_id in server.log(), f"the access line of {request_id}")
    return next(line for line in server.log().splitlines() if request_id in line)


def test_a_stalled_body_is_cut_off_and_logged_408(guarded):
    before = httpx.get(guarded.url + "/metrics").text
    with _connect(guarded) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-ID: stalled-body\r\nContent-Length: 200\r\n\r\n{\"inputs\"")
        _closed_within(sock, 20)
    assert '" 408 ' in _access_entry(guarded, "stalled-body")
    after = httpx.get(guarded.url + "/metrics").text
    assert metric(after, "nnserve_http_requests_total", method="POST", route="/predict",
                  status="408") == metric(before, "nnserve_http_requests_total",
                                          method="POST", route="/predict", status="408") + 1


def test_a_client_leaving_mid_body_is_a_499_not_a_server_error(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-ID: left-early\r\nContent-Length: 200\r\n\r\n{\"inputs\"")
    assert '" 499 ' in _access_entry(guarded, "left-early")
    assert "Traceback" not in guarded.log() and "ClientDisconnect" not in guarded.log()
    assert httpx.get(guarded.url + "/health").status_code == 200


def test_a_413_reaches_a_client_still_sending_its_body(guarded):
    limit = 8 * 1024 * 1024
    with _connect(guarded) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (limit + 1))
        with contextlib.suppress(OSError):
            for _ in range(32):
                sock.sendall(b" " * 65536)  # 2 MiB more while the answer is already out
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_trickling_body_that_keeps_moving_is_served(guarded):
    body = json.dumps({"inputs": [[0] * 64]}).encode()
    with _connect(guarded) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        for start in range(0, 30, 10):  # three pauses of half the read timeout
            sock.sendall(body[start:start + 10])
            time.sleep(0.5)
        sock.sendall(body[30:])
        assert _closed_within(sock, 20).startswith(b"HTTP/1.1 200 ")


def test_log_lines_cannot_be_forged_through_the_path(guarded):
    httpx.get(guarded.url + "/models/x%0aFORGED-LINE", headers={"X-Request-ID": "forge-1"})
    line = _access_entry(guarded, "forge-1")
    assert "%0aFORGED-LINE" in line
    assert not any(entry.startswith("FORGED-LINE") for entry in guarded.log().splitlines())
