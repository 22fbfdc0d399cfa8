"""Helpers of the in-process HTTP tests: raw bodies, the reference digit, local answers."""

from __future__ import annotations

import numpy as np

from app.api.native import DIGIT_ZERO, DIGIT_ZERO_FLAT

ZERO_CNN = DIGIT_ZERO  # scikit-learn's first "0", 8x8
ZERO_MLP = DIGIT_ZERO_FLAT  # the same, as 64 numbers


def post_raw(client, path: str, body: bytes | str, **headers):
    """POST ``body`` as it is (JSON content type unless given), for bodies httpx would fix."""
    headers.setdefault("content-type", "application/json")
    return client.post(path, content=body, headers=headers)


def local_probabilities(model, samples) -> np.ndarray:
    """The probabilities the served ``model`` must answer, computed here with nnlib."""
    batch = np.asarray(samples, dtype=np.float32).reshape((-1, *model.input_shape))
    out = model.network.predict(batch)
    return np.exp(out) if model.output == "log_softmax" else out
