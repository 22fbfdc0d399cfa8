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
    "Batches run through a network, by model and version (samples: "
    "nnserve_inference_batch_size_sum).",
    ["model", "version"],
)
INFERENCE_ERRORS = Counter(
    "nnserve_inference_errors_total",
    "Batches whose network output was not usable (non-finite), by model and version.",
    ["model", "version"],
)
INFERENCE_LATENCY = Histogram(
    "nnserve_inference_duration_seconds",
    "Time spent in the network's forward pass and the probability step, by model and "
    "version.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_BATCH = Histogram(
    "nnserve_inference_batch_size",
    "Samples per inference batch, by model and version.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
EXPLANATIONS = Counter(
    "nnserve_explanations_total",
    "Explanation requests answered, by model and method (samples: "
    "nnserve_explanation_samples_total).",
    ["model", "method"],
)
EXPLANATION_SAMPLES = Counter(
    "nnserve_explanation_samples_total",
    "Samples explained, by model and method.",
    ["model", "method"],
)
EXPLANATION_LATENCY = Histogram(
    "nnserve_explanation_duration_seconds",
    "Time spent computing an explanation (forward and backward passes), by model.",
    ["model"],
    buckets=LATENCY_BUCKETS,
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
MODEL_RELOADS = Counter(
    "nnserve_model_reloads_total",
    "Model files loaded by a folder scan, by model and result (success or failure; a file "
    "that fails again unchanged is counted once).",
    ["model", "result"],
)
MODEL_LOAD_SECONDS = Histogram(
    "nnserve_model_load_duration_seconds",
    "Time to read and fully validate one model file, by model and version.",
    ["model", "version"],
    buckets=LOAD_BUCKETS,
)
ROUTING_REFUSED = Counter(
    "nnserve_routing_refused_total",
    "Versions of the routing file refused (the last good routing stayed in force).",
)
# With several workers, the oldest scan among the live ones: the one furthest behind.
LAST_SCAN = Gauge(
    "nnserve_repository_last_scan_timestamp_seconds",
    "Unix time at which the last completed scan of the model folder started: every change "
    "made before it is served (with several workers, the oldest among them).",
    multiprocess_mode="livemin",
)


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Labelled children, cached: prometheus-client's .labels() takes a lock and builds a key on
# every call. The keys are bounded (route templates, known methods, status codes, loaded
# model names), so the caches are too.
_http_children: dict[tuple[str, str, int], tuple] = {}
_model_children: dict[tuple[str, str], tuple] = {}
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


def model_metrics(model: str, version: str = "") -> tuple:
    """Return the (count, latency, batch size, errors) children of a model version's metrics."""
    key = (model, version)
    children = _model_children.get(key)
    if children is None:
        children = _model_children[key] = (
            INFERENCES.labels(model, version),
            INFERENCE_LATENCY.labels(model, version),
            INFERENCE_BATCH.labels(model, version),
            INFERENCE_ERRORS.labels(model, version),
        )
    return children


def model_reload(model: str, success: bool, seconds: float, version: str = "") -> None:
    """Count one model file loaded (or refused) by a scan, and a loaded version's load time."""
    MODEL_RELOADS.labels(model, "success" if success else "failure").inc()
    if success:
        MODEL_LOAD_SECONDS.labels(model, version).observe(seconds)


def scanned(models: int, started: float) -> None:
    """Record a completed folder scan: when it started and the number of models it serves."""
    LAST_SCAN.set(started)
    MODELS_LOADED.set(models)
    REPOSITORY_SCAN_SUCCESS.set(1 if models else 0)
    if models:
        REPOSITORY_LAST_SUCCESS.set_to_current_time()


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
