"""The model-repository extension of the Open Inference Protocol (Triton's and MLServer's).

``POST /v2/repository/index`` lists every model version the folder holds with its state
(READY, UNAVAILABLE with the reason, LOADING, UNLOADING); ``.../models/{name}/load``
rescans the folder and serves the model again; ``.../models/{name}/unload`` stops serving
it until the next load. ``tritonclient.http``'s ``get_model_repository_index``,
``load_model`` and ``unload_model`` call exactly these. Load and unload need the admin key
(``NNSERVE_ADMIN_KEY``); a load takes a model's name, never a path nor file contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request, params
from fastapi.responses import Response
from pydantic import BaseModel, Field

from app import errors
from app.api import security
from app.api.v2.routes import TAGS, V2Route
from app.dataplane import DataPlane


class IndexRequest(BaseModel):
    """The optional body of an index request."""

    ready: bool | None = Field(None, description="List only the versions that are READY.")


class IndexEntry(BaseModel):
    """One model version of the folder."""

    name: str
    version: str
    state: str = Field(description="READY, UNAVAILABLE, LOADING or UNLOADING.")
    reason: str = Field(description="Why the version is not READY, or why its file failed "
                        "while the version it held keeps serving.")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """Parse an optional JSON object body (tritonclient sends an empty one)."""
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedRequestError(f"the {what} body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise errors.InvalidInputError(f"the {what} body must be a JSON object")
    return payload


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def repository_index(request: Request) -> Response:
    """List every model version of the folder with its state and reason."""
    payload = _json_object(await request.body(), "index")
    ready = payload.get("ready", False)
    if not isinstance(ready, bool):
        raise errors.InvalidInputError("'ready' must be true or false")
    return Response(orjson.dumps(_dataplane(request).repository_index(ready_only=ready)),
                    media_type="application/json")


async def load_model(request: Request, name: str) -> Response:
    """Rescan the model folder and serve model ``name`` again (admin key)."""
    payload = _json_object(await request.body(), "load")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise errors.InvalidInputError("'parameters' must be a JSON object")
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise errors.InvalidInputError(
            "a load takes no configuration nor files from the request: put the model's "
            "*.joblib file in the model folder and load it by name")
    await _dataplane(request).load(name)
    return Response(b"{}", media_type="application/json")


async def unload_model(request: Request, name: str) -> Response:
    """Stop serving model ``name`` until its next load (admin key)."""
    _json_object(await request.body(), "unload")  # unload_dependents: nothing depends here
    await _dataplane(request).unload(name)
    return Response(b"{}", media_type="application/json")


def add_routes(app: FastAPI, guards: Sequence[params.Depends] = ()) -> None:
    """Add the repository routes; ``guards`` (the API key) protect the index, the admin key
    the changes."""
    admin = [Depends(security.require_admin_key)]
    responses = {status: {"description": "An error", "content": {"application/json": {}}}
                 for status in (400, 401, 403, 404)}

    def add(path: str, endpoint, dependencies, **options) -> None:
        app.router.add_api_route(path, endpoint, methods=["POST"], tags=TAGS,
                                 route_class_override=V2Route, response_model=None,
                                 dependencies=list(dependencies), responses=responses,
                                 **options)

    add("/v2/repository/index", repository_index, guards,
        openapi_extra={"responses": {"200": {"description": "The index", "content": {
            "application/json": {"schema": {"type": "array", "items":
                                            IndexEntry.model_json_schema()}}}}}})
    add("/v2/repository/models/{name}/load", load_model, admin,
        openapi_extra={"security": [{security.SCHEME: []}]})
    add("/v2/repository/models/{name}/unload", unload_model, admin,
        openapi_extra={"security": [{security.SCHEME: []}]})
