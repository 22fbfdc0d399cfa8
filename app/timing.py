"""The phases of one inference request: what Server-Timing, the access log and statistics show.

The dataplane fills a :class:`RequestTiming` as a request goes through its hooks (decode,
infer, encode); it lives in the request's :data:`app.log.REQUEST_INFO` entry so the request
middleware can put the same figures in the access-log line.
"""

from __future__ import annotations

import time

from app.log import REQUEST_INFO


class RequestTiming:
    """Nanosecond durations of a request's phases (``time.perf_counter_ns`` differences).

    ``queue_ns`` is None unless the request waited for an adaptive-batching group.
    """

    __slots__ = ("decode_at", "decode_ns", "done", "encode_at", "encode_ns", "infer_at",
                 "infer_ns", "model", "queue_ns", "samples", "start_ns")

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.model = None  # the ServedModel the request is for, once known
        self.decode_ns = self.infer_ns = self.encode_ns = 0
        # Where each phase began (perf_counter_ns), for trace spans; 0 until it does.
        self.decode_at = self.infer_at = self.encode_at = 0
        self.queue_ns: int | None = None
        self.samples = 0
        self.done = False  # counted in the statistics (as a success or a failure)

    def phases_ms(self) -> dict[str, float]:
        """Return the phases that ran, in milliseconds rounded to microseconds, in order.

        A refused request has only the phases it reached (decode, or decode and infer).
        """
        phases = {"decode": self.decode_ns}
        if self.queue_ns is not None:
            phases["queue"] = self.queue_ns
        if self.infer_at:
            phases["infer"] = self.infer_ns
        if self.encode_at:
            phases["encode"] = self.encode_ns
        return {name: round(ns / 1e6, 3) for name, ns in phases.items()}

    def log_fields(self) -> dict[str, float]:
        """The phases that ran as access-log fields: ``decode_ms``, ``queue_ms``, ...

        The figures of :meth:`phases_ms`, spelt out: this runs on every request.
        """
        fields = {"decode_ms": round(self.decode_ns / 1e6, 3)}
        if self.queue_ns is not None:
            fields["queue_ms"] = round(self.queue_ns / 1e6, 3)
        if self.infer_at:
            fields["infer_ms"] = round(self.infer_ns / 1e6, 3)
        if self.encode_at:
            fields["encode_ms"] = round(self.encode_ns / 1e6, 3)
        return fields

    def server_timing(self) -> str:
        """The W3C Server-Timing header value: ``decode;dur=0.012, infer;dur=0.110, ...``."""
        if not (self.encode_at and self.infer_at):  # a refused request
            return ", ".join(f"{name};dur={ms:.3f}" for name, ms in self.phases_ms().items())
        # Spelt out for an answered request: this runs on every one.
        queue = "" if self.queue_ns is None else f"queue;dur={self.queue_ns / 1e6:.3f}, "
        return (f"decode;dur={self.decode_ns / 1e6:.3f}, {queue}"
                f"infer;dur={self.infer_ns / 1e6:.3f}, encode;dur={self.encode_ns / 1e6:.3f}")


def current_timing() -> RequestTiming:
    """Return the timing of the request being served, starting it on the first call.

    Outside the request middleware (a dataplane driven directly) the entry is created in
    the caller's context: the hooks a request calls still share one timing.
    """
    info = REQUEST_INFO.get()
    if info is None:
        info = {"model": None, "batch": None}
        REQUEST_INFO.set(info)
    timing = info.get("timing")
    if timing is None:
        timing = info["timing"] = RequestTiming(time.perf_counter_ns())
    return timing


__all__ = ["RequestTiming", "current_timing"]
