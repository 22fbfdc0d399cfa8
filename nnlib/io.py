"""Save and load networks as joblib artifacts that can never run code from the file.

An artifact is a joblib file of plain data only::

    {"format": "nnlib-artifact", "format_version": 1,
     "architecture": [{"type": "Scale", "config": {"factor": 0.0625}}, ...],
     "parameters": {"1.weight": ndarray, ...},      # Sequential.parameters() names
     "metadata": {"name": ..., "labels": [...], ...},
     "sha256": "..."}                               # over everything above

Pickle runs code by design, so :func:`load` never calls ``joblib.load``. It reads the file
into memory (bounded by ``max_bytes``), inflates it if it is zlib-compressed (joblib's
default compressor; other containers are refused), and unpickles it with
:class:`_RestrictedUnpickler`, a subclass of joblib's ``NumpyUnpickler`` that

- resolves only three globals: joblib's ``NumpyArrayWrapper``, ``numpy.ndarray`` (as the
  wrapper's ``subclass`` field, never called) and ``numpy.dtype`` (called only with a
  float dtype code it checks);
- refuses persistent ids, extension opcodes, every other callable opcode, and joblib's
  legacy ``NDArrayWrapper`` (it reads side files named by the artifact);
- checks each array wrapper's BUILD state (exact keys, plain ``ndarray``, C order, a
  little-endian float dtype, a shape of non-negative ints) and caps the total array bytes
  *before* joblib allocates anything.

Then the whole tree is checked to hold only dict/list/str/int/float/bool/None and float
arrays (arrays only as parameters), the sha256 is verified, and the network is rebuilt
through the explicit :data:`LAYERS` table: a type name from the file is only ever a key
into that table. Every refusal is an :class:`ArtifactError` naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import secrets
import stat
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

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
from .linear import Linear, Scale
from .module import Module, Sequential
from .preprocessing import Standardize

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "LAYERS",
    "REQUIRED_METADATA",
    "SUPPORTED_FORMAT_VERSIONS",
    "Artifact",
    "ArtifactError",
    "load",
    "save",
    "validate",
]

FORMAT = "nnlib-artifact"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
#: Upper bound on the file size, its inflated size, and the total bytes of its arrays.
DEFAULT_MAX_BYTES = 64 * 2**20
REQUIRED_METADATA = (
    "name", "version", "input_shape", "labels", "output",
    "description", "dataset", "metrics", "created",
)
#: metadata["output"] -> the class the network must end with.
OUTPUT_HEADS: dict[str, type[Module]] = {"softmax": Softmax, "log_softmax": LogSoftmax}

# Pickle protocol 4 is written explicitly (rather than pickle.DEFAULT_PROTOCOL, which
# Python 3.14 raised to 5) so that the PROTO header of every artifact is fixed and checked.
_PICKLE_PROTOCOL = 4
_PICKLE_HEADER = bytes([pickle.PROTO[0], _PICKLE_PROTOCOL])
_ZLIB_MAGIC = b"\x78"  # joblib's zlib container (joblib.compressor._ZLIB_PREFIX)
_LEGACY_ZFILE_MAGIC = b"ZF"  # joblib < 0.10 "z-files" (joblib.compressor._ZFILE_PREFIX)
_OTHER_CONTAINERS = {  # refused: their headers carry bytes no checksum covers
    b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ": "xz", b"\x5d\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
}
_TOP_KEYS = frozenset({"format", "format_version", "architecture", "parameters",
                       "metadata", "sha256"})
_PARAM_DTYPES = frozenset({"float16", "float32", "float64"})
# The little-endian dtype codes joblib writes for those dtypes, e.g. dtype('f4', False, True).
_DTYPE_CODES = {np.dtype(name).newbyteorder("<").str[1:]: name for name in _PARAM_DTYPES}
_MAX_DEPTH = 32  # nesting of containers in the file
_MAX_NODES = 100_000  # containers and scalars visited (also bounds shared-reference bombs)
_MAX_NDIM = 32
# Our artifacts take a few hundred pickle operations; each one can allocate, so a small
# file of cheap opcodes (MARK, EMPTY_LIST...) could otherwise cost gigabytes.
_MAX_OPCODES = 200_000
_MAX_INT = 2**63  # metadata ints must fit JSON consumers' int64


class ArtifactError(ValueError):
    """An artifact that cannot be saved or loaded; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"artifact {self.path!r}: {reason}")


class Artifact(NamedTuple):
    """A loaded network and its metadata."""

    model: Sequential
    metadata: dict


class _RefusedError(Exception):
    """A check failed inside the unpickler; :func:`load` turns it into an ArtifactError."""


# ---------------------------------------------------------------------------------------
# The table of layer types: the only way a name read from a file becomes a class.


def _size(value: object) -> bool:
    return type(value) is int and 1 <= value <= 2**31


def _flag(value: object) -> bool:
    return type(value) is bool


def _finite(value: object) -> bool:
    return type(value) is float and math.isfinite(value)


def _param_dtype(value: object) -> bool:
    return type(value) is str and value in _PARAM_DTYPES


def _no_parameters(config: dict) -> dict[str, tuple[int, ...]]:
    return {}


def _linear_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (c["in_features"], c["out_features"])}
    if c["bias"]:
        shapes["bias"] = (c["out_features"],)
    return shapes


def _conv_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (c["k_size"], c["chan_in"], c["chan_out"])}
    if c["bias"]:
        shapes["bias"] = (c["chan_out"],)
    return shapes


@dataclass(frozen=True)
class LayerType:
    """How one layer class is saved and rebuilt: ``cls(**config)`` after checking config.

    Attributes:
        cls: the nnlib class.
        fields: config key -> predicate on its value; the keys must be exactly these.
        shapes: config -> parameter name -> shape, checked against the file's arrays
            *before* the layer is built, so a config can never make the constructor
            allocate more than the (capped) arrays in the file.
    """

    cls: type[Module]
    fields: Mapping[str, Callable[[object], bool]]
    shapes: Callable[[dict], dict[str, tuple[int, ...]]] = _no_parameters


LAYERS: dict[str, LayerType] = {
    "Linear": LayerType(
        Linear,
        {"in_features": _size, "out_features": _size, "bias": _flag, "dtype": _param_dtype},
        _linear_shapes,
    ),
    "Conv1D": LayerType(
        Conv1D,
        {"k_size": _size, "chan_in": _size, "chan_out": _size, "stride": _size,
         "bias": _flag, "dtype": _param_dtype},
        _conv_shapes,
    ),
    "MaxPool1D": LayerType(MaxPool1D, {"k_size": _size, "stride": _size}),
    "Flatten": LayerType(Flatten, {}),
    "Scale": LayerType(Scale, {"factor": _finite}),
    "Standardize": LayerType(Standardize, {"features": _size, "dtype": _param_dtype}, lambda c: {"mean": (c["features"],), "scale": (c["features"],)}),  # noqa: E501
    "LeakyReLU": LayerType(LeakyReLU, {"alpha": _finite}),
    "TanH": LayerType(TanH, {}),
    "Sigmoid": LayerType(Sigmoid, {}),
    "StableSigmoid": LayerType(StableSigmoid, {}),
    "Softmax": LayerType(Softmax, {}),
    "LogSoftmax": LayerType(LogSoftmax, {}),
    "ReLU": LayerType(ReLU, {}),
    "Softplus": LayerType(Softplus, {}),
}
_SEQUENTIAL = "Sequential"  # nested: {"type": "Sequential", "config": {"modules": [...]}}


def _check_config(kind: str, config: object, where: str) -> LayerType:
    layer = LAYERS.get(kind) if type(kind) is str else None
    if layer is None:
        raise _RefusedError(f"{where}: unknown layer type {kind!r}")
    if type(config) is not dict or set(config) != set(layer.fields):
        got = sorted(config) if type(config) is dict else type(config).__name__
        raise _RefusedError(f"{where}: {kind} config must have keys {sorted(layer.fields)}, "
                            f"got {got}")
    for key, check in layer.fields.items():
        if not check(config[key]):
            raise _RefusedError(f"{where}: {kind} config {key}={config[key]!r} is not allowed")
    return layer


def _describe(modules: list[Module], where: str) -> list[dict]:
    """Return the architecture of ``modules`` as plain data (the save side of LAYERS)."""
    specs = []
    for index, module in enumerate(modules):
        at = f"{where}[{index}]"
        kind = type(module).__name__
        if type(module) is Sequential:
            specs.append({"type": _SEQUENTIAL,
                          "config": {"modules": _describe(module.modules, at)}})
            continue
        layer = LAYERS.get(kind)
        if layer is None or layer.cls is not type(module):
            raise _RefusedError(f"{at}: cannot save {type(module).__module__}.{kind}: only the "
                                f"nnlib layers {sorted(LAYERS)} and Sequential are supported")
        config = module.config()
        _check_config(kind, config, at)
        expected = layer.shapes(config)
        actual = {name: value.shape for name, value in module.parameters().items()}
        if actual != expected:
            raise _RefusedError(f"{at}: {kind} parameters {actual} do not match its config "
                                f"{expected}")
        specs.append({"type": kind, "config": config})
    return specs


def _plan(specs: object, where: str, prefix: str, depth: int,
          expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Check an architecture without building anything; collect the expected parameters."""
    if depth > _MAX_DEPTH:
        raise _RefusedError(f"{where}: Sequential nested deeper than {_MAX_DEPTH}")
    if type(specs) is not list:
        raise _RefusedError(f"{where}: expected a list of layers, got {type(specs).__name__}")
    for index, spec in enumerate(specs):
        at = f"{where}[{index}]"
        if type(spec) is not dict or set(spec) != {"type", "config"}:
            raise _RefusedError(f"{at}: a layer must be {{'type': ..., 'config': {{...}}}}")
        kind, config = spec["type"], spec["config"]
        if kind == _SEQUENTIAL:
            if type(config) is not dict or set(config) != {"modules"}:
                raise _RefusedError(f"{at}: Sequential config must be {{'modules': [...]}}")
            _plan(config["modules"], f"{at}.modules", f"{prefix}{index}.", depth + 1,
                  expected)
            continue
        layer = _check_config(kind, config, at)
        dtype = config.get("dtype", "")
        for name, shape in layer.shapes(config).items():
            expected[f"{prefix}{index}.{name}"] = (shape, dtype)


def _build(specs: list) -> list[Module]:
    """Instantiate an architecture already checked by :func:`_plan`."""
    modules: list[Module] = []
    for spec in specs:
        if spec["type"] == _SEQUENTIAL:
            modules.append(Sequential(*_build(spec["config"]["modules"])))
        else:
            modules.append(LAYERS[spec["type"]].cls(**spec["config"]))
    return modules


# ---------------------------------------------------------------------------------------
# Plain data: what metadata may hold, and the digest over the whole content.


def _to_plain(value: object, where: str, depth: int = 0) -> object:
    """Return ``value`` as JSON-like plain data (tuples become lists), or refuse it."""
    if depth > _MAX_DEPTH:
        raise _RefusedError(f"{where}: nested deeper than {_MAX_DEPTH}")
    if value is None:
        return value
    if isinstance(value, str):
        _check_text(value, where)
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        number = int(value)
        if abs(number) >= _MAX_INT:
            raise _RefusedError(f"{where}: integer {number} does not fit in 64 bits")
        return number
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise _RefusedError(f"{where}: {number} is not finite (metadata is served as JSON)")
        return number
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _RefusedError(f"{where}: key {key!r} is not a string")
            out[key] = _to_plain(item, f"{where}[{key!r}]", depth + 1)
        return out
    raise _RefusedError(f"{where}: {type(value).__name__} is not plain data "
                        "(dict, list, str, int, float, bool or None)")


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: pickle lets them through, JSON does not
        raise _RefusedError(f"{where}: string is not valid UTF-8") from None


def _check_tree(payload: object) -> None:
    """Refuse anything but plain data, and float arrays anywhere but ``parameters``."""
    stack: list[tuple[object, tuple, int]] = [(payload, (), 0)]
    visited = 0
    while stack:
        value, where, depth = stack.pop()
        visited += 1
        if visited > _MAX_NODES:
            raise _RefusedError(f"more than {_MAX_NODES} values in the file")
        if depth > _MAX_DEPTH:
            raise _RefusedError(f"{_path(where)}: nested deeper than {_MAX_DEPTH}")
        kind = type(value)
        if value is None or kind in (bool, float, str):
            if kind is float and not math.isfinite(value):
                raise _RefusedError(f"{_path(where)}: {value} is not finite")
            if kind is str:
                _check_text(value, _path(where))
        elif kind is int:
            if abs(value) >= _MAX_INT:
                raise _RefusedError(f"{_path(where)}: integer does not fit in 64 bits")
        elif kind is list:
            stack.extend((item, (*where, i), depth + 1) for i, item in enumerate(value))
        elif kind is dict:
            for key, item in value.items():
                if type(key) is not str:
                    raise _RefusedError(f"{_path(where)}: key of type {type(key).__name__}")
                _check_text(key, _path(where))
                stack.append((item, (*where, key), depth + 1))
        elif kind is np.ndarray and len(where) == 2 and where[0] == "parameters":
            if value.dtype.name not in _PARAM_DTYPES or value.dtype.hasobject:
                raise _RefusedError(f"{_path(where)}: array dtype {value.dtype} is not allowed")
        else:
            raise _RefusedError(f"{_path(where)}: {kind.__module__}.{kind.__qualname__} is not "
                                "plain data")


def _path(where: tuple) -> str:
    return "payload" + "".join(f"[{part!r}]" for part in where)


def _digest(format_version: int, architecture: list, parameters: Mapping[str, np.ndarray],
            metadata: dict) -> str:
    """Return the sha256 of the content, independent of dict order and host byte order."""
    sha = hashlib.sha256()

    def feed(chunk: bytes) -> None:
        # Length-prefixed, so no chunk can pass for the start of the next one.
        sha.update(len(chunk).to_bytes(8, "little"))
        sha.update(chunk)

    head = {"format": FORMAT, "format_version": format_version,
            "architecture": architecture, "metadata": metadata}
    feed(json.dumps(head, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    for name in sorted(parameters):
        array = parameters[name]
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        feed(json.dumps([name, little.dtype.str, list(array.shape)]).encode())
        feed(little.tobytes())
    return sha.hexdigest()


# ---------------------------------------------------------------------------------------
# The restricted unpickler.


def _refuse_opcode(name: str) -> Callable[[_RestrictedUnpickler], None]:
    def refuse(self: _RestrictedUnpickler) -> None:
        raise _RefusedError(f"pickle opcode {name} is not allowed")

    refuse.__name__ = f"refuse_{name.lower()}"
    return refuse


class _CountingDispatch(dict):
    """An opcode table that refuses to run more than ``limit`` opcodes."""

    def __init__(self, table: dict, limit: int) -> None:
        super().__init__(table)
        self.limit = self.remaining = limit

    def __getitem__(self, opcode: int) -> Callable:
        self.remaining -= 1
        if self.remaining < 0:
            raise _RefusedError(f"more than {self.limit} pickle operations")
        try:
            return super().__getitem__(opcode)
        except KeyError:
            raise _RefusedError(f"unknown pickle opcode {bytes([opcode])!r}") from None


class _RestrictedUnpickler(NumpyUnpickler):
    """joblib's NumpyUnpickler with every code-running path closed and arrays bounded.

    Reads from an in-memory ``io.BytesIO`` so joblib's array reads can never block or read
    past the data, and never memory-maps (``mmap_mode=None``).
    """

    _GLOBALS = MappingProxyType({
        ("joblib.numpy_pickle", "NumpyArrayWrapper"): NumpyArrayWrapper,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    })
    _LEGACY = frozenset({("joblib.numpy_pickle", "NDArrayWrapper"),
                         ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
                         ("joblib.numpy_pickle", "ZNDArrayWrapper"),
                         ("joblib.numpy_pickle_compat", "ZNDArrayWrapper")})
    # The BUILD state joblib 1.6 writes for every array (see NumpyArrayWrapper.__init__).
    _WRAPPER_KEYS = frozenset({"subclass", "shape", "order", "dtype", "allow_mmap",
                               "numpy_array_alignment_bytes"})
    _ALIGNMENT = 16  # joblib.numpy_pickle.NUMPY_ARRAY_ALIGNMENT_BYTES

    dispatch = NumpyUnpickler.dispatch.copy()

    def __init__(self, data: io.BytesIO, max_array_bytes: int) -> None:
        super().__init__("", data, ensure_native_byte_order=True, mmap_mode=None)
        self.max_array_bytes = max_array_bytes
        self.array_bytes = 0
        with data.getbuffer() as view:
            self.data_size = view.nbytes
        # pickle._Unpickler.load looks opcodes up in self.dispatch: a per-instance counting
        # table bounds the work of one load without sharing a counter between threads.
        self.dispatch = _CountingDispatch(type(self).dispatch, _MAX_OPCODES)
        # pickle._Unpickler.load reads through _Unframer(self._file_read,
        # self._file_readline): every read that is not inside a frame comes through these.
        self._file_read = self._read_outside_frames
        self._file_readline = self._readline_outside_frames
        self._frame_io = False  # reading a FRAME's length or body
        self._framed = False  # a frame was loaded since the start or the last array data
        self._unframed = 0  # opcode bytes read outside frames since then

    # pickle's _Unframer silently falls back to unframed reads when a frame ends early and
    # never checks that a frame body is complete: a changed frame length could then load
    # the same content. The pickler frames every chunk of 4 bytes or more
    # (pickle._Framer._FRAME_SIZE_MIN) and joblib closes a frame only right before array
    # data, so opcodes outside frames are legal only as one chunk of fewer than 4 bytes
    # that no frame precedes.
    def _read_outside_frames(self, n: int) -> bytes:
        data = self.file_handle.read(n)
        if self._frame_io:
            if len(data) != n:
                raise _RefusedError(f"pickle frame declares {n} bytes, the file has "
                                    f"{len(data)}")
        elif not (n == 1 and data == pickle.FRAME):
            self._count_unframed(len(data))
        return data

    def _readline_outside_frames(self) -> bytes:
        data = self.file_handle.readline()
        self._count_unframed(len(data))
        return data

    def _count_unframed(self, size: int) -> None:
        self._unframed += size
        if self._framed or self._unframed >= 4:
            raise _RefusedError("pickle bytes outside a frame: the frame structure is corrupt")

    def load_frame(self) -> None:
        """FRAME: read the length and body exactly, through the checks above."""
        self._frame_io = True
        try:
            pickle._Unpickler.load_frame(self)
        finally:
            self._frame_io = False
        self._framed = True

    def find_class(self, module: str, name: str) -> object:
        """Return one of the three allowed globals; refuse every other name."""
        if (module, name) in self._LEGACY:
            raise _RefusedError(f"legacy joblib format ({name} reads side files named by the "
                                "artifact) is not supported")
        try:
            return self._GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _RefusedError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: object) -> object:
        """Refuse persistent ids: they ask the loader to resolve an outside object."""
        raise _RefusedError("persistent ids are not allowed")

    def load_reduce(self) -> None:
        """REDUCE: only ``numpy.dtype(code, False, True)`` for a float code, as joblib writes."""
        args, func = self.stack[-1], self.stack[-2]
        if func is not np.dtype:
            raise _RefusedError(f"calling {getattr(func, '__name__', type(func).__name__)} is "
                                "not allowed")
        if (type(args) is not tuple or len(args) != 3 or type(args[0]) is not str
                or args[0] not in _DTYPE_CODES or args[1] is not False or args[2] is not True):
            raise _RefusedError(f"array dtype {args!r} is not allowed (float16/32/64 only)")
        self.stack.pop()
        self.stack[-1] = np.dtype(_DTYPE_CODES[args[0]]).newbyteorder("<")

    def load_newobj(self) -> None:
        """NEWOBJ: only ``NumpyArrayWrapper.__new__(NumpyArrayWrapper)``."""
        args, cls = self.stack[-1], self.stack[-2]
        if cls is not NumpyArrayWrapper or type(args) is not tuple or args:
            raise _RefusedError(f"creating {getattr(cls, '__name__', type(cls).__name__)} is "
                                "not allowed")
        del self.stack[-2:]
        self.append(NumpyArrayWrapper.__new__(NumpyArrayWrapper))

    def load_build(self) -> None:
        """BUILD: check the state of a dtype or array wrapper, then let joblib read the array."""
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is NumpyArrayWrapper:
            shape, dtype = self._check_wrapper(state)
        elif isinstance(inst, np.dtype):
            # Only a dtype made by load_reduce gets here; its state must be the canonical one
            # (a different state could turn a float code into a structured dtype).
            canonical = inst.__reduce__()[2]
            if (type(state) is not tuple
                    or not all(type(item) in (int, str, type(None)) for item in state)
                    or state != canonical):
                raise _RefusedError(f"dtype state {state!r} is not allowed")
        else:
            raise _RefusedError(f"setting the state of {type(inst).__name__} is not allowed")
        NumpyUnpickler.load_build(self)
        if type(inst) is NumpyArrayWrapper:
            array = self.stack[-1]
            if type(array) is not np.ndarray or array.shape != shape or array.dtype != dtype:
                raise _RefusedError("array read back does not match its declaration")
            self._framed, self._unframed = False, 0

    def _check_wrapper(self, state: object) -> tuple[tuple[int, ...], np.dtype]:
        if type(state) is not dict or set(state) != self._WRAPPER_KEYS:
            keys = sorted(map(repr, state)) if type(state) is dict else type(state).__name__
            raise _RefusedError(f"array wrapper state has keys {keys}, expected "
                                f"{sorted(self._WRAPPER_KEYS)}")
        shape, dtype = state["shape"], state["dtype"]
        if state["subclass"] is not np.ndarray:
            raise _RefusedError("array subclasses are not allowed")
        if type(state["order"]) is not str or state["order"] != "C":
            raise _RefusedError(f"array order {state['order']!r} is not allowed (C only)")
        if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.str[1:] not in \
                _DTYPE_CODES or dtype.byteorder not in "<=":
            raise _RefusedError(f"array dtype {dtype!r} is not allowed")
        # save() always writes through a seekable file, so joblib always writes these.
        if state["allow_mmap"] is not True or \
                type(state["numpy_array_alignment_bytes"]) is not int or \
                state["numpy_array_alignment_bytes"] != self._ALIGNMENT:
            raise _RefusedError("array wrapper flags differ from what joblib writes")
        if (type(shape) is not tuple or len(shape) > _MAX_NDIM
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise _RefusedError(f"array shape {shape!r} is not a tuple of non-negative ints")
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        self.array_bytes += nbytes
        if self.array_bytes > self.max_array_bytes:
            raise _RefusedError(f"arrays declare {self.array_bytes} bytes, more than the limit "
                                f"of {self.max_array_bytes} (shape {shape})")
        self._check_padding(nbytes, shape)
        return shape, dtype

    def _check_padding(self, nbytes: int, shape: tuple[int, ...]) -> None:
        # joblib pads each array to 16 bytes with 1 length byte and 0xff bytes; the padding
        # is not part of the digest, so check it byte for byte: no byte of the file may
        # change without the load failing.
        frame = self._unframer.current_frame
        if frame is not None and frame.read(1):
            raise _RefusedError("array data inside a pickle frame")
        handle = self.file_handle
        start = handle.tell()
        expected = self._ALIGNMENT - (start + 1) % self._ALIGNMENT
        padding = handle.read(1 + expected)
        available = self.data_size - start - len(padding)
        handle.seek(start)
        if padding != bytes([expected]) + b"\xff" * expected:
            raise _RefusedError("array padding is corrupt")
        if nbytes > available:
            raise _RefusedError(f"array of shape {shape} needs {nbytes} bytes, the file has "
                                f"{available} left")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.FRAME[0]] = load_frame
    # Opcodes that call or import something this format never needs.
    for _name in ("PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ",
                  "NEWOBJ_EX", "NEXT_BUFFER", "READONLY_BUFFER"):
        dispatch[getattr(pickle, _name)[0]] = _refuse_opcode(_name)
    del _name


# ---------------------------------------------------------------------------------------
# Reading and writing files.


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    # O_NONBLOCK so that a FIFO named like an artifact cannot hang the loader.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _RefusedError("not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise _RefusedError(f"file has {info.st_size} bytes, more than the limit of "
                                f"{max_bytes}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # the file grew while we read it
        raise _RefusedError(f"file has more than {max_bytes} bytes")
    return data


def _inflate(data: bytes, max_bytes: int) -> bytes:
    """Return the pickle stream inside ``data``: as is, or inflated from joblib's zlib."""
    if not data:
        raise _RefusedError("file is empty")
    if data.startswith(_PICKLE_HEADER):
        return data
    if data.startswith(_LEGACY_ZFILE_MAGIC):
        raise _RefusedError("legacy joblib format (joblib < 0.10 z-file) is not supported")
    for magic, name in _OTHER_CONTAINERS.items():
        if data.startswith(magic):
            raise _RefusedError(f"{name} compression is not supported (zlib only)")
    if data.startswith(_ZLIB_MAGIC):
        inflater = zlib.decompressobj(zlib.MAX_WBITS)
        try:
            stream = inflater.decompress(data, max_bytes + 1)
        except zlib.error as exc:
            raise _RefusedError(f"corrupt zlib data ({exc})") from None
        if len(stream) > max_bytes or inflater.unconsumed_tail:
            raise _RefusedError(f"inflates to more than the limit of {max_bytes} bytes")
        if not inflater.eof:
            raise _RefusedError("zlib data is truncated")
        if inflater.unused_data:
            raise _RefusedError("unexpected bytes after the zlib data")
        if not stream.startswith(_PICKLE_HEADER):
            raise _RefusedError(f"compressed stream is not a protocol-{_PICKLE_PROTOCOL} pickle")
        return stream
    if data[:1] == pickle.PROTO:
        raise _RefusedError(f"pickle protocol {data[1:2].hex() or '?'} is not supported "
                            f"(protocol {_PICKLE_PROTOCOL} only)")
    raise _RefusedError("not a joblib artifact (unknown header)")


def _unpickle(stream: bytes, max_bytes: int) -> object:
    handle = io.BytesIO(stream)
    unpickler = _RestrictedUnpickler(handle, max_bytes)
    payload = unpickler.load()
    if handle.read(1):
        raise _RefusedError("unexpected bytes after the end of the pickle")
    return payload


def _check_payload(payload: object) -> tuple[list, dict[str, np.ndarray], dict]:
    """Check the payload's layout, version and digest; return its three parts."""
    if type(payload) is not dict or set(payload) != _TOP_KEYS:
        keys = sorted(payload) if type(payload) is dict else type(payload).__name__
        raise _RefusedError(f"top level must be a dict with keys {sorted(_TOP_KEYS)}, got {keys}")
    if payload["format"] != FORMAT:
        raise _RefusedError(f"format {payload['format']!r} is not {FORMAT!r}")
    version = payload["format_version"]
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:
        raise _RefusedError(f"unsupported format version {version!r} (supported: "
                            f"{sorted(SUPPORTED_FORMAT_VERSIONS)})")
    architecture, parameters, metadata = (payload["architecture"], payload["parameters"],
                                          payload["metadata"])
    if type(parameters) is not dict or not all(
            type(value) is np.ndarray for value in parameters.values()):
        raise _RefusedError("parameters must be a dict of arrays")
    if type(metadata) is not dict:
        raise _RefusedError("metadata must be a dict")
    if type(payload["sha256"]) is not str:
        raise _RefusedError("sha256 must be a string")
    if _digest(version, architecture, parameters, metadata) != payload["sha256"]:
        raise _RefusedError("sha256 mismatch: the file is corrupt or was modified")
    return architecture, parameters, metadata


def _rebuild(architecture: object, parameters: dict[str, np.ndarray]) -> Sequential:
    expected: dict[str, tuple[tuple[int, ...], str]] = {}
    _plan(architecture, "architecture", "", 0, expected)
    if set(expected) != set(parameters):
        raise _RefusedError(f"parameters {sorted(parameters)} do not match the architecture's "
                            f"{sorted(expected)}")
    for name, (shape, dtype) in expected.items():
        array = parameters[name]
        if array.shape != shape or array.dtype.name != dtype:
            raise _RefusedError(f"parameter {name} is {array.dtype.name}{list(array.shape)}, the "
                                f"architecture says {dtype}{list(shape)}")
        if not np.isfinite(array).all():
            raise _RefusedError(f"parameter {name} holds NaN or infinity")
    model = Sequential(*_build(architecture))
    for name, live in model.parameters().items():
        live[...] = parameters[name]
    return model


def load(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
         check_contract: bool = True) -> Artifact:
    """Load an artifact written by :func:`save`, without ever running code from the file.

    Args:
        path: the ``.joblib`` file.
        max_bytes: the most bytes accepted for the file, its inflated stream, and the
            total of its arrays (each checked before anything that size is allocated).
        check_contract: also run :func:`validate` (the serving contract: metadata keys,
            output head, a dry forward). Structural and integrity checks always run.

    Returns:
        ``Artifact(model, metadata)``: a fresh :class:`~nnlib.Sequential` and a new dict.

    Raises:
        ArtifactError: for any file that is not a valid artifact; the message names the
            file and the reason. Nothing is cached or registered, so a failed load leaves
            nothing behind.
    """
    path = Path(path)
    try:
        stream = _inflate(_read_bounded(path, max_bytes), max_bytes)
        payload = _unpickle(stream, max_bytes)
        _check_tree(payload)
        architecture, parameters, metadata = _check_payload(payload)
        model = _rebuild(architecture, parameters)
    except _RefusedError as exc:
        raise ArtifactError(path, str(exc)) from None
    except OSError as exc:
        raise ArtifactError(path, f"cannot read the file ({exc.strerror or exc})") from None
    except Exception as exc:  # any parse failure of a corrupt file is a refusal too
        raise ArtifactError(path, f"unreadable artifact ({type(exc).__name__}: {exc})") \
            from None
    artifact = Artifact(model, metadata)
    if check_contract:
        validate(artifact, path=path)
    return artifact


def save(path: str | os.PathLike, model: Sequential, metadata: Mapping, *,
         compress: int | bool = 0, check_contract: bool = True) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` as an artifact; return the path.

    The file is written next to ``path`` and renamed into place, so readers never see a
    partial artifact.

    Args:
        path: destination, conventionally ``models/<name>.joblib``.
        model: a :class:`~nnlib.Sequential` of layers from :data:`LAYERS` (nesting allowed).
        metadata: plain data (dict/list/tuple/str/int/float/bool/None, finite floats);
            tuples are stored as lists and numpy scalars as Python numbers.
        compress: zlib level 0-9 (``True`` means 3, joblib's default); 0 writes plain.
        check_contract: refuse a model/metadata pair that :func:`validate` would refuse.

    Raises:
        ArtifactError: the model or metadata cannot be saved (the reason says why).
    """
    path = Path(path)
    level = 3 if compress is True else int(compress)
    if not 0 <= level <= 9:
        raise ValueError(f"compress must be a zlib level 0-9, got {compress!r}")
    if type(model) is not Sequential:
        raise ArtifactError(path, f"the model must be a Sequential, got "
                                  f"{type(model).__name__}")
    try:
        architecture = _describe(model.modules, "architecture")
        plain = _to_plain(dict(metadata), "metadata")
    except _RefusedError as exc:
        raise ArtifactError(path, str(exc)) from None
    if check_contract:
        validate(Artifact(model, plain), path=path)
    parameters = {
        name: np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        for name, value in model.parameters().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "parameters": parameters,
        "metadata": plain,
        "sha256": _digest(FORMAT_VERSION, architecture, parameters, plain),
    }
    _write_atomically(path, payload, level)
    return path


def _write_atomically(path: Path, payload: dict, level: int) -> None:
    import joblib  # joblib.dump is only needed to write

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow or reuse an existing name; mode 0o666 so the umask applies as
    # it would to any new file (the service may run as another user).
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        joblib.dump(payload, os.fspath(temporary), compress=("zlib", level) if level else 0,
                    protocol=_PICKLE_PROTOCOL)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# The serving contract.


def validate(artifact: Artifact, *, path: str | os.PathLike | None = None) -> None:
    """Check that an artifact can be served; raise :class:`ArtifactError` if not.

    The metadata holds :data:`REQUIRED_METADATA` with the right types, the network ends in
    the head named by ``metadata["output"]`` (:data:`OUTPUT_HEADS`), and a dry forward on
    zeros of shape ``(1, *input_shape)`` in float32 gives one finite probability row of
    ``len(labels)`` values (log-probabilities for ``"log_softmax"``).
    """
    model, metadata = artifact
    where = path
    if where is None:
        name = metadata.get("name") if isinstance(metadata, dict) else None
        where = f"<artifact {name!r}>" if isinstance(name, str) else "<artifact>"

    def refuse(reason: str) -> ArtifactError:
        return ArtifactError(where, reason)

    if not isinstance(metadata, dict):
        raise refuse("metadata must be a dict")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise refuse(f"metadata is missing keys {missing}")
    for key in ("name", "version", "description", "created"):
        if type(metadata[key]) is not str or not metadata[key]:
            raise refuse(f"metadata[{key!r}] must be a non-empty string")
    for key in ("dataset", "metrics"):
        if type(metadata[key]) is not dict:
            raise refuse(f"metadata[{key!r}] must be a dict")
    labels, shape, output = metadata["labels"], metadata["input_shape"], metadata["output"]
    if (type(labels) is not list or not labels or not all(type(x) is str for x in labels)
            or len(set(labels)) != len(labels)):
        raise refuse("metadata['labels'] must be a non-empty list of distinct strings")
    if (type(shape) is not list or not 1 <= len(shape) <= 8
            or not all(type(n) is int and 1 <= n <= 2**20 for n in shape)
            or math.prod(shape) > 2**20):  # bounds the dry forward's input
        raise refuse(f"metadata['input_shape'] {shape!r} must be a list of positive ints")
    if output not in OUTPUT_HEADS:
        raise refuse(f"metadata['output'] {output!r} must be one of {sorted(OUTPUT_HEADS)}")
    if not isinstance(model, Sequential) or not model.modules:
        raise refuse("the model must be a non-empty Sequential")
    head = OUTPUT_HEADS[output]
    if type(model.modules[-1]) is not head:
        raise refuse(f"metadata['output'] is {output!r} but the network ends in "
                     f"{type(model.modules[-1]).__name__}, not {head.__name__}")
    try:
        # Silenced and then checked: a network that overflows is refused below, by value.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = model.predict(np.zeros((1, *shape), dtype=np.float32))
    except Exception as exc:
        raise refuse(f"a dry forward on zeros of shape {[1, *shape]} failed "
                     f"({type(exc).__name__}: {exc})") from None
    if not isinstance(out, np.ndarray) or out.shape != (1, len(labels)):
        got = getattr(out, "shape", type(out).__name__)
        raise refuse(f"a dry forward gave {got}, expected (1, {len(labels)}) for "
                     f"{len(labels)} labels")
    if not np.isfinite(out).all():
        raise refuse("a dry forward gave NaN or infinity")
    with np.errstate(all="ignore"):
        probabilities = np.exp(out.astype(np.float64)) if output == "log_softmax" \
            else out.astype(np.float64)
    if (probabilities < 0).any() or (probabilities > 1 + 1e-4).any() or \
            abs(probabilities.sum() - 1) > 1e-3:
        raise refuse(f"a dry forward did not give probabilities for output {output!r}")
