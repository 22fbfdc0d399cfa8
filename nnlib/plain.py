"""Plain data in and out of pickle streams, bounded: the reading half of the artifact format.

:func:`read_pickle` checks a protocol-4 stream opcode by opcode *before* unpickling it, then
unpickles it with the standard C :class:`pickle.Unpickler`, whose ``find_class`` and
``persistent_load`` refuse everything (the "Restricting Globals" recipe of the pickle docs,
taken to its end: format 2 needs no global at all). :func:`to_plain` turns a tree into JSON-ready
data within a budget; :func:`canonical` is the encoding the digest is computed over.

The scan reads each opcode's argument by its byte layout rather than with
``pickletools.genops``: genops decodes every argument first, text opcodes included (an
unbounded decimal line goes to ``int()``), where the scan refuses any opcode format 2 does
not use at its first byte and never decodes a string.
"""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np

from .limits import DEFAULT_LIMITS, Limits, Refused, quote

__all__ = ["canonical", "read_pickle", "to_plain"]

# The opcodes pickle's protocol 4 writes for dict/list/str/bytes/int/float/bool/None, by the
# size of their fixed argument or (negative) of the length prefix of a variable one.
_ARG = {
    pickle.PROTO: 1, pickle.FRAME: 8, pickle.STOP: 0, pickle.MARK: 0,
    pickle.EMPTY_DICT: 0, pickle.EMPTY_LIST: 0, pickle.SETITEM: 0, pickle.SETITEMS: 0,
    pickle.APPEND: 0, pickle.APPENDS: 0, pickle.MEMOIZE: 0, pickle.BINGET: 1,
    pickle.LONG_BINGET: 4, pickle.NONE: 0, pickle.NEWTRUE: 0, pickle.NEWFALSE: 0,
    pickle.BININT: 4, pickle.BININT1: 1, pickle.BININT2: 2, pickle.BINFLOAT: 8,
    pickle.LONG1: -1,
    pickle.SHORT_BINUNICODE: -1, pickle.BINUNICODE: -4, pickle.BINUNICODE8: -8,
    pickle.SHORT_BINBYTES: -1, pickle.BINBYTES: -4, pickle.BINBYTES8: -8,
}
_STRINGS = {pickle.SHORT_BINUNICODE, pickle.BINUNICODE, pickle.BINUNICODE8}
_BYTES = {pickle.SHORT_BINBYTES, pickle.BINBYTES, pickle.BINBYTES8}
_VALUES = _STRINGS | _BYTES
_NAMES = {code: name for name in pickle.__all__
          if isinstance(code := getattr(pickle, name), bytes) and len(code) == 1}
# pickle writes a str or bytes of at least this many bytes outside any frame
# (pickle._Framer._FRAME_SIZE_TARGET); frames of fewer than _FRAME_SIZE_MIN bytes are not
# written, their opcodes go out unframed.
_LARGE = 64 * 1024
_FRAME_MIN = 4
_FORMAT1_GLOBAL = ("joblib.numpy_pickle", "NumpyArrayWrapper")
FORMAT1_HINT = ("numpy arrays pickled as joblib objects, as in format 1: format 2 holds plain "
                "data only; convert a format-1 file you trust with: nnlib convert OLD NEW")


def _scan(stream: bytes, limits: Limits) -> tuple[int, int]:
    """Check every opcode of ``stream``; return the number and total size of its bytes values.

    Refuses any opcode outside :data:`_ARG`, more than ``limits.ops`` opcodes, bytes values
    over ``limits.array_bytes`` in all, and any framing pickle itself would not write (so no
    byte of the stream can change unnoticed). Integers are at most 2040 bits here (LONG1;
    pickle writes LONG4 only beyond); their :attr:`Limits.int_bits`, the lengths of strings
    and the nesting are checked by :func:`to_plain`, with the value's location, so that
    :func:`nnlib.save` refuses them with the very message :func:`nnlib.load` gives.
    """
    end, pos, ops, blobs, blob_bytes = len(stream), 0, 0, 0, 0
    frame_end = None  # end of the current frame, None outside frames
    framed = False  # a frame was seen since the start or the last unframed large value
    loose = 0  # bytes of small opcodes outside frames since then
    strings: list[tuple[int, int]] = []  # the strings just before, for naming a global
    while True:
        if pos >= end:
            raise Refused("the pickle ends without a STOP opcode")
        op, start = stream[pos : pos + 1], pos
        ops += 1
        if ops > limits.ops:
            raise Refused(f"more than {limits.ops} pickle operations (Limits.ops)")
        if op not in _ARG:
            raise Refused(_refusal(op, stream, strings))
        size, pos = _ARG[op], pos + 1
        if size < 0:
            if pos - size > end:
                raise Refused("the pickle is truncated")
            n = int.from_bytes(stream[pos : pos - size], "little")
            pos -= size
            if op in _BYTES:
                blobs, blob_bytes = blobs + 1, blob_bytes + n
                if blob_bytes > limits.array_bytes:
                    raise Refused(f"more than {limits.array_bytes} bytes of parameter data "
                                  "(Limits.array_bytes)")
            size = n
        pos += size
        if pos > end or (frame_end is not None and pos > frame_end):
            raise Refused("the pickle is truncated or an opcode crosses its frame's end")
        if op in _STRINGS:
            strings = [*strings[-1:], (pos - size, pos)]
        elif op not in (pickle.MEMOIZE, pickle.FRAME):
            strings = []
        if op == pickle.PROTO:
            if start != 0 or stream[start + 1] != 4:
                raise Refused("not a protocol-4 pickle")
        elif op == pickle.FRAME:
            if frame_end is not None:
                raise Refused("a pickle frame inside a frame: the framing is corrupt")
            frame_end = pos + int.from_bytes(stream[start + 1 : pos], "little")
            if frame_end - pos < _FRAME_MIN or frame_end > end:
                raise Refused("a pickle frame's length is corrupt")
            framed, loose = True, 0
        elif frame_end is None and start != 0:  # outside frames: only what pickle puts there
            if op in _VALUES and size >= _LARGE:
                framed, loose = False, 0
            else:
                loose += pos - start
                if framed or loose >= _FRAME_MIN:
                    raise Refused("pickle bytes outside a frame: the framing is corrupt")
        if frame_end == pos:
            frame_end = None
        if op == pickle.STOP:
            if pos != end:
                raise Refused("unexpected bytes after the end of the pickle")
            return blobs, blob_bytes


def _refusal(op: bytes, stream: bytes, strings: list[tuple[int, int]]) -> str:
    name = _NAMES.get(op, f"0x{op.hex()}")
    if op != pickle.STACK_GLOBAL or len(strings) < 2:
        return f"pickle opcode {name} is not allowed (format 2 holds plain data only)"
    module, qualname = (stream[a:b].decode("utf-8", "replace") for a, b in strings)
    if (module, qualname) == _FORMAT1_GLOBAL:
        return FORMAT1_HINT
    return (f"global {quote(module)[1:-1]}.{quote(qualname)[1:-1]} is not allowed "
            "(format 2 holds plain data only)")


class _NoGlobals(pickle.Unpickler):
    """The C unpickler with every way out of plain data closed."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"global {quote(module)}.{quote(name)} is not allowed")

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_pickle(stream: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[object, int]:
    """Return the plain data of a protocol-4 pickle and the number of bytes values in it."""
    blobs, _ = _scan(stream, limits)
    try:
        return _NoGlobals(io.BytesIO(stream)).load(), blobs
    except Exception as exc:  # the scan lets through only bad memo indices and bad UTF-8
        raise Refused(f"corrupt pickle ({type(exc).__name__})") from None


def to_plain(value: object, limits: Limits = DEFAULT_LIMITS, where: str = "metadata") -> object:
    """Return ``value`` as JSON-ready data, or refuse it naming where it fails.

    Dicts with ``str`` keys, lists and tuples (as lists), ``str``, ``bool``, ``int`` within
    :attr:`Limits.int_bits`, finite ``float`` and ``None``; numpy scalars become Python
    ones. Every visit counts, a shared reference once per visit, against
    :attr:`Limits.nodes`, and each string's length against :attr:`Limits.metadata_bytes`: a
    small tree that references one big string many times is refused after a bounded walk.
    The location of a failure is built only when refusing.
    """
    budget = [limits.nodes, limits.metadata_bytes]
    trail: list[object] = []  # keys and indices down to the value being checked

    def refuse(reason: str) -> Refused:
        # The location is cut in the middle, so that the reason (the bound) always shows.
        steps = [f"[{quote(key, 24)}]" for key in (*trail[:3], *trail[3:][-2:])]
        if len(trail) > 5:
            steps.insert(3, f"...{len(trail) - 5} more...")
        return Refused(f"{where}{''.join(steps)}: {reason}")

    def charge(length: int) -> None:  # a string's JSON: at least its quotes and a comma
        budget[1] -= length + 3
        if budget[1] < 0:
            raise refuse(f"more than {limits.metadata_bytes} bytes (Limits.metadata_bytes)")

    def walk(value: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0:
            raise refuse(f"more than {limits.nodes} values (Limits.nodes)")
        kind = type(value)
        if kind is str:
            if len(value) > limits.string_length:
                raise refuse(f"a string of {len(value)} characters, more than "
                             f"{limits.string_length} (Limits.string_length)")
            charge(len(value))
            return value
        if value is None or kind is bool:
            return value
        if kind is float or isinstance(value, np.floating):
            if not math.isfinite(value):
                raise refuse(f"{value} is not finite (JSON has no NaN or infinity)")
            return float(value)
        if kind is int or isinstance(value, np.integer):
            value = int(value)
            if value.bit_length() >= limits.int_bits:
                raise refuse(f"integer of {value.bit_length()} bits does not fit in "
                             f"{limits.int_bits} (Limits.int_bits)")
            return value
        if isinstance(value, np.bool_):
            return bool(value)
        if kind not in (list, tuple, dict):
            raise refuse(f"{kind.__name__} is not plain data "
                         "(dict, list, str, int, float, bool or None)")
        if depth >= limits.depth:
            raise refuse(f"nested deeper than {limits.depth} (Limits.depth)")
        if kind is not dict:
            out = []
            for index, item in enumerate(value):
                trail.append(index)
                out.append(walk(item, depth + 1))
                trail.pop()
            return out
        plain = {}
        for key, item in value.items():
            if type(key) is not str or len(key) > limits.key_length:
                raise refuse(f"key {quote(key)} is not a string of at most "
                             f"{limits.key_length} characters (Limits.key_length)")
            trail.append(key)
            charge(len(key))
            plain[key] = walk(item, depth + 1)
            trail.pop()
        return plain

    return walk(value, 0)


def canonical(value: object, limits: Limits = DEFAULT_LIMITS, where: str = "metadata") -> bytes:
    """Return the canonical JSON encoding of plain data, at most ``limits.metadata_bytes``.

    Sorted keys, no spaces, UTF-8: the same bytes for the same data on every host.
    """
    try:
        encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                             allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: pickle and Python allow it, JSON does not
        raise Refused(f"{where}: a string is not valid UTF-8") from None
    if len(encoded) > limits.metadata_bytes:
        raise Refused(f"{where}: {len(encoded)} bytes of JSON, more than "
                      f"{limits.metadata_bytes} (Limits.metadata_bytes)")
    return encoded
