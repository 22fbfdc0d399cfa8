"""The API key and CORS, in process."""

from __future__ import annotations

import pytest

from tests.helpers.http import ZERO_MLP

# --- API key -----------------------------------------------------------------------------------


@pytest.fixture
def keyed(make_client):
    return make_client(api_key="s3cret", default_model="mlp")


def test_api_key_missing_is_401(keyed):
    response = keyed.post("/predict", json={"inputs": [ZERO_MLP]})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "API key" in response.json()["detail"]


@pytest.mark.parametrize(
    "header", ["Bearer wrong", "Bearer s3cret2", "Basic czNjcmV0", "s3cret", "Bearer "]
)
def test_api_key_wrong_is_401(keyed, header):
    response = keyed.post(
        "/models/mlp/predict", json={"inputs": [ZERO_MLP]}, headers={"Authorization": header}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_api_key_right_is_served(keyed):
    response = keyed.post(
        "/predict", json={"inputs": [ZERO_MLP]}, headers={"Authorization": "Bearer s3cret"}
    )
    assert response.status_code == 200


def test_api_key_leaves_health_readiness_metrics_and_catalogue_open(keyed):
    for path in ("/health", "/ready", "/metrics", "/models", "/models/mlp"):
        assert keyed.get(path).status_code == 200, path


def test_api_key_on_v2_infer_answers_error_shape(keyed):
    response = keyed.post("/v2/models/mlp/infer", json={"inputs": []})
    assert response.status_code == 401
    assert set(response.json()) == {"error"}


def test_empty_api_key_means_no_key(make_client):
    client = make_client(api_key="", default_model="mlp")
    assert client.post("/predict", json={"inputs": [ZERO_MLP]}).status_code == 200


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_preflight_for_an_allowed_origin(make_client):
    client = make_client(cors_origins="https://app.example")
    response = client.options(
        "/predict",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    answer = client.post(
        "/predict", json={"inputs": [ZERO_MLP]}, headers={"Origin": "https://app.example"}
    )
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_cors_is_off_by_default(client):
    response = client.post(
        "/predict", json={"inputs": [ZERO_MLP]}, headers={"Origin": "https://app.example"}
    )
    assert "access-control-allow-origin" not in response.headers


