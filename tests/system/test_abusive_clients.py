"""Slow and abusive clients against a real uvicorn process: everyone else still gets answers.

Clients that send headers and stall, a body at one byte per second, more than a thousand
idle keep-alive connections, connections that never send a byte, and endless headers. While
they hold the server, fresh clients must still get a 200 (client timeouts are generous; no
test measures speed). The server must also let go of such clients by itself: idle
keep-alive connections after NNSERVE_KEEP_ALIVE_TIMEOUT, stalled requests after some read
timeout, and oversized headers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import select
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

import nnlib
from tests.helpers import tiny_cnn, tiny_mlp
from tests.helpers.servers import Server, run_server, server_env

IDLE_CONNECTIONS = 1100
KEEP_ALIVE_TIMEOUT = 2  # seconds; NNSERVE_KEEP_ALIVE_TIMEOUT for the server under test
# How long a stalled or idle client may hold a connection before the test calls it a leak.
# Generous: the point is that the server lets go at all, not how fast.
LET_GO_WITHIN = 75.0
CLIENT_TIMEOUT = 60.0
PREDICT_BODY = json.dumps({"inputs": [[1] * 64]}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """A real server with a short keep-alive timeout and room for many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 512  # for this process's sockets and for the server's
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} this test needs")
        # The server inherits the raised soft limit from this process.
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    folder = tmp_path_factory.mktemp("abuse-models")
    for net, metadata in (tiny_mlp(), tiny_cnn()):
        nnlib.save(folder / f"{metadata['name']}.joblib", net, metadata)
    env = server_env(keep_alive_timeout=KEEP_ALIVE_TIMEOUT)
    with run_server(
        tmp_path_factory.mktemp("abuse"), "--model-dir", str(folder), env=env
    ) as running:
        yield running
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def assert_others_are_served(server: Server, rounds: int = 3) -> None:
    """Fresh clients get a 200 from liveness, the native API and the V2 API."""
    v2 = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
    for _ in range(rounds):
        # A new client each round: a new connection, as a new visitor would open.
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
            assert http.get("/health").status_code == 200
            response = http.post(
                "/predict", content=PREDICT_BODY, headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
            assert len(response.json()["predictions"]) == 1
            assert http.post("/v2/models/cnn/infer", json=v2).status_code == 200


@contextlib.contextmanager
def open_sockets(server: Server, count: int, first_bytes: bytes = b"") -> Iterator[list]:
    """``count`` connections that each sent ``first_bytes`` and then nothing; closed after."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(server), timeout=CLIENT_TIMEOUT)
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), reading any answer."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True
    finally:
        sock.setblocking(True)


def wait_all_closed(sockets: list[socket.socket], within: float) -> list[socket.socket]:
    """Wait until the server closed every socket or ``within`` passed; return those open."""
    # poll, not select: select cannot watch descriptors numbered 1024 and above.
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    pending = set(by_fd)
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for fd, _event in poller.poll(500):
            if fd in pending and closed_by_server(by_fd[fd]):
                pending.discard(fd)
                poller.unregister(fd)
    return [by_fd[fd] for fd in pending]


# --- clients that stall ----------------------------------------------------------------------

STALLS = {
    "nothing sent": b"",
    "half a request line": b"POST /pred",
    "headers without the end": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n",
    "headers, then no body": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
    b"application/json\r\nContent-Length: 200\r\n\r\n",
    "half a body": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 200\r\n\r\n{"inputs": [[1, 2, ',
    "chunked, then nothing": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
    b'application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"inp'
    b"\r\n",
}


@pytest.mark.timeout(120)
def test_stalled_clients_do_not_block_others(server):
    """Fifty stalled connections of every kind at once: fresh clients still get a 200."""
    with contextlib.ExitStack() as stack:
        for first_bytes in STALLS.values():
            stack.enter_context(open_sockets(server, 50, first_bytes))
        assert_others_are_served(server)
    assert server.process.poll() is None


@pytest.mark.timeout(180)
def test_stalled_clients_are_disconnected_by_the_server(server):
    """A connection stalled before its request is complete is closed by the server.

    Without a read timeout every such connection holds a descriptor (and, mid-body, a task)
    for ever: enough of them exhaust the descriptors and nobody else gets in.
    """
    with contextlib.ExitStack() as stack:
        groups = {
            what: stack.enter_context(open_sockets(server, 5, first_bytes))
            for what, first_bytes in STALLS.items()
        }
        still_open = wait_all_closed([s for group in groups.values() for s in group], LET_GO_WITHIN)
        held = sorted(
            {what for what, group in groups.items() for sock in group if sock in still_open}
        )
        assert not held, f"still open after {LET_GO_WITHIN:.0f} s: {held}"
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_a_body_at_one_byte_per_second(server):
    """Four bodies trickling one byte a second: others are served, and so are the slow ones."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(PREDICT_BODY)).encode() + b"\r\n\r\n"
    )
    trickle_bytes = 6
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def slow_client() -> None:
        try:
            with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
                sock.sendall(head)
                for byte in PREDICT_BODY[:trickle_bytes]:
                    sock.sendall(bytes([byte]))
                    time.sleep(1)
                sock.sendall(PREDICT_BODY[trickle_bytes:])
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                answers.append(answer)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=slow_client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # the trickles are under way
        assert_others_are_served(server)
    finally:
        for thread in threads:
            thread.join(CLIENT_TIMEOUT)
    assert not errors, errors
    assert len(answers) == 4
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert b'"predictions"' in answer


def server_errors_counted(server: Server) -> float:
    """The 5xx answers the server's own metrics have counted so far."""
    text = httpx.get(server.url + "/metrics", timeout=CLIENT_TIMEOUT).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nnserve_http_requests_total{") and 'status="5' in line)


@pytest.mark.timeout(120)
def test_clients_that_leave_mid_body_are_not_server_errors(server):
    """A client that hangs up halfway through its body is not a 5xx in metrics or logs.

    Otherwise anyone can raise the server-error rate (and page whoever watches it) by
    opening requests and hanging up.
    """
    before = server_errors_counted(server)
    for path in (b"/predict", b"/v2/models/mlp/infer"):
        with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100\r\n\r\n{\"in")
            time.sleep(0.3)
    time.sleep(0.5)  # the server notices the hang-up and logs it
    assert server_errors_counted(server) == before
    assert "ClientDisconnect" not in server.log()
    assert_others_are_served(server, rounds=1)


# --- many idle connections -------------------------------------------------------------------


def _read_one_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.mark.timeout(180)
def test_a_thousand_idle_keep_alive_connections(server):
    """1100 connections idle after one request each: others are served; idle ones expire."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with open_sockets(server, IDLE_CONNECTIONS) as sockets:
        for sock in sockets:
            sock.sendall(request)
            head = _read_one_response(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
        assert_others_are_served(server)
        # NNSERVE_KEEP_ALIVE_TIMEOUT is KEEP_ALIVE_TIMEOUT seconds here.
        still_open = wait_all_closed(sockets, LET_GO_WITHIN)
        assert not still_open, f"{len(still_open)} idle keep-alive connections never closed"
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(180)
def test_a_thousand_connections_that_never_send(server):
    """1100 connections that never send a byte: others are still served."""
    with open_sockets(server, IDLE_CONNECTIONS):
        assert_others_are_served(server)
    assert server.process.poll() is None


# --- oversized requests ------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_endless_headers_are_refused(server):
    """Headers that never end are refused (4xx or a close) long before 16 MiB, not buffered."""
    limit = 16 << 20
    line = b"X-Filler: " + b"a" * 8180 + b"\r\n"
    sent = 0
    refused = False
    with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            while sent < limit:
                sock.sendall(line)
                sent += len(line)
                if sent % (256 << 10) < len(line) and select.select([sock], [], [], 0)[0]:
                    refused = True  # an answer (or a close) arrived: stop sending
                    break
        except OSError:  # reset or broken pipe: the server closed the connection
            refused = True
        if refused:
            answer = b""
            with contextlib.suppress(OSError):
                answer = sock.recv(200)
            assert answer == b"" or answer.split(b" ")[1][:1] == b"4", answer
    assert refused, f"the server read {sent >> 20} MiB of headers without refusing them"
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_an_oversized_body_gets_its_413(server):
    """A client still sending an oversized body reads the 413, not a TCP reset.

    The server answers before reading the body; closing at once with the body unread makes
    the kernel reset the connection, and the reset discards the 413 on the client's side
    (RFC 9112, section 9.6: close "lingeringly" instead).
    """
    limit = 8 * 1024 * 1024  # NNSERVE_MAX_BODY_BYTES default
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(limit + 1).encode() + b"\r\n\r\n")
    for pause in (0.0, 0.5):
        with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(head)
            time.sleep(pause)  # a slow uploader: the answer is out before the body starts
            with contextlib.suppress(OSError):  # the server may stop reading: fine
                for _ in range(64):
                    sock.sendall(b" " * 65536)
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                pytest.fail(f"the 413 was lost to a TCP reset (pause {pause} s)")
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]

    # httpx's async client writes the whole body before it reads: the common case.
    async def post_oversized() -> list[str]:
        outcomes = []
        async with httpx.AsyncClient(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
            for _ in range(5):
                try:
                    response = await http.post("/predict", content=b" " * (limit + 1),
                                               headers={"content-type": "application/json"})
                    outcomes.append(str(response.status_code))
                except httpx.TransportError as exc:
                    outcomes.append(type(exc).__name__)
        return outcomes

    outcomes = asyncio.run(post_oversized())
    assert outcomes == ["413"] * 5, f"answers to 5 oversized bodies: {outcomes}"
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_huge_request_line_gets_a_4xx(server):
    """A 1 MiB URL gets a 4xx (or a close), never a 5xx, and others are served."""
    with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
    assert answer == b"" or answer.split(b" ")[1][:1] == b"4", answer[:200]
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_many_headers_never_get_a_5xx(server):
    """Ten thousand small headers (90 KiB): served or refused, never a 5xx; others served."""
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(10_000))
    with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            answer = sock.recv(200)
    assert answer == b"" or answer.split(b" ")[1][:1] in (b"2", b"4"), answer[:200]
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_pipelined_garbage_then_a_real_client(server):
    """Invalid HTTP, a request smuggling attempt and a pipelined burst: all refused or served."""
    attempts = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: "
        b"chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"{}{}{}",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 200,
    ]
    for attempt in attempts:
        with socket.create_connection(address(server), timeout=CLIENT_TIMEOUT) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(attempt)
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    answer += chunk
        for status_line in (
            line for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")
        ):
            assert status_line[9:10] in (b"2", b"4"), (attempt[:40], status_line)
    assert_others_are_served(server, rounds=1)


@pytest.mark.timeout(120)
def test_log_lines_cannot_be_forged(server):
    """CR/LF smuggled in percent-encoded paths or headers never start a line of the log."""
    forged = "FORGED-BY-CLIENT"
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT) as http:
        for path in (
            f"/models/x%0a{forged}",
            f"/models/x%0d%0a{forged}",
            f"/v2/models/x%0a{forged}/ready",
            f"/nowhere%0a{forged}",
        ):
            assert 400 <= http.get(path).status_code < 500
        http.get("/health", headers={"X-Request-ID": f"a%0a{forged}"})
    time.sleep(0.5)  # the access line is written after the answer
    lines = server.log().splitlines()
    assert not [line for line in lines if line.startswith(forged)], [
        line for line in lines if forged in line
    ]


def test_server_env_is_clean():
    """The server under test gets its settings only from this file (no NNSERVE_* leaks)."""
    env = server_env(keep_alive_timeout=KEEP_ALIVE_TIMEOUT)
    assert {key for key in env if key.startswith("NNSERVE_")} == {"NNSERVE_KEEP_ALIVE_TIMEOUT"}
