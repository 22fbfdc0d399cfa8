"""The protocol-neutral core: which model answers, whether the server is ready, inference.

Protocols (``app.api.native``, ``app.api.v2``) decode HTTP into Python values, call the
:class:`DataPlane` and encode what it returns; they never touch a network or the registry
themselves. The dataplane never sees a wire format. Every refusal is a
:class:`~app.errors.ServingError`, and each protocol maps those to its own statuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from anyio import to_thread

from app import explaining
from app.config import Settings
from app.errors import InvalidInputError, ModelNotFoundError, NotReadyError
from app.inference import InferenceRunner
from app.log import REQUEST_INFO
from app.registry import Registry, ServedModel
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
        self.runner = InferenceRunner(settings.batch_max_size, settings.batch_max_delay_ms)
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
        if len(body) > INLINE_BODY_BYTES:
            return await to_thread.run_sync(decoder, body, *args)
        return decoder(body, *args)

    async def infer(self, model: ServedModel, batch: np.ndarray) -> np.ndarray:
        """Return float32 probabilities ``(n, n_classes)`` for a numeric batch.

        ``batch`` has shape ``(n, *input_shape)`` or ``(n, input_size)`` and any real dtype;
        it is checked (size, shape, finite, float32 range) and converted here, so every
        protocol refuses the same inputs with the same words.
        """
        return await self.runner.predict_proba(model, check_batch(batch, model, self.max_batch))

    async def explain(self, model: ServedModel, batch: np.ndarray, *, method: str,
                      target: int | str | None = None, steps: int | None = None,
                      baseline: np.ndarray | None = None) -> explaining.Explanation:
        """Return the attributions of ``target`` (a label, an index, None: each sample's best).

        The batch is checked as :meth:`infer` checks it, then the request
        (:func:`app.explaining.check_request`: method, steps, baseline, at most
        ``NNSERVE_EXPLAIN_MAX_WORK`` gradient evaluations); large work runs in a worker thread.
        """
        batch = check_batch(batch, model, self.max_batch)
        index = explaining.target_index(model, target)
        steps = explaining.check_request(model, len(batch), method, steps, baseline,
                                         self.settings.explain_max_work)
        info = REQUEST_INFO.get()
        if info is not None:
            info["model"], info["batch"] = model.name, len(batch)
        if explaining.elements(model, len(batch), steps) > explaining.INLINE_MAX_ELEMENTS:
            return await to_thread.run_sync(explaining.explain, model, batch, method, index,
                                            steps, baseline)
        return explaining.explain(model, batch, method, index, steps, baseline)

    def close(self) -> None:
        """Stop taking traffic and run every request still waiting for its group."""
        self.draining = True
        self.runner.flush()


__all__ = ["DataPlane"]
