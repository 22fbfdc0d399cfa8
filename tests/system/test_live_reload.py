"""Reload under load with real servers (1 and 2 workers): zero failed requests.

Client threads keep sending unversioned predictions on keep-alive connections while the
test adds, corrupts, restores and removes versions, rewrites the routing file and drives
the repository API. Every answer must be a 200 from a version that was valid while the
request ran, and /ready must never answer 503.

"Valid while the request ran": change ``i`` starts at ``t[i]`` and is served everywhere at
``c[i]``, the first moment the server's ``nnserve_repository_last_scan_timestamp_seconds``
(every worker's last completed scan started after the change) passes ``t[i]``. The
versions of state ``i`` may answer from ``t[i]`` until ``c[i + 1]``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers.http import ZERO_MLP
from tests.helpers.servers import run_server, server_env
from tests.helpers.versions import save_version, write_routing

ADMIN = {"Authorization": "Bearer admin-secret"}
CONVERGE_TIMEOUT = 30.0


@dataclass
class Answer:
    start: float
    end: float
    status: int | None
    version: str | None
    error: str | None = None


@dataclass
class Traffic:
    """Threads sending unversioned predictions, and one watching /ready."""

    url: str
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    ready: list[int | str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:  # keep-alive
            while not self.stop.is_set():
                start = time.time()
                try:
                    response = client.post("/models/mlp/predict", json={"inputs": [ZERO_MLP]})
                    version = response.headers.get("x-model-version")
                    if response.status_code == 200:
                        assert response.json()["version"] == version
                    self.answers.append(Answer(start, time.time(), response.status_code,
                                               version, None if response.status_code == 200
                                               else response.text))
                except Exception as exc:  # every failure counts, whatever it is
                    self.answers.append(Answer(start, time.time(), None, None, repr(exc)))
                time.sleep(0.003)  # leave the shared machine some CPU

    def _watch_ready(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.ready.append(client.get("/ready").status_code)
                except Exception as exc:
                    self.ready.append(repr(exc))
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.workers = [threading.Thread(target=self._client) for _ in range(self.threads)]
        self.workers.append(threading.Thread(target=self._watch_ready))
        for thread in self.workers:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.workers:
            thread.join(60)

    def wait_for(self, count: int, after: float, timeout: float = 120) -> list[Answer]:
        """Wait until ``count`` answers started after ``after``; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [a for a in list(self.answers) if a.start > after]
            if len(found) >= count:
                return found[:count]
            time.sleep(0.05)
        pytest.fail(f"fewer than {count} answers in {timeout} s")


def last_scan(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("nnserve_repository_last_scan_timestamp_seconds"):
            return float(line.rpartition(" ")[2])
    return 0.0


def converge(url: str, since: float) -> float:
    """Wait until every worker has finished a scan that started after ``since``."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while time.monotonic() < deadline:
        if last_scan(url) > since:
            return time.time()
        time.sleep(0.05)
    pytest.fail(f"the workers did not rescan within {CONVERGE_TIMEOUT} s")


def slow_copy(source: bytes, target, chunks: int = 8) -> None:
    """Write ``source`` into ``target`` in pieces, as a slow non-atomic copy would."""
    step = -(-len(source) // chunks)
    with open(target, "wb") as out:
        for start in range(0, len(source), step):
            out.write(source[start:start + step])
            out.flush()
            time.sleep(0.3)


def admin(url: str, action: str, name: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/repository/models/{name}/{action}", headers=ADMIN,
                      timeout=60)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("workers", [1, 2])
def test_reload_under_load_fails_no_request(tmp_path, workers):
    folder = tmp_path / "models"
    save_version(folder / "mlp.joblib", "1")
    save_version(folder / "other.joblib", "1", name="other")
    env = server_env(model_dir=folder, poll_interval="0.5", admin_key="admin-secret")
    changes: list[tuple[float, float, set[str]]] = []  # (started, served everywhere, versions)

    def change(versions: set[str], action) -> float:
        started = time.time()
        action()
        # A scan that began before the action ended may have missed it (a poll between
        # the rename and the answer of an unload call): wait for one that began after.
        changes.append((started, converge(server.url, time.time()), versions))
        return started

    with run_server(tmp_path, "--workers", str(workers), env=env) as server, \
            Traffic(server.url) as traffic:
        traffic.wait_for(50, 0)
        changes.append((0.0, 0.0, {"1"}))

        # Version 2 by atomic rename: unversioned requests go to the highest.
        staged = save_version(folder / ".staging" / "2.joblib", "2")  # hidden: not scanned
        (folder / "mlp").mkdir()
        renamed = change({"1", "2"}, lambda: os.replace(staged, folder / "mlp" / "2.joblib"))
        traffic.wait_for(1, changes[-1][1])
        first_v2 = min(a.end for a in list(traffic.answers) if a.version == "2")
        # Version 3 by a slow non-atomic copy: polls meanwhile see a partial file.
        good3 = save_version(tmp_path / "v3.joblib", "3").read_bytes()
        change({"2", "3"}, lambda: slow_copy(good3, folder / "mlp" / "3.joblib"))
        # SIGHUP (forwarded to every worker by the launcher): a rescan, no restart.
        pid = server.process.pid
        change({"3"}, lambda: os.kill(pid, signal.SIGHUP))
        assert {a.version for a in traffic.wait_for(100, changes[-1][1])} == {"3"}

        # A corrupt file replaces version 3: the loaded version 3 keeps serving.
        corrupt = tmp_path / "corrupt.joblib"
        corrupt.write_bytes(good3[: len(good3) // 2] + b"garbage")
        change({"3"}, lambda: os.replace(corrupt, folder / "mlp" / "3.joblib"))
        rows = httpx.post(server.url + "/v2/repository/index", timeout=30).json()
        row = next(r for r in rows if r["name"] == "mlp" and r["version"] == "3")
        assert row["state"] == "READY" and "mlp/3.joblib" in row["reason"], rows
        restored = tmp_path / "restored.joblib"
        restored.write_bytes(good3)
        change({"3"}, lambda: os.replace(restored, folder / "mlp" / "3.joblib"))
        assert all(r["reason"] == "" for r in
                   httpx.post(server.url + "/v2/repository/index", timeout=30).json())

        # Version 1 removed; then a 90/10 split over 2 and 3, then 0/100.
        change({"3"}, lambda: (folder / "mlp.joblib").unlink())
        change({"2", "3"}, lambda: write_routing(
            folder, '[mlp]\nweights = { "2" = 90, "3" = 10 }\n'))
        split = traffic.wait_for(2000, changes[-1][1])
        canary = sum(a.version == "3" for a in split)
        assert abs(canary - 200) <= 4 * (2000 * 0.1 * 0.9) ** 0.5, canary
        for key in ("alice", "bob", "carol"):  # fresh connections: any worker answers
            seen = {httpx.post(server.url + "/models/mlp/predict", json={"inputs": [ZERO_MLP]},
                               headers={"X-Routing-Key": key, "Connection": "close"},
                               timeout=30).headers["x-model-version"] for _ in range(10)}
            assert len(seen) == 1, (key, seen)
        change({"3"}, lambda: write_routing(folder, '[mlp]\nweights = { "2" = 0, "3" = 100 }\n'))
        assert {a.version for a in traffic.wait_for(200, changes[-1][1])} == {"3"}

        # The repository API: unload and load another model, reload this one.
        change({"3"}, lambda: admin(server.url, "unload", "other").raise_for_status())
        for _ in range(10):
            gone = httpx.post(server.url + "/models/other/predict", timeout=30,
                              json={"inputs": [ZERO_MLP]}, headers={"Connection": "close"})
            assert gone.status_code == 404, gone.text
        change({"3"}, lambda: admin(server.url, "load", "other").raise_for_status())
        change({"3"}, lambda: admin(server.url, "load", "mlp").raise_for_status())
        for _ in range(10):
            back = httpx.post(server.url + "/models/other/predict", timeout=30,
                              json={"inputs": [ZERO_MLP]}, headers={"Connection": "close"})
            assert back.status_code == 200, back.text
        traffic.wait_for(100, changes[-1][1])

    failures = [a for a in traffic.answers if a.status != 200]
    assert failures == [], failures[:5]
    assert 503 not in traffic.ready and all(s == 200 for s in traffic.ready), set(traffic.ready)
    ends = [c[1] for c in changes[1:]] + [float("inf")]
    invalid = []
    for answer in traffic.answers:
        allowed = set()
        for (started, _, versions), until in zip(changes, ends, strict=True):
            if started <= answer.end and answer.start <= until:
                allowed |= versions
        if answer.version not in allowed:
            invalid.append(answer)
    assert invalid == [], invalid[:5]
    print(f"\nworkers={workers}: {len(traffic.answers)} requests served, {len(failures)} failed, "
          f"rename to first version-2 answer {first_v2 - renamed:.3f} s, "
          f"split 90/10 gave {canary}/2000 to the canary")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_alone_reloads_every_worker(tmp_path, workers):
    """Without polling, SIGHUP to the launcher is what makes each worker rescan."""
    folder = tmp_path / "models"
    save_version(folder / "mlp.joblib", "1")
    env = server_env(model_dir=folder, poll_interval="0")
    with run_server(tmp_path, "--workers", str(workers), env=env) as server:
        deadline = time.monotonic() + 60
        while server.log().count("Application startup complete") < workers:  # all scanned
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        save_version(folder / "mlp" / "2.joblib", "2")
        time.sleep(1.0)  # no poll: nothing may change by itself
        assert httpx.get(server.url + "/models/mlp", timeout=30).json()["version"] == "1"
        started = time.time()
        server.process.send_signal(signal.SIGHUP)
        converge(server.url, started)
        for _ in range(20):
            response = httpx.post(server.url + "/models/mlp/predict", timeout=30,
                                  json={"inputs": [ZERO_MLP]}, headers={"Connection": "close"})
            assert response.headers["x-model-version"] == "2"
        assert server.stop() == 0
    # A rescan in place, not uvicorn's own answer to SIGHUP (a restart of every worker).
    assert server.log().count("Started server process") == workers, server.log()


def _worker_pids(launcher: int) -> list[int]:
    """The uvicorn workers the launcher started (multiprocessing's spawned children)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.timeout(300)
def test_a_replaced_worker_leaves_the_oldest_scan_gauge(tmp_path):
    """A worker that dies is replaced; its last scan stops holding the server's oldest."""
    folder = tmp_path / "models"
    save_version(folder / "mlp.joblib", "1")
    env = server_env(model_dir=folder, poll_interval="0")
    with run_server(tmp_path, "--workers", "2", env=env) as server:
        deadline = time.monotonic() + 60
        while server.log().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        workers = _worker_pids(server.process.pid)
        assert len(workers) == 2, workers
        killed = time.time()
        os.kill(workers[0], signal.SIGKILL)
        # The live worker scanned before the kill: only a rescan makes the server's oldest
        # scan newer, and only if the dead worker's stale value no longer counts.
        while server.log().count("Application startup complete") < 3:
            assert time.monotonic() < deadline + 60, server.log()
            time.sleep(0.05)
        server.process.send_signal(signal.SIGHUP)
        converge(server.url, killed)
        response = httpx.post(server.url + "/models/mlp/predict", timeout=30,
                              json={"inputs": [ZERO_MLP]})
        assert response.status_code == 200


@pytest.mark.timeout(300)
def test_tritonclient_drives_the_repository_api(tmp_path):
    folder = tmp_path / "models"
    save_version(folder / "mlp.joblib", "1")
    save_version(folder / "mlp" / "2.joblib", "2")
    (folder / "broken.joblib").write_bytes(b"not an artifact")
    env = server_env(model_dir=folder, poll_interval="0", admin_key="admin-secret")
    with run_server(tmp_path, env=env) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            index = client.get_model_repository_index()
            states = {(r["name"], r["version"]): r["state"] for r in index}
            assert states == {("mlp", "1"): "READY", ("mlp", "2"): "READY",
                              ("broken", ""): "UNAVAILABLE"}
            assert "broken.joblib" in next(r for r in index if r["name"] == "broken")["reason"]
            assert client.is_model_ready("mlp", "1") and client.is_model_ready("mlp", "2")
            assert not client.is_model_ready("mlp", "3")
            with pytest.raises(InferenceServerException, match="admin key"):
                client.unload_model("mlp")
            client.unload_model("mlp", headers=ADMIN)
            assert not client.is_model_ready("mlp")
            client.load_model("mlp", headers=ADMIN)
            assert client.is_model_ready("mlp", "1")
            with pytest.raises(InferenceServerException, match="model folder"):
                client.load_model("mlp", headers=ADMIN, config="{}")
            inputs = triton.InferInput("input", [1, 64], "FP32")
            inputs.set_data_from_numpy(np.asarray([ZERO_MLP], dtype=np.float32))
            for version in ("1", "2"):
                result = client.infer("mlp", [inputs], model_version=version)
                assert result.get_response()["model_version"] == version
                assert result.as_numpy("probabilities").shape == (1, 10)
        finally:
            client.close()
