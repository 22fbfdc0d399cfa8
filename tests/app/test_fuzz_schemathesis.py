"""Schemathesis against the service's own OpenAPI document, in process (ASGI).

Every operation gets at least 100 generated requests, valid and invalid, from a fixed seed.
Every answer is checked: no 5xx (``not_a_server_error``); where the document declares a
schema for the status, a body that conforms to it (``response_schema_conformance``); and a
status and content type the document declares for the operation.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.main import create_app
from app.registry import Registry, ServedModel
from tests.helpers import tiny_cnn, tiny_mlp

SEED = 20260101
MAX_EXAMPLES = 100
# The two the service must pass, plus the two that keep the document honest: every status
# and content type the service answers is one the document declares.
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]

# The tiny networks under the shipped names, so the document's own examples (a digit for
# "digits-mlp") reach a model and exercise the 200 path, not only the 404 one.
_REGISTRY = Registry(
    [ServedModel.build(*tiny_mlp("digits-mlp")), ServedModel.build(*tiny_cnn("digits-cnn"))],
    default="digits-mlp",
)
# A small body limit and batch limit put the 413 and batch-size paths within reach of the
# generator; the checks are the same whatever the limits.
APP = create_app(Settings(max_body_bytes=64 * 1024, max_batch=64), registry=_REGISTRY)

_CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=_CONFIG)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Point a share of the generated paths at loaded models and their real version."""
    # Random names only ever reach the 404 branch; the decoders and the networks sit
    # behind a name that exists. Other generated values (bad types included) are kept.
    if not isinstance(path_parameters, dict) or "name" not in path_parameters:
        return st.just(path_parameters)
    real = [{**path_parameters, "name": name} for name in ("digits-mlp", "digits-cnn")]
    if "version" in path_parameters:
        real = [{**params, "version": "1"} for params in real]
    return st.sampled_from([path_parameters, path_parameters, *real])


@pytest.fixture(autouse=True)
def _fresh_start():
    """Undo the draining flag a previous test's lifespan shutdown left on the shared app."""
    # Schemathesis ends the app's lifespan after every test and starts it again for the
    # next; the lifespan marks the app as draining when it ends and nothing clears it at
    # the next start, so /ready would answer 503 for every operation after the first.
    APP.state.dataplane.draining = False


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # no example database: the same seed always replays the same run
    suppress_health_check=list(HealthCheck),
)
def test_operation(case):
    """No generated request gets a 5xx, and documented answers match their schemas."""
    case.call_and_validate(checks=CHECKS)


def test_document_covers_every_route():
    """The document lists the native routes with their error answers (413, 422 at least)."""
    paths = APP.openapi()["paths"]
    for path in ("/predict", "/models/{name}/predict"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "413", "422"} <= set(responses), (path, sorted(responses))
    for path in (
        "/models",
        "/models/{name}",
        "/health",
        "/ready",
        "/metrics",
        "/v2/models/{name}/infer",
    ):
        assert path in paths, path
