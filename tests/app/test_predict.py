"""POST /predict: answers, refusals of bad input and body-size limits, in process."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.native import DIGIT_ZERO_FLAT
from app.registry import Registry
from tests.helpers.http import ZERO_CNN, ZERO_MLP, local_probabilities, post_raw

# --- POST /predict: answers ---------------------------------------------------------------


def test_predict_default_model(client, served_models):
    response = client.post("/predict", json={"inputs": [ZERO_MLP, ZERO_MLP]})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "mlp" and body["version"] == "1"
    assert body["labels"] == [str(d) for d in range(10)]
    assert len(body["predictions"]) == 2
    expected = local_probabilities(served_models["mlp"], [ZERO_MLP])[0]
    for prediction in body["predictions"]:
        probs = np.array(prediction["probabilities"])
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert prediction["class_index"] == int(np.argmax(probs))
        assert prediction["label"] == body["labels"][prediction["class_index"]]
        assert "top_k" not in prediction


def test_log_softmax_model_answers_probabilities(client, served_models):
    response = client.post("/predict", json={"inputs": [ZERO_CNN], "model": "cnn"})
    assert response.status_code == 200
    probs = np.array(response.json()["predictions"][0]["probabilities"])
    assert probs.min() >= 0 and probs.sum() == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(
        probs, local_probabilities(served_models["cnn"], [ZERO_CNN])[0], atol=1e-6
    )


@pytest.mark.parametrize("sample", [ZERO_CNN, DIGIT_ZERO_FLAT], ids=["nested", "flat"])
def test_nested_or_flat_samples_give_the_same_answer(client, sample):
    response = client.post("/models/cnn/predict", json={"inputs": [sample]})
    assert response.status_code == 200
    reference = client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN]}).json()
    assert response.json() == reference


def test_a_batch_may_mix_nested_and_flat_samples(client):
    response = client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN, ZERO_MLP]})
    assert response.status_code == 200
    first, second = response.json()["predictions"]
    assert first == second


def test_integers_and_floats_are_numbers(client):
    sample = [float(v) + 0.5 if i % 2 else v for i, v in enumerate(ZERO_MLP)]
    assert client.post("/predict", json={"inputs": [sample]}).status_code == 200


def test_top_k_lists_the_most_probable_classes_in_order(client):
    response = client.post("/predict", json={"inputs": [ZERO_MLP], "top_k": 3})
    assert response.status_code == 200
    prediction = response.json()["predictions"][0]
    probs = prediction["probabilities"]
    top = prediction["top_k"]
    assert len(top) == 3
    assert top[0]["label"] == prediction["label"]
    assert [entry["probability"] for entry in top] == sorted(probs, reverse=True)[:3]
    for entry in top:
        assert probs[int(entry["label"])] == entry["probability"]


def test_top_k_may_be_every_class(client):
    response = client.post("/predict", json={"inputs": [ZERO_MLP], "top_k": 10})
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]["top_k"]) == 10


def test_path_model_and_body_model_may_agree(client):
    response = client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN], "model": "cnn"})
    assert response.status_code == 200
    assert response.json()["model"] == "cnn"


def test_batch_at_max_batch_is_served(make_client):
    client = make_client(max_batch=4, default_model="mlp")
    response = client.post("/predict", json={"inputs": [ZERO_MLP] * 4})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 4


def test_large_batch_runs_and_matches_small_ones(client, served_models):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 17, size=(1024, 64)).tolist()  # over the inline threshold
    response = client.post("/predict", json={"inputs": batch})
    assert response.status_code == 200
    probs = np.array([p["probabilities"] for p in response.json()["predictions"]])
    np.testing.assert_allclose(probs, local_probabilities(served_models["mlp"], batch), atol=1e-6)


@pytest.mark.parametrize("value", [1e308, -1e308, 3e38, -3e38, 3.4e38])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_huge_finite_inputs_never_give_nan(client, model, value):
    sample = [value] * 64
    response = client.post(f"/models/{model}/predict", json={"inputs": [sample]})
    assert response.status_code in (200, 422), response.text
    assert b"NaN" not in response.content and b"Infinity" not in response.content
    if response.status_code == 200:
        probs = np.array(response.json()["predictions"][0]["probabilities"])
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1, abs=1e-5)
    else:
        assert "sample 0" in response.json()["detail"]


def test_network_overflow_is_a_422_not_nan(make_client):
    import nnlib
    from app.registry import ServedModel
    from tests.helpers import tiny_mlp

    # No input scaling and unit weights: 64 * 3e38 overflows float32 inside the network.
    linear = nnlib.Linear(64, 10, rng=0)
    linear.parameters()["weight"][...] = 1
    net = nnlib.Sequential(linear, nnlib.Softmax())
    client = make_client(registry=Registry([ServedModel.build(net, tiny_mlp("raw")[1])]))
    response = client.post("/predict", json={"inputs": [[1] * 64, [3e38] * 64]})
    assert response.status_code == 422
    assert "sample 1" in response.json()["detail"]
    assert client.post("/predict", json={"inputs": [[1] * 64]}).status_code == 200


# --- POST /predict: bad input ---------------------------------------------------------------

SAMPLE = ",".join(["1"] * 64)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        pytest.param(
            '{"inputs": [[' + SAMPLE + ', "1"]]}', 422, ["sample 0", "string"], id="string"
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ', "1"]]}',
            422,
            ["sample 0", "inputs[0][63]", "string"],
            id="string-among-numbers",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", true]]}",
            422,
            ["sample 0", "inputs[0][63]", "boolean"],
            id="boolean",
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + "], [" + ",".join(["false"] * 64) + "]]}",
            422,
            ["sample 1", "boolean"],
            id="all-booleans",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", null]]}",
            422,
            ["sample 0", "null"],
            id="null",
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + "], null]}", 422, ["sample 1", "null"], id="null-sample"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + "], 3]}", 422, ["sample 1", "number"], id="number-sample"
        ),
        pytest.param('{"inputs": [{"a": 1}]}', 422, ["sample 0", "object"], id="object"),
        pytest.param('{"inputs": [[' + ",".join(["1"] * 63) + ", NaN]]}", 400, ["NaN"], id="nan"),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", Infinity]]}",
            400,
            ["Infinity"],
            id="infinity",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", -Infinity]]}",
            400,
            ["Infinity"],
            id="minus-infinity",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", 1e309]]}",
            400,
            ["infinity"],
            id="overflow-1e309",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", -1e400]]}",
            400,
            ["infinity"],
            id="overflow-minus-1e400",
        ),
        pytest.param(
            '{"inputs": [[' + ",".join(["1"] * 63) + ", 1e39]]}",
            422,
            ["sample 0", "float32"],
            id="beyond-float32",
        ),
        pytest.param(
            '{"inputs": [' + "[" * 40 + "1" + "]" * 40 + "]}",
            422,
            ["sample 0", "shape"],
            id="deep-nesting",
        ),
        pytest.param(
            '{"inputs": [' + "[" * 100 + "1" + "]" * 100 + "]}",
            422,
            ["sample 0", "nested"],
            id="deeper-nesting",
        ),
        pytest.param(
            '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}", 400, ["depth"], id="very-deep-nesting"
        ),
        pytest.param('{"inputs": [[1, 2], [1, 2, 3]]}', 422, ["sample 0"], id="wrong-size"),
        pytest.param(
            '{"inputs": [[' + SAMPLE + "], [1, 2, 3]]}",
            422,
            ["sample 1", "[3]"],
            id="one-wrong-size",
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + "], [[" + SAMPLE + "]]]}",
            422,
            ["sample 1", "[1, 64]"],
            id="extra-axis",
        ),
        pytest.param('{"inputs": []}', 422, ["empty"], id="empty-batch"),
        pytest.param('{"inputs": [[]]}', 422, ["sample 0"], id="empty-sample"),
        pytest.param('{"inputs": 5}', 422, ["inputs"], id="inputs-not-a-list"),
        pytest.param('{"samples": [[1]]}', 422, ["inputs", "samples"], id="wrong-key"),
        pytest.param("{}", 422, ["inputs"], id="missing-inputs"),
        pytest.param("[1, 2]", 422, ["object"], id="array-body"),
        pytest.param('"inputs"', 422, ["object"], id="string-body"),
        pytest.param('{"inputs": [[1, 2', 400, ["JSON"], id="truncated-json"),
        pytest.param("{'inputs': [[1]]}", 400, ["JSON"], id="python-literal"),
        pytest.param("", 400, ["JSON"], id="empty-body"),
        pytest.param(b"\xff\xfe\x00garbage", 400, ["JSON"], id="binary-garbage"),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "model": 3}', 422, ["model"], id="model-not-a-string"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "model": "nope"}', 404, ["nope"], id="unknown-model"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "model": "../models/mlp"}',
            404,
            ["not loaded"],
            id="model-name-is-not-a-path",
        ),
        pytest.param('{"inputs": [[' + SAMPLE + ']], "top_k": 0}', 422, ["top_k"], id="top-k-zero"),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "top_k": -1}', 422, ["top_k"], id="top-k-negative"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "top_k": 11}',
            422,
            ["top_k", "10"],
            id="top-k-over-classes",
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "top_k": 2.5}', 422, ["top_k"], id="top-k-float"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "top_k": true}', 422, ["top_k"], id="top-k-boolean"
        ),
        pytest.param(
            '{"inputs": [[' + SAMPLE + ']], "top_k": "3"}', 422, ["top_k"], id="top-k-string"
        ),
    ],
)
def test_bad_predict_bodies_get_a_clear_4xx(client, body, status, words):
    response = post_raw(client, "/predict", body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail
    assert client.get("/health").status_code == 200


def test_ragged_rows_name_the_sample(client):
    sample = [row[:] for row in ZERO_CNN]
    sample[5] = sample[5][:7]
    response = client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN, sample]})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "sample 1" in detail and "ragged" in detail and "inputs[1][5]" in detail


def test_a_boolean_between_numbers_in_a_nested_sample(client):
    sample = [row[:] for row in ZERO_CNN]
    sample[2][3] = True
    response = client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN, ZERO_CNN, sample]})
    assert response.status_code == 422
    assert "sample 2" in response.json()["detail"]
    assert "inputs[2][2][3]" in response.json()["detail"]


def test_batch_over_max_batch(make_client):
    client = make_client(max_batch=4, default_model="mlp")
    response = client.post("/predict", json={"inputs": [ZERO_MLP] * 5})
    assert response.status_code == 422
    assert "5" in response.json()["detail"] and "4" in response.json()["detail"]


def test_true_in_a_string_does_not_hide_real_errors(client):
    # The body holds the bytes "true" (in a string), so the careful path runs.
    response = post_raw(client, "/predict", '{"inputs": [[' + ",".join(["1"] * 63) + ', "true"]]}')
    assert response.status_code == 422
    assert "string" in response.json()["detail"]


def test_path_and_body_models_must_agree(client):
    response = client.post("/models/cnn/predict", json={"inputs": [ZERO_MLP], "model": "mlp"})
    assert response.status_code == 422
    assert "cnn" in response.json()["detail"] and "mlp" in response.json()["detail"]


def test_unknown_model_in_path(client):
    response = client.post("/models/nope/predict", json={"inputs": [ZERO_MLP]})
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_non_json_content_type_is_415(client, content_type):
    response = post_raw(client, "/predict", '{"inputs": [[1]]}', **{"content-type": content_type})
    assert response.status_code == 415
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/vnd.api+json"]
)
def test_json_content_types_are_accepted(client, content_type):
    body = orjson.dumps({"inputs": [ZERO_MLP]})
    response = post_raw(client, "/predict", body, **{"content-type": content_type})
    assert response.status_code == 200


def test_no_model_loaded(make_client):
    client = make_client(registry=Registry())
    response = client.post("/predict", json={"inputs": [ZERO_MLP]})
    assert response.status_code == 503
    assert "no model" in response.json()["detail"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.sampled_from(["inputs", "model", "top_k", "x"]), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=json_values)
def test_arbitrary_json_never_gets_a_5xx(client, payload):
    body = json.dumps(payload)  # Python's json writes Infinity for inf: also refused
    response = post_raw(client, "/predict", body)
    assert response.status_code < 500, response.text
    assert b"NaN" not in response.content or response.status_code >= 400


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sample=st.lists(st.floats(width=64) | st.integers(-(2**70), 2**70), min_size=64, max_size=64)
)
def test_any_64_numbers_give_probabilities_or_a_4xx(client, sample):
    body = json.dumps({"inputs": [sample]})
    response = post_raw(client, "/predict", body)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 200:
        probs = response.json()["predictions"][0]["probabilities"]
        assert all(np.isfinite(probs)) and sum(probs) == pytest.approx(1, abs=1e-5)


# --- body size -----------------------------------------------------------------------------


def test_body_over_limit_is_413_from_content_length(make_client):
    client = make_client(max_body_bytes=1000, default_model="mlp")
    response = post_raw(client, "/predict", orjson.dumps({"inputs": [ZERO_MLP] * 20}))
    assert response.status_code == 413
    assert "1000" in response.json()["detail"]


def test_chunked_body_over_limit_is_413_while_reading(make_client):
    # (The test client buffers the body; tests/test_server_process.py checks on a real
    # socket that the server answers before the rest is sent.)
    client = make_client(max_body_bytes=1000, default_model="mlp")

    def chunks():
        for _ in range(100):
            yield b" " * 100

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_chunked_body_under_limit_is_served(make_client):
    client = make_client(max_body_bytes=10_000, default_model="mlp")
    body = orjson.dumps({"inputs": [ZERO_MLP]})

    def chunks():
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(("length", "status"), [("9" * 5000, 413), ("12x", 400), ("-1", 400)])
def test_absurd_content_length_headers(client, length, status):
    response = client.post("/predict", content=b"{}", headers={
        "content-type": "application/json", "content-length": length})
    assert response.status_code == status


def test_body_at_limit_is_read(make_client):
    body = orjson.dumps({"inputs": [ZERO_MLP]})
    client = make_client(max_body_bytes=len(body), default_model="mlp")
    assert post_raw(client, "/predict", body).status_code == 200


def test_v2_paths_get_413_as_error(make_client):
    client = make_client(max_body_bytes=100)
    response = post_raw(client, "/v2/models/mlp/infer", b"x" * 1000)
    assert response.status_code == 413
    assert set(response.json()) == {"error"}


