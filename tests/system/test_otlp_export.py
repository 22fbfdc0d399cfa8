"""A real server exports its traces over OTLP/HTTP to a receiver this test runs on loopback;
the protobuf is decoded with opentelemetry-proto (the otel extra's test dependency)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers.servers import run_server, server_env

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
MAX_EXPORT_BYTES = 16 * 1024 * 1024


class _Receiver(BaseHTTPRequestHandler):
    """POST /v1/traces: keep the request, answer an empty ExportTraceServiceResponse."""

    exports: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        assert 0 <= length <= MAX_EXPORT_BYTES
        self.exports.append((self.path, self.headers.get("Content-Type", ""),
                             self.rfile.read(length)))
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


def test_spans_reach_a_real_otlp_http_receiver(tmp_path, digits):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.exports = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        env = server_env(log_format="json")
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
                   OTEL_SERVICE_NAME="nnserve-otlp-test", OTEL_BSP_SCHEDULE_DELAY="200")
        with run_server(tmp_path, env=env) as server:
            sample = digits[0][:2].reshape(2, -1).tolist()
            response = httpx.post(server.url + "/predict", json={"inputs": sample}, headers={
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "otlp-1"})
            assert response.status_code == 200
            for probe in ("/health", "/ready", "/metrics", "/v2/health/ready"):
                assert httpx.get(server.url + probe).status_code == 200
            assert server.stop() == 0  # the lifespan's end flushes the batch processor
            log = server.log()
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join(10)

    assert _Receiver.exports, "no OTLP export arrived"
    spans, services = [], set()
    for path, content_type, body in _Receiver.exports:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value
                          for a in resource_spans.resource.attributes}
            services.add(attributes["service.name"])
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    assert services == {"nnserve-otlp-test"}
    by_name = {span.name: span for span in spans}
    # Only the predict request: no probe was traced.
    assert sorted(by_name) == ["POST /predict", "decode", "encode", "infer"]
    server_span = by_name["POST /predict"]
    assert server_span.trace_id.hex() == TRACE_ID
    assert server_span.parent_span_id.hex() == PARENT_ID
    attributes = {a.key: a.value for a in server_span.attributes}
    assert attributes["nnserve.model"].string_value == "digits-mlp"
    assert attributes["nnserve.model_version"].string_value == "1.0.0"
    assert attributes["nnserve.batch_size"].int_value == 2
    assert attributes["http.response.status_code"].int_value == 200
    for name in ("decode", "infer", "encode"):
        child = by_name[name]
        assert child.parent_span_id == server_span.span_id
        assert server_span.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= server_span.end_time_unix_nano
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (access,) = [line for line in lines if line.get("request_id") == "otlp-1"]
    assert access["trace_id"] == TRACE_ID
    assert {"decode_ms", "infer_ms", "encode_ms"} <= set(access)
