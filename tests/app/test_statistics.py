"""Per-model statistics (Triton's statistics extension), Server-Timing and the timed access log.

Known numbers of good and bad requests of known batch sizes go in, through both protocols,
with and without adaptive batching; every count must come out exactly, and the durations
must be positive, add up and stay within the wall time the test measured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.log import JsonFormatter
from app.main import create_app
from app.registry import Registry
from app.statistics import Statistics
from app.timing import RequestTiming
from tests.helpers.http import ZERO_CNN, ZERO_MLP, post_raw

V2_INPUT = {"name": "input", "datatype": "FP32"}
SERVER_TIMING = re.compile(r"decode;dur=\d+\.\d{3}(, queue;dur=\d+\.\d{3})?, infer;dur=\d+\.\d{3}"
                           r", encode;dur=\d+\.\d{3}")


def _v2(samples: list[list[float]], shape_tail: list[int]) -> dict:
    return {"inputs": [{**V2_INPUT, "shape": [len(samples), *shape_tail],
                        "data": [x for sample in samples for x in np.ravel(sample).tolist()]}]}


def _stats(client, name: str, version: str | None = None) -> dict:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats"
    response = client.get(path)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["model_stats"]
    return entry


def _check_durations(entry: dict, wall_ns: int, concurrency: int = 1) -> None:
    """Positive phase figures that add up to no more than each request's total, and totals
    that fit in the wall time the requests took."""
    stats = entry["inference_stats"]
    successes = stats["success"]["count"]
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] == successes
        assert stats[phase]["ns"] > 0
    phases = sum(stats[phase]["ns"] for phase in ("queue", "compute_input", "compute_infer",
                                                  "compute_output"))
    assert phases <= stats["success"]["ns"]
    assert stats["success"]["ns"] + stats["fail"]["ns"] <= wall_ns * concurrency
    if stats["fail"]["count"]:
        assert stats["fail"]["ns"] > 0


def test_counts_are_exact_for_good_and_bad_requests_of_both_protocols(client):
    start_ms, start = time.time_ns() // 1_000_000, time.perf_counter_ns()
    for size in (1, 3, 2):
        assert client.post("/predict", json={"inputs": [ZERO_MLP] * size}).status_code == 200
    assert client.post("/models/cnn/predict", json={"inputs": [ZERO_CNN] * 4}).status_code == 200
    for size in (5, 1):
        response = client.post("/v2/models/mlp/infer", json=_v2([ZERO_MLP] * size, [64]))
        assert response.status_code == 200
    # Refused once the model is known: counted as failures of that model.
    assert client.post("/predict", json={"inputs": [[1, 2]]}).status_code == 422
    assert client.post("/v2/models/mlp/infer", json=_v2([[1, 2, 3]], [3])).status_code == 400
    bad_type = {"inputs": [{**V2_INPUT, "datatype": "BYTES", "shape": [1, 8, 8],
                            "data": ["x"] * 64}]}
    assert client.post("/v2/models/cnn/versions/1/infer", json=bad_type).status_code == 400
    # Refused before any model is known: nobody's failure.
    assert post_raw(client, "/predict", "{").status_code == 400
    assert client.post("/v2/models/nope/infer", json=_v2([ZERO_MLP], [64])).status_code == 404
    wall_ns = time.perf_counter_ns() - start
    end_ms = time.time_ns() // 1_000_000

    mlp = _stats(client, "mlp")
    assert (mlp["name"], mlp["version"]) == ("mlp", "1")
    assert mlp["inference_stats"]["success"]["count"] == 5
    assert mlp["inference_stats"]["fail"]["count"] == 2
    assert mlp["inference_stats"]["queue"] == {"count": 0, "ns": 0}
    assert mlp["inference_count"] == 1 + 3 + 2 + 5 + 1
    assert mlp["execution_count"] == 5
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in mlp["batch_stats"]} == {
        1: 2, 2: 1, 3: 1, 5: 1}
    # Without batching every execution is one request's: the forward passes agree exactly.
    assert (sum(b["compute_infer"]["ns"] for b in mlp["batch_stats"])
            == mlp["inference_stats"]["compute_infer"]["ns"])
    assert start_ms <= mlp["last_inference"] <= end_ms
    _check_durations(mlp, wall_ns)

    cnn = _stats(client, "cnn", "1")
    assert cnn["inference_stats"]["success"]["count"] == 1
    assert cnn["inference_stats"]["fail"]["count"] == 1
    assert (cnn["inference_count"], cnn["execution_count"]) == (4, 1)
    assert [b["batch_size"] for b in cnn["batch_stats"]] == [4]
    _check_durations(cnn, wall_ns)

    every = client.get("/v2/models/stats").json()["model_stats"]
    assert [(e["name"], e["version"]) for e in every] == [("cnn", "1"), ("mlp", "1")]
    assert every[1] == _stats(client, "mlp")


def test_unknown_models_and_versions_are_404_in_v2_words(client):
    assert client.get("/v2/models/nope/stats").status_code == 404
    response = client.get("/v2/models/mlp/versions/7/stats")
    assert response.status_code == 404 and "7" in response.json()["error"]
    assert "statistics" in client.get("/v2").json()["extensions"]


def test_batched_requests_count_queue_time_and_merged_executions(served_models):
    """Six batch-1 requests (native and V2) merge into two passes of 3: a group runs when
    full, and the delay is too long to ever fire."""
    registry = Registry(served_models.values(), default="mlp")
    app = create_app(Settings(batch_max_size=3, batch_max_delay_ms=600_000), registry=registry)

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            native = [http.post("/predict", json={"inputs": [ZERO_MLP]}) for _ in range(4)]
            v2 = [http.post("/v2/models/mlp/infer", json=_v2([ZERO_MLP], [64]))
                  for _ in range(2)]
            return await asyncio.wait_for(asyncio.gather(*native, *v2), timeout=60)

    start = time.perf_counter_ns()
    responses = asyncio.run(send())
    wall_ns = time.perf_counter_ns() - start
    assert [r.status_code for r in responses] == [200] * 6
    for response in responses:
        assert SERVER_TIMING.fullmatch(response.headers["server-timing"])
        assert "queue;dur=" in response.headers["server-timing"]

    entry = app.state.dataplane.statistics.model_stats([("mlp", "1")])[0]
    stats = entry["inference_stats"]
    assert stats["success"]["count"] == 6 and stats["fail"]["count"] == 0
    assert stats["queue"]["count"] == 6 and stats["queue"]["ns"] > 0
    assert (entry["inference_count"], entry["execution_count"]) == (6, 2)
    (batch,) = entry["batch_stats"]
    assert batch["batch_size"] == 3 and batch["compute_infer"]["count"] == 2
    # Each request of a group is charged its group's forward pass.
    assert stats["compute_infer"]["ns"] == 3 * batch["compute_infer"]["ns"]
    _check_durations(entry, wall_ns, concurrency=6)


def test_server_timing_and_the_access_log_give_the_same_figures(client, caplog):
    with caplog.at_level(logging.INFO, logger="nnserve.access"):
        native = client.post("/predict", json={"inputs": [ZERO_MLP] * 2},
                             headers={"X-Request-ID": "timed-1"})
        v2 = client.post("/v2/models/cnn/infer", json=_v2([ZERO_CNN], [8, 8]),
                         headers={"X-Request-ID": "timed-2"})
        plain = client.get("/models", headers={"X-Request-ID": "plain"})
    assert "server-timing" not in plain.headers
    records = {r.request_id: r for r in caplog.records if r.name == "nnserve.access"}
    for response, request_id in ((native, "timed-1"), (v2, "timed-2")):
        header = response.headers["server-timing"]
        assert SERVER_TIMING.fullmatch(header), header
        figures = {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([\d.]+)", header)}
        assert set(figures) == {"decode", "infer", "encode"} and min(figures.values()) > 0
        record = records[request_id]
        entry = json.loads(JsonFormatter().format(record))
        for name, value in figures.items():
            assert entry[f"{name}_ms"] == value
            assert f"{name}_ms={value:.3f}" in record.getMessage()
    assert "decode_ms" not in json.loads(JsonFormatter().format(records["plain"]))


def test_worker_tables_in_a_folder_are_summed_on_read(tmp_path):
    """Two workers' tables (files in one folder) read as one, from either of them."""
    first, second = Statistics(tmp_path), Statistics(tmp_path)
    first.success("m", "1", 3, 1000, 100, None, 200, 50)
    second.success("m", "1", 2, 900, 90, 10, 100, 40)
    second.failure("m", "1", 70)
    first.execution("m", "1", 3, 0, 200, 0)
    second.execution("m", "1", 2, 0, 100, 0)
    second.execution("m", "1", 3, 0, 150, 0)
    assert len(list(tmp_path.glob("nnserve-stats-*.bin"))) == 2
    entries = [reader.model_stats([("m", "1")])[0] for reader in (first, second)]
    assert entries[0] == entries[1]
    entry = entries[0]
    stats = entry["inference_stats"]
    assert stats["success"] == {"count": 2, "ns": 1900}
    assert stats["fail"] == {"count": 1, "ns": 70}
    assert stats["queue"] == {"count": 1, "ns": 10}
    assert stats["compute_infer"] == {"count": 2, "ns": 300}
    assert (entry["inference_count"], entry["execution_count"]) == (5, 3)
    assert [(b["batch_size"], b["compute_infer"]) for b in entry["batch_stats"]] == [
        (2, {"count": 1, "ns": 100}), (3, {"count": 2, "ns": 350})]
    for table in (first, second):
        table.close()


@pytest.mark.parametrize("version", ["2024-01-01", "v1\ttab"])
def test_versions_are_kept_as_given(tmp_path, version):
    table = Statistics(tmp_path)
    table.success("m", version, 1, 10, 1, None, 1, 1)
    assert table.model_stats([("m", version)])[0]["inference_count"] == 1
    table.close()


def test_a_refused_request_times_only_the_phases_it_reached(client, caplog):
    with caplog.at_level(logging.INFO, logger="nnserve.access"):
        response = client.post("/v2/models/mlp/infer", json=_v2([[1, 2, 3]], [3]),
                               headers={"X-Request-ID": "refused-1"})
        unknown = client.post("/v2/models/nope/infer", json=_v2([ZERO_MLP], [64]))
    assert response.status_code == 400
    assert re.fullmatch(r"decode;dur=\d+\.\d{3}", response.headers["server-timing"])
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "refused-1"]
    assert record.decode_ms > 0 and not hasattr(record, "infer_ms")
    # No model ran any hook: nothing to time.
    assert unknown.status_code == 404 and "server-timing" not in unknown.headers


@pytest.mark.parametrize("reached", ["decode", "infer", "queue", "encode"])
def test_the_log_fields_are_the_phases_that_ran(reached):
    timing = RequestTiming(0)
    timing.decode_ns, timing.infer_ns, timing.encode_ns = 12_345, 678_901, 2_345
    timing.decode_at = 1
    if reached != "decode":
        timing.infer_at = 2
    if reached in ("queue", "encode"):
        timing.queue_ns = 44_444 if reached == "queue" else None
        timing.encode_at = 3 if reached == "encode" else 0
    expected = {f"{name}_ms": ms for name, ms in timing.phases_ms().items()}
    assert timing.log_fields() == expected
    assert list(timing.log_fields()) == list(expected)  # in the same order
