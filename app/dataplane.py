"""The protocol-neutral core: which model answers, whether the server is ready, inference.

Protocols (``app.api.native``, ``app.api.v2``) decode HTTP into Python values, call the
:class:`DataPlane` and encode what it returns; they never touch a network or the registry
themselves. The dataplane never sees a wire format. Every refusal is a
:class:`~app.errors.ServingError`, and each protocol maps those to its own statuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from anyio import to_thread
from starlette.responses import Response

from app import explaining, metrics
from app.config import Settings
from app.errors import InvalidInputError, ModelNotFoundError
from app.inference import InferenceRunner
from app.log import REQUEST_INFO, escape
from app.payload_log import PayloadLog
from app.registry import MODEL_NAME, Registry, ServedModel
from app.reload import Reloader
from app.repository import Repository, Snapshot
from app.statistics import Statistics
from app.timing import RequestTiming, current_timing
from app.validation import check_batch

# Bodies larger than this are decoded in a worker thread (see DataPlane.decode): a batch-1
# body of the shipped models is about 200 bytes, a batch of 1024 digits about 200 KiB.
INLINE_BODY_BYTES = 64 * 1024
Decoded = TypeVar("Decoded")


class DataPlane:
    """Model lookup, readiness and inference for one application.

    Built by the application factory and kept on ``app.state.dataplane``: the repository
    it serves (the live model versions, :mod:`app.repository`) and the reloader that
    rescans it, the settings it enforces, the inference runner (with its batching groups)
    and the draining flag that SIGTERM sets.
    """

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry()
        # Shared files with several workers, where prometheus-client keeps its own.
        self.statistics = Statistics(metrics.multiprocess_dir())
        self.request_metrics = metrics.RequestMetrics(metrics.multiprocess_dir())
        self.payload_log = PayloadLog.from_settings(settings)
        self.runner = InferenceRunner(settings.batch_max_size, settings.batch_max_delay_ms,
                                      self.statistics, self.request_metrics)
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

    @property
    def registry(self) -> Registry:
        """Every served model at its default version (a view of the current snapshot)."""
        return self.repository.snapshot.registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        """Serve these models, and no folder."""
        self.repository = Repository(None, registry=registry)
        self.reloader = Reloader(self.repository)

    def serve_folder(self, folder: Path) -> Reloader:
        """Serve the model folder ``folder`` (empty until the reloader's first scan)."""
        settings = self.settings
        self.repository = Repository(folder, settings.default_model, settings.state_dir)
        self.reloader = Reloader(self.repository, settings.poll_interval,
                                 notify_supervisor=settings.state_dir is not None)
        return self.reloader

    @property
    def snapshot(self) -> Snapshot:
        """What serves now: name -> versions -> model, routing and the index, immutable."""
        return self.repository.snapshot

    def model(self, name: str | None = None, version: str | None = None,
              routing_key: str | None = None) -> ServedModel:
        """Return the version of model ``name`` (the default model when None) that answers.

        ``version`` is a version or an alias; None picks by the routing file's weights
        (the same version for the same ``routing_key``, random without one), else the
        default version. Raises :class:`ModelNotFoundError` naming the known versions.
        """
        model = self.repository.resolve(name, version, routing_key)
        # The request's statistics (a failure from here on) are this model's.
        current_timing().model = model
        return model

    def models(self) -> list[ServedModel]:
        """Return every loaded model at its default version, sorted by name."""
        return list(self.registry)

    # -- the repository ----------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version the folder holds, with its state and reason."""
        return self.repository.index(ready_only)

    async def load(self, name: str) -> None:
        """Serve ``name`` again and load its files (changed or failed ones) from the folder."""
        _check_name(name)
        self.repository.set_unloaded(name, False)
        await self.reloader.rescan(retry=True)
        self.reloader.notify_workers()
        self.repository.check_loaded(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` until its next load; running requests finish."""
        _check_name(name)
        if (name not in self.snapshot.versions
                and name not in self.repository.known_names()):
            raise ModelNotFoundError(name, self.repository.known_names())
        self.repository.set_unloaded(name, True)
        await self.reloader.rescan(retry=False)
        self.reloader.notify_workers()

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
        model = timing.model
        if model is not None:
            request_metrics = self.request_metrics
            request_metrics.request_size(request_metrics.model_row(model.name, model.version),
                                         len(body))
        return decoded

    async def infer(self, model: ServedModel, batch: np.ndarray) -> np.ndarray:
        """Return float32 probabilities ``(n, n_classes)`` for a numeric batch.

        ``batch`` has shape ``(n, *input_shape)`` or ``(n, input_size)`` and any real dtype;
        it is checked (size, shape, finite, float32 range) and converted here, so every
        protocol refuses the same inputs with the same words. The check counts as decoding
        in the request's timing; the forward pass (and the wait for a batching group) as
        infer (and queue).
        """
        with _Running(self, model) as timing:
            start = time.perf_counter_ns()
            checked = check_batch(batch, model, self.max_batch)
            timing.decode_ns += time.perf_counter_ns() - start
            probs = await self.runner.predict_proba(model, checked, timing)
        timing.samples = len(checked)
        if self.payload_log is not None:
            self.payload_log.record(model, checked, probs)
        return probs

    async def explain(self, model: ServedModel, batch: np.ndarray, *, method: str,
                      target: int | str | None = None, steps: int | None = None,
                      baseline: np.ndarray | None = None) -> explaining.Explanation:
        """Return the attributions of ``target`` (a label, an index, None: each sample's best).

        The batch is checked as :meth:`infer` checks it, then the request
        (:func:`app.explaining.check_request`: method, steps, baseline, at most
        ``NNSERVE_EXPLAIN_MAX_WORK`` gradient evaluations); large work runs in a worker thread.
        """
        with _Running(self, model) as timing:
            start = time.perf_counter_ns()
            batch = check_batch(batch, model, self.max_batch)
            index = explaining.target_index(model, target)
            steps = explaining.check_request(model, len(batch), method, steps, baseline,
                                             self.settings.explain_max_work)
            info = REQUEST_INFO.get()
            if info is not None:
                info["model"], info["batch"] = model.name, len(batch)
            # The forward and backward passes are the explanation's "infer" phase.
            timing.infer_at = time.perf_counter_ns()
            timing.decode_ns += timing.infer_at - start
            if explaining.elements(model, len(batch), steps) > explaining.INLINE_MAX_ELEMENTS:
                explanation = await to_thread.run_sync(explaining.explain, model, batch,
                                                       method, index, steps, baseline)
            else:
                explanation = explaining.explain(model, batch, method, index, steps, baseline)
            timing.infer_ns = time.perf_counter_ns() - timing.infer_at
        timing.samples = len(batch)
        return explanation

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
            request_metrics = self.request_metrics
            request_metrics.response_size(request_metrics.model_row(model.name, model.version),
                                          len(response.body))
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


class _Running:
    """A request running on one model version, for :meth:`DataPlane.infer` and ``explain``.

    Entering names the model in the request's timing and counts the request in flight on
    the version, so that a version leaving the repository is reported unloaded only once
    the requests running on it are done; leaving releases it and, on an exception, counts
    the request as failed. (A class rather than a generator: this runs on every request.)
    """

    __slots__ = ("dataplane", "model", "repository", "timing")

    def __init__(self, dataplane: DataPlane, model: ServedModel) -> None:
        self.dataplane, self.model = dataplane, model

    def __enter__(self) -> RequestTiming:
        self.timing = timing = current_timing()
        timing.model = self.model
        # The repository of the start: the release must reach the one that counted.
        self.repository = self.dataplane.repository
        self.repository.acquire(self.model)
        return timing

    def __exit__(self, kind, error, traceback) -> bool:
        self.repository.release(self.model)
        if kind is not None:
            self.dataplane._failed(self.timing)
        return False


def _check_name(name: str) -> None:
    """Refuse a model name no file could give (a path trick, a control character)."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidInputError(f"{escape(name, 80)!r} is not a model name: 1-64 letters, "
                                "digits, '.', '_' or '-', starting with a letter or digit")


__all__ = ["DataPlane"]
