"""Prometheus metrics, correct with one worker or several (prometheus-client's multiprocess mode).

With ``--workers`` > 1 the launcher points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before the workers start; prometheus-client then keeps every value in files there and
:func:`render` merges them, so any worker answers ``/metrics`` for the whole server.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

# Requests take well under a millisecond up to a second or so: finer buckets at the low end
# than prometheus-client's defaults, which start at 5 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

HTTP_REQUESTS = Counter(
    "nnserve_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_IN_PROGRESS = Gauge(
    "nnserve_http_requests_in_progress",
    "HTTP requests being received, run or answered right now.",
    multiprocess_mode="livesum",
)
HTTP_LATENCY = Histogram(
    "nnserve_http_request_duration_seconds",
    "Time from receiving a request to sending the last byte of its answer.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
INFERENCES = Counter(
    "nnserve_inference_requests_total",
    "Batches run through a network, by model (samples: nnserve_inference_batch_size_sum).",
    ["model"],
)
INFERENCE_ERRORS = Counter(
    "nnserve_inference_errors_total",
    "Batches whose network output was not usable (non-finite), by model.",
    ["model"],
)
INFERENCE_LATENCY = Histogram(
    "nnserve_inference_duration_seconds",
    "Time spent in the network's forward pass and the probability step, by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_BATCH = Histogram(
    "nnserve_inference_batch_size",
    "Samples per inference batch, by model.",
    ["model"],
    buckets=BATCH_BUCKETS,
)
SIZE_BUCKETS = tuple(2.0 ** power for power in range(6, 25, 2))  # 64 B .. 16 MiB
LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_QUEUE = Histogram(
    "nnserve_inference_queue_duration_seconds",
    "Time a request waited for its adaptive-batching group to run, by model and version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_REQUEST_SIZE = Histogram(
    "nnserve_inference_request_size_bytes",
    "Body size of inference requests that named a loaded model, by model and version.",
    ["model", "version"],
    buckets=SIZE_BUCKETS,
)
INFERENCE_RESPONSE_SIZE = Histogram(
    "nnserve_inference_response_size_bytes",
    "Body size of successful inference answers, by model and version.",
    ["model", "version"],
    buckets=SIZE_BUCKETS,
)
MODEL_LOAD_DURATION = Histogram(
    "nnserve_model_load_duration_seconds",
    "Time to read, check and dry-run one model file, by model and version.",
    ["model", "version"],
    buckets=LOAD_BUCKETS,
)
# Each worker loads the folder itself: with N workers a bad file counts N times (an alert on
# increase() > 0 is the same either way).
MODEL_LOAD_FAILURES = Counter(
    "nnserve_model_load_failures_total",
    "Model file loads that failed (invalid, unreadable, or a duplicate name), in any worker.",
)
# A scan lists the model folder and loads it; it succeeds when the folder could be read and
# at least one model serves. The worst worker's value is the server's.
REPOSITORY_SCAN_SUCCESS = Gauge(
    "nnserve_model_repository_scan_success",
    "1 when the last scan of the model folder served at least one model, else 0.",
    multiprocess_mode="min",
)
REPOSITORY_LAST_SUCCESS = Gauge(
    "nnserve_model_repository_last_success_timestamp_seconds",
    "Unix time of the last successful scan of the model folder.",
    multiprocess_mode="max",
)
# Set by each scrape in the worker that answers it; a stopped worker's value is dropped.
READY = Gauge(
    "nnserve_ready",
    "1 when the server takes traffic (GET /ready answers 200), else 0.",
    multiprocess_mode="livemin",
)
# Every worker loads the same folder, so the largest value is the server's.
MODELS_LOADED = Gauge(
    "nnserve_models_loaded",
    "Models loaded and served.",
    multiprocess_mode="max",
)


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Labelled children, cached: prometheus-client's .labels() takes a lock and builds a key on
# every call. The keys are bounded (route templates, known methods, status codes, loaded
# model names), so the caches are too.
_http_children: dict[tuple[str, str, int], tuple] = {}
_model_children: dict[str, tuple] = {}
_version_children: dict[tuple[str, str], VersionMetrics] = {}


class VersionMetrics(NamedTuple):
    """The labelled children of one model version's metrics."""

    queue_duration: Any
    request_size: Any
    response_size: Any


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and its latency."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        label = method if method in _HTTP_METHODS else "other"  # clients choose methods
        children = _http_children[key] = (
            HTTP_REQUESTS.labels(label, route, str(status)),
            HTTP_LATENCY.labels(label, route),
        )
    children[0].inc()
    children[1].observe(seconds)


def model_metrics(model: str) -> tuple:
    """Return the (count, latency, batch size, errors) children of a model's metrics."""
    children = _model_children.get(model)
    if children is None:
        children = _model_children[model] = (
            INFERENCES.labels(model),
            INFERENCE_LATENCY.labels(model),
            INFERENCE_BATCH.labels(model),
            INFERENCE_ERRORS.labels(model),
        )
    return children


def version_metrics(model) -> VersionMetrics:
    """Return the metrics of a :class:`~app.registry.ServedModel`'s (name, version)."""
    key = (model.name, model.version)
    children = _version_children.get(key)
    if children is None:
        children = _version_children[key] = VersionMetrics(
            INFERENCE_QUEUE.labels(*key), INFERENCE_REQUEST_SIZE.labels(*key),
            INFERENCE_RESPONSE_SIZE.labels(*key))
    return children


def multiprocess_dir() -> str | None:
    """Return the multiprocess folder when prometheus-client runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """Return the exposition text of every metric and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
