"""The models the service answers for: every artifact of the model folder, loaded and checked."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import nnlib
from app.errors import ModelNotFoundError
from app.log import escape

logger = logging.getLogger("nnserve.registry")

OUTPUTS = ("softmax", "log_softmax")
PREFERRED_DEFAULT = "digits-mlp"
# Names appear in URLs, metric labels and log lines: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A sample larger than this is not one of "these networks"; refuse it before a dry run.
_MAX_SAMPLE_SIZE = 1 << 20


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded network with the metadata the API needs, checked once at load time."""

    name: str
    version: str
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]
    output: str
    metadata: dict
    network: nnlib.Module

    @property
    def n_classes(self) -> int:
        """Number of classes, the width of a probability row."""
        return len(self.labels)

    @property
    def input_size(self) -> int:
        """Number of values in one sample."""
        return math.prod(self.input_shape)

    @classmethod
    def build(cls, network: nnlib.Module, metadata: dict) -> ServedModel:
        """Check an artifact's network and metadata; raise ``ValueError`` saying what is wrong."""
        if not isinstance(network, nnlib.Module):
            raise ValueError(f"the network is a {type(network).__name__}, not an nnlib.Module")
        if not isinstance(metadata, dict):
            raise ValueError("the metadata is not a dict")
        missing = [key for key in ("name", "version", "input_shape", "labels", "output")
                   if key not in metadata]
        if missing:
            raise ValueError(f"the metadata lacks {', '.join(missing)}")

        name = metadata["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"model name {name!r} is not 1-64 letters, digits, '.', '_' or '-'")

        shape = metadata["input_shape"]
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
                       for d in shape)
        ):
            raise ValueError(f"input_shape {shape!r} is not a list of positive integers")
        input_shape = tuple(int(d) for d in shape)
        if math.prod(input_shape) > _MAX_SAMPLE_SIZE:
            raise ValueError(f"input_shape {input_shape} is too large")

        labels = metadata["labels"]
        if (
            not isinstance(labels, (list, tuple))
            or not labels
            or not all(isinstance(label, str) for label in labels)
        ):
            raise ValueError("labels is not a non-empty list of strings")
        if len(set(labels)) != len(labels):
            raise ValueError("labels are not unique")

        output = metadata["output"]
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")

        model = cls(
            name=name,
            version=str(metadata["version"]),
            labels=tuple(labels),
            input_shape=input_shape,
            output=output,
            metadata=_plain(metadata),
            network=network,
        )
        _dry_run(model)
        return model


def _dry_run(model: ServedModel) -> None:
    """Run the network once on zeros: the head must give one probability row per sample."""
    batch = np.zeros((2, *model.input_shape), dtype=np.float32)
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(model.network.predict(batch))
    except Exception as exc:  # any failure here means the artifact cannot serve
        raise ValueError(f"a dry forward pass failed: {type(exc).__name__}: {exc}") from exc
    if out.shape != (2, model.n_classes):
        raise ValueError(
            f"the network maps a batch of shape {batch.shape} to {out.shape}, "
            f"expected (2, {model.n_classes}) for {model.n_classes} labels"
        )
    with np.errstate(all="ignore"):
        probs = np.exp(out.astype(np.float64)) if model.output == "log_softmax" else out
    if not np.all(np.isfinite(probs)) or not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise ValueError(
            f"the network's output is not {model.output} probabilities (rows do not sum to 1)"
        )


def _plain(value: Any) -> Any:
    """Return ``value`` as JSON-ready data (numpy scalars and arrays become Python ones)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def default_model_dir() -> Path:
    """Return the folder of the shipped models: the installed package data, else the checkout's."""
    try:
        for entry in resources.files("app.shipped_models").iterdir():
            if entry.name.endswith(".joblib"):
                return Path(str(entry)).parent
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "models"


class Registry:
    """Loaded models by name; a name is only ever a key here, never a path."""

    def __init__(self, models: Iterable[ServedModel] = (), default: str | None = None) -> None:
        self._models: dict[str, ServedModel] = {}
        for model in models:
            if model.name in self._models:
                raise ValueError(f"two models are named {model.name!r}")
            self._models[model.name] = model
        self._models = dict(sorted(self._models.items()))
        self.default: str | None = self._pick_default(default)

    def _pick_default(self, wanted: str | None) -> str | None:
        if wanted is not None:
            if wanted in self._models:
                return wanted
            logger.warning("default model %r is not loaded; picking another", wanted)
        if PREFERRED_DEFAULT in self._models:
            return PREFERRED_DEFAULT
        return next(iter(self._models), None)

    @classmethod
    def from_dir(cls, path: str | Path, default: str | None = None) -> Registry:
        """Load every ``*.joblib`` of ``path``; log and skip the files that do not load."""
        folder = Path(path)
        models: list[ServedModel] = []
        try:
            # listdir, not glob: glob would hide an unreadable folder as an empty one.
            names = sorted(name for name in os.listdir(folder) if name.endswith(".joblib"))
        except FileNotFoundError:
            logger.error("model folder %s does not exist; no model is served", folder)
            return cls(default=default)
        except NotADirectoryError:
            logger.error("model folder %s is not a directory; no model is served", folder)
            return cls(default=default)
        except OSError as exc:
            logger.error("cannot list model folder %s (%s); no model is served", folder,
                         exc.strerror or exc)
            return cls(default=default)
        for file in (folder / name for name in names):
            try:
                artifact = nnlib.load(file)
                model = ServedModel.build(artifact.model, artifact.metadata)
            except Exception as exc:  # one bad file must not stop the others from serving
                logger.error("skipping %s: %s", escape(file.name), escape(str(exc)))
                continue
            if any(loaded.name == model.name for loaded in models):
                logger.error("skipping %s: a model named %r is already loaded",
                             escape(file.name), model.name)
                continue
            logger.info(
                "loaded model %s version %s from %s (input %s, %d classes, %s)",
                model.name, escape(model.version), escape(file.name), list(model.input_shape),
                model.n_classes, model.output,
            )
            models.append(model)
        if not models:
            logger.error("no model could be loaded from %s", folder)
        return cls(models, default=default)

    def get(self, name: str) -> ServedModel:
        """Return the model called ``name`` or raise :class:`ModelNotFoundError`."""
        try:
            return self._models[name]
        except (KeyError, TypeError):
            raise ModelNotFoundError(escape(str(name)), self._models) from None

    def names(self) -> list[str]:
        """Return the loaded names, sorted."""
        return list(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __repr__(self) -> str:
        return f"Registry({self.names()}, default={self.default!r})"
