"""Liveness, readiness and Prometheus metrics: open even when an API key is set."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import metrics

TAGS = ["operations"]


class Health(BaseModel):
    """The process is alive."""

    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    """The server takes traffic, and which models it serves."""

    status: str = Field(examples=["ready"])
    models: list[str] = Field(examples=[["digits-cnn", "digits-mlp"]])


class NotReady(BaseModel):
    """Why the server should not get traffic now."""

    status: str = Field(examples=["draining"])
    detail: str


async def health() -> dict[str, str]:
    """Answer 200 while the process runs and its event loop turns."""
    return {"status": "ok"}


async def ready(request: Request) -> Response | dict:
    """Answer 200 when models are loaded and the server is not shutting down, else 503."""
    dataplane = request.app.state.dataplane
    reason = dataplane.not_ready_reason()
    if reason is not None:
        status = "draining" if dataplane.draining else "no models"
        return JSONResponse({"status": status, "detail": reason}, status_code=503)
    return {"status": "ready", "models": dataplane.registry.names()}


async def prometheus_metrics(request: Request) -> Response:
    """Return every metric in Prometheus' text exposition format."""
    # Readiness as of this scrape (what /ready would answer), for the not-ready alert.
    dataplane = request.app.state.dataplane
    metrics.READY.set(0 if dataplane.not_ready_reason() else 1)
    body, content_type = metrics.render(dataplane.request_metrics)
    return Response(body, media_type=content_type)


def add_routes(app: FastAPI) -> None:
    """Add the routes to ``app`` (see ``app.api.native.add_routes`` for why not a router)."""
    target = app.router
    target.add_api_route("/health", health, methods=["GET"], tags=TAGS, response_model=Health,
                         summary="Liveness")
    target.add_api_route(
        "/ready", ready, methods=["GET"], tags=TAGS, response_model=Ready, summary="Readiness",
        responses={503: {"model": NotReady, "description": "Draining, or no model is loaded."}},
    )
    target.add_api_route(
        "/metrics", prometheus_metrics, methods=["GET"], tags=TAGS, summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    )

