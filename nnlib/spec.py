"""Network specs: a short text form or a JSON/TOML file, checked shape by shape before training.

The text form names layers joined by ``->``, each ``Name`` or ``Name(args, key=value)`` with
literal arguments only (read with :func:`ast.literal_eval`, never evaluated)::

    Standardize -> Linear(13, 32) -> ReLU -> Linear(32, 3) -> Softmax

A file holds the artifact's own form, ``{"type": ..., "config": {...}}`` per layer (a
``Sequential`` nests ``{"modules": [...]}``), as a JSON list or under an ``architecture``
key (in TOML, ``[[architecture]]`` tables). Every layer of :data:`nnlib.architecture.LAYERS` is
allowed. ``Standardize`` may omit ``features``: it takes the size of its input's last axis.

:func:`build` instantiates a spec for an input shape and runs it symbolically: each layer's
output shape from its input shape, so a spec that does not chain is refused, naming the
layer that breaks, before any data is touched.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import math
import os
from pathlib import Path

import numpy as np

from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Softplus, TanH
from .architecture import LAYERS
from .conv import Conv1D, Flatten, MaxPool1D
from .linear import Linear, Scale
from .module import Module, Sequential
from .preprocessing import Standardize

__all__ = ["SpecError", "build", "format_spec", "load_spec", "parse_spec", "read_spec"]

_SEQUENTIAL = "Sequential"
# Layers whose output has the shape of their input (Sigmoid covers StableSigmoid).
_SAME_SHAPE = (Scale, TanH, Sigmoid, Softmax, LogSoftmax, ReLU, LeakyReLU, Softplus)


class SpecError(ValueError):
    """A spec that cannot be parsed or built; the message names the layer at fault."""


def _layer_classes() -> dict[str, type[Module]]:
    return {name: layer.cls for name, layer in LAYERS.items()}


def _where(index: str, name: str) -> str:
    return f"layer {index} ({name})"


def _check_type(name: object, at: str) -> type[Module] | None:
    """Return the class named ``name`` (None for Sequential), or refuse it."""
    classes = _layer_classes()
    if name == _SEQUENTIAL:
        return None
    if type(name) is not str or name not in classes:
        known = sorted([*classes, _SEQUENTIAL])
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(f"layer {at}: unknown layer type {name!r}{hint}; the layers are "
                        f"{known}")
    return classes[name]


def _bind(cls: type[Module], args: tuple, kwargs: dict, at: str) -> dict:
    """Return the constructor arguments named, refusing ``rng`` and unknown ones."""
    if "rng" in kwargs:
        raise SpecError(f"{_where(at, cls.__name__)}: rng is not a spec argument (the "
                        "weights are drawn from --seed)")
    try:
        bound = inspect.signature(cls).bind_partial(*args, **kwargs)
    except TypeError as exc:
        raise SpecError(f"{_where(at, cls.__name__)}: {exc}") from None
    return dict(bound.arguments)


def parse_spec(text: str) -> list[dict]:
    """Parse the text form into ``[{"type": name, "config": {argument: value}}, ...]``.

    Raises:
        SpecError: an empty layer, a segment that is not ``Name`` or ``Name(...)``, an
            unknown layer, a non-literal or surplus argument.
    """
    if not text.strip():
        raise SpecError("the spec is empty")
    specs = []
    for index, segment in enumerate(text.split("->")):
        segment = segment.strip()
        if not segment:
            raise SpecError(f"layer {index}: empty (two '->' in a row, or one at an end)")
        try:
            node = ast.parse(segment, mode="eval").body
        except SyntaxError:
            node = None
        if isinstance(node, ast.Name):
            name, arg_nodes, keyword_nodes = node.id, [], []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name, arg_nodes, keyword_nodes = node.func.id, node.args, node.keywords
        else:
            raise SpecError(f"layer {index}: {segment!r} is not Name or Name(arguments)")
        cls = _check_type(name, str(index))
        if cls is None:
            raise SpecError(f"layer {index}: Sequential cannot be nested in the text form; "
                            "use a JSON or TOML file")
        try:
            args = tuple(ast.literal_eval(arg) for arg in arg_nodes)
            kwargs = {}
            for keyword in keyword_nodes:
                if keyword.arg is None:
                    raise ValueError("**")
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise SpecError(f"{_where(str(index), name)}: {segment!r} has an argument that "
                            "is not a literal (numbers, strings, True/False/None)") from None
        specs.append({"type": name, "config": _bind(cls, args, kwargs, str(index))})
    return specs


def read_spec(path: str | os.PathLike) -> list[dict]:
    """Read a ``.json`` or ``.toml`` spec file (see the module docstring for the form)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc})") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            document = tomllib.loads(text)
        else:
            document = json.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise SpecError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({exc})") \
            from None
    if isinstance(document, dict) and set(document) == {"architecture"}:
        document = document["architecture"]
    if not isinstance(document, list):
        raise SpecError(f"{path}: expected a list of layers, or {{\"architecture\": [...]}}")
    try:
        return _check_entries(document, "")
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _check_entries(entries: list, prefix: str) -> list[dict]:
    specs = []
    for index, entry in enumerate(entries):
        at = f"{prefix}{index}"
        if not isinstance(entry, dict) or "type" not in entry or \
                not set(entry) <= {"type", "config"}:
            raise SpecError(f"layer {at} must be {{\"type\": ..., \"config\": "
                            "{...}}")
        config = entry.get("config", {})
        if not isinstance(config, dict):
            raise SpecError(f"layer {at} config must be a table of arguments")
        cls = _check_type(entry["type"], at)
        if cls is None:
            modules = config.get("modules")
            if set(config) != {"modules"} or not isinstance(modules, list):
                raise SpecError(f"layer {at} (Sequential): config must be "
                                "{\"modules\": [...]}")
            specs.append({"type": _SEQUENTIAL,
                          "config": {"modules": _check_entries(modules, f"{at}.")}})
        else:
            specs.append({"type": entry["type"], "config": _bind(cls, (), config, at)})
    return specs


def load_spec(arch: str) -> list[dict]:
    """Return the spec ``arch``: a ``.json``/``.toml`` file's if it names one, else parsed text."""
    if arch.strip().lower().endswith((".json", ".toml")):
        return read_spec(arch)
    return parse_spec(arch)


def format_spec(model: Module) -> str:
    """Return a network as the text form (nested Sequentials shown in brackets)."""
    if type(model) is Sequential:
        return " -> ".join(format_spec(module) if type(module) is not Sequential
                           else f"[{format_spec(module)}]" for module in model.modules)
    return _short(model)


def _short(module: Module) -> str:
    """Return ``Name(required, ..., key=value)``: the arguments that differ from defaults."""
    config = module.config()
    if not config:
        return type(module).__name__
    parts = []
    for name, parameter in inspect.signature(type(module)).parameters.items():
        if name not in config:
            continue
        value, default = config[name], parameter.default
        if default is inspect.Parameter.empty:
            parts.append(repr(value))
        elif not (value == default or (name == "dtype" and np.dtype(default).name == value)):
            parts.append(f"{name}={value!r}")
    return f"{type(module).__name__}({', '.join(parts)})"


# ---------------------------------------------------------------------------------------
# Building, with the symbolic shape chain.


def _output_shape(module: Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the per-sample output shape of ``module`` for the input shape ``shape``.

    Raises ValueError with the reason when the module cannot take that shape.
    """
    if isinstance(module, Linear):
        if not shape or shape[-1] != module.in_features:
            raise ValueError(f"takes {module.in_features} features on its last axis, but "
                             f"gets samples of shape {list(shape)}")
        return (*shape[:-1], module.out_features)
    if isinstance(module, Standardize):
        if not shape or shape[-1] != module.features:
            raise ValueError(f"takes {module.features} features on its last axis, but gets "
                             f"samples of shape {list(shape)}")
        return shape
    if isinstance(module, (Conv1D, MaxPool1D)):
        channels = module.chan_in if isinstance(module, Conv1D) else None
        if len(shape) != 2:
            raise ValueError(f"takes samples of shape [length, channels], but gets "
                             f"{list(shape)}")
        length, got = shape
        if channels is not None and got != channels:
            raise ValueError(f"takes {channels} channels, but gets samples of shape "
                             f"{list(shape)}")
        if length < module.k_size:
            raise ValueError(f"has a window of {module.k_size}, longer than the input length "
                             f"{length}")
        out = (length - module.k_size) // module.stride + 1
        return (out, module.chan_out if channels is not None else got)
    if isinstance(module, Flatten):
        return (math.prod(shape),)
    if isinstance(module, _SAME_SHAPE):
        return shape
    # A layer without a rule here: a dry forward on one sample of zeros tells its shape.
    try:
        with np.errstate(all="ignore"):
            return tuple(module.predict(np.zeros((1, *shape), dtype=np.float32)).shape[1:])
    except Exception as exc:
        raise ValueError(f"cannot take samples of shape {list(shape)} "
                         f"({type(exc).__name__}: {exc})") from None


def build(specs: list[dict], input_shape: list[int] | tuple[int, ...],
          rng: np.random.Generator | int | None = None) -> tuple[Sequential, list[int]]:
    """Instantiate ``specs`` for samples of ``input_shape``; return it and its output shape.

    Weights are drawn from one generator, layer after layer, so a seed fixes them all.

    Raises:
        SpecError: a layer whose arguments its class refuses, or whose input shape (the
            output shape of the layer before) it cannot take; the message names the layer.
    """
    rng = np.random.default_rng(rng)
    network, shape = _build(specs, tuple(input_shape), rng, "")
    return network, list(shape)


def _build(specs: list[dict], shape: tuple[int, ...], rng: np.random.Generator,
           prefix: str) -> tuple[Sequential, tuple[int, ...]]:
    modules = []
    for index, spec in enumerate(specs):
        at, name, config = f"{prefix}{index}", spec["type"], dict(spec["config"])
        if name == _SEQUENTIAL:
            module, shape = _build(config["modules"], shape, rng, f"{at}.")
            modules.append(module)
            continue
        cls = _layer_classes()[name]
        if cls is Standardize and "features" not in config and shape:
            config["features"] = shape[-1]  # fitted to whatever it receives
        module = _construct(cls, config, rng, _where(at, name))
        try:
            shape = _output_shape(module, shape)
        except ValueError as exc:
            raise SpecError(f"{_where(at, format_spec(module))} {exc}") from None
        modules.append(module)
    return Sequential(*modules), shape


def _construct(cls: type[Module], config: dict, rng: np.random.Generator,
               where: str) -> Module:
    kwargs = dict(config)
    if "rng" in inspect.signature(cls).parameters:
        kwargs["rng"] = rng
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        reason = str(exc).replace(f"{cls.__name__}.__init__()", cls.__name__)
        raise SpecError(f"{where}: {reason}") from None
    # What is saved is config(): refuse an argument it would not keep as given
    # (Linear(13.5, 3) would silently become Linear(13, 3)).
    saved, fields = module.config(), LAYERS[cls.__name__].fields
    for key, value in config.items():
        if key not in saved or value is None:
            continue
        same = np.dtype(value).name == saved[key] if key == "dtype" else \
            ((saved[key] == value and type(saved[key]) is not bool) or saved[key] is value)
        if not same or not fields[key](saved[key]):
            raise SpecError(f"{where}: {key}={value!r} is not allowed")
    return module
