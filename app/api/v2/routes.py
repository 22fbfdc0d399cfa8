"""Open Inference Protocol (V2, as KServe and Triton speak it over HTTP/REST): the routes.

Each route decodes with :mod:`app.api.v2.codec`, calls the dataplane and encodes. Every
refusal is a :class:`~app.errors.ServingError` answered through :data:`STATUS` as
``{"error": "message"}``, the form tritonclient reads. As Triton does, every bad request
is 400, whatever part of it is wrong.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, params
from fastapi.responses import Response

from app import errors
from app.api.routing import ROUTING_HEADER, VERSION_HEADER, ProtocolRoute, header_values
from app.api.v2 import codec, schemas, stats
from app.dataplane import DataPlane
from app.registry import ServedModel

TAGS = ["Open Inference Protocol (V2)"]
SERVER_NAME = "nnserve"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")
PLATFORM = "nnlib"

# The one table from the dataplane's errors to this protocol's statuses.
STATUS: dict[type[errors.ServingError], int] = {
    errors.MalformedRequestError: 400,
    errors.InvalidInputError: 400,
    errors.InferenceError: 400,
    errors.UnauthorizedError: 401,
    errors.ForbiddenError: 403,
    errors.ModelNotFoundError: 404,
    errors.PayloadTooLargeError: 413,
    errors.UnsupportedMediaTypeError: 415,
    errors.NotReadyError: 503,
}


class V2Route(ProtocolRoute):
    """A route of the Open Inference Protocol: errors as ``{"error": ...}``."""

    @staticmethod
    def error_response(error: errors.ServingError) -> Response:
        return Response(orjson.dumps({"error": error.message}), status_code=STATUS[type(error)],
                        headers=error.headers, media_type="application/json")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document the V2 error answers of a route."""
    return {status: {"model": schemas.ErrorBody} for status in statuses}


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def check_input(name: str, shape: Sequence[int], model: ServedModel,
                dataplane: DataPlane) -> None:
    """Refuse an input the model does not take before its data is decoded: its name, sample
    shape (``input_shape`` or its flat form) or batch size."""
    if name != codec.INPUT_NAME:
        raise errors.InvalidInputError(f"model {model.name!r} has no input {name!r}; its input is "
                                  f"{codec.INPUT_NAME!r}")
    sample = tuple(shape[1:])
    if len(shape) < 2 or (sample != model.input_shape and sample != (model.input_size,)):
        forms = [[-1, *model.input_shape]]
        if len(model.input_shape) > 1:
            forms.append([-1, model.input_size])
        raise errors.InvalidInputError(
            f"input {codec.INPUT_NAME!r} has shape {list(shape)}; model {model.name!r} takes "
            + " or ".join(map(str, forms)) + " (-1 is the batch size)")
    try:
        dataplane.check_batch_size(shape[0])
    except errors.InvalidInputError as exc:
        raise errors.InvalidInputError(f"input {codec.INPUT_NAME!r}: {exc}") from None


def _tensor_metadata(name: str, shape: Sequence[int]) -> dict[str, Any]:
    """Describe one tensor with -1 for its batch dimension."""
    return {"name": name, "datatype": "FP32", "shape": [-1, *shape]}


async def server_metadata(request: Request) -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions supported."""
    # The app's version is the package's, the one the OpenAPI document shows too.
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": list(EXTENSIONS)}


async def server_live() -> dict[str, bool]:
    """Liveness: 200 while the process answers."""
    return {"live": True}


async def server_ready(request: Request) -> dict[str, bool]:
    """Readiness: 200 when models are loaded and the server is not draining, else 503."""
    reason = _dataplane(request).not_ready_reason()
    if reason is not None:
        raise errors.NotReadyError(f"not ready: {reason}")
    return {"ready": True}


async def model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    """Model metadata: versions, platform, and the input and output tensors."""
    dataplane = _dataplane(request)
    model = dataplane.model(name, version)
    return {
        "name": model.name,
        "versions": list(dataplane.snapshot.versions.get(model.name, [model.version])),
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(codec.INPUT_NAME, model.input_shape)],
        "outputs": [_tensor_metadata(codec.OUTPUT_NAME, (model.n_classes,))],
    }


async def model_ready(request: Request, name: str, version: str | None = None) -> dict:
    """Model readiness: 200 when the model is loaded and the server is not draining."""
    dataplane = _dataplane(request)
    model = dataplane.model(name, version)
    reason = dataplane.not_ready_reason()
    if reason is not None:
        raise errors.NotReadyError(f"model {name!r} is not ready: {reason}")
    return {"name": model.name, "ready": True}


def _decode(body: bytes, encoding: str | None, header_length: str | None, model: ServedModel,
            dataplane: DataPlane) -> tuple[str | None, list[codec.RequestedOutput], np.ndarray]:
    """Decode an infer body (its Content-Encoding and Inference-Header-Content-Length
    headers given): its id, the outputs it asks for and its input tensor."""
    body = codec.decompress(body, encoding, dataplane.settings.max_body_bytes)
    raw, binary = codec.split_body(body, header_length)
    header = codec.parse_header(raw)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise errors.InvalidInputError("'id' must be a string")
    outputs = codec.requested_outputs(header, [codec.OUTPUT_NAME])
    arrays = codec.decode_inputs(
        header, binary, lambda tensor, shape: check_input(tensor, shape, model, dataplane))
    # Any other name was refused, and a second "input" too: this is the only tensor.
    return request_id, outputs, arrays[codec.INPUT_NAME]


async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run the model on one input tensor; answer probabilities as JSON or binary data."""
    dataplane = _dataplane(request)
    routing_key, encoding, header_length = header_values(
        request, ROUTING_HEADER, "content-encoding", codec.HEADER_LENGTH.lower())
    model = dataplane.model(name, version, routing_key)
    request_id, outputs, tensor = await dataplane.decode(await request.body(), _decode,
                                                         encoding, header_length, model,
                                                         dataplane)
    try:
        probabilities = await dataplane.infer(model, tensor)
    except errors.InvalidInputError as exc:
        raise errors.InvalidInputError(f"input {codec.INPUT_NAME!r}: {exc}") from None
    return dataplane.encode(_encode, model, request_id, outputs, probabilities)


def _encode(model: ServedModel, request_id: str | None, outputs: list[codec.RequestedOutput],
            probabilities: np.ndarray) -> Response:
    body, header_length = codec.encode_response(
        model.name, model.version, request_id,
        [(output, probabilities) for output in outputs])
    if header_length is None:
        return Response(body, media_type="application/json",
                        headers={VERSION_HEADER: model.version})
    return Response(body, media_type="application/octet-stream",
                    headers={codec.HEADER_LENGTH: str(header_length),
                             VERSION_HEADER: model.version})


_INFER_BODY = {
    "required": True,
    "description": f"JSON, or with {codec.HEADER_LENGTH} set, that many bytes of JSON "
    "followed by the binary tensor data of the inputs that give binary_data_size.",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def openapi_components() -> dict[str, Any]:
    """The schemas the infer body's ``$ref`` names, for the OpenAPI document's components."""
    schema = schemas.InferenceRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    components["InferenceRequest"] = schema
    return components


def _unversioned(endpoint):
    """``endpoint`` without its ``version`` parameter, for the route that has none in its
    path: FastAPI would read a parameter the path lacks from the query string."""

    async def unversioned(request: Request, name: str):
        return await endpoint(request, name)

    unversioned.__name__ = endpoint.__name__
    unversioned.__doc__ = endpoint.__doc__
    # What the endpoint returns, so that FastAPI (and ProtocolRoute) treat both alike.
    unversioned.__annotations__["return"] = typing.get_type_hints(endpoint).get("return")
    return unversioned


def add_routes(app: FastAPI, guards: Sequence[params.Depends] = ()) -> None:
    """Add the V2 routes to ``app``; each with and without ``/versions/{version}``.

    ``guards`` are the dependencies of the routes that run a model (the API key check).
    """

    def add(path: str, endpoint, methods=("GET",), **options) -> None:
        options.setdefault("response_model", None)
        app.router.add_api_route(path, endpoint, methods=list(methods), tags=TAGS,
                                 route_class_override=V2Route, **options)

    infer_options = {
        "dependencies": list(guards),
        "openapi_extra": {"requestBody": _INFER_BODY},
        "responses": {**_errors(400, 401, 404, 413, 415),
                      200: {"model": schemas.InferenceResponse}},
    }
    # Inference first: the router tries routes in order, and these are most of the traffic.
    add("/v2/models/{name}/infer", _unversioned(infer), ["POST"], **infer_options)
    add("/v2/models/{name}/versions/{version}/infer", infer, ["POST"], **infer_options)
    add("/v2", server_metadata, response_model=schemas.ServerMetadata)
    add("/v2/health/live", server_live)
    add("/v2/health/ready", server_ready, responses=_errors(503))
    # Before /v2/models/{name}, which would take "stats" for a model name.
    stats.add_routes(add)
    for suffix, endpoint, extra in (("", model_metadata, {"response_model":
                                                          schemas.ModelMetadata}),
                                    ("/ready", model_ready, {})):
        responses = _errors(404, 503) if suffix else _errors(404)
        add(f"/v2/models/{{name}}{suffix}", _unversioned(endpoint), responses=responses,
            **extra)
        add(f"/v2/models/{{name}}/versions/{{version}}{suffix}", endpoint,
            responses=responses, **extra)


__all__ = ["STATUS", "V2Route", "add_routes", "check_input", "openapi_components"]
