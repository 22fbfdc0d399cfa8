"""The bounds of the artifact loader, its error, and the one way a file's value enters a message.

Every bound :func:`nnlib.load`, :func:`nnlib.save` and :func:`nnlib.validate` enforce is a
field of :class:`Limits`; each is checked before the work it bounds, so a hostile file costs
at most what the limits allow (see SECURITY.md for the figures and the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "ArtifactError", "Limits", "quote"]

_MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one artifact may hold or cost; every refusal names its field."""

    #: Bytes of the file on disk, checked with fstat before it is read.
    file_bytes: int = 16 * _MiB
    #: Bytes of the pickle stream after inflating joblib's zlib container.
    inflated_bytes: int = 16 * _MiB
    #: Bytes of all parameter data together.
    array_bytes: int = 16 * _MiB
    #: Nesting of containers (lists, dicts, pickle MARKs; Sequential in the architecture).
    depth: int = 32
    #: Pickle opcodes in the stream.
    ops: int = 200_000
    #: Values visited in the architecture or the metadata, a shared reference once per visit.
    nodes: int = 100_000
    #: Bits of an integer in two's complement (64: what JSON consumers read as int64).
    int_bits: int = 64
    #: Characters of one string value.
    string_length: int = 8192
    #: Characters of one dict key (parameter names included).
    key_length: int = 128
    #: Bytes of canonical JSON of the metadata, and separately of the architecture.
    metadata_bytes: int = 64 * 1024
    #: Entries of ``metadata["labels"]``.
    label_count: int = 1024
    #: Characters of one label.
    label_length: int = 64
    #: Layers of the network, nested Sequentials and their layers included.
    layers: int = 256
    #: Elements of the largest array one sample's forward pass makes (outputs, im2col).
    activation_elements: int = 2**21
    #: Estimated floating-point operations of one sample's forward pass.
    flops: int = 10**8
    #: Elements of one input sample, the product of ``input_shape``.
    input_size: int = 2**20
    #: Characters of a refusal reason; longer ones are cut.
    reason_length: int = 400


DEFAULT_LIMITS = Limits()


class ArtifactError(ValueError):
    """An artifact that cannot be saved or loaded; the message names the file and the reason.

    The reason is cut to :attr:`Limits.reason_length` characters and every control
    character in it is escaped, so no file can forge a log line through a refusal.
    """

    def __init__(self, path: str | os.PathLike, reason: str,
                 limit: int = DEFAULT_LIMITS.reason_length) -> None:
        self.path = os.fspath(path)
        self.reason = _escape(reason if len(reason) <= limit else reason[: limit - 3] + "...")
        super().__init__(f"artifact {self.path!r}: {self.reason}")


class Refused(Exception):  # noqa: N818 (internal: always turned into an ArtifactError)
    """A check failed; the caller that knows the path turns it into an ArtifactError."""


def _escape(text: str) -> str:
    # repr() escapes control and non-printable characters; strip the quotes it adds.
    return text if text.isprintable() else repr(text)[1:-1]


def quote(value: object, length: int = 40) -> str:
    """Return a short, escaped rendering of a value read from a file, for a message.

    Strings are cut to ``length`` characters before escaping; integers wider than 64 bits
    and containers are described, never rendered (their repr is unbounded work).
    """
    kind = type(value)
    if kind is str:
        return repr(value[:length]) + ("..." if len(value) > length else "")
    if kind is bytes:
        return f"<{len(value)} bytes>"
    if kind is int and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    if value is None or kind in (bool, int, float):
        return repr(value)
    return f"<{kind.__name__}>" if not hasattr(value, "__len__") else \
        f"<{kind.__name__} of {len(value)}>"
