"""The protocol-neutral core: which model answers, whether the server is ready, inference.

Protocols (``app.api.native``, ``app.api.v2``) decode HTTP into Python values, call the
:class:`DataPlane` and encode what it returns; they never touch a network or the registry
themselves. The dataplane never sees a wire format. Every refusal is a
:class:`~app.errors.ServingError`, and each protocol maps those to its own statuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from anyio import to_thread
from starlette.responses import Response

from app import metrics
from app.config import Settings
from app.errors import InvalidInputError, ModelNotFoundError, NotReadyError
from app.inference import InferenceRunner
from app.payload_log import PayloadLog
from app.registry import Registry, ServedModel
from app.statistics import Statistics
from app.timing import RequestTiming, current_timing
from app.validation import check_batch

# Bodies larger than this are decoded in a worker thread (see DataPlane.decode): a batch-1
# body of the shipped models is about 200 bytes, a batch of 1024 digits about 200 KiB.
INLINE_BODY_BYTES = 64 * 1024
Decoded = TypeVar("Decoded")


class DataPlane:
    """Model lookup, readiness and inference for one application.

    Built by the application factory and kept on ``app.state.dataplane``: the registry it
    serves, the settings it enforces, the inference runner (with its batching groups) and
    the draining flag that SIGTERM sets.
    """

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry()
        # Shared files with several workers, where prometheus-client keeps its own.
        self.statistics = Statistics(metrics.multiprocess_dir())
        self.payload_log = PayloadLog.from_settings(settings)
        self.runner = InferenceRunner(settings.batch_max_size, settings.batch_max_delay_ms,
                                      self.statistics)
        self.max_batch = settings.max_batch
        self.draining = False

    # -- readiness ---------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Say why the server should get no traffic now, or None when it is ready."""
        if self.draining:
            return "the server is shutting down"
        if not len(self.registry):
            return "no model is loaded"
        return None

    # -- models ------------------------------------------------------------------------

    def model(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """Return the model called ``name`` (the default one when None) at ``version``.

        ``version`` None is the version served; another one raises :class:`ModelNotFoundError`.
        """
        if name is None:
            name = self.registry.default
            if name is None:
                raise NotReadyError("no model is loaded")
        model = self.registry.get(name)
        if version is not None and version != model.version:
            raise ModelNotFoundError(model.name, version=version, versions=[model.version])
        # The request's statistics (a failure from here on) are this model's.
        current_timing().model = model
        return model

    def models(self) -> list[ServedModel]:
        """Return every loaded model, sorted by name."""
        return list(self.registry)

    @property
    def default_model(self) -> str | None:
        """The name of the model that answers requests naming none."""
        return self.registry.default

    # -- inference ---------------------------------------------------------------------

    def check_batch_size(self, n: int) -> None:
        """Refuse a batch of ``n`` samples before its data is decoded."""
        if n > self.max_batch:
            raise InvalidInputError(f"the batch has {n} samples; at most {self.max_batch} are "
                                    "accepted (NNSERVE_MAX_BATCH)")

    async def decode(self, body: bytes, decoder: Callable[..., Decoded], *args) -> Decoded:
        """Return ``decoder(body, *args)``: a protocol's parse of a request body.

        Parsing megabytes of JSON into Python numbers takes milliseconds to seconds of CPU,
        so a body over :data:`INLINE_BODY_BYTES` is decoded in a worker thread: health
        checks and small requests keep being served meanwhile. A small one is decoded
        inline, cheaper than the thread hop.
        """
        timing = current_timing()
        timing.decode_at = start = time.perf_counter_ns()
        try:
            if len(body) > INLINE_BODY_BYTES:
                decoded = await to_thread.run_sync(decoder, body, *args)
            else:
                decoded = decoder(body, *args)
        except BaseException:
            timing.decode_ns += time.perf_counter_ns() - start
            self._failed(timing)
            raise
        timing.decode_ns += time.perf_counter_ns() - start
        if timing.model is not None:
            metrics.version_metrics(timing.model).request_size.observe(len(body))
        return decoded

    async def infer(self, model: ServedModel, batch: np.ndarray) -> np.ndarray:
        """Return float32 probabilities ``(n, n_classes)`` for a numeric batch.

        ``batch`` has shape ``(n, *input_shape)`` or ``(n, input_size)`` and any real dtype;
        it is checked (size, shape, finite, float32 range) and converted here, so every
        protocol refuses the same inputs with the same words. The check counts as decoding
        in the request's timing; the forward pass (and the wait for a batching group) as
        infer (and queue).
        """
        timing = current_timing()
        timing.model = model
        start = time.perf_counter_ns()
        try:
            checked = check_batch(batch, model, self.max_batch)
            timing.decode_ns += time.perf_counter_ns() - start
            probs = await self.runner.predict_proba(model, checked, timing)
        except BaseException:
            self._failed(timing)
            raise
        timing.samples = len(checked)
        if self.payload_log is not None:
            self.payload_log.record(model, checked, probs)
        return probs

    def encode(self, encoder: Callable[..., Response], *args) -> Response:
        """Return ``encoder(*args)``, a protocol's answer, timed and counted.

        The last hook of a request (after :meth:`decode` and :meth:`infer`): it counts the
        request in the statistics; the request middleware then sends the phases as the
        Server-Timing header and logs them. A new route that runs a model (explain) calls
        the three hooks in the same order and gets the same figures.
        """
        timing = current_timing()
        timing.encode_at = start = time.perf_counter_ns()
        try:
            response = encoder(*args)
        except BaseException:
            self._failed(timing)
            raise
        end = time.perf_counter_ns()
        timing.encode_ns = end - start
        model = timing.model
        if model is not None and not timing.done:
            timing.done = True
            self.statistics.success(model.name, model.version, timing.samples,
                                    end - timing.start_ns, timing.decode_ns, timing.queue_ns,
                                    timing.infer_ns, timing.encode_ns)
            metrics.version_metrics(model).response_size.observe(len(response.body))
        return response

    def _failed(self, timing: RequestTiming) -> None:
        """Count a request whose model is known as failed (once)."""
        model = timing.model
        if model is not None and not timing.done:
            timing.done = True
            self.statistics.failure(model.name, model.version,
                                    time.perf_counter_ns() - timing.start_ns)

    def close(self) -> None:
        """Stop taking traffic and run every request still waiting for its group."""
        self.draining = True
        self.runner.flush()
        if self.payload_log is not None:
            self.payload_log.close()


__all__ = ["DataPlane"]
