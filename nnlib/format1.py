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


def _check_globals(stream: bytes) -> None:
    """Refuse a stream naming any global outside :data:`_ALLOWED`.

    joblib writes each array's bytes right after its wrapper's BUILD opcode, outside the
    pickle, so the scan follows the wrapper state (shape, dtype code; globals and strings
    through the memo) to skip exactly the bytes joblib will read, and resumes after them.
    """
    handle, memo, last = io.BytesIO(stream), {}, [None, None]
    shape: list[int] = []
    collecting = armed = False
    code = None
    while True:
        for opcode, arg, _ in pickletools.genops(handle):
            name = opcode.name
            value = memo.get(arg) if name in ("BINGET", "LONG_BINGET", "GET") else arg
            if name in ("STACK_GLOBAL", "GLOBAL", "INST"):
                value = tuple(arg.split(" ", 1)) if name != "STACK_GLOBAL" else tuple(last)
                if value not in _ALLOWED:
                    raise Refused(f"global {quote(value[0])}.{quote(value[1])} is not one a "
                                  "format-1 artifact needs")
            elif name in ("EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"):
                raise Refused(f"pickle opcode {name} is not allowed")
            if name == "MEMOIZE":
                memo[len(memo)] = last[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = last[-1]
            elif collecting and name in _INTS:
                shape.append(value)
            elif collecting and ("TUPLE" in name or value is not None):
                collecting = False  # the shape ends at its tuple opcode: anything else is odd
                if "TUPLE" not in name:
                    raise Refused("an array shape that is not a tuple of ints")
            elif value == ("numpy", "dtype"):
                code = ""  # the next string is the dtype code
            elif type(value) is str:
                collecting, shape = (True, []) if value == "shape" else (False, shape)
                armed = armed or value == "numpy_array_alignment_bytes"
                code = value if code == "" else code
            if name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
                last = [last[-1], value]
            if name == "BUILD" and armed:
                break
        else:
            if handle.read(1):
                raise Refused("unexpected bytes after the end of the pickle")
            return
        if code not in _FLOAT_CODES or not all(type(n) is int and n >= 0 for n in shape):
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
