"""The ASGI application: ``create_app(settings)`` and the module-level ``app``.

``uvicorn app.main:app`` serves it as well as ``python -m app``; models load in the lifespan,
so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import inference, log, metrics
from app.api import health, native, security, v2
from app.config import Settings
from app.inference import InferenceError
from app.protocol import READ_TIMED_OUT
from app.registry import ModelNotFoundError, Registry, default_model_dir
from app.validation import InputError

logger = logging.getLogger("nnserve")
access_logger = logging.getLogger("nnserve.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, message: str) -> dict[str, str]:
    """Return an error in the shape of the protocol that owns ``path``."""
    # Open Inference Protocol clients (tritonclient) read "error"; FastAPI clients "detail".
    return {"error": message} if _is_v2(path) else {"detail": message}


def error_response(path: str, status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Return a JSON error response in the shape of the protocol that owns ``path``."""
    return JSONResponse(error_body(path, message), status_code=status, headers=headers)


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
      and echoed on the response.
    - Bodies over ``max_body_bytes`` are refused with 413 while they are read, never
      buffered: a declared Content-Length over the limit before any byte is read, a chunked
      body as soon as the bytes received pass it.
    - The route template (not the raw path), method and status go to the HTTP metrics; the
      model and batch size that inference records for the request go to the log line.

    One pure ASGI class rather than a stack of middlewares: each layer costs a few
    microseconds per request, which is visible next to a forward pass of these networks.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 plain_routes: frozenset[str] = frozenset(),
                 direct: FastAPI | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths of routes that are not API routes (the OpenAPI document and docs pages):
        # they leave no route template in the scope, and are few and fixed.
        self.plain_routes = plain_routes
        # The application whose predict routes this middleware calls directly (see
        # _direct_route), or None to route every request through the application.
        self.direct = direct
        self.direct_routes = _predict_routes(direct) if direct is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = refusal = None
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
                # (Length first: int() refuses strings of over 4300 digits.)
                elif len(value) > 18 or int(value) > self.max_body_bytes:
                    refusal = 413, BodyTooLargeError(self.max_body_bytes).detail
                else:
                    count_body = False
        # Request ids need to be unique, not secret: no urandom call per request.
        request_id = request_id or f"{random.getrandbits(128):032x}"
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = False
        received = 0
        info: dict = {"model": None, "batch": None}
        token = log.REQUEST_INFO.set(info)

        async def limited_receive() -> Message:
            nonlocal received
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
            await send(message)

        metrics.HTTP_IN_PROGRESS.inc()
        try:
            if refusal is not None:
                await _refuse(scope, send_with_id, *refusal)
            else:
                direct = self._direct_route(scope)
                if direct is not None:
                    await self._call_direct(scope, limited_receive if count_body else receive,
                                            send_with_id, *direct)
                else:
                    await self.app(scope, limited_receive if count_body else receive,
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
        except Exception as exc:
            # A direct call has no ServerErrorMiddleware around it: do what it does, answer
            # 500 (through the application's handler) and raise again for the server's log.
            if self.direct is not None and not started:
                handler = self.direct.exception_handlers.get(Exception)
                if handler is not None:
                    response = await handler(Request(scope, receive), exc)
                    await response(scope, receive, send)
            raise
        finally:
            metrics.HTTP_IN_PROGRESS.dec()
            log.REQUEST_INFO.reset(token)
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            # Route templates, not raw paths, keep the label set small whatever clients send.
            template = getattr(route, "path", None) or (
                scope["path"] if scope["path"] in self.plain_routes else "unmatched")
            method = scope["method"]
            metrics.http_request(method, template, status, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(request_id, method, scope, template, info, status, elapsed)

    def _direct_route(self, scope: Scope) -> tuple | None:
        """Return (route, endpoint, path params) for a predict request, else None.

        POST /predict and /models/{name}/predict are most of the traffic: calling their
        endpoints from here skips Starlette's error middlewares, the router's walk over every
        route and FastAPI's per-request dependency solving, about a fifth of the CPU time of
        a request. The routes stay registered, so the OpenAPI document is unchanged, and
        errors go through the application's own exception handlers.
        """
        if not self.direct_routes or scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = scope["path"]
        found = self.direct_routes.get(path)
        if found is not None:
            return found[0], found[1], {}
        if path.startswith("/models/") and path.endswith("/predict"):
            route, endpoint = self.direct_routes["/models/{name}/predict"]
            match = route.path_regex.match(path)
            if match is not None:
                return route, endpoint, match.groupdict()
        return None

    async def _call_direct(self, scope: Scope, receive: Receive, send: Send, route,
                           endpoint, params: dict) -> None:
        # What Starlette and FastAPI would have put in the scope on the way.
        scope["app"] = self.direct
        scope["route"] = route
        scope["endpoint"] = endpoint
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await endpoint(request, **params)
        except Exception as exc:
            # As Starlette's ExceptionMiddleware (inside this middleware on the usual path):
            # the handlers of known errors answer; anything else goes up.
            handler = _exception_handler(self.direct, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _predict_routes(app: FastAPI) -> dict[str, tuple]:
    from fastapi.routing import APIRoute

    endpoints = {"/predict": native.predict, "/models/{name}/predict": native.predict_with}
    return {route.path: (route, endpoints[route.path]) for route in app.router.routes
            if isinstance(route, APIRoute) and endpoints.get(route.path) is route.endpoint}


def _exception_handler(app: FastAPI, exc: Exception):
    """The handler Starlette's ExceptionMiddleware would pick for ``exc`` (by status code,
    then by class), or None for an error left to the server-error handler."""
    handlers = app.exception_handlers
    if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    # A 413 keeps the connection: the server discards the declared body, so the client
    # reads the answer. A malformed length leaves no way to find the next request: close.
    headers = {"Connection": "close"} if status == 400 else None
    response = error_response(scope["path"], status, message, headers=headers)
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:  # pragma: no cover - a response never reads the request
    return {"type": "http.disconnect"}


def _log_access(request_id: str, method: str, scope: Scope, route: str, info: dict,
                status: int, elapsed: float) -> None:
    client = scope["client"][0] if scope.get("client") else "-"
    latency_ms = round(elapsed * 1000, 3)
    # The path as sent, still percent-encoded: a decoded %0A would start a forged line.
    path = _printable(scope.get("raw_path", b"").decode("latin-1") or scope["path"])
    model, batch = info["model"], info["batch"]
    # A record built here and handed to the logger: Logger.info would also walk the stack
    # to find its caller, a cost paid on every request for a location nobody reads. The
    # fields again, for JSON log lines and log processors.
    access_logger.handle(log.access_record(
        access_logger.name, __file__,
        f'{client} "{method} {path}" {status} {latency_ms:.2f}ms route={route} '
        f'model={model or "-"} batch={batch or "-"} id={request_id}',
        {"request_id": request_id, "method": method, "path": path, "route": route,
         "model": model, "batch_size": batch, "status": status, "latency_ms": latency_ms,
         "client": client},
    ))


def _printable(text: str) -> str:
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(request.url.path, exc.status_code, str(message),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return error_response(request.url.path, 422, message)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> Response:
        return error_response(request.url.path, 422, str(exc))

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> Response:
        return error_response(request.url.path, 422, str(exc))

    @app.exception_handler(ModelNotFoundError)
    async def model_not_found(request: Request, exc: ModelNotFoundError) -> Response:
        return error_response(request.url.path, 404, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette raises the exception again after this answer, and uvicorn logs it with
        # its traceback: nothing to log here.
        return error_response(request.url.path, 500, "internal server error")


def _watch_termination(app: FastAPI, drain_delay: float) -> dict[int, object]:
    """Flip ``app.state.draining`` on SIGTERM/SIGINT, then hand the signal on.

    The server (uvicorn) installs its own handlers before the lifespan starts; chaining to
    them keeps its graceful shutdown (stop accepting, finish in-flight requests) while
    /ready turns 503 at the very moment the signal arrives. With ``drain_delay`` the
    hand-over of SIGTERM waits, so load balancers see 503 before the listener closes.
    Returns the replaced handlers. Signals can only be handled in the main thread: under a
    test client the lifespan runs elsewhere and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    loop = asyncio.get_running_loop()
    replaced: dict[int, object] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(sig: int, frame: object, previous=previous) -> None:
            first = not app.state.draining
            app.state.draining = True
            if first and sig == signal.SIGTERM and drain_delay > 0:
                logger.info("SIGTERM: draining for %.3g s before stopping", drain_delay)
                loop.call_soon_threadsafe(loop.call_later, drain_delay, previous, sig, None)
            else:
                previous(sig, frame)

        signal.signal(signum, handler)
        replaced[signum] = previous
    return replaced


def _lifespan(registry: Registry | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings
        log.configure(settings.log_level, settings.log_format)
        if registry is None:
            folder = settings.model_dir or default_model_dir()
            app.state.registry = Registry.from_dir(folder, default=settings.default_model)
        metrics.MODELS_LOADED.set(len(app.state.registry))
        inference.configure_batching(settings.batch_max_size, settings.batch_max_delay_ms)
        logger.info("serving %d model(s): %s; default %s", len(app.state.registry),
                    ", ".join(app.state.registry.names()) or "none",
                    app.state.registry.default)
        replaced = _watch_termination(app, settings.drain_delay)
        try:
            yield
        finally:
            app.state.draining = True
            inference.flush_batches()  # no request left waiting for its group
            for signum, previous in replaced.items():
                signal.signal(signum, previous)

    return lifespan


def _document_security(app: FastAPI) -> None:
    """Declare the bearer scheme that the predict routes name in the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[security.SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The value of NNSERVE_API_KEY; needed only when it is set.",
            }
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    try:
        return metadata.version("nnserve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class _Service(FastAPI):
    """FastAPI, with the predict routes called straight from the request middleware.

    Every other request goes through the whole stack as usual. A predict request skips
    Starlette's and FastAPI's outer middlewares, its router walk and FastAPI's per-request
    dependency solving (see :meth:`RequestMiddleware._direct_route`), about a fifth of the
    CPU time of a request at these sizes.
    """

    direct_middleware: RequestMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self.direct_middleware
        if direct is not None and scope["type"] == "http" and direct._direct_route(scope):
            await direct(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, registry: Registry | None = None) -> FastAPI:
    """Build the service; models load from ``settings.model_dir`` when it starts.

    ``registry`` serves already-loaded models instead (tests use it).
    """
    settings = settings or Settings()
    app = _Service(
        # FastAPI's own OpenTelemetry hooks stay off: nnserve exports Prometheus metrics,
        # and checking for a configured OpenTelemetry provider costs on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="nnserve",
        version=_version(),
        summary="Class probabilities from numpy networks (nnlib), over a native REST API and "
        "the Open Inference Protocol (V2).",
        lifespan=_lifespan(registry),
    )
    app.state.settings = settings
    app.state.registry = registry if registry is not None else Registry()
    app.state.draining = False

    native.add_routes(app)
    health.add_routes(app)
    app.include_router(v2.router)
    _install_handlers(app)
    _document_security(app)

    # Added last = outermost: the request middleware sees (and logs) every answer, the 413s
    # and CORS preflights included.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID",
                           "Inference-Header-Content-Length"],
            expose_headers=["X-Request-ID"],
        )
    plain_routes = frozenset(filter(None, (app.openapi_url, app.docs_url, app.redoc_url,
                                           app.swagger_ui_oauth2_redirect_url)))
    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_body_bytes,
                       plain_routes=plain_routes)
    # With CORS on, every answer must pass through CORSMiddleware: no direct calls then.
    if not settings.cors_origins:
        app.direct_middleware = RequestMiddleware(app.router, settings.max_body_bytes,
                                                  plain_routes, direct=app)
    return app


app = create_app()

__all__ = ["app", "create_app", "error_body", "error_response"]
