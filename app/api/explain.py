"""POST /explain and /models/{name}/explain: attributions of a class probability to the inputs.

A native-API route: the body is the predict body (decoded by the same functions of
:mod:`app.api.native`, so it refuses what predict refuses, with the same words and the same
:data:`~app.api.native.STATUS` table) plus ``target``, ``method``, ``steps`` and
``baseline``. The dataplane checks and computes (:meth:`app.dataplane.DataPlane.explain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response, params
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app import errors, explaining
from app.api import native, security
from app.api.routing import ROUTING_HEADER, VERSION_HEADER, header_values
from app.dataplane import DataPlane
from app.registry import ServedModel

TAGS = ["explain"]


class ExplainRequest(BaseModel):
    """Samples to explain, and which class probability to attribute to their inputs."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"inputs": [native.DIGIT_ZERO_FLAT]},
                {"inputs": [native.DIGIT_ZERO], "model": "digits-cnn", "target": "0",
                 "method": "integrated_gradients", "steps": 128},
                {"inputs": [native.DIGIT_ZERO_FLAT], "method": "gradient", "target": 6},
            ]
        },
    )

    inputs: Annotated[
        list[Any],
        WithJsonSchema({"type": "array", "minItems": 1, "items": native._NESTED_NUMBERS}),
    ] = Field(description="The batch, as for predict: one entry per sample.")
    model: str | None = Field(None, description="Model name, as for predict.")
    target: int | str | None = Field(
        None, description="The class to explain: a label (string) or a class index "
        "(integer); each sample's most probable class when absent.")
    method: str = Field(
        explaining.DEFAULT_METHOD,
        description='"gradient" (d p_target / d input at the raw input) or '
        '"integrated_gradients" (Sundararajan et al. 2017, trapezoidal rule).')
    steps: int | None = Field(
        None, description=f"Integrated gradients only: intervals of the rule, 1.."
        f"{explaining.MAX_STEPS} (default {explaining.DEFAULT_STEPS}); samples x steps is "
        "at most NNSERVE_EXPLAIN_MAX_WORK.")
    baseline: Annotated[list[Any] | None, WithJsonSchema(native._NESTED_NUMBERS)] = Field(
        None, description="Integrated gradients only: the reference sample, in the "
        "model's input_shape (or flat); zeros when absent.")


class SampleExplanation(BaseModel):
    """The explanation of one sample."""

    label: str = Field(description="Label of the explained (target) class.")
    class_index: int = Field(description="Index of that class in `labels`.")
    probability: float = Field(description="Its probability for this sample.")
    probabilities: list[float] = Field(description="One probability per label.")
    attributions: list[Any] = Field(
        description="One number per input value, in the model's input_shape: the gradient of "
        "the probability, or the integrated gradients (which sum to probability - "
        "baseline_probability).")
    baseline_probability: float | None = Field(
        None, description="Integrated gradients: the target's probability at the baseline.")


class ExplainResponse(BaseModel):
    """Explanations of every sample, in request order."""

    model: str
    version: str
    labels: list[str]
    method: str
    steps: int | None
    explanations: list[SampleExplanation]


def _decode(body: bytes, content_type: str | None, path_name: str | None,
            path_version: str | None, routing_key: str | None,
            dataplane: DataPlane) -> tuple[ServedModel, np.ndarray, ExplainRequest,
                                           np.ndarray | None]:
    payload = native.parse_body(body, content_type, ExplainRequest)
    model = native.model_of(payload, path_name, dataplane, path_version, routing_key)
    batch = native.batch_of(payload.inputs, body, model, dataplane)
    baseline = None
    if payload.baseline is not None:
        try:
            baseline = native.batch_of([payload.baseline], body, model, dataplane)[0]
        except errors.InvalidInputError as exc:
            raise errors.InvalidInputError(exc.message.replace("sample 0", "baseline", 1)
                                           ) from None
    return model, batch, payload, baseline


def _answer(model: ServedModel, explanation: explaining.Explanation) -> Response:
    labels, probs = model.labels, explanation.probabilities
    items = []
    for index, target in enumerate(explanation.targets):
        item: dict[str, Any] = {
            "label": labels[target],
            "class_index": int(target),
            "probability": probs[index, target],
            "probabilities": probs[index],
            "attributions": explanation.attributions[index],
        }
        if explanation.baseline_probabilities is not None:
            item["baseline_probability"] = float(explanation.baseline_probabilities[index])
        items.append(item)
    content = {"model": model.name, "version": model.version, "labels": labels,
               "method": explanation.method, "steps": explanation.steps,
               "explanations": items}
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json",
                    headers={VERSION_HEADER: model.version})


async def _explain(request: Request, path_name: str | None,
                   path_version: str | None = None) -> Response:
    dataplane: DataPlane = request.app.state.dataplane
    content_type, routing_key = header_values(request, "content-type", ROUTING_HEADER)
    model, batch, payload, baseline = await dataplane.decode(
        await request.body(), _decode, content_type, path_name, path_version, routing_key,
        dataplane)
    explanation = await dataplane.explain(model, batch, method=payload.method,
                                          target=payload.target, steps=payload.steps,
                                          baseline=baseline)
    return dataplane.encode(_answer, model, explanation)


async def explain(request: Request) -> Response:
    """Attribute a class probability of every sample to its input values.

    `gradient`: the derivative of the target probability with respect to the raw input,
    through the network's own backward pass. `integrated_gradients`: the gradient
    integrated along the straight path from the baseline, times (input - baseline); a
    sample's attributions sum to its probability minus the baseline's.
    """
    return await _explain(request, None)


async def explain_with(request: Request, name: native.ModelName) -> Response:
    """Like POST /explain, with the model named in the path."""
    return await _explain(request, name)


async def explain_version(request: Request, name: native.ModelName,
                          version: native.ModelVersion) -> Response:
    """Like POST /models/{name}/explain, with the version (or an alias) named in the path."""
    return await _explain(request, name, version)


_BODY = {"required": True,
         "content": {"application/json": {"schema": ExplainRequest.model_json_schema()}}}
_DOC = dict(
    response_model=ExplainResponse,
    responses={**native.ERRORS, 422: {
        "model": native.ErrorMessage,
        "description": "Anything predict refuses, and an unknown method or target label, a "
        "target index out of range, steps out of range, a baseline of the wrong shape, "
        "more work than NNSERVE_EXPLAIN_MAX_WORK."}},
    openapi_extra={"requestBody": _BODY, "security": [{security.SCHEME: []}]},
)


def add_routes(app: FastAPI, guards: Sequence[params.Depends] = ()) -> None:
    """Add the explain routes, guarded like predict (the API key when one is set)."""
    add = app.router.add_api_route
    add("/explain", explain, methods=["POST"], tags=TAGS,
        route_class_override=native.NativeRoute, dependencies=list(guards),
        summary="Explain the default model's (or the body's model's) answer", **_DOC)
    add("/models/{name}/explain", explain_with, methods=["POST"], tags=TAGS,
        route_class_override=native.NativeRoute, dependencies=list(guards),
        summary="Explain the named model's answer", **_DOC)
    add("/models/{name}/versions/{version}/explain", explain_version, methods=["POST"],
        tags=TAGS, route_class_override=native.NativeRoute, dependencies=list(guards),
        summary="Explain one version's (or alias's) answer", **_DOC)


__all__ = ["ExplainRequest", "ExplainResponse", "add_routes"]
