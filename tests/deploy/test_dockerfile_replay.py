"""The Dockerfile's recipe replayed on this machine, which has no Docker engine.

The Dockerfile is read, not copied into this test: each stage gets a folder standing for its
filesystem (container path /x is <stage folder>/x) and a fresh venv standing for the base
image's Python. The replay then runs the stage's own steps: WORKDIR, ENV, COPY from the
build context filtered by .dockerignore, RUN `pip ...` with their --mount=type=bind from an
earlier stage. A RUN that it does not know fails the test, so a new build step cannot slip by
unreplayed; only user creation (groupadd/useradd) is left to the Docker engine. Finally the
runtime stage's CMD is started with the runtime stage's ENV, from its WORKDIR, far from the
checkout, and probed with the HEALTHCHECK's own command, a real /predict and a SIGTERM.

Differences from `docker build` + `docker run`: the Python is this machine's (the same
major.minor as the image tag when such an interpreter is on PATH), the process runs as the
current user on a writable filesystem, NNSERVE_PORT is set to a free port (as `-e` would),
and pip reaches the package index through this machine's pip configuration.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.test_deploy_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    Stage,
    dockerfile_stages,
    dockerignore_rules,
    is_ignored,
    parse_env,
    seconds,
    settings_from,
    shutdown_seconds,
)

pytestmark = pytest.mark.system

# scikit-learn's first digits image, a zero (8x8 pixels, 0..16), as a client would send it.
ZERO_PIXELS = """
    0  0  5 13  9  1  0  0
    0  0 13 15 10 15  5  0
    0  3 15  2  0 11  8  0
    0  4 12  0  0  8  8  0
    0  5  8  0  0  9  8  0
    0  4 11  0  1 12  7  0
    0  2 14  5 10 12  0  0
    0  0  6 13 10  0  0  0
"""
ZERO = [float(pixel) for pixel in ZERO_PIXELS.split()]
# scikit-learn's first wine (load_wine().data[0], class_0), raw measurements.
WINE_0 = [14.23, 1.71, 2.43, 15.6, 127.0, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065.0]


# ------------------------------------------------------------------------------ the replay


@dataclass
class StageFS:
    """A stage's filesystem as a folder, with the Python of its base image."""

    stage: Stage
    root: Path
    python: Path
    cwd: str = "/"

    def host(self, container_path: str) -> Path:
        path = posixpath.normpath(posixpath.join(self.cwd, container_path))
        return self.root / path.lstrip("/")

    @property
    def env(self) -> dict[str, str]:
        return self.stage.env


@dataclass
class Image:
    runtime: StageFS
    wheel: Path
    env: dict[str, str]  # the runtime stage's ENV
    workdir: str
    cmd: list[str]
    healthcheck: list[str]
    healthcheck_flags: dict[str, str]


def _interpreter_for(image: str) -> str:
    version = re.match(r"python:(\d+\.\d+)", image)
    found = version and shutil.which(f"python{version.group(1)}")
    return found or sys.executable


def _new_python(folder: Path, image: str) -> Path:
    """A fresh venv (pip included, nothing else) standing for the base image's Python."""
    subprocess.run([_interpreter_for(image), "-m", "venv", str(folder)], check=True)
    return folder / "bin" / "python"


def _copy_from_context(fs: StageFS, sources: list[str], dest: str, rules) -> None:
    into_folder = dest.endswith("/") or len(sources) > 1
    for source in sources:
        relative = posixpath.normpath(source).lstrip("/")
        origin = ROOT / relative
        assert origin.exists() and not is_ignored(relative, rules), (
            f"COPY {source}: not in the build context (missing or in .dockerignore)"
        )
        if origin.is_dir():
            target = fs.host(dest)
            for path in sorted(origin.rglob("*")):
                inner = path.relative_to(ROOT).as_posix()
                if path.is_file() and not is_ignored(inner, rules):
                    out = target / path.relative_to(origin)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
        else:
            target = fs.host(dest) / origin.name if into_folder else fs.host(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


def _bind_mounts(fs: StageFS, mount_flag: str, stages: dict[str, StageFS]) -> None:
    options = dict(item.split("=", 1) for item in mount_flag.split(","))
    assert options.get("type") == "bind", f"the replay knows bind mounts only: {mount_flag}"
    source_fs = stages[options["from"]]
    target = fs.host(options["target"])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source_fs.host(options.get("source", "/")), target_is_directory=True)


def _run_step(fs: StageFS, body: str, log: list[str]) -> None:
    assert not re.search(r"[;|`]|\|\||\$\(", body), f"the replay runs `a && b` only: {body}"
    for command in body.split("&&"):
        argv = shlex.split(command)
        if argv[0] in ("groupadd", "useradd"):
            log.append(f"left to the Docker engine: {command.strip()}")
            continue
        if argv[:3] == ["python", "-m", "pip"]:
            argv = argv[2:]
        assert argv[0] in ("pip", "pip3"), (
            f"RUN {command.strip()!r}: the replay does not know this step; teach it "
            "(tests/test_dockerfile_replay.py) before adding it to the Dockerfile"
        )
        args: list[str] = []
        for arg in argv[1:]:
            if arg.startswith("/"):  # a path inside the image
                host = str(fs.host(arg))
                args.extend(sorted(glob.glob(host)) or [host])
            else:
                args.append(arg)
        # The host's pip configuration (index, certificates) stands for the build's network.
        env = {**os.environ, **fs.env}
        result = subprocess.run(
            [str(fs.python), "-m", "pip", *args],
            cwd=fs.host(fs.cwd),
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        log.append(f"pip {' '.join(args)} -> {result.returncode}")
        assert result.returncode == 0, f"RUN {command}\n{result.stdout[-3000:]}{result.stderr}"


def replay(workspace: Path) -> tuple[Image, list[str]]:
    """Build the image's stages as folders; returns the runtime image and a log of steps."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    stages = dockerfile_stages()
    done: dict[str, StageFS] = {}
    log: list[str] = []
    for index, stage in enumerate(stages):
        name = stage.name or str(index)
        folder = workspace / f"stage-{name}"
        fs = StageFS(stage, folder / "root", _new_python(folder / "python", stage.image))
        fs.root.mkdir(parents=True)
        for step in stage.instructions:
            if step.keyword == "WORKDIR":
                fs.cwd = posixpath.normpath(posixpath.join(fs.cwd, step.body))
                fs.host(fs.cwd).mkdir(parents=True, exist_ok=True)
            elif step.keyword == "COPY":
                assert "from" not in step.flags, "COPY --from: teach the replay"
                *sources, dest = shlex.split(step.body)
                _copy_from_context(fs, sources, dest, rules)
            elif step.keyword == "RUN":
                if "mount" in step.flags:
                    _bind_mounts(fs, step.flags["mount"], done)
                _run_step(fs, step.body, log)
            elif step.keyword in ("ENV", "LABEL", "USER", "EXPOSE", "HEALTHCHECK", "CMD", "ARG"):
                continue  # ENV is read from the stage; the others describe the container
            else:
                pytest.fail(f"{step.keyword} in the Dockerfile: teach the replay")
        done[name] = fs

    runtime = done[stages[-1].name or str(len(stages) - 1)]
    wheels = [w for fs in done.values() for w in fs.root.rglob("*.whl")]
    assert len(wheels) == 1, f"one wheel built, found {wheels}"
    healthcheck = runtime.stage.last("HEALTHCHECK")
    image = Image(
        runtime=runtime,
        wheel=wheels[0],
        env=runtime.stage.env,
        workdir=runtime.cwd,
        cmd=runtime.stage.last("CMD").exec_form(),
        healthcheck=healthcheck.exec_form(),
        healthcheck_flags=healthcheck.flags,
    )
    return image, log


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _container_env(image: Image, port: int) -> dict[str, str]:
    """The environment `docker run -e NNSERVE_PORT=<port>` would give: the image's, no host's."""
    python_bin = image.runtime.python.parent
    tmp = image.runtime.host("/tmp")
    tmp.mkdir(exist_ok=True)
    env = {"PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env["TMPDIR"] = str(tmp)  # the container's /tmp tmpfs
    for key, value in image.env.items():
        env[key] = str(image.runtime.host(value)) if value.startswith("/") else value
    env["NNSERVE_PORT"] = str(port)
    return env


def _healthcheck(image: Image, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = list(image.healthcheck)
    argv[0] = shutil.which(argv[0], path=env["PATH"])
    return subprocess.run(
        argv,
        env=env,
        cwd=image.runtime.host(image.workdir),
        capture_output=True,
        text=True,
        timeout=seconds(image.healthcheck_flags.get("timeout", "30s")) + 5,
    )


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    built, log = replay(tmp_path_factory.mktemp("image"))
    print("\n".join(log))
    return built


@pytest.fixture(scope="module")
def container(image: Image, tmp_path_factory):
    """The image's CMD, started as `docker run` would start it; SIGTERM-ed by a test."""
    port = _free_port()
    env = _container_env(image, port)
    unreachable = _healthcheck(image, env)
    assert unreachable.returncode != 0, "the HEALTHCHECK passes with no server at all"

    argv = list(image.cmd)
    argv[0] = shutil.which(argv[0], path=env["PATH"])
    assert argv[0], f"{image.cmd[0]} is not on the image's PATH"
    log_path = tmp_path_factory.mktemp("container") / "output.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=image.runtime.host(image.workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # As Docker does: run the HEALTHCHECK until it passes. The deadline only bounds a hang.
        deadline = time.monotonic() + max(120.0, seconds(image.healthcheck_flags["start-period"]))
        while True:
            check = _healthcheck(image, env)
            if check.returncode == 0:
                break
            assert process.poll() is None, f"nnserve exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"never healthy:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield process, port, env, log_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---------------------------------------------------------------------------------- tests


def test_the_wheel_carries_the_service_and_the_shipped_models(image: Image):
    names = zipfile.ZipFile(image.wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "models").glob("*.joblib"))
    assert shipped, "models/ holds the shipped artifacts"
    in_wheel = sorted(Path(n).name for n in names if n.startswith("app/shipped_models/"))
    assert set(shipped) <= set(in_wheel)
    assert "app/__main__.py" in names and "nnlib/__init__.py" in names
    page = sorted(p.name for p in (ROOT / "app" / "ui" / "static").iterdir())
    assert page and [n for n in names if n.startswith("app/ui/static/")] == [
        f"app/ui/static/{name}" for name in page]  # the demo page, without a build step
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_the_server_runs_from_the_installed_wheel_not_the_checkout(image: Image):
    env = _container_env(image, _free_port())
    code = "import app, nnlib; print(app.__file__); print(nnlib.__file__)"
    result = subprocess.run(
        [shutil.which("python", path=env["PATH"]), "-c", code],
        env=env,
        cwd=image.runtime.host(image.workdir),
        capture_output=True,
        text=True,
        check=True,
    )
    site = image.runtime.python.parent.parent
    for line in result.stdout.split():
        assert Path(line).is_relative_to(site), f"{line} is not the installed package"
    assert not Path(image.runtime.host(image.workdir)).is_relative_to(ROOT)


def test_the_replayed_container_is_healthy_and_predicts(container):
    process, port, _, _ = container
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        models = client.get("/models").json()
        served = {m if isinstance(m, str) else m["name"] for m in models["models"]}
        shipped = {p.stem for p in (ROOT / "models").glob("*.joblib")}
        assert shipped <= served, f"shipped {shipped}, served {served}"
        # A real sample of each model's dataset and its true label: the digits' first zero,
        # and the first of scikit-learn's wines.
        samples = {"digits-mlp": (ZERO, "0"), "digits-cnn": (ZERO, "0"),
                   "wine-mlp": (WINE_0, "class_0")}
        assert shipped == set(samples), "a new shipped model needs a sample here"
        for model in sorted(shipped):
            sample, label = samples[model]
            response = client.post("/predict", json={"inputs": [sample], "model": model})
            assert response.status_code == 200, response.text
            (prediction,) = response.json()["predictions"]
            # The trained networks, not stand-ins: the sample is read as its class.
            assert prediction["label"] == label, (model, prediction)
            assert abs(sum(prediction["probabilities"]) - 1) < 1e-4
        assert client.get("/metrics").status_code == 200
        page = client.get("/")  # the demo page, from the installed package data
        assert page.status_code == 200 and "/ui/app.js" in page.text
        assert client.get("/ui/app.js").status_code == 200
    assert process.poll() is None


def test_the_replayed_container_drains_and_exits_on_sigterm(image: Image, container):
    process, _, env, log_path = container
    process.send_signal(signal.SIGTERM)  # what `docker stop` sends to the CMD's process
    try:
        # Bounds a hang only: with no request in flight the drain is short.
        status = process.wait(timeout=shutdown_seconds(settings_from(image.env)) + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after SIGTERM:\n{log_path.read_text()}")
    assert status in (0, -signal.SIGTERM), f"exit status {status}:\n{log_path.read_text()}"
    assert _healthcheck(image, env).returncode != 0, "the HEALTHCHECK passes after the exit"


def test_the_replay_reads_the_dockerfile():
    """Guards the replay itself: its reader sees what the Dockerfile says."""
    runtime = dockerfile_stages()[-1]
    text = DOCKERFILE.read_text()
    assert runtime.last("CMD").exec_form() == json.loads(
        re.findall(r"^CMD (\[.*\])$", text, re.M)[-1]
    )
    assert parse_env('A=1 B="two words"') == {"A": "1", "B": "two words"}
