"""Error answers in the shape of the protocol a request belongs to.

The protocols' routes shape their own errors (see ``app.api.routing``); this module covers
the answers given before or without a route: an unknown path, a wrong method, a body over
the limit, a server error. The path decides the protocol: ``/v2`` and below are the Open
Inference Protocol (``{"error": ...}``, what tritonclient reads), everything else the
native API (``{"detail": ...}``, FastAPI's shape).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.log import escape

# Scope key under which the request middleware leaves the request id, for the 500 handler
# (Starlette's server-error middleware answers outside every user middleware).
REQUEST_ID = "nnserve.request_id"


def is_v2(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, status: int, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """Answer ``status`` with ``message`` in the shape of the protocol that owns ``path``."""
    body = {"error": message} if is_v2(path) else {"detail": message}
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


def install_handlers(app: FastAPI) -> None:
    """Register the application-wide handlers: framework errors and the last-resort 500."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {escape(request.url.path)}"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"method {request.method} is not allowed on {escape(request.url.path)}"
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

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette raises the exception again after this answer and uvicorn logs it with
        # its traceback: nothing to log here. The request id the middleware chose goes on
        # this answer too, so a client can quote it.
        request_id = request.scope.get(REQUEST_ID)
        headers = {"X-Request-ID": request_id} if request_id else None
        return error_response(request.url.path, 500, "internal server error", headers)
