"""The per-request metrics table exposes what prometheus-client's own metrics would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app import metrics

MODEL_LABELS = ["model", "version"]


def _reference(registry: CollectorRegistry) -> dict:
    """The same metrics as prometheus-client objects: what nnserve exposed before."""
    histogram = {
        "latency": (metrics.INFERENCE_LATENCY, metrics.LATENCY_BUCKETS),
        "batch": (metrics.INFERENCE_BATCH, metrics.BATCH_BUCKETS),
        "queue": (metrics.INFERENCE_QUEUE, metrics.LATENCY_BUCKETS),
        "request_size": (metrics.REQUEST_SIZE, metrics.SIZE_BUCKETS),
        "response_size": (metrics.RESPONSE_SIZE, metrics.SIZE_BUCKETS),
    }
    made = {name: Histogram(columns.name, columns.documentation, MODEL_LABELS, buckets=bounds,
                            registry=registry)
            for name, (columns, bounds) in histogram.items()}
    made["requests"] = Counter("nnserve_http_requests_total", "HTTP requests answered, by "
                               "method, route template and status code.",
                               ["method", "route", "status"], registry=registry)
    made["http_latency"] = Histogram(metrics.HTTP_LATENCY.name,
                                     metrics.HTTP_LATENCY.documentation, ["method", "route"],
                                     buckets=metrics.LATENCY_BUCKETS, registry=registry)
    made["inferences"] = Counter("nnserve_inference_requests_total", "Batches run through a "
                                 "network, by model and version (samples: "
                                 "nnserve_inference_batch_size_sum).", MODEL_LABELS,
                                 registry=registry)
    made["errors"] = Counter("nnserve_inference_errors_total", "Batches whose network output "
                             "was not usable (non-finite), by model and version.",
                             MODEL_LABELS, registry=registry)
    return made


def _samples(text: str) -> dict:
    """Every sample but prometheus-client's ``_created`` ones, by name and labels."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.name.endswith("_created")}


def _families(text: str) -> dict:
    return {family.name: (family.type, family.documentation)
            for family in text_string_to_metric_families(text)
            if not family.name.endswith("_created")}


def _observe(tables: list[metrics.RequestMetrics], reference: dict, rng: random.Random,
             count: int) -> None:
    """The same random observations (bucket bounds included) into both."""
    bounds_ns = [round(bound * 1e9) for bound in metrics.LATENCY_BUCKETS]
    for _ in range(count):
        table = rng.choice(tables)
        ns = rng.choice([rng.randrange(0, 20_000_000_000), rng.choice(bounds_ns),
                         rng.choice(bounds_ns) + 1])
        method = rng.choice(["GET", "POST", "BREW"])
        route = rng.choice(["/predict", "/v2/models/{name}/infer", "unmatched"])
        status = rng.choice([200, 404, 422])
        table.http_request(method, route, status, ns)
        label = method if method != "BREW" else "other"
        reference["requests"].labels(label, route, str(status)).inc()
        reference["http_latency"].labels(label, route).observe(ns / 1e9)

        model = rng.choice([("mlp", "1"), ("mlp", "2"), ("cnn", "v\tx")])
        row = table.model_row(*model)
        kind = rng.randrange(5)
        if kind == 0:
            samples = rng.choice([1, 2, 3, 64, 4096, 5000])
            table.inference(row, samples, ns)
            reference["inferences"].labels(*model).inc()
            reference["latency"].labels(*model).observe(ns / 1e9)
            reference["batch"].labels(*model).observe(samples)
        elif kind == 1:
            table.inference_error(row)
            reference["errors"].labels(*model).inc()
        elif kind == 2:
            table.queued(row, ns)
            reference["queue"].labels(*model).observe(ns / 1e9)
        else:
            size = rng.choice([0, 64, 65, 1 << 24, (1 << 24) + 1, rng.randrange(1 << 26)])
            if kind == 3:
                table.request_size(row, size)
                reference["request_size"].labels(*model).observe(size)
            else:
                table.response_size(row, size)
                reference["response_size"].labels(*model).observe(size)
        # prometheus-client shows a model's children once made; the table shows them all
        # from the row's first use.
        for name in ("inferences", "errors", "latency", "batch", "queue", "request_size",
                     "response_size"):
            reference[name].labels(*model)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_exposition_is_prometheus_clients_own(tmp_path, workers):
    """One table, or two workers' tables in one folder read from either: the same families,
    documentation, samples and values as prometheus-client metrics fed the same figures."""
    tables = ([metrics.RequestMetrics()] if workers == 1
              else [metrics.RequestMetrics(tmp_path) for _ in range(workers)])
    registry = CollectorRegistry()
    reference = _reference(registry)
    _observe(tables, reference, random.Random(workers), 3000)
    expected_text = generate_latest(registry).decode()
    expected = _samples(expected_text)
    for table in tables:
        text = generate_latest(metrics._Collectors(table)).decode()
        assert _families(text) == _families(expected_text)
        found = _samples(text)
        assert found.keys() == expected.keys()
        for key, value in expected.items():
            assert found[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    for table in tables:
        table.close()


def test_render_adds_the_applications_table_to_the_registry():
    table = metrics.RequestMetrics()
    table.http_request("POST", "/predict", 200, 1234)
    text, content_type = metrics.render(table)
    assert content_type.startswith("text/plain")
    samples = _samples(text.decode())
    key = ("nnserve_http_requests_total",
           (("method", "POST"), ("route", "/predict"), ("status", "200")))
    assert samples[key] == 1
    assert ("nnserve_ready", ()) in samples  # and prometheus-client's own metrics
    table.close()
