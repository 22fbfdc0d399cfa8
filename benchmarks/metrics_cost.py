"""What one request's metric updates cost: prometheus-client metrics against RequestMetrics.

A batch-1 ``/predict`` updates the HTTP counter and latency histogram, the inference
counter and the latency, batch-size, request-size and response-size histograms. This times
those updates made through prometheus-client objects (how nnserve kept them before
``app.metrics.RequestMetrics``) and through ``RequestMetrics``, alternating, median of the
rounds; once with one process's values and once in prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, what ``--workers`` > 1 runs), each in a fresh interpreter
because the mode is chosen when prometheus-client is imported.

    .venv/bin/python benchmarks/metrics_cost.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

# _util pins BLAS/OpenMP pools to one thread and puts the checkout on sys.path.
import _util


def _measure(rounds: int) -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from app import metrics

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = CollectorRegistry()

    def histogram(name: str, bounds: tuple, *labels: str):
        return Histogram(name, name, ["a", "b"], buckets=bounds, registry=registry).labels(
            *labels)

    requests = Counter("http_total", "http", ["a", "b", "c"], registry=registry).labels(
        "POST", "/predict", "200")
    http_latency = histogram("http_seconds", metrics.LATENCY_BUCKETS, "POST", "/predict")
    inferences = Counter("inference_total", "inference", ["a", "b"], registry=registry).labels(
        "digits-mlp", "1.0.0")
    latency = histogram("inference_seconds", metrics.LATENCY_BUCKETS, "digits-mlp", "1.0.0")
    batch = histogram("batch", metrics.BATCH_BUCKETS, "digits-mlp", "1.0.0")
    request_size = histogram("request_bytes", metrics.SIZE_BUCKETS, "digits-mlp", "1.0.0")
    response_size = histogram("response_bytes", metrics.SIZE_BUCKETS, "digits-mlp", "1.0.0")

    def prometheus_client() -> None:
        requests.inc()
        http_latency.observe(0.0003)
        request_size.observe(160)
        inferences.inc()
        latency.observe(0.00005)
        batch.observe(1)
        response_size.observe(300)

    table = metrics.RequestMetrics(folder)

    def request_metrics() -> None:
        # As a request makes them: the model's row looked up at each hook.
        table.http_request("POST", "/predict", 200, 300_000)
        table.request_size(table.model_row("digits-mlp", "1.0.0"), 160)
        table.inference(table.model_row("digits-mlp", "1.0.0"), 1, 50_000)
        table.response_size(table.model_row("digits-mlp", "1.0.0"), 300)

    timed = _util.interleaved({"prometheus-client": prometheus_client,
                               "RequestMetrics": request_metrics}, rounds)
    mode = "multiprocess" if folder else "one process"
    for name, seconds in timed.items():
        print(f"| {mode} | {name} | {seconds * 1e6:.2f} |")
    table.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _measure(args.rounds)
        return
    print("| values | updates through | µs per request (median) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="nnserve-metrics-bench-") as folder:
        for extra in ({}, {"PROMETHEUS_MULTIPROC_DIR": folder}):
            subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds)],
                           env={**os.environ, **extra}, check=True)
    print()
    print("Environment:", *_util.environment(), sep="\n- ")


if __name__ == "__main__":
    main()
