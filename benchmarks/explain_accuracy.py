"""How exact the explanations of the shipped models are: gradients and completeness.

For each shipped model, on samples of its own scikit-learn dataset:

- ``gradient``: :func:`nnlib.probability_gradient` in float32 (as the server computes it)
  and in float64, against central finite differences in float64 on the same weights
  (``tests/helpers/gradcheck.py``), every class of every sample; the largest absolute error.
- ``integrated_gradients``: the completeness gap
  :math:`\\max_n |\\sum_i \\text{IG}_i(x_n) - (p_t(x_n) - p_t(0))|` over every sample of the
  dataset, each sample's most probable class, zero baseline, for several step counts.

    .venv/bin/python benchmarks/explain_accuracy.py            # the two tables
    .venv/bin/python benchmarks/explain_accuracy.py --every 30  # finite differences on more samples
"""

from __future__ import annotations

import argparse

# _util pins BLAS to one thread and puts the checkout on sys.path: import it before numpy.
import _util
import numpy as np
from sklearn.datasets import load_digits, load_wine

import nnlib
from app.registry import default_model_dir
from tests.helpers.gradcheck import numerical_gradient

MODELS = ("digits-mlp", "digits-cnn", "wine-mlp")


def _data(name: str, input_shape: tuple[int, ...]) -> np.ndarray:
    if name.startswith("wine"):
        return load_wine().data.astype(np.float32)
    return load_digits().images.astype(np.float32).reshape(-1, *input_shape)


def _probabilities(network, head: str, X: np.ndarray) -> np.ndarray:
    out = network.predict(X)
    return np.exp(out) if head == "log_softmax" else out


def gradient_errors(network, head: str, samples: np.ndarray) -> tuple[float, float]:
    """Return max |float32 gradient - FD| and max |float64 gradient - FD| over every class."""
    worst32 = worst64 = 0.0
    for target in range(_probabilities(network, head, samples[:1]).shape[1]):
        targets = np.full(len(samples), target)
        _, grad32 = nnlib.probability_gradient(network, samples, targets, head)
        _, grad64 = nnlib.probability_gradient(network, samples.astype(np.float64), targets,
                                               head)
        for index, sample in enumerate(samples):
            probe = sample.astype(np.float64)[None]
            fd = numerical_gradient(
                lambda probe=probe, target=target: float(
                    _probabilities(network, head, probe)[0, target]),
                probe)[0]
            worst32 = max(worst32, float(np.abs(grad32[index] - fd).max()))
            worst64 = max(worst64, float(np.abs(grad64[index] - fd).max()))
    return worst32, worst64


def completeness_gap(network, head: str, X: np.ndarray, steps: int) -> float:
    """Return the largest |sum of attributions - (p(x) - p(baseline))| over ``X``."""
    targets = _probabilities(network, head, X).argmax(axis=1)
    attributions, p_x, p_base = nnlib.integrated_gradients(network, X, targets, steps=steps,
                                                           head=head)
    sums = attributions.reshape(len(X), -1).sum(axis=1)
    return float(np.abs(sums - (p_x - p_base)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=60,
                        help="finite differences on every k-th sample (60: 30 digits, 3 wines)")
    parser.add_argument("--steps", default="64,128,256", help="integrated-gradients steps")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    print("| model | samples | max abs error, float32 vs FD64 | float64 vs FD64 |")
    print("|---|---|---|---|")
    loaded = {}
    for name in MODELS:
        network, metadata = nnlib.load(default_model_dir() / f"{name}.joblib")
        X = _data(name, tuple(metadata["input_shape"]))
        loaded[name] = network, metadata["output"], X
        samples = X[::args.every]
        worst32, worst64 = gradient_errors(network, metadata["output"], samples)
        print(f"| {name} | {len(samples)} | {worst32:.2g} | {worst64:.2g} |")
    print()
    print("| steps | " + " | ".join(MODELS) + " |")
    print("|---|" + "---|" * len(MODELS))
    for count in steps:
        gaps = [completeness_gap(*loaded[name], count) for name in MODELS]
        print(f"| {count} | " + " | ".join(f"{gap:.3f}" for gap in gaps) + " |")
    print()
    print("Environment:", *_util.environment(), sep="\n- ")


if __name__ == "__main__":
    main()
