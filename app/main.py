"""The application factory: ``create_app(settings)`` builds the whole service.

Nothing here runs at import: ``python -m app`` calls the factory with the launcher's
settings, and ``uvicorn --factory app.main:create_app`` calls it with the ``NNSERVE_*``
environment. Models load in the lifespan (:mod:`app.lifecycle`).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from fastapi import Depends, FastAPI, params
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

from app import telemetry, ui
from app.api import explain, health, native, security, v2
from app.api.errors import install_handlers
from app.api.v2 import repository as v2_repository
from app.config import Settings
from app.dataplane import DataPlane
from app.lifecycle import lifespan
from app.middleware import RequestMiddleware
from app.registry import Registry

# Tried first by the router: POST /predict and the V2 infer (JSON or binary tensors).
HOT_ROUTES = ("/predict", "/v2/models/{name}/infer")


def _document(app: FastAPI) -> None:
    """Add to the OpenAPI document what routes name but FastAPI cannot infer: the bearer
    scheme of the API key and the V2 infer body's schemas."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            components = build().setdefault("components", {})
            components.setdefault("schemas", {}).update(v2.openapi_components())
            components.setdefault("securitySchemes", {})[security.SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The value of NNSERVE_API_KEY; needed only when it is set.",
            }
        return app.openapi_schema

    app.openapi = openapi


def _add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs and ReDoc at /redoc, as FastAPI's own pages would.

    FastAPI's documented way to place its pages ("Custom Docs UI"), used here for where
    they stand in the route table: last.
    """
    title = app.title

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} - Swagger UI",
                                   oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url)

    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{title} - ReDoc")

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route(app.swagger_ui_oauth2_redirect_url, swagger_ui_redirect,
                      include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)


def _version() -> str:
    try:
        return metadata.version("nnserve")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None, *, registry: Registry | None = None,
               dependencies: Sequence[params.Depends] = (),
               tracer_provider: Any | None = None) -> FastAPI:
    """Build the service; models load from ``settings.model_dir`` when it starts.

    ``settings`` defaults to the ``NNSERVE_*`` environment. ``registry`` serves
    already-loaded models instead of the folder (tests use it). ``dependencies`` are
    FastAPI dependencies run before every route, e.g. an embedding program's own auth.
    ``tracer_provider`` (an OpenTelemetry SDK TracerProvider) traces inference requests;
    without one, the OTEL_* environment decides (:mod:`app.telemetry`).
    """
    settings = settings or Settings()
    app = FastAPI(
        # FastAPI's own OpenTelemetry hooks stay off: nnserve exports Prometheus metrics,
        # and checking for a configured OpenTelemetry provider costs on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="nnserve",
        version=_version(),
        summary="Class probabilities from numpy networks (nnlib), over a native REST API and "
        "the Open Inference Protocol (V2).",
        lifespan=lifespan,
        # A redirect would name the Host header the client sent (any host it likes).
        redirect_slashes=False,
        dependencies=list(dependencies),
        # The documentation pages are added after the API routes (_add_docs): the router
        # tries routes in order, and a predict request should not first try four pages.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.api_key = settings.api_key.encode() if settings.api_key else None
    app.state.admin_key = settings.admin_key.encode() if settings.admin_key else None
    app.state.dataplane = DataPlane(settings, registry)
    app.state.load_models = registry is None
    # Decided once: without a provider no tracing code runs per request.
    app.state.tracer_provider = tracer_provider or telemetry.provider_from_environment()

    # The routes that run a model check the API key when one is set; without one there is
    # nothing to check, and no dependency to solve on every request.
    guards = [Depends(security.require_api_key)] if settings.api_key else []
    # Most of the traffic first: the router tries routes in the order they were added.
    native.add_routes(app, guards)
    v2.add_routes(app, guards)
    explain.add_routes(app, guards)
    v2_repository.add_routes(app, guards)
    health.add_routes(app)
    if settings.ui:  # the demo page, after every API route
        ui.add_routes(app)
    _add_docs(app)
    # The router tries routes in order, each at about a microsecond: the unversioned
    # inference route of each protocol first (most of the traffic), then the other POST
    # routes, then the GET ones, each group in the order added. No two templates of one
    # method here match the same path, so this changes which route answers no request
    # (tests/app/test_framework.py checks it).
    app.router.routes.sort(key=lambda route: (
        getattr(route, "path", None) not in HOT_ROUTES,
        "POST" not in (getattr(route, "methods", None) or ())))
    install_handlers(app)
    _document(app)

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
    if app.state.tracer_provider is not None:
        # Inside the request middleware, which logs the trace id this one sets.
        app.add_middleware(telemetry.TracingMiddleware, provider=app.state.tracer_provider)
    # The OpenAPI document is a plain Starlette route, without a route template.
    plain_routes = frozenset(filter(None, (app.openapi_url,)))
    app.add_middleware(RequestMiddleware, max_body_bytes=settings.max_body_bytes,
                       request_metrics=app.state.dataplane.request_metrics,
                       plain_routes=plain_routes)
    return app


__all__ = ["create_app"]
