"""The models the service answers for: every artifact of the model folder, loaded and checked."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nnlib
from app.errors import ModelNotFoundError
from app.log import escape

logger = logging.getLogger("nnserve.registry")

PREFERRED_DEFAULT = "digits-mlp"
# Names appear in URLs, metric labels and log lines: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MODEL_NAME = _NAME  # what the repository API and the routing file check names against


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A validated network with the metadata the API needs.

    Built from an artifact that passed :func:`nnlib.validate` (metadata keys and types,
    labels, input shape, head, bounded compute, one dry forward): the registry adds only
    what is about serving, a name that can stand in URLs, metric labels and log lines.
    """

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
    def from_artifact(cls, artifact: nnlib.Artifact) -> ServedModel:
        """Serve an artifact :func:`nnlib.validate` (or :func:`nnlib.load`) returned.

        Raises ``ValueError`` when its name cannot serve.
        """
        network, metadata = artifact
        name = metadata["name"]
        if not _NAME.fullmatch(name):
            raise ValueError(f"model name {escape(name, 80)!r} is not 1-64 letters, digits, "
                             "'.', '_' or '-' (it names URLs and metric labels)")
        return cls(name=name, version=metadata["version"], labels=tuple(metadata["labels"]),
                   input_shape=tuple(metadata["input_shape"]), output=metadata["output"],
                   metadata=metadata, network=network)

    @classmethod
    def build(cls, network: nnlib.Module, metadata: dict) -> ServedModel:
        """Validate an in-memory network and its metadata, and serve it.

        Raises :class:`nnlib.ArtifactError` (a ``ValueError``) saying what is wrong.
        """
        return cls.from_artifact(nnlib.validate(nnlib.Artifact(network, metadata)))


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
