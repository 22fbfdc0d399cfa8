"""Prometheus metrics, correct with one worker or several (prometheus-client's multiprocess mode).

With ``--workers`` > 1 the launcher points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before the workers start; prometheus-client then keeps every value in files there and
:func:`render` merges them, so any worker answers ``/metrics`` for the whole server.

The figures every request updates (HTTP requests and latency, inference counts, latency,
batch sizes, queue time and body sizes) are kept by :class:`RequestMetrics`, one per
application, in a :class:`~app.tables.CounterTable` (shared files with several workers,
like the statistics extension's) and exposed through prometheus-client's collector
interface: an update is a few stores through a memoryview, where a prometheus-client
metric takes a lock per value (about 10 µs a request for these, measured with
``benchmarks/asgi_cost.py --ablate``). The rest (reloads, scans, readiness, explanations)
are prometheus-client metrics.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from app.tables import CounterTable

# Requests take well under a millisecond up to a second or so: finer buckets at the low end
# than prometheus-client's defaults, which start at 5 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

HTTP_IN_PROGRESS = Gauge(
    "nnserve_http_requests_in_progress",
    "HTTP requests being received, run or answered right now.",
    multiprocess_mode="livesum",
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


class HistogramColumns(NamedTuple):
    """Where one histogram lives in a row: a bucket count per bound (and one past the last),
    then the sum of the observations in ``unit`` (an integer: ns, bytes, samples)."""

    name: str
    documentation: str
    bounds: tuple[float, ...]  # as exposed (seconds, bytes, samples)
    unit: float  # exposed value of one stored unit: 1e-9 for ns, 1 otherwise
    first: int  # column of the first bucket

    @property
    def scaled_bounds(self) -> tuple[int, ...]:
        """The bounds in stored units, for ``bisect_left`` (value <= bound: that bucket)."""
        return tuple(round(bound / self.unit) for bound in self.bounds)

    @property
    def sum_column(self) -> int:
        return self.first + len(self.bounds) + 1

    def family(self, labels: list[str]) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=labels)

    def add(self, family: HistogramMetricFamily, labels: list[str], row) -> None:
        """Add the histogram of ``row`` (a numpy row of the table) to ``family``."""
        counts = row[self.first:self.sum_column].cumsum()
        buckets = [(floatToGoString(bound), int(count))
                   for bound, count in zip(self.bounds, counts[:-1], strict=True)]
        buckets.append(("+Inf", int(counts[-1])))
        family.add_metric(labels, buckets, sum_value=float(row[self.sum_column]) * self.unit)


def _layout(*histograms: tuple, start: int) -> tuple[list[HistogramColumns], int]:
    """Place histograms one after the other from column ``start``; return them and the end."""
    placed = []
    for name, documentation, bounds, unit in histograms:
        placed.append(HistogramColumns(name, documentation, bounds, unit, start))
        start = placed[-1].sum_column + 1
    return placed, start


NS = 1e-9
# An HTTP row, per (method, route template, status): the latency histogram (its count is
# the request count). The exposed histogram adds up the statuses of a (method, route).
(HTTP_LATENCY,), _HTTP_END = _layout(
    ("nnserve_http_request_duration_seconds",
     "Time from receiving a request to sending the last byte of its answer.",
     LATENCY_BUCKETS, NS), start=0)
# A model row, per (model, version): two counters, then five histograms.
INFERENCES, INFERENCE_ERRORS = 0, 1
(INFERENCE_LATENCY, INFERENCE_BATCH, INFERENCE_QUEUE, REQUEST_SIZE, RESPONSE_SIZE), \
    _MODEL_END = _layout(
        ("nnserve_inference_duration_seconds",
         "Time spent in the network's forward pass and the probability step, by model and "
         "version.", LATENCY_BUCKETS, NS),
        ("nnserve_inference_batch_size", "Samples per inference batch, by model and version.",
         BATCH_BUCKETS, 1),
        ("nnserve_inference_queue_duration_seconds",
         "Time a request waited for its adaptive-batching group to run, by model and version.",
         LATENCY_BUCKETS, NS),
        ("nnserve_inference_request_size_bytes",
         "Body size of inference requests that named a loaded model, by model and version.",
         SIZE_BUCKETS, 1),
        ("nnserve_inference_response_size_bytes",
         "Body size of successful inference answers, by model and version.",
         SIZE_BUCKETS, 1),
        start=2)
COLUMNS = max(_HTTP_END, _MODEL_END)
# HTTP rows are bounded by the route templates, known methods and status codes; model rows
# by the versions loaded. Unused rows cost nothing (zero pages).
MAX_ROWS = 16384
FILE_PREFIX = "nnserve-metrics-"


class RequestMetrics:
    """The metrics every request updates, for one application (see the module docstring).

    Written from the event loop's thread only, as the statistics are. ``folder`` (the
    multiprocess folder with several workers) shares the table with the other workers;
    :meth:`collect` sums every worker's, so that any worker answers for the server.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self._counters = CounterTable(folder, FILE_PREFIX, COLUMNS, MAX_ROWS, "metrics")
        self._values = self._counters.values
        self._row = self._counters.row
        self._latency = HTTP_LATENCY.scaled_bounds
        self._inference = INFERENCE_LATENCY.scaled_bounds
        self._queue = INFERENCE_QUEUE.scaled_bounds
        self._batch = INFERENCE_BATCH.scaled_bounds
        self._size = REQUEST_SIZE.scaled_bounds

    def model_row(self, name: str, version: str) -> int | None:
        """The row of a model version (None once the table is full)."""
        return self._row(("model", name, version))

    def http_request(self, method: str, route: str, status: int, ns: int) -> None:
        """Count one answered HTTP request and its latency."""
        if method not in _HTTP_METHODS:
            method = "other"  # clients choose methods
        row = self._row(("http", method, route, str(status)))
        if row is not None:
            values = self._values
            values[row + bisect_left(self._latency, ns)] += 1
            values[row + HTTP_LATENCY.sum_column] += ns

    def inference(self, row: int | None, samples: int, ns: int) -> None:
        """Count one forward pass of ``samples`` rows that took ``ns`` (``row``: its model's)."""
        if row is not None:
            values = self._values
            values[row + INFERENCES] += 1
            values[row + INFERENCE_LATENCY.first + bisect_left(self._inference, ns)] += 1
            values[row + INFERENCE_LATENCY.sum_column] += ns
            values[row + INFERENCE_BATCH.first + bisect_left(self._batch, samples)] += 1
            values[row + INFERENCE_BATCH.sum_column] += samples

    def inference_error(self, row: int | None) -> None:
        """Count a forward pass whose output was not usable."""
        if row is not None:
            self._values[row + INFERENCE_ERRORS] += 1

    def queued(self, row: int | None, ns: int) -> None:
        """Count the wait of one request for its batching group."""
        if row is not None:
            self._values[row + INFERENCE_QUEUE.first + bisect_left(self._queue, ns)] += 1
            self._values[row + INFERENCE_QUEUE.sum_column] += ns

    def request_size(self, row: int | None, size: int) -> None:
        """Count the body size of an inference request for a loaded model."""
        if row is not None:
            self._values[row + REQUEST_SIZE.first + bisect_left(self._size, size)] += 1
            self._values[row + REQUEST_SIZE.sum_column] += size

    def response_size(self, row: int | None, size: int) -> None:
        """Count the body size of a successful inference answer."""
        if row is not None:
            self._values[row + RESPONSE_SIZE.first + bisect_left(self._size, size)] += 1
            self._values[row + RESPONSE_SIZE.sum_column] += size

    def close(self) -> None:
        self._counters.close()

    def collect(self) -> Iterator[Metric]:
        """The metric families, summed over every worker (prometheus-client's collector
        interface: what ``generate_latest`` reads)."""
        totals = self._counters.totals()
        requests = CounterMetricFamily(
            "nnserve_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            labels=["method", "route", "status"])
        latency = HTTP_LATENCY.family(["method", "route"])
        by_route: dict[tuple[str, str], object] = {}
        for key, row in sorted(totals.items()):
            if key[0] == "http":
                _, method, route, status = key
                count = row[HTTP_LATENCY.first:HTTP_LATENCY.sum_column].sum()
                requests.add_metric([method, route, status], float(count))
                found = by_route.get((method, route))
                by_route[method, route] = row if found is None else found + row
        for (method, route), row in by_route.items():
            HTTP_LATENCY.add(latency, [method, route], row)
        yield requests
        yield latency
        labels = ["model", "version"]
        inferences = CounterMetricFamily(
            "nnserve_inference_requests",
            "Batches run through a network, by model and version (samples: "
            "nnserve_inference_batch_size_sum).", labels=labels)
        errors = CounterMetricFamily(
            "nnserve_inference_errors",
            "Batches whose network output was not usable (non-finite), by model and version.",
            labels=labels)
        histograms = [(columns, columns.family(labels)) for columns in (
            INFERENCE_LATENCY, INFERENCE_BATCH, INFERENCE_QUEUE, REQUEST_SIZE, RESPONSE_SIZE)]
        for key, row in sorted(totals.items()):
            if key[0] == "model":
                values = list(key[1:])
                inferences.add_metric(values, float(row[INFERENCES]))
                errors.add_metric(values, float(row[INFERENCE_ERRORS]))
                for columns, family in histograms:
                    columns.add(family, values, row)
        yield inferences
        yield errors
        for _, family in histograms:
            yield family


class _Collectors:
    """Several collectors read as one registry, for ``generate_latest``."""

    def __init__(self, *collectors) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


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


def multiprocess_dir() -> str | None:
    """Return the multiprocess folder when prometheus-client runs in that mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(request_metrics: RequestMetrics | None = None) -> tuple[bytes, str]:
    """Return the exposition text of every metric (an application's request metrics
    included) and its content type."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if request_metrics is not None:
        registry = _Collectors(registry, request_metrics)
    return generate_latest(registry), CONTENT_TYPE_LATEST
