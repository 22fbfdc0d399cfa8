"""Start-up faults: hostile or corrupt artifacts, an empty, missing or unreadable model folder.

One bad file never stops the others from serving, and the log says which file was skipped
and why; with no valid artifact the process stays alive (/health 200) but is not ready
(/ready 503); a folder that is missing, not a folder or unreadable is named in a clear error.
The exhaustive artifact refusals (every pickle trick, every bound) are nnlib's, in
tests/nnlib/test_io.py.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import joblib
import pytest

import nnlib
import nnlib.io
from app import log
from app.config import Settings
from app.main import create_app
from nnlib.architecture import describe
from tests.helpers import save_tiny_models, tiny_mlp
from tests.helpers.servers import STARTUP_TIMEOUT, Server, free_port, run_server, server_env

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's note about its own test client
    from fastapi.testclient import TestClient


# --- hostile artifacts ------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _valid_bytes(name: str = "spare") -> bytes:
    """The bytes of a valid artifact (the tiny MLP under ``name``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.joblib"
        nnlib.save(path, *tiny_mlp(name, seed=3))
        return path.read_bytes()


def _save_valid(path: Path, name: str) -> None:
    nnlib.save(path, *tiny_mlp(name, seed=4))


def _bit_flip(path: Path) -> None:
    data = bytearray(_valid_bytes())
    data[len(data) - 100] ^= 0x01  # inside the last weight array
    path.write_bytes(bytes(data))


def _zlib_bomb(path: Path) -> None:
    # 80 MiB of zeros in ~80 KiB: more than nnlib's 16 MiB inflate limit.
    stream = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [stream.compress(chunk) for _ in range(80)]
    path.write_bytes(b"".join(parts) + stream.flush())


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def _metadata_name(name: str) -> Callable[[Path], None]:
    """A valid artifact (nnlib accepts it) whose model name the service must refuse."""

    def build(path: Path) -> None:
        net, metadata = tiny_mlp("x", seed=6)
        nnlib.save(path, net, {**metadata, "name": name})

    return build


def _format1(path: Path) -> None:
    """A format-1 artifact (numpy arrays as joblib objects): refused with how to convert it."""
    net, metadata = tiny_mlp("old", seed=5)
    joblib.dump({"format": "nnlib-artifact", "format_version": 1,
                 "architecture": describe(net.modules), "parameters": net.parameters(),
                 "metadata": metadata, "sha256": "0" * 64}, path, protocol=4)


def _signed(path: Path, architecture: list, metadata: object, sha256: str | None = None) -> None:
    """A format-2 payload with no parameters, signed as nnlib.save would sign it."""
    if sha256 is None:
        sha256 = nnlib.io._digest(2, architecture, {}, metadata, {},
                                  nnlib.Limits(metadata_bytes=2**30))
    joblib.dump({"format": "nnlib-artifact", "format_version": 2, "architecture": architecture,
                 "parameters": {}, "metadata": metadata, "sha256": sha256}, path, protocol=4)


def _code_in_metadata(path: Path) -> None:
    _, metadata = tiny_mlp("meta", seed=7)
    _signed(path, [], {**metadata, "extra": [_RunsCode(path.parent.parent / "pwned-meta")]},
            sha256="0" * 64)


def _sigmoid_tower(path: Path) -> None:
    """A digest-correct network of 33,000 Sigmoids on a 2**20 input: hours of dry run."""
    _, metadata = tiny_mlp("tower", seed=8)
    architecture = [{"type": "Sigmoid", "config": {}}] * 33_000 + [
        {"type": "Flatten", "config": {}}, {"type": "Softmax", "config": {}}]
    _signed(path, architecture, {**metadata, "input_shape": [2**20, 1], "labels": ["0"]})


def _shared_strings(path: Path) -> None:
    """One 8 KB string referenced 2**30 times: gigabytes for a loader that expands it."""
    node: object = "s" * 8192
    for _ in range(30):
        node = [node, node]
    _, metadata = tiny_mlp("shared", seed=9)
    _signed(path, [], {**metadata, "extra": node}, sha256="0" * 64)


# name -> (how to build it in the folder, why the service must not serve it)
HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "code-joblib.joblib": (
        lambda p: joblib.dump(_RunsCode(p.parent.parent / "pwned-joblib"), p),
        "runs os.mkdir when unpickled",
    ),
    "code-pickle.joblib": (
        lambda p: p.write_bytes(
            pickle.dumps(_RunsCode(p.parent.parent / "pwned-pickle"), protocol=4)
        ),
        "raw pickle, same trick",
    ),
    "truncated.joblib": (lambda p: p.write_bytes(_valid_bytes()[:1500]), "cut short"),
    "bitflip.joblib": (_bit_flip, "one bit of a weight changed"),
    "garbage.joblib": (lambda p: p.write_bytes(random.Random(7).randbytes(4096)), "random bytes"),
    "empty.joblib": (lambda p: p.write_bytes(b""), "zero bytes"),
    "gzip.joblib": (
        lambda p: p.write_bytes(gzip.compress(_valid_bytes())),
        "a container nnlib does not read",
    ),
    "zlib-bomb.joblib": (_zlib_bomb, "inflates past the size limit"),
    "dev-zero.joblib": (_symlink("/dev/zero"), "endless device"),
    "dangling.joblib": (_symlink("/nonexistent/model.joblib"), "a link to nothing"),
    "fifo.joblib": (os.mkfifo, "a FIFO: opening it for reading would block"),
    "directory.joblib": (lambda p: p.mkdir(), "a folder, not a file"),
    "traversal-name.joblib": (_metadata_name("../../etc/passwd"), "a path as model name"),
    "forged-log.joblib": (
        _metadata_name("x\n2026-01-01 INFO forged line"),
        "a newline in the model name (log forging)",
    ),
    "zz-duplicate.joblib": (lambda p: _save_valid(p, "mlp"), "a second model named mlp"),
    "format1.joblib": (_format1, "format 1: numpy objects in the pickle, to convert"),
    "code-in-metadata.joblib": (_code_in_metadata, "os.mkdir deep inside the metadata"),
    "sigmoid-tower.joblib": (_sigmoid_tower, "a tiny file whose dry forward takes hours"),
    "shared-strings.joblib": (_shared_strings, "10 KB that a naive walk expands to 8 TB"),
}


@contextlib.contextmanager
def captured(logger: str) -> Iterator[list[logging.LogRecord]]:
    """Collect the records of ``logger`` (the service's loggers do not propagate to root)."""
    # The app configures its loggers once, at its first start, and that would drop a handler
    # added before; configure them first so the one added here stays.
    log.configure()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    target = logging.getLogger(logger)
    previous = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("filename", sorted(HOSTILE))
def test_one_hostile_artifact_is_skipped_and_the_rest_served(tmp_path, filename):
    """A folder of good models plus one hostile file: the good ones serve, the log says why."""
    folder = save_tiny_models(tmp_path / "models")
    build, _why = HOSTILE[filename]
    build(folder / filename)
    app = create_app(Settings(model_dir=folder))
    with captured("nnserve.registry") as records, TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        assert [m["name"] for m in client.get("/models").json()["models"]] == ["cnn", "mlp"]
        for name, sample in (("mlp", [1] * 64), ("cnn", [[1] * 8] * 8)):
            response = client.post(f"/models/{name}/predict", json={"inputs": [sample]})
            assert response.status_code == 200, response.text
    messages = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    skipped = [m for m in messages if filename in m]
    assert skipped, f"nothing logged about {filename}: {messages}"
    # The reason follows the file name: "skipping <file>: <reason>".
    assert all(len(m.split(filename, 1)[1].strip(" :")) > 5 for m in skipped), skipped
    # Nothing the file said ran, and no line of the log was forged through it.
    assert not any((tmp_path / f"pwned-{kind}").exists() for kind in ("joblib", "pickle", "meta"))
    assert not any("\n" in m for m in messages), messages


@pytest.mark.timeout(180)
def test_real_server_with_every_hostile_artifact_at_once(tmp_path):
    """``python -m app`` on a folder of good and hostile files serves the good ones."""
    folder = save_tiny_models(tmp_path / "models")
    for filename, (build, _why) in HOSTILE.items():
        build(folder / filename)
    with run_server(tmp_path, "--model-dir", str(folder)) as server:
        models = httpx.get(server.url + "/models", timeout=30).json()["models"]
        assert sorted(m["name"] for m in models) == ["cnn", "mlp"]
        response = httpx.post(
            server.url + "/models/cnn/predict", json={"inputs": [[[1] * 8] * 8]}, timeout=30
        )
        assert response.status_code == 200, response.text
        log = server.log()
    for filename in HOSTILE:
        assert f"skipping {filename}" in log, f"{filename} not reported in:\n{log}"
    assert not any((tmp_path / f"pwned-{kind}").exists() for kind in ("joblib", "pickle", "meta"))
    # The forged line must stay inside the error line that quotes it.
    assert not any(line.startswith("2026-01-01 INFO forged") for line in log.splitlines())


def _wait_for_health(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the server neither answered /health nor exited:\n{server.log()}")


@pytest.mark.timeout(120)
def test_a_folder_with_no_valid_artifact_is_alive_but_not_ready(tmp_path):
    """Only hostile files: /health 200, /ready 503 (both protocols), predict refused."""
    folder = tmp_path / "models"
    folder.mkdir()
    for filename in ("garbage.joblib", "truncated.joblib", "code-pickle.joblib"):
        HOSTILE[filename][0](folder / filename)
    with run_server(tmp_path, "--model-dir", str(folder), wait_ready=False) as server:
        _wait_for_health(server)
        assert server.process.poll() is None, server.log()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health").status_code == 200
            assert http.get("/v2/health/live").status_code == 200
            assert http.get("/ready").status_code == 503
            assert http.get("/v2/health/ready").status_code == 503
            assert http.get("/models").json()["models"] == []
            response = http.post("/predict", json={"inputs": [[0] * 64]})
            assert response.status_code == 503 and "no model" in response.json()["detail"]
            response = http.post("/v2/models/mlp/infer", content=b"{}")
            assert 400 <= response.status_code < 500 and "error" in response.json()
            # Still alive after being asked for what it cannot do.
            assert http.get("/health").status_code == 200
        assert server.stop() == 0
    assert "no model could be loaded" in server.log()


def _start_as_unprivileged(folder: Path, workdir: Path) -> Server:
    """Start the server as user nobody (root reads any folder, so a chmod proves nothing)."""
    port = free_port()
    log_path = workdir / "server.log"
    command = [sys.executable, "-m", "app", "--port", str(port), "--model-dir", str(folder)]
    if os.geteuid() == 0:
        # util-linux's setpriv drops to nobody with no groups and no capabilities left.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root needs setpriv (util-linux) to test permissions")
        drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        # The checkout and the interpreter must be readable by nobody for this to prove
        # anything; where they are not (a checkout under a private home), say so plainly.
        probe = subprocess.run([*drop, sys.executable, "-c", "import app.main"], cwd=workdir,
                               env=server_env(), capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            pytest.skip("user nobody cannot import the service from this checkout, so an "
                        f"unreadable folder cannot be tried as non-root: {probe.stderr[-300:]}")
        command = [*drop, *command]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=server_env(), cwd=workdir
        )
    return Server(process, f"http://127.0.0.1:{port}", log_path)


# case -> (how to make the folder, words one of which the error must use)
FOLDER_FAULTS = {
    "missing": (lambda base: base / "nowhere", ("does not exist", "no such", "not found")),
    "a-file": (
        lambda base: _a_file(base / "models.joblib"),
        ("not a directory", "not a folder", "is a file"),
    ),
    "unreadable": (
        lambda base: _unreadable(base / "models"),
        ("permission", "denied", "not readable", "unreadable", "cannot read", "cannot list"),
    ),
}


def _a_file(path: Path) -> Path:
    path.write_bytes(_valid_bytes())
    return path


def _unreadable(folder: Path) -> Path:
    save_tiny_models(folder)
    folder.chmod(0)
    return folder


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(FOLDER_FAULTS))
def test_a_bad_model_folder_gives_a_clear_error_at_start(case):
    """Missing, not a folder, unreadable: the log names the folder and what is wrong."""
    make, words = FOLDER_FAULTS[case]
    # A world-readable work folder: the unprivileged server must be able to enter it.
    with tempfile.TemporaryDirectory(prefix="nnserve-faults-") as base_name:
        base = Path(base_name)
        base.chmod(0o755)
        folder = make(base)
        server = _start_as_unprivileged(folder, base)
        try:
            _wait_for_health(server)
            exited = server.process.poll() is not None
            if not exited:
                # Staying up is fine, as long as nobody routes traffic here.
                assert httpx.get(server.url + "/health", timeout=30).status_code == 200
                assert httpx.get(server.url + "/ready", timeout=30).status_code == 503
                status = server.stop()
                assert status == 0, server.log()
            else:
                assert server.process.returncode != 0, server.log()
            log = server.log()
        finally:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()
            if case == "unreadable":
                folder.chmod(0o755)  # so the temporary folder can be removed
    errors = [line for line in log.splitlines() if str(folder) in line]
    assert errors, f"the log never names {folder}:\n{log}"
    assert any(word in line.lower() for line in errors for word in words), (
        f"no line naming {folder} says {' / '.join(words)}:\n{log}"
    )
