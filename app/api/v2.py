"""Open Inference Protocol (V2, as KServe and Triton speak it over HTTP/REST).

This module only translates HTTP: the pure functions below split the body, decode the input
tensor (JSON data, flat or nested, or the binary tensor extension) and encode the outputs;
the routes look the model up, call ``check_batch`` and ``predict_proba`` and answer.
Every error is ``{"error": "message"}`` with a 4xx status, the form ``tritonclient`` reads.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.api.security import require_api_key
from app.inference import InferenceError, predict_proba
from app.registry import ModelNotFoundError, ServedModel
from app.validation import InputError, check_batch

router = APIRouter(tags=["Open Inference Protocol (V2)"])

SERVER_NAME = "nnserve"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "nnlib"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"

# Wire datatypes we accept, as little-endian numpy dtypes (the binary extension is
# little-endian whatever the host); every one is cast to float32 before inference.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
        "INT8": "i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "UINT8": "u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
    }.items()
}
# Bounds the recursion that walks nested JSON data; the models here take rank 2 or 3.
MAX_RANK = 8
# int() refuses strings over 4300 digits with a ValueError; any real length has < 20.
_MAX_LENGTH_DIGITS = 19

_JSON_TYPE_NAMES = {
    bool: "a boolean",
    str: "a string",
    type(None): "null",
    dict: "an object",
    list: "an array",
    float: "a floating-point number",
    int: "an integer",
}


class V2Error(Exception):
    """A request the protocol refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    """One output the client asked for and whether it wants it as binary data."""

    name: str
    binary: bool


def error_response(message: str, status: int) -> JSONResponse:
    """Answer a V2 error in the protocol's ``{"error": ...}`` form."""
    return JSONResponse({"error": message}, status_code=status)


# --- decoding -----------------------------------------------------------------------------


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo the gzip or deflate that tritonclient can apply to a request body.

    The inflated size is capped at ``limit`` (the body limit) while inflating, so a small
    compressed body cannot expand into a large allocation.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    # wbits: 16 + 15 reads the gzip container, 15 the zlib one that "deflate" means in HTTP.
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise V2Error(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)", 415)
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise V2Error(f"the {encoding} body does not inflate: {exc}") from None
    if len(inflated) > limit:
        raise V2Error(f"the {encoding} body inflates to more than {limit} bytes", 413)
    if not inflater.eof or inflater.unused_data:
        raise V2Error(f"the {encoding} body is truncated or has bytes after its end")
    return inflated


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a request body into its JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    # isdigit() alone accepts non-ASCII digits such as "²" that int() then refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_LENGTH_DIGITS:
        raise V2Error(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    length = int(text)
    if length > len(body):
        raise V2Error(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


def parse_header(raw: bytes) -> dict[str, Any]:
    """Parse the JSON inference request; orjson refuses NaN, Infinity and deep nesting."""
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise V2Error(f"malformed JSON in the inference request: {exc}") from None
    if not isinstance(header, dict):
        raise V2Error("the inference request must be a JSON object")
    return header


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Return the ``parameters`` object of a request part (empty when absent)."""
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2Error(f"{where}: 'parameters' must be an object")
    return parameters


def _shape(value: Any, where: str) -> list[int]:
    """Check a declared tensor shape: a short list of non-negative integers."""
    if not isinstance(value, list) or not all(type(dim) is int and dim >= 0 for dim in value):
        raise V2Error(f"{where}: 'shape' must be an array of non-negative integers, got {value!r}")
    if len(value) > MAX_RANK:
        raise V2Error(f"{where}: shape {value} has more than {MAX_RANK} dimensions")
    return value


def _describe(value: Any) -> str:
    """Name a JSON value's type for an error message."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _flatten(data: Any, shape: list[int], integers: bool, where: str) -> list[int | float]:
    """Flatten JSON tensor data, flat or nested exactly as ``shape``, checking every element.

    Nested data may stop early: rows of flattened samples (``[n][64]`` for an ``[n, 8, 8]``
    tensor) are accepted, ragged rows are not.
    """
    if not isinstance(data, list):
        raise V2Error(f"{where}: 'data' must be an array, got {_describe(data)}")
    depth, probe = 1, data
    while probe and isinstance(probe[0], list) and depth <= len(shape):
        probe, depth = probe[0], depth + 1
    if depth > max(len(shape), 1):
        raise V2Error(f"{where}: 'data' is nested deeper than shape {shape}")
    # The nesting the data must have: the declared dims, the trailing ones merged into one.
    expected = [*shape[: depth - 1], math.prod(shape[depth - 1 :])]
    per_sample = math.prod(shape[1:]) if shape else 1
    allowed = {int} if integers else {int, float}
    flat: list[int | float] = []

    def bad_element(path: tuple[int, ...], value: Any) -> V2Error:
        """Name the element at ``path`` and its sample in the error."""
        sample = path[0] if depth > 1 else path[0] // max(per_sample, 1)
        index = "".join(f"[{i}]" for i in path)
        wanted = "an integer" if integers else "a number"
        return V2Error(
            f"{where}, sample {sample}: data{index} is {_describe(value)}; expected {wanted}"
        )

    def walk(node: Any, level: int, path: tuple[int, ...]) -> None:
        """Check ``node`` against ``expected[level:]`` and collect its numbers."""
        if not isinstance(node, list):
            raise bad_element(path, node)
        if len(node) != expected[level]:
            index = "".join(f"[{i}]" for i in path)
            sample, there = (f", sample {path[0]}", " there") if path else ("", "")
            raise V2Error(
                f"{where}{sample}: data{index} has {len(node)} elements but shape {shape} "
                f"needs {expected[level]}{there}"
            )
        if level + 1 < len(expected):
            for i, child in enumerate(node):
                walk(child, level + 1, (*path, i))
            return
        # Exact types, not isinstance: bool is a subclass of int. set(map(type)) runs at C
        # speed; the slow loop only looks for the culprit.
        if not set(map(type, node)) <= allowed:
            index, value = next((i, v) for i, v in enumerate(node) if type(v) not in allowed)
            raise bad_element((*path, index), value)
        flat.extend(node)

    walk(data, 0, ())
    return flat


def _reshape(values: np.ndarray, shape: list[int], where: str) -> np.ndarray:
    """Give decoded values their declared shape; numpy refuses some empty giant shapes."""
    try:
        return values.reshape(shape)
    except ValueError:  # e.g. [0, 2**63]: zero elements, but a dimension numpy cannot hold
        raise V2Error(f"{where}: shape {shape} is too large") from None


def _from_json(data: Any, shape: list[int], dtype: np.dtype, where: str) -> np.ndarray:
    """Decode JSON tensor data into an array of the declared shape (float64 or integers)."""
    integers = dtype.kind in "iu"
    flat = _flatten(data, shape, integers, where)
    if integers:
        try:
            return _reshape(np.array(flat, dtype=dtype), shape, where)
        except OverflowError:
            info = np.iinfo(dtype)
            raise V2Error(
                f"{where}: a value is outside the range of {dtype.name} [{info.min}, {info.max}]"
            ) from None
    array = _reshape(np.array(flat, dtype=np.float64), shape, where)
    # orjson already refused NaN and Infinity; a narrow datatype has a narrower range.
    limit = np.finfo(dtype).max
    if array.size and np.abs(array).max() > limit:
        raise V2Error(f"{where}: a value is outside the range of the datatype ({limit:.6g})")
    return array


def decode_inputs(
    header: dict[str, Any],
    binary: bytes,
    check_tensor: Callable[[str, list[int]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Decode every input tensor of a request, JSON or binary, into arrays of their shapes.

    ``check_tensor(name, shape)`` may refuse a tensor before its data is read, so a shape
    the model cannot take never costs a decode.
    """
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error("'inputs' must be a non-empty array of tensors")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for position, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise V2Error(f"inputs[{position}] must be an object")
        name = spec.get("name")
        if not isinstance(name, str):
            raise V2Error(f"inputs[{position}]: 'name' must be a string")
        where = f"input {name!r}"
        if name in arrays:
            raise V2Error(f"{where} is given twice")
        datatype = spec.get("datatype")
        dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise V2Error(
                f"{where}: datatype {datatype!r} is not supported; use one of {', '.join(DTYPES)}"
            )
        shape = _shape(spec.get("shape"), where)
        if check_tensor is not None:
            check_tensor(name, shape)
        parameters = _parameters(spec, where)
        if "shared_memory_region" in parameters:
            raise V2Error(f"{where}: the shared-memory extension is not supported")
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise V2Error(f"{where}: needs 'data' or the 'binary_data_size' parameter")
            arrays[name] = _from_json(spec["data"], shape, dtype, where)
            continue
        if "data" in spec:
            raise V2Error(f"{where}: has both 'data' and 'binary_data_size'")
        expected = math.prod(shape) * dtype.itemsize
        if type(size) is not int or size != expected:
            raise V2Error(
                f"{where}: binary_data_size is {size!r} but shape {shape} of {datatype} "
                f"takes {expected} bytes"
            )
        if offset + size > len(binary):
            raise V2Error(
                f"{where}: needs {size} bytes of binary data but only "
                f"{len(binary) - offset} are left after the JSON header"
            )
        values = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
        arrays[name] = _reshape(values, shape, where)
        offset += size
    if offset != len(binary):
        raise V2Error(
            f"the body has {len(binary) - offset} bytes after the binary data the inputs declare"
        )
    return arrays


def requested_outputs(header: dict[str, Any], known: Sequence[str]) -> list[RequestedOutput]:
    """Read the ``outputs`` a request asks for (all ``known`` ones when it names none)."""
    default = _parameters(header, "the request").get("binary_data_output", False)
    if type(default) is not bool:
        raise V2Error("the 'binary_data_output' parameter must be a boolean")
    outputs = header.get("outputs")
    if not outputs:
        if outputs is not None and not isinstance(outputs, list):
            raise V2Error("'outputs' must be an array")
        return [RequestedOutput(name, default) for name in known]
    if not isinstance(outputs, list):
        raise V2Error("'outputs' must be an array")
    requested: list[RequestedOutput] = []
    for position, spec in enumerate(outputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise V2Error(f"outputs[{position}] must be an object with a string 'name'")
        if name not in known:
            raise V2Error(f"unknown output {name!r}; this model has {', '.join(known)}")
        if any(output.name == name for output in requested):
            raise V2Error(f"output {name!r} is requested twice")
        parameters = _parameters(spec, f"output {name!r}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in parameters:
                raise V2Error(f"output {name!r}: parameter {unsupported!r} is not supported")
        binary = parameters.get("binary_data", default)
        if type(binary) is not bool:
            raise V2Error(f"output {name!r}: 'binary_data' must be a boolean")
        requested.append(RequestedOutput(name, binary))
    return requested


# --- encoding -----------------------------------------------------------------------------


def encode_response(
    model: ServedModel,
    request_id: str | None,
    outputs: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """Encode an inference response; returns the body and the JSON header length if binary."""
    response: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        response["id"] = request_id
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output, array in outputs:
        # Little-endian float32 is the wire format of FP32, whatever the host's byte order.
        array = np.ascontiguousarray(array, dtype="<f4")
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": "FP32",
            "shape": list(array.shape),
        }
        if output.binary:
            chunks.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": array.nbytes}
        else:
            # orjson writes float32 with its shortest repr, which reads back bit-exact.
            tensor["data"] = array.astype(np.float32).ravel()
        tensors.append(tensor)
    response["outputs"] = tensors
    body = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return body, None
    return body + b"".join(chunks), len(body)


# --- routes -------------------------------------------------------------------------------

# The OpenAPI description of the infer body, read by hand (binary bodies are not JSON).
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "examples": [INPUT_NAME]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DTYPES)},
        "data": {"type": "array", "description": "Row-major values, flat or nested."},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}
_INFER_BODY = {
    "required": True,
    "description": f"JSON, or with {HEADER_LENGTH} set, that many bytes of JSON followed "
    "by the binary tensor data of the inputs that give binary_data_size.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_output": {"type": "boolean"}},
                    },
                    "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": {"type": "string", "examples": [OUTPUT_NAME]},
                                "parameters": {
                                    "type": "object",
                                    "properties": {"binary_data": {"type": "boolean"}},
                                },
                            },
                        },
                    },
                },
            },
            "example": {
                "id": "42",
                "inputs": [
                    {"name": INPUT_NAME, "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}
                ],
            },
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ErrorBody(BaseModel):
    """Every V2 error: the message tritonclient shows."""

    error: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document the V2 error answers of a route."""
    return {status: {"model": ErrorBody} for status in statuses}


def _get_model(request: Request, name: str, version: str | None) -> ServedModel:
    """Look a model (and optionally its version) up in the loaded registry."""
    try:
        model = request.app.state.registry.get(name)
    except ModelNotFoundError as exc:
        raise V2Error(str(exc), 404) from None
    if version is not None and version != str(model.version):
        raise V2Error(f"model {name!r} has no version {version!r} (serving {model.version})", 404)
    return model


def check_input(name: str, shape: Sequence[int], model: ServedModel, max_batch: int) -> None:
    """Refuse an input the model does not take: its name, sample shape or batch size.

    The sample shape must be ``input_shape`` or its flat form; the batch at most ``max_batch``.
    """
    if name != INPUT_NAME:
        raise V2Error(f"model {model.name!r} has no input {name!r}; its input is {INPUT_NAME!r}")
    sample = tuple(shape[1:])
    if len(shape) < 2 or (sample != model.input_shape and sample != (model.input_size,)):
        forms = [[-1, *model.input_shape]]
        if len(model.input_shape) > 1:
            forms.append([-1, model.input_size])
        raise V2Error(
            f"input {INPUT_NAME!r} has shape {list(shape)}; model {model.name!r} takes "
            + " or ".join(map(str, forms))
            + " (-1 is the batch size)"
        )
    if shape[0] > max_batch:
        raise V2Error(
            f"input {INPUT_NAME!r} has a batch of {shape[0]} samples; at most {max_batch} are "
            "accepted (NNSERVE_MAX_BATCH)"
        )


def _tensor_metadata(name: str, shape: Sequence[int]) -> dict[str, Any]:
    """Describe one tensor with -1 for its batch dimension."""
    return {"name": name, "datatype": "FP32", "shape": [-1, *shape]}


def _not_ready_reason(request: Request) -> str | None:
    """Say why the server is not ready, or None when it is (the same rule as /ready)."""
    if request.app.state.draining:
        return "server is shutting down"
    if not request.app.state.registry.names():
        return "no model is loaded"
    return None


@router.get("/v2")
async def server_metadata(request: Request) -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions supported."""
    # The app's version is the package's, the one the OpenAPI document shows too.
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": list(EXTENSIONS)}


@router.get("/v2/health/live")
async def server_live() -> dict[str, bool]:
    """Liveness: 200 while the process answers."""
    return {"live": True}


@router.get("/v2/health/ready", response_model=None, responses=_errors(503))
async def server_ready(request: Request) -> dict[str, bool] | JSONResponse:
    """Readiness: 200 when models are loaded and the server is not draining, else 503."""
    reason = _not_ready_reason(request)
    if reason is not None:
        return error_response(f"not ready: {reason}", 503)
    return {"ready": True}


def _model_metadata(request: Request, name: str, version: str | None) -> dict | JSONResponse:
    """Describe a model's tensors, or answer 404."""
    try:
        model = _get_model(request, name, version)
    except V2Error as exc:
        return error_response(exc.message, exc.status)
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(INPUT_NAME, model.input_shape)],
        "outputs": [_tensor_metadata(OUTPUT_NAME, (model.n_classes,))],
    }


def _model_ready(request: Request, name: str, version: str | None) -> dict | JSONResponse:
    """Answer 200 for a loaded model of a ready server, 503 while not ready, 404 if unknown."""
    try:
        model = _get_model(request, name, version)
    except V2Error as exc:
        return error_response(exc.message, exc.status)
    reason = _not_ready_reason(request)
    if reason is not None:
        return error_response(f"model {name!r} is not ready: {reason}", 503)
    return {"name": model.name, "ready": True}


# Each route with and without /versions/{v}: separate functions, so that `version` is only
# ever a path parameter (a shared handler would also take it from the query string).


@router.get("/v2/models/{name}", response_model=None, responses=_errors(404))
async def model_metadata(request: Request, name: str) -> dict | JSONResponse:
    """Model metadata: versions, platform, and the input and output tensors."""
    return _model_metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}", response_model=None, responses=_errors(404))
async def model_version_metadata(request: Request, name: str, version: str) -> dict | JSONResponse:
    """Model metadata, if ``version`` is the version served."""
    return _model_metadata(request, name, version)


@router.get("/v2/models/{name}/ready", response_model=None, responses=_errors(404, 503))
async def model_ready(request: Request, name: str) -> dict | JSONResponse:
    """Model readiness: 200 when the model is loaded and the server is not draining."""
    return _model_ready(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready", response_model=None, responses=_errors(404, 503)
)
async def model_version_ready(request: Request, name: str, version: str) -> dict | JSONResponse:
    """Model readiness, if ``version`` is the version served."""
    return _model_ready(request, name, version)


_INFER_ROUTE = {
    "response_model": None,
    "dependencies": [Depends(require_api_key)],
    "openapi_extra": {"requestBody": _INFER_BODY},
    "responses": _errors(400, 401, 404, 413, 415, 422),
}


@router.post("/v2/models/{name}/infer", **_INFER_ROUTE)
async def infer(request: Request, name: str) -> Response:
    """Run the model on one input tensor; answer probabilities as JSON or binary data."""
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", **_INFER_ROUTE)
async def infer_version(request: Request, name: str, version: str) -> Response:
    """Run inference, if ``version`` is the version served."""
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    """Decode, check, run and encode one inference; every refusal is a 4xx ``{"error"}``."""
    try:
        model = _get_model(request, name, version)
        body = decompress(
            await request.body(),
            request.headers.get("content-encoding"),
            request.app.state.settings.max_body_bytes,
        )
        raw, binary = split_body(body, request.headers.get(HEADER_LENGTH))
        header = parse_header(raw)
        request_id = header.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise V2Error("'id' must be a string")
        max_batch = request.app.state.settings.max_batch
        outputs = requested_outputs(header, [OUTPUT_NAME])
        arrays = decode_inputs(
            header,
            binary,
            lambda tensor_name, shape: check_input(tensor_name, shape, model, max_batch),
        )
        # Any other name was refused, and a second "input" too: this is the only tensor.
        tensor = arrays[INPUT_NAME]
        if tensor.dtype == np.float16:
            # Exact in float32; check_batch compares against float32's max, which overflows
            # (with a RuntimeWarning) when cast to float16.
            tensor = tensor.astype(np.float32)
        batch = check_batch(tensor, model, max_batch)
        probabilities = await predict_proba(model, batch)
    except V2Error as exc:
        return error_response(exc.message, exc.status)
    except InputError as exc:
        return error_response(f"input {INPUT_NAME!r}: {exc}", 400)
    except InferenceError as exc:
        return error_response(str(exc), 422)
    body, header_length = encode_response(
        model, request_id, [(output, probabilities) for output in outputs]
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )
