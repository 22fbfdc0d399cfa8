"""The request middleware: request id, body limit, HTTP metrics and one access-log line."""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import log, metrics
from app.api.errors import REQUEST_ID, error_response
from app.protocol import READ_TIMED_OUT

access_logger = logging.getLogger("nnserve.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class BodyTooLargeError(StarletteHTTPException):
    """The request body went past ``max_body_bytes`` while it was being read."""

    def __init__(self, limit: int) -> None:
        # No "Connection: close": the server reads and discards the rest of the body, so
        # a client still sending it reads this answer rather than a TCP reset.
        super().__init__(413, f"the request body is larger than {limit} bytes "
                              "(NNSERVE_MAX_BODY_BYTES)")


class RequestMiddleware:
    """Around every HTTP request: request id, body limit, metrics and one access-log line.

    - ``X-Request-ID`` is taken from the request when it is a plain token, else generated,
      and echoed on the response (a 500 gets it from the application's error handler,
      which answers outside every middleware).
    - Bodies over ``max_body_bytes`` are refused with 413 when they are read, never
      buffered: a declared Content-Length over the limit before any byte is read, a chunked
      body as soon as the bytes received pass it. The refusal is an HTTP exception raised
      in the application's ``receive``, so its own handlers answer it.
    - The route template (not the raw path), method and status go to the HTTP metrics; the
      model and batch size that inference records for the request go to the log line.

    One pure ASGI class rather than a stack of middlewares: each layer costs a few
    microseconds per request, which is visible next to a forward pass of these networks.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 request_metrics: metrics.RequestMetrics,
                 plain_routes: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.request_metrics = request_metrics
        # Paths of routes that are not API routes (the OpenAPI document and docs pages):
        # they leave no route template in the scope, and are few and fixed.
        self.plain_routes = plain_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter_ns()
        request_id = refusal = None
        too_large = False
        # The server stops a body at its declared length, so only a body without one
        # (chunked) needs counting as it arrives.
        count_body = True
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.fullmatch(candidate):
                    request_id = candidate
            elif key == b"content-length":
                if not value.isdigit():
                    refusal = 400, "invalid Content-Length header"
                # (Length first: int() refuses strings of over 4300 digits.) Refused when
                # the application first reads the body, before a byte of it is received:
                # the answer then goes out through the application's handlers and every
                # middleware inside this one (CORS headers included).
                elif len(value) > 18 or int(value) > self.max_body_bytes:
                    too_large = True
                else:
                    count_body = False
        # Request ids need to be unique, not secret: no urandom call per request.
        request_id = request_id or f"{random.getrandbits(128):032x}"
        scope[REQUEST_ID] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = False
        received = 0
        info: dict = {"model": None, "batch": None, "timing": None, "request_id": request_id}
        token = log.REQUEST_INFO.set(info)

        async def limited_receive() -> Message:
            nonlocal received
            if too_large:
                raise BodyTooLargeError(self.max_body_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError(self.max_body_bytes)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), header]
                timing = info["timing"]
                if timing is not None and timing.decode_at:  # a request that ran a model
                    message["headers"].append((b"server-timing",
                                               timing.server_timing().encode()))
            await send(message)

        metrics.HTTP_IN_PROGRESS.inc()
        try:
            if refusal is not None:
                await _refuse(scope, send_with_id, *refusal)
            else:
                await self.app(scope, limited_receive if count_body or too_large else receive,
                               send_with_id)
        except BodyTooLargeError as exc:
            # Reached only when no exception handler answered (a handler normally does).
            if started:
                raise
            await _refuse(scope, send_with_id, 413, exc.detail)
        except ClientDisconnect:
            # The client left before its body arrived (or the server closed a stalled
            # one): nobody to answer, and no server error. 499 as nginx logs it.
            if not started:
                status = 408 if scope.get(READ_TIMED_OUT) else 499
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            log.REQUEST_INFO.reset(token)
            elapsed_ns = time.perf_counter_ns() - start
            route = scope.get("route")
            # Route templates, not raw paths, keep the label set small whatever clients send.
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.plain_routes else "unmatched")
            method = scope["method"]
            self.request_metrics.http_request(method, template, status, elapsed_ns)
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(request_id, method, scope, template, info, status, elapsed_ns)


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    # A 413 keeps the connection: the server discards the declared body, so the client
    # reads the answer. A malformed length leaves no way to find the next request: close.
    headers = {"Connection": "close"} if status == 400 else None
    response = error_response(scope["path"], status, message, headers=headers)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:  # pragma: no cover - a response never reads the request
    return {"type": "http.disconnect"}


def _log_access(request_id: str, method: str, scope: Scope, route: str, info: dict,
                status: int, elapsed_ns: int) -> None:
    client = scope["client"][0] if scope.get("client") else "-"
    latency_ms = round(elapsed_ns / 1e6, 3)
    # The path as sent, still percent-encoded: a decoded %0A would start a forged line.
    path = log.escape(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
    model, batch = info["model"], info["batch"]
    fields = {"request_id": request_id, "method": method, "path": path, "route": route,
              "model": model, "batch_size": batch, "status": status, "latency_ms": latency_ms,
              "client": client}
    text = (f'{client} "{method} {path}" {status} {latency_ms:.2f}ms route={route} '
            f'model={model or "-"} batch={batch or "-"} id={request_id}')
    timing = info["timing"]
    if timing is not None and timing.decode_at:
        # The request's phases, as its Server-Timing header gives them (predict, infer,
        # explain).
        phases = timing.log_fields()
        fields.update(phases)
        text += "".join([f" {name}={ms:.3f}" for name, ms in phases.items()])
    trace_id = info.get("trace_id")
    if trace_id:
        fields["trace_id"] = trace_id
        text += f" trace={trace_id}"
    # A record built here and handed to the logger: Logger.info would also walk the stack
    # to find its caller, a cost paid on every request for a location nobody reads. The
    # fields again, for JSON log lines and log processors.
    access_logger.handle(log.access_record(access_logger.name, __file__, text, fields))
