r"""Explanations of a model's answer: which input values raised or lowered a class probability.

Protocol-neutral, called by :meth:`app.dataplane.DataPlane.explain`: the checks of an
explanation request (target, method, steps, baseline, the work bound) and its computation
with :mod:`nnlib.explain`, which runs the network's own ``backward_delta`` chain without
touching any cached activation, so explanations and predictions share one network safely.

- ``"gradient"``: :math:`\partial p_t / \partial x` at the raw input (preprocessing layers
  included), exact to float32 round-off.
- ``"integrated_gradients"``: :math:`(x - x') \int_0^1 \partial p_t / \partial x\,
  (x' + \alpha (x - x'))\, d\alpha` by the trapezoidal rule on ``steps`` intervals; the
  attributions of a sample sum to :math:`p_t(x) - p_t(x')` within
  :data:`COMPLETENESS_TOLERANCE` at the default steps on the shipped models.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

import nnlib
from app import metrics
from app.errors import InferenceError, InvalidInputError
from app.registry import ServedModel
from app.validation import FLOAT32_MAX

METHODS = ("gradient", "integrated_gradients")
DEFAULT_METHOD = "integrated_gradients"
DEFAULT_STEPS = nnlib.explain.DEFAULT_STEPS
MAX_STEPS = 1024
#: Measured on every sample of the shipped models' datasets at the default 128 steps
#: (largest gap 0.018, digits-cnn; tests/nnlib/test_explain.py checks it).
COMPLETENESS_TOLERANCE = 0.025
# Below this many input values along the whole path the work is cheaper than a thread hop.
INLINE_MAX_ELEMENTS = 4096


@dataclass(frozen=True)
class Explanation:
    """The attributions of a batch, with the probabilities they explain.

    Shapes: ``probabilities`` (n, C), ``targets`` (n,), ``attributions`` (n, *input_shape),
    ``baseline_probabilities`` (n,) for integrated gradients, else None.
    """

    method: str
    steps: int | None
    probabilities: np.ndarray
    targets: np.ndarray
    attributions: np.ndarray
    baseline_probabilities: np.ndarray | None


def target_index(model: ServedModel, target: int | str | None) -> int | None:
    """Return the class index a target names (a label or an index), None for "each best"."""
    if target is None:
        return None
    if isinstance(target, str):
        try:
            return model.labels.index(target)
        except ValueError:
            shown = ", ".join(repr(label) for label in model.labels[:20])
            raise InvalidInputError(f"target {target[:80]!r} is not a label of model "
                                    f"{model.name!r}; its labels are {shown}") from None
    if not 0 <= target < model.n_classes:
        raise InvalidInputError(f"target index {target} is out of range: model {model.name!r} "
                                f"has classes 0..{model.n_classes - 1}")
    return target


def check_request(model: ServedModel, n: int, method: str, steps: int | None,
                  baseline: np.ndarray | None, max_work: int) -> int | None:
    """Refuse a bad method, steps, baseline or too much work; return the steps to use."""
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method[:80]!r}: use 'gradient' or "
                                "'integrated_gradients'")
    if method == "gradient":
        if steps is not None or baseline is not None:
            raise InvalidInputError("steps and baseline apply to method "
                                    "'integrated_gradients' only")
        work, steps = n, None
    else:
        steps = DEFAULT_STEPS if steps is None else steps
        if not 1 <= steps <= MAX_STEPS:
            raise InvalidInputError(f"steps must be between 1 and {MAX_STEPS}; got {steps}")
        work = n * steps
    if work > max_work:
        raise InvalidInputError(
            f"the explanation needs {work} gradient evaluations ({n} samples"
            f"{f' x {steps} steps' if steps else ''}); at most {max_work} are allowed "
            "(NNSERVE_EXPLAIN_MAX_WORK): send fewer samples or steps")
    if baseline is not None:
        shape = tuple(baseline.shape)
        if shape not in (model.input_shape, (model.input_size,)):
            raise InvalidInputError(
                f"baseline has shape {list(shape)}; model {model.name!r} takes one sample of "
                f"{list(model.input_shape)} (or a flat list of {model.input_size} numbers)")
        if not (np.abs(baseline) <= FLOAT32_MAX).all():
            raise InvalidInputError("baseline holds NaN, infinity or a value beyond float32")
    return steps


def elements(model: ServedModel, n: int, steps: int | None) -> int:
    """Input values the network runs on for an explanation: the size of its work."""
    return n * ((steps or 0) + 1) * math.prod(model.input_shape)


def explain(model: ServedModel, batch: np.ndarray, method: str, target: int | None,
            steps: int | None, baseline: np.ndarray | None) -> Explanation:
    """Compute the explanation of a checked float32 batch ``(n, *input_shape)``.

    Raises :class:`InferenceError` when the network gives no finite answer for a sample.
    """
    network, head = model.network, model.output
    start = time.perf_counter()
    with np.errstate(all="ignore"):  # overflow is detected below, as predict does
        out = network.predict(batch)
        probs = np.exp(out) if head == "log_softmax" else out
        targets = (probs.argmax(axis=1) if target is None
                   else np.full(len(batch), target, dtype=np.intp))
        if method == "gradient":
            _, attributions = nnlib.probability_gradient(network, batch, targets, head)
            baseline_probs = None
        else:
            if baseline is not None:
                baseline = np.asarray(baseline, np.float32).reshape(model.input_shape)
            attributions, _, baseline_probs = nnlib.integrated_gradients(
                network, batch, targets, baseline, steps, head)
    finite = np.isfinite(probs).all(axis=1) & np.isfinite(
        attributions.reshape(len(batch), -1)).all(axis=1)
    if baseline_probs is not None:
        finite &= np.isfinite(baseline_probs)
    if not finite.all():
        raise InferenceError(f"model {model.name!r} gave no finite explanation for sample "
                             f"{int(np.argmin(finite))}: its values are too large for the "
                             "network")
    metrics.EXPLANATION_LATENCY.labels(model.name).observe(time.perf_counter() - start)
    metrics.EXPLANATIONS.labels(model.name, method).inc()
    metrics.EXPLANATION_SAMPLES.labels(model.name, method).inc(len(batch))
    return Explanation(method, steps, np.ascontiguousarray(probs, np.float32), targets,
                       np.ascontiguousarray(attributions, np.float32), baseline_probs)


__all__ = ["COMPLETENESS_TOLERANCE", "DEFAULT_STEPS", "MAX_STEPS", "METHODS", "Explanation",
           "check_request", "explain", "target_index"]
