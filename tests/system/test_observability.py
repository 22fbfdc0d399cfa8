"""Statistics, Server-Timing and metrics of real servers: tritonclient, two workers, promtool.

promtool comes with Debian's ``prometheus`` package (.ci/run installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import tritonclient.http as tritonclient_http

from tests.helpers.servers import run_server, server_env

PROMTOOL = shutil.which("promtool")


def _promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is missing: apt-get install prometheus (see .ci/run)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


def _traffic(url: str, digits) -> dict[str, int]:
    """Known requests over fresh connections from 4 threads (so both workers get some)."""
    images, _ = digits
    sizes = [1, 2, 3, 1, 4, 1, 2, 8] * 3

    def native(size: int) -> int:
        body = {"model": "digits-mlp", "inputs": images[:size].reshape(size, -1).tolist()}
        return httpx.post(url + "/predict", json=body, timeout=30).status_code

    def bad(_: int) -> int:
        return httpx.post(url + "/models/digits-mlp/predict", json={"inputs": [[1, 2]]},
                          timeout=30).status_code

    with ThreadPoolExecutor(4) as pool:
        good = list(pool.map(native, sizes))
        refused = list(pool.map(bad, range(5)))
    assert good == [200] * len(sizes) and refused == [422] * 5
    return {"success": len(sizes), "fail": 5, "samples": sum(sizes),
            **{f"batch_{size}": sizes.count(size) for size in set(sizes)}}


def _check_stats(entry: dict, sent: dict[str, int], extra: int) -> None:
    """The statistics of ``sent`` plus ``extra`` good batch-1 requests."""
    stats = entry["inference_stats"]
    assert stats["success"]["count"] == sent["success"] + extra
    assert stats["fail"]["count"] == sent["fail"]
    assert entry["inference_count"] == sent["samples"] + extra
    assert entry["execution_count"] == sent["success"] + extra
    by_size = {b["batch_size"]: b["compute_infer"]["count"] for b in entry["batch_stats"]}
    expected = {int(key[6:]): count for key, count in sent.items() if key.startswith("batch_")}
    expected[1] = expected.get(1, 0) + extra
    assert by_size == expected
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["ns"] > 0
    assert (stats["compute_input"]["ns"] + stats["compute_infer"]["ns"]
            + stats["compute_output"]["ns"] <= stats["success"]["ns"])


def _triton_infer(url: str, sample: np.ndarray) -> dict:
    client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))
    try:
        tensor = tritonclient_http.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(sample.reshape(1, 64).astype(np.float32))
        result = client.infer("digits-mlp", [tensor])
        assert result.as_numpy("probabilities").shape == (1, 10)
        return result.get_response()
    finally:
        client.close()


def _triton_stats(url: str, **version) -> dict:
    client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))
    try:
        return client.get_inference_statistics("digits-mlp", **version)
    finally:
        client.close()


def test_tritonclient_reads_true_statistics_of_one_worker(tmp_path, digits):
    with run_server(tmp_path) as server:
        sent = _traffic(server.url, digits)
        answer = _triton_infer(server.url, digits[0][0])
        assert answer["model_version"] == "1.0.0"
        (entry,) = _triton_stats(server.url, model_version="1.0.0")["model_stats"]
        assert _triton_stats(server.url)["model_stats"] == [entry]
        metrics = httpx.get(server.url + "/metrics").text
    assert entry["name"] == "digits-mlp" and entry["version"] == "1.0.0"
    _check_stats(entry, sent, extra=1)
    for name in ("nnserve_model_load_duration_seconds_bucket", "nnserve_model_reloads_total",
                 "nnserve_inference_response_size_bytes_bucket",
                 "nnserve_model_repository_scan_success"):
        assert name in metrics
    checked = _promtool_check_metrics(metrics)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_two_workers_answer_the_same_true_statistics_and_valid_metrics(tmp_path, digits):
    shared = tmp_path / "multiproc"
    shared.mkdir()
    env = server_env(workers="2")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    with run_server(tmp_path, env=env) as server:
        sent = _traffic(server.url, digits)
        sample = digits[0][0].ravel().tolist()
        response = httpx.post(server.url + "/predict",
                              json={"model": "digits-mlp", "inputs": [sample]})
        timing = response.headers["server-timing"]
        assert [part.split(";")[0] for part in timing.split(", ")] == ["decode", "infer", "encode"]
        # Fresh connections: the kernel hands them to either worker.
        answers = [_triton_stats(server.url)["model_stats"][0] for _ in range(8)]
        for entry in answers:
            _check_stats(entry, sent, extra=1)
        tables = list(shared.glob("nnserve-stats-*.keys"))
        assert len(tables) == 2  # one per worker, both summed by whichever answers
        with_rows = sum(1 for table in tables if table.read_text().strip())
        metrics = httpx.get(server.url + "/metrics").text
    checked = _promtool_check_metrics(metrics)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    print(f"workers that answered inference requests: {with_rows}")
    assert with_rows >= 1
    assert "nnserve_inference_request_size_bytes_count" in metrics
    # Every worker reports itself ready, including the one that did not answer the scrape.
    assert re.search(r"^nnserve_ready 1\.0$", metrics, re.MULTILINE), metrics
