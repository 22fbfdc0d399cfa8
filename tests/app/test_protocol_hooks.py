"""The uvicorn internals ``app.protocol`` builds on are still there, in the shape it uses.

``GuardedHttpToolsProtocol`` subclasses uvicorn's ``HttpToolsProtocol`` (no public option
gives its guards). pyproject pins uvicorn and httptools to the minor versions tested; this
fails loudly, naming the hook, when an upgrade removes or reshapes one.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib import metadata
from pathlib import Path

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.protocol import READ_TIMEOUT_STATE, GuardedHttpToolsProtocol, _CoalescingTransport
from tests.helpers import ROOT

METHODS = {
    # name: the parameters after self that the override relies on
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_headers_complete": [],
    "on_message_complete": [],
}


@pytest.mark.parametrize(("name", "parameters"), METHODS.items())
def test_the_overridden_methods_exist_with_their_parameters(name, parameters):
    method = getattr(HttpToolsProtocol, name, None)
    assert callable(method), f"uvicorn's HttpToolsProtocol has no {name}()"
    found = list(inspect.signature(method).parameters)[1:]
    assert found == parameters, f"HttpToolsProtocol.{name}{found} is not ({parameters})"


def test_status_lines_are_ready_made_bytes():
    assert httptools_impl.STATUS_LINE[408] == b"HTTP/1.1 408 Request Timeout\r\n"
    assert httptools_impl.STATUS_LINE[431].startswith(b"HTTP/1.1 431 ")


def test_a_protocol_instance_has_the_attributes_the_guards_read():
    loop = asyncio.new_event_loop()
    try:
        config = Config(app=lambda scope, receive, send: None, http=GuardedHttpToolsProtocol)
        state = ServerState()
        protocol = GuardedHttpToolsProtocol(config=config, server_state=state,
                                            app_state={READ_TIMEOUT_STATE: 7.5}, _loop=loop)
        for attribute in ("loop", "tasks", "cycle", "app_state"):
            assert hasattr(protocol, attribute), f"HttpToolsProtocol lost .{attribute}"
        assert protocol.tasks is state.tasks

        class Transport(asyncio.Transport):
            def get_extra_info(self, name, default=None):
                return ("127.0.0.1", 8000) if name in ("peername", "sockname") else default

            def is_closing(self):
                return False

            def close(self):
                pass

            def set_write_buffer_limits(self, high=None, low=None):
                pass

        protocol.connection_made(Transport())
        # The deadline comes from the lifespan state, not from the environment.
        assert protocol.read_timeout == 7.5
        assert type(protocol.transport).__name__ == "_CoalescingTransport"
        protocol.connection_lost(None)
    finally:
        loop.close()
    cycle_fields = inspect.signature(RequestResponseCycle).parameters
    assert "scope" in cycle_fields, "RequestResponseCycle no longer takes its scope"
    assert "response_complete" in inspect.getsource(RequestResponseCycle), \
        "RequestResponseCycle no longer tracks response_complete"


@pytest.mark.parametrize("package", ["uvicorn", "httptools"])
def test_the_installed_version_is_within_the_pin(package):
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(rf'"{package}(?:\[standard\])?>=([\d.]+),<([\d.]+)"', pyproject)
    assert pin, f"pyproject.toml pins no range for {package}"
    low, high = (tuple(map(int, part.split("."))) for part in pin.groups())
    installed = tuple(map(int, metadata.version(package).split(".")[:2]))
    assert low[:2] <= installed < high, f"{package} {installed} is outside {pin.group(0)}"
    assert Path(httptools_impl.__file__).is_file()


@pytest.mark.parametrize("name", ["handle_hup", "keep_subprocess_alive"])
def test_the_supervisor_hooks_exist_without_parameters(name):
    """``app.__main__.ForwardingSupervisor`` overrides these of uvicorn's Multiprocess."""
    from uvicorn.supervisors import Multiprocess

    method = getattr(Multiprocess, name, None)
    assert callable(method), f"uvicorn's Multiprocess has no {name}()"
    assert list(inspect.signature(method).parameters) == ["self"], name


def test_the_supervisor_keeps_its_workers_in_processes():
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors.multiprocess import Process

    # Read by ForwardingSupervisor: the worker list, each with a pid, replaced in place.
    assert "self.processes[idx] = process" in inspect.getsource(Multiprocess.keep_subprocess_alive)
    assert isinstance(inspect.getattr_static(Process, "pid"), property)


def _transport_methods() -> set[str]:
    return {name for cls in asyncio.Transport.__mro__ if cls is not object
            for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_")}


def test_the_coalescing_transport_spells_out_every_transport_method():
    """Nothing reaches the socket's transport unseen (no ``__getattr__`` pass-through)."""
    own = set(vars(_CoalescingTransport))
    assert "__getattr__" not in own
    missing = _transport_methods() - own
    assert not missing, f"_CoalescingTransport inherits {sorted(missing)} from asyncio"


def test_uvicorn_calls_only_transport_methods_on_the_transport():
    called = set(re.findall(r"\btransport\.(\w+)\(", inspect.getsource(httptools_impl)))
    assert called, "uvicorn's httptools protocol no longer calls its transport"
    unknown = called - _transport_methods()
    assert not unknown, f"uvicorn calls {sorted(unknown)} on a transport: see app/protocol.py"


def test_every_write_method_keeps_the_order_of_the_bytes():
    loop = asyncio.new_event_loop()
    sent: list[bytes] = []

    class Socket(asyncio.Transport):
        def write(self, data):
            sent.append(data)

        def is_closing(self):
            return False

        def get_write_buffer_size(self):
            return 0

    try:
        transport = _CoalescingTransport(Socket(), loop, tasks=set())
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")  # a head: held
        assert sent == []
        transport.writelines([b"bo", b"dy"])
        assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
        assert transport.get_write_buffer_size() == 0
    finally:
        loop.close()
