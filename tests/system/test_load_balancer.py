"""A real nginx running deploy/nginx.conf in front of two real nnserve replicas.

Only what cannot be the same on one machine is changed in the config: the upstream becomes
the two replicas' loopback addresses (with the file's own max_fails/fail_timeout, minus
`resolve`, which needs Docker's DNS), nginx listens on a free loopback port, and /tmp paths
move to a private folder. The replicas get compose.yaml's environment for them.

Under steady load from several clients, each replica in turn is killed with SIGKILL and
started again, then one is stopped with SIGTERM (the drain of `docker stop` and Kubernetes)
and started again. No client request may fail, and nginx must send traffic to each restarted
replica again; which replica answered comes from nginx's own access log (`upstream=[...]`).

A SIGKILL between a response's header and its body would be the one failure no proxy can
hide (nginx has passed the status on and can no longer retry): nnserve's protocol sends each
answer in one socket write (app/protocol.py), so an answer leaves whole or not at all, and
any failed request fails the test, cut responses included.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_deploy_files import (
    NGINX_CONF,
    ROOT,
    compose,
    compose_env,
    runtime_stage,
)

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)

CLIENTS = 8
SAMPLE = [float(i % 17) for i in range(64)]  # any 64 pixel values 0..16 will do
DEADLINE_S = 90.0  # bounds every wait, so a broken setup fails instead of hanging
LOG_LINE = re.compile(
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) .*upstream=\[(?P<upstreams>[^\]]*)\]'
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.1)


def render_nginx_conf(replica_ports: list[int], listen_port: int, folder: Path) -> str:
    """deploy/nginx.conf with the test's addresses; every substitution must match once."""
    text = NGINX_CONF.read_text()
    servers = list(re.finditer(r"^([ \t]*)server[ \t]+nnserve-replica:\d+([^;]*);", text, re.M))
    assert len(servers) == 1, "deploy/nginx.conf has one upstream server line for the replicas"
    indent, params = servers[0].groups()
    params = " ".join(p for p in params.split() if p != "resolve")
    lines = "\n".join(f"{indent}server 127.0.0.1:{port} {params};" for port in replica_ports)
    text = text[: servers[0].start()] + lines + text[servers[0].end() :]
    text, listens = re.subn(
        r"^([ \t]*)listen[ \t]+\d+;", rf"\g<1>listen 127.0.0.1:{listen_port};", text, flags=re.M
    )
    assert listens == 1
    text, paths = re.subn(r"(?<=\s)/tmp/", f"{folder}/", text)
    assert paths >= 6, "pid and the five temp paths live in /tmp"
    return text


def _replica_env() -> dict[str, str]:
    """compose.yaml's environment for the replicas over the image's; nothing of the test run's
    own NNSERVE_* or prometheus-client settings leaks in."""
    service = compose()["services"]["nnserve-replica"]
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NNSERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {**inherited, **runtime_stage().env, **compose_env(service)}


class Replica:
    def __init__(self, port: int, folder: Path, name: str):
        self.port, self.folder, self.name = port, folder, name
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        env = _replica_env()
        env["NNSERVE_PORT"] = str(self.port)
        log = (self.folder / f"{self.name}-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def ready(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited: {self.output()}"
        try:
            return httpx.get(f"http://{self.address}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return (self.folder / f"{self.name}-{self.starts}.log").read_text(errors="replace")

    def kill(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)


class AccessLog:
    """nginx's access log (its stdout): who answered each request."""

    def __init__(self, path: Path):
        self.path = path

    def nginx_errors(self, tail: int | None = 3000) -> str:
        text = (self.path.parent / "error.log").read_text(errors="replace")
        return text[-tail:] if tail else text

    def size(self) -> int:
        return self.path.stat().st_size

    def entries(self, since: int = 0) -> list[tuple[int, list[str]]]:
        with self.path.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        found = []
        for line in text.splitlines():
            match = LOG_LINE.search(line)
            if match and match["request"].startswith("POST /predict"):
                upstreams = [u.strip() for u in re.split(r"[,:]\s", match["upstreams"])]
                found.append((int(match["status"]), [u for u in upstreams if u]))
        return found

    def answered_by(self, address: str, since: int = 0) -> int:
        return sum(1 for status, ups in self.entries(since) if status == 200 and ups[-1] == address)

    def retried_from(self, address: str, since: int = 0) -> int:
        return sum(1 for _, ups in self.entries(since) if address in ups[:-1])


class Load:
    """Several clients posting /predict back to back through nginx until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.pool = ThreadPoolExecutor(CLIENTS)
        self.futures = []

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(
                        "/predict", json={"inputs": [SAMPLE], "model": "digits-mlp"}
                    )
                    good = response.status_code == 200 and len(response.json()["predictions"]) == 1
                    problem = None if good else f"{response.status_code} {response.text[:200]}"
                except Exception as error:  # any client-side failure counts
                    problem = f"{type(error).__name__}: {error}"
                with self.lock:
                    if problem:
                        self.failures.append(problem)
                    else:
                        self.ok += 1

    def __enter__(self) -> Load:
        self.futures = [self.pool.submit(self._client) for _ in range(CLIENTS)]
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=60)
        self.pool.shutdown()

    def count(self) -> int:
        with self.lock:
            return self.ok


@pytest.fixture
def folder():
    # World-readable: nginx's workers drop root privileges when the test runs as root.
    path = Path(tempfile.mkdtemp(prefix="nnserve-lb-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def replicas(folder: Path):
    pair = [Replica(_free_port(), folder, name) for name in ("a", "b")]
    try:
        for replica in pair:
            replica.start()
        for replica in pair:
            _wait_until(replica.ready, f"replica {replica.name} ready")
        yield pair
    finally:
        for replica in pair:
            replica.kill(signal.SIGKILL)


@pytest.fixture
def nginx(folder: Path, replicas: list[Replica]):
    port = _free_port()
    conf = folder / "nginx.conf"
    conf.write_text(render_nginx_conf([r.port for r in replicas], port, folder))
    assert NGINX, ("nginx is not installed: `apt-get install -y nginx-light` (Debian/Ubuntu; "
                   ".ci/run does it) or your system's nginx package")
    base = [NGINX, "-p", str(folder), "-c", str(conf), "-e", "stderr"]
    check = subprocess.run([*base, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    stdout = folder / "access.log"
    with stdout.open("wb") as out, (folder / "error.log").open("wb") as err:
        process = subprocess.Popen([*base, "-g", "daemon off;"], stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (folder / "error.log").read_text()
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait_until(up, "nginx answering")
        yield url, AccessLog(stdout)
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_rendered_config_keeps_every_directive_but_the_addresses(folder: Path):
    original = NGINX_CONF.read_text()
    rendered = render_nginx_conf([1111, 2222], 3333, folder)
    assert "server 127.0.0.1:1111 max_fails=" in rendered
    assert "server 127.0.0.1:2222 max_fails=" in rendered

    def directives(text: str) -> list[str]:
        text = re.sub(r"#[^\n]*", "", text)
        return [d.split()[0] for d in re.split(r"[;{}]", text) if d.strip()]

    # One upstream `server` line became two; nothing else was added or dropped.
    before, after = Counter(directives(original)), Counter(directives(rendered))
    assert after - before == Counter({"server": 1}) and not before - after


def _stop_and_restart(replica: Replica, how: int, load: Load, access_log: AccessLog) -> str:
    before = len(load.failures)

    def steady(condition):
        def check() -> bool:
            failed = load.failures[before:]
            assert not failed, (
                f"{signal.Signals(how).name} {replica.name}: {len(failed)} client requests "
                f"failed: {failed[:3]}\nnginx error log:\n{access_log.nginx_errors()}"
            )
            return condition()

        return check

    stopped_at = access_log.size()
    replica.kill(how)
    # Keep the load on past fail_timeout, so nginx tries the dead replica again and has to
    # retry those requests on the live one.
    _wait_until(
        steady(lambda: access_log.retried_from(replica.address, stopped_at) >= 2),
        f"nginx retrying requests away from the stopped replica {replica.name}",
    )
    replica.start()
    _wait_until(steady(replica.ready), f"replica {replica.name} back and ready")
    restarted_at = access_log.size()
    _wait_until(
        steady(lambda: access_log.answered_by(replica.address, restarted_at) >= 5),
        f"traffic reaching the restarted replica {replica.name}",
    )
    steady(lambda: True)()
    return (
        f"{signal.Signals(how).name} {replica.name}: "
        f"{access_log.retried_from(replica.address, stopped_at)} requests retried away from it, "
        f"{access_log.answered_by(replica.address, restarted_at)} answered by it after restart"
    )


def test_a_killed_replica_costs_no_request_and_gets_traffic_again(replicas, nginx):
    url, access_log = nginx
    a, b = replicas
    with Load(url) as load:
        _wait_until(
            lambda: min(access_log.answered_by(r.address) for r in replicas) >= 5,
            "both replicas answering through nginx",
        )
        assert not load.failures, load.failures[:3]
        plan = ((a, signal.SIGKILL), (b, signal.SIGKILL), (a, signal.SIGTERM))
        rounds = [_stop_and_restart(replica, how, load, access_log) for replica, how in plan]
        answered = load.count()
        _wait_until(lambda: load.count() > answered + 20, "load going on after the last round")

    print(f"{load.ok} requests answered, {len(load.failures)} failed", *rounds, sep="\n")
    assert not load.failures, load.failures[:3]
    assert load.ok > 0
