"""Error shapes by protocol, health, readiness, the catalogue, metrics, request ids and the
access log, in process."""

from __future__ import annotations

import json
import logging

from app.registry import Registry
from tests.helpers.http import ZERO_MLP, post_raw

# --- error shapes by protocol --------------------------------------------------------------


def test_unknown_route_is_404_detail(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert "/nope" in response.json()["detail"]


def test_unknown_v2_route_is_404_error(client):
    response = client.get("/v2/nope/nothing")
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


def test_wrong_method_is_405(client):
    response = client.get("/predict")
    assert response.status_code == 405
    assert "GET" in response.json()["detail"]


# --- health, readiness, models -------------------------------------------------------------


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_lists_the_models(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "models": ["cnn", "mlp"]}


def test_ready_is_503_without_models(make_client):
    client = make_client(registry=Registry())
    response = client.get("/ready")
    assert response.status_code == 503
    assert "no model" in response.json()["detail"]
    assert client.get("/health").status_code == 200


def test_ready_is_503_while_draining(client):
    client.app.state.dataplane.draining = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "draining"
    # Requests still in flight (or on open connections) are answered while draining.
    assert client.post("/predict", json={"inputs": [ZERO_MLP]}).status_code == 200


def test_models_lists_every_model_and_the_default(client):
    response = client.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default"] == "mlp"
    assert [m["name"] for m in body["models"]] == ["cnn", "mlp"]
    cnn = body["models"][0]
    assert cnn["input_shape"] == [8, 8] and cnn["output"] == "log_softmax"
    assert cnn["labels"] == [str(d) for d in range(10)]


def test_model_metadata(client):
    response = client.get("/models/cnn")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "cnn" and body["n_classes"] == 10 and body["default"] is False
    assert body["dataset"] == {"name": "none"} and body["metrics"] == {"accuracy": 0.0}
    assert body["created"] == "2026-01-01T00:00:00Z"


def test_unknown_model_metadata_is_404(client):
    response = client.get("/models/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"] and "cnn" in response.json()["detail"]


def test_models_load_from_a_folder_at_startup(make_client, artifact_dir):
    client = make_client(model_dir=str(artifact_dir))
    assert client.get("/ready").json()["models"] == ["cnn", "mlp"]
    assert client.get("/models").json()["default"] == "cnn"  # first name, no digits-mlp
    assert client.post("/models/mlp/predict", json={"inputs": [ZERO_MLP]}).status_code == 200


def test_default_model_setting(make_client, artifact_dir):
    client = make_client(model_dir=str(artifact_dir), default_model="mlp")
    assert client.post("/predict", json={"inputs": [ZERO_MLP]}).json()["model"] == "mlp"


# --- metrics ---------------------------------------------------------------------------------


def _sample_value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        metric_name, _, metric_labels = metric.partition("{")
        if metric_name == name and ",".join(sorted(metric_labels.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


def test_metrics_count_requests_and_inferences(client):
    before = client.get("/metrics").text
    for _ in range(3):
        client.post("/predict", json={"inputs": [ZERO_MLP, ZERO_MLP]})
    client.post("/predict", json={"inputs": []})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def delta(name, **labels):
        return _sample_value(after, name, **labels) - _sample_value(before, name, **labels)

    assert delta("nnserve_http_requests_total", method="POST", route="/predict", status="200") == 3
    assert delta("nnserve_http_requests_total", method="POST", route="/predict", status="422") == 1
    assert delta("nnserve_inference_requests_total", model="mlp", version="1") == 3
    assert delta("nnserve_inference_batch_size_sum", model="mlp", version="1") == 6
    assert delta("nnserve_inference_batch_size_count", model="mlp", version="1") == 3
    assert delta("nnserve_inference_duration_seconds_count", model="mlp", version="1") == 3
    assert (
        delta("nnserve_http_request_duration_seconds_count", method="POST", route="/predict") == 4
    )
    assert _sample_value(after, "nnserve_models_loaded") == 2


def test_metrics_use_route_templates_not_raw_paths(client):
    client.get("/models/cnn")
    client.get("/no/such/path/raw-path-marker")
    text = client.get("/metrics").text
    assert 'route="/models/{name}"' in text and 'route="unmatched"' in text
    # A label, never a raw path (a number here could also be part of a sample's value).
    assert "raw-path-marker" not in text and 'route="/models/cnn"' not in text


# --- request id and access log ---------------------------------------------------------------


def test_request_id_is_generated_and_echoed(client):
    first = client.get("/health").headers["x-request-id"]
    second = client.get("/health").headers["x-request-id"]
    assert first and second and first != second


def test_request_id_from_the_client_is_kept(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_unsafe_request_id_is_replaced(client):
    response = client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert response.headers["x-request-id"] != "x" * 500
    assert len(response.headers["x-request-id"]) == 32


def test_errors_carry_a_request_id_too(client):
    assert client.get("/nope").headers["x-request-id"]
    assert post_raw(client, "/predict", "{").headers["x-request-id"]


def test_access_log_line_per_request(client, caplog):
    with caplog.at_level(logging.INFO, logger="nnserve.access"):
        client.post("/predict", json={"inputs": [ZERO_MLP] * 3}, headers={"X-Request-ID": "req-42"})
    records = [r for r in caplog.records if r.name == "nnserve.access"]
    assert len(records) == 1
    record = records[0]
    assert record.request_id == "req-42" and record.route == "/predict"
    assert record.model == "mlp" and record.batch_size == 3 and record.status == 200
    assert record.latency_ms >= 0
    message = record.getMessage()
    for part in ("req-42", "/predict", "mlp", "200", "batch=3"):
        assert part in message


def test_json_log_formatter_writes_one_object_per_line():
    from app.log import JsonFormatter

    record = logging.makeLogRecord(
        {
            "name": "nnserve.access",
            "levelname": "INFO",
            "msg": "GET /x %d",
            "args": (200,),
            "request_id": "r1",
            "status": 200,
        }
    )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "GET /x 200" and entry["request_id"] == "r1"
    assert entry["status"] == 200 and entry["level"] == "info"


