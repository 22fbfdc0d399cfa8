"""Convert format-1 artifacts (numpy arrays pickled as joblib objects) to format 2.

For files you trust only. :func:`convert` first proves, with ``pickletools.genops``, that the
file names no global but the three a format-1 artifact needs (joblib's ``NumpyArrayWrapper``,
``numpy.ndarray``, ``numpy.dtype``), then reads it with ``joblib.load`` and writes it again
with :func:`nnlib.save`. joblib still calls what those globals allow, so a crafted file may
cost memory or time; it runs nothing else.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np

from .architecture import build, plan
from .io import Artifact, _inflate, _read_bounded, save
from .limits import DEFAULT_LIMITS, ArtifactError, Refused, quote
from .module import Sequential

__all__ = ["convert"]

_ALLOWED = frozenset({("joblib.numpy_pickle", "NumpyArrayWrapper"), ("numpy", "ndarray"),
                      ("numpy", "dtype")})
_FLOAT_CODES = {"f2": 2, "f4": 4, "f8": 8}
_INTS = {"BININT", "BININT1", "BININT2", "LONG1"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_GLOBALS = {"GLOBAL", "STACK_GLOBAL", "INST"}
_REFUSED = {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}


def _check_globals(stream: bytes) -> None:
    """Refuse a stream naming any global outside :data:`_ALLOWED`.

    joblib writes each array's bytes right after its wrapper's BUILD opcode, outside the
    pickle, so the scan follows the wrapper state (shape, dtype code; globals and strings
    through the memo) to skip exactly the bytes joblib will read, and resumes after them.
    """
    handle, memo, recent = io.BytesIO(stream), {}, [None, None]
    shape: list[int] | None = []
    collecting = armed = False
    code = None  # the dtype code of the array being read; "" right after numpy.dtype
    while True:
        for opcode, arg, _ in pickletools.genops(handle):
            name = opcode.name
            value = memo.get(arg) if name in _GETS else arg
            if name in _GLOBALS:
                found = tuple(arg.split(" ", 1)) if name != "STACK_GLOBAL" else tuple(recent)
                if found not in _ALLOWED:
                    raise Refused(f"global {quote(found[0])}.{quote(found[1])} is not one a "
                                  "format-1 artifact needs")
                value = ("global", *found)
            elif name in _REFUSED:
                raise Refused(f"pickle opcode {name} is not allowed")
            elif name == "REDUCE" and code:
                value = ("dtype", code)  # the dtype object, memoized for the next arrays
            if name in _PUTS:
                memo[len(memo) if name == "MEMOIZE" else arg] = recent[-1]
                continue
            if collecting:
                if name in _INTS:
                    shape.append(value)
                elif "TUPLE" in name:
                    collecting = False
                elif name != "MARK":  # not a shape joblib wrote: no array may use it
                    collecting, shape = False, None
            elif value == ("global", "numpy", "dtype"):
                code = ""
            elif type(value) is tuple and value[0] == "dtype":
                code = value[1]
            elif type(value) is str:
                code = value if code == "" else code
                collecting, shape = value == "shape", [] if value == "shape" else shape
                armed = armed or value == "numpy_array_alignment_bytes"
            if name != "FRAME":
                recent = [recent[-1], value]
            if name == "BUILD" and armed:
                break
        else:
            if handle.read(1):
                raise Refused("unexpected bytes after the end of the pickle")
            return
        if code not in _FLOAT_CODES or shape is None or \
                not all(type(n) is int and n >= 0 for n in shape):
            raise Refused(f"array of dtype {quote(code)} and shape {shape} is not a float array")
        padding = handle.read(1)
        handle.seek((padding[0] if padding else 0) + math.prod(shape) * _FLOAT_CODES[code],
                    os.SEEK_CUR)
        armed, code = False, None


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite the format-1 artifact ``src`` as the format-2 artifact ``dst``; return ``dst``.

    For files you trust: see the module docstring. The network, its parameters (bit for bit)
    and its metadata are kept; ``dst`` is written by :func:`nnlib.save`, so it satisfies the
    serving contract at :data:`nnlib.DEFAULT_LIMITS`.

    Raises:
        ArtifactError: ``src`` is not a format-1 artifact, or names another global.
    """
    import joblib

    src = Path(src)
    try:
        _check_globals(_inflate(_read_bounded(src, DEFAULT_LIMITS.file_bytes),
                                DEFAULT_LIMITS.inflated_bytes))
        payload = joblib.load(src)
        if type(payload) is not dict or payload.get("format_version") != 1:
            raise Refused("not a format-1 artifact")
        architecture, parameters = payload["architecture"], payload["parameters"]
        expected = plan(architecture)
        if expected.keys() != parameters.keys():
            raise Refused("parameters do not match the architecture")
        model = Sequential(*build(architecture))
        for name, live in model.parameters().items():
            array = parameters[name]
            if type(array) is not np.ndarray or array.shape != live.shape or \
                    array.dtype != live.dtype:
                raise Refused(f"parameter {quote(name)} does not match the architecture")
            live[...] = array
    except Refused as exc:
        raise ArtifactError(src, str(exc)) from None
    except (OSError, pickle.UnpicklingError, LookupError, TypeError, ValueError) as exc:
        raise ArtifactError(src, f"cannot read it as format 1 ({type(exc).__name__})") from None
    return save(dst, model, Artifact(model, payload["metadata"]).metadata)
