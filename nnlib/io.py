"""Save, load and validate networks as artifacts that hold plain data only (format 2).

An artifact is a file written by ``joblib.dump`` (plain, or in joblib's zlib container)
whose pickle holds no object but dict/list/str/bytes/int/float/bool/None::

    {"format": "nnlib-artifact", "format_version": 2,
     "architecture": [{"type": "Scale", "config": {"factor": 0.0625}}, ...],
     "parameters": {"1.weight": {"dtype": "float32", "shape": [64, 256],
                                 "data": b"..."}, ...},  # little-endian, C order
     "metadata": {"name": ..., "labels": [...], ...},
     "sha256": "..."}                                   # over everything above

:func:`load` reads at most :attr:`Limits.file_bytes`, inflates at most
:attr:`Limits.inflated_bytes`, checks every pickle opcode before unpickling with an
unpickler that resolves no global (:mod:`nnlib.plain`), checks the layout and the digest,
rebuilds the network through the table :data:`~nnlib.architecture.LAYERS`, then runs
:func:`validate`, the one serving contract. :func:`save` runs the same contract and writes
only a file :func:`load` accepts. Every refusal is an :class:`ArtifactError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import stat
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from .activation import LogSoftmax, Softmax
from .architecture import PARAM_DTYPES, build, describe, estimate, plan
from .limits import DEFAULT_LIMITS, ArtifactError, Limits, Refused, quote
from .module import Module, Sequential
from .plain import FORMAT1_HINT, canonical, read_pickle, to_plain

__all__ = [
    "FORMAT_VERSION", "OUTPUT_HEADS", "REQUIRED_METADATA", "Artifact", "load", "save",
    "validate",
]

FORMAT = "nnlib-artifact"
FORMAT_VERSION = 2
REQUIRED_METADATA = (
    "name", "version", "input_shape", "labels", "output",
    "description", "dataset", "metrics", "created",
)
#: metadata["output"] -> the class the network must end with.
OUTPUT_HEADS: Mapping[str, type[Module]] = MappingProxyType(
    {"softmax": Softmax, "log_softmax": LogSoftmax})

# Protocol 4 is written explicitly (Python 3.14 made 5 the default) so every artifact's
# PROTO header is the same; joblib's zlib container is a bare zlib stream.
_PICKLE_PROTOCOL = 4
_PICKLE_HEADER = bytes([0x80, _PICKLE_PROTOCOL])
_ZLIB_MAGIC = b"\x78"
_OTHER_CONTAINERS = {  # refused: their headers carry bytes no checksum covers
    b"ZF": "legacy joblib format (joblib < 0.10 z-file)", b"\x1f\x8b": "gzip compression",
    b"BZh": "bz2 compression", b"\xfd7zXZ": "xz compression", b"\x5d\x00": "lzma compression",
    b"\x04\x22\x4d\x18": "lz4 compression",
}
_TOP_KEYS = frozenset({"format", "format_version", "architecture", "parameters",
                       "metadata", "sha256"})
_ENTRY_KEYS = frozenset({"dtype", "shape", "data"})
_MAX_NDIM = 8


class Artifact(NamedTuple):
    """A network and its metadata (plain data once :func:`validate` returned it)."""

    model: Sequential
    metadata: dict


# ---------------------------------------------------------------------------------------
# Reading: bytes -> pickle stream -> checked payload -> network.


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    # O_NONBLOCK so that a FIFO named like an artifact cannot hang the loader.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise Refused("not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > max_bytes:
            raise Refused(f"file has {info.st_size} bytes, more than the limit of {max_bytes} "
                          "(Limits.file_bytes)")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # the file grew while we read it
        raise Refused(f"file has more than {max_bytes} bytes (Limits.file_bytes)")
    return data


def _inflate(data: bytes, max_bytes: int) -> bytes:
    """Return the pickle stream inside ``data``: as is, or inflated from joblib's zlib."""
    if not data:
        raise Refused("file is empty")
    if data.startswith(_PICKLE_HEADER):
        return data
    for magic, name in _OTHER_CONTAINERS.items():
        if data.startswith(magic):
            raise Refused(f"{name} is not supported (plain or zlib only)")
    if not data.startswith(_ZLIB_MAGIC):
        if data[:1] == b"\x80":
            raise Refused(f"pickle protocol {data[1:2].hex() or '?'} is not supported "
                          f"(protocol {_PICKLE_PROTOCOL} only)")
        raise Refused("not a joblib artifact (unknown header)")
    inflater = zlib.decompressobj()
    try:
        stream = inflater.decompress(data, max_bytes + 1)
    except zlib.error as exc:
        raise Refused(f"corrupt zlib data ({quote(str(exc))})") from None
    if len(stream) > max_bytes or inflater.unconsumed_tail:
        raise Refused(f"inflates to more than the limit of {max_bytes} bytes "
                      "(Limits.inflated_bytes)")
    if not inflater.eof or inflater.unused_data:
        raise Refused("zlib data is truncated or followed by other bytes")
    if not stream.startswith(_PICKLE_HEADER):
        raise Refused(f"compressed stream is not a protocol-{_PICKLE_PROTOCOL} pickle")
    return stream


def _digest(version: int, architecture: list, headers: dict, metadata: dict,
            data: Mapping[str, bytes], limits: Limits) -> str:
    """Return the sha256 of the content: canonical JSON of each part, then each array's bytes."""
    sha = hashlib.sha256()
    parts = [canonical([FORMAT, version], limits), canonical(architecture, limits, "architecture"),
             canonical(headers, limits, "parameters"), canonical(metadata, limits)]
    for chunk in [*parts, *(data[name] for name in sorted(data))]:
        sha.update(len(chunk).to_bytes(8, "little"))  # no chunk can pass for the next one
        sha.update(chunk)
    return sha.hexdigest()


def _parameters(raw: object, blobs: int, limits: Limits) -> tuple[dict, dict[str, bytes]]:
    """Check the parameter entries; return their headers ``{dtype, shape}`` and their data."""
    if type(raw) is not dict:
        raise Refused(f"parameters must be a dict, got {quote(raw)}")
    headers, data = {}, {}
    for name, entry in raw.items():
        if type(name) is not str or len(name) > limits.key_length:
            raise Refused(f"parameter name {quote(name)} is not a string of at most "
                          f"{limits.key_length} characters (Limits.key_length)")
        if type(entry) is not dict or entry.keys() != _ENTRY_KEYS:
            raise Refused(f"parameter {quote(name)} must be {{'dtype', 'shape', 'data'}}")
        dtype, shape, blob = entry["dtype"], entry["shape"], entry["data"]
        if type(dtype) is not str or dtype not in PARAM_DTYPES:
            raise Refused(f"parameter {quote(name)}: dtype {quote(dtype)} is not one of "
                          f"{sorted(PARAM_DTYPES)}")
        # Each size is bounded before the product, which is then at most 8 * 25 bits.
        if type(shape) is not list or len(shape) > _MAX_NDIM:
            raise Refused(f"parameter {quote(name)}: shape {quote(shape)} is not a list of at "
                          f"most {_MAX_NDIM} sizes")
        odd = [n for n in shape if type(n) is not int or not 0 <= n <= limits.array_bytes]
        if odd:
            raise Refused(f"parameter {quote(name)}: shape entry {quote(odd[0])} is not a size "
                          f"in [0, {limits.array_bytes}]")
        if type(blob) is not bytes:
            raise Refused(f"parameter {quote(name)}: data is {quote(blob)}, not bytes")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if len(blob) != nbytes:
            raise Refused(f"parameter {quote(name)}: {len(blob)} bytes of data, but {dtype} "
                          f"{shape} needs {nbytes}")
        headers[name], data[name] = {"dtype": dtype, "shape": shape}, blob
    if blobs != len(raw):  # a dict key given twice keeps the last value without a word
        raise Refused(f"the file holds {blobs} data values for {len(raw)} parameters: a "
                      "parameter is given twice, or data sits outside the parameters")
    return headers, data


def _rebuild(payload: object, blobs: int, limits: Limits) -> Artifact:
    """Check a format-2 payload and its digest; return the network and its metadata."""
    if type(payload) is not dict or payload.keys() != _TOP_KEYS:
        keys = [quote(k) for k in list(payload)[:8]] if type(payload) is dict else quote(payload)
        raise Refused(f"top level must be a dict with keys {sorted(_TOP_KEYS)}, got {keys}")
    if payload["format"] != FORMAT:
        raise Refused(f"format {quote(payload['format'])} is not {FORMAT!r}")
    version = payload["format_version"]
    if type(version) is int and version == 1:
        raise Refused(FORMAT1_HINT)
    if type(version) is not int or version != FORMAT_VERSION:
        raise Refused(f"unsupported format version {quote(version)} (supported: "
                      f"{FORMAT_VERSION})")
    architecture = to_plain(payload["architecture"], limits, "architecture")
    if type(payload["metadata"]) is not dict:
        raise Refused("metadata must be a dict")
    metadata = to_plain(payload["metadata"], limits)
    headers, data = _parameters(payload["parameters"], blobs, limits)
    if type(payload["sha256"]) is not str or \
            _digest(version, architecture, headers, metadata, data, limits) != payload["sha256"]:
        raise Refused("sha256 mismatch: the file is corrupt or was modified")
    expected = plan(architecture, limits)
    stray = sorted(expected.keys() ^ headers.keys())
    if stray:
        raise Refused(f"parameter {quote(stray[0])} is " + (
            "missing from the file" if stray[0] in expected else "not in the architecture"))
    for name, (shape, dtype) in expected.items():
        if headers[name] != {"dtype": dtype, "shape": list(shape)}:
            raise Refused(f"parameter {name} is {headers[name]['dtype']}"
                          f"{headers[name]['shape']}, the architecture says {dtype}{list(shape)}")
    model = Sequential(*build(architecture))
    for name, live in model.parameters().items():
        array = np.frombuffer(data[name], dtype=live.dtype.newbyteorder("<")).reshape(live.shape)
        if not np.isfinite(array).all():
            raise Refused(f"parameter {name} holds NaN or infinity")
        live[...] = array
    return Artifact(model, metadata)


def load(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Load an artifact written by :func:`save`, without ever running code from the file.

    Args:
        path: the ``.joblib`` file.
        limits: the bounds of every step (:class:`~nnlib.Limits`).

    Returns:
        ``Artifact(model, metadata)``: a fresh :class:`~nnlib.Sequential` and plain-data
        metadata, checked by :func:`validate`.

    Raises:
        ArtifactError: for any file that is not a valid artifact; the message names the file
            and the reason. Nothing is cached, so a failed load leaves nothing behind.
    """
    path = Path(path)
    try:
        stream = _inflate(_read_bounded(path, limits.file_bytes), limits.inflated_bytes)
        artifact = _rebuild(*read_pickle(stream, limits), limits)
    except Refused as exc:
        raise ArtifactError(path, str(exc), limits.reason_length) from None
    except OSError as exc:
        raise ArtifactError(path, f"cannot read the file ({exc.strerror or type(exc).__name__})",
                            limits.reason_length) from None
    return validate(artifact, path=path, limits=limits)


# ---------------------------------------------------------------------------------------
# Writing.


def save(path: str | os.PathLike, model: Sequential, metadata: Mapping, *,
         compress: int | bool = 0, limits: Limits = DEFAULT_LIMITS) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` as an artifact; return the path.

    Runs :func:`validate` with the same ``limits`` first, so a pair :func:`load` would
    refuse is refused here with the same message. The file is written next to ``path``,
    loaded back with those limits, and only then renamed into place: readers never see a
    partial file, and ``path`` only ever holds a file :func:`load` accepts.

    Args:
        path: destination, conventionally ``models/<name>.joblib``.
        model: a :class:`~nnlib.Sequential` of nnlib layers (nesting allowed).
        metadata: plain data; tuples are stored as lists, numpy scalars as Python numbers.
        compress: zlib level 0-9 (``True`` means 3, joblib's default); 0 writes plain.
        limits: the bounds the artifact must satisfy.

    Raises:
        ArtifactError: the model or metadata cannot be saved (the reason says why).
    """
    path = Path(path)
    level = 3 if compress is True else int(compress)
    if not 0 <= level <= 9:
        raise ValueError(f"compress must be a zlib level 0-9, got {compress!r}")
    model, metadata = validate(Artifact(model, metadata), path=path, limits=limits)
    parameters = {
        name: {"dtype": value.dtype.name, "shape": list(value.shape),
               "data": np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()}
        for name, value in model.parameters().items()
    }
    architecture = describe(model.modules)
    headers = {name: {"dtype": p["dtype"], "shape": p["shape"]} for name, p in parameters.items()}
    data = {name: p["data"] for name, p in parameters.items()}
    try:
        digest = _digest(FORMAT_VERSION, architecture, headers, metadata, data, limits)
    except Refused as exc:
        raise ArtifactError(path, str(exc), limits.reason_length) from None
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": architecture,
               "parameters": parameters, "metadata": metadata, "sha256": digest}
    _write_checked(path, payload, level, limits)
    return path


def _write_checked(path: Path, payload: dict, level: int, limits: Limits) -> None:
    import joblib  # only writing needs joblib

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow or reuse an existing name; 0o666 so the umask applies.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        joblib.dump(payload, os.fspath(temporary), compress=("zlib", level) if level else 0,
                    protocol=_PICKLE_PROTOCOL)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        try:  # e.g. more pickle opcodes or file bytes than the limits allow
            load(temporary, limits=limits)
        except ArtifactError as exc:
            raise ArtifactError(path, exc.reason, limits.reason_length) from None
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# The serving contract.


def validate(artifact: Artifact, *, path: str | os.PathLike | None = None,
             limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Check that an artifact can be served; return it with its metadata as plain data.

    The metadata is plain data within ``limits`` and holds :data:`REQUIRED_METADATA` with
    the right types; the network is a :class:`~nnlib.Sequential` of nnlib layers ending in
    the head ``metadata["output"]`` names (:data:`OUTPUT_HEADS`); one sample's forward pass
    is estimated within :attr:`Limits.flops` and :attr:`Limits.activation_elements` before
    a dry forward on zeros of shape ``(1, *input_shape)`` gives one finite row of
    ``len(labels)`` probabilities (log-probabilities for ``"log_softmax"``).

    Raises:
        ArtifactError: naming ``path`` (or the artifact's name) and the first failed check.
    """
    model, metadata = artifact
    try:
        if not isinstance(metadata, Mapping):
            raise Refused("metadata must be a dict")
        metadata = to_plain(dict(metadata), limits)
        canonical(metadata, limits)  # what the digest is computed over: bounded too
        _check_metadata(metadata, limits)
        if type(model) is not Sequential or not model.modules:
            raise Refused(f"the model must be a non-empty Sequential, got {type(model).__name__}")
        architecture = describe(model.modules)
        plan(architecture, limits)
        head, last = OUTPUT_HEADS[metadata["output"]], type(model.modules[-1])
        if last is not head:
            raise Refused(f"metadata['output'] is {metadata['output']!r} but the network ends "
                          f"in {last.__name__}, not {head.__name__}")
        estimate(architecture, metadata["input_shape"], limits)
        _dry_forward(model, metadata)
    except Refused as exc:
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        where = path if path is not None else f"<artifact {quote(name)}>"
        raise ArtifactError(where, str(exc), limits.reason_length) from None
    return Artifact(model, metadata)


def _check_metadata(metadata: dict, limits: Limits) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise Refused(f"metadata is missing keys {missing}")
    for key in ("name", "version", "description", "created"):
        if type(metadata[key]) is not str or not metadata[key]:
            raise Refused(f"metadata[{key!r}] must be a non-empty string")
    for key in ("dataset", "metrics", *(("input_kind",) if "input_kind" in metadata else ())):
        if type(metadata[key]) is not dict:
            raise Refused(f"metadata[{key!r}] must be a dict")
    labels, shape, output = metadata["labels"], metadata["input_shape"], metadata["output"]
    if (type(labels) is not list or not 1 <= len(labels) <= limits.label_count
            or not all(type(x) is str and len(x) <= limits.label_length for x in labels)
            or len(set(labels)) != len(labels)):
        raise Refused(f"metadata['labels'] must be a list of 1 to {limits.label_count} distinct "
                      f"strings of at most {limits.label_length} characters "
                      "(Limits.label_count, Limits.label_length)")
    # Each size is bounded before the product.
    if (type(shape) is not list or not 1 <= len(shape) <= _MAX_NDIM
            or not all(type(n) is int and 1 <= n <= limits.input_size for n in shape)
            or math.prod(shape) > limits.input_size):
        raise Refused(f"metadata['input_shape'] {quote(shape)} must be a list of 1 to "
                      f"{_MAX_NDIM} positive sizes of at most {limits.input_size} values in "
                      "all (Limits.input_size)")
    if type(output) is not str or output not in OUTPUT_HEADS:
        raise Refused(f"metadata['output'] {quote(output)} must be one of {sorted(OUTPUT_HEADS)}")


def _dry_forward(model: Sequential, metadata: dict) -> None:
    labels, shape, output = metadata["labels"], metadata["input_shape"], metadata["output"]
    try:
        # Silenced, then checked: a network that overflows is refused below, by value.
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = model.predict(np.zeros((1, *shape), dtype=np.float32))
    except Exception as exc:
        raise Refused(f"a dry forward on zeros of shape {[1, *shape]} failed "
                      f"({type(exc).__name__}: {quote(str(exc), 120)})") from None
    if not isinstance(out, np.ndarray) or out.shape != (1, len(labels)):
        got = getattr(out, "shape", type(out).__name__)
        raise Refused(f"a dry forward gave {got}, expected (1, {len(labels)}) for "
                      f"{len(labels)} labels")
    if not np.isfinite(out).all():
        raise Refused("a dry forward gave NaN or infinity")
    with np.errstate(all="ignore"):
        probabilities = np.exp(out.astype(np.float64)) if output == "log_softmax" \
            else out.astype(np.float64)
    if (probabilities < 0).any() or (probabilities > 1 + 1e-4).any() or \
            abs(probabilities.sum() - 1) > 1e-3:
        raise Refused(f"a dry forward did not give probabilities for output {output!r}")
