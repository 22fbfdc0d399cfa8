"""Arrays in, probabilities out: the one place that runs networks.

Adaptive batching (off by default; ``NNSERVE_BATCH_MAX_SIZE`` > 1 and
``NNSERVE_BATCH_MAX_DELAY_MS`` > 0 turn it on): as Triton's dynamic batcher does, small
requests for the same model that arrive within the delay are merged into one forward pass
of at most the maximum size, and each gets its own rows back. The dataplane owns one
:class:`InferenceRunner` per application and every protocol goes through it, so native and
V2 requests are merged alike.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from anyio import to_thread

from app import metrics
from app.errors import InferenceError
from app.log import REQUEST_INFO
from app.registry import ServedModel
from app.statistics import Statistics
from app.timing import RequestTiming

# A forward pass of these networks costs microseconds per sample: running a small batch
# inline is cheaper than a thread hop. Past this many numbers the batch goes to a worker
# thread (numpy releases the GIL in matrix products) so health checks stay responsive.
INLINE_MAX_ELEMENTS = 16384


def _forward(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    """Run the network and return its probabilities as C-contiguous float32 (unchecked)."""
    # Huge but finite inputs may overflow inside the network; that is detected afterwards,
    # so numpy's warnings would only be noise (and errors under pytest's warning filter).
    with np.errstate(all="ignore"):
        out = model.network.predict(batch)
        probs = np.exp(out) if model.output == "log_softmax" else out
    if probs.shape != (len(batch), model.n_classes):
        raise InferenceError(
            f"model {model.name!r} gave an output of shape {list(probs.shape)}, "
            f"expected {[len(batch), model.n_classes]}"
        )
    if probs.dtype != np.float32 or not probs.flags.c_contiguous:
        probs = np.ascontiguousarray(probs, dtype=np.float32)
    return probs


def _check_finite(model: ServedModel, probs: np.ndarray) -> np.ndarray:
    if not np.isfinite(probs).all():
        index = int(np.argmin(np.isfinite(probs).all(axis=1)))
        raise InferenceError(
            f"model {model.name!r} gave no finite probabilities for sample {index}: "
            "its values are too large for the network"
        )
    return probs


def _run(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    return _check_finite(model, _forward(model, batch))


# --- adaptive batching ------------------------------------------------------------------


class Batcher:
    """Requests for one model waiting to run together, on one event loop.

    A request joins the pending group; the group runs when it holds ``max_size`` samples or
    ``max_delay`` seconds after its first request, whichever comes first. A request is never
    split, and a group never passes ``max_size`` samples (a request that would overflow it
    starts the next one). Each request gets its own rows, or its own error: only the rows
    of the request whose output is not finite fail, and if the merged pass fails as a whole
    every request runs alone, exactly as without batching.
    """

    def __init__(self, model: ServedModel, loop: asyncio.AbstractEventLoop,
                 max_size: int, max_delay: float, statistics: Statistics | None = None,
                 request_metrics: metrics.RequestMetrics | None = None) -> None:
        self.model, self.loop = model, loop
        self.max_size, self.max_delay = max_size, max_delay
        self.statistics = statistics if statistics is not None else Statistics()
        self.metrics = (request_metrics if request_metrics is not None
                        else metrics.RequestMetrics())
        # (batch, its future, when it was queued in perf_counter_ns, its request's timing)
        self.pending: list[tuple[np.ndarray, asyncio.Future, int, RequestTiming | None]] = []
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None

    def submit(self, batch: np.ndarray, timing: RequestTiming | None = None) -> asyncio.Future:
        """Queue ``batch``; the future gets its probabilities (or its InferenceError), and
        ``timing`` the ns it waited and the ns of its forward pass."""
        if self.pending and self.rows + len(batch) > self.max_size:
            self.flush()
        future = self.loop.create_future()
        self.pending.append((batch, future, time.perf_counter_ns(), timing))
        self.rows += len(batch)
        if self.rows >= self.max_size:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.max_delay, self.flush)
        return future

    def flush(self) -> None:
        """Run the pending group now."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        group, self.pending, self.rows = self.pending, [], 0
        if group:
            _run_group(self.model, group, self.statistics, self.metrics)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():  # its request was cancelled (client gone): nobody to tell
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _run_group(model: ServedModel,
               group: list[tuple[np.ndarray, asyncio.Future, int, RequestTiming | None]],
               statistics: Statistics, request_metrics: metrics.RequestMetrics) -> None:
    row = request_metrics.model_row(model.name, model.version)
    start = time.perf_counter_ns()
    merged = None
    if len(group) > 1:
        try:
            rows = np.concatenate([batch for batch, *_ in group])
            assembled = time.perf_counter_ns()
            merged = _forward(model, rows)
            forwarded = time.perf_counter_ns()
        except Exception:  # each request then runs alone, and fails alone
            merged = None
    offset = 0
    for batch, future, queued, timing in group:
        try:
            if merged is not None:
                probs = _check_finite(model, merged[offset:offset + len(batch)])
                forward_ns = forwarded - assembled
            else:
                alone = time.perf_counter_ns()
                try:
                    probs = _run(model, batch)
                finally:
                    forward_ns = time.perf_counter_ns() - alone
                    request_metrics.inference(row, len(batch), forward_ns)
                statistics.execution(model.name, model.version, len(batch), 0, forward_ns, 0)
        except InferenceError as exc:
            request_metrics.inference_error(row)
            _settle(future, error=exc)
        except Exception as exc:  # the request's own, raised in its handler
            _settle(future, error=exc)
        else:
            if timing is not None:
                timing.queue_ns, timing.infer_ns = start - queued, forward_ns
            _settle(future, probs)
        offset += len(batch)
    if merged is not None:
        request_metrics.inference(row, len(merged), forwarded - assembled)
        statistics.execution(model.name, model.version, len(merged), assembled - start,
                             forwarded - assembled, time.perf_counter_ns() - forwarded)


class InferenceRunner:
    """Runs checked batches through their networks for one application, batching if asked.

    ``max_batch_size`` > 1 with ``max_delay_ms`` > 0 turns adaptive batching on. The
    pending groups live here, one :class:`Batcher` per model and event loop, so two
    applications in one process (tests, or an embedding program) never share them.
    """

    def __init__(self, max_batch_size: int = 1, max_delay_ms: float = 0.0,
                 statistics: Statistics | None = None,
                 request_metrics: metrics.RequestMetrics | None = None) -> None:
        self.statistics = statistics if statistics is not None else Statistics()
        self.metrics = (request_metrics if request_metrics is not None
                        else metrics.RequestMetrics())
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay = max(0.0, float(max_delay_ms)) / 1000  # seconds
        self.batching = self.max_batch_size > 1 and self.max_delay > 0
        self._batchers: dict[int, Batcher] = {}

    def _batcher(self, model: ServedModel) -> Batcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(id(model))
        if batcher is None or batcher.model is not model or batcher.loop is not loop:
            batcher = self._batchers[id(model)] = Batcher(model, loop, self.max_batch_size,
                                                          self.max_delay, self.statistics,
                                                          self.metrics)
        return batcher

    def flush(self) -> None:
        """Run every pending group now (at shutdown: no request is left waiting)."""
        for key, batcher in list(self._batchers.items()):
            if batcher.loop.is_closed():
                del self._batchers[key]
            else:
                batcher.flush()

    async def predict_proba(self, model: ServedModel, batch: np.ndarray,
                            timing: RequestTiming | None = None) -> np.ndarray:
        """Return float32 class probabilities, shape ``(n, n_classes)``, for a checked batch.

        A LogSoftmax head's output is exponentiated, so every row sums to 1 whatever the
        head. Raises :class:`~app.errors.InferenceError` instead of ever returning NaN or
        infinity. ``timing`` gets the ns of the forward pass (and of the wait in a group).
        """
        info = REQUEST_INFO.get()
        if info is not None:
            info["model"] = model.name
            info["batch"] = len(batch)
        if timing is not None:
            timing.infer_at = time.perf_counter_ns()
        if (self.batching and len(batch) < self.max_batch_size
                and batch.size <= INLINE_MAX_ELEMENTS):
            if timing is None:
                return await self._batcher(model).submit(batch)
            probs = await self._batcher(model).submit(batch, timing)
            self.metrics.queued(self.metrics.model_row(model.name, model.version),
                                timing.queue_ns)
            return probs
        row = self.metrics.model_row(model.name, model.version)
        start = time.perf_counter_ns()
        try:
            if batch.size > INLINE_MAX_ELEMENTS:
                probs = await to_thread.run_sync(_run, model, batch)
            else:
                probs = _run(model, batch)
        except InferenceError:
            self.metrics.inference_error(row)
            raise
        finally:
            forward_ns = time.perf_counter_ns() - start
            self.metrics.inference(row, len(batch), forward_ns)
        # The check of the rows is part of the forward pass here (compute_output 0).
        self.statistics.execution(model.name, model.version, len(batch), 0, forward_ns, 0)
        if timing is not None:
            timing.infer_ns = forward_ns
        return probs
