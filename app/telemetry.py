"""OpenTelemetry tracing, optional: the `otel` extra and the standard OTEL_* variables.

Decided once, when the application is built (:func:`provider_from_environment`): tracing is
on when the SDK is installed, ``OTEL_SDK_DISABLED`` is not true, and the environment names
an exporter (``OTEL_TRACES_EXPORTER``, other than ``none``) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Everything
else comes from the SDK's own reading of the environment: the service name and resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the sampler
(``OTEL_TRACES_SAMPLER[_ARG]``), the exporter's endpoint, headers and timeout, the batch
processor's delays (``OTEL_BSP_*``) and the propagators (``OTEL_PROPAGATORS``, W3C trace
context by default). Otherwise no middleware is added and no OpenTelemetry code runs per
request.

When on, :class:`TracingMiddleware` makes one server span per predict, infer and explain
request (a client's ``traceparent`` is its parent), with the model, version, batch size and
status as attributes and one child span per phase the dataplane timed (decode, queue when
batching, infer, encode); the trace id goes to the access-log line. Health, readiness and
metrics probes are never traced.
"""

from __future__ import annotations

import os
import re
import time
from importlib.metadata import entry_points
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.log import REQUEST_INFO

# The routes that run a model: every other path (probes, metrics, catalogue) is not traced.
TRACED_PATH = re.compile(r"/(predict|infer|explain)\Z")
_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})
# OTEL_TRACES_EXPORTER names and the entry point of the exporter the otel extra ships.
_EXPORTER_ALIASES = {"otlp": "otlp_proto_http"}


def configured(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether the OTEL_* environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_environment() -> Any | None:
    """Return a TracerProvider built from the OTEL_* environment, or None when tracing is off
    (the SDK missing, or nothing configured)."""
    if not configured():
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        import logging

        logging.getLogger("nnserve").warning(
            "OTEL_* variables ask for traces but OpenTelemetry is not installed: "
            "pip install 'nnserve[otel]'; tracing stays off")
        return None
    # TracerProvider reads the sampler and, through Resource.create(), the service name.
    provider = TracerProvider()
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in filter(None, (name.strip() for name in names)):
        (entry,) = entry_points(group="opentelemetry_traces_exporter",
                                name=_EXPORTER_ALIASES.get(name, name))
        # Each exporter reads its own OTEL_EXPORTER_* variables.
        provider.add_span_processor(BatchSpanProcessor(entry.load()()))
    return provider


class TracingMiddleware:
    """A server span per inference request, with the dataplane's phases as child spans.

    Inside the request middleware (added before it), so the trace id is in the request's
    entry when the access-log line is written.
    """

    def __init__(self, app: ASGIApp, provider: Any) -> None:
        from opentelemetry import propagate, trace

        self.app = app
        self.tracer = provider.get_tracer("nnserve")
        self.extract = propagate.extract
        self.trace = trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not TRACED_PATH.search(scope["path"]):
            await self.app(scope, receive, send)
            return
        trace = self.trace
        carrier = {key.decode("latin-1"): value.decode("latin-1")
                   for key, value in scope["headers"] if key in _PROPAGATED}
        status = 500
        method = scope["method"]

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
                method, context=self.extract(carrier), kind=trace.SpanKind.SERVER,
                record_exception=False, set_status_on_exception=True) as span:
            info = REQUEST_INFO.get()
            if info is not None:
                info["trace_id"] = format(span.get_span_context().trace_id, "032x")
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                span.update_name(f"{method} {route}" if route else method)
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.response.status_code", status)
                if route:
                    span.set_attribute("http.route", route)
                if status >= 500:
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                timing = info.get("timing") if info is not None else None
                if timing is not None:
                    self._phases(span, timing)

    def _phases(self, span: Any, timing: Any) -> None:
        """Record the model's attributes and one child span per timed phase."""
        model = timing.model
        if model is not None:
            span.set_attribute("nnserve.model", model.name)
            span.set_attribute("nnserve.model_version", model.version)
        if timing.samples:
            span.set_attribute("nnserve.batch_size", timing.samples)
        # Phases were timed with perf_counter_ns; spans want ns since the epoch.
        offset = time.time_ns() - time.perf_counter_ns()
        parent = self.trace.set_span_in_context(span)
        phases = [("decode", timing.decode_at, timing.decode_ns)]
        infer_at = timing.infer_at
        if timing.queue_ns is not None and infer_at:
            phases.append(("queue", infer_at, timing.queue_ns))
            infer_at += timing.queue_ns
        phases += [("infer", infer_at, timing.infer_ns),
                   ("encode", timing.encode_at, timing.encode_ns)]
        for name, start, duration in phases:
            if start:
                child = self.tracer.start_span(name, context=parent, start_time=start + offset)
                child.end(end_time=start + offset + duration)


__all__ = ["TracingMiddleware", "configured", "provider_from_environment"]
