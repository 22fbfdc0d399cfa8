"""OpenTelemetry tracing with the SDK's in-memory exporter; off unless OTEL_* asks for it."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app import telemetry
from app.config import Settings
from app.main import create_app
from app.registry import Registry
from tests.helpers.http import ZERO_CNN, ZERO_MLP

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def traced(served_models):
    """An in-process client of a traced app, and the exporter that keeps its spans."""
    from fastapi.testclient import TestClient

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(), registry=Registry(served_models.values(), default="mlp"),
                     tracer_provider=provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, exporter


def _by_name(spans) -> dict:
    return {span.name: span for span in spans}


def test_a_predict_request_is_one_server_span_with_its_phases(traced, caplog):
    client, exporter = traced
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "traced-1"}
    with caplog.at_level(logging.INFO, logger="nnserve.access"):
        response = client.post("/predict", json={"inputs": [ZERO_MLP] * 3}, headers=headers)
    assert response.status_code == 200
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /predict", "decode", "infer", "encode"}
    server = spans["POST /predict"]
    assert server.kind == SpanKind.SERVER
    # The client's traceparent: same trace, its span as the parent.
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID
    assert server.attributes["nnserve.model"] == "mlp"
    assert server.attributes["nnserve.model_version"] == "1"
    assert server.attributes["nnserve.batch_size"] == 3
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/predict"
    for name in ("decode", "infer", "encode"):
        child = spans[name]
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
        assert server.start_time <= child.start_time <= child.end_time <= server.end_time
    assert spans["decode"].end_time <= spans["encode"].start_time
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "traced-1"]
    assert record.trace_id == TRACE_ID and f"trace={TRACE_ID}" in record.getMessage()


def test_v2_infer_is_traced_and_a_new_trace_starts_without_traceparent(traced):
    client, exporter = traced
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8],
                        "data": [x for row in ZERO_CNN for x in row]}]}
    assert client.post("/v2/models/cnn/infer", json=body).status_code == 200
    spans = _by_name(exporter.get_finished_spans())
    server = spans["POST /v2/models/{name}/infer"]
    assert server.parent is None
    assert server.attributes["nnserve.model"] == "cnn"
    assert {"decode", "infer", "encode"} <= set(spans)


def test_refused_requests_are_traced_with_their_status(traced):
    client, exporter = traced
    assert client.post("/predict", json={"inputs": [[1, 2]]}).status_code == 422
    (server,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.attributes["http.response.status_code"] == 422
    assert server.attributes["nnserve.model"] == "mlp"
    assert server.status.status_code != StatusCode.ERROR  # a client's error, not the server's


def test_probes_and_the_catalogue_are_never_traced(traced):
    client, exporter = traced
    for path in ("/health", "/ready", "/metrics", "/v2/health/ready", "/v2/health/live",
                 "/models", "/v2/models/stats"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()


def test_off_without_otel_variables_no_middleware_runs(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry.provider_from_environment() is None
    app = create_app(Settings())
    assert app.state.tracer_provider is None
    assert all(m.cls is not telemetry.TracingMiddleware for m in app.user_middleware)


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
])
def test_configured_reads_the_standard_variables(environ, expected):
    assert telemetry.configured(environ) is expected


def test_the_environment_builds_the_provider(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "nnserve-under-test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = telemetry.provider_from_environment()
    try:
        assert provider.resource.attributes["service.name"] == "nnserve-under-test"
        assert provider.sampler.get_description() == "AlwaysOffSampler"
        app = create_app(Settings(), registry=Registry(), tracer_provider=provider)
        assert any(m.cls is telemetry.TracingMiddleware for m in app.user_middleware)
    finally:
        provider.shutdown()


def test_without_the_sdk_tracing_stays_off_with_a_warning(monkeypatch, caplog):
    import sys

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    # None in sys.modules makes the import fail, as when the extra is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with caplog.at_level(logging.WARNING, logger="nnserve"):
        assert telemetry.provider_from_environment() is None
    assert "nnserve[otel]" in caplog.text
