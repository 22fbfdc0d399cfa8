"""The official ``tritonclient.http`` client against a real server of the shipped models."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import ROOT

MODELS = {"digits-mlp": (64,), "digits-cnn": (8, 8)}
# The default NNSERVE_MAX_BATCH: scikit-learn's 1797 digits go in two requests.
CHUNK = 1024


@pytest.fixture(scope="module")
def triton_client(server) -> Iterator[triton.InferenceServerClient]:
    """A tritonclient connected to the session's real server (conftest's ``server``)."""
    client = triton.InferenceServerClient(urlsplit(server.url).netloc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def native(server, digits) -> dict[str, np.ndarray]:
    """/predict's probabilities for every digit, by model: the reference V2 must match."""
    images, _ = digits
    answers = {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for model, shape in MODELS.items():
            rows = []
            for start in range(0, len(images), CHUNK):
                batch = images[start : start + CHUNK].reshape(-1, *shape).tolist()
                response = http.post("/predict", json={"model": model, "inputs": batch})
                assert response.status_code == 200, response.text
                rows += [row["probabilities"] for row in response.json()["predictions"]]
            answers[model] = np.array(rows)
    return answers


def test_health_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert server["name"] == "nnserve"
    assert "binary_tensor_data" in server["extensions"]
    for model, input_shape in MODELS.items():
        assert triton_client.is_model_ready(model)
        metadata = triton_client.get_model_metadata(model)
        assert metadata["name"] == model
        assert metadata["inputs"] == [
            {"name": "input", "datatype": "FP32", "shape": [-1, *input_shape]}
        ]
        assert metadata["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
        ]
        version = metadata["versions"][0]
        assert triton_client.is_model_ready(model, model_version=version)
        assert triton_client.get_model_metadata(model, model_version=version) == metadata
    assert not triton_client.is_model_ready("no-such-model")


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (True, False), (False, True), (True, None)],
    ids=["json-json", "binary-binary", "binary-json", "json-binary", "binary-default"],
)
def test_infer_matches_predict_on_every_digit(
    triton_client, native, digits, model, binary_in, binary_out
):
    images, targets = digits
    outputs = None
    if binary_out is not None:
        outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary_out)]
    rows = []
    for start in range(0, len(images), CHUNK):
        batch = images[start : start + CHUNK].reshape(-1, *MODELS[model])
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary_in)
        result = triton_client.infer(model, [tensor], outputs=outputs, request_id=f"r{start}")
        assert result.get_response()["id"] == f"r{start}"
        assert result.get_response()["model_name"] == model
        rows.append(result.as_numpy("probabilities"))
    probabilities = np.concatenate(rows)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, native[model], rtol=0, atol=1e-6)
    # The shipped networks are trained: most digits come out right.
    assert (probabilities.argmax(axis=1) == targets).mean() >= 0.95


def test_integer_pixels_and_a_pinned_version(triton_client, native, digits):
    images, _ = digits
    metadata = triton_client.get_model_metadata("digits-cnn")
    tensor = triton.InferInput("input", [16, 8, 8], "UINT8")
    tensor.set_data_from_numpy(images[:16].astype(np.uint8), binary_data=True)
    result = triton_client.infer("digits-cnn", [tensor], model_version=metadata["versions"][0])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), native["digits-cnn"][:16], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton_client, native, digits, algorithm):
    images, _ = digits
    tensor = triton.InferInput("input", [32, 64], "FP32")
    tensor.set_data_from_numpy(images[:32].reshape(32, 64), binary_data=True)
    result = triton_client.infer(
        "digits-mlp",
        [tensor],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # may be ignored: the answer is plain
    )
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), native["digits-mlp"][:32], rtol=0, atol=1e-6
    )


def test_errors_reach_tritonclient_as_messages(triton_client):
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer("no-such-model", [tensor])
    assert unknown.value.status() == "404"
    assert "no-such-model" in unknown.value.message()

    with pytest.raises(InferenceServerException) as metadata:
        triton_client.get_model_metadata("no-such-model")
    assert metadata.value.status() == "404"

    wrong = triton.InferInput("input", [1, 63], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=False)
    with pytest.raises(InferenceServerException) as shape:
        triton_client.infer("digits-mlp", [wrong])
    assert shape.value.status() == "400"
    assert "[1, 63]" in shape.value.message() and "[-1, 64]" in shape.value.message()

    nan = triton.InferInput("input", [1, 64], "FP32")
    nan.set_data_from_numpy(np.full((1, 64), np.nan, np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as not_finite:
        triton_client.infer("digits-mlp", [nan])
    assert not_finite.value.status() == "400"
    assert "NaN" in not_finite.value.message()

    with pytest.raises(InferenceServerException) as output:
        triton_client.infer("digits-mlp", [tensor], outputs=[triton.InferRequestedOutput("logits")])
    assert "unknown output 'logits'" in output.value.message()
    # The server keeps serving after all of that.
    assert triton_client.infer("digits-mlp", [tensor]).as_numpy("probabilities").shape == (1, 10)


@pytest.mark.parametrize("protocol", ["native", "v2"])
def test_example_client_prints_labels_and_probabilities(server, digits, protocol):
    _, targets = digits
    command = [sys.executable, str(ROOT / "examples" / "client.py"), "--url", server.url]
    command += ["--model", "digits-cnn", "--count", "4", "--protocol", protocol]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model digits-cnn (version ")
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4
    for index, row in enumerate(rows):
        # digit, true label, predicted label, its probability, then the 10 probabilities
        assert row[:2] == [str(index), str(targets[index])]
        probabilities = [float(value) for value in row[4:]]
        assert len(probabilities) == 10
        assert abs(sum(probabilities) - 1) < 0.01
