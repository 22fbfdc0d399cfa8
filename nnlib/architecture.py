"""Architectures as plain data: the table of layer types, and the cost of a forward pass.

An architecture is a list of ``{"type": name, "config": {...}}``; ``"Sequential"`` nests one
(``{"modules": [...]}``). A type name read from a file is only ever a key into
:data:`LAYERS`; :func:`plan` checks a whole architecture and :func:`estimate` its compute
before :func:`build` makes anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .activation import (
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    StableSigmoid,
    TanH,
)
from .conv import Conv1D, Flatten, MaxPool1D
from .limits import DEFAULT_LIMITS, Limits, Refused, quote
from .linear import Linear, Scale
from .module import Module, Sequential
from .preprocessing import Standardize

__all__ = ["LAYERS", "LayerType", "build", "describe", "estimate", "plan"]

Shape = tuple[int, ...]
PARAM_DTYPES = frozenset({"float16", "float32", "float64"})
SEQUENTIAL = "Sequential"


def _size(value: object) -> bool:
    return type(value) is int and 1 <= value <= 2**31


def _flag(value: object) -> bool:
    return type(value) is bool


def _finite(value: object) -> bool:
    return type(value) is float and math.isfinite(value)


def _dtype(value: object) -> bool:
    return type(value) is str and value in PARAM_DTYPES


def _no_parameters(config: dict) -> dict[str, Shape]:
    return {}


def _weighted(weight: Callable[[dict], Shape], out: str) -> Callable[[dict], dict[str, Shape]]:
    def shapes(config: dict) -> dict[str, Shape]:
        return {"weight": weight(config), **({"bias": (config[out],)} if config["bias"] else {})}

    return shapes


def _elementwise(per_element: int) -> Callable[[dict, Shape], tuple[Shape, int, int]]:
    def cost(config: dict, shape: Shape) -> tuple[Shape, int, int]:
        n = math.prod(shape)
        return shape, per_element * n, n

    return cost


def _linear_cost(c: dict, shape: Shape) -> tuple[Shape, int, int]:
    _expect(shape[-1] == c["in_features"], f"{c['in_features']} input features", shape)
    rows = math.prod(shape[:-1])
    return (*shape[:-1], c["out_features"]), 2 * rows * c["in_features"] * c["out_features"], \
        rows * c["out_features"]


def _windows(k: int, stride: int, shape: Shape) -> int:
    _expect(len(shape) == 3 and shape[1] >= k, f"(N, L >= {k}, C)", shape)
    return (shape[1] - k) // stride + 1


def _conv_cost(c: dict, shape: Shape) -> tuple[Shape, int, int]:
    l_out = _windows(c["k_size"], c["stride"], shape)
    _expect(shape[2] == c["chan_in"], f"{c['chan_in']} channels", shape)
    columns = shape[0] * l_out * c["k_size"] * c["chan_in"]  # the im2col matrix
    return (shape[0], l_out, c["chan_out"]), 2 * columns * c["chan_out"], \
        max(columns, shape[0] * l_out * c["chan_out"])


def _pool_cost(c: dict, shape: Shape) -> tuple[Shape, int, int]:
    out = (shape[0], _windows(c["k_size"], c["stride"], shape), shape[2])
    return out, c["k_size"] * math.prod(out), math.prod(out)


def _flatten_cost(c: dict, shape: Shape) -> tuple[Shape, int, int]:
    rest = math.prod(shape[1:])
    return (shape[0], rest), 0, shape[0] * rest


def _standardize_cost(c: dict, shape: Shape) -> tuple[Shape, int, int]:
    _expect(len(shape) >= 1 and shape[-1] == c["features"],
            f"{c['features']} features on its last axis", shape)
    return shape, 2 * math.prod(shape), math.prod(shape)


def _expect(ok: bool, what: str, shape: Shape) -> None:
    if not ok:
        raise Refused(f"expects {what}, gets shape {list(shape)}")


@dataclass(frozen=True)
class LayerType:
    """How one layer class is saved, checked, costed and rebuilt (``cls(**config)``).

    Attributes:
        cls: the nnlib class.
        fields: config key -> predicate on its value; the keys must be exactly these.
        shapes: config -> parameter name -> shape, checked against the file's parameters
            before the layer is built, so a config never makes the constructor allocate
            more than the (bounded) data in the file.
        cost: (config, input shape) -> (output shape, FLOPs, elements of the largest array
            it makes), for one forward pass; refuses an input shape the layer cannot take.
            Element-wise costs are rough: one per numpy pass, about ten per transcendental.
    """

    cls: type[Module]
    fields: Mapping[str, Callable[[object], bool]]
    cost: Callable[[dict, Shape], tuple[Shape, int, int]]
    shapes: Callable[[dict], dict[str, Shape]] = _no_parameters


LAYERS: dict[str, LayerType] = {
    "Linear": LayerType(
        Linear, {"in_features": _size, "out_features": _size, "bias": _flag, "dtype": _dtype},
        _linear_cost, _weighted(lambda c: (c["in_features"], c["out_features"]), "out_features"),
    ),
    "Conv1D": LayerType(
        Conv1D, {"k_size": _size, "chan_in": _size, "chan_out": _size, "stride": _size,
                 "bias": _flag, "dtype": _dtype},
        _conv_cost, _weighted(lambda c: (c["k_size"], c["chan_in"], c["chan_out"]), "chan_out"),
    ),
    "MaxPool1D": LayerType(MaxPool1D, {"k_size": _size, "stride": _size}, _pool_cost),
    "Flatten": LayerType(Flatten, {}, _flatten_cost),
    "Scale": LayerType(Scale, {"factor": _finite}, _elementwise(1)),
    "Standardize": LayerType(
        Standardize, {"features": _size, "dtype": _dtype}, _standardize_cost,
        lambda c: {"mean": (c["features"],), "scale": (c["features"],)},
    ),
    "LeakyReLU": LayerType(LeakyReLU, {"alpha": _finite}, _elementwise(3)),
    "TanH": LayerType(TanH, {}, _elementwise(10)),
    "Sigmoid": LayerType(Sigmoid, {}, _elementwise(12)),
    "StableSigmoid": LayerType(StableSigmoid, {}, _elementwise(12)),
    "Softmax": LayerType(Softmax, {}, _elementwise(12)),
    "LogSoftmax": LayerType(LogSoftmax, {}, _elementwise(14)),
    "ReLU": LayerType(ReLU, {}, _elementwise(1)),
    "Softplus": LayerType(Softplus, {}, _elementwise(12)),
}


def _at(trail: tuple[int, ...]) -> str:
    return "architecture" + "".join(f"[{i}]" if n == 0 else f".modules[{i}]"
                                    for n, i in enumerate(trail))


def _check_config(kind: object, config: object) -> LayerType:
    layer = LAYERS.get(kind) if type(kind) is str else None
    if layer is None:
        raise Refused(f"unknown layer type {quote(kind)}")
    if type(config) is not dict or config.keys() != layer.fields.keys():
        got = [quote(k) for k in list(config)[:8]] if type(config) is dict else quote(config)
        raise Refused(f"{kind} config must have keys {sorted(layer.fields)}, got {got}")
    for key, check in layer.fields.items():
        if not check(config[key]):
            raise Refused(f"{kind} config {key}={quote(config[key])} is not allowed")
    return layer


def describe(modules: list[Module]) -> list[dict]:
    """Return the architecture of ``modules`` as plain data (the save side of :data:`LAYERS`)."""
    specs = []
    for index, module in enumerate(modules):
        kind = type(module).__name__
        if type(module) is Sequential:
            specs.append({"type": SEQUENTIAL, "config": {"modules": describe(module.modules)}})
            continue
        layer = LAYERS.get(kind)
        if layer is None or layer.cls is not type(module):
            raise Refused(f"layer {index}: cannot save {type(module).__module__}.{kind}: only "
                          f"the nnlib layers {sorted(LAYERS)} and Sequential are supported")
        config = module.config()
        _check_config(kind, config)
        actual = {name: value.shape for name, value in module.parameters().items()}
        if actual != layer.shapes(config):
            raise Refused(f"layer {index}: {kind} parameters {actual} do not match its config")
        specs.append({"type": kind, "config": config})
    return specs


def _leaves(specs: object, limits: Limits, trail: tuple[int, ...] = ()
            ) -> Iterator[tuple[tuple[int, ...], str, dict]]:
    """Yield (position, type, config) of every layer, checking the nesting on the way."""
    if len(trail) > limits.depth:
        raise Refused(f"Sequential nested deeper than {limits.depth} (Limits.depth)")
    if type(specs) is not list:
        raise Refused(f"{_at(trail)}: expected a list of layers, got {quote(specs)}")
    for index, spec in enumerate(specs):
        at = (*trail, index)
        if type(spec) is not dict or spec.keys() != {"type", "config"}:
            raise Refused(f"{_at(at)}: a layer must be {{'type': ..., 'config': {{...}}}}")
        kind, config = spec["type"], spec["config"]
        if kind == SEQUENTIAL:
            if type(config) is not dict or config.keys() != {"modules"}:
                raise Refused(f"{_at(at)}: Sequential config must be {{'modules': [...]}}")
            yield from _leaves(config["modules"], limits, at)
        else:
            yield at, kind, config


def plan(specs: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, tuple[Shape, str]]:
    """Check an architecture without building anything; return its parameters' shapes and dtypes.

    Parameter names are those of :meth:`Sequential.parameters` (``"1.weight"``,
    ``"3.0.bias"``). Refuses more than :attr:`Limits.layers` layers.
    """
    expected: dict[str, tuple[Shape, str]] = {}
    for count, (at, kind, config) in enumerate(_leaves(specs, limits), 1):
        if count > limits.layers:
            raise Refused(f"the network has more than {limits.layers} layers (Limits.layers)")
        try:
            layer = _check_config(kind, config)
        except Refused as exc:
            raise Refused(f"{_at(at)}: {exc}") from None
        prefix = "".join(f"{i}." for i in at)
        for name, shape in layer.shapes(config).items():
            expected[prefix + name] = (shape, config["dtype"])
    return expected


def estimate(specs: list, input_shape: list[int], limits: Limits = DEFAULT_LIMITS) -> int:
    r"""Return the FLOPs of one sample's forward pass; refuse a pass over the limits.

    Propagates the shape :math:`(1, *\text{input\_shape})` through an architecture that
    :func:`plan` accepted, summing each layer's FLOPs (a matrix product of
    :math:`m \times k` by :math:`k \times n` counts :math:`2mkn`) and bounding the elements of
    every array a layer makes, without running anything.
    """
    shape, flops = (1, *input_shape), 0
    for at, kind, config in _leaves(specs, limits):
        try:
            shape, layer_flops, elements = LAYERS[kind].cost(config, shape)
        except Refused as exc:
            raise Refused(f"a dry forward on zeros of shape {[1, *input_shape]} would fail: "
                          f"{_at(at)} {kind} {exc}") from None
        flops += layer_flops
        if elements > limits.activation_elements:
            raise Refused(f"{_at(at)} {kind} makes an array of {elements} elements for one "
                          f"sample, more than {limits.activation_elements} "
                          "(Limits.activation_elements)")
        if flops > limits.flops:
            raise Refused(f"one sample's forward pass takes more than {limits.flops} "
                          f"floating-point operations by {_at(at)} (Limits.flops)")
    return flops


def build(specs: list) -> list[Module]:
    """Instantiate an architecture that :func:`plan` accepted."""
    return [Sequential(*build(spec["config"]["modules"])) if spec["type"] == SEQUENTIAL
            else LAYERS[spec["type"]].cls(**spec["config"]) for spec in specs]
