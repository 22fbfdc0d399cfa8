"""Helpers the tests share: tiny networks and their metadata, and where the checkout is."""

from __future__ import annotations

from pathlib import Path

import nnlib

ROOT = Path(__file__).resolve().parents[2]
DIGIT_LABELS = [str(digit) for digit in range(10)]


def _metadata(name: str, input_shape: list[int], output: str) -> dict:
    return {
        "name": name,
        "version": "1",
        "input_shape": input_shape,
        "labels": DIGIT_LABELS,
        "output": output,
        "description": f"test network {name}",
        "dataset": {"name": "none"},
        "metrics": {"accuracy": 0.0},
        "created": "2026-01-01T00:00:00Z",
    }


def tiny_mlp(name: str = "mlp", seed: int = 0) -> tuple[nnlib.Sequential, dict]:
    """A Softmax network taking 64 raw pixel values, with fixed random weights."""
    net = nnlib.Sequential(
        nnlib.Scale(1 / 16),
        nnlib.Linear(64, 16, rng=seed),
        nnlib.TanH(),
        nnlib.Linear(16, 10, rng=seed + 1),
        nnlib.Softmax(),
    )
    return net, _metadata(name, [64], "softmax")


def tiny_cnn(name: str = "cnn", seed: int = 0) -> tuple[nnlib.Sequential, dict]:
    """A LogSoftmax network taking an 8x8 image (rows as the length axis)."""
    net = nnlib.Sequential(
        nnlib.Scale(1 / 16),
        nnlib.Conv1D(3, 8, 4, rng=seed),
        nnlib.ReLU(),
        nnlib.Flatten(),
        nnlib.Linear(24, 10, rng=seed + 1),
        nnlib.LogSoftmax(),
    )
    return net, _metadata(name, [8, 8], "log_softmax")


def save_tiny_models(folder: Path) -> Path:
    """Write the two tiny networks into ``folder`` (created if needed) as nnlib artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    for net, metadata in (tiny_mlp(), tiny_cnn()):
        nnlib.save(folder / f"{metadata['name']}.joblib", net, metadata)
    return folder


class Fragile(nnlib.Module):
    """Fails on batches of three, as a bug in a network would (no artifact can hold it)."""

    def forward(self, X):
        if len(X) == 3:
            raise RuntimeError("boom")
        return X


def fragile_model():
    """A served tiny MLP with :class:`Fragile` before its head, built without validation:
    what the server does when a network raises, which nnlib.validate would refuse."""
    from app.registry import ServedModel

    net, metadata = tiny_mlp("fragile")
    net = nnlib.Sequential(*net.modules[:-1], Fragile(), net.modules[-1])
    return ServedModel(name="fragile", version=metadata["version"],
                       labels=tuple(metadata["labels"]), input_shape=(64,),
                       output=metadata["output"], metadata=metadata, network=net)
