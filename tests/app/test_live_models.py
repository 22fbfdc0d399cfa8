"""Live models in process: versions, routing.toml, reload, the repository API, admin key."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from app.registry import ServedModel
from app.repository import (
    READY,
    UNAVAILABLE,
    UNLOADING,
    ModelRouting,
    Repository,
    parse_routing,
    stable_fraction,
    version_key,
)
from tests.helpers import ROOT, tiny_mlp
from tests.helpers.http import ZERO_MLP
from tests.helpers.versions import save_version, write_routing

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
def folder(tmp_path):
    """A model folder with mlp version 1 at the top and version 2 in a sub-folder."""
    models = tmp_path / "models"
    save_version(models / "mlp.joblib", "1")
    save_version(models / "mlp" / "2.joblib", "2")
    return models


@pytest.fixture
def live(make_client, folder):
    """A client of an app serving ``folder``, with the admin key set and no polling."""
    return make_client(model_dir=folder, poll_interval=0, admin_key="admin-secret")


def predict(client, path="/models/mlp/predict", **headers):
    response = client.post(path, json={"inputs": [ZERO_MLP]}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == response.json()["version"]
    return response.json()["version"]


def load(client, name="mlp", **options):
    return client.post(f"/v2/repository/models/{name}/load", headers=ADMIN, **options)


def index(client):
    response = client.post("/v2/repository/index")
    assert response.status_code == 200, response.text
    return response.json()


# --- versions ----------------------------------------------------------------------------


def test_version_order_is_numeric_for_dotted_integers_then_text():
    versions = ["rc", "10", "2", "1.10", "1.2", "1", "2026-beta", "1.0.0"]
    assert sorted(versions, key=version_key) == ["1", "1.0.0", "1.2", "1.10", "2", "10",
                                                  "2026-beta", "rc"]


def test_every_version_serves_and_the_highest_is_the_default(live):
    models = live.get("/models").json()["models"]
    assert [(m["name"], m["version"], m["default_version"]) for m in models] == [
        ("mlp", "2", "2")]
    assert [v["version"] for v in models[0]["versions"]] == ["1", "2"]
    assert predict(live) == "2"
    assert predict(live, "/predict") == "2"
    assert predict(live, "/models/mlp/versions/1/predict") == "1"
    assert predict(live, "/models/mlp/versions/2/predict") == "2"
    # The two versions are different networks, not one network with two labels.
    one = live.post("/models/mlp/versions/1/predict", json={"inputs": [ZERO_MLP]}).json()
    two = live.post("/models/mlp/versions/2/predict", json={"inputs": [ZERO_MLP]}).json()
    assert one["predictions"][0]["probabilities"] != two["predictions"][0]["probabilities"]


def test_explanations_address_versions_like_predictions(live):
    body = {"inputs": [ZERO_MLP], "method": "gradient", "target": 0}
    answers = {}
    for path, version in (("/models/mlp/explain", "2"),
                          ("/models/mlp/versions/1/explain", "1"),
                          ("/models/mlp/versions/2/explain", "2")):
        response = live.post(path, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == version
        assert response.headers["x-model-version"] == version
        answers[path] = response.json()["explanations"][0]["attributions"]
    # Two networks, two gradients: the path chose the network, not only the label.
    assert answers["/models/mlp/versions/1/explain"] != answers["/models/mlp/explain"]
    assert answers["/models/mlp/versions/2/explain"] == answers["/models/mlp/explain"]
    missing = live.post("/models/mlp/versions/3/explain", json=body)
    assert missing.status_code == 404 and "1, 2" in missing.json()["detail"]


def test_v2_addresses_versions_and_says_which_answered(live):
    assert live.get("/v2/models/mlp").json()["versions"] == ["1", "2"]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                        "data": ZERO_MLP}]}
    for path, version in (("/v2/models/mlp/infer", "2"),
                          ("/v2/models/mlp/versions/1/infer", "1")):
        response = live.post(path, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == version
        assert response.headers["x-model-version"] == version
    assert live.get("/v2/models/mlp/versions/1/ready").status_code == 200
    assert live.get("/v2/models/mlp/versions/7/ready").status_code == 404


def test_an_unknown_version_is_a_404_naming_the_known_ones(live):
    response = live.post("/models/mlp/versions/3/predict", json={"inputs": [ZERO_MLP]})
    assert response.status_code == 404
    assert "'3'" in response.json()["detail"] and "1, 2" in response.json()["detail"]
    v2 = live.get("/v2/models/mlp/versions/..%2F..%2Fetc/ready")
    assert v2.status_code == 404 and "error" in v2.json()


def test_two_files_of_one_version_report_the_second(make_client, folder):
    save_version(folder / "mlp" / "copy.joblib", "2")
    client = make_client(model_dir=folder, poll_interval=0)
    rows = [row for row in index(client) if row["state"] == UNAVAILABLE]
    assert len(rows) == 1 and rows[0]["version"] == "2"
    assert "mlp/copy.joblib" in rows[0]["reason"] and "already loaded" in rows[0]["reason"]
    assert predict(client) == "2"


# --- routing -----------------------------------------------------------------------------


ROUTING = """
[mlp]
default = "stable"
aliases = { stable = "1", canary = "2" }
weights = { "1" = 90, "2" = 10 }
"""


def test_aliases_are_accepted_wherever_a_version_is(make_client, folder):
    write_routing(folder, ROUTING)
    client = make_client(model_dir=folder, poll_interval=0)
    for _ in range(20):  # the catalogue shows the default version, not a weighted pick
        model = client.get("/models/mlp").json()
        assert model["version"] == "1"
    assert model["aliases"] == {"stable": "1", "canary": "2"}
    assert model["weights"] == {"1": 90.0, "2": 10.0} and model["default_version"] == "1"
    assert predict(client, "/models/mlp/versions/canary/predict") == "2"
    assert predict(client, "/models/mlp/versions/stable/predict") == "1"
    assert client.get("/v2/models/mlp/versions/canary/ready").status_code == 200
    missing = client.post("/models/mlp/versions/beta/predict", json={"inputs": [ZERO_MLP]})
    assert missing.status_code == 404 and "canary (alias of 2)" in missing.json()["detail"]


def test_a_routing_key_always_lands_on_the_same_version(make_client, folder):
    write_routing(folder, ROUTING)
    client = make_client(model_dir=folder, poll_interval=0)
    for key in ("alice", "bob", "carol", "dave"):
        seen = {predict(client, **{"X-Routing-Key": key}) for _ in range(20)}
        assert len(seen) == 1, (key, seen)


def test_the_unkeyed_split_follows_the_weights():
    routing = ModelRouting("1", {}, (("1", 90.0), ("2", 10.0)))
    rng = random.Random(12345)
    n = 2000
    canary = sum(routing.pick(None, rng) == "2" for _ in range(n))
    # Binomial(2000, 0.1): standard deviation 13.4; 4 of them either side.
    assert abs(canary - n * 0.1) <= 4 * (n * 0.1 * 0.9) ** 0.5
    keyed = sum(routing.pick(f"user-{i}", rng) == "2" for i in range(n))
    assert abs(keyed - n * 0.1) <= 4 * (n * 0.1 * 0.9) ** 0.5
    assert ModelRouting("1", {}, (("2", 100.0),)).pick("anyone", rng) == "2"


def test_the_routing_key_hash_is_the_same_in_every_process():
    keys = ["alice", "bob", "ünïcode", ""]
    here = [stable_fraction(key) for key in keys]
    code = ("import sys; from app.repository import stable_fraction; "
            f"import json; print(json.dumps([stable_fraction(k) for k in {keys!r}]))")
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=60, check=True).stdout
        assert json.loads(out) == here
    assert all(0 <= value < 1 for value in here) and len(set(here)) == len(here)


@pytest.mark.parametrize("text, words", [
    ("[mlp]\nweights = { \"1\" = 0, \"2\" = 0 }\n", "positive"),
    ("[mlp]\nweights = { \"1\" = -1, \"2\" = 5 }\n", ">= 0"),
    ("[mlp]\nweights = { \"1\" = true }\n", ">= 0"),
    ("[mlp]\nweight = { \"1\" = 1 }\n", "unknown keys"),
    ("[mlp]\nweights = { \"3\" = 1 }\n", "'3'"),
    ("[mlp]\naliases = { stable = \"9\" }\n", "'9'"),
    ("[mlp]\naliases = { \"2\" = \"1\" }\n", "not a version"),
    ("[mlp]\ndefault = \"7\"\n", "'7'"),
    ("[nope]\ndefault = \"1\"\n", "'nope' is not loaded"),
    ("mlp = 3\n", "must be a table"),
    ("[mlp\n", "refused"),
])
def test_a_bad_routing_file_is_refused_whole_and_the_last_good_stays(make_client, folder,
                                                                     text, words, caplog):
    write_routing(folder, ROUTING)
    client = make_client(model_dir=folder, poll_interval=0, admin_key="admin-secret")
    write_routing(folder, text)
    with caplog.at_level(logging.ERROR, logger="nnserve.registry"):
        assert load(client).status_code == 200
    listing = client.get("/models").json()
    assert words in listing["routing_error"], listing["routing_error"]
    assert listing["models"][0]["weights"] == {"1": 90.0, "2": 10.0}  # the last good file
    assert any("routing.toml refused" in r.getMessage() for r in caplog.records)


def test_a_bad_routing_file_written_while_a_model_is_unloaded_is_refused_at_its_load(
        make_client, folder):
    write_routing(folder, ROUTING)
    client = make_client(model_dir=folder, poll_interval=0, admin_key="admin-secret")
    assert client.post("/v2/repository/models/mlp/unload", headers=ADMIN).status_code == 200
    write_routing(folder, '[mlp]\nweights = { "9" = 1 }\n')
    assert load(client).status_code == 200  # the unload's scan could not check [mlp]
    listing = client.get("/models").json()
    assert "'9'" in listing["routing_error"]
    assert listing["models"][0]["aliases"] == {"stable": "1", "canary": "2"}


def test_parse_routing_keeps_each_part_valid_alone():
    versions = {"mlp": {"1", "2"}}
    routing = parse_routing({"mlp": {"weights": {"1": 1, "2": 3}}}, versions)["mlp"]
    assert routing.default == "2" and routing.weights == (("1", 1.0), ("2", 3.0))
    assert parse_routing({"gone": {"default": "1"}}, versions, ignored={"gone"}) == {}


# --- reload and the repository API -------------------------------------------------------


def test_a_new_version_serves_after_a_load_and_a_removed_one_stops(live, folder):
    save_version(folder / "mlp" / "3.joblib", "3")
    assert predict(live) == "2"  # nothing rescanned yet
    assert load(live).status_code == 200
    assert predict(live) == "3"
    (folder / "mlp.joblib").unlink()
    assert load(live).status_code == 200
    assert [v["version"] for v in live.get("/models/mlp").json()["versions"]] == ["2", "3"]
    response = live.post("/models/mlp/versions/1/predict", json={"inputs": [ZERO_MLP]})
    assert response.status_code == 404


def test_a_corrupt_file_keeps_the_version_it_replaces_serving(live, folder, caplog):
    path = folder / "mlp" / "2.joblib"
    good = path.read_bytes()
    before = live.post("/models/mlp/versions/2/predict", json={"inputs": [ZERO_MLP]}).json()
    path.write_bytes(good[: len(good) // 2])  # a half-copied file
    with caplog.at_level(logging.ERROR, logger="nnserve.registry"):
        assert load(live).status_code == 200
    after = live.post("/models/mlp/versions/2/predict", json={"inputs": [ZERO_MLP]}).json()
    assert after == before
    row = next(r for r in index(live) if r["version"] == "2")
    assert row["state"] == READY and "mlp/2.joblib" in row["reason"]
    assert any("skipping mlp/2.joblib" in r.getMessage() for r in caplog.records)
    metrics = live.get("/metrics").text
    assert 'nnserve_model_reloads_total{model="mlp",result="failure"}' in metrics
    path.write_bytes(good)
    os.utime(path, ns=(1, 1))  # another key than the corrupt file's, whatever the clock
    assert load(live).status_code == 200
    assert next(r for r in index(live) if r["version"] == "2")["reason"] == ""


def test_a_file_that_never_loaded_is_unavailable_with_its_reason(live, folder):
    (folder / "broken.joblib").write_bytes(b"not an artifact")
    assert load(live).status_code == 200
    row = next(r for r in index(live) if r["state"] == UNAVAILABLE)
    assert row["name"] == "broken" and "broken.joblib" in row["reason"]
    assert load(live, "broken").status_code == 400


def test_unload_stops_a_model_until_it_is_loaded_again(live):
    response = live.post("/v2/repository/models/mlp/unload", headers=ADMIN,
                         json={"parameters": {"unload_dependents": False}})
    assert response.status_code == 200, response.text
    assert live.post("/models/mlp/predict", json={"inputs": [ZERO_MLP]}).status_code == 404
    assert {row["state"] for row in index(live)} == {UNAVAILABLE}
    assert live.get("/ready").status_code == 503  # nothing serves
    assert load(live).status_code == 200
    assert predict(live) == "2"
    assert live.post("/v2/repository/index", json={"ready": True}).json() == [
        {"name": "mlp", "version": v, "state": READY, "reason": ""} for v in ("1", "2")]


def test_admin_calls_need_the_admin_key(make_client, folder):
    closed = make_client(model_dir=folder, poll_interval=0)
    response = closed.post("/v2/repository/models/mlp/load", headers=ADMIN)
    assert response.status_code == 403 and "NNSERVE_ADMIN_KEY" in response.json()["error"]
    assert closed.post("/v2/repository/index").status_code == 200  # reading is open
    live = make_client(model_dir=folder, poll_interval=0, admin_key="admin-secret")
    assert live.post("/v2/repository/models/mlp/unload").status_code == 401
    wrong = live.post("/v2/repository/models/mlp/unload",
                      headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "invalid admin key" in wrong.json()["error"]
    # The API key is not the admin key.
    api = make_client(model_dir=folder, poll_interval=0, api_key="k", admin_key="admin-secret")
    assert api.post("/v2/repository/models/mlp/unload",
                    headers={"Authorization": "Bearer k"}).status_code == 401


@pytest.mark.parametrize("name, status", [
    ("%2E%2E", 400), (".hidden", 400), ("a b", 400), ("x" * 65, 400),
    ("..", 404), ("..%2Fetc", 404),  # the client or the router resolves these: no route
    ("nothing", 404),
])
def test_load_takes_only_names_of_models_in_the_folder(live, name, status):
    response = live.post(f"/v2/repository/models/{name}/load", headers=ADMIN)
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_load_refuses_configs_and_files_from_the_request(live):
    for parameters in ({"config": "{}"}, {"file:1/model.joblib": "AAAA"}):
        response = load(live, json={"parameters": parameters})
        assert response.status_code == 400 and "model folder" in response.json()["error"]
    assert load(live, content=b"[1]").status_code == 400
    assert load(live, content=b"{").status_code == 400


def test_a_removed_version_is_unloading_until_its_requests_finish(served_models):
    model = ServedModel.build(*tiny_mlp("mlp"))
    other = ServedModel.build(*tiny_mlp("cnn"))
    from app.registry import Registry

    repository = Repository(None, registry=Registry([model, other]))
    repository.acquire(model)
    repository.install(type(repository.snapshot).build([other]))
    assert [(r["name"], r["state"]) for r in repository.index()] == [("mlp", UNLOADING)]
    repository.release(model)
    assert repository.index() == []
    assert repository.inflight == {}


def test_a_rescan_does_not_reload_unchanged_files(make_client, folder, monkeypatch):
    client = make_client(model_dir=folder, poll_interval=0, admin_key="admin-secret")
    import nnlib

    loads = []
    real = nnlib.load
    monkeypatch.setattr(nnlib, "load", lambda path, *a, **k: loads.append(path) or real(path))
    assert load(client).status_code == 200
    assert loads == []
    save_version(folder / "mlp" / "2.joblib", "2", seed=99)
    assert load(client).status_code == 200
    assert [p.name for p in loads] == ["2.joblib"]


def test_inference_metrics_carry_the_version(live):
    predict(live, "/models/mlp/versions/1/predict")
    text = live.get("/metrics").text
    assert 'nnserve_inference_requests_total{model="mlp",version="1"}' in text
    assert "nnserve_repository_last_scan_timestamp_seconds" in text


def test_polling_picks_up_a_new_file(make_client, folder):
    client = make_client(model_dir=folder, poll_interval=0.05)
    save_version(folder / "mlp" / "5.joblib", "5")
    seen = set()
    for _ in range(200):  # at most 10 s
        seen.add(predict(client))
        if "5" in seen:
            break
        time.sleep(0.05)
    assert "5" in seen
    assert np.isin(list(seen), ["2", "5"]).all()
