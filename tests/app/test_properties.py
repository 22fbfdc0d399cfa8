"""Hypothesis properties of the native request models: 200 or 4xx, never 5xx.

Whatever JSON value a client puts in ``inputs`` or ``top_k`` (or as the whole body), the
answer is a 200 or a 4xx with a readable ``detail``; and every 200 carries, for every
sample, finite probabilities in [0, 1] that sum to 1, with the label of their argmax.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from app.registry import Registry, ServedModel
from tests.helpers import tiny_cnn, tiny_mlp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note about its own test client
    from fastapi.testclient import TestClient

N_CLASSES = 10
MAX_BATCH = 16
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Fixed, seedless runs: derandomize makes every run draw the same examples, and no example
# database means nothing from an earlier run changes what this one tries.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# For the properties whose space is small or whose failures show early.
LIGHT = settings(PROPERTY, max_examples=100)

# --- strategies -----------------------------------------------------------------------------

# Every JSON value Python's json module writes (integers of any size included: they are
# valid JSON even when no float can hold them).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=40,
)
# Pixels as clients send them, and the values at or past the edges of float32, double and
# int64 that one odd pixel may hold.
ordinary = st.integers(0, 16) | st.floats(-1e6, 1e6, allow_nan=False)
extreme = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            FLOAT32_MAX,
            -FLOAT32_MAX,
            1e38,
            -1e38,
            3.5e38,
            1e308,
            -1e308,
            5e-324,
            2**63,
            2**64,
            -(2**63) - 1,
            10**400,
        ]
    )
    | st.integers()
)
# One value that is not a number, to hide among numbers.
not_numbers = st.none() | st.booleans() | st.text(max_size=4) | st.just([]) | st.just({})


def _replace_one(values: list, position: int, value: object) -> list:
    position %= len(values)
    return [*values[:position], value, *values[position + 1 :]]


def samples(length: int) -> st.SearchStrategy:
    """Flat samples of ``length`` pixels, some with one extreme value or one non-number."""
    clean = st.lists(ordinary, min_size=length, max_size=length)
    return clean | st.builds(_replace_one, clean, st.integers(0, length - 1), extreme | not_numbers)


def nested_8x8() -> st.SearchStrategy:
    """8x8 samples (the CNN's shape), sometimes ragged."""
    row = samples(8)
    ragged = st.lists(ordinary, min_size=0, max_size=10)
    return st.lists(row, min_size=8, max_size=8) | st.lists(row | ragged, min_size=1, max_size=9)


# Inputs close to valid reach the network; any JSON value exercises the validation.
inputs_strategy = (
    json_values
    | st.lists(samples(64), min_size=0, max_size=MAX_BATCH + 2)
    | st.lists(nested_8x8(), min_size=1, max_size=3)
    | st.lists(samples(64) | nested_8x8() | samples(63), min_size=1, max_size=3)
)
top_k_strategy = json_values | st.integers(-3, N_CLASSES + 3)

# --- the client -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    """One in-process app serving the tiny "mlp" (default, [64]) and "cnn" ([8, 8])."""
    registry = Registry(
        [ServedModel.build(*tiny_mlp()), ServedModel.build(*tiny_cnn())], default="mlp"
    )
    app = create_app(Settings(max_batch=MAX_BATCH), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post(client, path: str, body: object):
    """POST ``body`` as JSON the way Python's json module writes it (big integers too)."""
    return client.post(
        path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


def check_answer(response, batch_size: int | None = None, top_k: int | None = None) -> None:
    """A 4xx with a readable detail, or a 200 whose every row is a probability distribution."""
    status = response.status_code
    assert status == 200 or 400 <= status < 500, (status, response.text[:500])
    body = response.json()
    if status != 200:
        assert isinstance(body.get("detail"), str) and body["detail"], body
        return
    labels = body["labels"]
    assert len(labels) == N_CLASSES
    predictions = body["predictions"]
    if batch_size is not None:
        assert len(predictions) == batch_size
    assert 1 <= len(predictions) <= MAX_BATCH
    for prediction in predictions:
        probs = prediction["probabilities"]
        assert len(probs) == N_CLASSES
        assert all(isinstance(p, float) and math.isfinite(p) and 0 <= p <= 1 for p in probs)
        assert math.fsum(probs) == pytest.approx(1, abs=1e-4)
        assert prediction["class_index"] == int(np.argmax(probs))
        assert prediction["label"] == labels[prediction["class_index"]]
        if top_k is None:
            assert prediction.get("top_k") is None
        else:
            ranked = prediction["top_k"]
            assert len(ranked) == top_k
            ranked_probs = [entry["probability"] for entry in ranked]
            assert ranked_probs == sorted(ranked_probs, reverse=True)
            assert ranked[0]["label"] == prediction["label"] or ranked_probs[0] == max(probs)
            for entry in ranked:
                assert entry["probability"] == probs[labels.index(entry["label"])]


# --- properties -----------------------------------------------------------------------------

ROUTES = ["/predict", "/models/mlp/predict", "/models/cnn/predict"]


@PROPERTY
@given(inputs=inputs_strategy, route=st.sampled_from(ROUTES))
@example(inputs=[[0] * 64], route="/predict")
@example(inputs=[[[0] * 8] * 8], route="/models/cnn/predict")
@example(inputs=[[FLOAT32_MAX] * 64], route="/predict")
@example(inputs=[[-FLOAT32_MAX] * 64, [FLOAT32_MAX] * 64], route="/models/cnn/predict")
@example(inputs=[[10**400] * 64], route="/predict")
@example(inputs=[[True] * 64], route="/predict")
@example(inputs=[[0] * 64] * (MAX_BATCH + 1), route="/predict")
@example(inputs=[], route="/predict")
def test_any_inputs_get_probabilities_or_a_4xx(client, inputs, route):
    """Any JSON value in ``inputs``: 200 with distributions, or a 4xx with a message."""
    response = post(client, route, {"inputs": inputs})
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: the 200 share
    check_answer(response, batch_size=len(inputs) if isinstance(inputs, list) else None)
    if response.status_code == 200:
        assert isinstance(inputs, list) and inputs


@PROPERTY
@given(top_k=top_k_strategy, route=st.sampled_from(ROUTES))
@example(top_k=0, route="/predict")
@example(top_k=N_CLASSES, route="/predict")
@example(top_k=N_CLASSES + 1, route="/predict")
@example(top_k=True, route="/predict")
@example(top_k=2.0, route="/predict")
@example(top_k=2**64, route="/predict")
@example(top_k="3", route="/predict")
def test_any_top_k_is_served_only_in_range(client, top_k, route):
    """Any JSON value in ``top_k``: a 200 exactly for the integers 1..number of classes."""
    sample = [[1] * 8] * 8 if route.endswith("cnn/predict") else [1] * 64
    response = post(client, route, {"inputs": [sample, sample], "top_k": top_k})
    in_range = type(top_k) is int and 1 <= top_k <= N_CLASSES
    event(f"status {response.status_code}")
    if in_range:
        assert response.status_code == 200, response.text
    check_answer(response, batch_size=2, top_k=top_k if in_range else None)
    if response.status_code == 200:
        assert in_range or top_k is None


@LIGHT
@given(body=json_values, route=st.sampled_from(ROUTES))
def test_any_json_body_gets_a_4xx(client, body, route):
    """A JSON body that is not a request object with valid inputs is refused with a 4xx."""
    assume(not (isinstance(body, dict) and "inputs" in body))
    response = post(client, route, body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert isinstance(response.json()["detail"], str)


@LIGHT
@given(
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda key: key not in ("inputs", "model", "top_k")),
        json_values,
        min_size=1,
        max_size=3,
    ),
)
def test_unknown_fields_are_refused(client, extra):
    """A request with fields the model does not define is a 4xx (the model forbids extras)."""
    response = post(client, "/predict", {"inputs": [[0] * 64], **extra})
    assert 400 <= response.status_code < 500, response.text


@LIGHT
@given(
    model=json_values
    | st.sampled_from(["mlp", "cnn", "../mlp", "mlp.joblib", "/etc/passwd", "MLP", " mlp"])
)
def test_any_model_name_is_a_lookup_or_a_4xx(client, model):
    """Any JSON value in ``model``: the loaded model's answer, or a 4xx (404 for a string)."""
    response = post(client, "/predict", {"inputs": [[0] * 64], "model": model})
    if model == "mlp":
        assert response.status_code == 200
    elif model == "cnn":
        # 64 flat numbers are the CNN's 8x8 in flat form: served too.
        assert response.status_code == 200
    elif isinstance(model, str):
        assert response.status_code == 404, response.text
    check_answer(response)


# Tokens Python's json module reads but JSON does not allow, and numbers that overflow a
# double: spliced into an otherwise valid body as raw text.
RAW_TOKENS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e309",
    "-1e309",
    "1" + "0" * 400,
    "0x10",
    "+1",
    ".5",
    "1.",
    "01",
    "1e",
    "--1",
    "null",
    "true",
    '"1"',
    "[]",
    "{}",
    "\u0661",
    "1_000",
]


@LIGHT
@given(
    token=st.sampled_from(RAW_TOKENS), position=st.integers(0, 63), route=st.sampled_from(ROUTES)
)
def test_non_json_numbers_are_refused(client, token, position, route):
    """A literal JSON forbids (NaN, Infinity, hex...) or a non-number anywhere: a 4xx."""
    values = ["1"] * 64
    values[position] = token
    body = '{"inputs": [[' + ", ".join(values) + "]]}"
    response = client.post(
        route, content=body.encode(), headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, (token, response.status_code, response.text)
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("depth", [33, 200, 1100, 100_000])
def test_deeply_nested_inputs_are_refused(client, depth):
    """Nesting far beyond any sample's rank is a 4xx, not a recursion error."""
    body = '{"inputs": [' + "[" * depth + "1" + "]" * depth + "]}"
    response = client.post(
        "/predict", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text[:300]


def test_the_server_still_serves_after_the_properties(client):
    """After all of the above, a plain request still gets its answer."""
    check_answer(post(client, "/predict", {"inputs": [[3] * 64]}), batch_size=1)
