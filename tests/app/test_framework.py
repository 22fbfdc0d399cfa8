"""Every request goes through FastAPI's own routing, dependencies and exception handlers."""

from __future__ import annotations

import re
from typing import Annotated

import numpy as np
import pytest
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError

import nnlib
from app.api.native import NativeRoute
from app.api.routing import takes_only_request
from app.config import Settings
from app.errors import InferenceError
from app.registry import Registry, ServedModel
from tests.helpers import fragile_model, tiny_mlp

SAMPLE = [1] * 64
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE}]}


def deny() -> None:
    raise HTTPException(403, "denied by a dependency")


@pytest.mark.parametrize("cors", [None, "https://app.example"])
@pytest.mark.parametrize(("path", "body"), [
    ("/predict", {"inputs": [SAMPLE]}),
    ("/models/mlp/predict", {"inputs": [SAMPLE]}),
    ("/v2/models/mlp/infer", V2_BODY),
])
def test_a_dependency_added_to_the_app_is_enforced_on_every_inference_route(
        make_client, cors, path, body):
    # Before the dataplane, /predict skipped FastAPI's dependency solving unless CORS was on.
    client = make_client(dependencies=[Depends(deny)],
                         **({"cors_origins": cors} if cors else {}))
    response = client.post(path, json=body)
    assert response.status_code == 403, response.text
    assert "denied by a dependency" in response.text
    assert "x-request-id" in response.headers


@pytest.fixture
def fragile_client(make_client):
    return make_client(registry=Registry([fragile_model()]))


@pytest.mark.parametrize(("path", "body", "shape"), [
    ("/predict", {"inputs": [SAMPLE] * 3}, "detail"),
    ("/v2/models/fragile/infer",
     {"inputs": [{**V2_BODY["inputs"][0], "shape": [3, 64], "data": SAMPLE * 3}]}, "error"),
])
def test_a_500_carries_the_request_id(fragile_client, path, body, shape):
    response = fragile_client.post(path, json=body, headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert response.json() == {shape: "internal server error"}
    assert response.headers["x-request-id"] == "trace-500"
    # The server goes on: the same model answers a batch it does not fail on.
    assert fragile_client.post("/predict", json={"inputs": [SAMPLE] * 2}).status_code == 200


def test_a_413_carries_cors_headers(make_client):
    client = make_client(cors_origins="https://app.example", max_body_bytes=100)
    response = client.post("/predict", content=b"{" + b" " * 200 + b"}",
                           headers={"Origin": "https://app.example",
                                    "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "NNSERVE_MAX_BODY_BYTES" in response.json()["detail"]


def test_a_trailing_slash_is_no_redirect_to_the_host_sent(client):
    response = client.post("/predict/", json={"inputs": [SAMPLE]},
                           headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


def test_unversioned_v2_routes_take_no_version_from_the_query(client):
    response = client.post("/v2/models/mlp/infer?version=nope", json=V2_BODY)
    assert response.status_code == 200, response.text


def test_error_statuses_follow_each_protocols_table(make_client):
    # A network that overflows: the input is unusable for it. Native 422, V2 400 (Triton).
    linear = nnlib.Linear(64, 10, rng=0)
    linear.weight[...] = 1e30
    model = ServedModel.build(nnlib.Sequential(linear, nnlib.Softmax()), tiny_mlp("raw")[1])
    client = make_client(registry=Registry([model]))
    big = [1e30] * 64
    native = client.post("/predict", json={"inputs": [big]})
    v2 = client.post("/v2/models/raw/infer", json={"inputs": [{**V2_BODY["inputs"][0],
                                                               "data": big}]})
    assert native.status_code == 422 and "finite" in native.json()["detail"]
    assert v2.status_code == 400 and "finite" in v2.json()["error"]
    assert issubclass(InferenceError, Exception)


def test_a_non_ascii_api_key_matches_when_sent_in_utf8(make_client):
    client = make_client(api_key="clé-ß-🔑", default_model="mlp")
    sent = "Bearer clé-ß-🔑".encode()
    response = client.post("/predict", json={"inputs": [SAMPLE]},
                           headers=[(b"authorization", sent)])
    assert response.status_code == 200, response.text
    wrong = client.post("/predict", json={"inputs": [SAMPLE]},
                        headers=[(b"authorization", "Bearer clé".encode())])
    assert wrong.status_code == 401


@pytest.mark.parametrize("key", [" secret", "secret ", "sec\nret", "tab\tkey"])
def test_api_keys_no_header_can_carry_are_refused_at_start(key):
    with pytest.raises(ValidationError, match="API key"):
        Settings(api_key=key)


def test_batch_values_are_checked_once_by_the_dataplane(client, monkeypatch):
    # The native codec decodes; the dataplane checks. Both protocols refuse alike.
    native = client.post("/predict", json={"inputs": [[3.5e38] * 64]})
    v2 = client.post("/v2/models/mlp/infer", json={"inputs": [{**V2_BODY["inputs"][0],
                                                               "datatype": "FP64",
                                                               "data": [3.5e38] * 64}]})
    assert native.status_code == 422 and "float32 range" in native.json()["detail"]
    assert v2.status_code == 400 and "float32 range" in v2.json()["error"]
    assert np.float32(3.4e38) < np.finfo(np.float32).max


# --- routes that need nothing resolved ------------------------------------------------------


def _route(path, endpoint, **options) -> APIRoute:
    return APIRoute(path, endpoint, methods=["POST"], **options)


async def _plain(request: Request, name: str) -> Response:
    return Response(name)


async def _pattern(request: Request, name: Annotated[str, Path(pattern="^a")]) -> Response:
    return Response(name)


async def _query(request: Request, top: int) -> Response:
    return Response(str(top))


async def _returns_dict(request: Request) -> dict:
    return {}


def _sync(request: Request) -> Response:
    return Response()


@pytest.mark.parametrize(("endpoint", "options", "expected"), [
    (_plain, {}, True),
    (_plain, {"dependencies": [Depends(deny)]}, False),
    (_pattern, {}, False),  # FastAPI validates the pattern
    (_query, {}, False),  # and converts query values
    (_returns_dict, {}, False),  # and serialises what is not a Response
    (_sync, {}, False),  # and runs plain functions in a thread
])
def test_only_endpoints_that_need_nothing_resolved_skip_fastapis_handler(
        endpoint, options, expected):
    assert takes_only_request(_route("/x/{name}", endpoint, **options).dependant) is expected


@pytest.mark.parametrize("api_key", [None, "secret"])
def test_the_inference_routes_need_nothing_resolved_unless_guarded(make_client, api_key):
    client = make_client(**({"api_key": api_key} if api_key else {}))
    routes = {route.path: route for route in client.app.routes if isinstance(route, APIRoute)}
    for path in ("/predict", "/models/{name}/predict", "/v2/models/{name}/infer"):
        # With an API key, FastAPI solves the key's dependency on every request.
        assert takes_only_request(routes[path].dependant) is (api_key is None), path


def test_a_constrained_path_parameter_is_still_validated_by_fastapi():
    app = FastAPI()
    app.router.add_api_route("/x/{name}", _pattern, methods=["POST"],
                             route_class_override=NativeRoute)
    with TestClient(app) as client:
        assert client.post("/x/abc").text == "abc"
        assert client.post("/x/bcd").status_code == 422


def test_trying_post_routes_first_changes_which_route_answers_no_request(client):
    """Every route still answers its own paths: no other template of the same method takes
    a path of it, whatever their order (create_app puts the POST routes first)."""
    from starlette.routing import Match

    routes = client.app.router.routes
    assert [route.path for route in routes[:2]] == ["/predict", "/v2/models/{name}/infer"]
    for route in routes:
        path = re.sub(r"{[^}]+}", "x", route.path)
        for method in getattr(route, "methods", None) or ():
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            answering = next(candidate for candidate in routes
                             if candidate.matches(scope)[0] == Match.FULL)
            assert answering is route, f"{method} {path}: {answering.path} answers it"
