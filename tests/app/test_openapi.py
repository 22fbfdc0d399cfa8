"""The OpenAPI document: every route described, and its examples accepted."""

from __future__ import annotations

from app.registry import Registry
from tests.helpers.http import ZERO_MLP

# --- OpenAPI ---------------------------------------------------------------------------


def test_openapi_documents_every_native_route(client):
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path, method in [
        ("/predict", "post"),
        ("/models/{name}/predict", "post"),
        ("/models", "get"),
        ("/models/{name}", "get"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    ]:
        operation = paths[path][method]
        assert operation["summary"] and operation["responses"]["200"], (path, method)
    for path in ("/predict", "/models/{name}/predict"):
        operation = paths[path]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        assert body["schema"]["properties"]["inputs"]["type"] == "array"
        assert body["examples"]["flat"]["value"]["inputs"] == [ZERO_MLP]
        answer = operation["responses"]["200"]["content"]["application/json"]
        assert answer["schema"]["$ref"].endswith("/PredictResponse")
        assert answer["example"]["predictions"][0]["label"] == "0"
        for status in ("401", "404", "413", "422"):
            assert status in operation["responses"]
        assert operation["security"]
    assert "PredictResponse" in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_openapi_examples_are_accepted_by_the_service(make_client, served_models):
    from app.registry import ServedModel
    from tests.helpers import tiny_cnn, tiny_mlp

    registry = Registry(
        [ServedModel.build(*tiny_mlp("digits-mlp")), ServedModel.build(*tiny_cnn("digits-cnn"))]
    )
    client = make_client(registry=registry)
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    for example in body["content"]["application/json"]["examples"].values():
        assert client.post("/predict", json=example["value"]).status_code == 200
