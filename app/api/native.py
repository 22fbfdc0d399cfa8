"""The native REST API: POST /predict and the model catalogue.

The routes decode JSON into Python values, call the dataplane and encode its answer; every
refusal is a :class:`~app.errors.ServingError`, answered through :data:`STATUS` as
``{"detail": "..."}`` (FastAPI's shape). Well-formed JSON that is not a usable request is
422, as FastAPI's own request validation answers; a body that is not JSON at all is 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Path, Request, Response, params
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from app import errors
from app.api import security
from app.api.routing import ROUTING_HEADER, VERSION_HEADER, ProtocolRoute, header_values
from app.dataplane import DataPlane
from app.registry import ServedModel
from app.validation import batch_from_json

TAGS = ["native"]

# scikit-learn's digits[0], a "0", as raw pixels (0..16) in the shipped models' 8x8 shape.
DIGIT_ZERO = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]
DIGIT_ZERO_FLAT = [pixel for row in DIGIT_ZERO for pixel in row]
_NESTED_NUMBERS = {
    "type": "array",
    "description": "A sample: nested lists of numbers in the model's input_shape, or a flat "
    "list of the same size.",
    "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
}

ModelName = Annotated[str, Path(description="A loaded model's name (see GET /models).",
                                examples=["digits-mlp"])]
ModelVersion = Annotated[str, Path(description="A loaded version of the model, or an alias "
                                   "of one (see GET /models/{name}).", examples=["1"])]


class PredictRequest(BaseModel):
    """Samples to classify, the model to use and how many top classes to list."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"inputs": [DIGIT_ZERO_FLAT]},
                {"inputs": [DIGIT_ZERO], "model": "digits-cnn", "top_k": 3},
            ]
        },
    )

    inputs: Annotated[
        list[Any],
        WithJsonSchema({"type": "array", "minItems": 1, "items": _NESTED_NUMBERS}),
    ] = Field(description="The batch: one entry per sample, at most NNSERVE_MAX_BATCH.")
    model: str | None = Field(
        None,
        description="Model name; the server's default model when absent. With "
        "/models/{name}/predict it must be absent or equal to {name}.",
    )
    top_k: int | None = Field(
        None, ge=1, description="Also list the k most probable classes (1..number of classes)."
    )


class TopClass(BaseModel):
    """One of the k most probable classes of a sample."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The answer for one sample."""

    label: str = Field(description="Label of the most probable class.")
    class_index: int = Field(description="Index of that class in `labels`.")
    probabilities: list[float] = Field(description="One probability per label; they sum to 1.")
    top_k: list[TopClass] | None = Field(
        None, description="The k most probable classes, most probable first (when asked)."
    )


class PredictResponse(BaseModel):
    """Class probabilities for every sample, in request order."""

    model: str
    version: str
    labels: list[str]
    predictions: list[Prediction]


class VersionState(BaseModel):
    """One version of a model and whether it serves."""

    version: str
    state: str = Field(description="READY (the others are in POST /v2/repository/index).")
    reason: str = Field(description="Empty, or why a newer file of this version failed "
                        "while this load keeps serving.")


class ModelSummary(BaseModel):
    """What a client needs to call a model."""

    name: str
    version: str = Field(description="The default version (unversioned requests without "
                         "weights).")
    versions: list[VersionState] = Field(default_factory=list,
                                         description="Every served version, oldest first.")
    default_version: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict, description="alias -> version.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="version -> traffic weight of unversioned "
        "requests (empty: the default version takes them all).")
    input_shape: list[int]
    labels: list[str]
    output: str = Field(description='The network\'s head: "softmax" or "log_softmax".')
    description: str | None = None


class ModelList(BaseModel):
    """The loaded models and the default one."""

    models: list[ModelSummary]
    default: str | None
    routing_error: str | None = Field(None, description="Why the routing file was refused "
                                      "(the last good routing stays in force).")


class ModelDetail(ModelSummary):
    """A model's full metadata, as stored in its artifact."""

    model_config = ConfigDict(extra="allow")

    n_classes: int
    default: bool = Field(description="Whether POST /predict without a model uses this one.")
    dataset: Any = None
    metrics: Any = None
    created: Any = None


class ErrorMessage(BaseModel):
    """An error of the native API."""

    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorMessage, "description": "The body is not valid JSON."},
    401: {"model": ErrorMessage, "description": "NNSERVE_API_KEY is set and the key is "
          "missing or wrong."},
    404: {"model": ErrorMessage, "description": "No loaded model has this name."},
    413: {"model": ErrorMessage, "description": "The body is larger than "
          "NNSERVE_MAX_BODY_BYTES."},
    415: {"model": ErrorMessage, "description": "The body is not sent as JSON."},
    422: {"model": ErrorMessage, "description": "The body is JSON but not a valid request; "
          "the message names the problem and the sample index."},
    503: {"model": ErrorMessage, "description": "No model is loaded."},
}

_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": PredictRequest.model_json_schema(),
            "examples": {
                "flat": {"summary": "One digit as 64 pixels, default model (digits-mlp)",
                         "value": {"inputs": [DIGIT_ZERO_FLAT]}},
                "nested": {"summary": "The same digit as 8x8 pixels, with the 3 most "
                           "probable classes",
                           "value": {"inputs": [DIGIT_ZERO], "model": "digits-cnn",
                                     "top_k": 3}},
            },
        }
    },
}

_PREDICT_EXAMPLE = {
    "model": "digits-mlp",
    "version": "1",
    "labels": [str(digit) for digit in range(10)],
    "predictions": [
        {
            "label": "0",
            "class_index": 0,
            "probabilities": [0.99, 0.0, 0.0, 0.0, 0.001, 0.002, 0.003, 0.0, 0.004, 0.0],
            "top_k": [
                {"label": "0", "probability": 0.99},
                {"label": "8", "probability": 0.004},
                {"label": "6", "probability": 0.003},
            ],
        }
    ],
}


# The one table from the dataplane's errors to this protocol's statuses.
STATUS: dict[type[errors.ServingError], int] = {
    errors.MalformedRequestError: 400,
    errors.UnauthorizedError: 401,
    errors.ForbiddenError: 403,
    errors.ModelNotFoundError: 404,
    errors.PayloadTooLargeError: 413,
    errors.UnsupportedMediaTypeError: 415,
    errors.InvalidInputError: 422,
    errors.InferenceError: 422,
    errors.NotReadyError: 503,
}


class NativeRoute(ProtocolRoute):
    """A route of the native API: errors as ``{"detail": ...}`` with :data:`STATUS`."""

    @staticmethod
    def error_response(error: errors.ServingError) -> Response:
        return Response(orjson.dumps({"detail": error.message}), status_code=STATUS[type(error)],
                        headers=error.headers, media_type="application/json")


def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


def _readable(exc: ValidationError, most: int = 3) -> str:
    """Return pydantic's first errors as 'where: what; ...', counting the others."""
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors[:most]:
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                        for part in error["loc"]).lstrip(".")
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    message = "; ".join(parts)
    if len(errors) > most:
        message += f" (and {len(errors) - most} more)"
    return message


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # curl -d without -H, many scripts: try to read it as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def parse_body(body: bytes, content_type: str | None,
               schema: type[BaseModel] = PredictRequest) -> Any:
    """Read a JSON body as ``schema`` (a pydantic model), or raise the protocol's refusal."""
    if not _is_json(content_type):
        raise errors.UnsupportedMediaTypeError(
            f"send the body as JSON (Content-Type: application/json), not {content_type!r}")
    try:
        # orjson refuses NaN/Infinity literals, numbers that overflow to infinity (1e309)
        # and nesting deeper than 1024, which Python's json module would all accept.
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if b"NaN" in body or b"Infinity" in body:
            hint = " (NaN and Infinity are not JSON numbers: send finite numbers)"
        raise errors.MalformedRequestError(f"the body is not valid JSON: {exc}{hint}") from None
    if not isinstance(payload, dict):
        raise errors.InvalidInputError("the body must be a JSON object with an 'inputs' list")
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise errors.InvalidInputError(_readable(exc)) from None


def _answer(model: ServedModel, probs: np.ndarray, top_k: int | None) -> Response:
    """Serialise the predictions with orjson (float32 numbers in their shortest form)."""
    labels = model.labels
    best = probs.argmax(axis=1)
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k] if top_k else None
    predictions = []
    for index, row in enumerate(probs):
        prediction: dict[str, Any] = {
            "label": labels[best[index]],
            "class_index": int(best[index]),
            "probabilities": row,
        }
        if ranked is not None:
            prediction["top_k"] = [{"label": labels[j], "probability": row[j]}
                                   for j in ranked[index]]
        predictions.append(prediction)
    content = {"model": model.name, "version": model.version, "labels": labels,
               "predictions": predictions}
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json", headers={VERSION_HEADER: model.version})


def _decode(body: bytes, content_type: str | None, path_name: str | None,
            path_version: str | None, routing_key: str | None,
            dataplane: DataPlane) -> tuple[ServedModel, np.ndarray, int | None]:
    """Parse and check a predict body: its model, its batch as an array, its top_k."""
    payload = parse_body(body, content_type)
    model = model_of(payload, path_name, dataplane, path_version, routing_key)
    if payload.top_k is not None and payload.top_k > model.n_classes:
        raise errors.InvalidInputError(
            f"top_k must be between 1 and {model.n_classes}, the number of classes of "
            f"{model.name!r}; got {payload.top_k}")
    return model, batch_of(payload.inputs, body, model, dataplane), payload.top_k


def model_of(payload: Any, path_name: str | None, dataplane: DataPlane,
             path_version: str | None = None, routing_key: str | None = None) -> ServedModel:
    """Return the model a parsed body (its ``model``) and the path together choose.

    ``path_version`` is a version or alias from the path; ``routing_key`` the client's
    routing-key header, which keeps an unversioned request on one version of a split.
    """
    if path_name is not None and payload.model is not None and payload.model != path_name:
        raise errors.InvalidInputError(f"the body names model {payload.model!r} but the path "
                                       f"names {path_name!r}")
    return dataplane.model(path_name or payload.model, path_version, routing_key)


def batch_of(inputs: Any, body: bytes, model: ServedModel, dataplane: DataPlane) -> np.ndarray:
    """Return the decoded JSON ``inputs`` of ``body`` as a numeric batch for ``model``."""
    # JSON booleans are the only bare tokens spelled true/false: without them in the raw
    # bytes, none can hide among the numbers, and numpy may convert the batch directly.
    may_hold_booleans = b"true" in body or b"false" in body
    return batch_from_json(inputs, model, dataplane.max_batch,
                           may_hold_booleans=may_hold_booleans)


async def _predict(request: Request, path_name: str | None,
                   path_version: str | None = None) -> Response:
    dataplane = _dataplane(request)
    content_type, routing_key = header_values(request, "content-type", ROUTING_HEADER)
    model, batch, top_k = await dataplane.decode(await request.body(), _decode, content_type,
                                                 path_name, path_version, routing_key,
                                                 dataplane)
    probs = await dataplane.infer(model, batch)
    return dataplane.encode(_answer, model, probs, top_k)


_PREDICT_DOC = dict(
    response_model=PredictResponse,
    responses={**ERRORS, 200: {"content": {"application/json": {"example": _PREDICT_EXAMPLE}}}},
    openapi_extra={"requestBody": _PREDICT_BODY, "security": [{security.SCHEME: []}]},
)


async def predict(request: Request) -> Response:
    """Return class probabilities for every sample of ``inputs``.

    A sample is nested lists of numbers in the model's `input_shape` (or a flat list of the
    same size). Probabilities of a LogSoftmax model are the exponential of its output; every
    row sums to 1; `label` is the most probable class.
    """
    return await _predict(request, None)


async def predict_with(request: Request, name: ModelName) -> Response:
    """Like POST /predict, with the model named in the path.

    The version is the routing file's pick (sticky for an `X-Routing-Key`), else the
    model's default version.
    """
    return await _predict(request, name)


async def predict_version(request: Request, name: ModelName, version: ModelVersion) -> Response:
    """Like POST /models/{name}/predict, with the version (or an alias) named in the path."""
    return await _predict(request, name, version)


def _summary(model: ServedModel, dataplane: DataPlane) -> dict[str, Any]:
    snapshot = dataplane.snapshot
    routing = snapshot.routing.get(model.name)
    states = {entry.version: entry for entry in snapshot.entries if entry.name == model.name}
    return {
        "name": model.name,
        "version": model.version,
        "input_shape": list(model.input_shape),
        "labels": list(model.labels),
        "output": model.output,
        "description": model.metadata.get("description"),
        "versions": [{"version": version, "state": states[version].state if version in states
                      else "READY", "reason": states[version].reason if version in states
                      else ""} for version in snapshot.versions.get(model.name, ())],
        "default_version": routing.default if routing else model.version,
        "aliases": dict(routing.aliases) if routing else {},
        "weights": dict(routing.weights) if routing else {},
    }


async def list_models(request: Request) -> dict[str, Any]:
    """Return every loaded model's name, version, input shape and labels, and the default."""
    dataplane = _dataplane(request)
    return {"models": [_summary(model, dataplane) for model in dataplane.models()],
            "default": dataplane.default_model,
            "routing_error": dataplane.snapshot.routing_error}


async def describe_model(request: Request, name: ModelName) -> dict[str, Any]:
    """Return a model's metadata: shape, labels, head, dataset, metrics, creation date."""
    dataplane = _dataplane(request)
    dataplane.model(name)  # a 404 naming the loaded models when there is none
    model = dataplane.registry.get(name)  # its default version, not a weighted pick
    return {**model.metadata, **_summary(model, dataplane), "n_classes": model.n_classes,
            "default": model.name == dataplane.default_model}


def add_routes(app: FastAPI, guards: Sequence[params.Depends] = ()) -> None:
    """Add the native routes to ``app``, predict first (the router tries routes in order).

    ``guards`` are the dependencies of the routes that run a model (the API key check).
    Added to the application's own router rather than through an included APIRouter:
    FastAPI resolves an included router's routes through one more layer per request.
    """
    add = app.router.add_api_route
    add("/predict", predict, methods=["POST"], tags=TAGS, route_class_override=NativeRoute,
        summary="Classify samples with the default model or the one named in the body",
        dependencies=list(guards), **_PREDICT_DOC)
    add("/models/{name}/predict", predict_with, methods=["POST"], tags=TAGS,
        route_class_override=NativeRoute, summary="Classify samples with the named model",
        dependencies=list(guards), **_PREDICT_DOC)
    add("/models/{name}/versions/{version}/predict", predict_version, methods=["POST"],
        tags=TAGS, route_class_override=NativeRoute,
        summary="Classify samples with one version (or alias) of the named model",
        dependencies=list(guards), **_PREDICT_DOC)
    add("/models", list_models, methods=["GET"], tags=TAGS, route_class_override=NativeRoute,
        response_model=ModelList, summary="List the loaded models")
    add("/models/{name}", describe_model, methods=["GET"], tags=TAGS,
        route_class_override=NativeRoute, response_model=ModelDetail,
        summary="Describe one model", responses={404: ERRORS[404]})


__all__ = ["STATUS", "NativeRoute", "PredictRequest", "PredictResponse", "add_routes"]
