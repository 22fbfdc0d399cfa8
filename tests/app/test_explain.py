"""POST /explain and /models/{name}/explain in-process: the answers nnlib computes, the
completeness of integrated gradients over HTTP, every refusal a 4xx naming the problem,
the work bound, the API key and the metrics."""

from __future__ import annotations

import numpy as np
import pytest

import nnlib
from app import dataplane as dataplane_module
from app import explaining
from tests.app.test_operations import _sample_value
from tests.helpers.http import ZERO_CNN, ZERO_MLP, local_probabilities, post_raw


@pytest.fixture
def shipped_client(make_client, shipped_dir):
    return make_client(model_dir=str(shipped_dir))


@pytest.fixture(scope="module")
def wines():
    from sklearn.datasets import load_wine

    return load_wine().data[:3].tolist()


def _model(client, name):
    return client.app.state.dataplane.model(name)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "wine-mlp"])
def test_integrated_gradients_are_nnlib_s_and_complete(shipped_client, digits, wines, name):
    model = _model(shipped_client, name)
    samples = wines if name == "wine-mlp" else digits[0][:3].reshape(
        3, *model.input_shape).tolist()
    response = shipped_client.post(f"/models/{name}/explain", json={"inputs": samples})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["method"], body["steps"]) == (
        name, "integrated_gradients", explaining.DEFAULT_STEPS)
    assert body["labels"] == list(model.labels)
    probs = local_probabilities(model, samples)
    batch = np.asarray(samples, np.float32).reshape(-1, *model.input_shape)
    expected, _, p_baseline = nnlib.integrated_gradients(
        model.network, batch, probs.argmax(axis=1), head=model.output)
    for index, item in enumerate(body["explanations"]):
        best = int(probs[index].argmax())
        assert (item["label"], item["class_index"]) == (model.labels[best], best)
        assert item["probability"] == pytest.approx(float(probs[index, best]), rel=1e-6)
        np.testing.assert_allclose(item["probabilities"], probs[index], rtol=1e-6)
        attributions = np.asarray(item["attributions"])
        assert attributions.shape == model.input_shape  # in the model's own shape
        np.testing.assert_allclose(attributions, expected[index], rtol=1e-6, atol=1e-9)
        assert item["baseline_probability"] == pytest.approx(p_baseline[index], rel=1e-6)
        gap = attributions.sum() - (item["probability"] - item["baseline_probability"])
        assert abs(gap) <= explaining.COMPLETENESS_TOLERANCE


def test_gradient_with_a_label_or_an_index_target(shipped_client):
    model = _model(shipped_client, "digits-cnn")
    batch = np.asarray([ZERO_CNN], np.float32)
    _, expected = nnlib.probability_gradient(model.network, batch, 6, head=model.output)
    for target in ("6", 6):
        response = shipped_client.post("/models/digits-cnn/explain", json={
            "inputs": [ZERO_CNN], "method": "gradient", "target": target})
        assert response.status_code == 200, response.text
        item = response.json()["explanations"][0]
        assert (item["label"], item["class_index"]) == ("6", 6)
        assert "baseline_probability" not in item and response.json()["steps"] is None
        np.testing.assert_allclose(item["attributions"], expected[0], rtol=1e-6, atol=1e-12)


def test_explain_uses_the_default_model_and_a_baseline(shipped_client):
    baseline = [8.0] * 64
    response = shipped_client.post("/explain", json={
        "inputs": [ZERO_MLP], "baseline": baseline, "steps": 256, "target": "0"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "digits-mlp" and body["steps"] == 256
    item = body["explanations"][0]
    model = _model(shipped_client, "digits-mlp")
    p_baseline = local_probabilities(model, [baseline])[0, 0]
    assert item["baseline_probability"] == pytest.approx(float(p_baseline), rel=1e-5)
    assert sum(item["attributions"]) == pytest.approx(item["probability"] - p_baseline,
                                                      abs=explaining.COMPLETENESS_TOLERANCE)


CNN = "/models/digits-cnn/explain"


def test_a_flat_baseline_is_the_nested_one(shipped_client):
    nested = [[row * 2 for row in range(8)] for _ in range(8)]
    flat = [value for row in nested for value in row]
    answers = [shipped_client.post(CNN, json={"inputs": [ZERO_CNN], "baseline": baseline,
                                              "steps": 16}).json()
               for baseline in (nested, flat)]
    assert answers[0] == answers[1] and "explanations" in answers[0]


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    # what predict refuses, refused the same way
    (CNN, '{"inputs": [', 400, "not valid JSON"),
    (CNN, '{"inputs": [[NaN]]}', 400, "NaN and Infinity are not JSON numbers"),
    (CNN, "[1, 2]", 422, "must be a JSON object"),
    (CNN, '{"inputs": []}', 422, "the batch is empty"),
    (CNN, '{"inputs": [[1, 2, 3]]}', 422, "sample 0 has shape [3]"),
    (CNN, '{"inputs": [["a"]]}', 422, "is a string, not a number"),
    (CNN, '{"inputs": [[true]]}', 422, "is a boolean"),
    (CNN, '{"inputs": [[1e39]]}', 422, "sample 0"),
    (CNN, '{"inputs": [[1]], "model": "digits-mlp"}', 422, "the body names model"),
    (CNN, '{"inputs": [[1]], "top_k": 3}', 422, "top_k"),
    ("/models/nope/explain", '{"inputs": [[1]]}', 404, "model 'nope' is not loaded"),
    # what explain adds
    (CNN, '{"inputs": [ZERO], "target": "seven"}', 422, "target 'seven' is not a label"),
    (CNN, '{"inputs": [ZERO], "target": 10}', 422, "target index 10 is out of range"),
    (CNN, '{"inputs": [ZERO], "target": -1}', 422, "target index -1 is out of range"),
    (CNN, '{"inputs": [ZERO], "target": 1.5}', 422, "target"),
    (CNN, '{"inputs": [ZERO], "method": "shap"}', 422, "unknown method 'shap'"),
    (CNN, '{"inputs": [ZERO], "steps": 0}', 422, "steps must be between 1 and 1024"),
    (CNN, '{"inputs": [ZERO], "steps": 1025}', 422, "steps must be between 1 and 1024"),
    (CNN, '{"inputs": [ZERO], "steps": "9"}', 422, "steps"),
    (CNN, '{"inputs": [ZERO], "baseline": [1, 2]}', 422, "baseline has shape [2]"),
    (CNN, '{"inputs": [ZERO], "baseline": [[1, 2], [3]]}', 422, "baseline: ragged rows"),
    (CNN, '{"inputs": [ZERO], "baseline": 3}', 422, "baseline"),
    (CNN, '{"inputs": [ZERO], "method": "gradient", "steps": 4}', 422,
     "apply to method 'integrated_gradients' only"),
    (CNN, '{"inputs": [ZERO], "method": "gradient", "baseline": ZERO}', 422,
     "apply to method 'integrated_gradients' only"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(shipped_client, path, body, status, words):
    body = body.replace("ZERO", str(ZERO_CNN))
    response = post_raw(shipped_client, path, body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_a_body_that_is_not_json_is_415(shipped_client):
    response = post_raw(shipped_client, CNN, "x", **{"content-type": "text/plain"})
    assert response.status_code == 415


def test_work_is_bounded_by_the_setting(make_client, shipped_dir):
    client = make_client(model_dir=str(shipped_dir), explain_max_work=256)
    four = {"inputs": [ZERO_CNN] * 4}
    assert client.post(CNN, json={**four, "steps": 64}).status_code == 200  # 256
    response = client.post(CNN, json={**four, "steps": 65})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "the explanation needs 260 gradient evaluations (4 samples x 65 steps); at most 256 "
        "are allowed (NNSERVE_EXPLAIN_MAX_WORK): send fewer samples or steps")
    gradients = client.post(CNN, json={"inputs": [ZERO_CNN] * 257, "method": "gradient"})
    assert gradients.status_code == 422 and "257 gradient evaluations" in gradients.text


def test_large_work_runs_in_a_worker_thread(shipped_client, monkeypatch):
    calls = []
    run_sync = dataplane_module.to_thread.run_sync

    async def counting(function, *args):
        calls.append(function.__name__)
        return await run_sync(function, *args)

    monkeypatch.setattr(dataplane_module.to_thread, "run_sync", counting)
    assert shipped_client.post(CNN, json={"inputs": [ZERO_CNN], "method": "gradient"}
                               ).status_code == 200
    assert calls == []  # 64 numbers: inline
    assert shipped_client.post(CNN, json={"inputs": [ZERO_CNN]}).status_code == 200
    assert calls == ["explain"]  # 129 points of 64 numbers: off the event loop


def test_explain_needs_the_api_key_when_one_is_set(make_client, shipped_dir):
    client = make_client(model_dir=str(shipped_dir), api_key="s3cret")
    body = {"inputs": [ZERO_CNN]}
    missing = client.post(CNN, json=body)
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
    assert client.post(CNN, json=body, headers={"Authorization": "Bearer nope"}
                       ).status_code == 401
    assert client.post(CNN, json=body, headers={"Authorization": "Bearer s3cret"}
                       ).status_code == 200


def test_metrics_count_explanations_per_model_and_method(shipped_client):
    before = shipped_client.get("/metrics").text
    shipped_client.post(CNN, json={"inputs": [ZERO_CNN, ZERO_CNN]})
    shipped_client.post(CNN, json={"inputs": [ZERO_CNN], "method": "gradient"})
    shipped_client.post(CNN, json={"inputs": [ZERO_CNN], "method": "nope"})
    after = shipped_client.get("/metrics").text

    def delta(name, **labels):
        return _sample_value(after, name, **labels) - _sample_value(before, name, **labels)

    ig = {"model": "digits-cnn", "method": "integrated_gradients"}
    assert delta("nnserve_explanations_total", **ig) == 1
    assert delta("nnserve_explanation_samples_total", **ig) == 2
    assert delta("nnserve_explanations_total", model="digits-cnn", method="gradient") == 1
    assert delta("nnserve_explanation_duration_seconds_count", model="digits-cnn") == 2
    assert delta("nnserve_http_requests_total", method="POST", route="/models/{name}/explain",
                 status="422") == 1


def test_openapi_documents_the_explain_routes(shipped_client):
    paths = shipped_client.get("/openapi.json").json()["paths"]
    for path in ("/explain", "/models/{name}/explain"):
        operation = paths[path]["post"]
        assert "target" in operation["requestBody"]["content"]["application/json"]["schema"][
            "properties"]
        assert {"401", "404", "422"} <= set(operation["responses"])


# --- any JSON value in the explain fields: 200 or 4xx, never 5xx ----------------------------


@pytest.fixture(scope="module")
def module_client(shipped_dir):
    import warnings

    from app.config import Settings
    from app.main import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(create_app(Settings(model_dir=str(shipped_dir), explain_max_work=512)),
                    raise_server_exceptions=False) as client:
        yield client


def test_any_json_in_the_explain_fields_is_answered_or_refused(module_client):
    from hypothesis import given
    from hypothesis import strategies as st

    from tests.app.test_properties import LIGHT, json_values

    numbers = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-20, 20)
    field_values = {
        "target": json_values | st.integers(-3, 12) | st.sampled_from(["0", "9", "x"]),
        "method": json_values | st.sampled_from(["gradient", "integrated_gradients"]),
        "steps": json_values | st.integers(-2, 1100),
        "baseline": json_values | st.lists(numbers, min_size=64, max_size=64)
        | st.lists(numbers, max_size=70),
    }

    @LIGHT
    @given(st.fixed_dictionaries({}, optional=field_values))
    def check(fields):
        response = module_client.post(CNN, json={"inputs": [ZERO_CNN], **fields})
        assert response.status_code in (200, 422), (fields, response.text)
        body = response.json()
        if response.status_code == 422:
            assert body["detail"]
            return
        for item in body["explanations"]:
            assert np.isfinite(item["attributions"]).all()
            assert sum(item["probabilities"]) == pytest.approx(1, abs=1e-4)

    check()
