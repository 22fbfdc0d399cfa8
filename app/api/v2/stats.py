"""Triton's statistics extension: ``GET /v2/models[/{name}[/versions/{version}]]/stats``.

The answer is ``{"model_stats": [...]}``, one entry per model version served, in the shape
``tritonclient.http.InferenceServerClient.get_inference_statistics`` reads (see
:mod:`app.statistics` for what each figure counts).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.dataplane import DataPlane


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def all_stats(request: Request) -> dict[str, Any]:
    """Statistics of every version of every loaded model."""
    dataplane = _dataplane(request)
    models = [(model.name, model.version) for model in dataplane.models()]
    return {"model_stats": dataplane.statistics.model_stats(models)}


async def model_stats(request: Request, name: str, version: str | None = None
                      ) -> dict[str, Any]:
    """Statistics of a model (every version served), or of one version of it."""
    dataplane = _dataplane(request)
    model = dataplane.model(name, version)
    return {"model_stats": dataplane.statistics.model_stats([(model.name, model.version)])}


async def unversioned_model_stats(request: Request, name: str) -> dict[str, Any]:
    """Statistics of a model (every version served)."""
    return await model_stats(request, name)


def add_routes(add) -> None:
    """Add the statistics routes with the V2 module's ``add(path, endpoint, **options)``."""
    from app.api.v2.routes import _errors  # the V2 error documentation, one definition

    add("/v2/models/stats", all_stats)
    add("/v2/models/{name}/stats", unversioned_model_stats, responses=_errors(404))
    add("/v2/models/{name}/versions/{version}/stats", model_stats, responses=_errors(404))


__all__ = ["add_routes"]
