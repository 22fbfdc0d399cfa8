"""Export a network to ONNX: every nnlib layer as standard ONNX operators (opset 17).

=================  ======================================================================
nnlib              ONNX
=================  ======================================================================
Linear             MatMul, Add (the bias)
Conv1D             Transpose to (N, C, L), Conv (kernel as (C_out, C_in, K)), Transpose
MaxPool1D          Transpose, MaxPool (floor mode, no padding), Transpose
Flatten            Flatten(axis=1)
Scale              Mul by the factor
Standardize        Sub the mean, Div by the scale
TanH, ReLU, ...    Tanh, Relu, LeakyRelu(alpha), Sigmoid, Softplus
Softmax, LogSoftm  Softmax(axis=-1), LogSoftmax(axis=-1)
Sequential         its layers, inlined
=================  ======================================================================

The graph takes ``input``, float32 of shape ``(batch, *input_shape)``, and gives ``output``,
the network's last layer (log-probabilities for a LogSoftmax head). It computes in the
dtype numpy would (float32, or float64 when a layer's parameters are float64, after a
Cast). The artifact's metadata is carried as ONNX metadata properties, one per key, each
value as JSON text. Needs the ``onnx`` extra: ``pip install 'nnserve[onnx]'``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from . import __version__
from .activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Softplus, TanH
from .conv import Conv1D, Flatten, MaxPool1D
from .linear import Linear, Scale
from .module import Module, Sequential
from .preprocessing import Standardize

__all__ = ["CONVERTERS", "OPSET", "export_onnx", "to_onnx"]

OPSET = 17
_IR_VERSION = 8  # the IR of opset 17: what every ONNX Runtime since 1.12 reads
MISSING_ONNX = "ONNX export needs the 'onnx' extra: pip install 'nnserve[onnx]'"


class _Graph:
    """The nodes and constants being written; names are unique and readable."""

    def __init__(self, onnx, dtype: np.dtype) -> None:
        self.onnx, self.dtype = onnx, dtype
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, value) -> str:
        name = self.name(hint)
        array = np.asarray(value, dtype=self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes) -> str:
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out,
                                                     **attributes))
        return out


def _linear(g: _Graph, m: Linear, x: str, at: str) -> str:
    y = g.node("MatMul", [x, g.constant(f"{at}.weight", m.weight)], f"{at}.matmul")
    if m.bias is not None:
        y = g.node("Add", [y, g.constant(f"{at}.bias", m.bias)], f"{at}.add")
    return y


def _channels_first(g: _Graph, x: str, at: str) -> str:
    # nnlib's (N, L, C) layout is ONNX's (N, C, L) transposed, both ways.
    return g.node("Transpose", [x], f"{at}.transpose", perm=[0, 2, 1])


def _conv(g: _Graph, m: Conv1D, x: str, at: str) -> str:
    weight = g.constant(f"{at}.weight", np.transpose(m.weight, (2, 1, 0)))  # (O, C, K)
    inputs = [_channels_first(g, x, at), weight]
    if m.bias is not None:
        inputs.append(g.constant(f"{at}.bias", m.bias))
    y = g.node("Conv", inputs, f"{at}.conv", kernel_shape=[m.k_size], strides=[m.stride])
    return _channels_first(g, y, at)


def _maxpool(g: _Graph, m: MaxPool1D, x: str, at: str) -> str:
    y = g.node("MaxPool", [_channels_first(g, x, at)], f"{at}.maxpool",
               kernel_shape=[m.k_size], strides=[m.stride])
    return _channels_first(g, y, at)


def _standardize(g: _Graph, m: Standardize, x: str, at: str) -> str:
    y = g.node("Sub", [x, g.constant(f"{at}.mean", m.mean)], f"{at}.sub")
    return g.node("Div", [y, g.constant(f"{at}.scale", m.scale)], f"{at}.div")


def _unary(op: str, **attributes) -> Callable:
    def convert(g: _Graph, m: Module, x: str, at: str) -> str:
        values = {key: value(m) if callable(value) else value
                  for key, value in attributes.items()}
        return g.node(op, [x], f"{at}.{op.lower()}", **values)
    return convert


#: nnlib class -> ``convert(graph, module, input_name, where) -> output_name``. Subclasses
#: (StableSigmoid) use their base's entry.
CONVERTERS: dict[type[Module], Callable] = {
    Linear: _linear,
    Conv1D: _conv,
    MaxPool1D: _maxpool,
    Flatten: _unary("Flatten", axis=1),
    Scale: lambda g, m, x, at: g.node("Mul", [x, g.constant(f"{at}.factor", m.factor)],
                                      f"{at}.mul"),
    Standardize: _standardize,
    TanH: _unary("Tanh"),
    Sigmoid: _unary("Sigmoid"),
    ReLU: _unary("Relu"),
    LeakyReLU: _unary("LeakyRelu", alpha=lambda m: float(m.alpha)),
    Softplus: _unary("Softplus"),
    Softmax: _unary("Softmax", axis=-1),
    LogSoftmax: _unary("LogSoftmax", axis=-1),
}


def _converter(module: Module, at: str) -> Callable:
    for cls in type(module).__mro__:
        if cls in CONVERTERS:
            return CONVERTERS[cls]
    raise ValueError(f"layer {at}: no ONNX mapping for {type(module).__name__}")


def _emit(g: _Graph, model: Sequential, x: str, prefix: str) -> str:
    for index, module in enumerate(model.modules):
        at = f"{prefix}{index}"
        if type(module) is Sequential:
            x = _emit(g, module, x, f"{at}.")
        else:
            x = _converter(module, at)(g, module, x, at)
    return x


def to_onnx(model: Sequential, metadata: Mapping):
    """Return ``model`` as a checked ``onnx.ModelProto`` (opset :data:`OPSET`).

    Args:
        model: the network.
        metadata: the artifact's metadata; needs ``input_shape``; ``name`` and
            ``description`` name and document the graph.

    Raises:
        ValueError: a layer without an ONNX mapping.
        ImportError: ``onnx`` is not installed (the message says how to get it).
    """
    try:
        import onnx
        import onnx.checker
        import onnx.numpy_helper
    except ImportError as exc:
        raise ImportError(MISSING_ONNX) from exc
    dtypes = [value.dtype for value in model.parameters().values()]
    dtype = np.result_type(np.float32, *dtypes)  # numpy's promotion, as predict computes
    g = _Graph(onnx, dtype)
    x = "input"
    if dtype != np.float32:
        x = g.node("Cast", [x], "cast", to=onnx.helper.np_dtype_to_tensor_dtype(dtype))
    out = _emit(g, model, x, "")
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["output"], name="output"))
    element = onnx.helper.np_dtype_to_tensor_dtype
    input_shape = list(metadata["input_shape"])
    with np.errstate(all="ignore"):  # only the shape of a dry forward is needed
        output_shape = list(model.predict(np.zeros((1, *input_shape), np.float32)).shape[1:])
    graph = onnx.helper.make_graph(
        g.nodes, str(metadata.get("name", "nnlib")),
        [onnx.helper.make_tensor_value_info("input", element(np.dtype(np.float32)),
                                            ["batch", *input_shape])],
        [onnx.helper.make_tensor_value_info("output", element(dtype),
                                            ["batch", *output_shape])],
        g.initializers,
    )
    proto = onnx.helper.make_model(graph, producer_name="nnlib", producer_version=__version__,
                                   doc_string=str(metadata.get("description", "")),
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    proto.ir_version = _IR_VERSION
    onnx.helper.set_model_props(proto, {key: json.dumps(value, sort_keys=True)
                                        for key, value in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Sequential, metadata: Mapping, path: str | os.PathLike) -> Path:
    """Write :func:`to_onnx` of ``model`` to ``path``; return the path."""
    path = Path(path)
    path.write_bytes(to_onnx(model, metadata).SerializeToString())
    return path
