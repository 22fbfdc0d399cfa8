"""The Open Inference Protocol's wire format: split, inflate and decode requests, encode answers.

Pure functions of bytes and parsed JSON, with no HTTP and no model lookups: the routes
(:mod:`app.api.v2.routes`) call them. Input tensors are JSON data (flat or nested) or the
``binary_tensor_data`` extension; every refusal is an :class:`~app.InvalidInputError`
(or, for framing, :class:`~app.MalformedRequestError`, an unsupported encoding or an
inflated body over the limit), which the routes answer as ``{"error": ...}``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

from app.errors import (
    InvalidInputError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

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


class RequestedOutput(NamedTuple):
    """One output the client asked for and whether it wants it as binary data."""

    name: str
    binary: bool


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
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"the {encoding} body does not inflate: {exc}") from None
    if len(inflated) > limit:
        raise PayloadTooLargeError(f"the {encoding} body inflates to more than {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise InvalidInputError(f"the {encoding} body is truncated or has bytes after its end")
    return inflated


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """Split a request body into its JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    text = header_length.strip()
    # isdigit() alone accepts non-ASCII digits such as "²" that int() then refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_LENGTH_DIGITS:
        raise InvalidInputError(
            f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    length = int(text)
    if length > len(body):
        raise InvalidInputError(
            f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    return body[:length], body[length:]


def parse_header(raw: bytes) -> dict[str, Any]:
    """Parse the JSON inference request; orjson refuses NaN, Infinity and deep nesting."""
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"malformed JSON in the inference request: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInputError("the inference request must be a JSON object")
    return header


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Return the ``parameters`` object of a request part (empty when absent)."""
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"{where}: 'parameters' must be an object")
    return parameters


def _shape(value: Any, where: str) -> list[int]:
    """Check a declared tensor shape: a short list of non-negative integers."""
    if not isinstance(value, list) or not all(type(dim) is int and dim >= 0 for dim in value):
        raise InvalidInputError(
            f"{where}: 'shape' must be an array of non-negative integers, got {value!r}")
    if len(value) > MAX_RANK:
        raise InvalidInputError(f"{where}: shape {value} has more than {MAX_RANK} dimensions")
    return value


_FP16_MAX = float(np.finfo(np.float16).max)
_INTEGER_TYPES = frozenset({int})
_NUMBER_TYPES = frozenset({int, float})


def _describe(value: Any) -> str:
    """Name a JSON value's type for an error message."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _flatten(data: Any, shape: list[int], integers: bool, where: str) -> list[int | float]:
    """Flatten JSON tensor data, flat or nested exactly as ``shape``, checking every element.

    Nested data may stop early: rows of flattened samples (``[n][64]`` for an ``[n, 8, 8]``
    tensor) are accepted, ragged rows are not.
    """
    if not isinstance(data, list):
        raise InvalidInputError(f"{where}: 'data' must be an array, got {_describe(data)}")
    allowed = _INTEGER_TYPES if integers else _NUMBER_TYPES
    # Flat data of the right length, as tritonclient sends it: one type check at C speed
    # (exact types, not isinstance: bool is a subclass of int). Anything else is walked.
    if (not data or type(data[0]) is not list) and len(data) == math.prod(shape) \
            and set(map(type, data)) <= allowed:
        return data
    depth, probe = 1, data
    while probe and isinstance(probe[0], list) and depth <= len(shape):
        probe, depth = probe[0], depth + 1
    if depth > max(len(shape), 1):
        raise InvalidInputError(f"{where}: 'data' is nested deeper than shape {shape}")
    # The nesting the data must have: the declared dims, the trailing ones merged into one.
    expected = [*shape[: depth - 1], math.prod(shape[depth - 1 :])]
    per_sample = math.prod(shape[1:]) if shape else 1
    flat: list[int | float] = []

    def bad_element(path: tuple[int, ...], value: Any) -> InvalidInputError:
        """Name the element at ``path`` and its sample in the error."""
        sample = path[0] if depth > 1 else path[0] // max(per_sample, 1)
        index = "".join(f"[{i}]" for i in path)
        wanted = "an integer" if integers else "a number"
        return InvalidInputError(
            f"{where}, sample {sample}: data{index} is {_describe(value)}; expected {wanted}"
        )

    def walk(node: Any, level: int, path: tuple[int, ...]) -> None:
        """Check ``node`` against ``expected[level:]`` and collect its numbers."""
        if not isinstance(node, list):
            raise bad_element(path, node)
        if len(node) != expected[level]:
            index = "".join(f"[{i}]" for i in path)
            sample, there = (f", sample {path[0]}", " there") if path else ("", "")
            raise InvalidInputError(
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
        raise InvalidInputError(f"{where}: shape {shape} is too large") from None


def _from_json(data: Any, shape: list[int], dtype: np.dtype, where: str) -> np.ndarray:
    """Decode JSON tensor data into an array of the declared shape (float64 or integers)."""
    integers = dtype.kind in "iu"
    flat = _flatten(data, shape, integers, where)
    if integers:
        try:
            return _reshape(np.array(flat, dtype=dtype), shape, where)
        except OverflowError:
            info = np.iinfo(dtype)
            raise InvalidInputError(
                f"{where}: a value is outside the range of {dtype.name} [{info.min}, {info.max}]"
            ) from None
    array = _reshape(np.array(flat, dtype=np.float64), shape, where)
    # orjson refused NaN, Infinity and numbers that overflow float64; the float32 range is
    # the dataplane's check, for every protocol. Only FP16 is narrower.
    if dtype.itemsize >= 4:
        return array
    limit = _FP16_MAX
    if array.size and max(array.max(), -array.min()) > limit:
        raise InvalidInputError(
            f"{where}: a value is outside the range of the datatype ({limit:.6g})")
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
        raise InvalidInputError("'inputs' must be a non-empty array of tensors")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for position, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise InvalidInputError(f"inputs[{position}] must be an object")
        name = spec.get("name")
        if not isinstance(name, str):
            raise InvalidInputError(f"inputs[{position}]: 'name' must be a string")
        where = f"input {name!r}"
        if name in arrays:
            raise InvalidInputError(f"{where} is given twice")
        datatype = spec.get("datatype")
        dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise InvalidInputError(
                f"{where}: datatype {datatype!r} is not supported; use one of {', '.join(DTYPES)}"
            )
        shape = _shape(spec.get("shape"), where)
        if check_tensor is not None:
            check_tensor(name, shape)
        parameters = _parameters(spec, where)
        if "shared_memory_region" in parameters:
            raise InvalidInputError(f"{where}: the shared-memory extension is not supported")
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise InvalidInputError(
                    f"{where}: needs 'data' or the 'binary_data_size' parameter")
            arrays[name] = _from_json(spec["data"], shape, dtype, where)
            continue
        if "data" in spec:
            raise InvalidInputError(f"{where}: has both 'data' and 'binary_data_size'")
        expected = math.prod(shape) * dtype.itemsize
        if type(size) is not int or size != expected:
            raise InvalidInputError(
                f"{where}: binary_data_size is {size!r} but shape {shape} of {datatype} "
                f"takes {expected} bytes"
            )
        if offset + size > len(binary):
            raise InvalidInputError(
                f"{where}: needs {size} bytes of binary data but only "
                f"{len(binary) - offset} are left after the JSON header"
            )
        values = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
        arrays[name] = _reshape(values, shape, where)
        offset += size
    if offset != len(binary):
        raise InvalidInputError(
            f"the body has {len(binary) - offset} bytes after the binary data the inputs declare"
        )
    return arrays


def requested_outputs(header: dict[str, Any], known: Sequence[str]) -> list[RequestedOutput]:
    """Read the ``outputs`` a request asks for (all ``known`` ones when it names none)."""
    default = _parameters(header, "the request").get("binary_data_output", False)
    if type(default) is not bool:
        raise InvalidInputError("the 'binary_data_output' parameter must be a boolean")
    outputs = header.get("outputs")
    if not outputs:
        if outputs is not None and not isinstance(outputs, list):
            raise InvalidInputError("'outputs' must be an array")
        return [RequestedOutput(name, default) for name in known]
    if not isinstance(outputs, list):
        raise InvalidInputError("'outputs' must be an array")
    requested: list[RequestedOutput] = []
    for position, spec in enumerate(outputs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise InvalidInputError(f"outputs[{position}] must be an object with a string 'name'")
        if name not in known:
            raise InvalidInputError(f"unknown output {name!r}; this model has {', '.join(known)}")
        if any(output.name == name for output in requested):
            raise InvalidInputError(f"output {name!r} is requested twice")
        parameters = _parameters(spec, f"output {name!r}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in parameters:
                raise InvalidInputError(
                    f"output {name!r}: parameter {unsupported!r} is not supported")
        binary = parameters.get("binary_data", default)
        if type(binary) is not bool:
            raise InvalidInputError(f"output {name!r}: 'binary_data' must be a boolean")
        requested.append(RequestedOutput(name, binary))
    return requested


# --- encoding -----------------------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[RequestedOutput, np.ndarray]],
) -> tuple[bytes, int | None]:
    """Encode an inference response; returns the body and the JSON header length if binary."""
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
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
