"""Open Inference Protocol (V2): the pure decoder/encoder and every route, in process."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import triton_to_np_dtype

from app.api.v2 import codec as v2
from app.api.v2.routes import STATUS
from app.config import Settings
from app.errors import ServingError
from app.main import create_app
from app.registry import Registry

# Every datatype the service takes, written out here rather than read from v2.DTYPES.
NUMERIC_DATATYPES = ["FP16", "FP32", "FP64"] + [
    f"{kind}{bits}" for kind in ("INT", "UINT") for bits in (8, 16, 32, 64)
]

# --- the pure functions, checked against tritonclient's own request/response code -----------


def _triton_body(x: np.ndarray, datatype: str, binary_in: bool, binary_out: bool | None):
    """Build a request body exactly as tritonclient.http does (the independent reference)."""
    tensor = triton.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None
    if binary_out is not None:
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary_out)]
    return triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="req-1"
    )


def _decode(body: bytes, header_length: int | str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """Run the decoding half of the infer route."""
    length = None if header_length is None else str(header_length)
    raw, binary = v2.split_body(body, length)
    header = v2.parse_header(raw)
    return header, v2.decode_inputs(header, binary)


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_decodes_what_tritonclient_sends(datatype, binary_in):
    rng = np.random.default_rng(0)
    dtype = triton_to_np_dtype(datatype)
    x = (rng.random((3, 8, 8)) * 16).astype(dtype)
    body, header_length = _triton_body(x, datatype, binary_in, binary_out=False)
    assert (header_length is not None) == binary_in
    header, arrays = _decode(body, header_length)
    assert header["id"] == "req-1"
    assert list(arrays) == ["input"]
    np.testing.assert_array_equal(arrays["input"].astype(dtype), x)
    assert arrays["input"].shape == (3, 8, 8)


def test_binary_input_is_read_as_little_endian():
    spec = {"name": "input", "datatype": "FP32", "shape": [2, 3]}
    spec["parameters"] = {"binary_data_size": 24}
    raw = orjson.dumps({"inputs": [spec]})
    # Explicit little-endian bytes: a decoder using big-endian (or swapping) reads garbage.
    body = raw + np.arange(6, dtype="<f4").tobytes()
    _, arrays = _decode(body, len(raw))
    np.testing.assert_array_equal(arrays["input"], np.arange(6).reshape(2, 3))


@pytest.mark.parametrize(
    "data",
    [
        [[0, 1, 2, 3], [4, 5, 6, 7]],  # nested exactly as the shape [2, 2, 2] merged at the end
        [[[0, 1], [2, 3]], [[4, 5], [6, 7]]],  # nested exactly as the shape
        [0, 1, 2, 3, 4, 5, 6, 7],  # flat, row-major
        [0.0, 1, 2.0, 3, 4, 5, 6, 7.0],  # JSON ints and floats mix for a float datatype
    ],
)
def test_json_data_flat_or_nested(data):
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2, 2], "data": data}]}
    _, arrays = _decode(orjson.dumps(header), None)
    np.testing.assert_array_equal(arrays["input"], np.arange(8).reshape(2, 2, 2))


def _json_error(data, datatype="FP32", shape=(2, 2)) -> str:
    """Decode JSON data that must be refused; return the message."""
    spec = {"name": "input", "datatype": datatype, "shape": list(shape), "data": data}
    with pytest.raises(ServingError) as info:
        v2.decode_inputs({"inputs": [spec]}, b"")
    assert STATUS[type(info.value)] == 400
    return info.value.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([[1, 2], [3]], "sample 1: data[1] has 1 elements"),
        ([[1, 2], [3, 4, 5]], "sample 1: data[1] has 3 elements"),
        ([1, 2, 3], "data has 3 elements but shape [2, 2] needs 4"),
        ([[1, 2], [3, 4], [5, 6]], "data has 3 elements"),
        ([[1, True], [3, 4]], "sample 0: data[0][1] is a boolean"),
        ([1, 2, False, 4], "sample 1: data[2] is a boolean"),
        ([[1, 2], [3, "4"]], "sample 1: data[1][1] is a string"),
        ([[1, 2], [None, 4]], "data[1][0] is null"),
        ([[1, 2], [{}, 4]], "data[1][0] is an object"),
        ([[1, 2], 3], "data[1] is an integer"),
        ([[[1, 2]], [[3, 4]]], "nested deeper than shape [2, 2]"),
        ({"a": 1}, "'data' must be an array, got an object"),
        ("1,2,3,4", "'data' must be an array, got a string"),
    ],
)
def test_json_data_refused(data, expected):
    assert expected in _json_error(data)


@pytest.mark.parametrize(
    ("data", "datatype", "expected"),
    [
        ([1.5, 2, 3, 4], "INT32", "data[0] is a floating-point number; expected an integer"),
        ([1.0, 2, 3, 4], "INT32", "expected an integer"),
        ([256, 0, 0, 0], "UINT8", "outside the range of uint8"),
        ([-1, 0, 0, 0], "UINT64", "outside the range of uint64"),
        ([2**63, 0, 0, 0], "INT64", "outside the range of int64"),
        ([70000.0, 0, 0, 0], "FP16", "outside the range"),
    ],
)
def test_json_integer_and_narrow_datatypes_refuse_what_they_cannot_hold(data, datatype, expected):
    assert expected in _json_error(data, datatype)


def test_json_fp32_beyond_float32_is_left_to_the_dataplane():
    """The codec reads FP32 and FP64 data as float64; the dataplane refuses what does not
    fit float32, with the same words for every protocol (the end-to-end cases below)."""
    spec = {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1e39, 0]}
    array = v2.decode_inputs({"inputs": [spec]}, b"")["input"]
    assert array.dtype == np.float64 and array[0, 0] == 1e39


def test_json_uint64_holds_its_whole_range():
    spec = {"name": "input", "datatype": "UINT64", "shape": [1, 2], "data": [0, 2**64 - 1]}
    arrays = v2.decode_inputs({"inputs": [spec]}, b"")
    assert arrays["input"].dtype == np.uint64
    assert int(arrays["input"][0, 1]) == 2**64 - 1


@pytest.mark.parametrize(
    ("header_length", "body", "expected"),
    [
        ("-1", b"{}", "must be a non-negative integer"),
        ("abc", b"{}", "must be a non-negative integer"),
        ("1.5", b"{}", "must be a non-negative integer"),
        ("", b"{}", "must be a non-negative integer"),
        ("\u00b2", b"{}", "must be a non-negative integer"),  # a digit to str.isdigit only
        ("9" * 5000, b"{}", "must be a non-negative integer"),  # int() refuses 4300+ digits
        ("3", b"{}", "is 3 but the body has only 2 bytes"),
    ],
)
def test_header_length_refused(header_length, body, expected):
    with pytest.raises(ServingError) as info:
        v2.split_body(body, header_length)
    assert expected in info.value.message


def test_header_length_splits_json_from_binary():
    assert v2.split_body(b'{"a":1}\x00\x01', " 7 ") == (b'{"a":1}', b"\x00\x01")
    assert v2.split_body(b"{}", None) == (b"{}", b"")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{", "malformed JSON"),
        (b"not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b'{"inputs": [NaN]}', "malformed JSON"),
        (b'{"inputs": [Infinity]}', "malformed JSON"),
        (b'{"inputs": [-Infinity]}', "malformed JSON"),
        (b'{"inputs": [1e309]}', "malformed JSON"),  # overflows to infinity
        (b"[" * 5000 + b"]" * 5000, "malformed JSON"),  # nesting past orjson's limit
        (b"[]", "must be a JSON object"),
        (b"42", "must be a JSON object"),
    ],
)
def test_parse_header_refused(raw, expected):
    with pytest.raises(ServingError) as info:
        v2.parse_header(raw)
    assert expected in info.value.message


def _binary_request(size, shape=(2, 3), datatype="FP32", payload=None) -> tuple[dict, bytes]:
    spec = {"name": "input", "datatype": datatype, "shape": list(shape)}
    spec["parameters"] = {"binary_data_size": size}
    if payload is None:
        payload = np.zeros(shape, dtype="<f4").tobytes()
    return {"inputs": [spec]}, payload


@pytest.mark.parametrize(
    ("header", "binary", "expected"),
    [
        (*_binary_request(23), "binary_data_size is 23 but shape [2, 3] of FP32 takes 24 bytes"),
        (*_binary_request(25), "binary_data_size is 25"),
        (*_binary_request(-24), "binary_data_size is -24"),
        (*_binary_request("24"), "binary_data_size is '24'"),
        (*_binary_request(True), "binary_data_size is True"),
        (*_binary_request(24, payload=b"\0" * 20), "needs 24 bytes of binary data but only 20"),
        (*_binary_request(24, payload=b"\0" * 30), "6 bytes after the binary data"),
        (*_binary_request(48, datatype="FP64", payload=b"\0" * 24), "only 24 are left"),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [1]}]},
            b"\0\0\0\0",
            "4 bytes after the binary data",
        ),
    ],
)
def test_binary_data_refused(header, binary, expected):
    with pytest.raises(ServingError) as info:
        v2.decode_inputs(header, binary)
    assert expected in info.value.message


def _tensor(**changes):
    spec = {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    spec.update(changes)
    return {key: value for key, value in spec.items() if value is not None}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({}, "'inputs' must be a non-empty array"),
        ({"inputs": []}, "'inputs' must be a non-empty array"),
        ({"inputs": {}}, "'inputs' must be a non-empty array"),
        ({"inputs": [1]}, "inputs[0] must be an object"),
        ({"inputs": [_tensor(name=None)]}, "'name' must be a string"),
        ({"inputs": [_tensor(), _tensor()]}, "input 'input' is given twice"),
        ({"inputs": [_tensor(datatype="BOOL")]}, "datatype 'BOOL' is not supported"),
        ({"inputs": [_tensor(datatype="BYTES")]}, "datatype 'BYTES' is not supported"),
        ({"inputs": [_tensor(datatype="fp32")]}, "datatype 'fp32' is not supported"),
        ({"inputs": [_tensor(datatype=None)]}, "datatype None is not supported"),
        ({"inputs": [_tensor(shape=None)]}, "'shape' must be an array of non-negative"),
        ({"inputs": [_tensor(shape=[-1, 2])]}, "'shape' must be an array of non-negative"),
        ({"inputs": [_tensor(shape=[1.0, 2])]}, "'shape' must be an array of non-negative"),
        ({"inputs": [_tensor(shape=[True, 2])]}, "'shape' must be an array of non-negative"),
        ({"inputs": [_tensor(shape=[1] * 9)]}, "more than 8 dimensions"),
        ({"inputs": [_tensor(data=None)]}, "needs 'data' or the 'binary_data_size' parameter"),
        ({"inputs": [_tensor(parameters=[])]}, "'parameters' must be an object"),
        ({"inputs": [_tensor(parameters={"binary_data_size": 8})]}, "both 'data' and"),
        (
            {"inputs": [_tensor(parameters={"shared_memory_region": "r"})]},
            "shared-memory extension is not supported",
        ),
    ],
)
def test_request_structure_refused(header, expected):
    with pytest.raises(ServingError) as info:
        v2.decode_inputs(header, b"")
    assert expected in info.value.message


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**40, 2**40], [2**62, 0]])
@pytest.mark.parametrize("binary", [False, True])
def test_empty_tensor_of_a_giant_shape_refused(shape, binary):
    spec = {"name": "input", "datatype": "FP32", "shape": shape}
    spec.update({"parameters": {"binary_data_size": 0}} if binary else {"data": []})
    with pytest.raises(ServingError) as info:
        v2.decode_inputs({"inputs": [spec]}, b"")
    assert f"shape {shape} is too large" in info.value.message


def test_check_tensor_runs_before_the_data_is_read():
    seen = []

    def refuse(name, shape):
        seen.append((name, shape))
        raise ServingError("no")

    spec = {"name": "input", "datatype": "FP32", "shape": [1, 2], "data": "not even a list"}
    with pytest.raises(ServingError, match="no"):
        v2.decode_inputs({"inputs": [spec]}, b"", refuse)
    assert seen == [("input", [1, 2])]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({}, [("probabilities", False)]),  # JSON unless asked otherwise
        ({"outputs": []}, [("probabilities", False)]),
        ({"parameters": {"binary_data_output": True}}, [("probabilities", True)]),
        ({"outputs": [{"name": "probabilities"}]}, [("probabilities", False)]),
        (
            {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
            [("probabilities", True)],
        ),
        (  # a per-output choice overrides the request-wide one
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
            },
            [("probabilities", False)],
        ),
    ],
)
def test_requested_outputs(header, expected):
    outputs = v2.requested_outputs(header, ["probabilities"])
    assert [(output.name, output.binary) for output in outputs] == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"outputs": [{"name": "probabilities"}] * 2}, "requested twice"),
        ({"outputs": [{}]}, "must be an object with a string 'name'"),
        ({"outputs": ["probabilities"]}, "must be an object with a string 'name'"),
        ({"outputs": {"name": "probabilities"}}, "'outputs' must be an array"),
        ({"outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]}, "boolean"),
        ({"parameters": {"binary_data_output": "yes"}}, "must be a boolean"),
        ({"parameters": 3}, "'parameters' must be an object"),
        (
            {"outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]},
            "'classification' is not supported",
        ),
    ],
)
def test_requested_outputs_refused(header, expected):
    with pytest.raises(ServingError) as info:
        v2.requested_outputs(header, ["probabilities"])
    assert expected in info.value.message


class _Model:
    name = "digits"
    version = "3"


@pytest.mark.parametrize("binary", [False, True])
def test_encoded_response_reads_back_bit_exact_in_tritonclient(binary):
    probabilities = np.random.default_rng(1).dirichlet(np.ones(10), size=5).astype(np.float32)
    output = v2.RequestedOutput("probabilities", binary)
    body, header_length = v2.encode_response("digits", "3", "abc", [(output, probabilities)])
    assert (header_length is not None) == binary
    result = triton.InferenceServerClient.parse_response_body(body, header_length=header_length)
    decoded = result.as_numpy("probabilities")
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, probabilities)
    response = result.get_response()
    assert response["model_name"] == "digits"
    assert response["model_version"] == "3"
    assert response["id"] == "abc"
    assert response["outputs"][0]["shape"] == [5, 10]
    assert response["outputs"][0]["datatype"] == "FP32"


def test_encoded_response_leaves_out_a_missing_id():
    output = v2.RequestedOutput("probabilities", False)
    body, _ = v2.encode_response("digits", "3", None, [(output, np.ones((1, 2), np.float32))])
    assert "id" not in orjson.loads(body)


# --- the routes, in process, on conftest's tiny "mlp" (Softmax, [64]) and "cnn" --------------
# (LogSoftmax, [8, 8]): the heads and input shapes of the shipped pair.

MAX_BATCH = 64


@pytest.fixture(scope="module")
def v2_client(served_models) -> Iterator[TestClient]:
    """One in-process app for the module (hypothesis reuses it across examples)."""
    app = create_app(
        Settings(max_batch=MAX_BATCH, api_key=None), registry=Registry(served_models.values())
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def images(digits) -> np.ndarray:
    """The first 64 of scikit-learn's digits as raw pixels 0..16, shape (64, 8, 8)."""
    return digits[0][:MAX_BATCH]


def _infer(client, model, x, datatype="FP32", *, binary_in=False, binary_out=None, **kwargs):
    body, header_length = _triton_body(x, datatype, binary_in, binary_out)
    headers = kwargs.pop("headers", {})
    if header_length is not None:
        headers[v2.HEADER_LENGTH] = str(header_length)
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers, **kwargs)


def _probabilities(response) -> np.ndarray:
    """Read an infer response the way tritonclient does."""
    assert response.status_code == 200, response.text
    length = response.headers.get(v2.HEADER_LENGTH)
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=None if length is None else int(length)
    )
    return result.as_numpy("probabilities")


def _native(client, model, x) -> np.ndarray:
    response = client.post("/predict", json={"model": model, "inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return np.array([row["probabilities"] for row in response.json()["predictions"]])


def test_server_metadata(v2_client):
    response = v2_client.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "nnserve"
    assert isinstance(body["version"], str) and body["version"]
    assert "binary_tensor_data" in body["extensions"]


def test_health(v2_client):
    assert v2_client.get("/v2/health/live").status_code == 200
    assert v2_client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("model", "input_shape", "version"), [("mlp", [-1, 64], "1"), ("cnn", [-1, 8, 8], "1")]
)
def test_model_metadata(v2_client, model, input_shape, version):
    expected = {
        "name": model,
        "versions": [version],
        "platform": "nnlib",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": input_shape}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert v2_client.get(f"/v2/models/{model}").json() == expected
    assert v2_client.get(f"/v2/models/{model}/versions/{version}").json() == expected
    assert v2_client.get(f"/v2/models/{model}/ready").status_code == 200
    assert v2_client.get(f"/v2/models/{model}/versions/{version}/ready").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/mlp/versions/9",
        "/v2/models/mlp/versions/9/ready",
    ],
)
def test_unknown_model_or_version_is_404(v2_client, path):
    response = v2_client.get(path)
    assert response.status_code == 404
    assert list(response.json()) == ["error"]
    assert "nope" in response.json()["error"] or "no version '9'" in response.json()["error"]


def test_readiness_follows_draining_and_loaded_models(make_client):
    client = make_client()
    client.app.state.dataplane.draining = True
    for path in ("/v2/health/ready", "/v2/models/mlp/ready"):
        response = client.get(path)
        assert response.status_code == 503
        assert "shutting down" in response.json()["error"]
    assert client.get("/v2/health/live").status_code == 200
    response = make_client(registry=Registry()).get("/v2/health/ready")
    assert response.status_code == 503
    assert "no model is loaded" in response.json()["error"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (True, None)])
def test_infer_matches_predict_on_real_digits(v2_client, images, model, binary_in, binary_out):
    shape = (len(images), 64) if model == "mlp" else images.shape
    x = images.reshape(shape).astype(np.float32)
    response = _infer(v2_client, model, x, binary_in=binary_in, binary_out=binary_out)
    # tritonclient asks for binary outputs when it names none (binary_data_output).
    assert (v2.HEADER_LENGTH in response.headers) == (binary_out is not False)
    probabilities = _probabilities(response)
    assert probabilities.shape == (len(images), 10)
    np.testing.assert_allclose(probabilities, _native(v2_client, model, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
@pytest.mark.parametrize("binary_in", [False, True])
def test_every_numeric_datatype_gives_the_fp32_answer(v2_client, images, datatype, binary_in):
    # Pixels are integers 0..16, exact in every datatype, so the answers must be identical.
    x = images[:8]
    expected = _probabilities(_infer(v2_client, "cnn", x.astype(np.float32)))
    typed = x.astype(triton_to_np_dtype(datatype))
    got = _probabilities(_infer(v2_client, "cnn", typed, datatype, binary_in=binary_in))
    np.testing.assert_array_equal(got, expected)


def test_flat_samples_accepted_for_a_shaped_model(v2_client, images):
    x = images[:4].astype(np.float32)
    flat = _probabilities(_infer(v2_client, "cnn", x.reshape(4, 64)))
    np.testing.assert_array_equal(flat, _probabilities(_infer(v2_client, "cnn", x)))


def test_nested_json_data_accepted(v2_client, images):
    x = images[:3]
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 8, 8], "data": x.tolist()}]
    }
    got = _probabilities(v2_client.post("/v2/models/cnn/infer", json=body))
    np.testing.assert_allclose(got, _native(v2_client, "cnn", x), atol=1e-6)


def test_id_echoed_and_versioned_infer(v2_client, images):
    x = images[:1].reshape(1, 64)
    body = {
        "id": "abc-1",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x.ravel().tolist()}
        ],
    }
    response = v2_client.post("/v2/models/mlp/versions/1/infer", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "abc-1"
    assert answer["model_name"] == "mlp"
    assert answer["model_version"] == "1"
    assert answer["outputs"][0]["name"] == "probabilities"
    del body["id"]
    assert "id" not in v2_client.post("/v2/models/mlp/infer", json=body).json()
    assert v2_client.post("/v2/models/mlp/versions/3/infer", json=body).status_code == 404


def _body(data=None, *, shape=(1, 64), datatype="FP32", name="input", **extra) -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": list(shape)}
    tensor["data"] = [1.0] * int(np.prod(shape)) if data is None else data
    return orjson.dumps({"inputs": [tensor], **extra})


def _binary(values: np.ndarray, *, size=None, datatype="FP32", shape=None, extra=b""):
    """A binary-extension body: (content, headers)."""
    shape = list(values.shape if shape is None else shape)
    size = values.nbytes if size is None else size
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + values.tobytes() + extra, {v2.HEADER_LENGTH: str(len(header))}


_ZEROS = np.zeros((1, 64), dtype="<f4")
_NAN = _ZEROS.copy()
_NAN[0, 5] = np.nan
_INF64 = np.zeros((1, 64), dtype="<f8")
_INF64[0, 7] = np.inf
_HUGE64 = np.zeros((1, 64), dtype="<f8")
_HUGE64[0, 1] = 1e300
_INF16 = np.zeros((1, 64), dtype="<f2")
_INF16[0, 3] = -np.inf


BAD_REQUESTS = [
    # (id, model, body, headers, status, expected part of the message)
    ("unknown model", "nope", _body(), {}, 404, "model 'nope' is not loaded"),
    ("malformed JSON", "mlp", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("not JSON", "mlp", b"\x00\x01garbage", {}, 400, "malformed JSON"),
    ("empty body", "mlp", b"", {}, 400, "malformed JSON"),
    ("JSON array", "mlp", b"[]", {}, 400, "must be a JSON object"),
    (
        "NaN literal",
        "mlp",
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1],"data":[NaN]}]}',
        {},
        400,
        "malformed JSON",
    ),
    (
        "Infinity literal",
        "mlp",
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1],"data":[Infinity]}]}',
        {},
        400,
        "malformed JSON",
    ),
    (
        "1e309",
        "mlp",
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1],"data":[1e309]}]}',
        {},
        400,
        "malformed JSON",
    ),
    (
        "deep nesting",
        "mlp",
        b'{"inputs":' + b"[" * 3000 + b"]" * 3000 + b"}",
        {},
        400,
        "malformed JSON",
    ),
    (
        "beyond float32 (FP32)",
        "mlp",
        _body([1e39] + [0.0] * 63),
        {},
        400,
        "beyond the float32 range",
    ),
    (
        "beyond float32 (FP64)",
        "mlp",
        _body([1e300] + [0.0] * 63, datatype="FP64"),
        {},
        400,
        "beyond the float32 range",
    ),
    ("wrong datatype", "mlp", _body(datatype="BYTES"), {}, 400, "datatype 'BYTES' is not"),
    ("BOOL datatype", "mlp", _body(datatype="BOOL"), {}, 400, "datatype 'BOOL' is not"),
    (
        "wrong sample shape",
        "mlp",
        _body(shape=(1, 63)),
        {},
        400,
        "input 'input' has shape [1, 63]; model 'mlp' takes [-1, 64]",
    ),
    (
        "wrong sample shape (cnn)",
        "cnn",
        _body(shape=(1, 8, 7)),
        {},
        400,
        "takes [-1, 8, 8] or [-1, 64]",
    ),
    ("no batch dimension", "mlp", _body(shape=(64,)), {}, 400, "has shape [64]"),
    ("giant empty shape", "mlp", _body([], shape=(0, 2**63)), {}, 400, "takes [-1, 64]"),
    ("giant batch", "mlp", _body([], shape=(2**62, 64)), {}, 400, "at most 64 are accepted"),
    (
        "data count below shape",
        "mlp",
        _body([1.0] * 63),
        {},
        400,
        "data has 63 elements but shape [1, 64] needs 64",
    ),
    ("data count above shape", "mlp", _body([1.0] * 65), {}, 400, "has 65 elements"),
    (
        "ragged rows",
        "mlp",
        _body([[1.0] * 64, [1.0] * 63], shape=(2, 64)),
        {},
        400,
        "sample 1: data[1] has 63 elements",
    ),
    (
        "boolean in data",
        "mlp",
        _body([1.0] * 10 + [True] + [1.0] * 53),
        {},
        400,
        "data[10] is a boolean",
    ),
    ("string in data", "mlp", _body([1.0] * 63 + ["1"]), {}, 400, "data[63] is a string"),
    ("null in data", "mlp", _body([None] * 64), {}, 400, "data[0] is null"),
    ("empty batch", "mlp", _body([], shape=(0, 64)), {}, 400, "the batch is empty"),
    (
        "batch over max",
        "mlp",
        _body(shape=(MAX_BATCH + 1, 64)),
        {},
        400,
        f"at most {MAX_BATCH} are accepted",
    ),
    (
        "unknown output",
        "mlp",
        _body(outputs=[{"name": "logits"}]),
        {},
        400,
        "unknown output 'logits'",
    ),
    (
        "wrong input name",
        "mlp",
        _body(name="x"),
        {},
        400,
        "model 'mlp' has no input 'x'; its input is 'input'",
    ),
    ("non-string id", "mlp", _body(id=7), {}, 400, "'id' must be a string"),
    ("missing inputs", "mlp", b'{"outputs": []}', {}, 400, "'inputs' must be a non-empty"),
    (
        "binary size below shape",
        "mlp",
        *_binary(_ZEROS, size=252),
        400,
        "binary_data_size is 252 but shape [1, 64] of FP32 takes 256 bytes",
    ),
    (
        "binary size of the wrong itemsize",
        "mlp",
        *_binary(_ZEROS, datatype="FP64"),
        400,
        "binary_data_size is 256 but shape [1, 64] of FP64 takes 512 bytes",
    ),
    (
        "binary body shorter than declared",
        "mlp",
        *_binary(_ZEROS[:, :32], shape=(1, 64), size=256),
        400,
        "needs 256 bytes of binary data but only 128",
    ),
    (
        "trailing bytes",
        "mlp",
        *_binary(_ZEROS, extra=b"\0" * 4),
        400,
        "4 bytes after the binary data",
    ),
    ("NaN in binary", "mlp", *_binary(_NAN), 400, "sample 0 holds NaN or infinity"),
    ("Inf in binary FP64", "mlp", *_binary(_INF64, datatype="FP64"), 400, "NaN or infinity"),
    ("Inf in binary FP16", "mlp", *_binary(_INF16, datatype="FP16"), 400, "NaN or infinity"),
    (
        "1e300 in binary FP64",
        "mlp",
        *_binary(_HUGE64, datatype="FP64"),
        400,
        "beyond the float32 range",
    ),
    (
        "header length over body",
        "mlp",
        b"{}",
        {v2.HEADER_LENGTH: "3"},
        400,
        "is 3 but the body has only 2 bytes",
    ),
    (
        "negative header length",
        "mlp",
        b"{}",
        {v2.HEADER_LENGTH: "-1"},
        400,
        "must be a non-negative integer",
    ),
    (
        "non-integer header length",
        "mlp",
        b"{}",
        {v2.HEADER_LENGTH: "1.5"},
        400,
        "must be a non-negative integer",
    ),
    (
        "unknown content encoding",
        "mlp",
        _body(),
        {"Content-Encoding": "br"},
        415,
        "Content-Encoding 'br' is not supported",
    ),
    ("gzip that is not gzip", "mlp", _body(), {"Content-Encoding": "gzip"}, 400, "not inflate"),
    (
        "truncated gzip",
        "mlp",
        gzip.compress(_body())[:-12],
        {"Content-Encoding": "gzip"},
        400,
        "truncated",
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "headers", "status", "expected"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_infer_requests_get_a_v2_error(v2_client, model, body, headers, status, expected):
    response = v2_client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert expected in response.json()["error"]
    # The server keeps serving after every refusal.
    assert v2_client.post("/v2/models/mlp/infer", content=_body()).status_code == 200


def test_body_over_the_limit_is_413_in_v2_form(make_client):
    client = make_client(max_body_bytes=1000)
    response = client.post("/v2/models/mlp/infer", content=_body(shape=(MAX_BATCH, 64)))
    assert response.status_code == 413
    assert list(response.json()) == ["error"]


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_compressed_bodies_as_tritonclient_sends_them(v2_client, images, encoding, compress):
    # tritonclient's request_compression_algorithm: the header length counts inflated bytes.
    x = images[:5]
    body, header_length = _triton_body(x, "FP32", binary_in=True, binary_out=False)
    headers = {"Content-Encoding": encoding, v2.HEADER_LENGTH: str(header_length)}
    response = v2_client.post("/v2/models/cnn/infer", content=compress(body), headers=headers)
    np.testing.assert_array_equal(
        _probabilities(response), _probabilities(_infer(v2_client, "cnn", x))
    )


def test_compressed_body_inflating_past_the_limit_is_413(make_client):
    client = make_client(max_body_bytes=10_000)
    bomb = gzip.compress(_body([0] * 200 * 64, shape=(200, 64)))
    assert len(bomb) < 10_000
    headers = {"Content-Encoding": "gzip"}
    response = client.post("/v2/models/mlp/infer", content=bomb, headers=headers)
    assert response.status_code == 413
    assert "inflates to more than 10000 bytes" in response.json()["error"]


def test_api_key_guards_infer_only(make_client):
    client = make_client(api_key="s3cret")
    assert client.post("/v2/models/mlp/infer", content=_body()).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    response = client.post("/v2/models/mlp/infer", content=_body(), headers=wrong)
    assert response.status_code == 401
    assert list(response.json()) == ["error"]
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v2/models/mlp/infer", content=_body(), headers=good).status_code == 200
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/mlp"):
        assert client.get(path).status_code == 200


# The same examples every run (no example database): a failure here always reproduces.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    data=json_values,
    shape=st.lists(st.integers(-1, 70), max_size=4) | json_values,
    datatype=st.sampled_from([*v2.DTYPES, "BOOL", "BYTES", None, 3]),
    outputs=st.none() | json_values,
)
def test_fuzzed_json_requests_never_get_a_5xx(v2_client, data, shape, datatype, outputs):
    tensor = {"name": "input", "datatype": datatype, "shape": shape, "data": data}
    body = {"inputs": [tensor]}
    if outputs is not None:
        body["outputs"] = outputs
    response = v2_client.post("/v2/models/cnn/infer", content=orjson.dumps(body))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert list(response.json()) == ["error"]


@FUZZ
@given(
    payload=st.binary(max_size=600),
    size=st.integers(-10, 600) | st.none(),
    shape=st.lists(st.integers(0, 70), max_size=3),
    datatype=st.sampled_from(list(v2.DTYPES)),
    length_shift=st.integers(-3, 3),
)
def test_fuzzed_binary_requests_never_get_a_5xx(
    v2_client, payload, size, shape, datatype, length_shift
):
    parameters = {} if size is None else {"binary_data_size": size}
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "datatype": datatype, "shape": shape, "parameters": parameters}
            ]
        }
    )
    headers = {v2.HEADER_LENGTH: str(len(header) + length_shift)}
    response = v2_client.post("/v2/models/mlp/infer", content=header + payload, headers=headers)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert list(response.json()) == ["error"]
