"""Arrays in, probabilities out: the one place that runs networks."""

from __future__ import annotations

import time

import numpy as np
from anyio import to_thread

from app import metrics
from app.log import REQUEST_INFO
from app.registry import ServedModel

# A forward pass of these networks costs microseconds per sample: running a small batch
# inline is cheaper than a thread hop. Past this many numbers the batch goes to a worker
# thread (numpy releases the GIL in matrix products) so health checks stay responsive.
INLINE_MAX_ELEMENTS = 16384


class InferenceError(ValueError):
    """The network gave no usable probabilities for this batch (e.g. it overflowed)."""


def _run(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    # Huge but finite inputs may overflow inside the network; that is detected below, so
    # numpy's warnings would only be noise (and errors under pytest's warning filter).
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
    if not np.isfinite(probs).all():
        index = int(np.argmin(np.isfinite(probs).all(axis=1)))
        raise InferenceError(
            f"model {model.name!r} gave no finite probabilities for sample {index}: "
            "its values are too large for the network"
        )
    return probs


async def predict_proba(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    """Return float32 class probabilities, shape ``(n, n_classes)``, for a checked batch.

    A LogSoftmax head's output is exponentiated, so every row sums to 1 whatever the head.
    Raises :class:`InferenceError` instead of ever returning NaN or infinity.
    """
    info = REQUEST_INFO.get()
    if info is not None:
        info["model"] = model.name
        info["batch"] = len(batch)
    count, latency, batch_size, errors = metrics.model_metrics(model.name)
    start = time.perf_counter()
    try:
        if batch.size > INLINE_MAX_ELEMENTS:
            probs = await to_thread.run_sync(_run, model, batch)
        else:
            probs = _run(model, batch)
    except InferenceError:
        errors.inc()
        raise
    finally:
        latency.observe(time.perf_counter() - start)
        count.inc()
        batch_size.observe(len(batch))
    return probs
