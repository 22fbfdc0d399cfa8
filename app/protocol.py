"""uvicorn's httptools protocol with the guards it lacks against slow and abusive clients.

uvicorn closes a keep-alive connection that stays idle after a response, and nothing else:
a connection that never sends, a request head sent a byte at a time, endless headers or a
body that stops half-way would each hold a descriptor (and, mid-body, a task) for ever.
:class:`GuardedHttpToolsProtocol` adds, per connection:

- a deadline for the request head: it must be complete within ``read_timeout`` seconds of
  its first byte (or of the connection opening), else 408 and the connection is closed;
- a size bound on the head (:data:`MAX_HEAD_BYTES`), else 431 and the connection is closed;
- an idle deadline for the body: a body that pauses longer than ``read_timeout`` gets its
  connection closed, and the request is logged with status 408;
- a bound on the time spent discarding the rest of a body the application answered without
  reading (a 413, a 401), after which the connection is closed. Until then the bytes are
  read, so the client, still sending, gets to read the answer instead of a TCP reset;
- one send per response: uvicorn writes the status line and headers, then the body, as two
  socket writes. A process killed between the two leaves a proxy holding a started answer
  it can no longer retry elsewhere; :class:`_CoalescingTransport` joins the head to the
  body, so an answer leaves whole or not at all (and costs one system call).

``python -m app`` serves with this protocol. uvicorn has no public option for any of these
guards (its ``h11_max_incomplete_event_size`` bounds only the h11 parser's head), so this
subclasses ``HttpToolsProtocol``: internals, hence the pins in pyproject.toml (uvicorn and
httptools to the minor versions tested) and ``tests/app/test_protocol_hooks.py``, which
fails loudly when a hook used here disappears or changes shape. The hooks:
``connection_made``/``connection_lost``/``data_received``, the parser callbacks
``on_headers_complete``/``on_message_complete``, the attributes ``loop``, ``tasks``,
``cycle`` (with ``scope`` and ``response_complete``), ``transport`` (replaced by one that
implements every :class:`asyncio.Transport` method) and ``app_state``, and the module's
``STATUS_LINE`` table.

The read deadline comes from the application's settings, through the lifespan state that
uvicorn hands every protocol instance (``app_state``; see :mod:`app.lifecycle`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# Request line plus headers: browsers send a few KiB; nginx's default buffers total 32 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Seconds spent discarding an unread body after its answer before closing anyway.
LINGER_SECONDS = 10.0
# Scope key the protocol sets on a request whose body timed out, for the access log.
READ_TIMED_OUT = "nnserve.read_timed_out"
# Lifespan-state key of the read deadline in seconds (NNSERVE_READ_TIMEOUT).
READ_TIMEOUT_STATE = "nnserve.read_timeout"
# The deadline before the application's lifespan has said (it always has once serving).
DEFAULT_READ_TIMEOUT = 30.0


class _CoalescingTransport(asyncio.Transport):
    """A transport that sends each answer in one socket write, and batches them under load.

    uvicorn writes the status line and headers, then the body. A head is held and joined to
    the write that follows it, so an answer leaves whole. While other requests are in
    flight in this process, writes wait for the next event-loop turn instead and leave
    together: measured with wrk at 16 connections, that gives 27 % more answers per second
    (clients answered together send their next requests together, and one wake-up of the
    server serves them all); with a single client the wait is pure cost (25 % fewer), so
    an idle server writes at once. A head with nothing after it (HEAD, 204, 100 Continue)
    leaves on the next turn.

    Every method of :class:`asyncio.Transport` is spelt out: each write method goes through
    the held data (bytes written any other way would overtake a held head), and the others
    reach the socket's transport. (uvicorn's flow control holds that one directly: it is
    made before this one replaces it.)
    """

    __slots__ = ("_loop", "_pending", "_scheduled", "_tasks", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 tasks: set) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._tasks = tasks  # uvicorn's requests in flight in this process
        self._pending: list[bytes] = []
        self._scheduled = False

    # -- writing: through the held data -------------------------------------------------

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        is_head = data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n")
        if is_head or len(self._tasks) > 1:
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)
        else:
            self._flush()

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def _flush(self) -> None:
        self._scheduled = False
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    # -- the rest: the socket's transport -----------------------------------------------

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default=None):
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with head/body read deadlines and a head size bound (see module)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Seconds for a whole request head, and the longest pause inside a body.
        self.read_timeout = float(self.app_state.get(READ_TIMEOUT_STATE, DEFAULT_READ_TIMEOUT))
        super().connection_made(transport)
        # uvicorn's flow control keeps the real transport; requests write through this one.
        self.transport = _CoalescingTransport(  # type: ignore[assignment]
            transport, self.loop, self.tasks)
        self._in_head = True  # waiting for (the rest of) a request head
        self._head_bytes = 0
        self._body_pending = False
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._discarding = False  # refused: read and drop until the client closes
        # A connection that never sends a byte is closed too.
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    # -- deadlines ------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes:
                self._refuse(408, "the request head did not arrive in time")
            else:
                self.transport.close()  # nothing was asked: nothing to answer
            return
        # A body stalled while the application waits for it: closing the connection makes
        # its receive() report a disconnect; the access log says 408.
        if self.cycle is not None:
            self.cycle.scope[READ_TIMED_OUT] = True  # type: ignore[literal-required]
        self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and close "lingeringly" (RFC 9112, 9.6).

        Closing with unread input makes the kernel reset the connection, and the reset can
        destroy the answer before the client reads it: half-close instead, discard what
        still comes, and close when the client does (or after LINGER_SECONDS).
        """
        body = message.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]))
        self._disarm()
        self._discarding = True
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError, RuntimeError):
            self.transport.close()
            return
        self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # -- input ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"the request head is larger than {MAX_HEAD_BYTES} bytes")
            elif self._head_bytes and self._deadline is None:
                self._arm()  # a head has begun: it has read_timeout seconds in all
        elif self._body_pending:
            self._arm()  # the body made progress: it may pause read_timeout seconds again
            if self.cycle.response_complete and self._linger is None:
                # Answered without reading the body: discard it for a while, then close.
                self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._body_pending = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._in_head = True
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.cycle is not None and self.cycle.response_complete:
            # The rest of an unread body came after the answer, and uvicorn armed its idle
            # timer at the answer (then cancelled it on that data): watch the idle
            # connection here instead.
            self._arm()
        super().on_message_complete()
