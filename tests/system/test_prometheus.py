"""The monitoring stack against a real Prometheus: Debian's ``prometheus`` binary on loopback
scrapes a real nnserve under traffic; every dashboard and alert expression runs through its
HTTP query API, and the server-down alert fires when the server is stopped.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tests.deploy.test_monitoring import DASHBOARD, PROMETHEUS_DIR, alert_rules
from tests.helpers.servers import free_port, run_server, server_env

PROMETHEUS = shutil.which("prometheus")
STARTUP_TIMEOUT = 60.0
# Grafana's variables, as a user choosing every model would set them.
VARIABLES = {"$__rate_interval": "30s", "$model": "digits-mlp|digits-cnn|wine-mlp",
             "$version": ".+"}
# Alerts whose expression, without its threshold, has no series on a healthy server: the
# error ratio divides 5xx answers by all of them, and a healthy server answers no 5xx.
EMPTY_WHEN_HEALTHY = {"NnserveHighErrorRatio"}


class Prometheus:
    """A ``prometheus`` process on a free loopback port, stopped by its PID."""

    def __init__(self, folder: Path, target: str) -> None:
        assert PROMETHEUS, "prometheus is missing: apt-get install prometheus (see .ci/run)"
        rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                # The same expressions; no waiting minutes before a condition fires.
                rule.pop("for", None)
        (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s",
                            "scrape_timeout": "1s"}
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=folder)

    def query(self, expr: str) -> dict:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def wait(self, condition, what: str, timeout: float = STARTUP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                found = condition()
            except httpx.TransportError:
                found = None
            if found:
                return found
            time.sleep(0.5)
        pytest.fail(f"{what} within {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _without_threshold(expr: str) -> str:
    """``A > 0.05`` -> ``A``: the figure an alert compares, which has data when healthy."""
    return re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[\d.]+\s*$", "", expr.strip())


def _values(data: dict) -> list[float]:
    assert data["resultType"] == "vector", data
    return [float(sample["value"][1]) for sample in data["result"]]


def _send_traffic(url: str, digits, stop: threading.Event) -> None:
    """Predict and infer requests of several sizes and models, and some refused ones."""
    images, _ = digits
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            size = int(rng.integers(1, 4))
            http.post("/predict", json={"inputs": images[:size].reshape(size, -1).tolist()})
            http.post("/models/digits-cnn/predict", json={"inputs": images[:size].tolist()})
            http.post("/models/wine-mlp/predict", json={"inputs": [[13.0] * 13]})
            http.post("/v2/models/digits-mlp/infer", json={"inputs": [{
                "name": "input", "datatype": "FP32", "shape": [1, 64],
                "data": images[0].ravel().tolist()}]})
            http.post("/predict", json={"inputs": [[1, 2]]})  # 422
            stop.wait(0.02)


def test_dashboard_and_alerts_against_a_real_prometheus(tmp_path, shipped_dir, digits):
    models = tmp_path / "models"
    models.mkdir()
    for artifact in shipped_dir.glob("*.joblib"):
        shutil.copy(artifact, models)
    (models / "broken.joblib").write_bytes(b"not an artifact")  # one load failure
    env = server_env(model_dir=str(models), batch_max_size="4", batch_max_delay_ms="2",
                     log_level="warning")
    stop = threading.Event()
    with run_server(tmp_path, env=env) as server:
        prometheus = Prometheus(tmp_path, server.url.removeprefix("http://"))
        senders = [threading.Thread(target=_send_traffic, args=(server.url, digits, stop))
                   for _ in range(2)]
        try:
            for sender in senders:
                sender.start()
            prometheus.wait(lambda: httpx.get(prometheus.url + "/-/ready").status_code == 200,
                            "prometheus ready")
            prometheus.wait(
                lambda: _values(prometheus.query(
                    'count_over_time(up{job="nnserve"}[1m]) >= 8 and up{job="nnserve"} == 1')),
                "eight good scrapes of nnserve")

            board = json.loads(DASHBOARD.read_text())
            for panel in board["panels"]:
                for target in panel["targets"]:
                    expr = _substitute(target["expr"])
                    values = _values(prometheus.query(expr))
                    assert values, f"{panel['title']}: no series for {expr}"
                    assert all(math.isfinite(v) for v in values), (panel["title"], values)
            for variable in board["templating"]["list"]:
                metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)",
                                             variable["query"]["query"]).groups()
                answer = httpx.get(prometheus.url + f"/api/v1/label/{label}/values",
                                   params={"match[]": _substitute(metric)}, timeout=10).json()
                expected = {"model": "digits-mlp", "version": "1.0.0"}[variable["name"]]
                assert expected in answer["data"], (variable["name"], answer)

            for rule in alert_rules():
                prometheus.query(rule["expr"])  # the whole condition evaluates
                figure = prometheus.query(_without_threshold(rule["expr"]))
                if rule["alert"] in EMPTY_WHEN_HEALTHY:
                    assert figure["result"] == [], (rule["alert"], figure)
                else:
                    values = _values(figure)
                    assert values and all(math.isfinite(v) for v in values), rule["alert"]
            assert _values(prometheus.query(
                'sum(nnserve_model_reloads_total{job="nnserve", result="failure"})')
                           ) == [1.0]
            assert _values(prometheus.query('nnserve_ready{job="nnserve"}')) == [1.0]
            firing = httpx.get(prometheus.url + "/api/v1/alerts", timeout=10).json()
            assert "NnserveDown" not in {a["labels"]["alertname"]
                                         for a in firing["data"]["alerts"]}

            stop.set()
            for sender in senders:
                sender.join(60)
            assert server.stop() == 0

            def down_alert():
                alerts = httpx.get(prometheus.url + "/api/v1/alerts", timeout=10).json()
                return [a for a in alerts["data"]["alerts"]
                        if a["labels"]["alertname"] == "NnserveDown" and a["state"] == "firing"]

            (alert,) = prometheus.wait(down_alert, "NnserveDown firing")
            assert alert["labels"]["severity"] == "critical"
            assert alert["labels"]["instance"] == server.url.removeprefix("http://")
        finally:
            stop.set()
            for sender in senders:
                if sender.is_alive():
                    sender.join(60)
            prometheus.stop()
